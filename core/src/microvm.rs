//! MicroVMs on a host, laid out as microvm.nix lays them out under
//! /var/lib/microvms (its `current`, `old`, `booted` links and GC roots),
//! so that microvm.nix's own units and `microvm -l` keep working. The host's
//! side is microvm/host.sh, run as root.

use crate::activation::{self, Options};
use crate::nix;
use crate::privilege::Privilege;
use crate::process;
use crate::record::Record;
use crate::store_path::StorePath;
use crate::target::Target;
use serde::Serialize;
use std::process::Command;

const HOST_SH: &str = include_str!("microvm/host.sh");

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
    fn as_str(self) -> &'static str {
        match self {
            Restart::Auto => "auto",
            Restart::Always => "always",
            Restart::Never => "never",
        }
    }
}

/// What one install did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Installed {
    /// None: the runner was already current, nothing changed.
    pub previous: Option<Option<String>>,
    pub restarted: bool,
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

/// The longest VM name whose files all fit in a file name (255 bytes): the
/// longest is the GC root's temporary link `booted-NAME.nixpipe-new`.
pub const VM_NAME_MAX: usize = 255 - "booted-".len() - ".nixpipe-new".len();

/// A VM's name, checked as record names are, and short enough for every
/// file it names: checked by every verb before anything changes.
pub fn parse_vm_name(name: &str) -> Result<String, String> {
    let name = crate::record::parse_name(name)?;
    match name.len() > VM_NAME_MAX {
        true => {
            Err(format!("VM name is longer than {VM_NAME_MAX} characters: its GC roots would not fit in a file name"))
        }
        false => Ok(name),
    }
}

/// A host of MicroVMs, reached as root.
pub struct Host<'a> {
    target: &'a Target,
    privilege: &'a Privilege,
    uid: String,
}

impl<'a> Host<'a> {
    /// Reads the login's uid, to know whether sudo is needed.
    pub fn connect(target: &'a Target, privilege: &'a Privilege) -> Result<Host<'a>, String> {
        let uid = target.run(&["id", "-u"])?.trim().to_owned();
        Ok(Host { target, privilege, uid })
    }

    /// Runs host.sh COMMAND ARGS as root; its stdout, or one line why not.
    fn run(&self, command: &str, args: &[&str]) -> Result<String, String> {
        let argv: Vec<&str> =
            ["sh", "-c", HOST_SH, "nixpipe", command].into_iter().chain(args.iter().copied()).collect();
        let output = self.privilege.output(self.target, &self.uid, &argv, &[], &[])?;
        if !output.status.success() {
            return Err(self.privilege.failure(self.target, command, &output));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Points /var/lib/microvms/NAME/current at `runner` (keeping `old`),
    /// makes the GC roots, and restarts the VM as `restart` says.
    pub fn install(&self, name: &str, runner: &str, restart: Restart) -> Result<Installed, String> {
        let out = self.run("install", &[name, runner, restart.as_str()])?;
        let mut installed = Installed::default();
        for line in out.lines() {
            let (key, value) = line.split_once(' ').unwrap_or((line, ""));
            match key {
                "previous" => installed.previous = Some(Some(value.to_owned()).filter(|v| !v.is_empty())),
                "restarted" => installed.restarted = true,
                _ => {}
            }
        }
        Ok(installed)
    }

    pub fn list(&self) -> Result<Vec<Vm>, String> {
        Ok(self.run("list", &[])?.lines().filter_map(parse_vm).collect())
    }

    /// Stops the VM and removes its links and GC roots; its state too with
    /// `purge`. Err when there is no such VM.
    pub fn remove(&self, name: &str, purge: bool) -> Result<(), String> {
        let out = self.run("remove", &[name, if purge { "1" } else { "0" }])?;
        if out.trim() == "missing" {
            return Err(format!("{} has no MicroVM '{name}' (no /var/lib/microvms/{name})", self.target));
        }
        Ok(())
    }
}

/// The guest system a runner record carries (share/microvm/system), or the
/// record's own path when it is a system already.
pub fn guest_system(path: &StorePath) -> Result<StorePath, String> {
    let link = std::path::Path::new(path.as_str()).join("share/microvm/system");
    match std::fs::read_link(&link) {
        Ok(system) => StorePath::parse(&system.to_string_lossy()).map_err(|e| format!("{}: {e}", link.display())),
        Err(_) => Ok(path.clone()),
    }
}

/// Registers `system`'s closure in the Nix database of a VM that shares
/// the host's store (the files are there, its database does not know them),
/// as microvm.nix's sshSwitch does: `nix-store --dump-db` here, `nix-store
/// --load-db` there, as root.
pub fn load_db(vm: &Target, privilege: &Privilege, system: &StorePath) -> Result<(), String> {
    let closure = nix::requisites(&[system]).map_err(|e| format!("{system}: {e}"))?;
    let dump = process::capture(Command::new("nix-store").arg("--dump-db").args(&closure))?;
    if !dump.status.success() {
        return Err(format!("nix-store --dump-db failed: {}", process::summarize(&dump.stderr)));
    }
    let uid = vm.run(&["id", "-u"])?.trim().to_owned();
    let output = privilege.output(vm, &uid, &["nix-store", "--load-db"], &[], &dump.stdout)?;
    if !output.status.success() {
        return Err(privilege.failure(vm, "nix-store --load-db", &output));
    }
    Ok(())
}

/// Updates a running VM that shares the host's store in place, from its
/// runner record (microvm.nix's sshSwitch): the hostname first, so that a
/// wrong VM is not even written to; then the registration ([`load_db`]);
/// then the activation with all its checks. The record of the system.
pub fn switch(vm: &Target, record: &Record, opts: &Options, privilege: &Privilege) -> Result<Record, String> {
    let system = guest_system(&record.path)?;
    if let (true, Some(name)) = (opts.hostname_check, &record.name) {
        let hostname = vm.run(&["cat", "/proc/sys/kernel/hostname"])?;
        if hostname.trim() != name {
            return Err(activation::wrong_host(vm, hostname.trim(), name));
        }
    }
    load_db(vm, privilege, &system)?;
    let system = Record::new(record.name.clone(), system);
    match activation::activate(vm, Some(&system), opts, privilege).error() {
        None => Ok(system),
        Some(why) => Err(why.to_owned()),
    }
}

/// `vm NAME CURRENT VALID BOOTED RUNNING`, BOOTED `-` for none.
fn parse_vm(line: &str) -> Option<Vm> {
    let [_, name, current, valid, booted, running] = line.split(' ').collect::<Vec<_>>()[..] else {
        return None;
    };
    let booted = Some(booted.to_owned()).filter(|b| b != "-");
    let running = running == "1";
    let state = match (valid == "1", running, &booted) {
        (false, _, _) => "stale",
        (true, false, _) | (true, true, None) => "not booted",
        (true, true, Some(b)) if b == current => "current",
        (true, true, Some(_)) => "outdated",
    };
    let name = parse_vm_name(name).ok()?;
    Some(Vm { name, current: current.to_owned(), booted, running, state })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_current_outdated_not_booted_and_stale() {
        let state = |l: &str| parse_vm(l).unwrap().state;
        assert_eq!(state("vm a /nix/store/r1 1 /nix/store/r1 1"), "current");
        assert_eq!(state("vm a /nix/store/r2 1 /nix/store/r1 1"), "outdated");
        assert_eq!(state("vm a /nix/store/r2 1 - 0"), "not booted");
        assert_eq!(state("vm a /nix/store/r2 0 - 0"), "stale");
        assert!(parse_vm("garbage").is_none());
    }
}
