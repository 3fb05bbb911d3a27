//! Progress for the person at the terminal: shown on stderr when it is a
//! terminal, and nowhere else (never in a pipe, a log or CI).
//!
//! All lines share one [`MultiProgress`]: a line per host at work (its
//! latest step) and a bar per copy, kept at the bottom while the log lines
//! of every host scroll above them, as cargo shows its builds.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use nixpipe_store::nix_log::{BuildLog, Running};
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

/// A build as nix-output-monitor shows one: a status line (builds done,
/// running, waiting; substitutions; bytes fetched; time) and a line per
/// running build (its name, where it builds, its time, its latest log
/// line), kept at the bottom while Nix's errors scroll above; at the end
/// one summary line, and each failed build with its last lines.
pub struct BuildStatus {
    status: ProgressBar,
    builds: Mutex<HashMap<u64, ProgressBar>>,
}

impl BuildStatus {
    /// Where the person at the terminal watches (stderr is one, and TERM
    /// is not `dumb`); else none.
    pub fn on_a_terminal() -> Option<BuildStatus> {
        let dumb = std::env::var("TERM").map_or(true, |term| term == "dumb" || term.is_empty());
        if !std::io::stderr().is_terminal() || dumb {
            return None;
        }
        let status = bars().add(ProgressBar::new_spinner());
        status.set_style(ProgressStyle::with_template("[{spinner}] {elapsed} {wide_msg}").expect("a valid template"));
        status.set_message("starting Nix");
        status.enable_steady_tick(Duration::from_millis(120));
        Some(BuildStatus { status, builds: Mutex::new(HashMap::new()) })
    }

    fn build_line(build: &Running) -> ProgressBar {
        let bar = bars().add(ProgressBar::new_spinner());
        bar.set_style(ProgressStyle::with_template("  {prefix} {elapsed} {wide_msg}").expect("a valid template"));
        let machine = if build.machine.is_empty() { String::new() } else { format!(" on {}", build.machine) };
        bar.set_prefix(printable(&format!("{}{machine}", build.name)));
        bar.enable_steady_tick(Duration::from_millis(500));
        bar
    }
}

/// Builds done, running, waiting; substituted; fetched.
fn status_line(log: &BuildLog) -> String {
    let [done, expected, running, failed] = log.builds;
    let waiting = expected.saturating_sub(done + running + failed);
    let mut line = format!("built {done}/{expected}, {running} running, {waiting} waiting");
    if failed > 0 {
        line += &format!(", {failed} failed");
    }
    let [substituted, to_substitute] = log.substituted;
    if to_substitute > 0 {
        line += &format!(", substituted {substituted}/{to_substitute}");
    }
    if log.fetched() > 0 {
        line += &format!(", fetched {}", indicatif::HumanBytes(log.fetched()));
    }
    line
}

impl nixpipe_host::report::BuildDisplay for BuildStatus {
    fn update(&self, log: &BuildLog) {
        self.status.set_message(status_line(log));
        let mut builds = self.builds.lock().unwrap_or_else(|p| p.into_inner());
        builds.retain(|id, bar| {
            let runs = log.running.contains_key(id);
            if !runs {
                bar.finish_and_clear();
                bars().remove(bar);
            }
            runs
        });
        for (id, build) in &log.running {
            let bar = builds.entry(*id).or_insert_with(|| BuildStatus::build_line(build));
            bar.set_message(printable(&build.last_line));
        }
    }

    fn println(&self, line: &str) {
        println(line);
    }

    fn finish(&self, log: &BuildLog) {
        for (_, bar) in self.builds.lock().unwrap_or_else(|p| p.into_inner()).drain() {
            bar.finish_and_clear();
            bars().remove(&bar);
        }
        self.status.finish_and_clear();
        bars().remove(&self.status);
        let [done, _, _, failed] = log.builds;
        let mut summary = format!("{}: built {done}", crate::program());
        if failed > 0 {
            summary += &format!(", {failed} failed");
        }
        summary += &format!(", substituted {}", log.substituted[0]);
        summary +=
            &format!(", fetched {} in {:.1} s", indicatif::HumanBytes(log.fetched()), log.elapsed().as_secs_f64());
        println(&summary);
        for failure in &log.failed {
            println(&format!("{}: the build of {} failed; its last lines:", crate::program(), failure.drv));
            for line in &failure.last_lines {
                println(&format!("  | {line}"));
            }
            println(&format!("{}: its whole log: nix log {}", crate::program(), failure.drv));
        }
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
