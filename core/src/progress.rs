//! Progress for the person at the terminal: shown on stderr when it is a
//! terminal, and nowhere else (never in a pipe, a log or CI).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

/// Bytes and paths moved towards one target.
pub struct Progress {
    bar: ProgressBar,
    paths: u64,
}

impl Progress {
    pub fn new(label: &str, paths: u64, bytes: u64) -> Progress {
        let bar = if std::io::stderr().is_terminal() {
            ProgressBar::with_draw_target(Some(bytes), ProgressDrawTarget::stderr())
        } else {
            ProgressBar::hidden()
        };
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

    pub fn sent(&self, bytes: u64) {
        self.bar.inc(bytes);
    }

    /// Called as the target confirms each path.
    pub fn path_done(&self, done: u64) {
        self.bar.set_message(format!("{done}/{} paths", self.paths));
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
