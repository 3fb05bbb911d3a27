//! MicroVMs on a host, laid out as microvm.nix lays them out under
//! /var/lib/microvms (its `current`, `old`, `booted` links and GC roots),
//! so that microvm.nix's own units and `microvm -l` keep working. The host's
//! side is microvm/host.sh, run as root.

use crate::activation::{self, ActivationError, Options};
use crate::copy::{copy_closures, CopyError, Destination, Options as CopyOptions, Route};
use crate::nix::{self, NixError};
pub use nixpipe_host::event::Installed;
use nixpipe_host::event::{Event, VmState};
use nixpipe_host::process::{self, CannotRun};
use nixpipe_host::report::{Report, Reports};
use nixpipe_host::session::{Args, Run, Script, Session, SessionError};
use nixpipe_host::{Target, TargetSpec};
use nixpipe_store::record::Record;
pub use nixpipe_store::record::{parse_vm_name, VM_NAME_MAX};
use nixpipe_store::store_path::StorePath;
use serde::Serialize;
use std::process::Command;

/// Why a MicroVM step failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MicrovmError {
    #[error("{target} has no MicroVM '{name}' (no /var/lib/microvms/{name})")]
    NoSuchVm { target: String, name: String },
    #[error("{link}: {why}")]
    BadGuestSystem { link: String, why: String },
    #[error("nix-store --dump-db failed: {0}")]
    DumpDb(String),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(transparent)]
    Nix(#[from] NixError),
    #[error(transparent)]
    Build(#[from] crate::build::BuildError),
    #[error(transparent)]
    CannotRun(#[from] CannotRun),
    #[error(transparent)]
    Activation(#[from] ActivationError),
    #[error(transparent)]
    Copy(Box<CopyError>),
}

/// When `nixpipe-microvm install` restarts microvm@NAME.service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Restart {
    /// Only when the VM runs and was booted from another runner
    #[default]
    Auto,
    /// Every time
    Always,
    /// Never: the VM runs its old runner until restarted
    Never,
}

impl Restart {
    pub fn as_str(self) -> &'static str {
        match self {
            Restart::Auto => "auto",
            Restart::Always => "always",
            Restart::Never => "never",
        }
    }
}

/// One VM on a host, as `list` reports it.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Vm {
    pub name: String,
    pub current: String,
    pub booted: Option<String>,
    pub running: bool,
    /// The current runner's guest system.
    pub system: Option<String>,
    /// What the running VM says it runs (/run/current-system), when it was
    /// asked (list --vm).
    pub runs: Option<String>,
    /// current: runs its current runner, or was switched in place to its
    /// system (as the VM says); outdated: runs another one (needs a
    /// restart); not booted: not running; stale: its current runner is
    /// gone from the store.
    pub state: &'static str,
}

impl From<VmState> for Vm {
    fn from(vm: VmState) -> Vm {
        let mut listed = Vm {
            name: vm.name,
            current: vm.current,
            booted: vm.booted,
            running: vm.running,
            system: vm.system,
            runs: None,
            state: "",
        };
        listed.state = match (vm.valid, listed.running, &listed.booted) {
            (false, _, _) => "stale",
            (true, false, _) | (true, true, None) => "not booted",
            (true, true, Some(b)) if *b == listed.current => "current",
            (true, true, Some(_)) => "outdated",
        };
        listed
    }
}

impl Vm {
    /// What the running VM itself says it runs: a VM switched in place to
    /// its current runner's system is current whatever it booted; one that
    /// runs something else is not, whatever its links say.
    pub fn asked(mut self, runs: String) -> Vm {
        if self.running && self.state != "stale" {
            self.state = match self.system.as_deref() == Some(runs.as_str()) {
                true => "current",
                false => "outdated",
            };
        }
        self.runs = Some(runs);
        self
    }
}

/// Asks each running VM what it runs, at `vm` (a target, `{name}` the
/// VM's name), as its login user: a VM that cannot be asked is said on its
/// line and listed by its links alone.
pub fn ask_running(vms: Vec<Vm>, vm: &TargetSpec, reports: Reports) -> Vec<Vm> {
    vms.into_iter()
        .map(|listed| {
            if !listed.running {
                return listed;
            }
            let asked = vm.resolve(Some(&listed.name)).map_err(|e| e.to_string()).and_then(|target| {
                let session = Session::as_login_user(target, reports);
                session.stdout(&Run::program(&["readlink", "-f", "/run/current-system"])).map_err(|e| e.to_string())
            });
            match asked {
                Ok(runs) => listed.asked(runs.trim().to_owned()),
                Err(why) => {
                    reports.step(&listed.name, &format!("cannot ask the VM what it runs: {why}"));
                    listed
                }
            }
        })
        .collect()
}

/// A host of MicroVMs, reached as root.
pub struct Host<'a> {
    session: &'a Session<'a>,
}

impl<'a> Host<'a> {
    pub fn new(session: &'a Session<'a>) -> Host<'a> {
        Host { session }
    }

    /// Points /var/lib/microvms/NAME/current at `runner` (keeping `old`),
    /// makes the GC roots, and restarts the VM as `restart` says.
    pub fn install(&self, name: &str, runner: &str, restart: Restart) -> Result<Installed, MicrovmError> {
        let events = self.session.events(
            &Run::script(
                Script::MicrovmHost,
                &Args::verb("install").set("name", name).set("runner", runner).set("restart", restart.as_str()),
            )
            .as_root(),
        )?;
        Ok(events
            .into_iter()
            .find_map(|e| match e {
                Event::Installed(installed) => Some(installed),
                _ => None,
            })
            .unwrap_or_default())
    }

    pub fn list(&self) -> Result<Vec<Vm>, MicrovmError> {
        let events = self.session.events(&Run::script(Script::MicrovmHost, &Args::verb("list")).as_root())?;
        Ok(events
            .into_iter()
            .filter_map(|e| match e {
                Event::Vm(vm) => Some(vm.into()),
                _ => None,
            })
            .collect())
    }

    /// Stops the VM and removes its links and GC roots; its state too with
    /// `purge`. Err when there is no such VM.
    pub fn remove(&self, name: &str, purge: bool) -> Result<(), MicrovmError> {
        let events = self.session.events(
            &Run::script(
                Script::MicrovmHost,
                &Args::verb("remove").set("name", name).set("purge", if purge { "1" } else { "0" }),
            )
            .as_root(),
        )?;
        match events.contains(&Event::Removed { found: true }) {
            true => Ok(()),
            false => Err(MicrovmError::NoSuchVm { target: self.session.target.to_string(), name: name.to_owned() }),
        }
    }
}

/// A runner record at its runner's path, and what its install did.
pub type InstalledRunner = (Record, Result<Installed, MicrovmError>);

/// Installs each runner record (NAME: the VM) on the host: the runners
/// copied there first, or built there from .drv records (`build_on_host`);
/// then each pointed at, what changed and what restarted reported. Each
/// record, at its runner's path, with what its install did; Err when the
/// runners could not reach the host (nothing installed).
pub fn install_all(
    host: &Host,
    records: &[Record],
    restart: Restart,
    build_on_host: bool,
) -> Result<Vec<InstalledRunner>, MicrovmError> {
    let runners = runners_on(host.session, records, build_on_host)?;
    Ok(records
        .iter()
        .zip(runners)
        .map(|(record, runner)| {
            let name = record.name.as_deref().unwrap_or_default();
            let installed = host.install(name, runner.as_str(), restart);
            if let Ok(installed) = &installed {
                if let (true, Some(previous)) = (installed.changed, &installed.previous) {
                    crate::diff::report(host.session, name, Some(previous), runner.as_str());
                }
                if installed.restarted {
                    host.session.reports.report(Report::Restarted { label: name.to_owned() });
                }
            }
            // The record's other fields go on (a filter keeps them).
            (Record { path: runner, ..record.clone() }, installed)
        })
        .collect())
}

/// The runners, valid on the host: copied there, or built there from .drv
/// records.
fn runners_on(session: &Session, records: &[Record], build_on_host: bool) -> Result<Vec<StorePath>, MicrovmError> {
    let paths: Vec<StorePath> = records.iter().map(|r| r.path.clone()).collect();
    if build_on_host {
        return Ok(crate::build::realise_on(&session.target, &paths, session.reports)?);
    }
    let route = Route { from: Target::Local, to: Destination::Store(session.target.clone()) };
    let refs: Vec<&StorePath> = paths.iter().collect();
    copy_closures(&route, &refs, &CopyOptions { reports: session.reports, ..CopyOptions::default() })
        .map_err(|e| MicrovmError::Copy(Box::new(e)))?;
    Ok(paths)
}

/// The guest system a runner record carries (share/microvm/system), or the
/// record's own path when it is a system already.
pub(crate) fn guest_system(path: &StorePath) -> Result<StorePath, MicrovmError> {
    let link = std::path::Path::new(path.as_str()).join("share/microvm/system");
    match std::fs::read_link(&link) {
        Ok(system) => StorePath::parse(&system.to_string_lossy())
            .map_err(|e| MicrovmError::BadGuestSystem { link: link.display().to_string(), why: e.to_string() }),
        Err(_) => Ok(path.clone()),
    }
}

/// Registers `system`'s closure in the Nix database of a VM that shares
/// the host's store (the files are there, its database does not know them),
/// as microvm.nix's sshSwitch does: `nix-store --dump-db` here, `nix-store
/// --load-db` there, as root.
pub(crate) fn load_db(vm: &Session, system: &StorePath) -> Result<(), MicrovmError> {
    let closure = nix::requisites(&[system])?;
    let dump = process::capture(Command::new("nix-store").arg("--dump-db").args(&closure))?;
    if !dump.status.success() {
        return Err(MicrovmError::DumpDb(process::summarize(&dump.stderr)));
    }
    let output = vm.output(&Run::program(&["nix-store", "--load-db"]).as_root().input(&dump.stdout))?;
    if !output.status.success() {
        return Err(vm.root_failure("nix-store --load-db", &output).into());
    }
    Ok(())
}

/// Updates a running VM that shares the host's store in place, from its
/// runner record (microvm.nix's sshSwitch): the hostname first, so that a
/// wrong VM is not even written to; then the registration ([`load_db`]);
/// then the activation with all its checks. The record of the system.
pub fn switch(vm: &Session, record: &Record, opts: &Options) -> Result<Record, MicrovmError> {
    let system = guest_system(&record.path)?;
    if let (true, Some(name)) = (opts.hostname_check, &record.name) {
        let hostname = vm.stdout(&Run::program(&["cat", "/proc/sys/kernel/hostname"]))?;
        activation::check_host_is(&vm.target, hostname.trim(), name)?;
    }
    load_db(vm, &system)?;
    // The runner's record's other fields go on with its system.
    let system = Record { path: system, ..record.clone() };
    match activation::activate(vm, Some(&system), opts).error() {
        None => Ok(system),
        Some(why) => Err(why.clone().into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_current_outdated_not_booted_and_stale() {
        let state = |valid, booted: Option<&str>, running| {
            let vm = VmState {
                name: "a".into(),
                current: "/nix/store/r2".into(),
                booted: booted.map(Into::into),
                running,
                valid,
                system: None,
            };
            Vm::from(vm).state
        };
        assert_eq!(state(true, Some("/nix/store/r2"), true), "current");
        assert_eq!(state(true, Some("/nix/store/r1"), true), "outdated");
        assert_eq!(state(true, None, false), "not booted");
        assert_eq!(state(false, None, false), "stale");
    }

    #[test]
    fn a_vm_that_says_it_runs_its_current_system_is_current_whatever_it_booted() {
        let vm = |booted: &str| {
            Vm::from(VmState {
                name: "a".into(),
                current: "/nix/store/r2".into(),
                booted: Some(booted.into()),
                running: true,
                valid: true,
                system: Some("/nix/store/s2".into()),
            })
        };
        assert_eq!(vm("/nix/store/r1").asked("/nix/store/s2".into()).state, "current");
        assert_eq!(vm("/nix/store/r2").asked("/nix/store/s1".into()).state, "outdated");
    }

    mod on_a_fake_host {
        use super::*;
        use nixpipe_host::fake::{FakeHost, Reply};
        use nixpipe_host::privilege::Privilege;

        /// A host of MicroVMs whose script answers each verb as given.
        fn with_vms(answer: impl Fn(&str) -> Reply + Sync + 'static) -> FakeHost {
            FakeHost::new(move |call| match call.script {
                Some(Script::MicrovmHost) => answer(call.verb.as_deref().unwrap_or_default()),
                _ => Reply::events(&["host uid=0 init=systemd machine=x86_64"]),
            })
        }

        fn on(host: &FakeHost, act: impl FnOnce(&Host)) {
            let privilege = Privilege::default();
            let session =
                Session::with_runner(Target::parse("root@vmhost").unwrap(), &privilege, Default::default(), host);
            act(&Host::new(&session));
        }

        #[test]
        fn an_install_says_whether_the_runner_moved_and_the_vm_restarted() {
            let host = with_vms(|_| Reply::events(&["installed changed=1 previous=/nix/store/r1 restarted=1"]));
            on(&host, |vms| {
                let installed = vms.install("web", "/nix/store/r2", Restart::Auto).unwrap();
                assert_eq!(
                    (installed.changed, installed.previous.as_deref(), installed.restarted),
                    (true, Some("/nix/store/r1"), true)
                );
            });
            let install = host.calls().into_iter().find(|c| c.is(Script::MicrovmHost, Some("install"))).unwrap();
            assert_eq!(
                (install.arg("name"), install.arg("runner"), install.arg("restart")),
                (Some("web"), Some("/nix/store/r2"), Some("auto"))
            );
        }

        #[test]
        fn removing_a_vm_that_is_not_there_names_it() {
            let host = with_vms(|_| Reply::events(&["removed found=0"]));
            on(&host, |vms| {
                let err = vms.remove("ghost", true).unwrap_err();
                assert_eq!(err.to_string(), "root@vmhost has no MicroVM 'ghost' (no /var/lib/microvms/ghost)");
            });
            let remove = host.calls().into_iter().find(|c| c.is(Script::MicrovmHost, Some("remove"))).unwrap();
            assert_eq!(remove.arg("purge"), Some("1"));
        }

        #[test]
        fn a_list_says_which_vms_need_a_restart() {
            let host = with_vms(|_| {
                Reply::events(&[
                    "vm name=a current=/nix/store/r2 booted=/nix/store/r1 running=1 valid=1",
                    "vm name=b current=/nix/store/r3 booted= running=0 valid=1",
                    "vm name=../x current=/nix/store/r3 booted= running=0 valid=1",
                ])
            });
            on(&host, |vms| {
                let listed: Vec<(String, &str)> =
                    vms.list().unwrap().into_iter().map(|vm| (vm.name, vm.state)).collect();
                assert_eq!(listed, [("a".to_owned(), "outdated"), ("b".to_owned(), "not booted")]);
            });
        }
    }
}
