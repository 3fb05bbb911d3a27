//! The wire encoding below both Nix protocols nixpipe speaks and NAR
//! archives: every integer a little-endian u64, every string its length,
//! its bytes and zero padding to a multiple of 8.
//!
//! Readers bound what they accept, so a confused or hostile peer cannot
//! make us allocate without limit.

use std::io::{self, Read, Write};

/// The longest string a peer may send us: store paths, hashes, signatures.
pub const MAX_STRING: u64 = 1 << 20;
/// The longest list: a closure of a million paths, twenty times the
/// largest NixOS system; a peer that says more is refused before anything
/// of it is read.
pub(crate) const MAX_LIST: u64 = 1 << 20;

pub fn write_u64(w: &mut impl Write, n: u64) -> io::Result<()> {
    w.write_all(&n.to_le_bytes())
}

pub(crate) fn write_bytes(w: &mut impl Write, s: &[u8]) -> io::Result<()> {
    write_u64(w, s.len() as u64)?;
    w.write_all(s)?;
    write_padding(w, s.len() as u64)
}

/// The zeros after `len` bytes of a string or NAR file.
pub(crate) fn write_padding(w: &mut impl Write, len: u64) -> io::Result<()> {
    w.write_all(&[0; 8][..padding(len)])
}

pub fn write_str(w: &mut impl Write, s: &str) -> io::Result<()> {
    write_bytes(w, s.as_bytes())
}

pub(crate) fn write_strs<S: AsRef<str>>(w: &mut impl Write, items: &[S]) -> io::Result<()> {
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
    read_list(r, Ok)
}

/// A list of strings, each taken by `item` as it is read: a bad one stops
/// the read there, before the rest of a list of junk is held.
pub(crate) fn read_list<T>(r: &mut impl Read, mut item: impl FnMut(String) -> io::Result<T>) -> io::Result<Vec<T>> {
    let count = read_u64(r)?;
    if count > MAX_LIST {
        return Err(invalid(format!("a list of {count} strings (at most {MAX_LIST})")));
    }
    (0..count).map(|_| read_string(r).and_then(&mut item)).collect()
}

/// How many zeros follow `len` bytes of a string.
pub(crate) fn padding(len: u64) -> usize {
    ((8 - len % 8) % 8) as usize
}

/// A reply that breaks the protocol.
pub fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("protocol error: unexpected {what}"))
}

#[cfg(test)]
mod tests {
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
    fn a_truncated_reply_is_an_error() {
        let mut buf = Vec::new();
        write_str(&mut buf, "/nix/store/p").unwrap();
        assert!(read_string(&mut &buf[..5]).is_err());
    }
}
