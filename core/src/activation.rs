//! Activating a NixOS system on a target, safely: check that it is the
//! right system on the right host, then run a detached job there that takes
//! a lock, adds a generation to the system profile, runs the system's own
//! `bin/switch-to-configuration` and rolls back when that fails or when no
//! new connection confirms the switch in time (see `job`).

mod job;

use crate::bundle::PREVIOUS;
use crate::privilege::Privilege;
use crate::record::Record;
use crate::target::Target;
use job::{Job, JobResult};
use serde_json::{json, Map, Value};

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

/// How one activation went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Activated,
    /// --dry-run: every check passed, nothing changed.
    Checked,
    /// Refused before anything changed: why.
    Refused(String),
    /// Failed after changing things: why, and whether the target is back
    /// on the system it ran before.
    Failed {
        why: String,
        rolled_back: bool,
    },
    /// Never tried: a rollout stopped before this target (why).
    Skipped(String),
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

impl Activation {
    /// A target a rollout never reached.
    pub fn skipped(why: String) -> Activation {
        Activation { path: None, hostname: None, previous: None, verdict: Verdict::Skipped(why) }
    }

    /// The one line for a failure; None when all went well.
    pub fn error(&self) -> Option<&str> {
        match &self.verdict {
            Verdict::Activated | Verdict::Checked => None,
            Verdict::Refused(why) | Verdict::Failed { why, .. } | Verdict::Skipped(why) => Some(why),
        }
    }

    /// What --json adds to the record.
    pub fn json_fields(&self, target: &Target, action: Action) -> Map<String, Value> {
        let (result, rolled_back) = match &self.verdict {
            Verdict::Activated => ("activated", false),
            Verdict::Checked => ("checked", false),
            Verdict::Refused(_) => ("refused", false),
            Verdict::Failed { rolled_back, .. } => ("failed", *rolled_back),
            Verdict::Skipped(_) => ("skipped", false),
        };
        let mut fields = Map::new();
        fields.insert("target".into(), json!(target.to_string()));
        fields.insert("action".into(), json!(action.as_str()));
        fields.insert("previous".into(), json!(self.previous));
        fields.insert("result".into(), json!(result));
        fields.insert("rolled_back".into(), json!(rolled_back));
        if let Some(error) = self.error() {
            fields.insert("error".into(), json!(error));
        }
        fields
    }
}

/// Activates the record's system on `target`, or with no record goes back
/// one generation (--rollback): every check first, then the job.
pub fn activate(target: &Target, record: Option<&Record>, opts: &Options, privilege: &Privilege) -> Activation {
    let label = record.map_or_else(|| target.to_string(), |r| r.label().to_owned());
    let mut activation = Activation {
        path: record.map(|r| r.path.to_string()),
        hostname: None,
        previous: None,
        verdict: Verdict::Checked,
    };
    activation.verdict = match run(target, record, opts, privilege, &label, &mut activation) {
        Ok(verdict) => verdict,
        Err(why) => Verdict::Refused(why),
    };
    activation
}

/// Err: refused, nothing changed.
fn run(
    target: &Target,
    record: Option<&Record>,
    opts: &Options,
    privilege: &Privilege,
    label: &str,
    activation: &mut Activation,
) -> Result<Verdict, String> {
    let which = match record {
        Some(_) => "given",
        None if opts.restore_bundle => "previous-bundle",
        None => "rollback",
    };
    let mut probe = Probe::read(target, activation.path.as_deref(), which, opts)?;
    let path = match (&probe.resolved, which) {
        (Some(path), _) => path.clone(),
        (None, "previous-bundle") => return Err(format!("{target} has no previous bundle ({PREVIOUS}) to restore")),
        (None, _) => return Err(format!("{target} has no generation before the current one to go back to")),
    };
    if !probe.valid && opts.realise {
        realise(target, &path)?;
        probe = Probe::read(target, Some(&path), "given", opts)?;
    }
    activation.path = Some(path.clone());
    activation.hostname = Some(probe.hostname.clone());
    activation.previous = probe.current.clone();
    check(target, record, &probe, opts)?;
    // A bundle carries its system as toplevel and switches with bin/switch.
    let system = if probe.bundle { format!("{path}/toplevel") } else { path.clone() };
    if opts.diff {
        crate::closure_diff::show(target, label, probe.current.as_deref(), &system);
    }
    if opts.dry_run {
        crate::cli::note(&format!("{label}: would {} {target} to {path}", opts.action.as_str()));
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
    let end = Job::new(target, privilege, &probe.uid, label, opts.check.as_deref()).run(&args)?;
    if end.previous.is_some() {
        activation.previous = end.previous.clone();
    }
    Ok(verdict(target, opts, &end))
}

/// The job's result as the user reads it: what failed, and whether the
/// target is back on what it ran before.
fn verdict(target: &Target, opts: &Options, end: &job::JobEnd) -> Verdict {
    let action = opts.action.as_str();
    let log = format!("/run/nixpipe/jobs/{}/log", end.id);
    let failed = |why: String, rolled_back: bool| Verdict::Failed { why, rolled_back };
    match &end.result {
        JobResult::Ok => Verdict::Activated,
        JobResult::Locked(owner) => {
            Verdict::Refused(format!("another nixpipe activation is running on {target}: {owner}; nothing changed"))
        }
        JobResult::Failed(what) if what == "profile" => {
            failed(format!("could not set the system profile on {target}; nothing activated (see {log})"), false)
        }
        JobResult::Failed(what) if what == "nothing-changed" => {
            failed(format!("switch-to-configuration {action} failed on {target}; nothing changed"), false)
        }
        JobResult::Failed(what) => failed(
            format!("switch-to-configuration {action} failed on {target}; {}", rollback_outcome(what)),
            rolled_back(what),
        ),
        JobResult::Unconfirmed(what) => failed(
            format!(
                "no new connection confirmed the switch within {} s; {target} {}",
                opts.confirm_timeout.unwrap_or(0),
                rollback_outcome(what)
            ),
            rolled_back(what),
        ),
        JobResult::Rejected(what) => {
            failed(format!("the check failed after the switch; {target} {}", rollback_outcome(what)), rolled_back(what))
        }
        JobResult::Lost(why) => failed(format!("lost track of the activation on {target}: {why} (see {log})"), false),
    }
}

fn rolled_back(what: &str) -> bool {
    matches!(what, "rolled-back" | "nothing-to-reactivate")
}

fn rollback_outcome(what: &str) -> &'static str {
    match what {
        "rolled-back" => "rolled back: the previous generation is active again",
        "nothing-to-reactivate" => "rolled back the profile (no system ran before to re-activate)",
        _ => "the rollback FAILED too: the host needs attention",
    }
}

/// `nix-store --realise` on the target: it fetches the system from its own
/// substituters (a pull deployment).
fn realise(target: &Target, path: &str) -> Result<(), String> {
    target
        .run(&["nix-store", "--realise", path])
        .map(drop)
        .map_err(|e| format!("cannot fetch {path} from the substituters of {target}: {e}"))
}

const PROBE_SCRIPT: &str = include_str!("activation/probe.sh");

/// Facts read from the target in one read-only round trip.
#[derive(Debug, Default, PartialEq, Eq)]
struct Probe {
    hostname: String,
    uid: String,
    valid: bool,
    nixos: bool,
    /// The hostname the system itself is configured with (`etc/hostname`).
    configured: Option<String>,
    /// The running system.
    current: Option<String>,
    /// The path to activate: the one given, the generation before the
    /// current one, or the previous bundle; None when there is none.
    resolved: Option<String>,
    /// Whether it is a bundle (nixpipe-bundle) rather than a system.
    bundle: bool,
    /// Whether the system has the specialisation asked for.
    specialisation: Option<bool>,
    specialisations: String,
}

impl Probe {
    /// `which`: what to activate, as probe.sh takes it.
    fn read(target: &Target, path: Option<&str>, which: &str, opts: &Options) -> Result<Probe, String> {
        let spec = opts.specialisation.as_ref().map_or("", Specialisation::as_str);
        Ok(Probe::parse(&target.run(&["sh", "-c", PROBE_SCRIPT, "sh", path.unwrap_or(""), spec, which])?))
    }

    fn parse(output: &str) -> Probe {
        let mut probe = Probe::default();
        let some = |v: &str| Some(v.to_owned()).filter(|v| !v.is_empty());
        for (key, value) in output.lines().filter_map(|l| l.split_once('=')) {
            match key {
                "hostname" => probe.hostname = value.to_owned(),
                "uid" => probe.uid = value.to_owned(),
                "valid" => probe.valid = value == "1",
                "nixos" => probe.nixos = value == "1",
                "configured" => probe.configured = some(value),
                "current" => probe.current = some(value),
                "resolved" => probe.resolved = some(value),
                "bundle" => probe.bundle = value == "1",
                "specialisation" => probe.specialisation = Some(value == "1"),
                "specialisations" => probe.specialisations = value.trim().to_owned(),
                _ => {}
            }
        }
        probe
    }
}

/// Everything that must hold before anything on the target changes.
fn check(target: &Target, record: Option<&Record>, probe: &Probe, opts: &Options) -> Result<(), String> {
    let path = probe.resolved.as_deref().or(record.map(|r| r.path.as_str())).unwrap_or_default();
    if !probe.valid {
        let hint = if opts.realise { " nor in its substituters" } else { "; run nixpipe-copy first" };
        return Err(format!("{path} is not on {target}{hint}"));
    }
    if !probe.nixos {
        return Err(format!("{path} is not a NixOS system (no nixos-version or bin/switch-to-configuration)"));
    }
    if probe.bundle && opts.specialisation.is_some() {
        return Err(format!("{path} is a bundle: its bin/switch activates its system, not a specialisation"));
    }
    if probe.specialisation == Some(false) {
        let name = opts.specialisation.as_ref().map_or("", Specialisation::as_str);
        let known = if probe.specialisations.is_empty() { "none" } else { &probe.specialisations };
        return Err(format!("{path} has no specialisation '{name}' (it has: {known})"));
    }
    if opts.hostname_check {
        check_hostname(target, record, probe)?;
    }
    Ok(())
}

/// The host must be the one the record is for: its NAME, or for a record
/// without one, the hostname the system is configured with (etc/hostname).
/// A record with neither is not checked.
fn check_hostname(target: &Target, record: Option<&Record>, probe: &Probe) -> Result<(), String> {
    let Some(expected) = record.and_then(|r| r.name.as_ref()).or(probe.configured.as_ref()) else {
        return Ok(());
    };
    if *expected == probe.hostname {
        return Ok(());
    }
    Err(wrong_host(target, &probe.hostname, expected))
}

/// The one line for a target that is not the host a record is for.
pub fn wrong_host(target: &Target, hostname: &str, expected: &str) -> String {
    format!("{target} is host '{hostname}', not '{expected}'; nothing changed (--no-hostname-check to deploy anyway)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store_path::StorePath;

    fn record(name: Option<&str>) -> Record {
        let p = StorePath::parse("/nix/store/36m5mhfn262qgji13vrgp907an576qjz-top").unwrap();
        Record::new(name.map(Into::into), p)
    }

    fn ready(hostname: &str) -> Probe {
        Probe { hostname: hostname.into(), uid: "0".into(), valid: true, nixos: true, ..Probe::default() }
    }

    fn opts() -> Options {
        Options { hostname_check: true, ..Options::default() }
    }

    fn check_web1(record: &Record, probe: &Probe) -> Result<(), String> {
        check(&Target::Local, Some(record), probe, &opts())
    }

    #[test]
    fn parses_the_probe() {
        let p = Probe::parse("hostname=web1\nuid=0\ncurrent=\nvalid=1\nnixos=0\nconfigured=web1\nspecialisation=0\nspecialisations=a b \n");
        let expected = Probe {
            nixos: false,
            configured: Some("web1".into()),
            specialisation: Some(false),
            specialisations: "a b".into(),
            ..ready("web1")
        };
        assert_eq!(p, expected);
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
        let web1_system_on_web1 = Probe { configured: Some("web1".into()), ..ready("web1") };
        assert!(check_web1(&record(Some("db1")), &web1_system_on_web1).is_err());
        assert!(check_web1(&record(Some("web1")), &web1_system_on_web1).is_ok());
    }

    #[test]
    fn unnamed_records_are_checked_against_the_configured_hostname() {
        let on = |host: &str| Probe { configured: Some("web1".into()), ..ready(host) };
        assert!(check_web1(&record(None), &on("web1")).is_ok());
        assert!(check_web1(&record(None), &on("db1")).is_err());
        assert!(check_web1(&record(None), &ready("db1")).is_ok(), "nothing to check against");
    }

    #[test]
    fn refuses_missing_and_non_nixos_paths() {
        let missing = Probe { valid: false, ..ready("web1") };
        assert!(check_web1(&record(Some("web1")), &missing).unwrap_err().contains("run nixpipe-copy first"));
        let not_nixos = Probe { nixos: false, ..ready("web1") };
        assert!(check_web1(&record(Some("web1")), &not_nixos).unwrap_err().contains("not a NixOS system"));
    }

    #[test]
    fn refuses_a_specialisation_the_system_does_not_have() {
        let probe = Probe { specialisation: Some(false), specialisations: "gpu".into(), ..ready("web1") };
        let opts = Options { specialisation: Some(Specialisation::parse("nogpu").unwrap()), ..opts() };
        let e = check(&Target::Local, Some(&record(Some("web1"))), &probe, &opts).unwrap_err();
        assert!(e.ends_with("has no specialisation 'nogpu' (it has: gpu)"), "{e}");
    }

    #[test]
    fn a_failed_switch_says_whether_the_rollback_worked() {
        let end = |what: &str| job::JobEnd { id: "1".into(), previous: None, result: JobResult::Failed(what.into()) };
        let v = verdict(&Target::Local, &opts(), &end("rolled-back"));
        assert_eq!(
            v,
            Verdict::Failed {
                why: "switch-to-configuration switch failed on local; rolled back: the previous generation is active again"
                    .into(),
                rolled_back: true
            }
        );
        let v = verdict(&Target::Local, &opts(), &end("rollback-failed"));
        assert!(matches!(v, Verdict::Failed { rolled_back: false, ref why } if why.contains("rollback FAILED")));
    }
}
