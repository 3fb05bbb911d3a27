//! nixpipe-eval: evaluate NixOS configurations to toplevel store paths.

use clap::Parser;
use nixpipe_core::cli::{self, OutputArgs, Results};
use nixpipe_core::eval::{self, Classic};
use nixpipe_core::{Error, Outcome};
use std::path::PathBuf;

const EXAMPLES: &str = "\
Examples:
  Build a configuration.nix and deploy it:
    nixpipe-eval -f configuration.nix | nixpipe-copy --to root@web1 | nixpipe-activate --on root@web1 switch

  Pin nixpkgs for the evaluation:
    nixpipe-eval -f configuration.nix --nixpkgs ~/src/nixpkgs

Each record is NAME<TAB>PATH, NAME being networking.hostName (no NAME when it
is empty). With --json the record also carries \"drv\" and \"system\".";

/// Evaluate and build NixOS configurations, printing their toplevel store paths.
///
/// Evaluates every machine in one Nix call and builds them all in one more,
/// then writes one record per machine to stdout for nixpipe-copy and
/// nixpipe-activate. Nix's build log goes to stderr.
#[derive(Parser, Debug)]
#[command(name = "nixpipe-eval", version, after_help = EXAMPLES)]
pub struct Cli {
    /// Flake outputs such as .#web1 (not implemented yet)
    #[arg(value_name = "FLAKEREF")]
    pub flakes: Vec<String>,

    /// A classic configuration.nix, evaluated with <nixpkgs/nixos>
    #[arg(short = 'f', long, value_name = "FILE")]
    pub file: Option<PathBuf>,

    /// The nixpkgs to evaluate with; the same as -I nixpkgs=PATH, and it wins
    #[arg(long, value_name = "PATH")]
    pub nixpkgs: Option<PathBuf>,

    /// Add an entry to the Nix search path, as nix-build -I does
    #[arg(short = 'I', value_name = "PATH")]
    pub include: Vec<String>,

    /// A network file of machines, as NixOps and morph use (not implemented yet)
    #[arg(long, value_name = "FILE")]
    pub network: Option<PathBuf>,

    /// The VM variant's toplevel instead of the system's (not implemented yet)
    #[arg(long)]
    pub vm: bool,

    /// Evaluate only and print .drv paths (not implemented yet)
    #[arg(long)]
    pub drv: bool,

    #[command(flatten)]
    pub output: OutputArgs,
}

pub fn run(cli: Cli) -> Result<Outcome, Error> {
    refuse_unbuilt(&cli)?;
    let file = cli.file.as_deref().ok_or_else(|| Error::Usage("give a configuration with -f FILE".into()))?;
    let classic = Classic::new(file, cli.nixpkgs.as_deref(), &cli.include)?;
    let machines = classic.evaluate()?;
    let records = eval::build(&machines)?;
    let mut results = Results::new(&cli.output);
    for record in &records {
        results.record(record, Ok(()))?;
    }
    Ok(results.finish())
}

fn refuse_unbuilt(cli: &Cli) -> Result<(), Error> {
    let unbuilt = [
        (!cli.flakes.is_empty(), "flake references"),
        (cli.network.is_some(), "--network"),
        (cli.vm, "--vm"),
        (cli.drv, "--drv"),
    ];
    cli::refuse_unbuilt(&unbuilt)
}
