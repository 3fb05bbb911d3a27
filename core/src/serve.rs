//! A client of `nix-store --serve`, the protocol of Nix's legacy ssh store.
//!
//! Every integer is a little-endian u64; a string is its length, its bytes
//! and zero padding to a multiple of 8. The server answers requests in the
//! order they came, so a client may write many requests before reading any
//! reply: that is how a whole closure goes out in one round trip, where Nix
//! itself waits for each path. Errors are not framed: the server prints
//! them on stderr and hangs up, so every I/O failure is reported with what
//! the server said last.

use crate::target::Target;
use std::collections::BTreeSet;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

const CLIENT_MAGIC: u64 = 0x390c_9deb;
const SERVER_MAGIC: u64 = 0x5452_eecb;
/// 2.5: the oldest version with everything used here (Nix 2.1 and later).
const PROTOCOL_VERSION: u64 = 0x205;

const QUERY_VALID_PATHS: u64 = 1;
const QUERY_PATH_INFOS: u64 = 2;
const DUMP_STORE_PATH: u64 = 3;
const QUERY_CLOSURE: u64 = 7;
const ADD_TO_STORE_NAR: u64 = 9;

/// Bounds on what the server may send, so a confused or hostile server
/// cannot make us allocate without limit.
const MAX_STRING: u64 = 1 << 20;
const MAX_LIST: u64 = 1 << 24;

/// What the source store knows of one valid path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathInfo {
    pub path: String,
    /// Empty when unknown.
    pub deriver: String,
    pub references: Vec<String>,
    pub nar_size: u64,
    /// `sha256:<nix32>` as Nix sends it.
    pub nar_hash: String,
    /// Empty when the path is not content-addressed.
    pub ca: String,
    pub sigs: Vec<String>,
}

/// The wire encoding, on any reader or writer.
pub mod wire {
    use super::{MAX_LIST, MAX_STRING};
    use std::io::{self, Read, Write};

    pub fn write_u64(w: &mut impl Write, n: u64) -> io::Result<()> {
        w.write_all(&n.to_le_bytes())
    }

    pub fn write_bytes(w: &mut impl Write, s: &[u8]) -> io::Result<()> {
        write_u64(w, s.len() as u64)?;
        w.write_all(s)?;
        w.write_all(&[0; 8][..padding(s.len() as u64)])
    }

    pub fn write_str(w: &mut impl Write, s: &str) -> io::Result<()> {
        write_bytes(w, s.as_bytes())
    }

    pub fn write_strs<S: AsRef<str>>(w: &mut impl Write, items: &[S]) -> io::Result<()> {
        write_u64(w, items.len() as u64)?;
        items.iter().try_for_each(|s| write_str(w, s.as_ref()))
    }

    pub fn read_u64(r: &mut impl Read) -> io::Result<u64> {
        let mut buf = [0; 8];
        r.read_exact(&mut buf)?;
        Ok(u64::from_le_bytes(buf))
    }

    pub fn read_string(r: &mut impl Read) -> io::Result<String> {
        let len = read_u64(r)?;
        if len > MAX_STRING {
            return Err(invalid(format!("a string of {len} bytes")));
        }
        let mut buf = vec![0; len as usize];
        r.read_exact(&mut buf)?;
        let mut pad = [0; 8];
        r.read_exact(&mut pad[..padding(len)])?;
        String::from_utf8(buf).map_err(|_| invalid("a string that is not UTF-8".into()))
    }

    pub fn read_strings(r: &mut impl Read) -> io::Result<Vec<String>> {
        let count = read_u64(r)?;
        if count > MAX_LIST {
            return Err(invalid(format!("a list of {count} strings")));
        }
        (0..count).map(|_| read_string(r)).collect()
    }

    fn padding(len: u64) -> usize {
        ((8 - len % 8) % 8) as usize
    }

    pub fn invalid(what: String) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, format!("protocol error: unexpected {what}"))
    }
}

use wire::{read_string, read_strings, read_u64, write_str, write_strs, write_u64};

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
                let mut log = log.0.lock().unwrap();
                log.extend_from_slice(&buf[..n]);
                let excess = log.len().saturating_sub(KEEP);
                log.drain(..excess);
            }
        })
    }

    fn text(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
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

/// A connection to a server: its process, requests and replies.
pub struct Connection {
    pub server: Server,
    pub requests: Requests,
    pub replies: Replies,
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

impl Mode {
    /// The server's command line; `nix_args` (`--option NAME VALUE`...)
    /// go to its nix-store.
    fn argv(self, nix_args: &[String]) -> Vec<String> {
        let serve = |write: bool| {
            let mut argv = vec!["nix-store".to_owned(), "--serve".to_owned()];
            argv.extend(write.then(|| "--write".to_owned()));
            argv.extend(nix_args.iter().cloned());
            argv
        };
        // Through a shell, nix_args arrive as "$@": never parsed as shell.
        let shell = |script: &str| {
            let mut argv = vec!["sh".to_owned(), "-c".to_owned(), script.to_owned(), "sh".to_owned()];
            argv.extend(nix_args.iter().cloned());
            argv
        };
        match self {
            Mode::Read => serve(false),
            Mode::Write => serve(true),
            Mode::WriteProbingZstd => shell(
                "if command -v zstd >/dev/null 2>&1; then printf Z; else printf N; fi; exec nix-store --serve --write \"$@\"",
            ),
            Mode::WriteZstd => shell("zstd -dcq | exec nix-store --serve --write \"$@\""),
        }
    }
}

/// Reader and writer buffers: large enough that a stream of NARs moves in
/// few system calls.
const BUFFER: usize = 256 * 1024;

impl Server {
    /// The one line for a connection that broke: what the server (or ssh)
    /// said before it went away, else the I/O error itself.
    pub fn broken(&mut self, error: io::Error) -> String {
        match self.wait_briefly() {
            Some(status) if !status.success() || !self.all_stderr().is_empty() => self.failure(status),
            _ => format!("connection to the store on {} broke: {error}", self.target),
        }
    }

    /// Everything the server printed on stderr, once it has exited.
    fn all_stderr(&mut self) -> Vec<u8> {
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
        self.stderr.text()
    }

    /// The one line for a server that exited with `status`.
    fn failure(&mut self, status: std::process::ExitStatus) -> String {
        let output = std::process::Output { status, stdout: Vec::new(), stderr: self.all_stderr() };
        self.target.failure("nix-store --serve", &output)
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
    pub fn finish(mut self) -> Result<(), String> {
        let status = self.child.wait().map_err(|e| format!("cannot wait for nix-store on {}: {e}", self.target))?;
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
    /// nix-store with `nix_args`. Nothing is waited for, so that several
    /// servers start at once and their ssh connections are made side by
    /// side; greet them after.
    pub fn start(target: &Target, mode: Mode, ssh_options: &[&str], nix_args: &[String]) -> Result<Connection, String> {
        let argv = mode.argv(nix_args);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut cmd: Command = target.command_with(&argv, ssh_options)?;
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| format!("cannot run {}: {e}", cmd.get_program().to_string_lossy()))?;
        let stderr = StderrLog::default();
        let stderr_reader = Some(stderr.collect(child.stderr.take().expect("piped")));
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        widen_pipe(&stdin);
        widen_pipe(&stdout);
        let requests = BufWriter::with_capacity(BUFFER, stdin);
        let replies = BufReader::with_capacity(BUFFER, stdout);
        let server = Server { target: target.clone(), child, stderr, stderr_reader };
        Ok(Connection { server, requests, replies, mode, has_zstd: None })
    }

    /// The handshake: checks that the other end speaks the protocol.
    pub fn greet(&mut self) -> Result<(), String> {
        let probing = self.mode == Mode::WriteProbingZstd;
        let greeting = (|| {
            write_hello(&mut self.requests)?;
            self.requests.flush()?;
            if probing {
                let mut marker = [0];
                self.replies.read_exact(&mut marker)?;
                self.has_zstd = Some(marker[0] == b'Z');
            }
            read_hello(&mut self.replies)
        })();
        greeting.map_err(|e| match e.kind() {
            io::ErrorKind::Unsupported => format!("nix-store on {}: {e}", self.server.target),
            _ => self.server.broken(e),
        })
    }

    /// Ends the session: the server sees its input end and exits.
    pub fn close(self) -> Result<(), String> {
        let Connection { server, requests, replies, .. } = self;
        drop((requests, replies));
        server.finish()
    }

    /// Runs one exchange; an I/O failure becomes the server's own message.
    fn exchange<T>(&mut self, f: impl FnOnce(&mut Requests, &mut Replies) -> io::Result<T>) -> Result<T, String> {
        f(&mut self.requests, &mut self.replies).map_err(|e| self.server.broken(e))
    }

    /// The subset of `paths` that is valid in the store. With `substitute`,
    /// the store first tries to fetch the others from its substituters.
    pub fn query_valid_paths(&mut self, paths: &[String], substitute: bool) -> Result<BTreeSet<String>, String> {
        self.exchange(|requests, replies| {
            write_query_valid_paths(requests, paths, substitute)?;
            requests.flush()?;
            Ok(read_strings(replies)?.into_iter().collect())
        })
    }

    /// The valid subset of `paths`, then their closure, in one round trip.
    /// A server asked for the closure of an invalid path hangs up, so the
    /// first answer says which paths are missing before that happens.
    pub fn query_closure(&mut self, paths: &[String]) -> Result<Vec<String>, String> {
        let (valid, closure) = self.exchange(|requests, replies| {
            write_query_valid_paths(requests, paths, false)?;
            write_u64(requests, QUERY_CLOSURE)?;
            write_u64(requests, 0)?; // include outputs: no
            write_strs(requests, paths)?;
            requests.flush()?;
            let valid: BTreeSet<String> = read_strings(replies)?.into_iter().collect();
            if valid.len() != paths.len() {
                return Ok((valid, Vec::new()));
            }
            Ok((valid, read_strings(replies)?))
        })?;
        match paths.iter().find(|p| !valid.contains(*p)) {
            Some(missing) => Err(format!("{missing} is not valid in the store on {}", self.server.target)),
            None => Ok(closure),
        }
    }

    /// Path infos of valid paths, in one request.
    pub fn query_path_infos(&mut self, paths: &[String]) -> Result<Vec<PathInfo>, String> {
        self.exchange(|requests, replies| {
            write_u64(requests, QUERY_PATH_INFOS)?;
            write_strs(requests, paths)?;
            requests.flush()?;
            let mut infos = Vec::new();
            loop {
                let path = read_string(replies)?;
                if path.is_empty() {
                    return Ok(infos);
                }
                infos.push(read_path_info(replies, path)?);
            }
        })
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

fn write_query_valid_paths(w: &mut impl Write, paths: &[String], substitute: bool) -> io::Result<()> {
    write_u64(w, QUERY_VALID_PATHS)?;
    write_u64(w, 0)?; // lock: no
    write_u64(w, substitute as u64)?;
    write_strs(w, paths)
}

fn read_path_info(r: &mut impl Read, path: String) -> io::Result<PathInfo> {
    let deriver = read_string(r)?;
    let references = read_strings(r)?;
    let _download_size = read_u64(r)?;
    let nar_size = read_u64(r)?;
    let nar_hash = read_string(r)?;
    let ca = read_string(r)?;
    let sigs = read_strings(r)?;
    Ok(PathInfo { path, deriver, references, nar_size, nar_hash, ca, sigs })
}

/// Asks for the NAR of `path`; the reply is exactly its narSize bytes.
pub fn write_dump_store_path(w: &mut impl Write, path: &str) -> io::Result<()> {
    write_u64(w, DUMP_STORE_PATH)?;
    write_str(w, path)
}

/// Everything of AddToStoreNar before the NAR bytes; the server answers 1
/// once the path is valid.
pub fn write_add_to_store_nar(w: &mut impl Write, info: &PathInfo) -> io::Result<()> {
    write_u64(w, ADD_TO_STORE_NAR)?;
    write_str(w, &info.path)?;
    write_str(w, &info.deriver)?;
    write_str(w, &info.nar_hash)?;
    write_strs(w, &info.references)?;
    write_u64(w, 0)?; // registration time: now
    write_u64(w, info.nar_size)?;
    write_u64(w, 0)?; // ultimate: no, it was built elsewhere
    write_strs(w, &info.sigs)?;
    write_str(w, &info.ca)
}

/// Reads the server's answer to one AddToStoreNar.
pub fn read_added(r: &mut impl Read) -> io::Result<()> {
    match read_u64(r)? {
        1 => Ok(()),
        other => Err(wire::invalid(format!("answer {other} to AddToStoreNar"))),
    }
}

#[cfg(test)]
mod tests {
    use super::wire::*;
    use super::*;

    #[test]
    fn strings_are_padded_to_eight_bytes() {
        let mut buf = Vec::new();
        write_str(&mut buf, "abc").unwrap();
        assert_eq!(buf, [3, 0, 0, 0, 0, 0, 0, 0, b'a', b'b', b'c', 0, 0, 0, 0, 0]);
        let mut buf = Vec::new();
        write_str(&mut buf, "12345678").unwrap();
        assert_eq!(buf.len(), 16);
        assert_eq!(read_string(&mut &buf[..]).unwrap(), "12345678");
    }

    #[test]
    fn lists_round_trip() {
        let mut buf = Vec::new();
        write_strs(&mut buf, &["", "a", "/nix/store/x"]).unwrap();
        assert_eq!(read_strings(&mut &buf[..]).unwrap(), ["", "a", "/nix/store/x"]);
    }

    #[test]
    fn refuses_absurd_lengths_without_allocating() {
        let buf = u64::MAX.to_le_bytes();
        assert!(read_string(&mut &buf[..]).unwrap_err().to_string().contains("protocol error"));
        assert!(read_strings(&mut &buf[..]).is_err());
    }

    #[test]
    fn path_info_reads_in_the_servers_order() {
        let mut buf = Vec::new();
        write_str(&mut buf, "/nix/store/d.drv").unwrap();
        write_strs(&mut buf, &["/nix/store/r"]).unwrap();
        write_u64(&mut buf, 0).unwrap();
        write_u64(&mut buf, 120).unwrap();
        write_str(&mut buf, "sha256:abc").unwrap();
        write_str(&mut buf, "").unwrap();
        write_strs(&mut buf, &["k:sig"]).unwrap();
        let info = read_path_info(&mut &buf[..], "/nix/store/p".into()).unwrap();
        assert_eq!(info.nar_size, 120);
        assert_eq!(info.references, ["/nix/store/r"]);
        assert_eq!(info.sigs, ["k:sig"]);
        assert_eq!(info.deriver, "/nix/store/d.drv");
    }

    #[test]
    fn a_truncated_reply_is_an_error() {
        let mut buf = Vec::new();
        write_str(&mut buf, "/nix/store/p").unwrap();
        assert!(read_string(&mut &buf[..5]).is_err());
    }
}
