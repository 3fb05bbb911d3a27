//! nixpipe-bundle: one store path carrying a whole deployment.

use clap::Parser;
use nixpipe_core::bundle::Contents;
use nixpipe_core::cli::{OutputArgs, RecordArgs, Results};
use nixpipe_core::{Error, Outcome};
use std::path::PathBuf;

const EXAMPLES: &str = "\
Example:
  nixpipe-eval -f configuration.nix | nixpipe-bundle --config . | nixpipe-copy --to root@pi | nixpipe-activate --on root@pi switch

  Back on the machine, without nixpipe:
    sudo /etc/nixos/current-configuration/bin/switch switch
    sudo nixos-rebuild switch -I nixos-config=/etc/nixos/current-configuration/configuration.nix \\
      -I nixpkgs=/etc/nixos/current-configuration/nixpkgs";

const CONTENTS: &str = "\
What a bundle holds:
  the configuration files as given (a directory's contents, or the one file),
  nixpkgs -> the pinned nixpkgs source, toplevel -> the system,
  manifest.json (name, toplevel, nixpkgs, the sha256 of every configuration
  file, the nixpipe version), and bin/switch (also bin/nixos-rebuild-switch).

  bin/switch ACTION, run as root on the machine, sets the system profile
  (switch, boot), runs the system's switch-to-configuration ACTION, then
  makes the bundle the GC root /etc/nixos/current-configuration, replaced
  atomically; the bundle before stays as /etc/nixos/previous-configuration.
  nixpipe-activate takes bundle records as it takes systems and runs
  bin/switch under its safety rules; `nixpipe-activate --on T --restore-bundle
  switch` brings the previous bundle back.

  Everything the switch needs is in the bundle's closure, so the machine
  builds nothing.";

/// Bundle configuration, pinned nixpkgs, toplevel and a switch script into one store path per machine.
///
/// Reads toplevel records (from nixpipe-eval) and writes bundle records with
/// the same NAME, all bundles built by one nix-build.
#[derive(Parser, Debug)]
#[command(name = "nixpipe-bundle", version, after_help = EXAMPLES, after_long_help = format!("{EXAMPLES}\n\n{CONTENTS}"))]
pub struct Cli {
    #[command(flatten)]
    pub records: RecordArgs,

    /// The configuration directory or file to carry in the bundle
    #[arg(long, value_name = "DIR|FILE")]
    pub config: PathBuf,

    /// The nixpkgs source to pin in the bundle [default: <nixpkgs> from NIX_PATH]
    #[arg(long, value_name = "PATH")]
    pub nixpkgs: Option<PathBuf>,

    #[command(flatten)]
    pub output: OutputArgs,
}

pub fn run(cli: Cli) -> Result<Outcome, Error> {
    let contents = Contents::new(&cli.config, cli.nixpkgs.as_deref())?;
    let records = cli.records.read()?;
    let mut results = Results::new(&cli.output);
    for bundle in contents.build(&records)? {
        results.record(&bundle, Ok(()))?;
    }
    Ok(results.finish())
}
