//! A store behind a process: `nix-store --serve` or `nix-daemon --stdio`,
//! on this machine or behind ssh, started through the serve script (which
//! first makes the copy's GC roots) and spoken to with [`serve`] or
//! [`daemon`]. Which protocol is the user's choice, or with
//! [`Protocol::Auto`] the target's: the script says in its first byte which
//! one it started, so choosing costs no connection of its own.

use crate::process::{CannotRun, Watchdog, Watched};
use crate::session::{Args, Run, Script, Session, SessionError};
use crate::target::{Link, SshError, Target};
use nixpipe_store::daemon::{self, Refusal};
use nixpipe_store::path_info::PathInfo;
use nixpipe_store::serve::{self, Closure};
use nixpipe_store::store_path::StorePath;
use std::collections::BTreeSet;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::process::{Child, ChildStdin, ChildStdout};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Why talking to a store's server failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error("connection to the store on {store} broke: {why}")]
    Broken { store: String, why: String },
    #[error("the store's server on {store} broke the protocol: {why}")]
    Protocol { store: String, why: String },
    #[error("the store on {store} refused: {why}")]
    Refused { store: String, why: String },
    #[error("nix-store on {store}: {why}")]
    Unsupported { store: String, why: String },
    #[error("{path} is not valid in the store on {store}")]
    NotValid { path: StorePath, store: String },
    #[error(transparent)]
    CannotRun(#[from] CannotRun),
    #[error(transparent)]
    Session(#[from] SessionError),
}

/// Which protocol a copy speaks with a store, as the user chose it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// The serve protocol where the target's nix-store has `--serve`, else the daemon protocol
    #[default]
    Auto,
    /// `nix-store --serve --write`, the legacy ssh:// store (every Nix up to today)
    Serve,
    /// `nix-daemon --stdio`, the ssh-ng:// store (Nix 2.4 and later)
    Daemon,
}

/// The protocol a connection speaks, once known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Speaks {
    Serve,
    /// At the version the handshake gave.
    Daemon(daemon::Version),
}

/// The stderr of a running server, kept for the message when it fails.
#[derive(Clone, Default)]
struct StderrLog(Arc<Mutex<Vec<u8>>>);

impl StderrLog {
    /// Keeps the last 64 KiB a reader gives, on a thread of its own.
    fn collect(&self, mut from: impl Read + Send + 'static) -> JoinHandle<()> {
        const KEEP: usize = 64 * 1024;
        let log = self.clone();
        std::thread::spawn(move || {
            let mut buf = [0; 4096];
            while let Ok(n @ 1..) = from.read(&mut buf) {
                let mut log = log.0.lock().unwrap_or_else(|p| p.into_inner());
                log.extend_from_slice(&buf[..n]);
                let excess = log.len().saturating_sub(KEEP);
                log.drain(..excess);
            }
        })
    }

    fn text(&self) -> Vec<u8> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A running server process: local, or behind ssh.
pub struct Server {
    pub target: Target,
    child: Child,
    stderr: StderrLog,
    stderr_reader: Option<JoinHandle<()>>,
    /// Stops a server that neither answers nor takes requests.
    watchdog: Watchdog,
}

/// The request side of a connection.
pub type Requests = BufWriter<Watched<ChildStdin>>;
/// The reply side of a connection.
pub type Replies = BufReader<Watched<ChildStdout>>;

/// A client talking to a server process.
pub struct Connection {
    pub server: Server,
    pub replies: Replies,
    pub requests: Requests,
    mode: Mode,
    /// What it speaks: known from the start unless [`Protocol::Auto`],
    /// whose server says it first.
    speaks: Option<Speaks>,
    /// What a [`Mode::WriteProbingZstd`] server said before its greeting.
    pub has_zstd: Option<bool>,
    /// What a reader over the daemon protocol said before its greeting:
    /// the closure of the paths it was started for, when all are valid.
    closure: Vec<StorePath>,
}

/// Which server to start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Queries and NARs out (`nix-store --serve`, or the daemon).
    Read,
    /// Also adds paths (`nix-store --serve --write`, or the daemon).
    Write,
    /// Write, after one byte that says whether `zstd` is on the server's
    /// PATH: `Z` or `N`.
    WriteProbingZstd,
    /// Write, with every request zstd-compressed and decompressed on the
    /// server by its `zstd`. Never wait for a reply on it before closing
    /// the requests: zstd reads its input in large blocks.
    WriteZstd,
}

/// A GC root the destination keeps for a copied record, named after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcRoot {
    /// The record's NAME, or its path's hash part.
    pub name: String,
    pub path: StorePath,
}

impl Mode {
    /// The serve script's word for it.
    fn how(self) -> &'static str {
        match self {
            Mode::Read => "read",
            Mode::Write => "write",
            Mode::WriteProbingZstd => "probe-zstd",
            Mode::WriteZstd => "zstd",
        }
    }
}

impl Protocol {
    /// Its word in the serve and relay scripts, as on the command line.
    pub fn word(self) -> &'static str {
        match self {
            Protocol::Auto => "auto",
            Protocol::Serve => "serve",
            Protocol::Daemon => "daemon",
        }
    }

    /// What a connection asked for this speaks, when that is known before
    /// the server says.
    fn speaks(self) -> Option<Speaks> {
        match self {
            Protocol::Auto => None,
            Protocol::Serve => Some(Speaks::Serve),
            // The version comes with the greeting; until then, the oldest.
            Protocol::Daemon => Some(Speaks::Daemon(daemon::Version::OLDEST)),
        }
    }
}

impl From<Speaks> for Protocol {
    fn from(speaks: Speaks) -> Protocol {
        match speaks {
            Speaks::Serve => Protocol::Serve,
            Speaks::Daemon(_) => Protocol::Daemon,
        }
    }
}

/// The command that only makes `roots`, for a copy that another program
/// makes (the relay's nix-copy-closure).
pub fn making_roots(roots: &[GcRoot]) -> Vec<String> {
    serve_script(Protocol::Serve, "roots", roots, &[])
}

/// The serve script's command line: `nix_args` (`--option NAME VALUE`...)
/// go to its nix-store or nix-daemon, and a writer first makes `roots`, a
/// reader says the closure of `wanted` (as the script's arguments: never
/// parsed as shell).
fn serve_script(protocol: Protocol, how: &str, roots: &[GcRoot], nix_args: &[String]) -> Vec<String> {
    serve_script_with(protocol, how, roots.iter().map(|root| format!("{}={}", root.name, root.path)), nix_args)
}

fn serve_script_with(
    protocol: Protocol,
    how: &str,
    before: impl Iterator<Item = String>,
    nix_args: &[String],
) -> Vec<String> {
    let list = before.chain(std::iter::once("--".to_owned())).chain(nix_args.iter().cloned());
    Script::Serve.argv(&Args::new().set("protocol", protocol.word()).set("how", how).list(list))
}

/// Reader and writer buffers: large enough that a stream of NARs moves in
/// few system calls.
const BUFFER: usize = 256 * 1024;

impl Server {
    /// The error for a connection that broke: what the server (or ssh) said
    /// before it went away, else the I/O error itself. A daemon's refusal
    /// leaves the connection whole: it is said as the daemon said it.
    pub fn broken(&mut self, error: io::Error) -> StoreError {
        if let Some(Refusal(why)) = Refusal::of(&error) {
            return StoreError::Refused { store: self.target.to_string(), why: why.clone() };
        }
        if let Some(seconds) = self.watchdog.fired() {
            return StoreError::Ssh(SshError::Silent { target: self.target.to_string(), seconds });
        }
        // A live server that broke the protocol is not waited for: what it
        // sent is the error, not how it ended once killed.
        if error.kind() == io::ErrorKind::InvalidData {
            self.kill();
            return StoreError::Protocol { store: self.target.to_string(), why: error.to_string() };
        }
        match self.wait_briefly() {
            Some(status) if !status.success() || !self.all_stderr().is_empty() => self.failure(status),
            _ => StoreError::Broken { store: self.target.to_string(), why: error.to_string() },
        }
    }

    /// Everything the server printed on stderr, once it has exited.
    fn all_stderr(&mut self) -> Vec<u8> {
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
        self.stderr.text()
    }

    /// The error for a server that exited with `status`.
    fn failure(&mut self, status: std::process::ExitStatus) -> StoreError {
        let output = std::process::Output { status, stdout: Vec::new(), stderr: self.all_stderr() };
        StoreError::Ssh(self.target.failure("the store's server", &output))
    }

    /// What the server printed on stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.text()).into_owned()
    }

    /// Waits up to a few seconds for a server that should be exiting; kills
    /// it after that, since a hung server must not hang us.
    fn wait_briefly(&mut self) -> Option<std::process::ExitStatus> {
        for _ in 0..50 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.kill();
        self.child.wait().ok()
    }

    /// Stops the server at once. A server killed in the middle of a NAR
    /// registers nothing of it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
    }

    /// Waits for a server whose requests were closed to exit, and checks it
    /// exited well.
    pub fn finish(mut self) -> Result<(), StoreError> {
        let status = self.child.wait().map_err(|e| StoreError::Broken {
            store: self.target.to_string(),
            why: format!("cannot wait for nix-store: {e}"),
        })?;
        match status.success() {
            true => Ok(()),
            false => Err(self.failure(status)),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A server dropped without finish() was abandoned on an error.
        if let Ok(None) = self.child.try_wait() {
            self.kill();
            let _ = self.child.wait();
        }
    }
}

impl StoreError {
    /// Bad usage, found before anything ran.
    pub fn is_usage(&self) -> bool {
        match self {
            StoreError::Ssh(e) => e.is_usage(),
            StoreError::Session(e) => e.is_usage(),
            _ => false,
        }
    }
}

/// How to start a connection's server.
#[derive(Clone, Copy, Debug)]
pub struct Start<'a> {
    pub mode: Mode,
    pub protocol: Protocol,
    /// How its ssh connection is made.
    pub link: &'a Link,
    /// Options for the server's Nix (`--option NAME VALUE`...).
    pub nix_args: &'a [String],
    /// GC roots a writer makes first.
    pub roots: &'a [GcRoot],
    /// The paths whose closure a reader wants.
    pub closure_of: &'a [StorePath],
}

impl Connection {
    /// Starts the store's server on `target`. Nothing is waited for, so
    /// that several servers start at once and their ssh connections are
    /// made side by side; greet them after.
    pub fn start(session: &Session, how: Start) -> Result<Connection, StoreError> {
        let Start { mode, protocol, link, nix_args, roots, closure_of } = how;
        let argv = match mode {
            Mode::Read => {
                serve_script_with(protocol, mode.how(), closure_of.iter().map(StorePath::to_string), nix_args)
            }
            _ => serve_script(protocol, mode.how(), roots, nix_args),
        };
        let mut child = session.spawn(&Run::program(&argv).over(link.clone()))?;
        let watchdog = Watchdog::start(child.id());
        let stderr = StderrLog::default();
        let stderr_reader = Some(stderr.collect(watchdog.watched(child.stderr.take().expect("piped"))));
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        widen_pipe(&stdin);
        widen_pipe(&stdout);
        let requests = BufWriter::with_capacity(BUFFER, watchdog.watched(stdin));
        let replies = BufReader::with_capacity(BUFFER, watchdog.watched(stdout));
        let server = Server { target: session.target.clone(), child, stderr, stderr_reader, watchdog };
        let speaks = protocol.speaks();
        Ok(Connection { server, replies, requests, mode, speaks, has_zstd: None, closure: Vec::new() })
    }

    /// The protocol it speaks; known once greeted.
    pub fn speaks(&self) -> Speaks {
        self.speaks.expect("a connection is greeted before it is used")
    }

    /// The handshake: learns which protocol the server speaks (with
    /// [`Protocol::Auto`], its first byte says) and checks that it does.
    pub fn greet(&mut self) -> Result<(), StoreError> {
        self.greet_then(|_, _| Ok(()))
    }

    /// The handshake and the valid subset of `paths`, in one round trip:
    /// the question goes out right behind our greeting.
    pub fn greet_and_query_valid_paths(
        &mut self,
        paths: &[StorePath],
        substitute: bool,
    ) -> Result<BTreeSet<StorePath>, StoreError> {
        self.greet_then(|requests, speaks| match speaks {
            Speaks::Serve => serve::write_query_valid_paths(requests, paths, substitute),
            Speaks::Daemon(_) => daemon::write_query_valid_paths(requests, paths, substitute),
        })?;
        self.exchange(|client| client.read_valid_paths(), |client| client.read_valid_paths())
    }

    /// The handshake, with what `ask` writes behind our greeting before
    /// anything is read. Where the protocol is known, our greeting goes
    /// before anything is read: no round trip is spent on it.
    fn greet_then(&mut self, ask: impl FnOnce(&mut Requests, Speaks) -> io::Result<()>) -> Result<(), StoreError> {
        let greeting = (|| {
            let speaks = match self.speaks {
                Some(speaks) => speaks,
                None => match read_marker(&mut self.replies)? {
                    b'S' => Speaks::Serve,
                    b'D' => Speaks::Daemon(daemon::Version::OLDEST),
                    other => return Err(nixpipe_store::wire::invalid(format!("protocol marker {other:#x}"))),
                },
            };
            write_hello(&mut self.requests, speaks)?;
            ask(&mut self.requests, speaks)?;
            self.requests.flush()?;
            if self.mode == Mode::Read && matches!(speaks, Speaks::Daemon(_)) {
                self.closure = read_closure_lines(&mut self.replies)?;
            }
            if self.mode == Mode::WriteProbingZstd {
                self.has_zstd = Some(read_marker(&mut self.replies)? == b'Z');
            }
            self.speaks = Some(read_hello(&mut self.replies, speaks)?);
            Ok(())
        })();
        greeting.map_err(|e| match e.kind() {
            io::ErrorKind::Unsupported => {
                StoreError::Unsupported { store: self.server.target.to_string(), why: e.to_string() }
            }
            _ => self.server.broken(e),
        })
    }

    /// Ends a session that has nothing more to say or hear: its server is
    /// stopped now, not waited for. Waiting for a read-only session to end
    /// costs a round trip and tells nothing: every answer is in.
    pub fn leave(self) {
        drop(self);
    }

    /// Ends the session: the server sees its input end and exits.
    pub fn close(self) -> Result<(), StoreError> {
        let Connection { server, replies, requests, .. } = self;
        drop((replies, requests));
        server.finish()
    }

    /// Runs one exchange; an I/O failure becomes the server's own message.
    fn exchange<T>(
        &mut self,
        serve: impl FnOnce(&mut serve::Client<&mut Replies, &mut Requests>) -> io::Result<T>,
        daemon: impl FnOnce(&mut daemon::Client<&mut Replies, &mut Requests>) -> io::Result<T>,
    ) -> Result<T, StoreError> {
        let (replies, requests) = (&mut self.replies, &mut self.requests);
        let done = match self.speaks.expect("a connection is greeted before it is used") {
            Speaks::Serve => serve(&mut serve::Client { replies, requests }),
            Speaks::Daemon(version) => daemon(&mut daemon::Client { replies, requests, version }),
        };
        done.map_err(|e| self.server.broken(e))
    }

    pub fn query_valid_paths(
        &mut self,
        paths: &[StorePath],
        substitute: bool,
    ) -> Result<BTreeSet<StorePath>, StoreError> {
        self.exchange(
            |client| client.query_valid_paths(paths, substitute),
            |client| client.query_valid_paths(paths, substitute),
        )
    }

    /// The closure of `paths` with every path's info, every one of them
    /// valid there: two round trips over serve; over the daemon protocol,
    /// one for the closure the script said, or where it said none (a path
    /// is missing), one per level of references.
    pub fn closure_infos(&mut self, paths: &[StorePath]) -> Result<Vec<PathInfo>, StoreError> {
        let said = std::mem::take(&mut self.closure);
        let walked = self.exchange(
            |client| match client.query_closure(paths)? {
                Closure::Complete(closure) => client.query_path_infos(&closure).map(Ok),
                Closure::Missing(path) => Ok(Err(path)),
            },
            |client| match said.is_empty() {
                true => client.closure(paths),
                false => client.path_infos_of(&said),
            },
        )?;
        walked.map_err(|path| StoreError::NotValid { path, store: self.server.target.to_string() })
    }
}

/// Our greeting in `protocol`.
pub fn write_hello(w: &mut impl Write, protocol: Speaks) -> io::Result<()> {
    match protocol {
        Speaks::Serve => serve::write_hello(w),
        Speaks::Daemon(_) => daemon::write_hello(w),
    }
}

/// The server's greeting in `protocol`: what it then speaks.
pub fn read_hello(r: &mut impl Read, protocol: Speaks) -> io::Result<Speaks> {
    match protocol {
        Speaks::Serve => serve::read_hello(r).map(|()| Speaks::Serve),
        Speaks::Daemon(_) => daemon::read_hello(r).map(|hello| Speaks::Daemon(hello.version)),
    }
}

/// The closure a reader's script said before the daemon's greeting: a
/// path a line, then an empty line.
fn read_closure_lines(r: &mut impl BufRead) -> io::Result<Vec<StorePath>> {
    let mut closure = Vec::new();
    loop {
        let mut line = String::new();
        if r.by_ref().take(nixpipe_store::wire::MAX_STRING).read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        match line.trim_end_matches('\n') {
            "" => return Ok(closure),
            path => closure.push(
                StorePath::parse(path)
                    .map_err(|e| nixpipe_store::wire::invalid(format!("closure line {path:?} ({e})")))?,
            ),
        }
    }
}

/// One byte the serve script writes before the protocol's stream.
fn read_marker(r: &mut impl Read) -> io::Result<u8> {
    let mut marker = [0];
    r.read_exact(&mut marker)?;
    Ok(marker[0])
}

/// Asks for a 1 MiB pipe instead of 64 KiB: NARs then cross it in fewer,
/// larger steps, with fewer switches between us and ssh. Only a hint: the
/// copy works the same where the kernel says no.
fn widen_pipe(pipe: &impl std::os::fd::AsRawFd) {
    // SAFETY: fcntl on a pipe we own; failure changes nothing.
    unsafe {
        libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, BUFFER * 4);
    }
}
