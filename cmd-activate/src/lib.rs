//! nixpipe-activate: set the system profile and switch, on a target, safely.

use clap::Parser;
use nixpipe_cli::{JobsArgs, OutputArgs, PrivilegeArgs, RecordArgs, Results};
use nixpipe_deploy::activation::{self, Action, Activation, IfInhibited, Options, Specialisation};
use nixpipe_deploy::fleet::{self, Rollout, Step};
use nixpipe_deploy::keys;
use nixpipe_deploy::{Error, Outcome};
use nixpipe_host::privilege::Privilege;

use nixpipe_host::session::Session;
use nixpipe_host::{Target, TargetSpec};
use nixpipe_store::{Record, StorePath};

const EXAMPLES: &str = include_str!("../doc/examples.txt");
const SAFETY: &str = include_str!("../doc/safety.txt");

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

    /// Roll back unless a new ssh connection confirms the switch within SECONDS; with --reboot, unless the host
    /// is back on the new generation (booted once) within SECONDS, refused where its boot loader cannot boot once
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub confirm_timeout: Option<u64>,

    #[command(flatten)]
    pub privilege: PrivilegeArgs,

    /// Let the target fetch a missing system from its own substituters first
    #[arg(long, conflicts_with = "rollback")]
    pub realise: bool,

    /// Show what changes (packages upgraded, added, removed) before activating, on stderr
    #[arg(long)]
    pub diff: bool,

    #[command(flatten)]
    pub jobs: JobsArgs,

    /// Start no more hosts once one has failed
    #[arg(long)]
    pub fail_fast: bool,

    /// Roll out N hosts at a time; a failed host (switch or --check) stops the rollout
    #[arg(long, value_name = "N", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub batch: Option<usize>,

    /// When the system's switch inhibitors forbid a switch (critical components changed): refuse it, or
    /// make it the boot default instead (boot), to run at the next reboot
    #[arg(long, value_enum, value_name = "WHAT", default_value_t)]
    pub if_inhibited: IfInhibited,

    /// Reboot into the new system when it is the boot default but does not run yet (boot, an inhibited
    /// switch, a changed init interface or kernel), and check that it comes back running it. For boot, under
    /// systemd-boot or GRUB, the new generation boots once and becomes the default only once it is back
    #[arg(long)]
    pub reboot: bool,

    /// How long a rebooted target may take to answer again
    #[arg(long, value_name = "SECONDS", default_value_t = activation::REBOOT_WAIT, requires = "reboot", value_parser = clap::value_parser!(u64).range(1..))]
    pub reboot_timeout: u64,

    /// How long to wait for NixOS's own switch lock when another switch holds it (nixos-rebuild, an
    /// auto-upgrade); then the target is left as it is
    #[arg(long, value_name = "SECONDS", default_value_t = activation::NIXOS_LOCK_WAIT)]
    pub lock_timeout: u64,

    /// How long to keep trying to reach a host again whose connection was lost while its switch runs (the
    /// switch goes on there); then nixpipe says so and exits 1
    #[arg(long, value_name = "SECONDS", default_value_t = activation::RECONNECT_WAIT, value_parser = clap::value_parser!(u64).range(1..))]
    pub reconnect_timeout: u64,

    /// Keep a new system whose switch left units failed (exit 4) instead of rolling back
    #[arg(long)]
    pub keep_on_unit_failure: bool,

    /// (Re)install the boot loader (NIXOS_INSTALL_BOOTLOADER=1), as nixos-rebuild --install-bootloader
    #[arg(long)]
    pub install_bootloader: bool,

    /// Upload each record's deployment.keys (JSON records of nixpipe-eval) before the switch, or after it
    /// for uploadAt = "post-activation"; contents read here, sent over ssh's stdin only
    #[arg(long)]
    pub keys: bool,

    /// Run the keyCommand of records' keys here, as you (--keys): the records are code then, so only for
    /// records you made (nixpipe-eval of your own configuration), never ones fetched from elsewhere
    #[arg(long, requires = "keys")]
    pub run_key_commands: bool,

    /// Run COMMAND on each target after switching (e.g. 'curl -fsS localhost/health'); when it fails, that target rolls back
    #[arg(long, value_name = "COMMAND")]
    pub check: Option<String>,

    #[command(flatten)]
    pub output: OutputArgs,
}

/// An activation, checked: every "bad usage, nothing done" is decided here.
struct Plan {
    opts: Options,
    work: Work,
    rollout: Rollout,
    privilege: Privilege,
    output: OutputArgs,
}

/// What the activation works on.
enum Work {
    /// --rollback, --restore-bundle: one target, no records.
    GoBack(Target),
    Records(Vec<(Record, Target)>),
}

impl Plan {
    fn new(cli: &Cli) -> Result<Plan, Error> {
        check_combinations(cli)?;
        // Asked before the records come: they may come after a long build.
        let privilege = cli.privilege.privilege()?;
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
            if_inhibited: cli.if_inhibited,
            keep_on_unit_failure: cli.keep_on_unit_failure,
            install_bootloader: cli.install_bootloader,
            reboot: cli.reboot.then_some(cli.reboot_timeout),
            lock_timeout: Some(cli.lock_timeout),
            reconnect_timeout: Some(cli.reconnect_timeout),
            keys: cli.keys,
        };
        let mut output = cli.output.clone();
        let work = match cli.rollback || cli.restore_bundle {
            true => Work::GoBack(
                cli.on.as_ref().expect("clap requires --on").resolve(None).map_err(|e| Error::Usage(e.to_string()))?,
            ),
            false => {
                // The host's connection, and the probe's session, are made
                // while the records come (from a copy to the same host, usually).
                if let Some(Ok(target)) = cli.on.as_ref().map(|spec| spec.resolve(None)) {
                    activation::prepare(target, &privilege);
                }
                let records = cli.records.read()?;
                output = cli.output.for_records(&records);
                Work::Records(fleet::with_targets(records, cli.on.as_ref(), Some(Target::Local))?)
            }
        };
        if let (true, Work::Records(records)) = (cli.keys, &work) {
            check_keys(records, cli.run_key_commands)?;
        }
        let rollout = Rollout { jobs: cli.jobs.jobs(), batch: cli.batch, fail_fast: cli.fail_fast };
        Ok(Plan { opts, work, rollout, privilege, output })
    }

    fn run(&self, results: &mut Results, json: bool) -> Result<(), Error> {
        let records = match &self.work {
            Work::GoBack(target) => {
                let session = Session::new(target.clone(), &self.privilege, nixpipe_cli::reports());
                let activation = activation::activate(&session, None, &self.opts);
                return report(results, None, target, &activation, self.opts.action, json);
            }
            Work::Records(records) => records,
        };
        self.rollout.run(
            records,
            |(record, target)| {
                let _line = nixpipe_cli::reports().host_line(record.label(), &format!("activating on {target}"));
                activation::activate(
                    &Session::new(target.clone(), &self.privilege, nixpipe_cli::reports()),
                    Some(record),
                    &self.opts,
                )
            },
            |(record, _), activation| activation.error().map(|_| record.label().to_owned()),
            |(record, target), step| {
                let activation = match step {
                    Step::Done(activation) => activation,
                    Step::NotReached(stopped_by) => Activation::skipped(&stopped_by),
                };
                let written = report(results, Some(record), target, &activation, self.opts.action, json);
                results.keep(written);
            },
        );
        Ok(())
    }
}

pub fn run(cli: Cli) -> Result<Outcome, Error> {
    let plan = Plan::new(&cli)?;
    let mut results = Results::new(&plan.output);
    plan.run(&mut results, plan.output.json)?;
    results.finish()
}

/// Every record's keys are well formed, before any host is touched. A
/// plain record carries no keys at all: a step with --plain in between
/// would drop them without a word. A keyCommand runs a program here: only
/// when the user says the records are theirs (--run-key-commands).
fn check_keys(records: &[(Record, Target)], run_key_commands: bool) -> Result<(), Error> {
    for (record, _) in records {
        let usage = |why: String| Error::Usage(format!("{}: {why}", record.label()));
        if record.extra.is_empty() {
            return Err(usage(
                "--keys reads deployment.keys from JSON records: nixpipe-eval --json, and no --plain on a step between"
                    .into(),
            ));
        }
        let keys = keys::of_record(record).map_err(|e| usage(e.to_string()))?;
        if let Some(key) = keys.iter().find(|k| k.key_command.is_some()).filter(|_| !run_key_commands) {
            return Err(usage(format!(
                "key {}: its keyCommand would run here, as you: records are code then; \
                 --run-key-commands when these records are your own",
                key.name
            )));
        }
    }
    Ok(())
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
    if cli.reboot && !matches!(cli.action, Action::Switch | Action::Boot) {
        return usage("--reboot needs boot or switch: nothing else makes a system the boot default");
    }
    let changes_running = matches!(cli.action, Action::Switch | Action::Test) || cli.reboot;
    if (cli.confirm_timeout.is_some() || cli.check.is_some()) && !changes_running {
        return usage(
            "--confirm-timeout and --check need switch, test or --reboot: nothing else changes the running system",
        );
    }
    if cli.install_bootloader && !matches!(cli.action, Action::Switch | Action::Boot) {
        return usage("--install-bootloader needs switch or boot: nothing else touches the boot loader");
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
    action: Action,
    json: bool,
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
        if json {
            r.add_fields(&activation.json(&target.to_string(), action));
        }
        r
    });
    match (activation.error(), record) {
        (None, Some(record)) => results.write(&record),
        (None, None) => Ok(()),
        (Some(why), record) => {
            results.failed_with(&label, why, Some(why.changed()));
            match record.filter(|_| json) {
                Some(record) => results.write(&record),
                None => Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `check_combinations` says of `args`, as given after the command.
    fn combination(args: &[&str]) -> Result<(), String> {
        let cli = Cli::try_parse_from(["nixpipe-activate"].iter().chain(args)).map_err(|e| e.to_string())?;
        check_combinations(&cli).map_err(|e| e.to_string())
    }

    #[test]
    fn flags_that_cannot_work_together_are_bad_usage_before_anything_is_read() {
        for (args, said) in [
            (&["--rollback", "--on", "web1", "switch", "/nix/store/x"][..], "take no records"),
            (&["--specialisation", "a", "boot"][..], "cannot be used with boot"),
            (&["--reboot", "test"][..], "--reboot needs boot or switch"),
            (&["--confirm-timeout", "30", "boot"][..], "need switch, test or --reboot"),
            (&["--install-bootloader", "test"][..], "needs switch or boot"),
        ] {
            let refused = combination(args).unwrap_err();
            assert!(refused.contains(said), "{args:?}: {refused}");
        }
        for args in [&["--reboot", "--confirm-timeout", "30", "boot"][..], &["--check", "true", "test"][..]] {
            assert_eq!(combination(args), Ok(()), "{args:?}");
        }
    }
}
