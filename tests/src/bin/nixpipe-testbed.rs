//! Starts throwaway testbed hosts for a command, then stops them:
//!
//!     nixpipe-testbed HOSTNAME... -- COMMAND [ARG...]
//!
//! COMMAND runs in the deployer's environment (nixpipe on PATH, NIX_SSHOPTS,
//! a private Nix configuration) with HOST_<NAME> set to each host's ssh
//! target, e.g. HOST_WEB1=root@127.0.0.1:40123. `make demo` uses it.

use nixpipe_tests::Testbed;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(split) = args.iter().position(|a| a == "--").filter(|&i| i > 0 && i + 1 < args.len()) else {
        eprintln!("usage: nixpipe-testbed HOSTNAME... -- COMMAND [ARG...]");
        return ExitCode::from(2);
    };
    let testbed = Testbed::new();
    let hosts: Vec<_> = args[..split].iter().map(|name| testbed.host(name)).collect();
    let mut cmd = testbed.command(&args[split + 1]);
    cmd.args(&args[split + 2..]);
    for host in &hosts {
        cmd.env(format!("HOST_{}", host.hostname.to_uppercase().replace('-', "_")), host.target());
    }
    let status = cmd.status().expect("cannot run the command");
    // The hosts stop here, when they are dropped.
    ExitCode::from(status.code().unwrap_or(1) as u8)
}
