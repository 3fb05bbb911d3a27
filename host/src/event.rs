//! The events nixpipe's scripts answer with (host/scripts/prelude.sh),
//! parsed once into types: a line `nixpipe-event<TAB>KIND<TAB>KEY=VALUE...`.
//! Lines that are not events (what a login shell printed, say) are
//! skipped; so are events of an unknown kind or missing a field.

use base64::Engine;
use nixpipe_store::store_path::StorePath;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt;

const MARK: &str = "nixpipe-event\t";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// What a session learns about its host once.
    Host(HostFacts),
    /// What nixpipe-activate checks before anything changes.
    Probe(ProbeFacts),
    /// A step of the activation job.
    Job(JobEvent),
    /// One MicroVM on a host.
    Vm(VmState),
    /// What installing a MicroVM runner did.
    Installed(Installed),
    /// Whether a MicroVM that was to be removed was there.
    Removed { found: bool },
    /// A path of a system's closure (`before` or `after`).
    Requisite { after: bool, path: String },
    /// Which boot of the host this is (its boot id, and PID 1's start
    /// time), and what runs.
    Boot(BootState),
    /// A key was written into place.
    KeyWritten,
    /// What a host runs (nixpipe-status).
    Status(HostStatus),
    /// The relay's closure has this many paths.
    Closure { paths: usize },
    /// The relay sent a path of this many bytes.
    Sent { path: String, size: u64 },
}

/// What one install did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Installed {
    /// Whether `current` moved; false: the runner was already current.
    pub changed: bool,
    /// The runner before, when it moved.
    #[serde(skip)]
    pub previous: Option<String>,
    pub restarted: bool,
}

/// What a host runs, boots and holds in its system profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostStatus {
    /// The system the record stands for (a bundle's toplevel).
    pub system: String,
    /// /run/current-system.
    pub current: Option<String>,
    /// /run/booted-system.
    pub booted: Option<String>,
    /// The system profile's current generation, and its number.
    pub profile: Option<String>,
    pub generation: Option<u64>,
    /// Whether the booted kernel, initrd or modules are not the running
    /// system's; None where nothing says what booted.
    pub needs_reboot: Option<bool>,
}

impl HostStatus {
    /// Whether the host runs the record's system.
    pub fn runs(&self) -> bool {
        self.current.as_deref() == Some(self.system.as_str())
    }

    /// One line for people: what runs, and what else to know.
    pub fn summary(&self) -> String {
        let mut line = match (&self.current, self.runs()) {
            (_, true) => "runs it".to_owned(),
            (Some(current), false) => format!("runs {current}, not {}", self.system),
            (None, false) => format!("runs no NixOS system, not {}", self.system),
        };
        if let Some(generation) = self.generation {
            line += &format!("; profile generation {generation}");
        }
        if self.profile.is_some() && self.profile != self.current {
            line += ", which is not what runs";
        }
        if self.needs_reboot == Some(true) {
            line += "; reboot needed";
        }
        line
    }

    /// The record's JSON fields.
    pub fn json<'a>(&'a self, target: &'a str) -> StatusJson<'a> {
        StatusJson {
            target,
            system: &self.system,
            current: self.current.as_deref(),
            booted: self.booted.as_deref(),
            profile: self.profile.as_deref(),
            generation: self.generation,
            needs_reboot: self.needs_reboot,
            runs: self.runs(),
        }
    }
}

/// What nixpipe-status's JSON records carry beside name and path.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusJson<'a> {
    pub target: &'a str,
    pub system: &'a str,
    pub current: Option<&'a str>,
    pub booted: Option<&'a str>,
    pub profile: Option<&'a str>,
    pub generation: Option<u64>,
    pub needs_reboot: Option<bool>,
    pub runs: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// The login user's uid: 0 needs no sudo.
    pub uid: u32,
    /// Whether systemd runs as init.
    pub systemd: bool,
    /// `uname -m`.
    pub machine: String,
    /// For a login other than root: whether `sudo -n true` works (None:
    /// no sudo there, or root).
    pub sudo_without_password: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeFacts {
    pub hostname: String,
    /// The running system.
    pub current: Option<String>,
    /// The path to activate: the one given, the generation before the
    /// current one, or the previous bundle; None when there is none.
    pub resolved: Option<String>,
    pub valid: bool,
    /// A bundle (nixpipe-bundle) rather than a system.
    pub bundle: bool,
    pub nixos: bool,
    /// The hostname the system itself is configured with (`etc/hostname`).
    pub configured: Option<String>,
    /// Whether the system has the specialisation asked for.
    pub specialisation: Option<bool>,
    pub specialisations: String,
    /// The toplevel's own `system` file: the platform it is built for.
    pub system: Option<String>,
    /// The host Nix's own `system`: the platform it runs natively.
    pub native: Option<String>,
    /// Its `extra-platforms`: what it runs only under emulation (NixOS's
    /// boot.binfmt.emulatedSystems puts them there) or builds elsewhere.
    pub emulated: Vec<String>,
    /// The switch inhibitors of the new system and of the running one
    /// (JSON objects, name -> string), where they have them.
    pub inhibitors_new: Option<String>,
    pub inhibitors_current: Option<String>,
    /// The boot loader that can boot a generation once (systemd-boot,
    /// grub), when asked (--reboot) and it can.
    pub boot_loader: Option<String>,
    /// What the host lacks for a boot once, when asked and it does.
    pub boot_once_missing: Option<String>,
}

impl ProbeFacts {
    /// The platforms the host runs natively: its Nix's `system`, and on
    /// x86_64-linux also i686-linux (the CPU runs both). Never one of
    /// `extra-platforms`: a system activated under emulation would boot an
    /// entry the machine cannot boot. Empty when the host did not say.
    pub fn native_platforms(&self) -> Vec<String> {
        let Some(native) = &self.native else { return Vec::new() };
        let mut platforms = vec![native.clone()];
        if native == "x86_64-linux" {
            platforms.push("i686-linux".to_owned());
        }
        platforms
    }

    /// The toplevel's platform, when the host does not run it natively.
    pub fn platform_mismatch(&self) -> Option<String> {
        let system = self.system.as_ref()?;
        let native = self.native_platforms();
        match native.is_empty() || native.contains(system) {
            true => None,
            false => Some(system.clone()),
        }
    }

    /// The switch inhibitors that forbid the switch, as NixOS's own
    /// pre-switch check decides (preSwitchChecks.switchInhibitors): each
    /// key of the running system's that the new system has with another
    /// value. A key only the new system has, or only the running one, does
    /// not; a file that is not a JSON object is no inhibitors. Nothing runs
    /// yet: nothing to differ from.
    pub fn changed_inhibitors(&self) -> Vec<String> {
        if self.current.is_none() {
            return Vec::new();
        }
        let parse = |json: &Option<String>| -> BTreeMap<String, serde_json::Value> {
            json.as_deref().and_then(|j| serde_json::from_str(j).ok()).unwrap_or_default()
        };
        let (new, current) = (parse(&self.inhibitors_new), parse(&self.inhibitors_current));
        current.into_iter().filter(|(key, value)| new.get(key).is_some_and(|v| v != value)).map(|(k, _)| k).collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEvent {
    Started,
    /// The system that ran before; None on a first deploy.
    Previous(Option<String>),
    Switching {
        action: String,
        system: String,
    },
    RollingBack,
    AwaitingConfirmation {
        seconds: u64,
    },
    /// NixOS's own lock is taken: by whom.
    WaitingForLock {
        holder: String,
    },
    /// Whether the booted kernel, initrd or modules are not the new
    /// system's; None where nothing says what was booted.
    NeedsReboot(Option<bool>),
    /// The switch failed with this exit status; whether the host shows
    /// that it activated (part of) the new system.
    Exited {
        status: i32,
        activated: bool,
    },
    /// The new generation boots once, at the next boot.
    BootOnce(BootOnce),
    Result(JobResult),
}

/// A new generation made the next boot, once (--reboot): the boot
/// loader's default stays the previous one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootOnce {
    /// The new generation of the system profile, and the one before it.
    pub generation: u64,
    pub previous: u64,
    /// The previous generation's system: what the next boot after this
    /// one boots.
    pub default: String,
    /// The boot loader's name for the new generation's entry.
    pub entry: String,
}

/// How the job ended, as it said in its `result` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobResult {
    Ok,
    /// switch-to-configuration failed; what became of it.
    Failed(Rollback),
    /// A pre-switch check or the bootloader failed (exit 1): nothing was
    /// activated; what became of the profile.
    NotActivated(Rollback),
    /// Active, but these units failed (exit 4); what the rollback did, or
    /// None when the system was kept (--keep-on-unit-failure).
    UnitsFailed {
        rollback: Option<Rollback>,
        units: Vec<String>,
    },
    /// The init interface changed (exit 100) on a switch: nothing
    /// activated, the new system boots next.
    RebootNeeded,
    /// The init interface changed (exit 100) on a test or dry-activate:
    /// nothing activated, and nothing points at the new system.
    InitChanged,
    /// NixOS's own lock stayed taken: by whom; nothing activated.
    Busy(String),
    /// The system's switch-to-configuration has no `check` action.
    NoCheckAction,
    /// Nobody confirmed in time; what the rollback did.
    Unconfirmed(Rollback),
    /// The --check command failed after the switch; what the rollback did.
    Rejected(Rollback),
    /// Another activation holds the lock: who.
    Locked(String),
    /// The job cannot be followed any more: why.
    Lost(String),
    /// No such job on the target: it never started there, or the target
    /// rebooted since (/run is gone).
    Gone,
    /// The boot loader could not be made to boot the new generation once:
    /// why; what became of the profile.
    NoBootOnce {
        why: String,
        rollback: Rollback,
    },
}

/// What came of a failed switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rollback {
    /// The previous generation is active again.
    RolledBack,
    /// The profile went back; no system ran before to re-activate.
    NothingToReactivate,
    /// The rollback failed too.
    RollbackFailed,
    /// The profile could not be set: nothing was activated.
    ProfileNotSet,
    /// A dry activation failed: nothing changed.
    NothingChanged,
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

impl Rollback {
    fn parse(text: &str) -> Rollback {
        match text {
            "rolled-back" => Rollback::RolledBack,
            "nothing-to-reactivate" => Rollback::NothingToReactivate,
            "profile" => Rollback::ProfileNotSet,
            "nothing-changed" => Rollback::NothingChanged,
            _ => Rollback::RollbackFailed,
        }
    }

    /// Whether the host runs what it ran before.
    pub fn is_back(self) -> bool {
        matches!(self, Rollback::RolledBack | Rollback::NothingToReactivate)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootState {
    /// The boot id and PID 1's start time: another after a restart.
    pub boot: (String, String),
    pub current: Option<String>,
    pub booted: Option<String>,
}

/// One VM on a host, as the host script reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmState {
    pub name: String,
    pub current: String,
    pub booted: Option<String>,
    pub running: bool,
    /// Whether its current runner is still in the store.
    pub valid: bool,
    /// The current runner's guest system (share/microvm/system).
    pub system: Option<String>,
}

/// Every event in a script's output, in order.
/// Whether a line of a script's output is one of its events: the only
/// lines of a host's output nixpipe keeps.
pub(crate) fn is_event_line(line: &[u8]) -> bool {
    line.starts_with(MARK.as_bytes())
}

pub fn parse_all(output: &[u8]) -> Vec<Event> {
    String::from_utf8_lossy(output).lines().filter_map(parse_line).collect()
}

/// The event a line holds, if it is one.
pub fn parse_line(line: &str) -> Option<Event> {
    // A line as read, its newline still on: not part of the last value.
    let line = line.strip_suffix('\n').unwrap_or(line);
    let mut words = line.strip_prefix(MARK)?.split('\t');
    let kind = words.next()?;
    let fields: HashMap<&str, &str> = words.filter_map(|w| w.split_once('=')).collect();
    let get = |key: &str| fields.get(key).copied();
    let flag = |key: &str| get(key) == Some("1");
    let some = |key: &str| get(key).filter(|v| !v.is_empty()).map(str::to_owned);
    // needs_reboot's answer: 1, 0, or unknown (nothing says what booted).
    let reboot = |key: &str| {
        get(key).map(|v| match v {
            "1" => Some(true),
            "0" => Some(false),
            _ => None,
        })
    };
    Some(match kind {
        "host" => Event::Host(HostFacts {
            uid: get("uid")?.parse().ok()?,
            systemd: get("init") == Some("systemd"),
            machine: get("machine")?.to_owned(),
            sudo_without_password: some("sudo").map(|v| v == "1"),
        }),
        "probe" => Event::Probe(ProbeFacts {
            hostname: get("hostname")?.to_owned(),
            current: some("current"),
            resolved: some("resolved"),
            valid: flag("valid"),
            bundle: flag("bundle"),
            nixos: flag("nixos"),
            configured: some("configured"),
            specialisation: some("specialisation").map(|v| v == "1"),
            specialisations: get("specialisations").unwrap_or("").trim().to_owned(),
            system: some("system"),
            native: some("native"),
            emulated: get("emulated").unwrap_or("").split_whitespace().map(str::to_owned).collect(),
            inhibitors_new: get("inhibitors").and_then(decode),
            inhibitors_current: get("inhibitors-current").and_then(decode),
            boot_loader: some("boot-loader"),
            boot_once_missing: some("boot-once-missing"),
        }),
        "started" => Event::Job(JobEvent::Started),
        "previous" => Event::Job(JobEvent::Previous(some("path"))),
        "switching" => Event::Job(JobEvent::Switching { action: get("action")?.into(), system: get("system")?.into() }),
        "rolling-back" => Event::Job(JobEvent::RollingBack),
        "awaiting-confirmation" => {
            Event::Job(JobEvent::AwaitingConfirmation { seconds: get("seconds")?.parse().ok()? })
        }
        "waiting-for-lock" => Event::Job(JobEvent::WaitingForLock { holder: get("holder").unwrap_or("").to_owned() }),
        "needs-reboot" => Event::Job(JobEvent::NeedsReboot(reboot("value")?)),
        "exited" => Event::Job(JobEvent::Exited { status: get("status")?.parse().ok()?, activated: flag("activated") }),
        "boot-once" => Event::Job(JobEvent::BootOnce(BootOnce {
            generation: get("generation")?.parse().ok()?,
            previous: get("previous")?.parse().ok()?,
            default: get("default")?.to_owned(),
            entry: get("entry")?.to_owned(),
        })),
        "result" => {
            let units = get("units").unwrap_or("").split(',').map(str::trim).filter(|u| !u.is_empty());
            let units = units.map(str::to_owned).collect();
            let result = match get("outcome")? {
                "no-boot-once" => JobResult::NoBootOnce {
                    why: get("why").unwrap_or("").to_owned(),
                    rollback: Rollback::parse(get("detail").unwrap_or("")),
                },
                outcome => job_result(outcome, get("detail").unwrap_or(""), units),
            };
            Event::Job(JobEvent::Result(result))
        }
        "vm" => Event::Vm(VmState {
            name: nixpipe_store::record::parse_vm_name(get("name")?).ok()?,
            current: get("current")?.to_owned(),
            booted: some("booted"),
            running: flag("running"),
            valid: flag("valid"),
            system: some("system"),
        }),
        "installed" => Event::Installed(Installed {
            changed: flag("changed"),
            previous: some("previous"),
            restarted: flag("restarted"),
        }),
        "removed" => Event::Removed { found: flag("found") },
        "requisite" => Event::Requisite { after: get("of")? == "after", path: get("path")?.to_owned() },
        "boot" => Event::Boot(BootState {
            boot: (get("id")?.to_owned(), get("pid1")?.to_owned()),
            current: some("current"),
            booted: some("booted"),
        }),
        "key" => Event::KeyWritten,
        "status" => Event::Status(HostStatus {
            system: get("system")?.to_owned(),
            current: some("current"),
            booted: some("booted"),
            profile: some("profile"),
            generation: get("generation").and_then(|g| g.trim().parse().ok()),
            needs_reboot: reboot("reboot")?,
        }),
        "closure" => Event::Closure { paths: get("paths")?.trim().parse().ok()? },
        "sent" => Event::Sent {
            path: StorePath::parse(get("path")?).ok()?.to_string(),
            size: get("size")?.trim().parse().ok()?,
        },
        _ => return None,
    })
}

/// A value the script sent in base64 (a file's contents, whatever it holds).
fn decode(b64: &str) -> Option<String> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned()).filter(|s| !s.is_empty())
}

fn job_result(outcome: &str, detail: &str, units: Vec<String>) -> JobResult {
    match outcome {
        "ok" => JobResult::Ok,
        "failed" => JobResult::Failed(Rollback::parse(detail)),
        "not-activated" => JobResult::NotActivated(Rollback::parse(detail)),
        "units-failed" => {
            JobResult::UnitsFailed { rollback: (detail != "kept").then(|| Rollback::parse(detail)), units }
        }
        "reboot-needed" => JobResult::RebootNeeded,
        "init-changed" => JobResult::InitChanged,
        "busy" => JobResult::Busy(detail.to_owned()),
        "no-check-action" => JobResult::NoCheckAction,
        "unconfirmed" => JobResult::Unconfirmed(Rollback::parse(detail)),
        "rejected" => JobResult::Rejected(Rollback::parse(detail)),
        "locked" => JobResult::Locked(detail.to_owned()),
        "gone" => JobResult::Gone,
        "vanished" => JobResult::Lost("the job died without a result".into()),
        other => JobResult::Lost(format!("the job ended with an unknown result '{other}'")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn parses_what_the_scripts_emit() {
        let out = "motd line\nnixpipe-event\thost\tuid=1000\tinit=systemd\tnix=2.34.0\tmachine=x86_64\n\
                   nixpipe-event\tresult\toutcome=failed\tdetail=rolled-back\n\
                   nixpipe-event\tprobe\thostname=web1\tcurrent=\tspecialisation=0\tspecialisations=a b \n";
        let events = parse_all(out.as_bytes());
        assert_eq!(
            events[0],
            Event::Host(HostFacts { uid: 1000, systemd: true, machine: "x86_64".into(), sudo_without_password: None })
        );
        assert_eq!(events[1], Event::Job(JobEvent::Result(JobResult::Failed(Rollback::RolledBack))));
        let Event::Probe(probe) = &events[2] else { panic!("{events:?}") };
        assert_eq!((probe.current.as_ref(), probe.specialisation), (None, Some(false)));
        assert_eq!(probe.specialisations, "a b");
    }

    #[test]
    fn junk_and_unknown_events_are_skipped() {
        for line in ["result outcome=ok", "nixpipe-event\tnonsense", "nixpipe-event\thost\tuid=x\tmachine=m", ""] {
            assert_eq!(parse_line(line), None, "{line:?}");
        }
    }

    #[test]
    fn a_line_as_read_has_no_newline_in_its_last_value() {
        let line = "nixpipe-event\tprobe\thostname=web1\tboot-loader=\tboot-once-missing=\n";
        let Some(Event::Probe(probe)) = parse_line(line) else { panic!("{line:?}") };
        assert_eq!((probe.boot_loader, probe.boot_once_missing), (None, None));
    }

    #[test]
    fn values_with_tabs_and_newlines_stay_one_field() {
        let script = format!("{}\nemit previous path=\"$1\"", include_str!("../scripts/prelude.sh"));
        let output = Command::new("sh").args(["-c", &script, "sh", "a\tb\nc"]).output().unwrap();
        assert_eq!(parse_all(&output.stdout), [Event::Job(JobEvent::Previous(Some("a b c".into())))]);
    }
}
