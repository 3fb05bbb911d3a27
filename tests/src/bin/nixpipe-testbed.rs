//! Starts throwaway testbed hosts for a command, then stops them:
//!
//!     nixpipe-testbed [--systemd | --aarch64 | --vms] HOSTNAME... -- COMMAND [ARG...]
//!
//! With --vms there may be no hosts: COMMAND may start real VMs (its
//! nixpipe-vm's, stopped at the end; NIXPIPE_TESTBED_DIR is the deployer's
//! directory, with its key id_ed25519.pub for the VMs' configurations).
//! With --systemd the hosts boot real systemd (systemd-nspawn); with
//! --aarch64 their Nix is aarch64-linux and their programs run under qemu,
//! and COMMAND's Nix may build for aarch64-linux (extra-platforms).
//! COMMAND runs in the deployer's environment (nixpipe on PATH, NIX_SSHOPTS,
//! a private Nix configuration) with HOST_<NAME> set to each host's ssh
//! target, e.g. HOST_WEB1=root@127.0.0.1:40123. `make demo` uses it.
//! NIXPIPE_TEST_TARGET_NIX and NIXPIPE_TEST_DEPLOYER_NIX choose the Nix of
//! the hosts and of COMMAND, as in the tests.

use nixpipe_tests::{HostKind, Testbed, TestbedError};
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let kind = match args.first().map(String::as_str) {
        Some("--systemd") => Kind::Systemd,
        Some("--aarch64") => Kind::Aarch64,
        Some("--vms") => Kind::Vms,
        _ => Kind::OfRun,
    };
    if kind != Kind::OfRun {
        args.remove(0);
    }
    let hosts_needed = usize::from(kind != Kind::Vms);
    let Some(split) = args.iter().position(|a| a == "--").filter(|&i| i >= hosts_needed && i + 1 < args.len()) else {
        eprintln!("usage: nixpipe-testbed [--systemd | --aarch64 | --vms] HOSTNAME... -- COMMAND [ARG...]");
        return ExitCode::from(2);
    };
    match run(kind, &args[..split], &args[split + 1..]) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nixpipe-testbed: {e}");
            ExitCode::from(1)
        }
    }
}

#[derive(PartialEq)]
enum Kind {
    OfRun,
    Systemd,
    Aarch64,
    Vms,
}

fn run(kind: Kind, hostnames: &[String], command: &[String]) -> Result<ExitCode, TestbedError> {
    let testbed = Testbed::try_new()?;
    let vms = (kind == Kind::Vms).then(|| testbed.vms());
    let kind = match kind {
        Kind::OfRun | Kind::Vms => HostKind::of_run()?,
        Kind::Systemd => HostKind::systemd()?,
        Kind::Aarch64 => {
            testbed.build_aarch64_here();
            HostKind::aarch64()?
        }
    };
    let hosts = hostnames.iter().map(|name| testbed.try_host(name, kind)).collect::<Result<Vec<_>, _>>()?;
    let mut cmd = testbed.command(&command[0]);
    cmd.args(&command[1..]).env("NIXPIPE_TESTBED_DIR", testbed.path());
    for host in &hosts {
        cmd.env(format!("HOST_{}", host.hostname.to_uppercase().replace('-', "_")), host.target());
    }
    let status = cmd.status().map_err(|e| TestbedError(format!("cannot run {}: {e}", command[0])))?;
    // The VMs and hosts stop here, when they are dropped.
    drop(vms);
    Ok(ExitCode::from(status.code().unwrap_or(1) as u8))
}
