//! nixpipe-microvm: install, update, list and remove MicroVMs on a host, in
//! microvm.nix's layout.

use clap::{Args, Parser, Subcommand};
use nixpipe_cli::{JobsArgs, OutputArgs, PrivilegeArgs, RecordArgs, Results};
use nixpipe_deploy::activation::{Action, Options};
use nixpipe_deploy::copy::{self, Destination, Route};
use nixpipe_deploy::fleet::{self, Step};
use nixpipe_deploy::microvm::{self, Host, MicrovmError, Restart};
use nixpipe_deploy::{build, diff, Error, Outcome};
use nixpipe_host::privilege::Privilege;
use nixpipe_host::report::{self, Report};
use nixpipe_host::session::Session;
use nixpipe_host::{Target, TargetSpec};
use nixpipe_store::record::StdoutLines;
use nixpipe_store::{Record, StorePath};

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

pub fn run(cli: Cli) -> Result<Outcome, Error> {
    match cli.command {
        Command::Install { host, restart, build_on_host, records, output } => {
            install(&host, restart, build_on_host, &records, &output)
        }
        Command::List { host, output } => list(&host, &output),
        Command::Remove { host, name, purge } => remove(&host, &name, purge),
        Command::Switch { vm, action, no_hostname_check, privilege, jobs, records, output } => {
            let opts = Options { action, hostname_check: !no_hostname_check, ..Options::default() };
            switch(&vm, &opts, &privilege, &jobs, &records, &output)
        }
    }
}

fn install(
    args: &HostArgs,
    restart: Restart,
    build_on_host: bool,
    records: &RecordArgs,
    output: &OutputArgs,
) -> Result<Outcome, Error> {
    let records = records.read()?;
    for record in &records {
        let Some(name) = &record.name else {
            return Err(Error::Usage(format!("{}: a runner record needs the VM's NAME", record.label())));
        };
        microvm::parse_vm_name(name).map_err(|e| Error::Usage(format!("{}: {e}", record.label())))?;
    }
    let (target, privilege) = args.open()?;
    let runners = runners_on(&target, &records, build_on_host)?;
    let session = Session::new(target, &privilege);
    let host = Host::new(&session);
    let mut results = Results::new(output);
    for (record, runner) in records.iter().zip(runners) {
        let name = record.name.as_deref().expect("checked above");
        let installed = host.install(name, runner.as_str(), restart);
        if let Ok(installed) = &installed {
            if let (true, Some(previous)) = (installed.changed, &installed.previous) {
                diff::report(&session, name, Some(previous), runner.as_str());
            }
            if installed.restarted {
                report::report(Report::Restarted { label: name.to_owned() });
            }
        }
        let mut record = Record::new(record.name.clone(), runner);
        if let (true, Ok(installed)) = (output.json, &installed) {
            record.add_fields(installed);
        }
        results.record(&record, installed.map(drop))?;
    }
    results.finish()
}

/// The runners, valid on the host: copied there, or built there from .drv records.
fn runners_on(target: &Target, records: &[Record], build_on_host: bool) -> Result<Vec<StorePath>, Error> {
    let paths: Vec<StorePath> = records.iter().map(|r| r.path.clone()).collect();
    if build_on_host {
        return Ok(build::realise_on(target, &paths).map_err(MicrovmError::from)?);
    }
    let route = Route { from: Target::Local, to: Destination::Store(target.clone()) };
    let refs: Vec<&StorePath> = paths.iter().collect();
    copy::copy_closures(&route, &refs, &copy::Options::default())?;
    Ok(paths)
}

/// Each VM switched as nixpipe-activate switches hosts, by the same rollout.
fn switch(
    vm: &TargetSpec,
    opts: &Options,
    privilege: &PrivilegeArgs,
    jobs: &JobsArgs,
    records: &RecordArgs,
    output: &OutputArgs,
) -> Result<Outcome, Error> {
    let planned = fleet::with_targets(records.read()?, Some(vm), None)?;
    let privilege = privilege.privilege()?;
    let mut results = Results::new(output);
    jobs.rollout().run(
        &planned,
        |(record, target)| microvm::switch(&Session::new(target.clone(), &privilege), record, opts),
        |(record, _), switched| switched.is_err().then(|| record.label().to_owned()),
        |(record, _), step| {
            let written = match step {
                Step::Done(Ok(system)) => results.write(&system),
                Step::Done(Err(why)) => {
                    results.failed(record.label(), &why);
                    Ok(())
                }
                Step::NotReached(_) => Ok(()),
            };
            results.keep(written);
        },
    );
    results.finish()
}

fn list(args: &HostArgs, output: &OutputArgs) -> Result<Outcome, Error> {
    let (target, privilege) = args.open()?;
    let vms = Host::new(&Session::new(target, &privilege)).list()?;
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

fn remove(args: &HostArgs, name: &str, purge: bool) -> Result<Outcome, Error> {
    let (target, privilege) = args.open()?;
    Host::new(&Session::new(target, &privilege)).remove(name, purge)?;
    Ok(Outcome::default())
}
