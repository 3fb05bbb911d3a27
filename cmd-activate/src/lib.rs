//! nixpipe-activate: set the system profile and switch, on a target, safely.

use clap::Parser;
use nixpipe_core::activation::{self, Action, Activation, Options, Specialisation};
use nixpipe_core::cli::{self, OutputArgs, RecordArgs, Results};
use nixpipe_core::fleet;
use nixpipe_core::privilege::Privilege;
use nixpipe_core::progress;
use nixpipe_core::{Error, Outcome, Record, StorePath, Target, TargetSpec};

const EXAMPLES: &str = "\
Examples:
  Build, copy and switch:
    nixpipe-eval -f configuration.nix | nixpipe-copy --to root@web1 | nixpipe-activate --on root@web1 switch

  As a user with sudo, asked for the password once for all hosts:
    nixpipe-activate --on 'deploy@{name}' --ask-sudo-password switch < systems

  Roll back unless a new ssh connection still gets in after the switch:
    nixpipe-activate --on root@web1 --confirm-timeout 30 switch

  Pull: the host fetches the system from its own substituters:
    curl -s https://deploy.example/web1 | nixpipe-activate --on root@web1 --realise switch

  Go back one generation:
    nixpipe-activate --on root@web1 --rollback switch

  Deploy a bundle (nixpipe-bundle), later bring the one before back:
    nixpipe-eval -f configuration.nix | nixpipe-bundle --config . | nixpipe-copy --to root@pi | nixpipe-activate --on root@pi switch
    nixpipe-activate --on root@pi --restore-bundle switch";

const SAFETY: &str = "\
How it keeps the host safe:
  Nothing changes until the checks pass: the system is on the host (or
  --realise fetched it), it is a NixOS system, the host's hostname is the
  record's NAME (else the system's own hostname), and no other nixpipe
  activation runs there (a lock; the second one fails at once, saying who
  holds it).

  The switch runs on the host as a job of its own, detached from the ssh
  connection: a transient systemd unit where systemd runs (as nixos-rebuild
  does), else a process in its own session. Its log and result are kept in
  /run/nixpipe/jobs/ID. If the connection drops, nixpipe reconnects (for up
  to 5 minutes) and reports the real result.

  When switch-to-configuration fails, the profile goes back to the previous
  generation, the failed generation is deleted, and the system that ran
  before is activated again; the error says whether that worked, and the
  exit status is 1. With --confirm-timeout the same happens when nixpipe
  cannot confirm the switch over a NEW ssh connection (never a shared
  ControlMaster) in time: the host rolls itself back without help.

Privilege:
  Logged in as root, nothing more is needed. Otherwise each privileged step
  runs through `sudo -n` (passwordless sudo), or with --ask-sudo-password
  through `sudo -S`, fed the password asked once on /dev/tty. The password
  is never in argv, the environment, a log or a file. --sudo-cmd replaces
  sudo (doas, run0): it is used as given, and with --ask-sudo-password it
  gets the password on its stdin.

Output:
  The records activated, on stdout; program output of the host and --diff,
  on stderr, each line prefixed with the record's NAME. With --json every
  record is written, failed ones too, with: target, action, previous (the
  system that ran before), result (activated, checked, refused, failed),
  rolled_back, error.";

/// Activate NixOS systems on their machines, safely, as nixos-rebuild does.
///
/// For each record (a system, or a bundle from nixpipe-bundle), checks on
/// the target that the path is there, that it is a NixOS system and that the
/// host is the one the record names; only then
/// adds a generation to /nix/var/nix/profiles/system (switch, boot) and runs
/// the system's bin/switch-to-configuration ACTION, rolling back when that
/// fails. Records that were activated are written to stdout.
#[derive(Parser, Debug)]
#[command(name = "nixpipe-activate", version, after_help = EXAMPLES, after_long_help = format!("{EXAMPLES}\n\n{SAFETY}"))]
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

    /// Activate specialisation/NAME of the system (the profile gets the system itself)
    #[arg(long, value_name = "NAME", conflicts_with = "rollback", value_parser = Specialisation::parse)]
    pub specialisation: Option<Specialisation>,

    /// Go back one generation of the system profile on --on TARGET and activate it; reads no records
    #[arg(long, requires = "on")]
    pub rollback: bool,

    /// Bring back the bundle before the current one (/etc/nixos/previous-configuration) on --on TARGET; reads no records
    #[arg(long, requires = "on", conflicts_with_all = ["rollback", "specialisation", "realise"])]
    pub restore_bundle: bool,

    /// Roll back unless a new ssh connection confirms the switch within SECONDS
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub confirm_timeout: Option<u64>,

    /// Ask the sudo password once, on the terminal, for every host of the run
    #[arg(long)]
    pub ask_sudo_password: bool,

    /// Become root with CMD instead of sudo (e.g. doas)
    #[arg(long, value_name = "CMD")]
    pub sudo_cmd: Option<String>,

    /// Let the target fetch a missing system from its own substituters first
    #[arg(long, conflicts_with = "rollback")]
    pub realise: bool,

    /// Show what changes (packages upgraded, added, removed) before activating, on stderr
    #[arg(long)]
    pub diff: bool,

    /// Work on up to N hosts at once
    #[arg(long, short = 'j', value_name = "N", default_value_t = fleet::DEFAULT_JOBS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub jobs: usize,

    /// Start no more hosts once one has failed
    #[arg(long)]
    pub fail_fast: bool,

    /// Roll out N hosts at a time; a failed host (switch or --check) stops the rollout
    #[arg(long, value_name = "N", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub batch: Option<usize>,

    /// Run COMMAND on each target after switching (e.g. 'curl -fsS localhost/health'); when it fails, that target rolls back
    #[arg(long, value_name = "COMMAND")]
    pub check: Option<String>,

    #[command(flatten)]
    pub output: OutputArgs,
}

pub fn run(cli: Cli) -> Result<Outcome, Error> {
    check_combinations(&cli)?;
    let opts = Options {
        action: cli.action,
        hostname_check: !cli.no_hostname_check,
        dry_run: cli.dry_run,
        specialisation: cli.specialisation.clone(),
        confirm_timeout: cli.confirm_timeout,
        realise: cli.realise,
        diff: cli.diff,
        restore_bundle: cli.restore_bundle,
        check: cli.check.clone(),
    };
    let mut results = Results::new(&cli.output);
    if cli.rollback || cli.restore_bundle {
        let spec = cli.on.as_ref().expect("clap requires --on");
        let target = spec.resolve(None).map_err(Error::Usage)?;
        let privilege = Privilege::new(cli.sudo_cmd.as_deref(), cli.ask_sudo_password)?;
        let activation = activation::activate(&target, None, &opts, &privilege);
        report(&mut results, None, &target, &activation, &cli)?;
        return Ok(results.finish());
    }
    let records = cli.records.read()?;
    let planned = cli::with_targets(records, cli.on.as_ref(), Some(Target::Local))?;
    let privilege = Privilege::new(cli.sudo_cmd.as_deref(), cli.ask_sudo_password)?;
    roll_out(&cli, &planned, &opts, &privilege, &mut results)?;
    Ok(results.finish())
}

/// Activates the records, `--jobs` hosts at once, or `--batch` hosts at a
/// time, stopping the rollout at a batch with a failure. Hosts never
/// reached keep their system and are reported as skipped.
fn roll_out(
    cli: &Cli,
    planned: &[(Record, Target)],
    opts: &Options,
    privilege: &Privilege,
    results: &mut Results,
) -> Result<(), Error> {
    let batch = cli.batch.unwrap_or(planned.len().max(1));
    let jobs = cli.batch.unwrap_or(cli.jobs);
    let mut stopped_by: Option<String> = None;
    let mut write_error = None;
    for chunk in planned.chunks(batch) {
        let skipped = match &stopped_by {
            Some(_) => (0..chunk.len()).collect(),
            None => fleet::each(
                chunk,
                jobs,
                |(record, target)| {
                    let _line = progress::HostLine::new(record.label(), &format!("activating on {target}"));
                    activation::activate(target, Some(record), opts, privilege)
                },
                |(record, target), activation| {
                    if let Err(e) = report(results, Some(record), target, &activation, cli) {
                        write_error.get_or_insert(e);
                    }
                    let failed = activation.error().is_some();
                    if failed && stopped_by.is_none() && (cli.batch.is_some() || cli.fail_fast) {
                        stopped_by = Some(record.label().to_owned());
                    }
                    !(failed && cli.fail_fast)
                },
            ),
        };
        for i in skipped {
            let (record, target) = &chunk[i];
            let why = format!(
                "not reached: the rollout stopped after {} failed; nothing changed",
                stopped_by.as_deref().unwrap_or("a host")
            );
            report(results, Some(record), target, &Activation::skipped(why), cli)?;
        }
    }
    write_error.map_or(Ok(()), Err)
}

/// What makes no sense together is bad usage, before anything is done.
fn check_combinations(cli: &Cli) -> Result<(), Error> {
    let usage = |what: &str| Err(Error::Usage(what.to_owned()));
    if (cli.rollback || cli.restore_bundle) && !cli.records.paths.is_empty() {
        return usage("--rollback and --restore-bundle take no records: they go back on --on TARGET");
    }
    if cli.specialisation.is_some() && cli.action == Action::Boot {
        return usage("--specialisation cannot be used with boot, as with nixos-rebuild");
    }
    if (cli.confirm_timeout.is_some() || cli.check.is_some()) && !matches!(cli.action, Action::Switch | Action::Test) {
        return usage("--confirm-timeout and --check need switch or test: nothing else changes the running system");
    }
    Ok(())
}

/// Writes the record on (the records activated; with --json all of them)
/// and reports a failure in one line.
fn report(
    results: &mut Results,
    record: Option<&Record>,
    target: &Target,
    activation: &Activation,
    cli: &Cli,
) -> Result<(), Error> {
    let record = match record {
        Some(record) => Some(record.clone()),
        // --rollback, --restore-bundle: the record of what was gone back to,
        // named after the host.
        None => activation
            .path
            .as_deref()
            .and_then(|p| StorePath::parse(p).ok())
            .map(|path| Record::new(activation.hostname.clone(), path)),
    };
    let label = record.as_ref().map_or_else(|| target.to_string(), |r| r.label().to_owned());
    let record = record.map(|mut r| {
        if cli.output.json {
            r.extra.extend(activation.json_fields(target, cli.action));
        }
        r
    });
    match (activation.error(), record) {
        (None, Some(record)) => results.write(&record),
        (None, None) => Ok(()),
        (Some(why), record) => {
            results.failed(&label, why);
            match record.filter(|_| cli.output.json) {
                Some(record) => results.write(&record),
                None => Ok(()),
            }
        }
    }
}
