//! Activating a NixOS system on a target, safely: check that it is the
//! right system on the right host, then run a detached job there that takes
//! a lock, adds a generation to the system profile, runs the system's own
//! `bin/switch-to-configuration` and rolls back when that fails or when no
//! new connection confirms the switch in time (see `job`).

mod job;

use crate::bundle::PREVIOUS;
use crate::event::{Event, JobResult, ProbeFacts, Rollback};
use crate::record::Record;
use crate::report::{self, Report};
use crate::session::{Script, Session, SessionError};
use crate::target::SshError;
use job::Job;
use serde::Serialize;
use std::fmt;

pub const SYSTEM_PROFILE: &str = "/nix/var/nix/profiles/system";

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
}

impl Serialize for Action {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Switch => "switch",
            Action::Boot => "boot",
            Action::Test => "test",
            Action::DryActivate => "dry-activate",
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
        use crate::store_path::StorePathError as E;
        let why = match name.contains('/') {
            true => "a specialisation is one name, not a path".to_owned(),
            // The rules of store names, said of a specialisation.
            false => match crate::store_path::check_name(name) {
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
}

/// How long the target waits for a --check to pass when no
/// --confirm-timeout says otherwise.
pub const CHECK_WINDOW: u64 = 300;

/// Why an activation was refused, or failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ActivationError {
    // Refused: nothing changed.
    #[error("{path} is not on {target}{}", if *.realise { " nor in its substituters" } else { "; run nixpipe-copy first" })]
    NotOnTarget { path: String, target: String, realise: bool },
    #[error("{path} is not a NixOS system (no nixos-version or bin/switch-to-configuration)")]
    NotNixos { path: String },
    #[error("{path} is a bundle: its bin/switch activates its system, not a specialisation")]
    BundleSpecialisation { path: String },
    #[error("{path} has no specialisation '{name}' (it has: {known})")]
    NoSpecialisation { path: String, name: String, known: String },
    #[error("{target} is host '{hostname}', not '{expected}'; nothing changed (--no-hostname-check to deploy anyway)")]
    WrongHost { target: String, hostname: String, expected: String },
    #[error("{target} has no previous bundle ({PREVIOUS}) to restore")]
    NoPreviousBundle { target: String },
    #[error("{target} has no generation before the current one to go back to")]
    NoPreviousGeneration { target: String },
    #[error("cannot fetch {path} from the substituters of {target}: {why}")]
    Realise { path: String, target: String, why: SshError },
    #[error("another nixpipe activation is running on {target}: {owner}; nothing changed")]
    Locked { target: String, owner: String },
    #[error("{0}; nothing changed")]
    NotStarted(SessionError),
    #[error("could not start the activation on {target} ({status}): {why}; nothing changed")]
    LaunchFailed { target: String, status: String, why: String },
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("not reached: the rollout stopped after {0} failed; nothing changed")]
    NotReached(String),
    // Failed after changing things.
    #[error("could not set the system profile on {target}; nothing activated (see {log})")]
    ProfileNotSet { target: String, log: String },
    #[error("switch-to-configuration {action} failed on {target}; nothing changed")]
    DryActivateFailed { action: &'static str, target: String },
    #[error("switch-to-configuration {action} failed on {target}; {rollback}")]
    SwitchFailed { action: &'static str, target: String, rollback: Rollback },
    #[error("no new connection confirmed the switch within {seconds} s; {target} {rollback}")]
    Unconfirmed { seconds: u64, target: String, rollback: Rollback },
    #[error("the check failed after the switch; {target} {rollback}")]
    CheckFailed { target: String, rollback: Rollback },
    #[error("lost track of the activation on {target}: {why} (see {log})")]
    Lost { target: String, why: String, log: String },
}

impl ActivationError {
    /// Whether the target is back on what it ran before.
    pub fn rolled_back(&self) -> bool {
        match self {
            ActivationError::SwitchFailed { rollback, .. }
            | ActivationError::Unconfirmed { rollback, .. }
            | ActivationError::CheckFailed { rollback, .. } => rollback.is_back(),
            _ => false,
        }
    }
}

/// What became of the rollback, as the errors above say it.
impl fmt::Display for Rollback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rollback::RolledBack => "rolled back: the previous generation is active again",
            Rollback::NothingToReactivate => "rolled back the profile (no system ran before to re-activate)",
            Rollback::ProfileNotSet | Rollback::NothingChanged => "nothing changed",
            Rollback::RollbackFailed => "the rollback FAILED too: the host needs attention",
        })
    }
}

/// How one activation went.
#[derive(Debug, Clone)]
pub enum Verdict {
    Activated,
    /// --dry-run: every check passed, nothing changed.
    Checked,
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
    pub verdict: Verdict,
}

/// What `--json` adds to an activated (or failed) record.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ActivationJson {
    pub target: String,
    pub action: Action,
    pub previous: Option<String>,
    /// activated, checked, refused, failed or skipped.
    pub result: &'static str,
    pub rolled_back: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Activation {
    /// A target a rollout never reached, because `stopped_by` failed.
    pub fn skipped(stopped_by: &str) -> Activation {
        let why = ActivationError::NotReached(stopped_by.to_owned());
        Activation { path: None, hostname: None, previous: None, verdict: Verdict::Skipped(why) }
    }

    /// The error, when it did not go well.
    pub fn error(&self) -> Option<&ActivationError> {
        match &self.verdict {
            Verdict::Activated | Verdict::Checked => None,
            Verdict::Refused(e) | Verdict::Failed(e) | Verdict::Skipped(e) => Some(e),
        }
    }

    /// What --json adds to the record.
    pub fn json(&self, target: &str, action: Action) -> ActivationJson {
        let result = match &self.verdict {
            Verdict::Activated => "activated",
            Verdict::Checked => "checked",
            Verdict::Refused(_) => "refused",
            Verdict::Failed(_) => "failed",
            Verdict::Skipped(_) => "skipped",
        };
        ActivationJson {
            target: target.to_owned(),
            action,
            previous: self.previous.clone(),
            result,
            rolled_back: self.error().is_some_and(ActivationError::rolled_back),
            error: self.error().map(ToString::to_string),
        }
    }
}

/// Activates the record's system on the session's host, or with no record
/// goes back one generation (--rollback): every check first, then the job.
pub fn activate(session: &Session, record: Option<&Record>, opts: &Options) -> Activation {
    let label = record.map_or_else(|| session.target.to_string(), |r| r.label().to_owned());
    let mut activation = Activation {
        path: record.map(|r| r.path.to_string()),
        hostname: None,
        previous: None,
        verdict: Verdict::Checked,
    };
    activation.verdict = match run(session, record, opts, &label, &mut activation) {
        Ok(verdict) => verdict,
        Err(why) => Verdict::Refused(why),
    };
    activation
}

/// What to activate, as probe.sh takes it.
fn which(record: Option<&Record>, opts: &Options) -> &'static str {
    match record {
        Some(_) => "given",
        None if opts.restore_bundle => "previous-bundle",
        None => "rollback",
    }
}

/// Err: refused, nothing changed.
fn run(
    session: &Session,
    record: Option<&Record>,
    opts: &Options,
    label: &str,
    activation: &mut Activation,
) -> Result<Verdict, ActivationError> {
    let target = session.target.to_string();
    let which = which(record, opts);
    let mut probe = probe(session, activation.path.as_deref(), which, opts)?;
    let path = match (&probe.resolved, which) {
        (Some(path), _) => path.clone(),
        (None, "previous-bundle") => return Err(ActivationError::NoPreviousBundle { target }),
        (None, _) => return Err(ActivationError::NoPreviousGeneration { target }),
    };
    if !probe.valid && opts.realise {
        session.run(&["nix-store", "--realise", &path]).map_err(|why| ActivationError::Realise {
            path: path.clone(),
            target: target.clone(),
            why,
        })?;
        probe = self::probe(session, Some(&path), "given", opts)?;
    }
    activation.path = Some(path.clone());
    activation.hostname = Some(probe.hostname.clone());
    activation.previous = probe.current.clone();
    check(&target, record, &probe, opts)?;
    // A bundle carries its system as toplevel and switches with bin/switch.
    let system = if probe.bundle { format!("{path}/toplevel") } else { path.clone() };
    if opts.diff {
        crate::closure_diff::report(session, label, probe.current.as_deref(), &system);
    }
    if opts.dry_run {
        let (label, action) = (label.to_owned(), opts.action.as_str());
        report::report(Report::WouldActivate { label, action, target, path });
        return Ok(Verdict::Checked);
    }
    let program = match &opts.specialisation {
        _ if probe.bundle => format!("{path}/bin/switch"),
        Some(name) => format!("{system}/specialisation/{name}/bin/switch-to-configuration"),
        None => format!("{system}/bin/switch-to-configuration"),
    };
    let mode = match which {
        _ if probe.bundle => "bundle",
        "given" => "set",
        _ => "rollback",
    };
    let args = job::Args {
        action: opts.action.as_str(),
        system: &system,
        program: &program,
        confirm: opts.confirm_timeout.or(opts.check.as_ref().map(|_| CHECK_WINDOW)).unwrap_or(0),
        mode,
    };
    let end = Job::new(session, label, opts.check.as_deref()).run(&args)?;
    if end.previous.is_some() {
        activation.previous = end.previous.clone();
    }
    Ok(verdict(&target, opts, &end))
}

/// The job's result as the user reads it: what failed, and whether the
/// target is back on what it ran before.
fn verdict(target: &str, opts: &Options, end: &job::JobEnd) -> Verdict {
    let action = opts.action.as_str();
    let log = format!("/run/nixpipe/jobs/{}/log", end.id);
    let target = target.to_owned();
    Verdict::Failed(match end.result.clone() {
        JobResult::Ok => return Verdict::Activated,
        JobResult::Locked(owner) => return Verdict::Refused(ActivationError::Locked { target, owner }),
        JobResult::Failed(Rollback::ProfileNotSet) => ActivationError::ProfileNotSet { target, log },
        JobResult::Failed(Rollback::NothingChanged) => ActivationError::DryActivateFailed { action, target },
        JobResult::Failed(rollback) => ActivationError::SwitchFailed { action, target, rollback },
        JobResult::Unconfirmed(rollback) => {
            ActivationError::Unconfirmed { seconds: opts.confirm_timeout.unwrap_or(0), target, rollback }
        }
        JobResult::Rejected(rollback) => ActivationError::CheckFailed { target, rollback },
        JobResult::Lost(why) => ActivationError::Lost { target, why, log },
    })
}

/// The facts of the target, read in one read-only round trip (the
/// session learns its own from it too).
fn probe(session: &Session, path: Option<&str>, which: &str, opts: &Options) -> Result<ProbeFacts, ActivationError> {
    let spec = opts.specialisation.as_ref().map_or("", Specialisation::as_str);
    let events = session.script(Script::Probe, &[path.unwrap_or(""), spec, which])?;
    events
        .into_iter()
        .find_map(|e| match e {
            Event::Probe(probe) => Some(probe),
            _ => None,
        })
        .ok_or_else(|| {
            SessionError::from(SshError::NoAnswer { target: session.target.to_string(), what: "probe".into() }).into()
        })
}

/// Everything that must hold before anything on the target changes.
fn check(target: &str, record: Option<&Record>, probe: &ProbeFacts, opts: &Options) -> Result<(), ActivationError> {
    let path = probe.resolved.as_deref().or(record.map(|r| r.path.as_str())).unwrap_or_default().to_owned();
    if !probe.valid {
        return Err(ActivationError::NotOnTarget { path, target: target.to_owned(), realise: opts.realise });
    }
    if !probe.nixos {
        return Err(ActivationError::NotNixos { path });
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
fn check_hostname(target: &str, record: Option<&Record>, probe: &ProbeFacts) -> Result<(), ActivationError> {
    let Some(expected) = record.and_then(|r| r.name.as_ref()).or(probe.configured.as_ref()) else {
        return Ok(());
    };
    check_host_is(target, &probe.hostname, expected)
}

/// The error for a target that is not the host a record is for.
pub fn check_host_is(target: &str, hostname: &str, expected: &str) -> Result<(), ActivationError> {
    match hostname == expected {
        true => Ok(()),
        false => Err(ActivationError::WrongHost {
            target: target.to_owned(),
            hostname: hostname.to_owned(),
            expected: expected.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store_path::StorePath;

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
        check("local", Some(record), probe, &opts()).map_err(|e| e.to_string())
    }

    #[test]
    fn refuses_a_host_with_another_name() {
        let e = check_web1(&record(Some("web1")), &ready("db1")).unwrap_err();
        assert!(e.contains("is host 'db1', not 'web1'"), "{e}");
        let off = Options { hostname_check: false, ..opts() };
        assert!(check("local", Some(&record(Some("web1"))), &ready("db1"), &off).is_ok());
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
        let e = check("local", Some(&record(Some("web1"))), &probe, &opts).unwrap_err().to_string();
        assert!(e.ends_with("has no specialisation 'nogpu' (it has: gpu)"), "{e}");
    }

    #[test]
    fn a_failed_switch_says_whether_the_rollback_worked() {
        let end = |r: Rollback| job::JobEnd { id: "1".into(), previous: None, result: JobResult::Failed(r) };
        let Verdict::Failed(e) = verdict("local", &opts(), &end(Rollback::RolledBack)) else { panic!() };
        assert_eq!(
            e.to_string(),
            "switch-to-configuration switch failed on local; rolled back: the previous generation is active again"
        );
        assert!(e.rolled_back());
        let Verdict::Failed(e) = verdict("local", &opts(), &end(Rollback::RollbackFailed)) else { panic!() };
        assert!(!e.rolled_back() && e.to_string().contains("rollback FAILED"), "{e}");
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
