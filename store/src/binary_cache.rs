//! A binary cache in a directory (`file:///DIR`), written the way Nix
//! writes one: `nix-cache-info`, `nar/<filehash>.nar` and one
//! `<hashpart>.narinfo` per path, which any Nix accepts as a substituter.
//!
//! Each NAR goes to a temporary file first and is renamed into place once
//! its hash checked out; the narinfo comes last, also by rename. A reader
//! (or an interrupted copy) never sees a narinfo without its whole NAR.

use crate::path_info::PathInfo;
use crate::store_path::StorePath;
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

const CACHE_INFO: &str = "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BinaryCache {
    dir: PathBuf,
}

impl BinaryCache {
    /// `file:///DIR`; other URLs are not ours to parse.
    pub fn from_url(url: &str) -> Option<Result<BinaryCache, String>> {
        let dir = url.strip_prefix("file://")?;
        Some(match dir.starts_with('/') {
            true => Ok(BinaryCache { dir: PathBuf::from(dir) }),
            false => Err(format!("bad cache URL '{url}': want file:///ABSOLUTE/DIR")),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates the directory layout if it is not there yet.
    pub fn create(&self) -> Result<(), CreateError> {
        let fail = |e: std::io::Error| CreateError { dir: self.dir.display().to_string(), why: e.to_string() };
        fs::create_dir_all(self.dir.join("nar")).map_err(fail)?;
        let info = self.dir.join("nix-cache-info");
        if !info.exists() {
            write_atomically(&self.dir, &info, CACHE_INFO.as_bytes()).map_err(fail)?;
        }
        Ok(())
    }

    /// The paths the cache already has a narinfo for.
    pub fn present(&self, paths: &[StorePath]) -> BTreeSet<StorePath> {
        paths.iter().filter(|p| self.narinfo_path(p).is_file()).cloned().collect()
    }

    fn narinfo_path(&self, path: &StorePath) -> PathBuf {
        self.dir.join(format!("{}.narinfo", path.hash_part()))
    }

    /// Adds one path whose NAR `fill` writes, and has checked against its
    /// narHash (as [`crate::nar::relay`] does). The cache's own I/O errors
    /// become `E` too.
    pub fn add<E: From<io::Error>>(
        &self,
        info: &PathInfo,
        fill: impl FnOnce(&mut fs::File) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut file = tempfile::NamedTempFile::new_in(self.dir.join("nar"))?;
        fill(file.as_file_mut())?;
        file.as_file().sync_all()?;
        // Uncompressed: the file is the NAR, its hash the NAR's.
        let url = format!("nar/{}.nar", info.nar_hash.nix32());
        persist_readable(file, &self.dir.join(&url))?;
        let narinfo = narinfo(info, &url);
        Ok(write_atomically(&self.dir, &self.narinfo_path(&info.path), narinfo.as_bytes())?)
    }
}

/// The cache's directory could not be laid out.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot create binary cache in {dir}: {why}")]
pub struct CreateError {
    dir: String,
    why: String,
}

/// The narinfo of an uncompressed NAR at `url`.
fn narinfo(info: &PathInfo, url: &str) -> String {
    let hash = info.nar_hash;
    let mut text = format!("StorePath: {}\nURL: {url}\nCompression: none\n", info.path);
    let _ = writeln!(text, "FileHash: {hash}\nFileSize: {}", info.nar_size);
    let _ = writeln!(text, "NarHash: {hash}\nNarSize: {}", info.nar_size);
    let references: Vec<&str> = info.references.iter().map(StorePath::base_name).collect();
    let _ = writeln!(text, "References: {}", references.join(" "));
    if let Some(deriver) = &info.deriver {
        let _ = writeln!(text, "Deriver: {}", deriver.base_name());
    }
    for sig in &info.sigs {
        let _ = writeln!(text, "Sig: {sig}");
    }
    if let Some(ca) = &info.ca {
        let _ = writeln!(text, "CA: {ca}");
    }
    text
}

fn write_atomically(dir: &Path, to: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    file.write_all(bytes)?;
    file.as_file().sync_all()?;
    persist_readable(file, to)
}

/// Renames a finished temporary file (made 0600) into place as 0644, as
/// every cache file is: readable by whichever user (a web server, a nix
/// daemon) serves the cache.
fn persist_readable(file: tempfile::NamedTempFile, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.as_file().set_permissions(fs::Permissions::from_mode(0o644))?;
    file.persist(to).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nar::NarHash;

    #[test]
    fn only_file_urls_are_caches() {
        assert_eq!(BinaryCache::from_url("file:///srv/cache").unwrap().unwrap().dir(), Path::new("/srv/cache"));
        assert!(BinaryCache::from_url("file://relative").unwrap().is_err());
        assert!(BinaryCache::from_url("root@web1").is_none());
    }

    #[test]
    fn narinfo_has_what_nix_reads() {
        let path = |p: &str| StorePath::parse(p).unwrap();
        let info = PathInfo {
            path: path("/nix/store/2ac1cq7y4k7zmjzgyqv9yq4d3wzabc9y-hello"),
            deriver: Some(path("/nix/store/3bc1cq7y4k7zmjzgyqv9yq4d3wzabc9y-hello.drv")),
            references: vec![path("/nix/store/2ac1cq7y4k7zmjzgyqv9yq4d3wzabc9y-hello")],
            nar_size: 0,
            nar_hash: NarHash::of(b""),
            ca: None,
            sigs: vec!["k:c2ln".into()],
        };
        let text = narinfo(&info, "nar/x.nar");
        assert!(text.contains("References: 2ac1cq7y4k7zmjzgyqv9yq4d3wzabc9y-hello\n"));
        assert!(text.contains("Deriver: 3bc1cq7y4k7zmjzgyqv9yq4d3wzabc9y-hello.drv\n"));
        assert!(text.contains("Sig: k:c2ln\n"));
        assert!(!text.contains("CA:"));
        assert_eq!(info.path.hash_part(), "2ac1cq7y4k7zmjzgyqv9yq4d3wzabc9y");
    }
}
