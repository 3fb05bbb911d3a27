//! `--reboot` where the boot loader boots the new generation once: the
//! job made its entry the next boot only, the previous generation staying
//! the default. The host is rebooted; when it comes back on the new system
//! within the window (--confirm-timeout, else --reboot's wait) and a new
//! login and --check pass, the new generation's own
//! `switch-to-configuration boot` makes it the default. Otherwise nothing
//! more needs to happen on the host: its next boot, whoever starts it, is
//! the previous generation. nixpipe says so, waits (up to --reboot's wait)
//! for the host to be back on it, and then puts the profile back and
//! deletes the failed generation.

use super::{reboot, ActivationError, Options, Verdict};
use nixpipe_host::event::{BootOnce, BootState};
use nixpipe_host::report::Report;
use nixpipe_host::session::{Args, Run, Script, Session};
use nixpipe_host::target::Link;

/// Why the boot once did not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unheld {
    /// No answer from the new system within the window.
    Silent { seconds: u64 },
    /// Back within the window, running another system.
    OnOther { running: String },
    /// Back on the new system, but the --check failed there.
    CheckFailed { why: String },
    /// It could not be rebooted.
    NotRebooted { why: String },
}

impl std::fmt::Display for Unheld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unheld::Silent { seconds } => write!(f, "did not come back on it within {seconds} s"),
            Unheld::OnOther { running } => write!(f, "came back running {running}"),
            Unheld::CheckFailed { why } => write!(f, "came back on it, but the check failed: {why}"),
            Unheld::NotRebooted { why } => write!(f, "could not be rebooted into it: {why}"),
        }
    }
}

/// Reboots into the generation booted once, and keeps it or leaves it.
pub(super) fn rebooted(
    session: &Session,
    label: &str,
    system: &str,
    once: &BootOnce,
    wait: u64,
    opts: &Options,
) -> Verdict {
    let window = opts.confirm_timeout.unwrap_or(wait);
    let target = session.target.to_string();
    session.reports.report(Report::BootingOnce {
        label: label.to_owned(),
        target: target.clone(),
        generation: once.generation,
        entry: once.entry.clone(),
        previous: once.previous,
    });
    let restarted = reboot::boot_state(session, Link::default())
        .map_err(ActivationError::from)
        .and_then(|before| reboot::restart(session).map(|()| before));
    let before = match restarted {
        Ok(before) => before,
        Err(e) => return left(session, label, once, wait, None, Unheld::NotRebooted { why: e.to_string() }),
    };
    let unheld = match reboot::wait_for_restart(session, label, &before, window) {
        None => Unheld::Silent { seconds: window },
        Some(state) if !runs(&state, system) => {
            Unheld::OnOther { running: state.booted.clone().unwrap_or_else(|| "nothing".into()) }
        }
        Some(state) => match opts.check.as_deref().map(|check| super::job::run_check(session, label, check)) {
            Some(Err(why)) => {
                return left(session, label, once, wait, Some(state), Unheld::CheckFailed { why: why.to_string() })
            }
            _ => return kept(session, label, system, once),
        },
    };
    left(session, label, once, wait, None, unheld)
}

/// Whether the host booted `system` and runs it.
fn runs(state: &BootState, system: &str) -> bool {
    state.current.as_deref() == Some(system) && state.booted.as_deref() == Some(system)
}

/// The new generation held: its own `switch-to-configuration boot` makes
/// it the boot loader's default.
fn kept(session: &Session, label: &str, system: &str, once: &BootOnce) -> Verdict {
    let program = format!("{system}/bin/switch-to-configuration");
    let made = session.output(&Run::program(&[&program, "boot"]).as_root().over(Link::fresh()));
    match made {
        Ok(output) if output.status.success() => {
            let target = session.target.to_string();
            session.reports.report(Report::BootOnceKept {
                label: label.to_owned(),
                target,
                generation: once.generation,
            });
            Verdict::Activated
        }
        Ok(output) => Verdict::Failed(ActivationError::NotMadeDefault {
            target: session.target.clone(),
            generation: once.generation,
            why: session.target.failure(&format!("{program} boot"), &output).to_string(),
        }),
        Err(e) => Verdict::Failed(ActivationError::NotMadeDefault {
            target: session.target.clone(),
            generation: once.generation,
            why: e.to_string(),
        }),
    }
}

/// The new generation did not hold: said at once; then, once the host is
/// back on the previous generation (rebooted into it when it still runs
/// the new one), the profile is put back and the failed generation
/// deleted. `on_new`: the host's state when it still runs the new system.
fn left(
    session: &Session,
    label: &str,
    once: &BootOnce,
    wait: u64,
    on_new: Option<BootState>,
    unheld: Unheld,
) -> Verdict {
    session.reports.report(Report::BootOnceLeft {
        label: label.to_owned(),
        target: session.target.to_string(),
        generation: once.generation,
        why: unheld.to_string(),
        previous: once.previous,
        rebooting: on_new.is_some(),
        wait,
    });
    let back = match on_new {
        Some(state) => {
            reboot::restart(session).ok().and_then(|()| reboot::wait_for_restart(session, label, &state, wait))
        }
        None => back_on_previous(session, label, once, wait),
    };
    let cleaned = match back {
        Some(state) if state.booted.as_deref() == Some(once.default.as_str()) => forget(session, once),
        Some(state) => Err(format!("it runs {}", state.booted.unwrap_or_else(|| "nothing".into()))),
        None => Err(format!("it did not answer within {wait} s")),
    };
    Verdict::Failed(ActivationError::BootOnceLeft {
        target: session.target.clone(),
        generation: once.generation,
        previous: once.previous,
        unheld,
        cleaned,
    })
}

/// Waits up to `wait` seconds for the host to answer from a boot of its
/// previous generation; a boot of the new one (a late one) is rebooted,
/// once, since the default is the previous generation.
fn back_on_previous(session: &Session, label: &str, once: &BootOnce, wait: u64) -> Option<BootState> {
    let unknown = BootState { boot: (String::new(), String::new()), current: None, booted: None };
    let state = reboot::wait_for_restart(session, label, &unknown, wait)?;
    if state.booted.as_deref() == Some(once.default.as_str()) {
        return Some(state);
    }
    reboot::restart(session).ok()?;
    reboot::wait_for_restart(session, label, &state, wait)
}

/// job.sh's `forget`: the profile back, the failed generation deleted,
/// the boot entries written again without it.
fn forget(session: &Session, once: &BootOnce) -> Result<(), String> {
    let args = Args::verb("forget")
        .set("generation", once.generation.to_string())
        .set("previous", once.previous.to_string())
        .set("default", &*once.default);
    match session.output(&Run::script(Script::Job, &args).as_root().over(Link::fresh())) {
        Ok(output) if output.status.success() => Ok(()),
        Ok(output) => Err(session.target.failure("forgetting the failed generation", &output).to_string()),
        Err(e) => Err(e.to_string()),
    }
}
