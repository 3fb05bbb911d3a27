//! Running programs: capturing what they say and turning a failure into one
//! readable line.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A program that could not be started (or waited for).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot run {program}: {why}")]
pub struct CannotRun {
    pub program: String,
    pub why: String,
}

impl CannotRun {
    pub fn of(cmd: &Command, e: io::Error) -> CannotRun {
        CannotRun { program: program_name(cmd), why: e.to_string() }
    }
}

/// What the user sees of a failing program's stderr: Nix's `error:` line if
/// there is one, else the last line; control characters dropped, bounded.
pub fn summarize(stderr: &[u8]) -> String {
    const MAX: usize = 400;
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let line = lines.iter().find(|l| l.starts_with("error:")).or(lines.last()).copied().unwrap_or("");
    let clean: String = line.chars().filter(|c| !c.is_control()).take(MAX).collect();
    clean
}

/// "exit 3", or the signal that killed it.
pub fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        (None, None) => "unknown status".to_owned(),
    }
}

fn program_name(cmd: &Command) -> String {
    cmd.get_program().to_string_lossy().into_owned()
}

/// How long a host or peer may go without a byte either way before its
/// program is stopped: far longer than any answer takes, so that only a
/// host that hangs (a login that never runs the command, a daemon that
/// never answers, a frozen link) meets it. `--timeout` sets it.
static SILENCE_LIMIT: AtomicU64 = AtomicU64::new(DEFAULT_SILENCE_LIMIT);
pub const DEFAULT_SILENCE_LIMIT: u64 = 120;

/// Sets how many seconds of silence a host's program is given (see
/// [`Watchdog`]), for the whole run.
pub fn set_silence_limit(seconds: u64) {
    SILENCE_LIMIT.store(seconds.max(1), Ordering::Relaxed);
}

pub(crate) fn silence_limit() -> u64 {
    SILENCE_LIMIT.load(Ordering::Relaxed)
}

/// When a watched program last moved a byte, in milliseconds since the
/// watch began.
#[derive(Clone)]
pub struct Activity {
    since: Instant,
    last: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Activity {
        Activity { since: Instant::now(), last: Arc::new(AtomicU64::new(0)) }
    }

    fn tick(&self) {
        self.last.store(self.since.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn quiet_for(&self) -> Duration {
        Duration::from_millis(self.since.elapsed().as_millis() as u64 - self.last.load(Ordering::Relaxed))
    }
}

/// Kills a program when no byte went to or came from it for the run's
/// silence limit, so that a hung host or peer ends, named, instead of
/// holding the command (and every host after it) for ever. Stopped when
/// dropped.
pub struct Watchdog {
    activity: Activity,
    stop: Arc<AtomicBool>,
    fired: Arc<AtomicBool>,
    limit: u64,
}

impl Watchdog {
    /// Watches the process `pid`.
    pub fn start(pid: u32) -> Watchdog {
        let (activity, stop, fired) =
            (Activity::new(), Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let limit = silence_limit();
        let (watched, stopped, fire) = (activity.clone(), stop.clone(), fired.clone());
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                if watched.quiet_for() >= Duration::from_secs(limit) {
                    fire.store(true, Ordering::Relaxed);
                    // SAFETY: kill(2) with a pid we started; at worst the
                    // process is already gone (ESRCH).
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                    return;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        Watchdog { activity, stop, fired, limit }
    }

    /// `inner` with every byte through it counted as a sign of life.
    pub fn watched<T>(&self, inner: T) -> Watched<T> {
        Watched { inner, activity: self.activity.clone(), fired: self.fired.clone(), limit: self.limit }
    }

    /// Seconds of silence it waited before it stopped the program, if it did.
    pub(crate) fn fired(&self) -> Option<u64> {
        self.fired.load(Ordering::Relaxed).then_some(self.limit)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Reads all of `pipe` on a thread of its own, so that neither pipe of a
/// child can fill up and stall it; what it said, as text.
pub fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// A pipe to or from a watched program. Once its watchdog fired, reading
/// and writing fail with [`Silent`] rather than wait on: the program is
/// dead, but another may hold the pipe's other end still (ssh's shared
/// connection holds a session's pipes until the remote command ends).
pub struct Watched<T> {
    inner: T,
    activity: Activity,
    fired: Arc<AtomicBool>,
    limit: u64,
}

impl<T> Watched<T> {
    /// The pipe itself, no longer watched.
    pub fn into_inner(self) -> T {
        self.inner
    }
}

impl<T: std::os::fd::AsRawFd> Watched<T> {
    /// Waits until the pipe is ready for `events`; Err once the watchdog
    /// fired.
    fn ready(&self, events: libc::c_short) -> io::Result<()> {
        let mut poll = libc::pollfd { fd: self.inner.as_raw_fd(), events, revents: 0 };
        loop {
            if self.fired.load(Ordering::Relaxed) {
                return Err(Silent(self.limit).error());
            }
            // SAFETY: one pollfd, ours, for the call's length.
            if unsafe { libc::poll(&mut poll, 1, 250) } != 0 {
                return Ok(());
            }
        }
    }
}

impl<T: Read + std::os::fd::AsRawFd> Read for Watched<T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.ready(libc::POLLIN)?;
        let n = self.inner.read(buf)?;
        self.activity.tick();
        Ok(n)
    }
}

impl<T: Write + std::os::fd::AsRawFd> Write for Watched<T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.ready(libc::POLLOUT)?;
        let n = self.inner.write(buf)?;
        self.activity.tick();
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<T: std::os::fd::AsRawFd> std::os::fd::AsRawFd for Watched<T> {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.inner.as_raw_fd()
    }
}

/// How much of a host program's stderr is kept, at its start and at its
/// end: every error message there is, and no more memory than that however
/// much a host prints.
const KEPT_STDERR: usize = 32 << 10;
/// The longest stdout line kept; longer ones (no answer of ours is) are
/// read and dropped.
pub(crate) const LONGEST_KEPT_LINE: usize = 16 << 20;

/// Waits for `child`, keeping of its stdout only the lines `keep` takes
/// (each at most [`LONGEST_KEPT_LINE`]) and of its stderr the first and
/// last [`KEPT_STDERR`] bytes: what a host prints before or around its
/// answer costs no memory.
///
/// A program silent for the run's silence limit is stopped ([`Watchdog`]):
/// [`Silent`] says so.
pub(crate) fn wait_keeping(mut child: Child, keep: fn(&[u8]) -> bool) -> io::Result<Output> {
    let watchdog = Watchdog::start(child.id());
    let stderr = child.stderr.take().map(|e| {
        let e = watchdog.watched(e);
        std::thread::spawn(move || head_and_tail(e, KEPT_STDERR))
    });
    let mut kept = Vec::new();
    let read: io::Result<()> = child.stdout.take().map_or(Ok(()), |stdout| {
        let mut reader = BufReader::new(watchdog.watched(stdout));
        while let Some(line) = bounded_line(&mut reader, LONGEST_KEPT_LINE)? {
            if keep(&line) {
                kept.extend_from_slice(&line);
            }
        }
        Ok(())
    });
    // Waited for whatever the reading came to: no program is left unreaped.
    let status = child.wait()?;
    let stderr = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
    if let Some(seconds) = watchdog.fired() {
        return Err(Silent(seconds).error());
    }
    read?;
    Ok(Output { status, stdout: kept, stderr })
}

/// A program stopped for saying nothing for this many seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no answer for {0} s (--timeout): stopped it")]
pub struct Silent(pub u64);

impl Silent {
    /// The I/O error of a program its watchdog stopped, wherever that is
    /// noticed (its end, or a read or write on its pipes).
    pub(crate) fn error(self) -> io::Error {
        io::Error::new(io::ErrorKind::TimedOut, self)
    }
}

/// The next line of `reader` with its newline; a line longer than `max` is
/// read to its end and given as empty. None at the end.
pub fn bounded_line(reader: &mut impl BufRead, max: usize) -> io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let n = reader.by_ref().take(max as u64 + 1).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') && line.len() > max {
        // Too long: the rest of it goes by unkept.
        loop {
            let buf = reader.fill_buf()?;
            if buf.is_empty() {
                break;
            }
            match buf.iter().position(|&b| b == b'\n') {
                Some(at) => {
                    reader.consume(at + 1);
                    break;
                }
                None => {
                    let len = buf.len();
                    reader.consume(len);
                }
            }
        }
        line.clear();
    }
    Ok(Some(line))
}

/// All of `input` read, its first and last `keep` bytes kept (joined by a
/// line that says how much went between).
fn head_and_tail(mut input: impl Read, keep: usize) -> Vec<u8> {
    let (mut head, mut tail): (Vec<u8>, std::collections::VecDeque<u8>) = (Vec::new(), Default::default());
    let mut skipped = 0u64;
    let mut buf = [0u8; 8192];
    while let Ok(n) = input.read(&mut buf) {
        if n == 0 {
            break;
        }
        let mut bytes = &buf[..n];
        let to_head = bytes.len().min(keep - head.len());
        head.extend_from_slice(&bytes[..to_head]);
        bytes = &bytes[to_head..];
        tail.extend(bytes);
        let excess = tail.len().saturating_sub(keep);
        tail.drain(..excess);
        skipped += excess as u64;
    }
    if skipped > 0 {
        head.extend_from_slice(format!("\n[{skipped} bytes not kept]\n").as_bytes());
    }
    head.extend(tail);
    head
}

/// Runs `cmd` to the end with stdout and stderr captured.
pub fn capture(cmd: &mut Command) -> Result<Output, CannotRun> {
    cmd.output().map_err(|e| CannotRun::of(cmd, e))
}

/// Runs `cmd` with stdout captured and stderr passed through to ours, for
/// programs whose log the user should watch as it comes (nix-build).
pub fn capture_stdout(cmd: &mut Command) -> Result<Output, CannotRun> {
    cmd.stderr(Stdio::inherit());
    capture(cmd)
}

/// The one line for a program that ran and failed.
pub fn failure(cmd: &Command, output: &Output) -> String {
    let summary = summarize(&output.stderr);
    let status = describe_status(output.status);
    if summary.is_empty() {
        format!("{} failed ({status})", program_name(cmd))
    } else {
        format!("{} failed ({status}): {summary}", program_name(cmd))
    }
}

/// `$XDG_RUNTIME_DIR/NAME`, else `/tmp/NAME-UID`: made private (0700) if it
/// is not there, and given only if it is a directory of this user's that
/// nobody else can enter (what goes there, ssh sockets or VMs' consoles,
/// is this user's alone).
pub fn private_runtime_dir(name: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let uid = unsafe { libc::getuid() };
    let dir = match std::env::var_os("XDG_RUNTIME_DIR").map(std::path::PathBuf::from) {
        Some(runtime) if runtime.is_absolute() => runtime.join(name),
        _ => std::path::PathBuf::from(format!("/tmp/{name}-{uid}")),
    };
    let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
    let meta = std::fs::symlink_metadata(&dir).ok()?;
    (meta.is_dir() && meta.uid() == uid && meta.mode() & 0o077 == 0).then_some(dir)
}

/// An exclusive lock on a file (flock), held until dropped; other
/// processes taking it wait. Without the file (a directory we cannot
/// write), no lock: the caller goes on as if alone.
pub struct FileLock {
    /// Held for its lock, released when it is closed.
    _file: Option<std::fs::File>,
}

impl FileLock {
    pub fn exclusive(path: &std::path::Path) -> FileLock {
        use std::os::unix::io::AsRawFd;
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path).ok();
        FileLock { _file: file.filter(|f| unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_lock_is_taken_by_one_holder_at_a_time() {
        let path = std::env::temp_dir().join(format!("nixpipe-lock-test-{}", std::process::id()));
        let first = FileLock::exclusive(&path);
        let waited = std::thread::spawn({
            let path = path.clone();
            move || {
                let started = std::time::Instant::now();
                let _second = FileLock::exclusive(&path);
                started.elapsed()
            }
        });
        std::thread::sleep(std::time::Duration::from_millis(200));
        drop(first);
        assert!(waited.join().unwrap() >= std::time::Duration::from_millis(150));
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn a_flood_of_output_keeps_only_the_answer_and_the_ends_of_stderr() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "head -c 50000000 /dev/zero; echo; echo answer; head -c 20000000 /dev/zero | tr '\\0' x >&2; echo >&2; echo error: at the end >&2"]);
        let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let out = wait_keeping(child, |line| line.starts_with(b"answer")).unwrap();
        assert_eq!(out.stdout, b"answer\n");
        assert!(out.stderr.len() < 2 * KEPT_STDERR + 100, "{}", out.stderr.len());
        assert_eq!(summarize(&out.stderr), "error: at the end");
    }

    #[test]
    fn a_line_longer_than_the_bound_is_dropped_and_the_next_one_read() {
        let input = format!("{}\nnext\n", "y".repeat(100));
        let mut reader = BufReader::with_capacity(16, input.as_bytes());
        assert_eq!(bounded_line(&mut reader, 10).unwrap(), Some(Vec::new()));
        assert_eq!(bounded_line(&mut reader, 10).unwrap(), Some(b"next\n".to_vec()));
        assert_eq!(bounded_line(&mut reader, 10).unwrap(), None);
    }

    #[test]
    fn a_program_that_says_nothing_is_stopped_after_the_silence_limit() {
        set_silence_limit(1);
        let child = Command::new("sleep").arg("30").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let started = Instant::now();
        let err = wait_keeping(child, |_| true).unwrap_err();
        set_silence_limit(DEFAULT_SILENCE_LIMIT);
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(err.to_string(), "no answer for 1 s (--timeout): stopped it");
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    }

    #[test]
    fn prefers_nix_error_lines() {
        let stderr = b"building '/nix/store/x.drv'...\nerror: builder for '/nix/store/x.drv' failed with exit code 1\n       last 10 log lines:\n";
        assert_eq!(summarize(stderr), "error: builder for '/nix/store/x.drv' failed with exit code 1");
    }

    #[test]
    fn otherwise_takes_the_last_line_cleaned() {
        assert_eq!(
            summarize(b"a\nssh: connect to host 127.0.0.1 port 1: Connection refused\r\n\n"),
            "ssh: connect to host 127.0.0.1 port 1: Connection refused"
        );
        assert_eq!(summarize(b"\x1b[31mred\x07\n"), "[31mred");
        assert_eq!(summarize(b""), "");
    }

    #[test]
    fn reports_a_missing_program() {
        let mut cmd = Command::new("/nonexistent/program");
        assert!(capture(&mut cmd).unwrap_err().to_string().starts_with("cannot run /nonexistent/program:"));
    }
}
