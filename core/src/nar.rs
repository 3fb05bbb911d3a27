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
    pub fn nix32(&self) -> String {
        nix_base32::to_nix_base32(&self.0)
    }

    /// The digest alone, in base 16, as the daemon protocol carries it.
    pub fn base16(&self) -> String {
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

/// Copies exactly `size` bytes of NAR from `from` to `to`, checked as
/// `check` says (see [`Checked`]).
pub fn relay(
    from: &mut impl Read,
    to: &mut impl Write,
    size: u64,
    expected: &NarHash,
    check: Check,
    sent: impl FnMut(u64),
) -> Result<(), RelayError> {
    let mut checked = Checked::new(to, size, check, sent);
    let mut buf = vec![0; CHUNK];
    let mut left = size;
    while left > 0 {
        let want = left.min(CHUNK as u64) as usize;
        from.read_exact(&mut buf[..want]).map_err(RelayError::Read)?;
        checked.write_all(&buf[..want]).map_err(RelayError::Write)?;
        left -= want as u64;
    }
    checked.finish(expected)
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

    #[test]
    fn relays_exactly_the_size_and_leaves_the_rest() {
        let data = vec![7u8; 600_000];
        let mut from = &data[..];
        let mut to = Vec::new();
        relay(&mut from, &mut to, 500_000, &NarHash::of(&data[..500_000]), Check::Here, |_| {}).unwrap();
        assert_eq!(to.len(), 500_000);
        assert_eq!(from.len(), 100_000);
    }

    #[test]
    fn never_writes_the_end_of_a_wrong_nar() {
        let data = vec![1u8; 300_000];
        let mut to = Vec::new();
        let err = relay(&mut &data[..], &mut to, 300_000, &NarHash::of(b"other"), Check::Here, |_| {}).unwrap_err();
        assert!(matches!(err, RelayError::Mismatch(got) if got == NarHash::of(&data)));
        assert!(to.len() < data.len());
    }

    #[test]
    fn where_the_target_checks_bytes_pass_at_once_and_only_the_size_is_counted() {
        let data = vec![1u8; 300_000];
        let mut to = Vec::new();
        relay(&mut &data[..], &mut to, 300_000, &NarHash::of(b"other"), Check::AtTarget, |_| {}).unwrap();
        assert_eq!(to, data);
        let mut to = Vec::new();
        let mut checked = Checked::new(&mut to, 10, Check::AtTarget, |_| {});
        checked.write_all(b"12345").unwrap();
        assert!(matches!(checked.finish(&NarHash::of(b"")), Err(RelayError::Size { seen: 5, size: 10 })));
    }

    #[test]
    fn never_passes_more_than_the_recorded_size() {
        let data = [1u8; 100];
        let mut to = Vec::new();
        let err = relay(&mut &data[..], &mut to, 50, &NarHash::of(&data[..50]), Check::Here, |_| {});
        assert!(err.is_ok());
        let mut checked = Checked::new(&mut to, 10, Check::AtTarget, |_| {});
        assert_eq!(checked.write(&data[..11]).unwrap_err().kind(), io::ErrorKind::WriteZero);
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
    fn a_short_source_is_a_read_error() {
        let err =
            relay(&mut &b"short"[..], &mut Vec::new(), 10, &NarHash::of(b""), Check::AtTarget, |_| {}).unwrap_err();
        assert!(matches!(err, RelayError::Read(_)));
    }
}
