//! A client of `nix-store --serve`, the protocol of Nix's legacy ssh
//! store: [`Command`]s and their encodings (free functions, for the
//! streaming threads of a copy) and a [`Client`] that runs exchanges over
//! any reader and writer (tested against scripted peers below). The
//! process it talks to is a [`nixpipe_host::store_connection::Connection`]'s.
//!
//! The server answers requests in the order they came, so a client may
//! write many requests before reading any reply: that is how a whole
//! closure goes out in one round trip, where Nix itself waits for each
//! path. Errors are not framed: the server prints them on stderr and hangs
//! up, so every I/O failure is reported with what the server said last.

use crate::nar::NarHash;
use crate::path_info::PathInfo;
use crate::store_path::StorePath;
use crate::wire::{self, read_string, read_strings, read_u64, write_str, write_strs, write_u64};
use std::collections::BTreeSet;
use std::io::{self, Read, Write};

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

pub fn write_query_valid_paths(w: &mut impl Write, paths: &[StorePath], substitute: bool) -> io::Result<()> {
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
    wire::read_list(r, |text| store_path(&text))
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
        self.read_valid_paths()
    }

    /// The answer to a QueryValidPaths written before.
    pub fn read_valid_paths(&mut self) -> io::Result<BTreeSet<StorePath>> {
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
        assert_eq!(c.query_closure(std::slice::from_ref(&a)).unwrap(), Closure::Complete(vec![a.clone(), b]));
        let mut expected = Vec::new();
        write_query_valid_paths(&mut expected, std::slice::from_ref(&a), false).unwrap();
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
