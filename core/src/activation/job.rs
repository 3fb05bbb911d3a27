//! The activation job on the target, and nixpipe's side of it.
//!
//! The job runs detached from the ssh session (remote.sh), as root, with
//! its log and events in /run/nixpipe/jobs/ID. nixpipe follows the log; when
//! the connection drops it reconnects and follows on from the last byte it
//! read, so the user always gets the real result.

use crate::cli::show;
use crate::privilege::Privilege;
use crate::process;
use crate::target::Target;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ExitStatus, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const REMOTE: &str = include_str!("remote.sh");
/// Runs REMOTE, given as $1, so that it can keep a copy of itself.
const BOOTSTRAP: &str = r#"self=$1; shift; eval "$self""#;
/// What starts the header of a frame of remote.sh's follow.
const FRAME: &str = "nixpipe-frame ";
/// How long nixpipe keeps trying to get a dropped connection back.
const RECONNECT_FOR: Duration = Duration::from_secs(300);
/// A connection of its own for every try: never a shared ControlMaster, which
/// would prove nothing about whether the new system lets anyone in.
const NEW_CONNECTION: [&str; 4] = ["-o", "ControlMaster=no", "-o", "ControlPath=none"];
/// A link that died without a word is noticed within 15 s, not hours.
const KEEPALIVE: [&str; 4] = ["-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"];

/// What the job is to do; the arguments of remote.sh's `launch`.
pub struct Args<'a> {
    pub action: &'a str,
    /// What goes into the system profile.
    pub system: &'a str,
    /// What switches: bin/switch-to-configuration of the system or of a
    /// specialisation, or a bundle's bin/switch.
    pub program: &'a str,
    /// Seconds to wait for a confirmation; 0 for none.
    pub confirm: u64,
    /// `set` the profile to `system`, `rollback` one generation, or leave it
    /// to the program (`bundle`).
    pub mode: &'a str,
}

/// How the job ended, as it said in its `result` event.
#[derive(Debug, PartialEq, Eq)]
pub enum JobResult {
    Ok,
    /// switch-to-configuration failed; what the rollback did (or `profile`).
    Failed(String),
    /// Nobody confirmed in time; what the rollback did.
    Unconfirmed(String),
    /// The --check command failed after the switch; what the rollback did.
    Rejected(String),
    /// Another activation holds the lock: who.
    Locked(String),
    /// The job cannot be followed any more: why.
    Lost(String),
}

pub struct JobEnd {
    pub id: String,
    /// The system that ran before, as the job saw it.
    pub previous: Option<String>,
    pub result: JobResult,
}

/// One activation job on one target.
pub struct Job<'a> {
    target: &'a Target,
    privilege: &'a Privilege,
    /// The login's uid on the target: "0" needs no sudo.
    uid: &'a str,
    label: &'a str,
    /// Run on the target after the switch (--check); its failure rolls back.
    check: Option<&'a str>,
    id: String,
}

impl<'a> Job<'a> {
    pub fn new(
        target: &'a Target,
        privilege: &'a Privilege,
        uid: &'a str,
        label: &'a str,
        check: Option<&'a str>,
    ) -> Job<'a> {
        Job { target, privilege, uid, label, check, id: new_id() }
    }

    /// Starts the job and follows it to its end, through dropped connections.
    /// Err: it never started, and nothing changed.
    pub fn run(self, args: &Args) -> Result<JobEnd, String> {
        let confirm = args.confirm.to_string();
        let who = who();
        let launch = [&*self.id, &who, args.action, args.system, args.program, &confirm, args.mode];
        let mut follower = Follower::default();
        // A sudo that refused runs nothing: nothing changed.
        let (status, stderr) =
            self.follow(&mut follower, "launch", &launch, &KEEPALIVE).map_err(|e| format!("{e}; nothing changed"))?;
        if follower.result.is_none() && !follower.started && !self.connection_lost(status) {
            return Err(self.launch_failure(status, &stderr));
        }
        let give_up = Instant::now() + RECONNECT_FOR;
        while follower.result.is_none() {
            if Instant::now() > give_up {
                let why = format!(
                    "no connection to {} for {} s; the job goes on there",
                    self.target,
                    RECONNECT_FOR.as_secs()
                );
                follower.result = Some(JobResult::Lost(why));
                break;
            }
            show(self.label, &format!("lost the connection to {}; reconnecting", self.target));
            thread::sleep(Duration::from_secs(1));
            let (log_at, events_at) = (follower.log.at.to_string(), follower.events.at.to_string());
            let options = [&NEW_CONNECTION[..], &KEEPALIVE[..]].concat();
            let (status, stderr) = self.follow(&mut follower, "follow", &[&*self.id, &log_at, &events_at], &options)?;
            if follower.result.is_none() && !self.connection_lost(status) {
                let why = self
                    .privilege
                    .explain_refusal(self.target, &stderr)
                    .unwrap_or(process::summarize(stderr.as_bytes()));
                follower.result = Some(JobResult::Lost(why));
            }
        }
        let result = follower.result.take().expect("the loop ends with a result");
        Ok(JobEnd { id: self.id, previous: follower.previous, result })
    }

    /// Runs one remote.sh COMMAND as root and feeds its output to `follower`,
    /// confirming the switch when the job asks for it.
    fn follow(
        &self,
        follower: &mut Follower,
        command: &str,
        args: &[&str],
        ssh_options: &[&str],
    ) -> Result<(ExitStatus, String), String> {
        let mut child = self.remote(command, args, ssh_options)?;
        let stderr = drain(child.stderr.take().expect("piped"));
        let mut frames = BufReader::new(child.stdout.take().expect("piped"));
        while let Some((kind, bytes)) = read_frame(&mut frames) {
            if let Some(seconds) = follower.take(kind, &bytes, self.label) {
                self.confirm(seconds);
            }
        }
        let status = child.wait().map_err(|e| format!("cannot wait for ssh: {e}"))?;
        Ok((status, stderr.join().unwrap_or_default()))
    }

    /// Confirms the switch over a new connection, trying until the job's
    /// deadline, once the --check command (if any) passed there; a failed
    /// check tells the job to roll back now. Failures are only noted: the
    /// job's result tells the rest.
    fn confirm(&self, seconds: u64) {
        if let Some(check) = self.check {
            if let Err(why) = self.run_check(check) {
                show(self.label, &format!("the check failed: {why}"));
                let _ = self.remote_output("reject", &[&self.id], &NEW_CONNECTION);
                return;
            }
        }
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let mut why = String::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
            let timeout = format!("ConnectTimeout={}", left.as_secs().max(1));
            let options = [&NEW_CONNECTION[..], &["-o", &timeout]].concat();
            let output = self.remote_output("confirm", &[&self.id], &options);
            match output {
                Ok(out) if out.status.success() => return,
                Ok(out) => why = process::summarize(&out.stderr),
                Err(e) => why = e,
            }
            thread::sleep(Duration::from_millis(500));
        }
        show(self.label, &format!("no new connection to {} could confirm the switch: {why}", self.target));
    }

    /// Runs the --check command on the target over a new connection, as
    /// the login user, its output shown.
    fn run_check(&self, check: &str) -> Result<(), String> {
        let output = process::capture(&mut self.target.command_with(&["sh", "-c", check], &NEW_CONNECTION)?)?;
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            show(self.label, line);
        }
        if output.status.success() {
            return Ok(());
        }
        Err(self.target.failure(check, &output))
    }

    /// Starts remote.sh COMMAND ARGS as root on the target.
    fn remote(&self, command: &str, args: &[&str], ssh_options: &[&str]) -> Result<Child, String> {
        self.privilege.spawn(self.target, self.uid, &Self::remote_argv(command, args), ssh_options)
    }

    /// Runs remote.sh COMMAND ARGS as root on the target to its end.
    fn remote_output(&self, command: &str, args: &[&str], ssh_options: &[&str]) -> Result<Output, String> {
        self.privilege.output(self.target, self.uid, &Self::remote_argv(command, args), ssh_options, &[])
    }

    fn remote_argv<'s>(command: &'s str, args: &[&'s str]) -> Vec<&'s str> {
        ["sh", "-c", BOOTSTRAP, "nixpipe", REMOTE, command].into_iter().chain(args.iter().copied()).collect()
    }

    /// ssh gave up (255), or was killed: the connection, not the job, ended.
    fn connection_lost(&self, status: ExitStatus) -> bool {
        !self.target.is_local() && matches!(status.code(), Some(255) | None)
    }

    fn launch_failure(&self, status: ExitStatus, stderr: &str) -> String {
        if let Some(why) = self.privilege.explain_refusal(self.target, stderr) {
            return format!("{why}; nothing changed");
        }
        format!(
            "could not start the activation on {} ({}): {}; nothing changed",
            self.target,
            process::describe_status(status),
            process::summarize(stderr.as_bytes())
        )
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
    let mut header = Vec::new();
    loop {
        header.clear();
        if input.read_until(b'\n', &mut header).ok()? == 0 {
            return None;
        }
        let text = String::from_utf8_lossy(&header);
        let Some((kind, length)) = text.trim_end().strip_prefix(FRAME).and_then(|rest| rest.split_once(' ')) else {
            continue;
        };
        let kind = match kind {
            "log" => Frame::Log,
            "event" => Frame::Event,
            _ => continue,
        };
        let Ok(length) = length.parse::<u64>() else { continue };
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

/// What nixpipe learnt from the job so far.
#[derive(Default, Debug)]
struct Follower {
    log: Stream,
    events: Stream,
    started: bool,
    previous: Option<String>,
    result: Option<JobResult>,
}

impl Follower {
    /// Takes one frame: the program's output is shown to the user, the
    /// job's events are taken. Returns the seconds to confirm within when
    /// the job asks for it.
    fn take(&mut self, kind: Frame, bytes: &[u8], label: &str) -> Option<u64> {
        match kind {
            Frame::Log => {
                for line in self.log.lines(bytes) {
                    show(label, &line);
                }
                None
            }
            Frame::Event => self.events.lines(bytes).iter().filter_map(|event| self.event(event, label)).last(),
        }
    }

    fn event(&mut self, event: &str, label: &str) -> Option<u64> {
        let (kind, rest) = event.split_once(' ').unwrap_or((event, ""));
        match kind {
            "started" => self.started = true,
            "previous" => self.previous = Some(rest.to_owned()).filter(|p| !p.is_empty()),
            "switching" => show(label, &format!("switch-to-configuration {rest}")),
            "rolling-back" => show(label, "rolling back"),
            "awaiting-confirmation" => return rest.parse().ok(),
            "result" => self.result = Some(parse_result(rest)),
            _ => {}
        }
        None
    }
}

fn parse_result(text: &str) -> JobResult {
    let (kind, rest) = text.split_once(' ').unwrap_or((text, ""));
    let rest = rest.to_owned();
    match kind {
        "ok" => JobResult::Ok,
        "failed" => JobResult::Failed(rest),
        "unconfirmed" => JobResult::Unconfirmed(rest),
        "rejected" => JobResult::Rejected(rest),
        "locked" => JobResult::Locked(rest),
        "gone" => JobResult::Lost("the job is gone from the target (did it reboot?)".into()),
        "vanished" => JobResult::Lost("the job died without a result".into()),
        other => JobResult::Lost(format!("the job ended with an unknown result '{other}'")),
    }
}

/// Reads a pipe to its end on a thread of its own, so that neither pipe of a
/// child can fill up and stall it.
fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
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
        assert_eq!(events(&mut f, "started\nprevious /nix/store/x-old\n"), None);
        assert_eq!(events(&mut f, "awaiting-confirmation 30\n"), Some(30));
        assert_eq!(events(&mut f, "result unconfirmed rolled-back\n"), None);
        assert!(f.started);
        assert_eq!(f.previous.as_deref(), Some("/nix/store/x-old"));
        assert_eq!(f.result, Some(JobResult::Unconfirmed("rolled-back".into())));
        assert_eq!(f.events.at, 90);
    }

    #[test]
    fn what_the_program_prints_is_never_an_event() {
        let mut f = Follower::default();
        let forged = "nixpipe-job: awaiting-confirmation 1\nresult ok\nnixpipe-frame event 10\nresult ok\n";
        assert_eq!(f.take(Frame::Log, forged.as_bytes(), "web1"), None);
        assert_eq!(f.result, None);
        assert_eq!(f.log.at, forged.len() as u64);
    }

    #[test]
    fn frames_are_read_by_their_length_whatever_they_hold() {
        let out = "motd\nnixpipe-frame log 22\nnixpipe-frame event 3\nnixpipe-frame event 8\nstarted\n";
        let mut input = out.as_bytes();
        assert_eq!(read_frame(&mut input), Some((Frame::Log, b"nixpipe-frame event 3\n".to_vec())));
        assert_eq!(read_frame(&mut input), Some((Frame::Event, b"started\n".to_vec())));
        assert_eq!(read_frame(&mut input), None);
    }

    #[test]
    fn a_line_cut_short_waits_for_its_end() {
        let mut f = Follower::default();
        events(&mut f, "resu");
        assert_eq!(f.result, None);
        events(&mut f, "lt ok\n");
        assert_eq!(f.result, Some(JobResult::Ok));
    }

    #[test]
    fn an_empty_previous_is_none() {
        let mut f = Follower::default();
        events(&mut f, "previous \n");
        assert_eq!(f.previous, None);
    }

    #[test]
    fn parses_every_result() {
        assert_eq!(parse_result("ok"), JobResult::Ok);
        assert_eq!(parse_result("failed rollback-failed"), JobResult::Failed("rollback-failed".into()));
        assert_eq!(parse_result("locked alice@laptop since x"), JobResult::Locked("alice@laptop since x".into()));
        assert!(matches!(parse_result("gone"), JobResult::Lost(_)));
    }
}
