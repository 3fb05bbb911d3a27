//! nixpipe-bundle: one store path carrying a whole deployment (planned).

use clap::Parser;
use nixpipe_core::cli::{self, OutputArgs, RecordArgs};
use nixpipe_core::{Error, Outcome};
use std::path::PathBuf;

const EXAMPLES: &str = "\
Example:
  nixpipe-eval -f configuration.nix | nixpipe-bundle --config . | nixpipe-copy --to root@pi | nixpipe-activate --on root@pi switch";

/// Bundle configuration, pinned nixpkgs, toplevel and a switch script into one store path (not implemented yet).
#[derive(Parser, Debug)]
#[command(name = "nixpipe-bundle", version, after_help = EXAMPLES)]
pub struct Cli {
    #[command(flatten)]
    pub records: RecordArgs,

    /// The configuration directory or file to carry in the bundle
    #[arg(long, value_name = "DIR|FILE")]
    pub config: Option<PathBuf>,

    /// The nixpkgs source to pin in the bundle
    #[arg(long, value_name = "PATH")]
    pub nixpkgs: Option<PathBuf>,

    /// Bring the previous bundle back on this machine
    #[arg(long)]
    pub restore: bool,

    #[command(flatten)]
    pub output: OutputArgs,
}

pub fn run(_cli: Cli) -> Result<Outcome, Error> {
    Err(cli::not_implemented("nixpipe-bundle"))
}
