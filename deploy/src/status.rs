//! nixpipe-status: what each host runs, against the record meant for it,
//! learnt in one read-only round trip (host/scripts/status.sh).

use nixpipe_host::event::Event;
pub use nixpipe_host::event::{HostStatus, StatusJson};
use nixpipe_host::session::{Args, Run, Script, Session, SessionError};
use nixpipe_store::record::Record;
use serde::Serialize;

/// The JSON fields of a record whose host could not tell.
#[derive(Serialize)]
pub struct FailedJson<'a> {
    pub target: &'a str,
    pub error: String,
}

/// What the session's host runs, against `record`.
pub fn of(session: &Session, record: &Record) -> Result<HostStatus, SessionError> {
    session.answer(&Run::script(Script::Status, &Args::new().set("path", record.path.to_string())), "status", |e| {
        match e {
            Event::Status(status) => Some(status),
            _ => None,
        }
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
