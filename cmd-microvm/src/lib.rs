//! nixpipe-microvm: install, update, list and remove MicroVMs on a host, in
//! microvm.nix's layout.

use clap::{Args, Parser, Subcommand};
use nixpipe_core::activation::{Action, Options};
use nixpipe_core::cli::{OutputArgs, RecordArgs, Results};
use nixpipe_core::copy::{self, Destination, Route};
use nixpipe_core::microvm::{self, Host, Restart};
use nixpipe_core::privilege::Privilege;
use nixpipe_core::record::StdoutLines;
use nixpipe_core::{closure_diff, nix, Error, Outcome, Record, StorePath, Target, TargetSpec};

const EXAMPLES: &str = "\
Examples:
  Install or update VMs on a host (restarting the ones that run another runner):
    nixpipe-eval --microvm-runner .#vm1 .#vm2 | nixpipe-microvm install --on root@host

  Evaluate here, build on the host:
    nixpipe-eval --microvm-runner --drv .#vm1 | nixpipe-microvm install --on root@host --build-on-host

  What runs, and what needs a restart:
    nixpipe-microvm list --on root@host";

const LAYOUT: &str = "\
Layout (microvm.nix's): /var/lib/microvms/NAME/current -> the runner, old ->
the runner before, booted -> the runner the VM started from (set by
microvm.nix's units); GC roots /nix/var/nix/gcroots/microvm/NAME,
booted-NAME and old-NAME; owner microvm:kvm where that user and group
exist. Links are replaced by rename, never removed first; an unchanged
runner changes nothing. systemctl is the host's own.";

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

        /// Ask the sudo password once, on the terminal
        #[arg(long)]
        ask_sudo_password: bool,

        /// Become root with CMD instead of sudo
        #[arg(long, value_name = "CMD")]
        sudo_cmd: Option<String>,

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

    /// Ask the sudo password once, on the terminal
    #[arg(long)]
    pub ask_sudo_password: bool,

    /// Become root with CMD instead of sudo
    #[arg(long, value_name = "CMD")]
    pub sudo_cmd: Option<String>,
}

impl HostArgs {
    fn open(&self) -> Result<(Target, Privilege), Error> {
        let target = self.on.resolve(None).map_err(|e| Error::Usage(format!("--on: {e}")))?;
        Ok((target, Privilege::new(self.sudo_cmd.as_deref(), self.ask_sudo_password)?))
    }
}

pub fn run(cli: Cli) -> Result<Outcome, Error> {
    match cli.command {
        Command::Install { host, restart, build_on_host, records, output } => {
            install(&host, restart, build_on_host, &records, &output)
        }
        Command::List { host, output } => list(&host, &output),
        Command::Remove { host, name, purge } => remove(&host, &name, purge),
        Command::Switch { vm, action, no_hostname_check, ask_sudo_password, sudo_cmd, records, output } => {
            let opts = Options { action, hostname_check: !no_hostname_check, ..Options::default() };
            let privilege = Privilege::new(sudo_cmd.as_deref(), ask_sudo_password)?;
            switch(&vm, &opts, &privilege, &records, &output)
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
    let runners = runners_on(&target, &records, build_on_host).map_err(Error::Failed)?;
    let host = Host::connect(&target, &privilege).map_err(Error::Failed)?;
    let mut results = Results::new(output);
    for (record, runner) in records.iter().zip(runners) {
        let name = record.name.as_deref().expect("checked above");
        let installed = host.install(name, runner.as_str(), restart);
        if let Ok(installed) = &installed {
            if let Some(Some(previous)) = &installed.previous {
                closure_diff::show(&target, name, Some(previous), runner.as_str());
            }
            if installed.restarted {
                nixpipe_core::cli::show(name, &format!("restarted microvm@{name}.service"));
            }
        }
        let mut record = Record::new(record.name.clone(), runner);
        if output.json {
            if let Ok(installed) = &installed {
                record.extra.insert("changed".into(), installed.previous.is_some().into());
                record.extra.insert("restarted".into(), installed.restarted.into());
            }
        }
        results.record(&record, installed.map(drop))?;
    }
    Ok(results.finish())
}

/// The runners, valid on the host: copied there, or built there from .drv records.
fn runners_on(target: &Target, records: &[Record], build_on_host: bool) -> Result<Vec<StorePath>, String> {
    let paths: Vec<StorePath> = records.iter().map(|r| r.path.clone()).collect();
    if build_on_host {
        return nix::realise_on(target, &paths);
    }
    let route = Route { from: Target::Local, to: Destination::Store(target.clone()) };
    let refs: Vec<&StorePath> = paths.iter().collect();
    copy::copy_closures(&route, &refs, &copy::Options::default())?;
    Ok(paths)
}

fn switch(
    vm: &TargetSpec,
    opts: &Options,
    privilege: &Privilege,
    records: &RecordArgs,
    output: &OutputArgs,
) -> Result<Outcome, Error> {
    let records = records.read()?;
    let planned = nixpipe_core::cli::with_targets(records, Some(vm), None)?;
    let mut results = Results::new(output);
    for (record, target) in &planned {
        match microvm::switch(target, record, opts, privilege) {
            Ok(system) => results.record(&system, Ok(()))?,
            Err(why) => results.failed(record.label(), &why),
        }
    }
    Ok(results.finish())
}

fn list(args: &HostArgs, output: &OutputArgs) -> Result<Outcome, Error> {
    let (target, privilege) = args.open()?;
    let vms = Host::connect(&target, &privilege).and_then(|host| host.list()).map_err(Error::Failed)?;
    let mut out = StdoutLines::default();
    for vm in vms {
        let line = match output.json {
            true => serde_json::to_string(&vm).expect("a plain struct"),
            false => format!("{}\t{}\t{}", vm.name, vm.state, vm.current),
        };
        out.line(&line).map_err(|e| Error::Failed(format!("cannot write to stdout: {e}")))?;
    }
    Ok(Outcome::default())
}

fn remove(args: &HostArgs, name: &str, purge: bool) -> Result<Outcome, Error> {
    let (target, privilege) = args.open()?;
    Host::connect(&target, &privilege).and_then(|host| host.remove(name, purge)).map_err(Error::Failed)?;
    Ok(Outcome::default())
}
