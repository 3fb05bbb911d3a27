//! What a store knows of one valid path, typed: the fields a copy carries
//! from the source to the destination (serve protocol, narinfo, signature).

use crate::nar::NarHash;
use crate::store_path::StorePath;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathInfo {
    pub path: StorePath,
    pub deriver: Option<StorePath>,
    pub references: Vec<StorePath>,
    pub nar_size: u64,
    pub nar_hash: NarHash,
    /// The content address, for content-addressed paths.
    pub ca: Option<String>,
    pub sigs: Vec<String>,
}

impl PathInfo {
    /// What a signature covers: `1;PATH;NARHASH;NARSIZE;REF,REF,...`, the
    /// hash in nix32 and the references sorted, exactly as Nix builds it.
    pub(crate) fn fingerprint(&self) -> String {
        let mut references: Vec<&str> = self.references.iter().map(StorePath::as_str).collect();
        references.sort_unstable();
        format!("1;{};{};{};{}", self.path, self.nar_hash, self.nar_size, references.join(","))
    }
}
