//! nixpipe-activate: set the system profile and switch, on a target.

use clap::Parser;
use nixpipe_core::activation::{self, Action, Options};
use nixpipe_core::cli::{self, OutputArgs, RecordArgs, Results};
use nixpipe_core::{Error, Outcome, Target, TargetSpec};

const EXAMPLES: &str = "\
Examples:
  Build, copy and switch:
    nixpipe-eval -f configuration.nix | nixpipe-copy --to root@web1 | nixpipe-activate --on root@web1 switch

  Check what would happen, change nothing:
    nixpipe-activate --on root@web1 --dry-run switch /nix/store/...-nixos-system-web1

  Activate this machine's own new system (a record without NAME, no --on):
    nixpipe-activate test /nix/store/...-nixos-system-laptop";

/// Activate NixOS systems on their machines, as nixos-rebuild does.
///
/// For each record, checks on the target that the path is there, that it is
/// a NixOS system and that the host is the one the record names (its NAME,
/// or the hostname the system is configured with); only then adds a
/// generation to /nix/var/nix/profiles/system (switch, boot) and runs the
/// system's bin/switch-to-configuration ACTION. Records that were activated
/// are written to stdout.
#[derive(Parser, Debug)]
#[command(name = "nixpipe-activate", version, after_help = EXAMPLES)]
pub struct Cli {
    /// What switch-to-configuration does
    #[arg(value_enum)]
    pub action: Action,

    #[command(flatten)]
    pub records: RecordArgs,

    /// Where to activate: [user@]host[:port], ssh://..., 'root@{name}', or local [default: the record's NAME, else local]
    #[arg(long, value_name = "TARGET")]
    pub on: Option<TargetSpec>,

    /// Activate even when the target's hostname is not the record's
    #[arg(long)]
    pub no_hostname_check: bool,

    /// Check everything on the target, change nothing
    #[arg(long)]
    pub dry_run: bool,

    /// Activate specialisation/NAME of the system (not implemented yet)
    #[arg(long, value_name = "NAME")]
    pub specialisation: Option<String>,

    /// Go back to the previous generation (not implemented yet)
    #[arg(long)]
    pub rollback: bool,

    /// Roll back unless a new connection confirms within SECONDS (not implemented yet)
    #[arg(long, value_name = "SECONDS")]
    pub confirm_timeout: Option<u64>,

    /// Ask the sudo password once, on the terminal (not implemented yet)
    #[arg(long)]
    pub ask_sudo_password: bool,

    #[command(flatten)]
    pub output: OutputArgs,
}

pub fn run(cli: Cli) -> Result<Outcome, Error> {
    cli::refuse_unbuilt(&[
        (cli.specialisation.is_some(), "--specialisation"),
        (cli.rollback, "--rollback"),
        (cli.confirm_timeout.is_some(), "--confirm-timeout"),
        (cli.ask_sudo_password, "--ask-sudo-password"),
    ])?;
    let opts = Options { action: cli.action, hostname_check: !cli.no_hostname_check, dry_run: cli.dry_run };
    let records = cli.records.read()?;
    let planned = cli::with_targets(records, cli.on.as_ref(), Some(Target::Local))?;
    let mut results = Results::new(&cli.output);
    for (record, target) in &planned {
        results.record(record, activation::activate(target, record, &opts))?;
    }
    Ok(results.finish())
}
