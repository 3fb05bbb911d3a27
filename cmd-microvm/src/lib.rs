//! nixpipe-microvm: install, update, list and remove MicroVMs on a host, in
//! microvm.nix's layout.

use clap::{Args, Parser, Subcommand};
use nixpipe_cli::{JobsArgs, NixFlagsArgs, OutputArgs, PrivilegeArgs, RecordArgs, Results};
use nixpipe_deploy::activation::{Action, Options};
use nixpipe_deploy::fleet::{self, Step};
use nixpipe_deploy::microvm::{self, Host, Restart};
use nixpipe_deploy::{Error, Outcome};
use nixpipe_host::privilege::Privilege;
use nixpipe_host::session::Session;
use nixpipe_host::{Target, TargetSpec};
use nixpipe_store::record::StdoutLines;
use nixpipe_store::Record;

const EXAMPLES: &str = include_str!("../doc/examples.txt");
const LAYOUT: &str = include_str!("../doc/layout.txt");

/// Install MicroVM runners under /var/lib/microvms/NAME, as microvm.nix lays them out.
#[derive(Parser, Debug)]
#[command(name = "nixpipe-microvm", version, after_help = EXAMPLES, after_long_help = format!("{EXAMPLES}\n\n{LAYOUT}"))]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Point /var/lib/microvms/NAME/current at each runner record (NAME: the VM)
    Install {
        #[command(flatten)]
        host: HostArgs,

        /// When to restart microvm@NAME.service
        #[arg(long, value_enum, default_value_t)]
        restart: Restart,

        /// The records are .drv paths: copy them to the host and build there
        #[arg(long)]
        build_on_host: bool,

        #[command(flatten)]
        nix: NixFlagsArgs,

        #[command(flatten)]
        records: RecordArgs,

        #[command(flatten)]
        output: OutputArgs,
    },
    /// Update a running VM in place when it shares the host's /nix/store (microvm.nix's sshSwitch)
    ///
    /// For each runner record (NAME: the VM): checks the VM's hostname, registers the guest
    /// system's closure in the VM's Nix database (nix-store --load-db), then activates it as
    /// nixpipe-activate does (lock, detached job, rollback), with ACTION passed through.
    Switch {
        /// The VM itself: [user@]host[:port], or a template such as 'root@{name}'
        #[arg(long, value_name = "TARGET")]
        vm: TargetSpec,

        /// What switch-to-configuration does
        #[arg(value_enum)]
        action: Action,

        /// Switch even when the VM's hostname is not the record's NAME
        #[arg(long)]
        no_hostname_check: bool,

        #[command(flatten)]
        privilege: PrivilegeArgs,

        #[command(flatten)]
        jobs: JobsArgs,

        #[command(flatten)]
        records: RecordArgs,

        #[command(flatten)]
        output: OutputArgs,
    },
    /// List the VMs on a host: current, outdated (needs a restart), not booted, or stale (runner gone)
    List {
        #[command(flatten)]
        host: HostArgs,

        /// Ask each running VM what it runs, over ssh at TARGET ('root@{name}', 'root@127.0.0.1:2222'): a VM
        /// switched in place (switch --vm) is current although it booted an older runner
        #[arg(long, value_name = "TARGET")]
        vm: Option<TargetSpec>,

        #[command(flatten)]
        output: OutputArgs,
    },
    /// Stop a VM and remove its links and GC roots, keeping its state unless --purge
    Remove {
        #[command(flatten)]
        host: HostArgs,

        /// The VM's name
        #[arg(value_parser = microvm::parse_vm_name)]
        name: String,

        /// Remove its state directory too
        #[arg(long)]
        purge: bool,
    },
}

/// The host and how to become root there.
#[derive(Args, Debug)]
pub struct HostArgs {
    /// The host that runs the VMs
    #[arg(long, value_name = "TARGET")]
    pub on: TargetSpec,

    #[command(flatten)]
    pub privilege: PrivilegeArgs,
}

impl HostArgs {
    fn open(&self) -> Result<(Target, Privilege), Error> {
        let target = self.on.resolve(None).map_err(|e| Error::Usage(format!("--on: {e}")))?;
        Ok((target, self.privilege.privilege()?))
    }
}

/// What a run does, checked before anything is read from a host.
enum Plan<'a> {
    Install {
        target: Target,
        privilege: Privilege,
        restart: Restart,
        build_on_host: bool,
        records: Vec<Record>,
        output: &'a OutputArgs,
    },
    Switch {
        vm: &'a TargetSpec,
        opts: Options,
        privilege: Privilege,
        jobs: &'a JobsArgs,
        records: Vec<Record>,
        output: &'a OutputArgs,
    },
    List {
        target: Target,
        privilege: Privilege,
        vm: Option<&'a TargetSpec>,
        output: &'a OutputArgs,
    },
    Remove {
        target: Target,
        privilege: Privilege,
        name: &'a str,
        purge: bool,
    },
}

impl<'a> Plan<'a> {
    fn new(command: &'a Command) -> Result<Plan<'a>, Error> {
        Ok(match command {
            Command::Install { host, restart, build_on_host, nix, records, output } => {
                nix.apply();
                // The password (--ask-sudo-password) before the records.
                let (target, privilege) = host.open()?;
                let records = records.read()?;
                for record in &records {
                    let Some(name) = &record.name else {
                        return Err(Error::Usage(format!("{}: a runner record needs the VM's NAME", record.label())));
                    };
                    microvm::parse_vm_name(name).map_err(|e| Error::Usage(format!("{}: {e}", record.label())))?;
                }
                Plan::Install { target, privilege, restart: *restart, build_on_host: *build_on_host, records, output }
            }
            Command::Switch { vm, action, no_hostname_check, privilege, jobs, records, output } => {
                let opts = Options { action: *action, hostname_check: !no_hostname_check, ..Options::default() };
                // Asked before the records come, as nixpipe-activate asks.
                let privilege = privilege.privilege()?;
                Plan::Switch { vm, opts, privilege, jobs, records: records.read()?, output }
            }
            Command::List { host, vm, output } => {
                let (target, privilege) = host.open()?;
                Plan::List { target, privilege, vm: vm.as_ref(), output }
            }
            Command::Remove { host, name, purge } => {
                let (target, privilege) = host.open()?;
                Plan::Remove { target, privilege, name, purge: *purge }
            }
        })
    }

    fn run(self) -> Result<Outcome, Error> {
        match self {
            Plan::Install { target, privilege, restart, build_on_host, records, output } => {
                let session = Session::new(target, &privilege, nixpipe_cli::reports());
                install(&Host::new(&session), &records, restart, build_on_host, output)
            }
            Plan::Switch { vm, opts, privilege, jobs, records, output } => {
                switch(vm, &opts, &privilege, jobs, records, output)
            }
            Plan::List { target, privilege, vm, output } => {
                list(&Host::new(&Session::new(target, &privilege, nixpipe_cli::reports())), vm, output)
            }
            Plan::Remove { target, privilege, name, purge } => {
                Host::new(&Session::new(target, &privilege, nixpipe_cli::reports())).remove(name, purge)?;
                Ok(Outcome::default())
            }
        }
    }
}

pub fn run(cli: Cli) -> Result<Outcome, Error> {
    Plan::new(&cli.command)?.run()
}

fn install(
    host: &Host,
    records: &[Record],
    restart: Restart,
    build_on_host: bool,
    output: &OutputArgs,
) -> Result<Outcome, Error> {
    let output = output.for_records(records);
    let mut results = Results::new(&output);
    for (mut record, installed) in microvm::install_all(host, records, restart, build_on_host)? {
        if let (true, Ok(installed)) = (output.json, &installed) {
            record.add_fields(installed);
        }
        results.record(&record, installed.map(drop))?;
    }
    results.finish()
}

/// Each VM switched as nixpipe-activate switches hosts, by the same rollout.
fn switch(
    vm: &TargetSpec,
    opts: &Options,
    privilege: &Privilege,
    jobs: &JobsArgs,
    records: Vec<Record>,
    output: &OutputArgs,
) -> Result<Outcome, Error> {
    let mut results = Results::new(&output.for_records(&records));
    let planned = fleet::with_targets(records, Some(vm), None)?;
    jobs.rollout().run(
        &planned,
        |(record, target)| {
            microvm::switch(&Session::new(target.clone(), privilege, nixpipe_cli::reports()), record, opts)
        },
        |(record, _), switched| switched.is_err().then(|| record.label().to_owned()),
        |(record, _), step| {
            let written = match step {
                Step::Done(Ok(system)) => results.write(&system),
                Step::Done(Err(why)) => {
                    let changed = Error::from(why.clone()).changed();
                    results.failed_with(record.label(), &why, Some(changed));
                    Ok(())
                }
                Step::NotReached(_) => Ok(()),
            };
            results.keep(written);
        },
    );
    results.finish()
}

fn list(host: &Host, vm: Option<&TargetSpec>, output: &OutputArgs) -> Result<Outcome, Error> {
    let vms = match vm {
        Some(vm) => microvm::ask_running(host.list()?, vm, nixpipe_cli::reports()),
        None => host.list()?,
    };
    let mut out = StdoutLines::default();
    for vm in vms {
        let line = match output.json {
            true => serde_json::to_string(&vm).expect("a plain struct"),
            false => format!("{}\t{}\t{}", vm.name, vm.state, vm.current),
        };
        out.line(&line).map_err(|e| Error::Output(e.to_string()))?;
    }
    Ok(Outcome::default())
}
