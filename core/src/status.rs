//! nixpipe-status: what each host runs, against the record meant for it,
//! learnt in one read-only round trip (core/scripts/status.sh).

use crate::event::Event;
use crate::record::Record;
use crate::session::{Script, Session, SessionError};
use serde::Serialize;

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

/// The JSON fields of a record whose host could not tell.
#[derive(Serialize)]
pub struct FailedJson<'a> {
    pub target: &'a str,
    pub error: String,
}

/// What the session's host runs, against `record`.
pub fn of(session: &Session, record: &Record) -> Result<HostStatus, SessionError> {
    session.answer(Script::Status, &[record.path.to_string()], &[], "status", |e| match e {
        Event::Status(status) => Some(status),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(current: Option<&str>, profile: Option<&str>, needs_reboot: Option<bool>) -> HostStatus {
        HostStatus {
            system: "/nix/store/a-new".into(),
            current: current.map(String::from),
            booted: None,
            profile: profile.map(String::from),
            generation: Some(3),
            needs_reboot,
        }
    }

    #[test]
    fn the_summary_says_what_runs_and_what_else_to_know() {
        let runs = status(Some("/nix/store/a-new"), Some("/nix/store/a-new"), Some(false));
        assert!(runs.runs());
        assert_eq!(runs.summary(), "runs it; profile generation 3");
        let drifted = status(Some("/nix/store/b-old"), Some("/nix/store/a-new"), Some(true));
        assert!(!drifted.runs());
        assert_eq!(
            drifted.summary(),
            "runs /nix/store/b-old, not /nix/store/a-new; profile generation 3, which is not what runs; reboot needed"
        );
        assert_eq!(
            status(None, None, None).summary(),
            "runs no NixOS system, not /nix/store/a-new; profile generation 3"
        );
    }
}
