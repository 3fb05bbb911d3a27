//! nixpipe-microvm: install and switch MicroVMs, microvm.nix layout (planned).

use clap::{Parser, Subcommand};
use nixpipe_core::cli;
use nixpipe_core::{Error, Outcome, TargetSpec};

const EXAMPLES: &str = "\
Example:
  nixpipe-eval --microvm-runner .#vm1 | nixpipe-microvm install --on root@host";

/// Install MicroVM runners under /var/lib/microvms/NAME, as microvm.nix lays them out (not implemented yet).
#[derive(Parser, Debug)]
#[command(name = "nixpipe-microvm", version, after_help = EXAMPLES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Point /var/lib/microvms/NAME/current at each runner record
    Install {
        /// The host that runs the VMs
        #[arg(long, value_name = "TARGET")]
        on: TargetSpec,
    },
    /// Switch a running VM that shares the host's store
    Switch {
        /// The VM itself
        #[arg(long, value_name = "TARGET")]
        vm: TargetSpec,
    },
    /// List the VMs on a host and whether they run their current runner
    List {
        #[arg(long, value_name = "TARGET")]
        on: TargetSpec,
    },
    /// Remove a VM's links and GC roots, keeping its state
    Remove {
        #[arg(long, value_name = "TARGET")]
        on: TargetSpec,
        /// The VM's name
        name: String,
    },
}

pub fn run(_cli: Cli) -> Result<Outcome, Error> {
    Err(cli::not_implemented("nixpipe-microvm"))
}
