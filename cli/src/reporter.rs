//! The one reporter: what the core reports, rendered for the person at the
//! terminal, on stderr. Lines about a host are marked with its record
//! (`web1 | ...`) and also shown as its latest step on its progress line;
//! notes start with the command's name.

use crate::progress;
use nixpipe_host::report::{BuildDisplay, CopyProgress, Report, Reporter};

pub struct Terminal;

impl Reporter for Terminal {
    fn report(&self, report: Report) {
        match report {
            Report::Step { label, line } => show(&label, &line),
            Report::NixLog(bytes) => progress::suspend(|| eprint!("{}", String::from_utf8_lossy(&bytes))),
            Report::NotSubstituted { to, paths } => {
                show(&to, &format!("{paths} paths not substituted: sending them from here"))
            }
            Report::NoZstd { target, daemon: false } => {
                note(&format!("{target} has no zstd: compressing with ssh's own compression instead"))
            }
            Report::NoZstd { target, daemon: true } => note(&format!(
                "{target} speaks the daemon protocol, whose answers come only while its input is open, and the \
                 target's zstd holds input back: compressing with ssh's own compression instead"
            )),
            Report::WouldCopy { path, bytes, to } => note(&format!("would copy {path} ({bytes} bytes) to {to}")),
            Report::WouldActivate { label, action, target, path } => {
                note(&format!("{label}: would {action} {target} to {path}"))
            }
            Report::ClosureDiff { label, before, after, diff } => {
                show(&label, &format!("{before} -> {after}"));
                for line in diff.to_string().lines() {
                    show(&label, line);
                }
            }
            Report::NothingToCompare { label, target } => {
                show(&label, &format!("nothing on {target} yet to compare with"))
            }
            Report::CannotCompare { label, before, after, why } => {
                note(&format!("{label}: cannot compare {before} with {after}: {why}"))
            }
            Report::Switching { label, action, system } => {
                show(&label, &format!("switch-to-configuration {action} {system}"))
            }
            Report::RollingBack { label } => show(&label, "rolling back"),
            Report::Reconnecting { label, target } => {
                show(&label, &format!("lost the connection to {target}; reconnecting"))
            }
            Report::CheckFailed { label, why } => show(&label, &format!("the check failed: {why}")),
            Report::Unconfirmed { label, target, why } => {
                show(&label, &format!("no new connection to {target} could confirm the switch: {why}"))
            }
            Report::Restarted { label } => show(&label, &format!("restarted microvm@{label}.service")),
            Report::BootingInstead { label, keys } => show(
                &label,
                &format!("switch inhibited ({} changed): making it the boot default instead", keys.join(", ")),
            ),
            Report::NeedsReboot { label, target } => show(
                &label,
                &format!(
                    "reboot needed: {target} booted another kernel, initrd or kernel modules than the new system's"
                ),
            ),
            Report::InitChanged { label, target } => show(
                &label,
                &format!("the init interface changed: {target} boots the new system next; reboot it to activate it"),
            ),
            Report::BootingOnce { label, target, generation, entry, previous } => show(
                &label,
                &format!(
                    "rebooting {target} into generation {generation} once ({entry}); its boot default stays generation {previous}"
                ),
            ),
            Report::BootOnceKept { label, target, generation } => show(
                &label,
                &format!("{target} came back on generation {generation}: it is the boot default now"),
            ),
            Report::BootOnceLeft { label, target, generation, why, previous, rebooting, wait } => {
                let next = match rebooting {
                    true => "rebooting it into that".to_owned(),
                    false => format!(
                        "its next boot (a watchdog, a power cycle, a reset) boots that; waiting up to {wait} s for it"
                    ),
                };
                show(
                    &label,
                    &format!(
                        "{target} booted generation {generation} once and {why}; its boot default is still generation {previous}: {next}"
                    ),
                )
            }
            Report::WaitingForLock { label, holder } => {
                show(&label, &format!("waiting for NixOS's switch lock, held by {holder}"))
            }
        }
    }

    fn copy_progress(&self, label: &str, paths: u64, bytes: u64) -> Box<dyn CopyProgress + '_> {
        Box::new(progress::Progress::new(label, paths, bytes))
    }

    fn host_line(&self, label: &str, step: &str) -> Box<dyn Send + '_> {
        Box::new(progress::HostLine::new(label, step))
    }

    fn paused(&self, f: &mut dyn FnMut()) {
        progress::suspend(f)
    }

    fn build_display(&self) -> Option<Box<dyn BuildDisplay + '_>> {
        progress::BuildStatus::on_a_terminal().map(|status| Box::new(status) as Box<dyn BuildDisplay>)
    }
}

/// A line of what happens on a host, marked with the record it is about;
/// never an error line. On a terminal it is also the host's latest step.
fn show(label: &str, line: &str) {
    progress::println(&format!("{label} | {line}"));
    progress::step(label, line);
}

/// A note for the person at the terminal.
fn note(what: &str) {
    progress::println(&format!("{}: {what}", crate::program()));
}
