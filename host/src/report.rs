//! The core reports; the edge prints. Core code never writes to a
//! terminal: it sends [`Report`]s to the [`Reporter`] the command hands
//! down as [`Reports`] (nixpipe-cli's, which renders them, owns the
//! progress lines and knows about terminals), as ripgrep's searcher hands
//! its matches to a printer. [`Quiet`] reports nowhere.

use nixpipe_store::closure_diff::ClosureDiff;
use nixpipe_store::nix_log::BuildLog;

/// Something the user should hear of while a command works.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    /// A line of what happens on a host, about the record `label`: what the
    /// switched program printed, the output of --check.
    Step {
        label: String,
        line: String,
    },
    /// Nix's own messages (an evaluation's warnings), passed on as they are.
    NixLog(Vec<u8>),
    /// -s: the target could not substitute these; they are sent.
    NotSubstituted {
        to: String,
        paths: usize,
    },
    /// --compress zstd to a target without zstd, or over the daemon
    /// protocol (`daemon`).
    NoZstd {
        target: String,
        daemon: bool,
    },
    /// --dry-run of a copy.
    WouldCopy {
        path: String,
        bytes: u64,
        to: String,
    },
    /// --dry-run of an activation.
    WouldActivate {
        label: String,
        action: &'static str,
        target: String,
        path: String,
    },
    /// --diff: what changes from `before` to `after`.
    ClosureDiff {
        label: String,
        before: String,
        after: String,
        diff: ClosureDiff,
    },
    /// --diff on a host that runs no system yet.
    NothingToCompare {
        label: String,
        target: String,
    },
    /// --diff could not read both closures.
    CannotCompare {
        label: String,
        before: String,
        after: String,
        why: String,
    },
    /// The activation job's steps.
    Switching {
        label: String,
        action: String,
        system: String,
    },
    RollingBack {
        label: String,
    },
    Reconnecting {
        label: String,
        target: String,
    },
    /// --check failed after the switch: the host rolls back.
    CheckFailed {
        label: String,
        why: String,
    },
    /// No new connection could confirm the switch.
    Unconfirmed {
        label: String,
        target: String,
        why: String,
    },
    /// nixpipe-microvm install restarted a VM.
    Restarted {
        label: String,
    },
    /// --if-inhibited boot: the switch its inhibitors forbid became a boot.
    BootingInstead {
        label: String,
        keys: Vec<String>,
    },
    /// After a switch: the booted kernel, initrd or modules are not the new
    /// system's.
    NeedsReboot {
        label: String,
        target: String,
    },
    /// The switch said the init interface changed (exit 100): the new
    /// system is the boot default, nothing was activated.
    InitChanged {
        label: String,
        target: String,
    },
    /// --reboot: the host reboots into the new generation once; its boot
    /// default stays the previous generation.
    BootingOnce {
        label: String,
        target: String,
        generation: u64,
        entry: String,
        previous: u64,
    },
    /// The generation booted once came back and is the default now.
    BootOnceKept {
        label: String,
        target: String,
        generation: u64,
    },
    /// The generation booted once did not hold (why); the host's next
    /// boot is the previous generation: rebooted into it now, or waited
    /// for up to `wait` seconds.
    BootOnceLeft {
        label: String,
        target: String,
        generation: u64,
        why: String,
        previous: u64,
        rebooting: bool,
        wait: u64,
    },
    /// The job waits for NixOS's own lock.
    WaitingForLock {
        label: String,
        holder: String,
    },
}

/// A live view of Nix's builds (what nix-output-monitor shows), for the
/// person at a terminal; the reporter gives one only there.
pub trait BuildDisplay {
    /// Shows the state Nix's log has come to.
    fn update(&self, log: &BuildLog);
    /// A line to show above the status: Nix's errors and warnings, and
    /// anything on its stderr that is not its JSON log.
    fn println(&self, line: &str);
    /// Clears the status and says what the build came to, failures with
    /// the last lines of their logs.
    fn finish(&self, log: &BuildLog);
}

/// A byte bar for one copy.
pub trait CopyProgress: Sync {
    fn sent(&self, bytes: u64);
    /// Called as the target confirms each path: `done` of them so far.
    fn path_done(&self, done: u64);
}

/// What renders reports: one per command, installed by its `main`.
pub trait Reporter: Sync + Send {
    fn report(&self, report: Report);
    /// A bar for a copy of `paths` paths, `bytes` bytes, to `label`; gone
    /// when dropped.
    fn copy_progress(&self, label: &str, paths: u64, bytes: u64) -> Box<dyn CopyProgress + '_>;
    /// A line that shows what `label` is doing while the guard lives.
    fn host_line(&self, label: &str, step: &str) -> Box<dyn Send + '_>;
    /// Runs `f` with the terminal free of progress lines (a prompt).
    fn paused(&self, f: &mut dyn FnMut());
    /// A live view of a build, where someone watches one (a terminal);
    /// None: Nix's own lines go to stderr as they are.
    fn build_display(&self) -> Option<Box<dyn BuildDisplay + '_>> {
        None
    }
}

/// Reports nowhere: unit tests, and runs nobody watches.
pub struct Quiet;

struct Silent;

impl CopyProgress for Silent {
    fn sent(&self, _: u64) {}
    fn path_done(&self, _: u64) {}
}

impl Reporter for Quiet {
    fn report(&self, _: Report) {}

    fn copy_progress(&self, _: &str, _: u64, _: u64) -> Box<dyn CopyProgress + '_> {
        Box::new(Silent)
    }

    fn host_line(&self, _: &str, _: &str) -> Box<dyn Send + '_> {
        Box::new(())
    }

    fn paused(&self, f: &mut dyn FnMut()) {
        f()
    }
}

/// The command's reporter, handed down to everything that reports (a
/// session carries it, a copy's options do): never a global, so that a
/// test hands down one that keeps what it is told.
#[derive(Clone, Copy)]
pub struct Reports(&'static dyn Reporter);

impl Default for Reports {
    /// Reports nowhere.
    fn default() -> Reports {
        Reports(&Quiet)
    }
}

impl std::fmt::Debug for Reports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reports")
    }
}

impl Reports {
    pub fn to(reporter: &'static dyn Reporter) -> Reports {
        Reports(reporter)
    }

    pub fn report(self, report: Report) {
        self.0.report(report);
    }

    /// A step of `label`'s work.
    pub fn step(self, label: &str, line: &str) {
        self.report(Report::Step { label: label.to_owned(), line: line.to_owned() });
    }

    /// The reporter's bar for a copy.
    pub fn copy_progress(self, label: &str, paths: u64, bytes: u64) -> Box<dyn CopyProgress> {
        self.0.copy_progress(label, paths, bytes)
    }

    /// The reporter's line for a host at work, while the guard lives.
    pub fn host_line(self, label: &str, step: &str) -> Box<dyn Send> {
        self.0.host_line(label, step)
    }

    /// The reporter's live view of a build, if it shows one.
    pub fn build_display(self) -> Option<Box<dyn BuildDisplay>> {
        self.0.build_display()
    }

    /// Runs `f` (a prompt on the terminal) with the reporter's progress
    /// lines out of the way.
    pub(crate) fn while_paused<T>(self, f: impl FnOnce() -> T) -> T {
        let (mut f, mut out) = (Some(f), None);
        self.0.paused(&mut || out = f.take().map(|f| f()));
        out.expect("paused runs it")
    }
}
