//! nixpipe-bundle: one store path carrying a whole deployment.

use clap::Parser;
use nixpipe_cli::{NixFlagsArgs, OutputArgs, RecordArgs, Results};
use nixpipe_deploy::bundle::Contents;
use nixpipe_deploy::{Error, Outcome};
use nixpipe_store::Record;
use std::path::PathBuf;

const EXAMPLES: &str = include_str!("../doc/examples.txt");
const CONTENTS: &str = include_str!("../doc/contents.txt");

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
    pub nix: NixFlagsArgs,

    #[command(flatten)]
    pub output: OutputArgs,
}

/// What a run builds, checked before anything is built.
struct Plan {
    contents: Contents,
    records: Vec<Record>,
}

impl Plan {
    fn new(cli: &Cli) -> Result<Plan, Error> {
        let contents = Contents::new(&cli.config, cli.nixpkgs.as_deref())?;
        Ok(Plan { contents, records: cli.records.read()? })
    }

    /// Builds every bundle with one nix-build; writes their records.
    fn run(self, output: &OutputArgs) -> Result<Outcome, Error> {
        let mut results = Results::new(&output.for_records(&self.records));
        for bundle in self.contents.build(&self.records, nixpipe_cli::reports())? {
            results.write(&bundle)?;
        }
        results.finish()
    }
}

pub fn run(cli: Cli) -> Result<Outcome, Error> {
    cli.nix.apply();
    Plan::new(&cli)?.run(&cli.output)
}
