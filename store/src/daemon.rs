//! A client of the Nix daemon's worker protocol, what `nix-daemon --stdio`
//! (the ssh-ng:// store) and the daemon's socket speak: the handshake, the
//! daemon's log and error frames, and the few operations a copy needs.
//! Like [`crate::serve`], every request may be written before any reply is
//! read: the daemon answers them in order.
//!
//! Read from Nix's own sources (worker-protocol.hh, daemon.cc,
//! remote-store.cc): every operation's reply is preceded by `STDERR_*`
//! frames that end in `STDERR_LAST` (the reply follows) or `STDERR_ERROR`
//! (the operation failed; the connection goes on).

use crate::nar::NarHash;
use crate::path_info::PathInfo;
use crate::store_path::StorePath;
use crate::wire::{self, read_string, read_strings, read_u64, write_str, write_strs, write_u64};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{self, Read, Write};

const CLIENT_MAGIC: u64 = 0x6e69_7863;
const SERVER_MAGIC: u64 = 0x6478_696f;

/// 1.37 (Nix 2.24 to 2.29): the newest version before the feature
/// exchange of 1.38, whose answer we would have to wait for. Knowing the
/// version we send is at most 1.37, the whole handshake goes out at once.
const OURS: Version = Version(0x125);

/// A worker protocol version, `major << 8 | minor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(u64);

impl Version {
    /// 1.32 (Nix 2.4): the oldest with AddMultipleToStore.
    pub const OLDEST: Version = Version(0x120);

    fn minor(self) -> u64 {
        self.0 & 0xff
    }

    fn at_least(self, minor: u64) -> bool {
        self.minor() >= minor
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.0 >> 8, self.minor())
    }
}

/// The operations nixpipe uses, by their number on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
enum Op {
    QueryPathInfo = 26,
    QueryValidPaths = 31,
    NarFromPath = 38,
    AddMultipleToStore = 44,
}

impl Op {
    fn write(self, w: &mut impl Write) -> io::Result<()> {
        write_u64(w, self as u64)
    }
}

/// The frames a daemon sends before each reply.
mod frame {
    pub(crate) const NEXT: u64 = 0x6f6c_6d67;
    pub(crate) const READ: u64 = 0x6461_7461;
    pub(crate) const WRITE: u64 = 0x6461_7416;
    pub(crate) const LAST: u64 = 0x616c_7473;
    pub(crate) const ERROR: u64 = 0x6378_7470;
    pub(crate) const START_ACTIVITY: u64 = 0x5354_5254;
    pub(crate) const STOP_ACTIVITY: u64 = 0x5354_4f50;
    pub(crate) const RESULT: u64 = 0x5253_4c54;
}

/// An operation the daemon refused, in its own words (first line, without
/// its colours). The connection is still good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refusal {}

impl Refusal {
    /// The refusal inside an I/O error, if that is what it is.
    pub fn of(error: &io::Error) -> Option<&Refusal> {
        error.get_ref().and_then(|e| e.downcast_ref::<Refusal>())
    }

    fn from_message(message: &str) -> io::Error {
        let text = strip_colours(message);
        let text = text.trim().strip_prefix("error: ").unwrap_or(text.trim());
        let line = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ");
        io::Error::other(Refusal(line))
    }
}

/// Nix's messages carry ANSI colours around the names they quote.
pub fn strip_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        // CSI: ESC [ parameters, then one final letter.
        if chars.next() == Some('[') {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        }
    }
    out
}

/// What the daemon said of itself in the handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The version both sides use: the lower of the two.
    pub version: Version,
    /// The daemon's Nix version (1.33 and later).
    pub nix_version: Option<String>,
    /// Whether it trusts us (1.35 and later).
    pub trusted: Option<bool>,
}

/// The client's half of the handshake, all of it: the magic, our version,
/// no CPU affinity, no reserved space.
pub fn write_hello(w: &mut impl Write) -> io::Result<()> {
    write_u64(w, CLIENT_MAGIC)?;
    write_u64(w, OURS.0)?;
    write_u64(w, 0)?;
    write_u64(w, 0)
}

/// The daemon's half, checked, up to the end of its startup messages.
pub fn read_hello(r: &mut impl Read) -> io::Result<Hello> {
    let magic = read_u64(r)?;
    if magic != SERVER_MAGIC {
        return Err(wire::invalid(format!("greeting {magic:#x}")));
    }
    let theirs = Version(read_u64(r)?);
    if theirs.0 >> 8 != OURS.0 >> 8 || theirs < Version::OLDEST {
        let message = match theirs.0 >> 8 > OURS.0 >> 8 {
            true => format!("speaks worker protocol {theirs}, newer than the {}.x nixpipe speaks", OURS.0 >> 8),
            false => {
                format!(
                    "speaks worker protocol {theirs}; nixpipe needs {} or newer (Nix 2.4 or newer)",
                    Version::OLDEST
                )
            }
        };
        return Err(io::Error::new(io::ErrorKind::Unsupported, message));
    }
    let version = theirs.min(OURS);
    let nix_version = match version.at_least(33) {
        true => Some(read_string(r)?),
        false => None,
    };
    let trusted = match version.at_least(35) {
        true => match read_u64(r)? {
            0 => None,
            1 => Some(true),
            2 => Some(false),
            other => return Err(wire::invalid(format!("trust {other}"))),
        },
        false => None,
    };
    read_frames(r, version)?;
    Ok(Hello { version, nix_version, trusted })
}

/// Reads the frames before a reply: log lines and activities are passed
/// over, an error becomes a [`Refusal`], `LAST` means the reply follows.
pub fn read_frames(r: &mut impl Read, version: Version) -> io::Result<()> {
    loop {
        match read_u64(r)? {
            frame::LAST => return Ok(()),
            frame::NEXT => drop(read_string(r)?),
            frame::START_ACTIVITY => {
                let _id_level_type = (read_u64(r)?, read_u64(r)?, read_u64(r)?);
                read_string(r)?;
                skip_fields(r)?;
                read_u64(r)?; // parent
            }
            frame::STOP_ACTIVITY => drop(read_u64(r)?),
            frame::RESULT => {
                let _id_type = (read_u64(r)?, read_u64(r)?);
                skip_fields(r)?;
            }
            frame::ERROR => return Err(read_error(r, version)?),
            frame::READ | frame::WRITE => return Err(wire::invalid("request for data nixpipe never offered".into())),
            other => return Err(wire::invalid(format!("frame {other:#x}"))),
        }
    }
}

fn skip_fields(r: &mut impl Read) -> io::Result<()> {
    for _ in 0..read_u64(r)?.min(wire::MAX_LIST) {
        match read_u64(r)? {
            0 => drop(read_u64(r)?),
            1 => drop(read_string(r)?),
            other => return Err(wire::invalid(format!("field type {other}"))),
        }
    }
    Ok(())
}

/// An error frame's message: structured from 1.26 on.
fn read_error(r: &mut impl Read, version: Version) -> io::Result<io::Error> {
    if !version.at_least(26) {
        let message = read_string(r)?;
        read_u64(r)?; // exit status
        return Ok(Refusal::from_message(&message));
    }
    let kind = read_string(r)?;
    if kind != "Error" {
        return Err(wire::invalid(format!("error type {kind:?}")));
    }
    read_u64(r)?; // level
    read_string(r)?; // name, unused
    let message = read_string(r)?;
    if read_u64(r)? != 0 {
        return Err(wire::invalid("error position".into()));
    }
    for _ in 0..read_u64(r)?.min(wire::MAX_LIST) {
        read_u64(r)?; // a trace's position, always none
        read_string(r)?;
    }
    Ok(Refusal::from_message(&message))
}

/// A store path the daemon sent; anything else breaks the protocol.
fn store_path(text: &str) -> io::Result<StorePath> {
    StorePath::parse(text).map_err(|e| wire::invalid(format!("{text:?} ({e})")))
}

fn read_store_paths(r: &mut impl Read) -> io::Result<Vec<StorePath>> {
    wire::read_list(r, |text| store_path(&text))
}

/// narHash as the daemon sends it: the digest alone, base 16.
fn read_nar_hash(r: &mut impl Read) -> io::Result<NarHash> {
    let text = read_string(r)?;
    let prefixed = if text.contains(':') || text.contains('-') { text.clone() } else { format!("sha256:{text}") };
    NarHash::parse(&prefixed).map_err(wire::invalid)
}

/// A path info after its path, in the layout of 1.16 and later.
fn read_path_info(r: &mut impl Read, path: StorePath) -> io::Result<PathInfo> {
    let deriver = Some(read_string(r)?).filter(|s| !s.is_empty()).map(|s| store_path(&s)).transpose()?;
    let nar_hash = read_nar_hash(r)?;
    let references = read_store_paths(r)?;
    let _registration_time = read_u64(r)?;
    let nar_size = read_u64(r)?;
    let _ultimate = read_u64(r)?;
    let sigs = read_strings(r)?;
    let ca = Some(read_string(r)?).filter(|s| !s.is_empty());
    Ok(PathInfo { path, deriver, references, nar_size, nar_hash, ca, sigs })
}

/// A path info in the same layout, its path first, as AddMultipleToStore
/// takes it before each NAR. Never ultimate: it was built elsewhere.
pub fn write_path_info(w: &mut impl Write, info: &PathInfo) -> io::Result<()> {
    write_str(w, info.path.as_str())?;
    write_str(w, info.deriver.as_ref().map_or("", StorePath::as_str))?;
    write_str(w, &info.nar_hash.base16())?;
    write_strs(w, &info.references)?;
    write_u64(w, 0)?; // registration time: now
    write_u64(w, info.nar_size)?;
    write_u64(w, 0)?; // ultimate
    write_strs(w, &info.sigs)?;
    write_str(w, info.ca.as_deref().unwrap_or(""))
}

/// Asks which of `paths` are valid (substituting the others first, with
/// `substitute`); the same in every version we speak.
pub fn write_query_valid_paths(w: &mut impl Write, paths: &[StorePath], substitute: bool) -> io::Result<()> {
    Op::QueryValidPaths.write(w)?;
    write_strs(w, paths)?;
    write_u64(w, substitute as u64)
}

/// Asks for the NAR of `path`: frames, then exactly its narSize bytes.
pub fn write_nar_from_path(w: &mut impl Write, path: &StorePath) -> io::Result<()> {
    Op::NarFromPath.write(w)?;
    write_str(w, path.as_str())
}

/// Starts AddMultipleToStore: what follows is a [`Framed`] stream of the
/// count, then each path's info and NAR, and the daemon answers once, when
/// the stream ended. Signatures are checked only where the daemon does not
/// trust us (it ignores our "don't" then).
pub fn write_add_multiple(w: &mut impl Write) -> io::Result<()> {
    Op::AddMultipleToStore.write(w)?;
    write_u64(w, 0)?; // repair: no
    write_u64(w, 1) // don't check signatures
}

/// The protocol's exchanges, over any reader and writer, at the version
/// the handshake gave.
pub struct Client<R, W> {
    pub replies: R,
    pub requests: W,
    pub version: Version,
}

impl<R: Read, W: Write> Client<R, W> {
    /// The subset of `paths` valid in the store. With `substitute`, the
    /// daemon first tries to fetch the others from its substituters.
    pub fn query_valid_paths(&mut self, paths: &[StorePath], substitute: bool) -> io::Result<BTreeSet<StorePath>> {
        write_query_valid_paths(&mut self.requests, paths, substitute)?;
        self.requests.flush()?;
        self.read_valid_paths()
    }

    /// The answer to a QueryValidPaths written before.
    pub fn read_valid_paths(&mut self) -> io::Result<BTreeSet<StorePath>> {
        read_frames(&mut self.replies, self.version)?;
        Ok(read_store_paths(&mut self.replies)?.into_iter().collect())
    }

    /// Path infos of `paths`, all asked at once; `None` for a path that is
    /// not valid there.
    pub fn query_path_infos(&mut self, paths: &[StorePath]) -> io::Result<Vec<Option<PathInfo>>> {
        for path in paths {
            Op::QueryPathInfo.write(&mut self.requests)?;
            write_str(&mut self.requests, path.as_str())?;
        }
        self.requests.flush()?;
        paths
            .iter()
            .map(|path| {
                read_frames(&mut self.replies, self.version)?;
                match read_u64(&mut self.replies)? {
                    0 => Ok(None),
                    _ => read_path_info(&mut self.replies, path.clone()).map(Some),
                }
            })
            .collect()
    }

    /// The infos of `closure`, every path valid: all asked at once.
    pub fn path_infos_of(&mut self, closure: &[StorePath]) -> io::Result<Result<Vec<PathInfo>, StorePath>> {
        let infos = self.query_path_infos(closure)?;
        Ok(closure.iter().zip(infos).map(|(path, info)| info.ok_or_else(|| path.clone())).collect())
    }

    /// The closure of `paths` with every path's info, walked level by
    /// level: one round trip per level of references, every path of a
    /// level asked at once. The daemon has no closure query.
    pub fn closure(&mut self, paths: &[StorePath]) -> io::Result<Result<Vec<PathInfo>, StorePath>> {
        let mut infos: BTreeMap<StorePath, PathInfo> = BTreeMap::new();
        let mut level: Vec<StorePath> = paths.to_vec();
        while !level.is_empty() {
            let mut next = BTreeSet::new();
            for (path, info) in level.iter().zip(self.query_path_infos(&level)?) {
                let Some(info) = info else { return Ok(Err(path.clone())) };
                next.extend(info.references.iter().filter(|r| !infos.contains_key(*r) && **r != info.path).cloned());
                infos.insert(path.clone(), info);
            }
            level = next.into_iter().filter(|p| !infos.contains_key(p)).collect();
        }
        Ok(Ok(infos.into_values().collect()))
    }
}

/// The framing of a data stream inside the protocol (FramedSink in Nix):
/// chunks, each its length and its bytes, ended by an empty one.
pub struct Framed<W: Write> {
    to: W,
    buf: Vec<u8>,
}

/// One frame's bytes at the most: large, so that a NAR moves in few frames.
const FRAME: usize = 256 * 1024;

impl<W: Write> Framed<W> {
    pub fn new(to: W) -> Framed<W> {
        Framed { to, buf: Vec::with_capacity(FRAME) }
    }

    fn emit(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        write_u64(&mut self.to, bytes.len() as u64)?;
        self.to.write_all(bytes)
    }

    /// Ends the stream: what is buffered, then the empty frame. Returns
    /// the writer, flushed.
    pub fn finish(mut self) -> io::Result<W> {
        let buf = std::mem::take(&mut self.buf);
        self.emit(&buf)?;
        write_u64(&mut self.to, 0)?;
        self.to.flush()?;
        Ok(self.to)
    }
}

impl<W: Write> Write for Framed<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        // A large write goes out in frames of its own, not copied; no
        // larger than FRAME, which the daemon holds in memory whole.
        if self.buf.is_empty() && bytes.len() >= FRAME {
            self.emit(&bytes[..FRAME])?;
            return Ok(FRAME);
        }
        let n = bytes.len().min(FRAME - self.buf.len());
        self.buf.extend_from_slice(&bytes[..n]);
        if self.buf.len() == FRAME {
            let buf = std::mem::take(&mut self.buf);
            self.emit(&buf)?;
            self.buf = buf;
            self.buf.clear();
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        let buf = std::mem::take(&mut self.buf);
        self.emit(&buf)?;
        self.buf = buf;
        self.buf.clear();
        self.to.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(name: &str) -> StorePath {
        StorePath::parse(&format!("/nix/store/36m5mhfn262qgji13vrgp907an576qjz-{name}")).unwrap()
    }

    fn info(name: &str, references: &[&str]) -> PathInfo {
        PathInfo {
            path: path(name),
            deriver: None,
            references: references.iter().map(|r| path(r)).collect(),
            nar_size: 8,
            nar_hash: NarHash::of(name.as_bytes()),
            ca: None,
            sigs: vec!["k:c2ln".into()],
        }
    }

    /// A daemon's greeting at `version`, as Nix 2.34's daemon sends it.
    fn greeting(version: u64) -> Vec<u8> {
        let mut buf = Vec::new();
        write_u64(&mut buf, SERVER_MAGIC).unwrap();
        write_u64(&mut buf, version).unwrap();
        write_str(&mut buf, "2.34.1").unwrap();
        write_u64(&mut buf, 1).unwrap();
        write_u64(&mut buf, frame::NEXT).unwrap();
        write_str(&mut buf, "a startup message").unwrap();
        write_u64(&mut buf, frame::LAST).unwrap();
        buf
    }

    fn error_frame(message: &str) -> Vec<u8> {
        let mut buf = Vec::new();
        write_u64(&mut buf, frame::ERROR).unwrap();
        write_str(&mut buf, "Error").unwrap();
        write_u64(&mut buf, 0).unwrap();
        write_str(&mut buf, "Error").unwrap();
        write_str(&mut buf, message).unwrap();
        write_u64(&mut buf, 0).unwrap();
        write_u64(&mut buf, 1).unwrap();
        write_u64(&mut buf, 0).unwrap();
        write_str(&mut buf, "while adding").unwrap();
        buf
    }

    fn info_reply(info: &PathInfo) -> Vec<u8> {
        let mut buf = Vec::new();
        write_u64(&mut buf, frame::LAST).unwrap();
        write_u64(&mut buf, 1).unwrap();
        write_path_info(&mut buf, info).unwrap();
        // The reply has no path: it was in the request.
        let mut path = Vec::new();
        write_str(&mut path, info.path.as_str()).unwrap();
        buf.drain(16..16 + path.len());
        buf
    }

    #[test]
    fn the_handshake_uses_the_lower_version_and_reads_trust() {
        let hello = read_hello(&mut &greeting(0x126)[..]).unwrap();
        assert_eq!(hello.version, OURS);
        assert_eq!(hello.nix_version.as_deref(), Some("2.34.1"));
        assert_eq!(hello.trusted, Some(true));
        let mut ours = Vec::new();
        write_hello(&mut ours).unwrap();
        assert_eq!(ours.len(), 32, "magic, version, affinity, reserve space: nothing to wait for");
    }

    #[test]
    fn a_daemon_older_than_2_4_is_refused() {
        let mut buf = Vec::new();
        write_u64(&mut buf, SERVER_MAGIC).unwrap();
        write_u64(&mut buf, 0x115).unwrap();
        let err = read_hello(&mut &buf[..]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Unsupported);
        assert!(err.to_string().contains("worker protocol 1.21"), "{err}");
    }

    #[test]
    fn a_daemon_newer_than_ours_is_named_as_newer() {
        let mut buf = Vec::new();
        write_u64(&mut buf, SERVER_MAGIC).unwrap();
        write_u64(&mut buf, 0x200).unwrap();
        let err = read_hello(&mut &buf[..]).unwrap_err().to_string();
        assert!(err.ends_with("speaks worker protocol 2.0, newer than the 1.x nixpipe speaks"), "{err}");
    }

    #[test]
    fn an_error_frame_is_a_refusal_in_one_line_without_colours() {
        let reply =
            error_frame("hash mismatch importing path '\x1b[35;1m/nix/store/x\x1b[0m';\n  specified: a\n  got: b");
        let err = read_frames(&mut &reply[..], OURS).unwrap_err();
        let refusal = Refusal::of(&err).expect("a refusal");
        assert_eq!(refusal.0, "hash mismatch importing path '/nix/store/x'; specified: a got: b");
    }

    #[test]
    fn activities_and_log_lines_are_passed_over() {
        let mut reply = Vec::new();
        write_u64(&mut reply, frame::START_ACTIVITY).unwrap();
        for n in [7, 3, 100] {
            write_u64(&mut reply, n).unwrap();
        }
        write_str(&mut reply, "copying").unwrap();
        write_u64(&mut reply, 2).unwrap();
        write_u64(&mut reply, 0).unwrap();
        write_u64(&mut reply, 42).unwrap();
        write_u64(&mut reply, 1).unwrap();
        write_str(&mut reply, "s").unwrap();
        write_u64(&mut reply, 0).unwrap();
        write_u64(&mut reply, frame::STOP_ACTIVITY).unwrap();
        write_u64(&mut reply, 7).unwrap();
        write_u64(&mut reply, frame::LAST).unwrap();
        let mut r = &reply[..];
        read_frames(&mut r, OURS).unwrap();
        assert!(r.is_empty());
    }

    #[test]
    fn a_closure_is_walked_one_round_trip_per_level() {
        let (a, b, c) = (info("a", &["b", "a"]), info("b", &["c"]), info("c", &[]));
        let replies = [info_reply(&a), info_reply(&b), info_reply(&c)].concat();
        let mut client = Client { replies: &replies[..], requests: Vec::new(), version: OURS };
        let mut closure = client.closure(&[path("a")]).unwrap().unwrap();
        closure.sort_by(|x, y| x.path.cmp(&y.path));
        assert_eq!(closure, [a, b, c]);
    }

    #[test]
    fn a_missing_path_is_named() {
        let mut replies = Vec::new();
        write_u64(&mut replies, frame::LAST).unwrap();
        write_u64(&mut replies, 0).unwrap();
        let mut client = Client { replies: &replies[..], requests: Vec::new(), version: OURS };
        assert_eq!(client.closure(&[path("gone")]).unwrap(), Err(path("gone")));
    }

    #[test]
    fn framed_streams_end_with_an_empty_frame_and_survive_any_write_sizes() {
        let data: Vec<u8> = (0..FRAME * 2 + 100).map(|i| i as u8).collect();
        let mut framed = Framed::new(Vec::new());
        framed.write_all(&data[..10]).unwrap();
        framed.write_all(&data[10..]).unwrap();
        let out = framed.finish().unwrap();
        let (mut r, mut got) = (&out[..], Vec::new());
        loop {
            let len = read_u64(&mut r).unwrap() as usize;
            if len == 0 {
                break;
            }
            assert!(len <= FRAME);
            got.extend_from_slice(&r[..len]);
            r = &r[len..];
        }
        assert!(r.is_empty());
        assert_eq!(got, data);
    }
}
