//! Bundles: one store path per machine that carries its deployment, the
//! configuration files as given, the pinned nixpkgs source, the toplevel, a
//! manifest and `bin/switch`, built by nix-build (deploy/nix/bundle.nix).
//! Once activated, the bundle is the GC root /etc/nixos/current-configuration.

use crate::eval::EvalError;
use nixpipe_host::process;
use nixpipe_host::report::Reports;
use nixpipe_store::record::Record;
use nixpipe_store::store_path::StorePath;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;

const BUNDLE_NIX: &str = include_str!("../nix/bundle.nix");
const SWITCH_SH: &str = include_str!("../nix/bundle-switch.sh");
/// Where the target keeps the bundle before the one it runs (bin/switch
/// keeps the current one at /etc/nixos/current-configuration).
pub(crate) const PREVIOUS: &str = "/etc/nixos/previous-configuration";

/// What goes into every bundle of a run.
pub struct Contents {
    pub config: PathBuf,
    pub nixpkgs: PathBuf,
}

impl Contents {
    /// `nixpkgs` defaults to `<nixpkgs>` from NIX_PATH, as nix-build finds it.
    pub fn new(config: &Path, nixpkgs: Option<&Path>) -> Result<Contents, EvalError> {
        let config = std::fs::canonicalize(config).map_err(|e| EvalError::bad_input(config, e))?;
        let nixpkgs = match nixpkgs {
            Some(path) => std::fs::canonicalize(path).map_err(|e| EvalError::BadInput {
                path: format!("--nixpkgs {}", path.display()),
                why: e.to_string(),
            })?,
            None => find_nixpkgs()?,
        };
        Ok(Contents { config, nixpkgs })
    }

    /// Builds one bundle per record in one nix-build; bundle records with
    /// the same NAME (and the toplevel in JSON records).
    pub fn build(&self, records: &[Record], reports: Reports) -> Result<Vec<Record>, EvalError> {
        let machines: Vec<_> = records
            .iter()
            .map(|r| json!({ "name": r.name.clone().unwrap_or_default(), "toplevel": r.path.as_str() }))
            .collect();
        let request = json!({
            "machines": machines,
            "config": self.config,
            "configIsDir": self.config.is_dir(),
            "nixpkgs": self.nixpkgs,
            "version": env!("CARGO_PKG_VERSION"),
            "switchScript": SWITCH_SH,
        });
        let mut cmd = crate::nix::command("nix-build");
        cmd.args(["--no-out-link", "-E", BUNDLE_NIX, "--argstr", "request", &request.to_string()]);
        let output = crate::nix::build(cmd, reports)?;
        if !output.status.success() {
            return Err(EvalError::BundleBuild);
        }
        let paths = String::from_utf8_lossy(&output.stdout);
        let paths: Vec<&str> = paths.lines().collect();
        if paths.len() != records.len() {
            return Err(EvalError::BundleCount { got: paths.len(), want: records.len() });
        }
        records.iter().zip(paths).map(|(record, path)| bundle_record(record, path)).collect()
    }
}

/// What nixpipe-bundle's JSON records add to the toplevel's fields.
#[derive(serde::Serialize)]
struct BundleJson<'a> {
    toplevel: &'a StorePath,
}

fn bundle_record(toplevel: &Record, path: &str) -> Result<Record, EvalError> {
    let name = toplevel.label().to_owned();
    let path = StorePath::parse(path).map_err(|e| EvalError::BadPath {
        machine: name,
        path: path.to_owned(),
        why: e.to_string(),
    })?;
    let mut record = Record::new(toplevel.name.clone(), path);
    record.extra = toplevel.extra.clone();
    record.add_fields(&BundleJson { toplevel: &toplevel.path });
    Ok(record)
}

fn find_nixpkgs() -> Result<PathBuf, EvalError> {
    let output = process::capture(Command::new("nix-instantiate").args(["--find-file", "nixpkgs"]))?;
    if !output.status.success() {
        return Err(EvalError::NoNixpkgs);
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()))
}
