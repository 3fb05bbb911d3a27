//! Store paths exactly as Nix accepts them: `/nix/store/` + 32 nix-base32
//! characters + `-` + a name of at most 211 allowed characters.
//!
//! Anything that reaches a remote shell or a store is one of these, so the
//! check is strict: no subpaths, no `..`, no trailing junk, no control bytes.

use std::fmt;

pub(crate) const STORE_DIR: &str = "/nix/store";
const HASH_LEN: usize = 32;
/// Nix's own limit (`StorePath::MaxPathLen` minus the hash and the dash).
const NAME_MAX: usize = 211;
/// nix-base32 leaves out e, o, t and u so that hashes never spell words.
const NIX32_ALPHABET: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct StorePath(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorePathError {
    #[error("not a store path: it does not start with {STORE_DIR}/")]
    NotInStore,
    #[error("not a store path: the hash part is not {HASH_LEN} nix-base32 characters")]
    BadHash,
    #[error("not a store path: no '-' between the hash and the name")]
    NoDash,
    #[error("not a store path: the name is empty")]
    EmptyName,
    #[error("not a store path: the name is longer than {NAME_MAX} characters")]
    NameTooLong,
    #[error("not a store path: the name starts with '.'")]
    LeadingDot,
    #[error("a file inside a store path, not a store path itself")]
    Subpath,
    #[error("not a store path: the name contains {0:?}, which Nix does not allow")]
    BadNameChar(char),
}

impl StorePath {
    pub fn parse(s: &str) -> Result<StorePath, StorePathError> {
        let rest = s.strip_prefix(STORE_DIR).and_then(|r| r.strip_prefix('/')).ok_or(StorePathError::NotInStore)?;
        let hash = rest.get(..HASH_LEN).ok_or(StorePathError::BadHash)?;
        if !hash.bytes().all(|b| NIX32_ALPHABET.contains(&b)) {
            return Err(StorePathError::BadHash);
        }
        let name = rest[HASH_LEN..].strip_prefix('-').ok_or(StorePathError::NoDash)?;
        check_name(name)?;
        Ok(StorePath(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part after the hash: `nixos-system-web1-24.05`.
    pub fn name(&self) -> &str {
        &self.0[STORE_DIR.len() + 1 + HASH_LEN + 1..]
    }

    /// The 32 nix-base32 characters that name a path in a binary cache.
    pub fn hash_part(&self) -> &str {
        &self.0[STORE_DIR.len() + 1..STORE_DIR.len() + 1 + HASH_LEN]
    }

    /// `HASH-NAME`, the path without the store directory, as narinfo files
    /// list references.
    pub(crate) fn base_name(&self) -> &str {
        &self.0[STORE_DIR.len() + 1..]
    }
}

impl std::str::FromStr for StorePath {
    type Err = StorePathError;

    fn from_str(s: &str) -> Result<StorePath, StorePathError> {
        StorePath::parse(s)
    }
}

/// Whether `name` may be the name of a store path.
pub fn check_name(name: &str) -> Result<(), StorePathError> {
    if name.is_empty() {
        return Err(StorePathError::EmptyName);
    }
    if name.len() > NAME_MAX {
        return Err(StorePathError::NameTooLong);
    }
    // A leading dot also rules out "." and "..".
    if name.starts_with('.') {
        return Err(StorePathError::LeadingDot);
    }
    if let Some(bad) = name.chars().find(|&c| !is_name_char(c)) {
        return Err(if bad == '/' { StorePathError::Subpath } else { StorePathError::BadNameChar(bad) });
    }
    Ok(())
}

/// The characters Nix allows in a store path name.
fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "+-._?=".contains(c)
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for StorePath {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl serde::Serialize for StorePath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl AsRef<std::ffi::OsStr> for StorePath {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "/nix/store/36m5mhfn262qgji13vrgp907an576qjz-nixos-system-web1-24.05";

    #[test]
    fn accepts_a_real_toplevel_path() {
        let p = StorePath::parse(GOOD).unwrap();
        assert_eq!(p.name(), "nixos-system-web1-24.05");
        assert_eq!(p.to_string(), GOOD);
    }

    #[test]
    fn accepts_every_character_nix_allows_in_names() {
        let p = format!("{STORE_DIR}/{}-aZ09+-._?=", "0".repeat(32));
        assert!(StorePath::parse(&p).is_ok());
    }

    #[test]
    fn rejects_paths_outside_the_store() {
        for s in ["", "/", "/nix/store", "/nix/storex/abc", "nix/store/x", "/tmp/x"] {
            assert_eq!(StorePath::parse(s), Err(StorePathError::NotInStore), "{s:?}");
        }
    }

    #[test]
    fn rejects_hashes_with_letters_outside_nix_base32() {
        for bad in ['e', 'o', 't', 'u', 'A', '-', '/', '.'] {
            let mut hash = "0".repeat(31);
            hash.push(bad);
            let p = format!("{STORE_DIR}/{hash}-name");
            assert_eq!(StorePath::parse(&p), Err(StorePathError::BadHash), "{p}");
        }
        assert_eq!(StorePath::parse("/nix/store/abc-short"), Err(StorePathError::BadHash));
        assert_eq!(StorePath::parse("/nix/store/"), Err(StorePathError::BadHash));
    }

    #[test]
    fn rejects_bad_names() {
        let h = "0".repeat(32);
        let case = |name: &str| StorePath::parse(&format!("{STORE_DIR}/{h}{name}"));
        assert_eq!(case(""), Err(StorePathError::NoDash));
        assert_eq!(case("x"), Err(StorePathError::NoDash));
        assert_eq!(case("-"), Err(StorePathError::EmptyName));
        assert_eq!(case("-.."), Err(StorePathError::LeadingDot));
        assert_eq!(case("-.hidden"), Err(StorePathError::LeadingDot));
        assert_eq!(case(&format!("-{}", "a".repeat(212))), Err(StorePathError::NameTooLong));
        assert!(case(&format!("-{}", "a".repeat(211))).is_ok());
        assert_eq!(case("-foo/bin/sh"), Err(StorePathError::Subpath));
        assert_eq!(case("-foo/"), Err(StorePathError::Subpath));
        assert_eq!(case("-foo/../../etc"), Err(StorePathError::Subpath));
        for bad in [' ', '\t', '\r', '\0', ';', '$', '`', '\'', '"', '|', '&', '*', 'é', '\n'] {
            assert_eq!(case(&format!("-a{bad}b")), Err(StorePathError::BadNameChar(bad)), "{bad:?}");
        }
    }
}
