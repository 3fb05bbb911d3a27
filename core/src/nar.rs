//! NAR streams: their sha256 (the narHash a store records), and relaying
//! one from a source to a target while checking it.

use base64::Engine;
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::{self, Read, Write};

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
}

/// Copies exactly `size` bytes of NAR from `from` to `to`, hashing them on
/// the way. The last chunk is held back until the hash is known to match:
/// a target never receives the whole of a NAR that is wrong, so it cannot
/// register it, whatever checks it does or skips.
pub fn relay(
    from: &mut impl Read,
    to: &mut impl Write,
    size: u64,
    expected: &NarHash,
    mut sent: impl FnMut(u64),
) -> Result<(), RelayError> {
    const CHUNK: usize = 256 * 1024;
    let mut hasher = Sha256::new();
    let mut held = Vec::with_capacity(CHUNK);
    let mut next = vec![0; CHUNK];
    let mut left = size;
    while left > 0 {
        let want = left.min(CHUNK as u64) as usize;
        from.read_exact(&mut next[..want]).map_err(RelayError::Read)?;
        hasher.update(&next[..want]);
        left -= want as u64;
        if !held.is_empty() {
            to.write_all(&held).map_err(RelayError::Write)?;
            sent(held.len() as u64);
        }
        held.clear();
        held.extend_from_slice(&next[..want]);
    }
    let got = NarHash(hasher.finalize().into());
    if got != *expected {
        return Err(RelayError::Mismatch(got));
    }
    to.write_all(&held).map_err(RelayError::Write)?;
    sent(held.len() as u64);
    Ok(())
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
        relay(&mut from, &mut to, 500_000, &NarHash::of(&data[..500_000]), |_| {}).unwrap();
        assert_eq!(to.len(), 500_000);
        assert_eq!(from.len(), 100_000);
    }

    #[test]
    fn never_writes_the_end_of_a_wrong_nar() {
        let data = vec![1u8; 300_000];
        let mut to = Vec::new();
        let err = relay(&mut &data[..], &mut to, 300_000, &NarHash::of(b"other"), |_| {}).unwrap_err();
        assert!(matches!(err, RelayError::Mismatch(got) if got == NarHash::of(&data)));
        assert!(to.len() < data.len());
    }

    #[test]
    fn a_short_source_is_a_read_error() {
        let err = relay(&mut &b"short"[..], &mut Vec::new(), 10, &NarHash::of(b""), |_| {}).unwrap_err();
        assert!(matches!(err, RelayError::Read(_)));
    }
}
