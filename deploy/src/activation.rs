//! Activating a NixOS system on a target, safely: check that it is the
//! right system on the right host, then run a detached job there that takes
//! a lock, adds a generation to the system profile, runs the system's own
//! `bin/switch-to-configuration` and rolls back when that fails or when no
//! new connection confirms the switch in time (see `job`).

mod job;
#[cfg(test)]
mod on_a_fake_host;
mod once;
mod reboot;

use crate::bundle::PREVIOUS;
use crate::keys::{self, UploadAt};
use job::Job;
use nixpipe_host::event::{Event, JobResult, ProbeFacts, Rollback};
use nixpipe_host::privilege::Privilege;
use nixpipe_host::report::Report;
use nixpipe_host::session::{Args, Held, Run, Script, Session, SessionError};
use nixpipe_host::Target;
use nixpipe_store::record::Record;
use serde::Serialize;

/// What switch-to-configuration is asked to do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Action {
    /// Make it the boot default and activate it now
    #[default]
    Switch,
    /// Make it the boot default, activate it at the next boot
    Boot,
    /// Activate it now, leave the boot default alone
    Test,
    /// Show what activating would change, change nothing
    DryActivate,
    /// Run the system's pre-switch checks only, change nothing
    Check,
}

/// What to do with a switch its inhibitors forbid (--if-inhibited).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum IfInhibited {
    /// Refuse it, changing nothing
    #[default]
    Refuse,
    /// Make it the boot default instead (boot), to activate at the next reboot
    Boot,
}

impl Serialize for Action {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Switch => "switch",
            Action::Boot => "boot",
            Action::Test => "test",
            Action::DryActivate => "dry-activate",
            Action::Check => "check",
        }
    }
}

/// The name of one of a system's specialisations: one file name in its
/// `specialisation/` directory, of the characters Nix allows in store
/// names, so that it can never name a program elsewhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Specialisation(String);

impl Specialisation {
    pub fn parse(name: &str) -> Result<Specialisation, String> {
        use nixpipe_store::store_path::StorePathError as E;
        let why = match name.contains('/') {
            true => "a specialisation is one name, not a path".to_owned(),
            // The rules of store names, said of a specialisation.
            false => match nixpipe_store::store_path::check_name(name) {
                Ok(()) => return Ok(Specialisation(name.to_owned())),
                Err(E::EmptyName) => "it is empty".to_owned(),
                Err(E::NameTooLong) => "it is longer than a store path name may be".to_owned(),
                Err(E::LeadingDot) => "it starts with '.'".to_owned(),
                Err(E::BadNameChar(c)) => {
                    format!("{c:?} is not one of the letters, digits and + - . _ ? = of store names")
                }
                Err(other) => other.to_string(),
            },
        };
        Err(format!("bad specialisation name {name:?}: {why}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Specialisation {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone, Debug, Default)]
pub struct Options {
    pub action: Action,
    pub hostname_check: bool,
    pub dry_run: bool,
    /// Activate specialisation/NAME of the system.
    pub specialisation: Option<Specialisation>,
    /// Roll back unless a new connection confirms within this many seconds.
    pub confirm_timeout: Option<u64>,
    /// Fetch a missing system from the target's own substituters first.
    pub realise: bool,
    /// Show what changes between the running system and the new one.
    pub diff: bool,
    /// With no record: bring back the previous bundle rather than the
    /// previous generation.
    pub restore_bundle: bool,
    /// Run on the target after switching; when it fails, the target rolls back.
    pub check: Option<String>,
    /// What to do when the system's switch inhibitors forbid the switch.
    pub if_inhibited: IfInhibited,
    /// Keep a system whose switch left units failed (exit 4).
    pub keep_on_unit_failure: bool,
    /// Pass NIXOS_INSTALL_BOOTLOADER=1 to the switch.
    pub install_bootloader: bool,
    /// Reboot into the new system when it is the boot default but does not
    /// run yet (boot, an inhibited switch, a changed init interface, a new
    /// kernel), waiting for it at most this many seconds.
    pub reboot: Option<u64>,
    /// Upload the record's deployment.keys, before or after the switch as
    /// each says.
    pub keys: bool,
    /// How long the job waits for NixOS's own lock (another
    /// switch-to-configuration) before it gives up, changing nothing; None
    /// for [`NIXOS_LOCK_WAIT`].
    pub lock_timeout: Option<u64>,
    /// How long to keep trying to get back a lost connection to a host
    /// whose job runs; None for [`RECONNECT_WAIT`].
    pub reconnect_timeout: Option<u64>,
}

pub use reboot::REBOOT_WAIT;

/// The default of [`Options::reconnect_timeout`]: a reboot of the host
/// under the job, or a link that comes back, fits in it.
pub const RECONNECT_WAIT: u64 = 300;

/// The default of [`Options::lock_timeout`]: an auto-upgrade's switch
/// takes about that long.
pub const NIXOS_LOCK_WAIT: u64 = 60;

/// How long the target waits for a --check to pass when no
/// --confirm-timeout says otherwise.
pub(crate) const CHECK_WINDOW: u64 = 300;

/// Why an activation was refused, or failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ActivationError {
    // Refused: nothing changed.
    #[error("{path} is not on {target}{}", if *.realise { " nor in its substituters" } else { "; run nixpipe-copy first" })]
    NotOnTarget { path: String, target: Target, realise: bool },
    #[error("{path} is not a NixOS system (no nixos-version or bin/switch-to-configuration)")]
    NotNixos { path: String },
    #[error("{path} is a bundle: its bin/switch activates its system, not a specialisation")]
    BundleSpecialisation { path: String },
    #[error("{path} has no specialisation '{name}' (it has: {known})")]
    NoSpecialisation { path: String, name: String, known: String },
    #[error("{target} is host '{hostname}', not '{expected}'; nothing changed (--no-hostname-check to deploy anyway)")]
    WrongHost { target: Target, hostname: String, expected: String },
    #[error("{target} has no previous bundle ({PREVIOUS}) to restore")]
    NoPreviousBundle { target: Target },
    #[error("{target} has no generation before the current one to go back to")]
    NoPreviousGeneration { target: Target },
    #[error("cannot fetch {path} from the substituters of {target}: {why}")]
    Realise { path: String, target: Target, why: Box<SessionError> },
    #[error("another nixpipe activation is running on {target}: {owner}; nothing changed")]
    Locked { target: Target, owner: String },
    #[error("{0}; nothing changed")]
    NotStarted(Box<SessionError>),
    #[error("could not start the activation on {target} ({status}): {why}; nothing changed")]
    LaunchFailed { target: Target, status: String, why: String },
    #[error(transparent)]
    Session(Box<SessionError>),
    #[error("not reached: the rollout stopped after {0} failed; nothing changed")]
    NotReached(String),
    #[error("{path} is built for {system}, and {target} runs {platforms}; nothing changed")]
    WrongPlatform { path: String, system: String, target: Target, platforms: String },
    #[error(
        "{target}: {action} to {path} is inhibited: {} changed (its switch inhibitors); nothing changed \
         (activate it at the next boot: nixpipe-activate --reboot boot, or --if-inhibited boot)",
        keys.join(", ")
    )]
    Inhibited { action: Action, path: String, target: Target, keys: Vec<String> },
    #[error(
        "{target} cannot boot a generation once, so --reboot --confirm-timeout could not fall back: {missing}; \
         nothing changed (without --confirm-timeout, --reboot makes the new generation the boot default)"
    )]
    NoBootOnce { target: Target, missing: String },
    #[error("{target} did not answer within {seconds} s of its reboot; its boot default is the new system")]
    NeverCameBack { target: Target, seconds: u64 },
    #[error("{target} came back from its reboot running {running}, not {system}")]
    CameBackOnOther { target: Target, running: String, system: String },
    #[error("{error}; {rollback}")]
    RebootRolledBack { error: Box<ActivationError>, rollback: String, rolled_back: bool },
    #[error("NixOS's own lock on {target} stayed taken ({holder}); nothing activated")]
    Busy { target: Target, holder: String },
    #[error(
        "the switch-to-configuration of {path} has no check action (NixOS 25.05 and later have it); nothing changed"
    )]
    NoCheckAction { path: String },
    #[error("{0}; nothing activated")]
    KeysNotWritten(Box<crate::keys::KeyError>),
    // Failed after changing things.
    #[error("{0}, after the switch: the new system runs")]
    KeysNotWrittenAfter(Box<crate::keys::KeyError>),
    #[error("could not set the system profile on {target}; nothing activated (see {log})")]
    ProfileNotSet { target: Target, log: String },
    #[error("switch-to-configuration {action} failed on {target}; nothing changed")]
    DryActivateFailed { action: Action, target: Target },
    #[error("switch-to-configuration {action} failed on {target}{}; {rollback}", exited.map(how_it_failed).unwrap_or_default())]
    SwitchFailed { action: Action, target: Target, exited: Option<job::Exited>, rollback: Rollback },
    #[error(
        "switch-to-configuration {action} failed on {target}{} before activating anything (a pre-switch check or the \
         bootloader); {}",
        exited.map(|e| format!(" (exit {})", e.status)).unwrap_or_default(),
        if rollback.is_back() { "the profile is back on the previous generation" } else { "putting the profile back FAILED: the host needs attention" }
    )]
    NotActivated { action: Action, target: Target, exited: Option<job::Exited>, rollback: Rollback },
    #[error(
        "{target}: the init interface of {path} differs from the running system's, so only a boot can start it, and \
         {action} {}; nothing changed (nixpipe-activate --reboot boot, or switch and reboot)",
        if *action == Action::Test { "does not make it the boot default: a reboot boots the running system again" } else { "shows no more" }
    )]
    InitChanged { action: Action, target: Target, path: String },
    #[error(
        "switch-to-configuration {action} on {target} left units failed: {}; {}",
        units.join(", "),
        match rollback { Some(r) => r.to_string(), None => "kept (--keep-on-unit-failure): the new system stays active".into() }
    )]
    UnitsFailed { action: Action, target: Target, units: Vec<String>, rollback: Option<Rollback> },
    #[error("no new connection confirmed the switch within {seconds} s; {target} {rollback}")]
    Unconfirmed { seconds: u64, target: Target, rollback: Rollback },
    #[error("the check failed after the switch; {target} {rollback}")]
    CheckFailed { target: Target, rollback: Rollback },
    #[error(
        "could not make {target} boot the new generation once: {why}; {}",
        if rollback.is_back() { "the profile is back on the previous generation, nothing rebooted" } else { "putting the profile back FAILED: the host needs attention" }
    )]
    OnceNotSet { target: Target, why: String, rollback: Rollback },
    #[error(
        "{target} booted generation {generation} once and {unheld}; its boot default stayed generation {previous}: {}",
        match cleaned {
            Ok(()) => format!("it runs that again, the profile is back on it and generation {generation} is deleted"),
            Err(why) => format!("its next boot (a watchdog, a power cycle, a reset) boots that; the profile still holds generation {generation} ({why})"),
        }
    )]
    BootOnceLeft { target: Target, generation: u64, previous: u64, unheld: once::Unheld, cleaned: Result<(), String> },
    #[error(
        "{target} came back on generation {generation}, but making it the boot default failed: {why}; it runs it, and \
         its next boot is the previous generation"
    )]
    NotMadeDefault { target: Target, generation: u64, why: String },
    #[error("lost track of the activation on {target}: {why} (see {log})")]
    Lost { target: Target, why: String, log: String },
}

/// Boxed: a session's error is large, and errors travel in every Result.
impl From<SessionError> for ActivationError {
    fn from(e: SessionError) -> ActivationError {
        ActivationError::Session(Box::new(e))
    }
}

impl ActivationError {
    /// Bad usage found before anything was done (a NIX_SSHOPTS ssh cannot
    /// take, a --sudo-cmd that is no command), whichever step met it.
    pub fn is_usage(&self) -> bool {
        match self {
            ActivationError::Session(e) | ActivationError::NotStarted(e) => e.is_usage(),
            _ => false,
        }
    }

    /// What the failed activation changed on the host.
    pub fn changed(&self) -> Changed {
        use ActivationError as E;
        match self {
            _ if self.rolled_back() => Changed::RolledBack,
            E::Session(e) | E::NotStarted(e) if e.is_usage() => Changed::Nothing,
            E::NotOnTarget { .. }
            | E::NotNixos { .. }
            | E::BundleSpecialisation { .. }
            | E::NoSpecialisation { .. }
            | E::WrongHost { .. }
            | E::NoPreviousBundle { .. }
            | E::NoPreviousGeneration { .. }
            | E::Locked { .. }
            | E::NotStarted(_)
            | E::LaunchFailed { .. }
            | E::NotReached(_)
            | E::WrongPlatform { .. }
            | E::Inhibited { .. }
            | E::Busy { .. }
            | E::NoCheckAction { .. }
            | E::NoBootOnce { .. }
            | E::KeysNotWritten(_)
            | E::DryActivateFailed { .. } => Changed::Nothing,
            // The probe's own failure, or a substituter's: nothing was
            // started yet.
            E::Session(_) | E::Realise { .. } => Changed::Nothing,
            // Only the boot default moved (test: not even that).
            E::InitChanged { action: Action::Test | Action::DryActivate, .. } => Changed::Nothing,
            E::NotActivated { rollback, .. } | E::OnceNotSet { rollback, .. } if rollback.is_back() => Changed::Nothing,
            _ => Changed::Something,
        }
    }

    /// Whether the target is back on what it ran before.
    pub(crate) fn rolled_back(&self) -> bool {
        match self {
            ActivationError::SwitchFailed { rollback, .. }
            | ActivationError::UnitsFailed { rollback: Some(rollback), .. }
            | ActivationError::Unconfirmed { rollback, .. }
            | ActivationError::CheckFailed { rollback, .. } => rollback.is_back(),
            ActivationError::RebootRolledBack { rolled_back, .. } => *rolled_back,
            ActivationError::BootOnceLeft { cleaned, .. } => cleaned.is_ok(),
            _ => false,
        }
    }
}

/// What a failed step changed: the second question every error answers
/// (after "was it bad usage?"), for whoever reads a run's result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Changed {
    /// Refused, or failed before changing anything.
    Nothing,
    /// Changed, then put back as it was.
    RolledBack,
    /// Something stayed changed (paths copied, a system activated, a boot
    /// default moved): the message says what.
    Something,
}

/// How a switch failed, by its exit status and what the host showed.
fn how_it_failed(exited: job::Exited) -> String {
    match exited.activated {
        true => format!(" (exit {}) after it had begun activating", exited.status),
        false => format!(" (exit {}, which may come after activating)", exited.status),
    }
}

/// How one activation went.
#[derive(Debug, Clone)]
pub enum Verdict {
    Activated,
    /// --dry-run: every check passed, nothing changed.
    Checked,
    /// The init interface changed (exit 100): nothing activated, the new
    /// system is the boot default; a reboot activates it.
    RebootNeeded,
    /// Refused before anything changed.
    Refused(ActivationError),
    /// Failed after changing things (the error says whether the target is
    /// back on the system it ran before).
    Failed(ActivationError),
    /// Never tried: a rollout stopped before this target.
    Skipped(ActivationError),
}

#[derive(Debug)]
pub struct Activation {
    /// The system activated: the record's, or for --rollback the one gone back to.
    pub path: Option<String>,
    /// The target's hostname, as the target says.
    pub hostname: Option<String>,
    /// The system that ran before.
    pub previous: Option<String>,
    /// What switch-to-configuration was asked to do: the action given, or
    /// boot for a switch its inhibitors forbid (--if-inhibited boot).
    pub action: Option<Action>,
    /// The switch inhibitors that differ from the running system's.
    pub inhibitors: Vec<String>,
    /// Whether the booted kernel, initrd or modules are not the new
    /// system's (None: not known, or not switched).
    pub needs_reboot: Option<bool>,
    /// Whether the target was rebooted into it (--reboot).
    pub rebooted: bool,
    pub verdict: Verdict,
}

/// What `--json` adds to an activated (or failed) record.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ActivationJson {
    pub target: String,
    pub action: Action,
    pub previous: Option<String>,
    /// activated, checked, reboot-needed, refused, units-failed, failed or
    /// skipped.
    pub result: &'static str,
    pub rolled_back: bool,
    pub needs_reboot: Option<bool>,
    pub rebooted: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub switch_inhibitors: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed_units: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Activation {
    /// A target a rollout never reached, because `stopped_by` failed.
    pub fn skipped(stopped_by: &str) -> Activation {
        let why = ActivationError::NotReached(stopped_by.to_owned());
        Activation::new(None, Verdict::Skipped(why))
    }

    fn new(path: Option<String>, verdict: Verdict) -> Activation {
        let (hostname, previous, action, inhibitors, needs_reboot) = (None, None, None, Vec::new(), None);
        Activation { path, hostname, previous, action, inhibitors, needs_reboot, rebooted: false, verdict }
    }

    /// The error, when it did not go well.
    pub fn error(&self) -> Option<&ActivationError> {
        match &self.verdict {
            Verdict::Activated | Verdict::Checked | Verdict::RebootNeeded => None,
            Verdict::Refused(e) | Verdict::Failed(e) | Verdict::Skipped(e) => Some(e),
        }
    }

    /// What --json adds to the record.
    pub fn json(&self, target: &str, action: Action) -> ActivationJson {
        let result = match &self.verdict {
            Verdict::Activated => "activated",
            Verdict::Checked => "checked",
            Verdict::RebootNeeded => "reboot-needed",
            Verdict::Refused(_) => "refused",
            Verdict::Failed(ActivationError::UnitsFailed { .. }) => "units-failed",
            Verdict::Failed(_) => "failed",
            Verdict::Skipped(_) => "skipped",
        };
        let failed_units = match self.error() {
            Some(ActivationError::UnitsFailed { units, .. }) => units.clone(),
            _ => Vec::new(),
        };
        ActivationJson {
            target: target.to_owned(),
            action: self.action.unwrap_or(action),
            previous: self.previous.clone(),
            result,
            rolled_back: self.error().is_some_and(|e| e.changed() == Changed::RolledBack),
            needs_reboot: self.needs_reboot.or(matches!(self.verdict, Verdict::RebootNeeded).then_some(true)),
            rebooted: self.rebooted,
            switch_inhibitors: self.inhibitors.clone(),
            failed_units,
            error: self.error().map(ToString::to_string),
        }
    }
}

/// Activates the record's system on the session's host, or with no record
/// goes back one generation (--rollback): every check first, then the job.
pub fn activate(session: &Session, record: Option<&Record>, opts: &Options) -> Activation {
    let label = record.map_or_else(|| session.target.to_string(), |r| r.label().to_owned());
    let mut activation = Activation::new(record.map(|r| r.path.to_string()), Verdict::Checked);
    activation.verdict = match run(session, record, opts, &label, &mut activation) {
        Ok(verdict) => verdict,
        Err(why) => Verdict::Refused(why),
    };
    activation
}

/// What to activate, as probe.sh takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    /// The record's system.
    Given,
    /// The generation before the current one (--rollback).
    Rollback,
    /// The bundle before the current one (--rollback of a bundle).
    PreviousBundle,
}

impl Which {
    fn of(record: Option<&Record>, opts: &Options) -> Which {
        match record {
            Some(_) => Which::Given,
            None if opts.restore_bundle => Which::PreviousBundle,
            None => Which::Rollback,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Which::Given => "given",
            Which::Rollback => "rollback",
            Which::PreviousBundle => "previous-bundle",
        }
    }
}

/// Probe, checks, the job, its verdict. Err: refused, nothing changed.
fn run(
    session: &Session,
    record: Option<&Record>,
    opts: &Options,
    label: &str,
    activation: &mut Activation,
) -> Result<Verdict, ActivationError> {
    let target = session.target.clone();
    let (probe, held) = probed(session, record, opts, activation)?;
    let path = activation.path.clone().unwrap_or_default();
    check(&target, record, &probe, opts)?;
    activation.inhibitors = probe.changed_inhibitors();
    let action = action_allowed(&target, &path, &activation.inhibitors, opts)?;
    activation.action = Some(action);
    if action != opts.action {
        let keys = activation.inhibitors.clone();
        session.reports.report(Report::BootingInstead { label: label.to_owned(), keys });
    }
    let steps = Steps::of(&path, &probe, Which::of(record, opts), opts);
    let once = boot_once(&target, &probe, action, &steps, opts)?;
    if opts.diff {
        crate::diff::report(session, label, probe.current.as_deref(), &steps.system);
    }
    if opts.dry_run {
        let (label, action) = (label.to_owned(), action.as_str());
        session.reports.report(Report::WouldActivate { label, action, target: target.to_string(), path });
        return Ok(Verdict::Checked);
    }
    let keys = match (opts.keys, record) {
        (true, Some(record)) => keys::of_record(record).map_err(|e| ActivationError::KeysNotWritten(Box::new(e)))?,
        _ => Vec::new(),
    };
    let uploaded_at =
        |when: UploadAt| keys::upload(session, &keys.iter().filter(|k| k.upload_at == when).collect::<Vec<_>>());
    uploaded_at(UploadAt::PreActivation).map_err(|e| ActivationError::KeysNotWritten(Box::new(e)))?;
    let root = record.map(|r| format!("{}={}", crate::copy::gc_root_name(r), r.path)).unwrap_or_default();
    let plan = steps.plan(action, &root, once, opts);
    let end = Job::new(session, label, opts.check.as_deref()).run(&plan, held)?;
    if end.previous.is_some() {
        activation.previous = end.previous.clone();
    }
    activation.needs_reboot = end.needs_reboot;
    if end.needs_reboot == Some(true) {
        session.reports.report(Report::NeedsReboot { label: label.to_owned(), target: target.to_string() });
    }
    let mut verdict = verdict(&target, &path, action, opts, &end);
    if matches!(verdict, Verdict::Activated) {
        if let Err(e) = uploaded_at(UploadAt::PostActivation) {
            verdict = Verdict::Failed(ActivationError::KeysNotWrittenAfter(Box::new(e)));
        }
    }
    if matches!(verdict, Verdict::RebootNeeded) {
        session.reports.report(Report::InitChanged { label: label.to_owned(), target: target.to_string() });
    }
    let waiting = matches!(verdict, Verdict::RebootNeeded) || action == Action::Boot || end.needs_reboot == Some(true);
    match (opts.reboot, &verdict) {
        (Some(wait), Verdict::Activated | Verdict::RebootNeeded) if waiting => {
            activation.rebooted = true;
            Ok(match &end.boot_once {
                Some(booted_once) => once::rebooted(session, label, &steps.system, booted_once, wait, opts),
                None => rebooted(session, label, &steps.system, wait, opts),
            })
        }
        _ => Ok(verdict),
    }
}

/// The probe's facts of what to activate (realised first with --realise
/// when the host lacks it), noted in `activation`; and its session, held
/// for the job where nothing else runs on the host between them (see
/// [`holds_for_the_job`]).
fn probed(
    session: &Session,
    record: Option<&Record>,
    opts: &Options,
    activation: &mut Activation,
) -> Result<(ProbeFacts, Option<Held>), ActivationError> {
    let target = session.target.clone();
    let which = Which::of(record, opts);
    let (mut probe, mut held) = match holds_for_the_job(session, opts) {
        true => probe_holding(session, activation.path.as_deref(), which, opts)?,
        false => (probe(session, activation.path.as_deref(), which, opts)?, None),
    };
    let path = match (&probe.resolved, which) {
        (Some(path), _) => path.clone(),
        (None, Which::PreviousBundle) => return Err(ActivationError::NoPreviousBundle { target }),
        (None, _) => return Err(ActivationError::NoPreviousGeneration { target }),
    };
    if !probe.valid && opts.realise {
        held = None;
        session.stdout(&Run::program(&["nix-store", "--realise", &path])).map_err(|why| ActivationError::Realise {
            why: Box::new(why),
            path: path.clone(),
            target: target.clone(),
        })?;
        probe = self::probe(session, Some(&path), Which::Given, opts)?;
    }
    activation.path = Some(path);
    activation.hostname = Some(probe.hostname.clone());
    activation.previous = probe.current.clone();
    Ok((probe, held))
}

/// Makes `target`'s connection ready on a thread of its own while the
/// records are still coming: the session the probe will run over opened
/// ahead where sessions can be held, else the shared connection only.
pub fn prepare(target: Target, privilege: &Privilege) {
    match privilege.gives_passwords() {
        false => nixpipe_host::session::ahead::open(target, job::KEEPALIVE),
        true => {
            std::thread::spawn(move || target.warm_up());
        }
    }
}

/// Whether the probe's session can carry the job too: nothing else runs
/// on the host between them (no --diff, --keys or --dry-run), and the
/// session can be held.
fn holds_for_the_job(session: &Session, opts: &Options) -> bool {
    !opts.diff && !opts.keys && !opts.dry_run && session.can_hold()
}

/// Where the system to activate is, and what switches it.
struct Steps {
    /// The system itself: a bundle carries its system as toplevel.
    system: String,
    /// A bundle's bin/switch, or the system's (or its specialisation's)
    /// switch-to-configuration.
    program: String,
    mode: job::Mode,
}

impl Steps {
    fn of(path: &str, probe: &ProbeFacts, which: Which, opts: &Options) -> Steps {
        let system = if probe.bundle { format!("{path}/toplevel") } else { path.to_owned() };
        let program = match &opts.specialisation {
            _ if probe.bundle => format!("{path}/bin/switch"),
            Some(name) => format!("{system}/specialisation/{name}/bin/switch-to-configuration"),
            None => format!("{system}/bin/switch-to-configuration"),
        };
        let mode = match which {
            _ if probe.bundle => job::Mode::Bundle,
            Which::Given => job::Mode::Set,
            Which::Rollback | Which::PreviousBundle => job::Mode::Rollback,
        };
        Steps { system, program, mode }
    }

    /// The job's plan: these steps, `action`, the record's GC root `root`,
    /// the boot loader that boots the new generation `once`; with it, the
    /// confirmation is the reboot's (see [`once`]), not the job's.
    fn plan<'a>(&'a self, action: Action, root: &'a str, once: Option<&'a str>, opts: &Options) -> job::Plan<'a> {
        let confirm = opts.confirm_timeout.or(opts.check.as_ref().map(|_| CHECK_WINDOW)).unwrap_or(0);
        job::Plan {
            action,
            system: &self.system,
            program: &self.program,
            confirm: if once.is_some() { 0 } else { confirm },
            once,
            mode: self.mode,
            root,
            install_bootloader: opts.install_bootloader,
            keep_on_unit_failure: opts.keep_on_unit_failure,
            lock_timeout: opts.lock_timeout.unwrap_or(NIXOS_LOCK_WAIT),
            reconnect_for: std::time::Duration::from_secs(opts.reconnect_timeout.unwrap_or(RECONNECT_WAIT)),
        }
    }
}

/// Reboots into `system`, waiting up to `wait` seconds (--reboot-timeout)
/// for the host to be back, whatever --confirm-timeout says: a boot slower
/// than the confirmation must not leave the failed system the boot
/// default. With --confirm-timeout, a host that comes back on another
/// system is made to boot the previous generation again (it is the boot
/// default again, then the host is rebooted once more).
fn rebooted(session: &Session, label: &str, system: &str, wait: u64, opts: &Options) -> Verdict {
    let error = match reboot::reboot(session, label, wait).and_then(|state| reboot::runs(session, &state, system)) {
        Ok(()) => return Verdict::Activated,
        Err(error) => error,
    };
    if opts.confirm_timeout.is_none() || !matches!(error, ActivationError::CameBackOnOther { .. }) {
        return Verdict::Failed(error);
    }
    let back = Options {
        action: Action::Boot,
        confirm_timeout: None,
        reboot: None,
        check: None,
        diff: false,
        hostname_check: false,
        restore_bundle: false,
        ..opts.clone()
    };
    let (rollback, rolled_back) = match activate(session, None, &back).error() {
        Some(why) => (format!("making the previous generation the boot default again failed: {why}"), false),
        None => match reboot::reboot(session, label, wait) {
            Ok(state) => {
                let running = state.current.unwrap_or_else(|| "nothing".into());
                (format!("rolled back: the previous generation is the boot default again, and runs ({running})"), true)
            }
            Err(again) => (format!("the previous generation is the boot default again, but {again}"), false),
        },
    };
    Verdict::Failed(ActivationError::RebootRolledBack { error: Box::new(error), rollback, rolled_back })
}

/// The boot loader that boots the new generation once when --reboot
/// boots it: where the probe found one that can, for a `boot` that sets
/// the profile to a system (not a specialisation, a bundle or a rollback);
/// None to make it the default, as before. --confirm-timeout with --reboot
/// is refused on a host that cannot boot once: that rollback needs it.
fn boot_once<'a>(
    target: &Target,
    probe: &'a ProbeFacts,
    action: Action,
    steps: &Steps,
    opts: &Options,
) -> Result<Option<&'a str>, ActivationError> {
    if opts.reboot.is_none() {
        return Ok(None);
    }
    match (&probe.boot_loader, &probe.boot_once_missing) {
        (_, Some(missing)) if opts.confirm_timeout.is_some() => {
            Err(ActivationError::NoBootOnce { target: target.clone(), missing: missing.clone() })
        }
        (Some(loader), None)
            if action == Action::Boot && steps.mode == job::Mode::Set && opts.specialisation.is_none() =>
        {
            Ok(Some(loader))
        }
        _ => Ok(None),
    }
}

/// The action to run: the one asked for, unless the system's switch
/// inhibitors forbid it: then refused, or with --if-inhibited boot, boot.
fn action_allowed(target: &Target, path: &str, changed: &[String], opts: &Options) -> Result<Action, ActivationError> {
    // As NixOS's pre-switch check: never for boot, nor for dry-activate.
    if changed.is_empty() || matches!(opts.action, Action::Boot | Action::DryActivate) {
        return Ok(opts.action);
    }
    match (opts.action, opts.if_inhibited) {
        (Action::Switch, IfInhibited::Boot) => Ok(Action::Boot),
        (action, _) => Err(ActivationError::Inhibited {
            action,
            path: path.to_owned(),
            target: target.clone(),
            keys: changed.to_vec(),
        }),
    }
}

/// The job's result as the user reads it: what failed, and whether the
/// target is back on what it ran before.
fn verdict(target: &Target, path: &str, action: Action, opts: &Options, end: &job::JobEnd) -> Verdict {
    let log = format!("/run/nixpipe/jobs/{}/log", end.id);
    let (target, exited) = (target.clone(), end.exited);
    Verdict::Failed(match end.result.clone() {
        JobResult::Ok => return Verdict::Activated,
        JobResult::RebootNeeded => return Verdict::RebootNeeded,
        JobResult::InitChanged => {
            return Verdict::Refused(ActivationError::InitChanged { action, target, path: path.to_owned() })
        }
        JobResult::Locked(owner) => return Verdict::Refused(ActivationError::Locked { target, owner }),
        JobResult::Busy(holder) => return Verdict::Refused(ActivationError::Busy { target, holder }),
        JobResult::NoCheckAction => return Verdict::Refused(ActivationError::NoCheckAction { path: path.to_owned() }),
        JobResult::NotActivated(rollback) => ActivationError::NotActivated { action, target, exited, rollback },
        JobResult::UnitsFailed { rollback, units } => ActivationError::UnitsFailed { action, target, units, rollback },
        JobResult::Failed(Rollback::ProfileNotSet) => ActivationError::ProfileNotSet { target, log },
        JobResult::Failed(Rollback::NothingChanged) => ActivationError::DryActivateFailed { action, target },
        JobResult::Failed(rollback) => ActivationError::SwitchFailed { action, target, exited, rollback },
        JobResult::Unconfirmed(rollback) => {
            ActivationError::Unconfirmed { seconds: opts.confirm_timeout.unwrap_or(0), target, rollback }
        }
        JobResult::Rejected(rollback) => ActivationError::CheckFailed { target, rollback },
        JobResult::Lost(why) => ActivationError::Lost { target, why, log },
        JobResult::NoBootOnce { why, rollback } => ActivationError::OnceNotSet { target, why, rollback },
        JobResult::Gone => {
            ActivationError::Lost { target, why: "the job is gone from the target (did it reboot?)".into(), log }
        }
    })
}

/// The facts of the target, read in one read-only round trip (the
/// session learns its own from it too).
fn probe(session: &Session, path: Option<&str>, which: Which, opts: &Options) -> Result<ProbeFacts, ActivationError> {
    Ok(session.answer(&probe_run(path, which, opts, false), "probe", probe_event)?)
}

/// The probe, its session held for the job.
fn probe_holding(
    session: &Session,
    path: Option<&str>,
    which: Which,
    opts: &Options,
) -> Result<(ProbeFacts, Option<Held>), ActivationError> {
    let (probe, held) = session.answer_holding(&probe_run(path, which, opts, true), "probe", probe_event)?;
    Ok((probe, Some(held)))
}

/// probe.sh's run; `hold`: its session held for the job, over the job's
/// link (keepalives) then.
fn probe_run(path: Option<&str>, which: Which, opts: &Options, hold: bool) -> Run<'static> {
    let spec = opts.specialisation.as_ref().map_or("", Specialisation::as_str);
    let args = Args::new()
        .set("path", path.unwrap_or(""))
        .set("spec", spec)
        .set("which", which.as_str())
        .set("hold", if hold { "1" } else { "0" })
        .set("loader", if opts.reboot.is_some() { "1" } else { "0" });
    let run = Run::script(Script::Probe, &args);
    match hold {
        true => run.over(job::KEEPALIVE),
        false => run,
    }
}

fn probe_event(event: Event) -> Option<ProbeFacts> {
    match event {
        Event::Probe(probe) => Some(probe),
        _ => None,
    }
}

/// Everything that must hold before anything on the target changes.
fn check(target: &Target, record: Option<&Record>, probe: &ProbeFacts, opts: &Options) -> Result<(), ActivationError> {
    let path = probe.resolved.as_deref().or(record.map(|r| r.path.as_str())).unwrap_or_default().to_owned();
    if !probe.valid {
        return Err(ActivationError::NotOnTarget { path, target: target.clone(), realise: opts.realise });
    }
    if !probe.nixos {
        return Err(ActivationError::NotNixos { path });
    }
    if let Some(system) = probe.platform_mismatch() {
        let mut platforms = probe.native_platforms().join(", ");
        if probe.emulated.contains(&system) {
            platforms += &format!(" natively, {system} only under emulation (extra-platforms)");
        }
        return Err(ActivationError::WrongPlatform { path, system, target: target.clone(), platforms });
    }
    if probe.bundle && opts.specialisation.is_some() {
        return Err(ActivationError::BundleSpecialisation { path });
    }
    if probe.specialisation == Some(false) {
        let name = opts.specialisation.as_ref().map_or("", Specialisation::as_str).to_owned();
        let known = if probe.specialisations.is_empty() { "none".to_owned() } else { probe.specialisations.clone() };
        return Err(ActivationError::NoSpecialisation { path, name, known });
    }
    if opts.hostname_check {
        check_hostname(target, record, probe)?;
    }
    Ok(())
}

/// The host must be the one the record is for: its NAME, or for a record
/// without one, the hostname the system is configured with (etc/hostname).
/// A record with neither is not checked.
fn check_hostname(target: &Target, record: Option<&Record>, probe: &ProbeFacts) -> Result<(), ActivationError> {
    let Some(expected) = record.and_then(|r| r.name.as_ref()).or(probe.configured.as_ref()) else {
        return Ok(());
    };
    check_host_is(target, &probe.hostname, expected)
}

/// The error for a target that is not the host a record is for.
pub(crate) fn check_host_is(target: &Target, hostname: &str, expected: &str) -> Result<(), ActivationError> {
    match hostname == expected {
        true => Ok(()),
        false => Err(ActivationError::WrongHost {
            target: target.clone(),
            hostname: hostname.to_owned(),
            expected: expected.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nixpipe_store::store_path::StorePath;

    fn record(name: Option<&str>) -> Record {
        let p = StorePath::parse("/nix/store/36m5mhfn262qgji13vrgp907an576qjz-top").unwrap();
        Record::new(name.map(Into::into), p)
    }

    fn ready(hostname: &str) -> ProbeFacts {
        ProbeFacts { hostname: hostname.into(), valid: true, nixos: true, ..ProbeFacts::default() }
    }

    fn opts() -> Options {
        Options { hostname_check: true, ..Options::default() }
    }

    fn check_web1(record: &Record, probe: &ProbeFacts) -> Result<(), String> {
        check(&Target::Local, Some(record), probe, &opts()).map_err(|e| e.to_string())
    }

    #[test]
    fn refuses_a_host_with_another_name() {
        let e = check_web1(&record(Some("web1")), &ready("db1")).unwrap_err();
        assert!(e.contains("is host 'db1', not 'web1'"), "{e}");
        let off = Options { hostname_check: false, ..opts() };
        assert!(check(&Target::Local, Some(&record(Some("web1"))), &ready("db1"), &off).is_ok());
    }

    #[test]
    fn the_record_name_decides_over_the_configured_hostname() {
        let web1_system_on_web1 = ProbeFacts { configured: Some("web1".into()), ..ready("web1") };
        assert!(check_web1(&record(Some("db1")), &web1_system_on_web1).is_err());
        assert!(check_web1(&record(Some("web1")), &web1_system_on_web1).is_ok());
    }

    #[test]
    fn unnamed_records_are_checked_against_the_configured_hostname() {
        let on = |host: &str| ProbeFacts { configured: Some("web1".into()), ..ready(host) };
        assert!(check_web1(&record(None), &on("web1")).is_ok());
        assert!(check_web1(&record(None), &on("db1")).is_err());
        assert!(check_web1(&record(None), &ready("db1")).is_ok(), "nothing to check against");
    }

    #[test]
    fn refuses_missing_and_non_nixos_paths() {
        let missing = ProbeFacts { valid: false, ..ready("web1") };
        assert!(check_web1(&record(Some("web1")), &missing).unwrap_err().contains("run nixpipe-copy first"));
        let not_nixos = ProbeFacts { nixos: false, ..ready("web1") };
        assert!(check_web1(&record(Some("web1")), &not_nixos).unwrap_err().contains("not a NixOS system"));
    }

    #[test]
    fn refuses_a_specialisation_the_system_does_not_have() {
        let probe = ProbeFacts { specialisation: Some(false), specialisations: "gpu".into(), ..ready("web1") };
        let opts = Options { specialisation: Some(Specialisation::parse("nogpu").unwrap()), ..opts() };
        let e = check(&Target::Local, Some(&record(Some("web1"))), &probe, &opts).unwrap_err().to_string();
        assert!(e.ends_with("has no specialisation 'nogpu' (it has: gpu)"), "{e}");
    }

    /// A job's end that says only its result.
    fn ended(result: JobResult) -> job::JobEnd {
        job::JobEnd { id: "1".into(), previous: None, needs_reboot: None, exited: None, boot_once: None, result }
    }

    #[test]
    fn a_failed_switch_says_whether_the_rollback_worked() {
        let verdict = |r: JobResult| verdict(&Target::Local, "/nix/store/x", Action::Switch, &opts(), &ended(r));
        let Verdict::Failed(e) = verdict(JobResult::Failed(Rollback::RolledBack)) else { panic!() };
        assert_eq!(
            e.to_string(),
            "switch-to-configuration switch failed on local; rolled back: the previous generation is active again"
        );
        assert!(e.rolled_back());
        let Verdict::Failed(e) = verdict(JobResult::Failed(Rollback::RollbackFailed)) else { panic!() };
        assert!(!e.rolled_back() && e.to_string().contains("rollback FAILED"), "{e}");
    }

    #[test]
    fn each_exit_of_the_switch_is_told_apart() {
        let verdict =
            |r: JobResult| verdict(&Target::parse("web1").unwrap(), "/nix/store/x", Action::Switch, &opts(), &ended(r));
        assert!(matches!(verdict(JobResult::RebootNeeded), Verdict::RebootNeeded));
        let Verdict::Failed(e) = verdict(JobResult::NotActivated(Rollback::RolledBack)) else { panic!() };
        assert!(e.to_string().contains("before activating anything") && !e.rolled_back(), "{e}");
        let units = vec!["a.service".to_owned(), "b.service".to_owned()];
        let kept = JobResult::UnitsFailed { rollback: None, units: units.clone() };
        let Verdict::Failed(e) = verdict(kept) else { panic!() };
        assert!(e.to_string().contains("left units failed: a.service, b.service; kept"), "{e}");
        let back = JobResult::UnitsFailed { rollback: Some(Rollback::RolledBack), units };
        let Verdict::Failed(e) = verdict(back) else { panic!() };
        assert!(e.rolled_back());
        let Verdict::Refused(e) = verdict(JobResult::Busy("pid 7 (nixos-rebuild)".into())) else { panic!() };
        assert!(e.to_string().contains("stayed taken (pid 7 (nixos-rebuild)); nothing activated"), "{e}");
    }

    /// The cases of NixOS's pre-switch check (preSwitchChecks.switchInhibitors
    /// in switchable-system.nix): the running system's keys, compared with
    /// the new system's where it has them.
    #[test]
    fn inhibitors_are_compared_as_nixos_compares_them() {
        let probe = |new: &str, current: &str| ProbeFacts {
            current: Some("/nix/store/old".into()),
            inhibitors_new: Some(new.into()).filter(|s: &String| !s.is_empty()),
            inhibitors_current: Some(current.into()).filter(|s: &String| !s.is_empty()),
            ..ready("web1")
        };
        let changed = |new: &str, current: &str| probe(new, current).changed_inhibitors();
        assert_eq!(changed(r#"{"dbus":"broker","x":"1"}"#, r#"{"dbus":"dbus","x":"1"}"#), ["dbus"], "a value changed");
        assert!(changed(r#"{"kernel":"6"}"#, "").is_empty(), "the running system has none");
        assert!(changed(r#"{"kernel":"6","dbus":"d"}"#, r#"{"dbus":"d"}"#).is_empty(), "a key added");
        assert!(changed(r#"{"dbus":"d"}"#, r#"{"dbus":"d","kernel":"6"}"#).is_empty(), "a key removed");
        assert!(changed("", r#"{"dbus":"d"}"#).is_empty(), "the new system has none");
        assert!(changed("not json", r#"{"dbus":"d"}"#).is_empty(), "not JSON is no inhibitors");
        assert_eq!(changed(r#"{"b":"2","a":"2"}"#, r#"{"a":"1","b":"1"}"#), ["a", "b"]);
        let first_deploy = ProbeFacts { current: None, ..probe(r#"{"a":"b"}"#, r#"{"a":"c"}"#) };
        assert!(first_deploy.changed_inhibitors().is_empty());
    }

    #[test]
    fn dry_activate_and_boot_are_never_inhibited() {
        let changed = ["dbus".to_owned()];
        for (action, allowed) in [
            (Action::Boot, true),
            (Action::DryActivate, true),
            (Action::Switch, false),
            (Action::Test, false),
            (Action::Check, false),
        ] {
            let opts = Options { action, ..opts() };
            assert_eq!(
                action_allowed(&Target::parse("web1").unwrap(), "/nix/store/x", &changed, &opts).is_ok(),
                allowed,
                "{action:?}"
            );
        }
    }

    #[test]
    fn a_system_for_another_platform_is_refused() {
        let probe = |system: &str| ProbeFacts {
            system: Some(system.into()),
            native: Some("x86_64-linux".into()),
            ..ready("web1")
        };
        let e = check(&Target::parse("root@web1").unwrap(), None, &probe("aarch64-linux"), &opts())
            .unwrap_err()
            .to_string();
        assert!(
            e.ends_with("is built for aarch64-linux, and root@web1 runs x86_64-linux, i686-linux; nothing changed"),
            "{e}"
        );
        assert!(check(&Target::parse("root@web1").unwrap(), None, &probe("i686-linux"), &opts()).is_ok());
    }

    #[test]
    fn a_platform_the_host_only_emulates_is_refused() {
        let emulating = ProbeFacts {
            system: Some("aarch64-linux".into()),
            native: Some("x86_64-linux".into()),
            emulated: vec!["i686-linux".into(), "aarch64-linux".into()],
            ..ready("web1")
        };
        let e = check(&Target::parse("root@web1").unwrap(), None, &emulating, &opts()).unwrap_err().to_string();
        assert!(
            e.ends_with(
                "runs x86_64-linux, i686-linux natively, aarch64-linux only under emulation (extra-platforms); nothing changed"
            ),
            "{e}"
        );
        let pi = ProbeFacts { native: Some("aarch64-linux".into()), emulated: Vec::new(), ..emulating };
        assert!(check(&Target::parse("root@pi").unwrap(), None, &pi, &opts()).is_ok());
    }

    #[test]
    fn a_failure_says_its_exit_status_and_what_the_host_showed() {
        let said = |status, activated, result| {
            let exited = Some(job::Exited { status, activated });
            let end = job::JobEnd { exited, ..ended(result) };
            match verdict(&Target::parse("web1").unwrap(), "/nix/store/x", Action::Switch, &opts(), &end) {
                Verdict::Failed(e) => e.to_string(),
                other => panic!("{other:?}"),
            }
        };
        let after = said(1, true, JobResult::Failed(Rollback::RolledBack));
        assert!(after.contains("failed on web1 (exit 1) after it had begun activating; rolled back"), "{after}");
        let unknown = said(137, false, JobResult::Failed(Rollback::RolledBack));
        assert!(unknown.contains("(exit 137, which may come after activating); rolled back"), "{unknown}");
        let before = said(1, false, JobResult::NotActivated(Rollback::RolledBack));
        assert!(before.contains("failed on web1 (exit 1) before activating anything"), "{before}");
    }

    #[test]
    fn a_changed_init_interface_on_test_says_a_reboot_will_not_help() {
        let end = ended(JobResult::InitChanged);
        let Verdict::Refused(e) = verdict(&Target::parse("web1").unwrap(), "/nix/store/x", Action::Test, &opts(), &end)
        else {
            panic!()
        };
        let e = e.to_string();
        assert!(e.contains("a reboot boots the running system again; nothing changed"), "{e}");
        let a = Activation::new(
            None,
            Verdict::Refused(ActivationError::InitChanged {
                action: Action::Test,
                target: Target::parse("web1").unwrap(),
                path: "/nix/store/x".into(),
            }),
        );
        let json = serde_json::to_value(a.json("web1", Action::Test)).unwrap();
        assert_eq!((json["result"].as_str(), json["needsReboot"].as_bool()), (Some("refused"), None));
    }

    #[test]
    fn json_fields_are_camel_case() {
        let a = Activation::skipped("web1");
        let json = serde_json::to_value(a.json("root@web2", Action::Switch)).unwrap();
        assert_eq!(json["rolledBack"], false);
        assert_eq!(json["result"], "skipped");
        assert_eq!(json["action"], "switch");
    }
}
