//! NAR streams: their sha256 (the narHash a store records), and relaying
//! one from a source to a target while checking it.

use base64::Engine;
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::{self, Read, Write};
use std::path::Path;

/// The sha256 of a NAR, as stores record it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NarHash([u8; 32]);

impl NarHash {
    /// Takes every form Nix prints: `sha256:<nix32>`, `sha256:<base16>` and
    /// SRI `sha256-<base64>`.
    pub fn parse(s: &str) -> Result<NarHash, String> {
        let bytes = if let Some(digest) = s.strip_prefix("sha256:") {
            match digest.len() {
                52 => nix_base32::from_nix_base32(digest),
                64 => decode_base16(digest),
                _ => None,
            }
        } else if let Some(digest) = s.strip_prefix("sha256-") {
            base64::engine::general_purpose::STANDARD.decode(digest).ok()
        } else {
            None
        };
        bytes
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .map(NarHash)
            .ok_or_else(|| format!("not a sha256 NAR hash: '{s}'"))
    }

    pub fn of(bytes: &[u8]) -> NarHash {
        NarHash(Sha256::digest(bytes).into())
    }

    /// The digest alone, in Nix's base 32.
    pub(crate) fn nix32(&self) -> String {
        nix_base32::to_nix_base32(&self.0)
    }

    /// The digest alone, in base 16, as the daemon protocol carries it.
    pub(crate) fn base16(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// `sha256:<nix32>`, the form in narinfo files and signatures.
impl fmt::Display for NarHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.nix32())
    }
}

fn decode_base16(s: &str) -> Option<Vec<u8>> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// Why a relay stopped.
#[derive(Debug)]
pub enum RelayError {
    Read(io::Error),
    Write(io::Error),
    /// The bytes were not the NAR the source described.
    Mismatch(NarHash),
    /// Fewer bytes than its narSize (the target checks the rest).
    Size {
        seen: u64,
        size: u64,
    },
}

/// Who checks a NAR's hash on its way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// We do, and hold its last bytes back until it matches: for a binary
    /// cache, where nobody else would.
    Here,
    /// The receiving Nix store does: it hashes every NAR before it
    /// registers the path (serve and daemon protocol alike). We only count
    /// its bytes, so that no more and no fewer than its narSize go out.
    AtTarget,
}

/// Copies one NAR from `from` to `to`, checked as `check` says (see
/// [`Checked`]). It follows the NAR's structure, so it stops where the NAR
/// ends whatever its narSize says: a source whose file changed size since
/// it was registered can neither leave us waiting for bytes it never sends
/// nor make us take its next reply for the rest of this NAR. Bytes beyond
/// `size` are read and counted, never passed on.
pub fn relay(
    from: &mut impl Read,
    to: &mut impl Write,
    size: u64,
    expected: &NarHash,
    check: Check,
    sent: impl FnMut(u64),
) -> Result<(), RelayError> {
    let mut checked = Checked::new(to, size, check, sent);
    let mut nar = Follow { from, to: &mut checked, seen: 0, size, buf: vec![0; CHUNK] };
    nar.archive()?;
    let seen = nar.seen;
    if seen > size {
        return Err(RelayError::Size { seen, size });
    }
    checked.finish(expected)
}

/// One NAR read token by token: every byte counted, those within its
/// recorded size passed on.
struct Follow<'a, R: Read, W: Write> {
    from: &'a mut R,
    to: &'a mut W,
    seen: u64,
    size: u64,
    buf: Vec<u8>,
}

impl<R: Read, W: Write> Follow<'_, R, W> {
    /// The whole NAR, checked as Nix's parser checks it, without
    /// recursion: a NAR may nest directories as deep as its sender likes.
    fn archive(&mut self) -> Result<(), RelayError> {
        self.expect(b"nix-archive-1")?;
        // The open directories, innermost last, each with the name of its
        // last entry: entries come sorted, each once.
        let mut open: Vec<Option<Vec<u8>>> = Vec::new();
        self.node(&mut open)?;
        while let Some(last) = open.last_mut() {
            match self.token()?.as_slice() {
                b")" => {
                    open.pop();
                    // A directory inside another ends its entry too.
                    if !open.is_empty() {
                        self.expect(b")")?;
                    }
                }
                b"entry" => {
                    self.expect(b"(")?;
                    self.expect(b"name")?;
                    let name = self.token()?;
                    check_entry_name(&name, last.as_deref())?;
                    *last = Some(name);
                    self.expect(b"node")?;
                    if !self.node(&mut open)? {
                        self.expect(b")")?;
                    }
                }
                _ => return Err(not_a_nar("a directory entry or its end")),
            }
        }
        Ok(())
    }

    /// One node: a file or symlink is read to its end (false); a directory
    /// is opened, its entries left to [`Follow::archive`] (true).
    fn node(&mut self, open: &mut Vec<Option<Vec<u8>>>) -> Result<bool, RelayError> {
        self.expect(b"(")?;
        self.expect(b"type")?;
        match self.token()?.as_slice() {
            b"regular" => {
                let mut next = self.token()?;
                if next == b"executable" {
                    self.expect(b"")?;
                    next = self.token()?;
                }
                if next != b"contents" {
                    return Err(not_a_nar("a file's contents"));
                }
                self.contents()?;
            }
            b"symlink" => {
                self.expect(b"target")?;
                self.token()?;
            }
            b"directory" => {
                open.push(None);
                return Ok(true);
            }
            _ => return Err(not_a_nar("a regular file, symlink or directory")),
        }
        self.expect(b")")?;
        Ok(false)
    }

    fn expect(&mut self, word: &[u8]) -> Result<(), RelayError> {
        match self.token()? == word {
            true => Ok(()),
            false => Err(not_a_nar(&format!("{:?}", String::from_utf8_lossy(word)))),
        }
    }

    /// A string of the NAR's structure: a word, a name or a link target.
    fn token(&mut self) -> Result<Vec<u8>, RelayError> {
        let len = self.length()?;
        if len > crate::wire::MAX_STRING {
            return Err(not_a_nar(&format!("a name of at most {} bytes, not {len}", crate::wire::MAX_STRING)));
        }
        let mut token = vec![0; len as usize + crate::wire::padding(len)];
        self.read(&mut token)?;
        token.truncate(len as usize);
        Ok(token)
    }

    /// A file's contents, in chunks.
    fn contents(&mut self) -> Result<(), RelayError> {
        let len = self.length()?;
        let mut left = len + crate::wire::padding(len) as u64;
        let mut buf = std::mem::take(&mut self.buf);
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            self.read(&mut buf[..want])?;
            left -= want as u64;
        }
        self.buf = buf;
        Ok(())
    }

    fn length(&mut self) -> Result<u64, RelayError> {
        let mut len = [0; 8];
        self.read(&mut len)?;
        Ok(u64::from_le_bytes(len))
    }

    /// Fills `buf` from the source and passes what fits in the size.
    fn read(&mut self, buf: &mut [u8]) -> Result<(), RelayError> {
        self.from.read_exact(buf).map_err(RelayError::Read)?;
        let fits = self.size.saturating_sub(self.seen).min(buf.len() as u64) as usize;
        self.seen += buf.len() as u64;
        self.to.write_all(&buf[..fits]).map_err(RelayError::Write)
    }
}

/// A directory entry's name as Nix's NAR parser takes it: not empty, not
/// `.` or `..`, without `/` or NUL, after the entry before it (sorted, each
/// once). Anything else could write outside its directory, or twice.
fn check_entry_name(name: &[u8], previous: Option<&[u8]>) -> Result<(), RelayError> {
    let shown = String::from_utf8_lossy(name);
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
        return Err(not_a_nar(&format!("an entry name, not {shown:?}")));
    }
    if previous.is_some_and(|previous| name <= previous) {
        return Err(not_a_nar(&format!("entries sorted and each once, not {shown:?} again or out of order")));
    }
    Ok(())
}

fn not_a_nar(expected: &str) -> RelayError {
    RelayError::Read(io::Error::new(io::ErrorKind::InvalidData, format!("not a NAR: expected {expected}")))
}

/// Writes the NAR of `path` (as [`dump`]) to `to`, checking it as
/// [`Checked`] does: a file changed on disk is caught like a corrupt one.
pub fn send_dump(
    path: &Path,
    to: &mut impl Write,
    size: u64,
    expected: &NarHash,
    check: Check,
    sent: impl FnMut(u64),
) -> Result<(), RelayError> {
    let mut checked = Checked::new(to, size, check, sent);
    match dump(path, &mut checked) {
        Err(e) if checked.failed_writing => Err(RelayError::Write(e)),
        Err(e) => Err(RelayError::Read(e)),
        Ok(()) => checked.finish(expected),
    }
}

const CHUNK: usize = 256 * 1024;
/// What is held back: any tail will do, since a NAR missing its last bytes
/// is incomplete; a small one is cheap to move.
const HOLD: usize = 4096;

/// A writer that never passes more than `size` bytes and, with
/// [`Check::Here`], hashes what passes and holds the last bytes back until
/// [`Checked::finish`] knows the NAR is the one expected: a target never
/// receives the whole of a NAR that is wrong, so it cannot register it,
/// whatever checks it does or skips.
struct Checked<'a, W: Write, F: FnMut(u64)> {
    to: &'a mut W,
    /// None: the target checks.
    hasher: Option<Sha256>,
    held: Vec<u8>,
    size: u64,
    seen: u64,
    sent: F,
    failed_writing: bool,
}

impl<'a, W: Write, F: FnMut(u64)> Checked<'a, W, F> {
    fn new(to: &'a mut W, size: u64, check: Check, sent: F) -> Self {
        Checked {
            to,
            hasher: (check == Check::Here).then(Sha256::new),
            held: Vec::with_capacity(if check == Check::Here { CHUNK + HOLD } else { 0 }),
            size,
            seen: 0,
            sent,
            failed_writing: false,
        }
    }

    fn pass(&mut self, len: usize) -> io::Result<()> {
        let result = self.to.write_all(&self.held[..len]);
        self.failed_writing = result.is_err();
        result?;
        (self.sent)(len as u64);
        self.held.drain(..len);
        Ok(())
    }

    fn finish(mut self, expected: &NarHash) -> Result<(), RelayError> {
        match self.hasher.take().map(|hasher| NarHash(hasher.finalize().into())) {
            Some(got) if self.seen != self.size || got != *expected => return Err(RelayError::Mismatch(got)),
            None if self.seen != self.size => return Err(RelayError::Size { seen: self.seen, size: self.size }),
            _ => {}
        }
        self.pass(self.held.len()).map_err(RelayError::Write)
    }
}

impl<W: Write, F: FnMut(u64)> Write for Checked<'_, W, F> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.seen + buf.len() as u64 > self.size {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "the NAR is larger than its recorded size"));
        }
        self.seen += buf.len() as u64;
        let Some(hasher) = &mut self.hasher else {
            // Nothing to hold back: straight through, never copied.
            let result = self.to.write_all(buf);
            self.failed_writing = result.is_err();
            result?;
            (self.sent)(buf.len() as u64);
            return Ok(buf.len());
        };
        hasher.update(buf);
        self.held.extend_from_slice(buf);
        if self.held.len() >= CHUNK + HOLD {
            self.pass(self.held.len() - HOLD)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes the NAR serialisation of `path`, byte for byte what
/// `nix-store --dump` writes: directory entries sorted bytewise, a file
/// executable when its owner may execute it, symlinks as their target.
pub fn dump(path: &Path, out: &mut impl Write) -> io::Result<()> {
    str(out, b"nix-archive-1")?;
    node(path, out)
}

fn node(path: &Path, out: &mut impl Write) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(path)?;
    str(out, b"(")?;
    let kind = meta.file_type();
    if kind.is_symlink() {
        strs(out, &[b"type", b"symlink", b"target", std::fs::read_link(path)?.as_os_str().as_bytes()])?;
    } else if kind.is_file() {
        strs(out, &[b"type", b"regular"])?;
        if meta.permissions().mode() & 0o100 != 0 {
            strs(out, &[b"executable", b""])?;
        }
        str(out, b"contents")?;
        contents(path, meta.len(), out)?;
    } else if kind.is_dir() {
        strs(out, &[b"type", b"directory"])?;
        let mut names: Vec<std::ffi::OsString> =
            std::fs::read_dir(path)?.map(|e| e.map(|e| e.file_name())).collect::<io::Result<_>>()?;
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            strs(out, &[b"entry", b"(", b"name", name.as_bytes(), b"node"])?;
            node(&path.join(&name), out)?;
            str(out, b")")?;
        }
    } else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: not a file, directory or symlink", path.display()),
        ));
    }
    str(out, b")")
}

/// A file's contents as a NAR string: its length, the bytes, padding.
fn contents(path: &Path, len: u64, out: &mut impl Write) -> io::Result<()> {
    crate::wire::write_u64(out, len)?;
    let mut file = std::fs::File::open(path)?.take(len);
    let mut buf = vec![0; CHUNK.min(len as usize)];
    let mut left = len;
    while left > 0 {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{}: shorter than its size", path.display()),
            ));
        }
        out.write_all(&buf[..n])?;
        left -= n as u64;
    }
    crate::wire::write_padding(out, len)
}

fn str(out: &mut impl Write, s: &[u8]) -> io::Result<()> {
    crate::wire::write_bytes(out, s)
}

fn strs(out: &mut impl Write, items: &[&[u8]]) -> io::Result<()> {
    items.iter().try_for_each(|s| str(out, s))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_SHA256_NIX32: &str = "sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";

    #[test]
    fn parses_every_form_nix_prints() {
        let nix32 = NarHash::parse(EMPTY_SHA256_NIX32).unwrap();
        let hex = NarHash::parse("sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855").unwrap();
        let sri = NarHash::parse("sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=").unwrap();
        assert_eq!(nix32, NarHash::of(b""));
        assert_eq!(hex, nix32);
        assert_eq!(sri, nix32);
        assert_eq!(nix32.to_string(), EMPTY_SHA256_NIX32);
    }

    #[test]
    fn refuses_other_hashes() {
        for bad in ["md5:abc", "sha256:xyz", "sha256:", "", "sha512-AAAA"] {
            assert!(NarHash::parse(bad).is_err(), "{bad}");
        }
    }

    /// The NAR of one regular file holding `contents`.
    fn nar_of_file(contents: &[u8]) -> Vec<u8> {
        let mut nar = Vec::new();
        for word in ["nix-archive-1", "(", "type", "regular", "contents"] {
            crate::wire::write_str(&mut nar, word).unwrap();
        }
        crate::wire::write_bytes(&mut nar, contents).unwrap();
        crate::wire::write_str(&mut nar, ")").unwrap();
        nar
    }

    /// A NAR, then the bytes of whatever the source says next.
    fn stream(nar: &[u8], next: &[u8]) -> Vec<u8> {
        [nar, next].concat()
    }

    #[test]
    fn relays_one_nar_and_leaves_the_next_reply() {
        let nar = nar_of_file(&[7; 600_000]);
        let data = stream(&nar, b"next");
        let (mut from, mut to) = (&data[..], Vec::new());
        relay(&mut from, &mut to, nar.len() as u64, &NarHash::of(&nar), Check::Here, |_| {}).unwrap();
        assert_eq!(to, nar);
        assert_eq!(from, b"next");
    }

    #[test]
    fn relays_directories_executables_and_symlinks_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/run"), "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path().join("d/run"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("run", dir.path().join("d/link")).unwrap();
        let mut nar = Vec::new();
        dump(&dir.path().join("d"), &mut nar).unwrap();
        let mut to = Vec::new();
        relay(&mut &nar[..], &mut to, nar.len() as u64, &NarHash::of(&nar), Check::Here, |_| {}).unwrap();
        assert_eq!(to, nar);
    }

    #[test]
    fn never_writes_the_end_of_a_wrong_nar() {
        let nar = nar_of_file(&[1; 300_000]);
        let mut to = Vec::new();
        let err =
            relay(&mut &nar[..], &mut to, nar.len() as u64, &NarHash::of(b"other"), Check::Here, |_| {}).unwrap_err();
        assert!(matches!(err, RelayError::Mismatch(got) if got == NarHash::of(&nar)));
        assert!(to.len() < nar.len());
    }

    #[test]
    fn where_the_target_checks_bytes_pass_at_once_and_only_the_size_is_counted() {
        let nar = nar_of_file(&[1; 300_000]);
        let mut to = Vec::new();
        relay(&mut &nar[..], &mut to, nar.len() as u64, &NarHash::of(b"other"), Check::AtTarget, |_| {}).unwrap();
        assert_eq!(to, nar);
        let mut to = Vec::new();
        let mut checked = Checked::new(&mut to, 10, Check::AtTarget, |_| {});
        checked.write_all(b"12345").unwrap();
        assert!(matches!(checked.finish(&NarHash::of(b"")), Err(RelayError::Size { seen: 5, size: 10 })));
    }

    #[test]
    fn a_nar_shorter_than_its_size_ends_where_it_ends_without_waiting_for_more() {
        // A file that shrank since it was registered: the source sends the
        // short NAR and then its next reply, which must not be taken in.
        let nar = nar_of_file(b"shrunk");
        let data = stream(&nar, b"next reply");
        let mut from = &data[..];
        let size = nar.len() as u64 + 64;
        let err = relay(&mut from, &mut Vec::new(), size, &NarHash::of(b""), Check::AtTarget, |_| {}).unwrap_err();
        assert!(matches!(err, RelayError::Size { seen, size: s } if seen == nar.len() as u64 && s == size));
        assert_eq!(from, b"next reply");
    }

    #[test]
    fn a_nar_longer_than_its_size_is_read_to_its_end_and_never_passed_beyond_it() {
        let nar = nar_of_file(&[3; 1000]);
        let data = stream(&nar, b"next");
        let (mut from, mut to) = (&data[..], Vec::new());
        let err = relay(&mut from, &mut to, 100, &NarHash::of(b""), Check::AtTarget, |_| {}).unwrap_err();
        assert!(matches!(err, RelayError::Size { seen, size: 100 } if seen == nar.len() as u64));
        assert_eq!(to.len(), 100);
        assert_eq!(from, b"next");
    }

    #[test]
    fn dump_writes_what_nix_store_dump_writes() {
        // The NAR of a directory with an executable, a file and a symlink,
        // as `nix-store --dump` writes it.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("x");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("b"), "hi\n").unwrap();
        std::fs::write(root.join("a"), "").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root.join("a"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("b", root.join("c")).unwrap();
        let mut ours = Vec::new();
        dump(&root, &mut ours).unwrap();
        let mut expected = Vec::new();
        for s in [
            "nix-archive-1",
            "(",
            "type",
            "directory",
            "entry",
            "(",
            "name",
            "a",
            "node",
            "(",
            "type",
            "regular",
            "executable",
            "",
            "contents",
            "",
            ")",
            ")",
            "entry",
            "(",
            "name",
            "b",
            "node",
            "(",
            "type",
            "regular",
            "contents",
            "hi\n",
            ")",
            ")",
            "entry",
            "(",
            "name",
            "c",
            "node",
            "(",
            "type",
            "symlink",
            "target",
            "b",
            ")",
            ")",
            ")",
        ] {
            crate::wire::write_str(&mut expected, s).unwrap();
        }
        assert_eq!(ours, expected);
    }

    #[test]
    fn a_source_that_stops_mid_nar_is_a_read_error() {
        let nar = nar_of_file(&[5; 100]);
        let cut = &nar[..60];
        let err = relay(&mut &cut[..], &mut Vec::new(), nar.len() as u64, &NarHash::of(&nar), Check::AtTarget, |_| {})
            .unwrap_err();
        assert!(matches!(err, RelayError::Read(e) if e.kind() == io::ErrorKind::UnexpectedEof));
    }

    /// A NAR of a directory with these entries (each an empty file), in
    /// the order given.
    fn nar_of_dir(names: &[&[u8]]) -> Vec<u8> {
        let mut nar = Vec::new();
        strs(&mut nar, &[b"nix-archive-1", b"(", b"type", b"directory"]).unwrap();
        for name in names {
            strs(&mut nar, &[b"entry", b"(", b"name", name, b"node"]).unwrap();
            strs(&mut nar, &[b"(", b"type", b"regular", b"contents", b"", b")", b")"]).unwrap();
        }
        strs(&mut nar, &[b")"]).unwrap();
        nar
    }

    fn relayed_here(nar: &[u8]) -> Result<(), RelayError> {
        relay(&mut &nar[..], &mut Vec::new(), nar.len() as u64, &NarHash::of(nar), Check::Here, |_| {})
    }

    #[test]
    fn entries_are_checked_as_nix_checks_them() {
        assert!(relayed_here(&nar_of_dir(&[b"a", b"b"])).is_ok());
        let bad: [&[&[u8]]; 8] =
            [&[b".."], &[b"."], &[b"/"], &[b"a/b"], &[b"a\0b"], &[b""], &[b"a", b"a"], &[b"b", b"a"]];
        for names in bad {
            let err = relayed_here(&nar_of_dir(names)).unwrap_err();
            assert!(
                matches!(&err, RelayError::Read(e) if e.to_string().starts_with("not a NAR")),
                "{names:?}: {err:?}"
            );
        }
    }

    #[test]
    fn a_nar_nested_deeper_than_any_stack_is_followed_without_recursion() {
        let depth = 200_000;
        let mut nar = Vec::new();
        strs(&mut nar, &[b"nix-archive-1", b"(", b"type", b"directory"]).unwrap();
        for _ in 0..depth {
            strs(&mut nar, &[b"entry", b"(", b"name", b"d", b"node", b"(", b"type", b"directory"]).unwrap();
        }
        strs(&mut nar, &[b")"]).unwrap();
        for _ in 0..depth {
            strs(&mut nar, &[b")", b")"]).unwrap();
        }
        assert!(relayed_here(&nar).is_ok());
    }

    #[test]
    fn bytes_that_are_not_a_nar_are_a_read_error_that_says_so() {
        let mut garbage = Vec::new();
        crate::wire::write_str(&mut garbage, "nix-archive-1").unwrap();
        crate::wire::write_str(&mut garbage, "{").unwrap();
        let err =
            relay(&mut &garbage[..], &mut Vec::new(), 1000, &NarHash::of(b""), Check::AtTarget, |_| {}).unwrap_err();
        assert!(matches!(err, RelayError::Read(e) if e.to_string() == "not a NAR: expected \"(\""));
    }
}
