//! MicroVMs on a host, laid out as microvm.nix lays them out under
//! /var/lib/microvms (its `current`, `old`, `booted` links and GC roots),
//! so that microvm.nix's own units and `microvm -l` keep working. The host's
//! side is microvm/host.sh, run as root.

use crate::activation::{self, ActivationError, Options};
use crate::nix::{self, NixError};
pub use nixpipe_host::event::Installed;
use nixpipe_host::event::{Event, VmState};
use nixpipe_host::process::{self, CannotRun};
use nixpipe_host::session::{Args, Run, Script, Session, SessionError};
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
    /// current: runs its current runner; outdated: runs another one (needs
    /// a restart); not booted: not running; stale: its current runner is
    /// gone from the store.
    pub state: &'static str,
}

impl From<VmState> for Vm {
    fn from(vm: VmState) -> Vm {
        let state = match (vm.valid, vm.running, &vm.booted) {
            (false, _, _) => "stale",
            (true, false, _) | (true, true, None) => "not booted",
            (true, true, Some(b)) if *b == vm.current => "current",
            (true, true, Some(_)) => "outdated",
        };
        Vm { name: vm.name, current: vm.current, booted: vm.booted, running: vm.running, state }
    }
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

/// The guest system a runner record carries (share/microvm/system), or the
/// record's own path when it is a system already.
pub fn guest_system(path: &StorePath) -> Result<StorePath, MicrovmError> {
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
pub fn load_db(vm: &Session, system: &StorePath) -> Result<(), MicrovmError> {
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
        activation::check_host_is(&vm.target.to_string(), hostname.trim(), name)?;
    }
    load_db(vm, &system)?;
    let system = Record::new(record.name.clone(), system);
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
            };
            Vm::from(vm).state
        };
        assert_eq!(state(true, Some("/nix/store/r2"), true), "current");
        assert_eq!(state(true, Some("/nix/store/r1"), true), "outdated");
        assert_eq!(state(true, None, false), "not booted");
        assert_eq!(state(false, None, false), "stale");
    }
}
