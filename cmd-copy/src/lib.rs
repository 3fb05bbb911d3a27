//! nixpipe-copy: copy closures of store paths to other stores.

use clap::Parser;
use nixpipe_core::cli::{self, OutputArgs, RecordArgs, Results};
use nixpipe_core::copy::copy_closures;
use nixpipe_core::{Error, Outcome, Record, StorePath, Target, TargetSpec};

const EXAMPLES: &str = "\
Examples:
  Deploy what nixpipe-eval built:
    nixpipe-eval -f configuration.nix | nixpipe-copy --to root@web1 | nixpipe-activate --on root@web1 switch

  Copy each record to the machine it names:
    nixpipe-eval ... | nixpipe-copy --to 'root@{name}'

  Copy one path by hand (ssh options from NIX_SSHOPTS, as nix-copy-closure):
    NIX_SSHOPTS='-i ~/.ssh/deploy' nixpipe-copy --to root@web1:2222 /nix/store/...-nixos-system-web1";

/// Copy the closures of store paths to another store.
///
/// Reads records (store paths, NAME<TAB>PATH lines or JSON records) from the
/// arguments or stdin and writes each one to stdout once its whole closure is
/// valid on the target. ssh is the system OpenSSH client: ~/.ssh/config, the
/// agent and NIX_SSHOPTS all apply; host keys are always checked.
#[derive(Parser, Debug)]
#[command(name = "nixpipe-copy", version, after_help = EXAMPLES)]
pub struct Cli {
    #[command(flatten)]
    pub records: RecordArgs,

    /// Where to copy: [user@]host[:port], ssh://..., 'root@{name}', or local [default: the record's NAME]
    #[arg(long, value_name = "TARGET")]
    pub to: Option<TargetSpec>,

    /// Copy from a remote store instead of the local one (not implemented yet)
    #[arg(long, value_name = "TARGET")]
    pub from: Option<TargetSpec>,

    /// Let the target fetch what it can from its own substituters first (not implemented yet)
    #[arg(short = 's', long)]
    pub substitute_on_destination: bool,

    /// Show what would be copied, copy nothing (not implemented yet)
    #[arg(long)]
    pub dry_run: bool,

    #[command(flatten)]
    pub output: OutputArgs,
}

pub fn run(cli: Cli) -> Result<Outcome, Error> {
    refuse_unbuilt(&cli)?;
    let records = cli.records.read()?;
    let planned = cli::with_targets(records, cli.to.as_ref(), None)?;
    let mut results = Results::new(&cli.output);
    for (target, records) in by_target(planned) {
        let paths: Vec<&StorePath> = records.iter().map(|r| &r.path).collect();
        let copied = copy_closures(&target, &paths);
        for record in &records {
            results.record(record, copied.clone())?;
        }
    }
    Ok(results.finish())
}

/// One copy per target, with all its paths: shared dependencies go once.
fn by_target(planned: Vec<(Record, Target)>) -> Vec<(Target, Vec<Record>)> {
    let mut groups: Vec<(Target, Vec<Record>)> = Vec::new();
    for (record, target) in planned {
        match groups.iter_mut().find(|(t, _)| *t == target) {
            Some((_, records)) => records.push(record),
            None => groups.push((target, vec![record])),
        }
    }
    groups
}

fn refuse_unbuilt(cli: &Cli) -> Result<(), Error> {
    let unbuilt = [
        (cli.from.is_some(), "--from"),
        (cli.substitute_on_destination, "--substitute-on-destination"),
        (cli.dry_run, "--dry-run"),
    ];
    cli::refuse_unbuilt(&unbuilt)
}
