//! Signing path infos the way Nix does, with keys from
//! `nix-store --generate-binary-cache-key`.

use crate::path_info::PathInfo;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use ed25519_dalek::Signer;
use std::path::Path;

/// A secret key: `NAME:BASE64` of the 64-byte ed25519 key pair.
#[derive(Clone)]
pub struct SecretKey {
    name: String,
    key: ed25519_dalek::SigningKey,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key itself, not even in a debug print.
        write!(f, "SecretKey({})", self.name)
    }
}

impl SecretKey {
    pub fn load(path: &Path) -> Result<SecretKey, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read signing key {}: {e}", path.display()))?;
        SecretKey::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<SecretKey, String> {
        const FORM: &str = "not a secret key from nix-store --generate-binary-cache-key";
        let (name, key) = text.trim().split_once(':').ok_or(FORM)?;
        let bytes = BASE64.decode(key).ok().and_then(|b| <[u8; 64]>::try_from(b).ok()).ok_or(FORM)?;
        let key = ed25519_dalek::SigningKey::from_keypair_bytes(&bytes).map_err(|_| FORM)?;
        if name.is_empty() {
            return Err(FORM.into());
        }
        Ok(SecretKey { name: name.to_owned(), key })
    }

    /// `NAME:BASE64`, the form of `trusted-public-keys`.
    pub fn public(&self) -> String {
        format!("{}:{}", self.name, BASE64.encode(self.key.verifying_key().as_bytes()))
    }

    /// The signature Nix checks for this path: `NAME:BASE64`.
    pub fn sign(&self, info: &PathInfo) -> String {
        let signature = self.key.sign(info.fingerprint().as_bytes());
        format!("{}:{}", self.name, BASE64.encode(signature.to_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// From `nix-store --generate-binary-cache-key test.key-1 sec pub`.
    const SECRET: &str =
        "test.key-1:BrzXr3QYPkcnMgeuYEpVW4jImsF2y4OH38w1xuevXmZvpnzVRiSBYyg16p61td0vtkriQo1skNCREoa9sk9wSQ==";
    const PUBLIC: &str = "test.key-1:b6Z81UYkgWMoNeqetbXdL7ZK4kKNbJDQkRKGvbJPcEk=";

    fn info() -> PathInfo {
        let path = |p: &str| crate::store_path::StorePath::parse(p).unwrap();
        PathInfo {
            path: path("/nix/store/2ac1cq7y4k7zmjzgyqv9yq4d3wzabc9y-hello"),
            deriver: None,
            references: vec![
                path("/nix/store/z9z1cq7y4k7zmjzgyqv9yq4d3wzabc9y-b"),
                path("/nix/store/0aa1cq7y4k7zmjzgyqv9yq4d3wzabc9y-a"),
            ],
            nar_size: 120,
            nar_hash: crate::nar::NarHash::of(b""),
            ca: None,
            sigs: Vec::new(),
        }
    }

    #[test]
    fn reads_nix_key_files() {
        let key = SecretKey::parse(&format!("{SECRET}\n")).unwrap();
        assert_eq!(key.public(), PUBLIC);
        assert!(!format!("{key:?}").contains("Brz"));
    }

    #[test]
    fn refuses_other_files() {
        for bad in ["", "name", "name:", ":AAAA", PUBLIC, "k:bm90IGEga2V5"] {
            assert!(SecretKey::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fingerprint_has_nix32_hash_and_sorted_references() {
        assert_eq!(
            info().fingerprint(),
            "1;/nix/store/2ac1cq7y4k7zmjzgyqv9yq4d3wzabc9y-hello;sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73;120;\
             /nix/store/0aa1cq7y4k7zmjzgyqv9yq4d3wzabc9y-a,/nix/store/z9z1cq7y4k7zmjzgyqv9yq4d3wzabc9y-b"
        );
    }

    #[test]
    fn signatures_verify_with_the_public_key() {
        use ed25519_dalek::Verifier;
        let key = SecretKey::parse(SECRET).unwrap();
        let sig = key.sign(&info());
        let (name, b64) = sig.split_once(':').unwrap();
        assert_eq!(name, "test.key-1");
        let sig = ed25519_dalek::Signature::from_slice(&BASE64.decode(b64).unwrap()).unwrap();
        key.key.verifying_key().verify(info().fingerprint().as_bytes(), &sig).unwrap();
    }
}
