//! A client of `nix-store --serve`, the protocol of Nix's legacy ssh store,
//! in three layers: [`Command`]s and their encodings (free functions, for
//! the streaming threads of a copy), a [`Client`] that runs exchanges over
//! any reader and writer (tested against scripted peers below), and a
//! [`Connection`]: a client talking to a [`Server`] process, local or
//! behind ssh, whose stderr explains every failure.
//!
//! The server answers requests in the order they came, so a client may
//! write many requests before reading any reply: that is how a whole
//! closure goes out in one round trip, where Nix itself waits for each
//! path. Errors are not framed: the server prints them on stderr and hangs
//! up, so every I/O failure is reported with what the server said last.

use crate::copy::CopyError;
use crate::nar::NarHash;
use crate::path_info::PathInfo;
use crate::session::Script;
use crate::store_path::StorePath;
use crate::target::Target;
use crate::wire::{self, read_string, read_strings, read_u64, write_str, write_strs, write_u64};
use std::collections::BTreeSet;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

const CLIENT_MAGIC: u64 = 0x390c_9deb;
const SERVER_MAGIC: u64 = 0x5452_eecb;
/// 2.5: the oldest version with everything used here (Nix 2.1 and later).
const PROTOCOL_VERSION: u64 = 0x205;

/// The serve protocol's commands nixpipe uses, by their number on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum Command {
    QueryValidPaths = 1,
    QueryPathInfos = 2,
    DumpStorePath = 3,
    QueryClosure = 7,
    AddToStoreNar = 9,
}

impl Command {
    fn write(self, w: &mut impl Write) -> io::Result<()> {
        write_u64(w, self as u64)
    }
}

/// The client's half of the handshake.
pub fn write_hello(w: &mut impl Write) -> io::Result<()> {
    write_u64(w, CLIENT_MAGIC)?;
    write_u64(w, PROTOCOL_VERSION)
}

/// The server's half of the handshake, checked.
pub fn read_hello(r: &mut impl Read) -> io::Result<()> {
    let magic = read_u64(r)?;
    if magic != SERVER_MAGIC {
        return Err(wire::invalid(format!("greeting {magic:#x}")));
    }
    let version = read_u64(r)?;
    if version >> 8 != PROTOCOL_VERSION >> 8 || version < PROTOCOL_VERSION {
        let message = format!(
            "speaks serve protocol {}.{}; nixpipe needs 2.5 or newer (Nix 2.1 or newer)",
            version >> 8,
            version & 0xff
        );
        return Err(io::Error::new(io::ErrorKind::Unsupported, message));
    }
    Ok(())
}

fn write_query_valid_paths(w: &mut impl Write, paths: &[StorePath], substitute: bool) -> io::Result<()> {
    Command::QueryValidPaths.write(w)?;
    write_u64(w, 0)?; // lock: no
    write_u64(w, substitute as u64)?;
    write_strs(w, paths)
}

fn write_query_closure(w: &mut impl Write, paths: &[StorePath]) -> io::Result<()> {
    Command::QueryClosure.write(w)?;
    write_u64(w, 0)?; // include outputs: no
    write_strs(w, paths)
}

/// A store path the server sent; anything else breaks the protocol.
fn store_path(text: &str) -> io::Result<StorePath> {
    StorePath::parse(text).map_err(|e| wire::invalid(format!("{text:?} ({e})")))
}

fn read_store_paths(r: &mut impl Read) -> io::Result<Vec<StorePath>> {
    read_strings(r)?.iter().map(|text| store_path(text)).collect()
}

/// An empty string for none, as the protocol sends it.
fn read_optional(r: &mut impl Read) -> io::Result<Option<String>> {
    Ok(Some(read_string(r)?).filter(|s| !s.is_empty()))
}

fn read_path_info(r: &mut impl Read, path: StorePath) -> io::Result<PathInfo> {
    let deriver = read_optional(r)?.map(|text| store_path(&text)).transpose()?;
    let references = read_store_paths(r)?;
    let _download_size = read_u64(r)?;
    let nar_size = read_u64(r)?;
    let hash = read_string(r)?;
    let nar_hash = NarHash::parse(&hash).map_err(|e| wire::invalid(format!("narHash of {path}: {e}")))?;
    let ca = read_optional(r)?;
    let sigs = read_strings(r)?;
    Ok(PathInfo { path, deriver, references, nar_size, nar_hash, ca, sigs })
}

/// Asks for the NAR of `path`; the reply is exactly its narSize bytes.
pub fn write_dump_store_path(w: &mut impl Write, path: &StorePath) -> io::Result<()> {
    Command::DumpStorePath.write(w)?;
    write_str(w, path.as_str())
}

/// Everything of AddToStoreNar before the NAR bytes; the server answers 1
/// once the path is valid.
pub fn write_add_to_store_nar(w: &mut impl Write, info: &PathInfo) -> io::Result<()> {
    Command::AddToStoreNar.write(w)?;
    write_str(w, info.path.as_str())?;
    write_str(w, info.deriver.as_ref().map_or("", StorePath::as_str))?;
    write_str(w, &info.nar_hash.to_string())?;
    write_strs(w, &info.references)?;
    write_u64(w, 0)?; // registration time: now
    write_u64(w, info.nar_size)?;
    write_u64(w, 0)?; // ultimate: no, it was built elsewhere
    write_strs(w, &info.sigs)?;
    write_str(w, info.ca.as_deref().unwrap_or(""))
}

/// Reads the server's answer to one AddToStoreNar.
pub fn read_added(r: &mut impl Read) -> io::Result<()> {
    match read_u64(r)? {
        1 => Ok(()),
        other => Err(wire::invalid(format!("answer {other} to AddToStoreNar"))),
    }
}

/// The protocol's exchanges, over any reader and writer.
pub struct Client<R, W> {
    pub replies: R,
    pub requests: W,
}

/// What [`Client::query_closure`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Closure {
    Complete(Vec<StorePath>),
    /// A path asked for is not valid there: no closure.
    Missing(StorePath),
}

impl<R: Read, W: Write> Client<R, W> {
    /// The handshake: checks that the other end speaks the protocol.
    pub fn hello(&mut self) -> io::Result<()> {
        write_hello(&mut self.requests)?;
        self.requests.flush()?;
        read_hello(&mut self.replies)
    }

    /// The subset of `paths` that is valid in the store. With `substitute`,
    /// the store first tries to fetch the others from its substituters.
    pub fn query_valid_paths(&mut self, paths: &[StorePath], substitute: bool) -> io::Result<BTreeSet<StorePath>> {
        write_query_valid_paths(&mut self.requests, paths, substitute)?;
        self.requests.flush()?;
        Ok(read_store_paths(&mut self.replies)?.into_iter().collect())
    }

    /// The valid subset of `paths`, then their closure, in one round trip.
    /// A server asked for the closure of an invalid path hangs up, so the
    /// first answer says which paths are missing before that happens.
    pub fn query_closure(&mut self, paths: &[StorePath]) -> io::Result<Closure> {
        write_query_valid_paths(&mut self.requests, paths, false)?;
        write_query_closure(&mut self.requests, paths)?;
        self.requests.flush()?;
        let valid: BTreeSet<StorePath> = read_store_paths(&mut self.replies)?.into_iter().collect();
        if let Some(missing) = paths.iter().find(|p| !valid.contains(*p)) {
            return Ok(Closure::Missing(missing.clone()));
        }
        Ok(Closure::Complete(read_store_paths(&mut self.replies)?))
    }

    /// Path infos of valid paths, in one request.
    pub fn query_path_infos(&mut self, paths: &[StorePath]) -> io::Result<Vec<PathInfo>> {
        Command::QueryPathInfos.write(&mut self.requests)?;
        write_strs(&mut self.requests, paths)?;
        self.requests.flush()?;
        let mut infos = Vec::new();
        loop {
            let path = read_string(&mut self.replies)?;
            if path.is_empty() {
                return Ok(infos);
            }
            let path = store_path(&path)?;
            infos.push(read_path_info(&mut self.replies, path)?);
        }
    }
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
}

/// The request side of a connection.
pub type Requests = BufWriter<ChildStdin>;
/// The reply side of a connection.
pub type Replies = BufReader<ChildStdout>;

/// A client talking to a server process.
pub struct Connection {
    pub server: Server,
    pub client: Client<Replies, Requests>,
    mode: Mode,
    /// What a [`Mode::WriteProbingZstd`] server said before its greeting.
    pub has_zstd: Option<bool>,
}

/// Which server to start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `nix-store --serve`: queries and NARs out.
    Read,
    /// `nix-store --serve --write`: also adds paths.
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
    /// The server's command line: `nix_args` (`--option NAME VALUE`...) go
    /// to its nix-store, and a writer first makes `roots` (through a
    /// script, as its arguments: never parsed as shell).
    fn argv(self, nix_args: &[String], roots: &[GcRoot]) -> Vec<String> {
        let how = match self {
            Mode::Read => {
                let serve = ["nix-store".to_owned(), "--serve".to_owned()];
                return serve.into_iter().chain(nix_args.iter().cloned()).collect();
            }
            Mode::Write => "plain",
            Mode::WriteProbingZstd => "probe-zstd",
            Mode::WriteZstd => "zstd",
        };
        serve_script(how, roots, nix_args)
    }
}

/// The command that only makes `roots`, for a copy that another program
/// makes (the relay's nix-copy-closure).
pub fn making_roots(roots: &[GcRoot]) -> Vec<String> {
    serve_script("roots", roots, &[])
}

fn serve_script(how: &str, roots: &[GcRoot], nix_args: &[String]) -> Vec<String> {
    let roots = roots.iter().map(|root| format!("{}={}", root.name, root.path));
    let args: Vec<String> = std::iter::once(how.to_owned())
        .chain(roots)
        .chain(std::iter::once("--".to_owned()))
        .chain(nix_args.iter().cloned())
        .collect();
    Script::Serve.argv(&args)
}

/// Reader and writer buffers: large enough that a stream of NARs moves in
/// few system calls.
const BUFFER: usize = 256 * 1024;

impl Server {
    /// The error for a connection that broke: what the server (or ssh) said
    /// before it went away, else the I/O error itself.
    pub fn broken(&mut self, error: io::Error) -> CopyError {
        match self.wait_briefly() {
            Some(status) if !status.success() || !self.all_stderr().is_empty() => self.failure(status),
            _ => CopyError::Broken { store: self.target.to_string(), why: error.to_string() },
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
    fn failure(&mut self, status: std::process::ExitStatus) -> CopyError {
        let output = std::process::Output { status, stdout: Vec::new(), stderr: self.all_stderr() };
        CopyError::Ssh(self.target.failure("nix-store --serve", &output))
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
    pub fn finish(mut self) -> Result<(), CopyError> {
        let status = self.child.wait().map_err(|e| CopyError::Broken {
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

impl Connection {
    /// Starts `nix-store --serve` on `target`, ssh with `ssh_options`,
    /// nix-store with `nix_args`, a writer after making `roots`. Nothing is waited for, so that several
    /// servers start at once and their ssh connections are made side by
    /// side; greet them after.
    pub fn start(
        target: &Target,
        mode: Mode,
        ssh_options: &[&str],
        nix_args: &[String],
        roots: &[GcRoot],
    ) -> Result<Connection, CopyError> {
        let argv = mode.argv(nix_args, roots);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut cmd = target.command_with(&argv, ssh_options)?;
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| crate::process::CannotRun::of(&cmd, e))?;
        let stderr = StderrLog::default();
        let stderr_reader = Some(stderr.collect(child.stderr.take().expect("piped")));
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        widen_pipe(&stdin);
        widen_pipe(&stdout);
        let client = Client {
            requests: BufWriter::with_capacity(BUFFER, stdin),
            replies: BufReader::with_capacity(BUFFER, stdout),
        };
        let server = Server { target: target.clone(), child, stderr, stderr_reader };
        Ok(Connection { server, client, mode, has_zstd: None })
    }

    /// The handshake: checks that the other end speaks the protocol.
    pub fn greet(&mut self) -> Result<(), CopyError> {
        let probing = self.mode == Mode::WriteProbingZstd;
        let client = &mut self.client;
        let mut has_zstd = None;
        let greeting = (|| {
            if !probing {
                return client.hello();
            }
            write_hello(&mut client.requests)?;
            client.requests.flush()?;
            let mut marker = [0];
            client.replies.read_exact(&mut marker)?;
            has_zstd = Some(marker[0] == b'Z');
            read_hello(&mut client.replies)
        })();
        self.has_zstd = has_zstd;
        greeting.map_err(|e| match e.kind() {
            io::ErrorKind::Unsupported => {
                CopyError::Unsupported { store: self.server.target.to_string(), why: e.to_string() }
            }
            _ => self.server.broken(e),
        })
    }

    /// Ends the session: the server sees its input end and exits.
    pub fn close(self) -> Result<(), CopyError> {
        let Connection { server, client, .. } = self;
        drop(client);
        server.finish()
    }

    /// Runs one exchange; an I/O failure becomes the server's own message.
    fn exchange<T>(&mut self, f: impl FnOnce(&mut Client<Replies, Requests>) -> io::Result<T>) -> Result<T, CopyError> {
        f(&mut self.client).map_err(|e| self.server.broken(e))
    }

    pub fn query_valid_paths(
        &mut self,
        paths: &[StorePath],
        substitute: bool,
    ) -> Result<BTreeSet<StorePath>, CopyError> {
        self.exchange(|client| client.query_valid_paths(paths, substitute))
    }

    /// The closure of `paths`, every one of them valid there.
    pub fn query_closure(&mut self, paths: &[StorePath]) -> Result<Vec<StorePath>, CopyError> {
        match self.exchange(|client| client.query_closure(paths))? {
            Closure::Complete(closure) => Ok(closure),
            Closure::Missing(path) => Err(CopyError::NotValid { path, store: self.server.target.to_string() }),
        }
    }

    pub fn query_path_infos(&mut self, paths: &[StorePath]) -> Result<Vec<PathInfo>, CopyError> {
        self.exchange(|client| client.query_path_infos(paths))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn path(name: &str) -> StorePath {
        StorePath::parse(&format!("/nix/store/36m5mhfn262qgji13vrgp907an576qjz-{name}")).unwrap()
    }

    /// A scripted server: `replies` is all it will ever say.
    fn client(replies: &[u8]) -> Client<&[u8], Vec<u8>> {
        Client { replies, requests: Vec::new() }
    }

    fn strings(items: &[&StorePath]) -> Vec<u8> {
        let mut buf = Vec::new();
        write_strs(&mut buf, items).unwrap();
        buf
    }

    #[test]
    fn path_info_reads_in_the_servers_order() {
        let mut buf = Vec::new();
        write_str(&mut buf, path("d.drv").as_str()).unwrap();
        write_strs(&mut buf, &[path("r")]).unwrap();
        write_u64(&mut buf, 0).unwrap();
        write_u64(&mut buf, 120).unwrap();
        write_str(&mut buf, &NarHash::of(b"").to_string()).unwrap();
        write_str(&mut buf, "").unwrap();
        write_strs(&mut buf, &["k:sig"]).unwrap();
        let info = read_path_info(&mut &buf[..], path("p")).unwrap();
        assert_eq!(info.nar_size, 120);
        assert_eq!(info.references, [path("r")]);
        assert_eq!(info.sigs, ["k:sig"]);
        assert_eq!(info.deriver, Some(path("d.drv")));
        assert_eq!(info.ca, None);
    }

    #[test]
    fn a_closure_is_asked_for_with_its_validity_in_one_round_trip() {
        let (a, b) = (path("a"), path("b"));
        let replies = [strings(&[&a]), strings(&[&a, &b])].concat();
        let mut c = client(&replies);
        assert_eq!(c.query_closure(&[a.clone()]).unwrap(), Closure::Complete(vec![a.clone(), b]));
        let mut expected = Vec::new();
        write_query_valid_paths(&mut expected, &[a.clone()], false).unwrap();
        write_query_closure(&mut expected, &[a]).unwrap();
        assert_eq!(c.requests, expected);
    }

    #[test]
    fn a_server_that_hangs_up_on_a_missing_path_is_told_by_the_first_answer() {
        // Nix hangs up instead of answering QueryClosure for an invalid
        // path: only the validity answer ever comes.
        let (a, gone) = (path("a"), path("gone"));
        let replies = strings(&[&a]);
        let mut c = client(&replies);
        assert_eq!(c.query_closure(&[a, gone.clone()]).unwrap(), Closure::Missing(gone));
    }

    #[test]
    fn a_reply_that_is_not_a_store_path_is_a_protocol_error() {
        let mut replies = Vec::new();
        write_strs(&mut replies, &["/etc/passwd"]).unwrap();
        let err = client(&replies).query_valid_paths(&[path("a")], false).unwrap_err();
        assert!(err.to_string().contains("protocol error"), "{err}");
    }

    #[test]
    fn the_greeting_refuses_an_old_protocol() {
        let mut replies = Vec::new();
        write_u64(&mut replies, SERVER_MAGIC).unwrap();
        write_u64(&mut replies, 0x204).unwrap();
        let err = client(&replies).hello().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Unsupported);
        let mut hello = Vec::new();
        write_hello(&mut hello).unwrap();
        assert_eq!(hello.len(), 16);
    }
}
