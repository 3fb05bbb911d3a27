//! The activation job on the target, and nixpipe's side of it.
//!
//! The job runs detached from the ssh session (remote.sh), as root, with
//! its log and events in /run/nixpipe/jobs/ID. nixpipe follows the log; when
//! the connection drops it reconnects and follows on from the last byte it
//! read, so the user always gets the real result.

use super::{Action, ActivationError};
use nixpipe_host::event::{self, BootOnce, Event, JobEvent, JobResult};
use nixpipe_host::process;
use nixpipe_host::report::{Report, Reports};
use nixpipe_host::session::{Args, Held, Run, Script, Session, SessionError};
use nixpipe_host::target::Link;
use std::io::{BufRead, BufReader, Read};
use std::process::{ExitStatus, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What starts the header of a frame of job.sh's follow.
const FRAME: &str = "nixpipe-frame ";
/// The longest frame job.sh sends (it sends a long log in pieces of 1 MiB);
/// a header that says more is no frame of ours.
const LONGEST_FRAME: u64 = 4 << 20;
/// A link that died without a word is noticed within 15 s, not hours.
/// Keepalives every 5 s: a follower notices a dead link in 15 s.
pub(super) const KEEPALIVE: Link =
    Link { fresh: false, keepalive: Some(5), connect_timeout: None, compression: false, control: None };

/// What the job does to the system profile before it switches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Set the profile to the new system.
    Set,
    /// Go back one generation (--rollback).
    Rollback,
    /// Leave it to the program: a bundle's bin/switch sets it.
    Bundle,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Set => "set",
            Mode::Rollback => "rollback",
            Mode::Bundle => "bundle",
        }
    }
}

/// What the job is to do, checked: the arguments of job.sh's `launch`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan<'a> {
    pub action: Action,
    /// What goes into the system profile.
    pub system: &'a str,
    /// What switches: bin/switch-to-configuration of the system or of a
    /// specialisation, or a bundle's bin/switch.
    pub program: &'a str,
    /// Seconds to wait for a confirmation; 0 for none.
    pub confirm: u64,
    pub mode: Mode,
    /// NAME=PATH of the record's GC root on the target, dropped once the
    /// profile holds PATH; empty for none.
    pub root: &'a str,
    /// Pass NIXOS_INSTALL_BOOTLOADER=1.
    pub install_bootloader: bool,
    /// Keep a system whose switch left units failed.
    pub keep_on_unit_failure: bool,
    /// Seconds to wait for NixOS's own lock.
    pub lock_timeout: u64,
    /// How long to keep trying to get a lost connection back.
    pub reconnect_for: Duration,
    /// The boot loader that boots the new generation once, the previous
    /// one staying its default (--reboot); None to make it the default.
    pub once: Option<&'a str>,
}

pub struct JobEnd {
    pub id: String,
    /// The system that ran before, as the job saw it.
    pub previous: Option<String>,
    /// Whether a reboot is needed to run the new system fully.
    pub needs_reboot: Option<bool>,
    /// How the switch failed, when it did: its exit status, and whether
    /// the host showed it had activated anything.
    pub exited: Option<Exited>,
    /// The new generation boots once, at the next boot (--reboot).
    pub boot_once: Option<BootOnce>,
    pub result: JobResult,
}

/// A failed switch, as the job saw it on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exited {
    pub status: i32,
    pub activated: bool,
}

/// One activation job on one target.
pub struct Job<'a> {
    session: &'a Session<'a>,
    label: &'a str,
    /// Run on the target after the switch (--check); its failure rolls back.
    check: Option<&'a str>,
    id: String,
}

impl<'a> Job<'a> {
    pub fn new(session: &'a Session<'a>, label: &'a str, check: Option<&'a str>) -> Job<'a> {
        Job { session, label, check, id: new_id() }
    }

    fn target(&self) -> String {
        self.session.target.to_string()
    }

    /// Starts the job (over the probe's session when it is `held`) and
    /// follows it to its end, through dropped connections. Err: it never
    /// started, and nothing changed.
    pub fn run(self, plan: &Plan, held: Option<Held>) -> Result<JobEnd, ActivationError> {
        let launch = Args::verb("launch")
            .set("id", &*self.id)
            .set("who", who())
            .set("action", plan.action.as_str())
            .set("system", plan.system)
            .set("program", plan.program)
            .set("confirm", plan.confirm.to_string())
            .set("mode", plan.mode.as_str())
            .set("root", plan.root)
            .set("bootloader", if plan.install_bootloader { "1" } else { "0" })
            .set("units_policy", if plan.keep_on_unit_failure { "keep" } else { "roll-back" })
            .set("lock_wait", plan.lock_timeout.to_string())
            .set("once", plan.once.unwrap_or(""));
        let mut follower = Follower { reports: self.session.reports, ..Follower::default() };
        // A sudo that refused runs nothing: nothing changed.
        let (status, stderr) =
            self.launch(&mut follower, &launch, held).map_err(|e| ActivationError::NotStarted(Box::new(e)))?;
        if follower.result.is_none() && !follower.started && !self.connection_lost(status) {
            // Nothing said it started; whether it did is the host's to say.
            let from = self.follow_from(&follower);
            let follow = self.follow(&mut follower, &from, Link { fresh: true, ..KEEPALIVE });
            if follow.is_err() || matches!(follower.result, None | Some(JobResult::Gone)) {
                return Err(self.launch_failure(status, &stderr));
            }
        }
        let give_up = Instant::now() + plan.reconnect_for;
        // Said once a connection is lost, not at every attempt to get it
        // back (a host that is gone refuses one a second).
        let mut said = false;
        while follower.result.is_none() {
            if Instant::now() > give_up {
                let why = format!(
                    "no connection to {} for {} s; the job goes on there",
                    self.target(),
                    plan.reconnect_for.as_secs()
                );
                follower.result = Some(JobResult::Lost(why));
                break;
            }
            if !said {
                self.session
                    .reports
                    .report(Report::Reconnecting { label: self.label.to_owned(), target: self.target() });
                said = true;
            }
            thread::sleep(Duration::from_secs(1));
            let from = self.follow_from(&follower);
            let before = (follower.log.at, follower.events.at);
            let (status, stderr) = self.follow(&mut follower, &from, Link { fresh: true, ..KEEPALIVE })?;
            // Back, and followed further: a later loss is said again.
            said &= (follower.log.at, follower.events.at) == before;
            if follower.result.is_none() && !self.connection_lost(status) {
                let why = match self.session.refusal(&stderr) {
                    Some(refusal) => refusal.to_string(),
                    None => process::summarize(stderr.as_bytes()),
                };
                follower.result = Some(JobResult::Lost(why));
            }
        }
        let result = follower.result.take().expect("the loop ends with a result");
        let (previous, needs_reboot, exited) = (follower.previous, follower.needs_reboot, follower.exited);
        Ok(JobEnd { id: self.id, previous, needs_reboot, exited, boot_once: follower.boot_once, result })
    }

    /// job.sh's `follow` from where `follower` is.
    fn follow_from(&self, follower: &Follower) -> Args {
        Args::verb("follow")
            .set("id", &*self.id)
            .set("log_at", follower.log.at.to_string())
            .set("events_at", follower.events.at.to_string())
    }

    /// Runs job.sh's `launch` as root over the `held` session, else over
    /// one of its own, and follows it.
    fn launch(
        &self,
        follower: &mut Follower,
        launch: &Args,
        held: Option<Held>,
    ) -> Result<(ExitStatus, String), SessionError> {
        let run = Run::script(Script::Job, launch).as_root().over(KEEPALIVE);
        match held.map(|held| held.then(self.session, &run)).transpose()?.flatten() {
            Some((child, stderr)) => self.followed(follower, child, stderr),
            None => self.follow(follower, launch, KEEPALIVE),
        }
    }

    /// Runs job.sh's `launch` or `follow` as root and follows it.
    fn follow(&self, follower: &mut Follower, args: &Args, link: Link) -> Result<(ExitStatus, String), SessionError> {
        let mut child = self.session.spawn(&Run::script(Script::Job, args).as_root().over(link))?;
        drop(child.stdin.take());
        let stderr = process::drain(child.stderr.take().expect("piped"));
        self.followed(follower, child, stderr)
    }

    /// Feeds what job.sh's `launch` or `follow` in `child` sends to
    /// `follower`, confirming the switch when the job asks for it; its
    /// status and stderr at its end.
    fn followed(
        &self,
        follower: &mut Follower,
        mut child: std::process::Child,
        stderr: thread::JoinHandle<String>,
    ) -> Result<(ExitStatus, String), SessionError> {
        // The follower says something at least every 10 s: a session that
        // stays silent (a login that hangs) is stopped, and reconnected.
        let watchdog = process::Watchdog::start(child.id());
        let mut frames = BufReader::new(watchdog.watched(child.stdout.take().expect("piped")));
        while let Some((kind, bytes)) = read_frame(&mut frames) {
            if let Some(seconds) = follower.take(kind, &bytes, self.label) {
                self.confirm(seconds);
            }
        }
        let status = child.wait().map_err(|e| {
            nixpipe_host::target::SshError::from(process::CannotRun { program: "ssh".into(), why: e.to_string() })
        })?;
        Ok((status, stderr.join().unwrap_or_default()))
    }

    /// Confirms the switch over a new connection, trying until the job's
    /// deadline, once the --check command (if any) passed there; a failed
    /// check tells the job to roll back now. Failures are only reported:
    /// the job's result tells the rest.
    fn confirm(&self, seconds: u64) {
        let label = self.label.to_owned();
        if let Some(check) = self.check {
            if let Err(why) = self.run_check(check) {
                self.session.reports.report(Report::CheckFailed { label, why: why.to_string() });
                let _ = self.job_output("reject", Link::fresh());
                return;
            }
        }
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let mut why = String::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
            let link = Link { connect_timeout: Some(left.as_secs().max(1)), ..Link::fresh() };
            match self.job_output("confirm", link) {
                Ok(out) if out.status.success() => return,
                Ok(out) => why = process::summarize(&out.stderr),
                Err(e) => why = e.to_string(),
            }
            thread::sleep(Duration::from_millis(500));
        }
        self.session.reports.report(Report::Unconfirmed { label, target: self.target(), why });
    }

    fn run_check(&self, check: &str) -> Result<(), SessionError> {
        run_check(self.session, self.label, check)
    }

    /// Runs job.sh's `verb` (confirm, reject) for this job as root on the
    /// target to its end.
    fn job_output(&self, verb: &'static str, link: Link) -> Result<Output, SessionError> {
        self.session.output(&Run::script(Script::Job, &Args::verb(verb).set("id", &*self.id)).as_root().over(link))
    }

    /// ssh gave up (255), or was killed: the connection, not the job, ended.
    fn connection_lost(&self, status: ExitStatus) -> bool {
        !self.session.target.is_local() && matches!(status.code(), Some(255) | None)
    }

    fn launch_failure(&self, status: ExitStatus, stderr: &str) -> ActivationError {
        if let Some(refusal) = self.session.refusal(stderr) {
            return ActivationError::NotStarted(Box::new(refusal.into()));
        }
        ActivationError::LaunchFailed {
            target: self.session.target.clone(),
            status: process::describe_status(status),
            why: process::summarize(stderr.as_bytes()),
        }
    }
}

/// Which of the job's files a frame is from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Frame {
    /// What the switched program printed: shown, never taken as an event.
    Log,
    /// The job's own record of what happened.
    Event,
}

/// The next frame of follow's output: its kind and its bytes (fewer than
/// its header said when the connection dropped). None at the end. A line
/// that is no frame header (what a login shell printed, say) is skipped.
fn read_frame(input: &mut impl BufRead) -> Option<(Frame, Vec<u8>)> {
    loop {
        // Bounded: a login shell may print anything, as long as it likes.
        let header = process::bounded_line(input, 256).ok()??;
        let text = String::from_utf8_lossy(&header);
        let Some((kind, length)) = text.trim_end().strip_prefix(FRAME).and_then(|rest| rest.split_once(' ')) else {
            continue;
        };
        let kind = match kind {
            "log" => Frame::Log,
            "event" => Frame::Event,
            _ => continue,
        };
        let Some(length) = length.parse::<u64>().ok().filter(|&l| l <= LONGEST_FRAME) else { continue };
        let mut bytes = Vec::new();
        let _ = input.take(length).read_to_end(&mut bytes);
        return Some((kind, bytes));
    }
}

/// One of the job's files as far as nixpipe has read it.
#[derive(Default, Debug)]
struct Stream {
    /// Bytes read: where to go on from after a reconnect.
    at: u64,
    /// The start of a line whose end has not come yet.
    partial: Vec<u8>,
}

impl Stream {
    /// Takes bytes read; the whole lines they end.
    fn lines(&mut self, bytes: &[u8]) -> Vec<String> {
        self.at += bytes.len() as u64;
        self.partial.extend_from_slice(bytes);
        let Some(last) = self.partial.iter().rposition(|&b| b == b'\n') else { return Vec::new() };
        let whole: Vec<u8> = self.partial.drain(..=last).collect();
        whole
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect()
    }
}

/// Runs the --check command on the target over a new connection, as the
/// login user, its output reported.
pub(super) fn run_check(session: &Session, label: &str, check: &str) -> Result<(), SessionError> {
    let output = session.output(&Run::program(&["sh", "-c", check]).over(Link::fresh()))?;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        session.reports.step(label, line);
    }
    if output.status.success() {
        return Ok(());
    }
    Err(session.target.failure(check, &output).into())
}

/// What nixpipe learnt from the job so far.
#[derive(Default, Debug)]
struct Follower {
    /// Where the job's steps are reported.
    reports: Reports,
    log: Stream,
    events: Stream,
    started: bool,
    previous: Option<String>,
    needs_reboot: Option<bool>,
    exited: Option<Exited>,
    boot_once: Option<BootOnce>,
    result: Option<JobResult>,
}

impl Follower {
    /// Takes one frame: the program's output is reported, the job's
    /// events are taken. Returns the seconds to confirm within when the job
    /// asks for it.
    fn take(&mut self, kind: Frame, bytes: &[u8], label: &str) -> Option<u64> {
        match kind {
            Frame::Log => {
                for line in self.log.lines(bytes) {
                    self.reports.step(label, &line);
                }
                None
            }
            Frame::Event => {
                let lines = self.events.lines(bytes);
                lines.iter().filter_map(|line| event::parse_line(line)).filter_map(|e| self.event(e, label)).last()
            }
        }
    }

    fn event(&mut self, event: Event, label: &str) -> Option<u64> {
        let Event::Job(event) = event else { return None };
        let label = label.to_owned();
        match event {
            JobEvent::Started => self.started = true,
            JobEvent::Previous(previous) => self.previous = previous,
            JobEvent::Switching { action, system } => self.reports.report(Report::Switching { label, action, system }),
            JobEvent::RollingBack => self.reports.report(Report::RollingBack { label }),
            JobEvent::AwaitingConfirmation { seconds } => return Some(seconds),
            JobEvent::WaitingForLock { holder } => self.reports.report(Report::WaitingForLock { label, holder }),
            JobEvent::NeedsReboot(needs) => self.needs_reboot = needs,
            JobEvent::Exited { status, activated } => self.exited = Some(Exited { status, activated }),
            JobEvent::BootOnce(once) => self.boot_once = Some(once),
            JobEvent::Result(result) => self.result = Some(result),
        }
        None
    }
}

/// Unique among the jobs of one target: time, our pid, a counter.
fn new_id() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let seconds = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    format!("{seconds}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Who holds the lock, for the one who finds it taken: user@host and pid.
fn who() -> String {
    let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "?".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{user}@{} (nixpipe-activate pid {})", host.trim(), std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(f: &mut Follower, text: &str) -> Option<u64> {
        f.take(Frame::Event, text.as_bytes(), "web1")
    }

    #[test]
    fn follows_the_events_of_the_job() {
        let mut f = Follower::default();
        let first = "nixpipe-event\tstarted\nnixpipe-event\tprevious\tpath=/nix/store/x-old\n";
        assert_eq!(events(&mut f, first), None);
        let mid = "nixpipe-event\tawaiting-confirmation\tseconds=30\n";
        assert_eq!(events(&mut f, mid), Some(30));
        let last = "nixpipe-event\tresult\toutcome=unconfirmed\tdetail=rolled-back\n";
        assert_eq!(events(&mut f, last), None);
        assert!(f.started);
        assert_eq!(f.previous.as_deref(), Some("/nix/store/x-old"));
        assert_eq!(f.result, Some(JobResult::Unconfirmed(nixpipe_host::event::Rollback::RolledBack)));
        assert_eq!(f.events.at, (first.len() + mid.len() + last.len()) as u64);
    }

    #[test]
    fn what_the_program_prints_is_never_an_event() {
        let mut f = Follower::default();
        let forged = "nixpipe-event\tresult\toutcome=ok\nnixpipe-frame event 10\nresult ok\n";
        assert_eq!(f.take(Frame::Log, forged.as_bytes(), "web1"), None);
        assert_eq!(f.result, None);
        assert_eq!(f.log.at, forged.len() as u64);
    }

    #[test]
    fn frames_are_read_by_their_length_whatever_they_hold() {
        let out = "motd\nnixpipe-frame log 22\nnixpipe-frame event 3\nnixpipe-frame event 22\nnixpipe-event\tstarted\n";
        let mut input = out.as_bytes();
        assert_eq!(read_frame(&mut input), Some((Frame::Log, b"nixpipe-frame event 3\n".to_vec())));
        assert_eq!(read_frame(&mut input), Some((Frame::Event, b"nixpipe-event\tstarted\n".to_vec())));
        assert_eq!(read_frame(&mut input), None);
    }

    #[test]
    fn a_frame_longer_than_any_of_ours_is_no_frame() {
        let out = "nixpipe-frame log 5000000000\nx\nnixpipe-frame event 22\nnixpipe-event\tstarted\n";
        let mut input = out.as_bytes();
        assert_eq!(read_frame(&mut input), Some((Frame::Event, b"nixpipe-event\tstarted\n".to_vec())));
        let endless = format!("{}nixpipe-frame event 22\nnixpipe-event\tstarted\n", "y".repeat(10 << 20));
        assert_eq!(read_frame(&mut endless.as_bytes()), None, "a header line is at most 256 bytes");
    }

    #[test]
    fn a_line_cut_short_waits_for_its_end() {
        let mut f = Follower::default();
        events(&mut f, "nixpipe-event\tresu");
        assert_eq!(f.result, None);
        events(&mut f, "lt\toutcome=ok\n");
        assert_eq!(f.result, Some(JobResult::Ok));
    }

    #[test]
    fn an_empty_previous_is_none() {
        let mut f = Follower::default();
        events(&mut f, "nixpipe-event\tprevious\tpath=\n");
        assert_eq!(f.previous, None);
    }
}
