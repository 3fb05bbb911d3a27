//! Starts throwaway testbed hosts for a command, then stops them:
//!
//!     nixpipe-testbed [--systemd] HOSTNAME... -- COMMAND [ARG...]
//!
//! With --systemd the hosts boot real systemd (systemd-nspawn).
//! COMMAND runs in the deployer's environment (nixpipe on PATH, NIX_SSHOPTS,
//! a private Nix configuration) with HOST_<NAME> set to each host's ssh
//! target, e.g. HOST_WEB1=root@127.0.0.1:40123. `make demo` uses it.
//! NIXPIPE_TEST_TARGET_NIX and NIXPIPE_TEST_DEPLOYER_NIX choose the Nix of
//! the hosts and of COMMAND, as in the tests.

use nixpipe_tests::{HostKind, Testbed, TestbedError};
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let systemd = args.first().is_some_and(|a| a == "--systemd");
    if systemd {
        args.remove(0);
    }
    let Some(split) = args.iter().position(|a| a == "--").filter(|&i| i > 0 && i + 1 < args.len()) else {
        eprintln!("usage: nixpipe-testbed [--systemd] HOSTNAME... -- COMMAND [ARG...]");
        return ExitCode::from(2);
    };
    match run(systemd, &args[..split], &args[split + 1..]) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nixpipe-testbed: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(systemd: bool, hostnames: &[String], command: &[String]) -> Result<ExitCode, TestbedError> {
    let testbed = Testbed::try_new()?;
    let kind = if systemd { HostKind::systemd()? } else { HostKind::of_run()? };
    let hosts = hostnames.iter().map(|name| testbed.try_host(name, kind)).collect::<Result<Vec<_>, _>>()?;
    let mut cmd = testbed.command(&command[0]);
    cmd.args(&command[1..]);
    for host in &hosts {
        cmd.env(format!("HOST_{}", host.hostname.to_uppercase().replace('-', "_")), host.target());
    }
    let status = cmd.status().map_err(|e| TestbedError(format!("cannot run {}: {e}", command[0])))?;
    // The hosts stop here, when they are dropped.
    Ok(ExitCode::from(status.code().unwrap_or(1) as u8))
}
