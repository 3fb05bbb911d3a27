//! `--reboot`: restart the target into the system just made its boot
//! default, wait (bounded) until it answers over a new ssh connection, and
//! check that it really restarted (its boot id, or PID 1's start time where
//! the boot id is a container host's) and runs the new system: both
//! /run/current-system and /run/booted-system.

use super::ActivationError;
use nixpipe_host::event::{BootState, Event};
use nixpipe_host::session::{Args, Run, Script, Session, SessionError};
use nixpipe_host::target::Link;
use std::thread;
use std::time::{Duration, Instant};

/// How long a target may take to come back when nothing says otherwise.
pub const REBOOT_WAIT: u64 = 300;
/// Every try gives up after 5 s.
const TRY_FOR: u64 = 5;

/// Reboots the session's host and waits up to `wait` seconds for it to
/// answer from its next boot; what it runs then.
pub(super) fn reboot(session: &Session, label: &str, wait: u64) -> Result<BootState, ActivationError> {
    let before = boot_state(session, Link::default())?;
    restart(session)?;
    wait_for_restart(session, label, &before, wait)
        .ok_or_else(|| ActivationError::NeverCameBack { target: session.target.clone(), seconds: wait })
}

/// Ok when the host booted `system` and runs it.
pub(super) fn runs(session: &Session, state: &BootState, system: &str) -> Result<(), ActivationError> {
    match (state.current.as_deref(), state.booted.as_deref()) {
        (Some(current), Some(booted)) if current == system && booted == system => Ok(()),
        (current, _) => Err(ActivationError::CameBackOnOther {
            target: session.target.clone(),
            running: current.unwrap_or("nothing").to_owned(),
            system: system.to_owned(),
        }),
    }
}

/// Which boot the host is in, and what it runs.
pub(super) fn boot_state(session: &Session, link: Link) -> Result<BootState, SessionError> {
    session.answer(&Run::script(Script::BootState, &Args::new()).over(link), "boot state", |e| match e {
        Event::Boot(state) => Some(state),
        _ => None,
    })
}

/// `systemctl reboot` as root. The connection may die with the host before
/// it answers: only a refusal to run it is an error.
pub(super) fn restart(session: &Session) -> Result<(), ActivationError> {
    match session.output(&Run::program(&["systemctl", "reboot"]).as_root()) {
        Err(SessionError::Privilege(refused)) => Err(SessionError::Privilege(refused).into()),
        Ok(output) if !output.status.success() && output.status.code() != Some(255) => {
            Err(SessionError::from(session.target.failure("systemctl reboot", &output)).into())
        }
        _ => Ok(()),
    }
}

/// Polls the host over new connections until it answers from another boot
/// than `before`, for at most `wait` seconds; its state then.
pub(super) fn wait_for_restart(session: &Session, label: &str, before: &BootState, wait: u64) -> Option<BootState> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(wait);
    while Instant::now() < deadline {
        thread::sleep(Duration::from_secs(1));
        let waited = started.elapsed().as_secs();
        session
            .reports
            .step(label, &format!("rebooting {}: waiting for it to answer ({waited} s of {wait})", session.target));
        match boot_state(session, Link { connect_timeout: Some(TRY_FOR), ..Link::fresh() }) {
            Ok(state) if state.boot != before.boot => return Some(state),
            _ => continue,
        }
    }
    None
}
