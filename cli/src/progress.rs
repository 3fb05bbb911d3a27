//! Progress for the person at the terminal: shown on stderr when it is a
//! terminal, and nowhere else (never in a pipe, a log or CI).
//!
//! All lines share one [`MultiProgress`]: a line per host at work (its
//! latest step) and a bar per copy, kept at the bottom while the log lines
//! of every host scroll above them, as cargo shows its builds.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

static BARS: OnceLock<MultiProgress> = OnceLock::new();

/// The status line of each host at work, by its label.
static HOSTS: OnceLock<Mutex<HashMap<String, ProgressBar>>> = OnceLock::new();

fn bars() -> &'static MultiProgress {
    BARS.get_or_init(|| {
        let target =
            if std::io::stderr().is_terminal() { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
        MultiProgress::with_draw_target(target)
    })
}

fn hosts() -> &'static Mutex<HashMap<String, ProgressBar>> {
    HOSTS.get_or_init(Default::default)
}

/// The longest line shown: a host or peer may send one of any length.
const LONGEST_LINE: usize = 4096;

/// `line` as it is safe to show on a terminal: every control character (C0
/// but tab, DEL, C1) escaped, so that nothing a host, peer or host file
/// says can move the cursor, set the title, write the clipboard (OSC 52),
/// erase or hide what was shown, or start a new line that looks like ours;
/// cut after [`LONGEST_LINE`] characters. Records and JSON are not shown
/// through here: they keep their bytes (JSON escapes its own).
pub(crate) fn printable(line: &str) -> String {
    let mut shown = String::with_capacity(line.len().min(LONGEST_LINE));
    for (count, c) in line.chars().enumerate() {
        if count == LONGEST_LINE {
            let left = line.chars().count() - count;
            shown.push_str(&format!("... ({left} more characters)"));
            break;
        }
        match c {
            '\t' => shown.push(c),
            c if c.is_control() => shown.extend(c.escape_default()),
            c => shown.push(c),
        }
    }
    shown
}

/// Writes a line to stderr above the progress lines, which are drawn again
/// below it; made [`printable`] first.
pub fn println(line: &str) {
    let line = printable(line);
    suspend(|| eprintln!("{line}"));
}

/// Runs `write` with the progress lines cleared, then draws them again: for
/// anything written to the terminal meanwhile (records, when stdout is it).
pub(crate) fn suspend<R>(write: impl FnOnce() -> R) -> R {
    bars().suspend(write)
}

/// The line of one host while it is worked on: `web1 [/] its latest step`.
/// Gone when dropped.
pub struct HostLine {
    label: String,
}

impl HostLine {
    pub fn new(label: &str, step: &str) -> HostLine {
        let bar = bars().add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{spinner}] {wide_msg}")
                .expect("a valid template")
                .tick_strings(&["|", "/", "-", "\\", "done"]),
        );
        bar.set_prefix(label.to_owned());
        bar.set_message(printable(step));
        bar.enable_steady_tick(Duration::from_millis(120));
        hosts().lock().unwrap_or_else(|p| p.into_inner()).insert(label.to_owned(), bar);
        HostLine { label: label.to_owned() }
    }
}

impl Drop for HostLine {
    fn drop(&mut self) {
        if let Some(bar) = hosts().lock().unwrap_or_else(|p| p.into_inner()).remove(&self.label) {
            bar.finish_and_clear();
            bars().remove(&bar);
        }
    }
}

/// Shows `step` on the line of the host labelled `label`, if it has one.
pub fn step(label: &str, step: &str) {
    if let Some(bar) = hosts().lock().unwrap_or_else(|p| p.into_inner()).get(label) {
        bar.set_message(printable(step));
    }
}

/// Bytes and paths moved towards one target.
pub struct Progress {
    bar: ProgressBar,
    paths: u64,
}

impl Progress {
    pub fn new(label: &str, paths: u64, bytes: u64) -> Progress {
        let bar = bars().add(ProgressBar::new(bytes));
        let style = ProgressStyle::with_template(
            "{prefix} {msg} [{bar:24}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .expect("a valid template")
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(label.to_owned());
        let progress = Progress { bar, paths };
        progress.bar.set_message(format!("0/{paths} paths"));
        progress
    }
}

impl nixpipe_host::report::CopyProgress for Progress {
    fn sent(&self, bytes: u64) {
        self.bar.inc(bytes);
    }

    fn path_done(&self, done: u64) {
        self.bar.set_message(format!("{done}/{} paths", self.paths));
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
        bars().remove(&self.bar);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_escaped_and_long_lines_cut() {
        let forged = "\u{1b}]52;c;Zm9v\u{7}\u{1b}[2K\rweb1: runs it\u{8}\u{0}\u{9b}31m\ttab";
        let shown = printable(forged);
        assert!(!shown.chars().any(|c| c.is_control() && c != '\t'), "{shown:?}");
        assert_eq!(shown, r"\u{1b}]52;c;Zm9v\u{7}\u{1b}[2K\rweb1: runs it\u{8}\u{0}\u{9b}31m".to_owned() + "\ttab");
        let long = printable(&"x".repeat(1 << 20));
        assert!(long.len() < LONGEST_LINE + 40 && long.ends_with("... (1044480 more characters)"), "{}", long.len());
        assert_eq!(printable("web1 | activating the configuration... ü"), "web1 | activating the configuration... ü");
    }
}
