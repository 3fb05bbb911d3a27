//! Evaluating NixOS configurations to their toplevel store paths.
//!
//! Evaluation and building are two steps: one `nix-instantiate` call
//! evaluates every machine, one `nix-build` builds them all.

use crate::error::Error;
use crate::process;
use crate::record::Record;
use crate::store_path::StorePath;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::process::Command;

const CLASSIC_NIX: &str = include_str!("../nix/classic.nix");

/// A classic `configuration.nix`, evaluated with `<nixpkgs/nixos>`.
#[derive(Debug, Clone)]
pub struct Classic {
    pub file: PathBuf,
    /// Nix search path entries, as for `nix-build -I`, first match wins.
    pub search_path: Vec<String>,
}

/// One evaluated machine, not yet built.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Machine {
    pub name: String,
    pub drv_path: String,
    pub out: String,
    pub system: Option<String>,
}

impl Classic {
    /// `--nixpkgs PATH` is `-I nixpkgs=PATH` ahead of any other entry.
    pub fn new(file: &Path, nixpkgs: Option<&Path>, include: &[String]) -> Result<Classic, Error> {
        let file = std::fs::canonicalize(file).map_err(|e| Error::Usage(format!("{}: {e}", file.display())))?;
        if !file.is_file() {
            return Err(Error::Usage(format!("{}: not a file", file.display())));
        }
        let mut search_path = Vec::new();
        if let Some(nixpkgs) = nixpkgs {
            let nixpkgs = std::fs::canonicalize(nixpkgs)
                .map_err(|e| Error::Usage(format!("--nixpkgs {}: {e}", nixpkgs.display())))?;
            search_path.push(format!("nixpkgs={}", nixpkgs.display()));
        }
        search_path.extend(include.iter().cloned());
        Ok(Classic { file, search_path })
    }

    /// Evaluates the configuration; Nix's own messages go to stderr.
    pub fn evaluate(&self) -> Result<Vec<Machine>, Error> {
        let mut cmd = Command::new("nix-instantiate");
        // Read-write so that the .drv files exist for the build step.
        cmd.args(["--eval", "--strict", "--json", "--read-write-mode", "-E", CLASSIC_NIX]);
        for entry in &self.search_path {
            cmd.args(["-I", entry]);
        }
        cmd.arg("--argstr").arg("configuration").arg(&self.file);
        let output = process::capture_stdout(&mut cmd).map_err(Error::Failed)?;
        if !output.status.success() {
            return Err(Error::Failed(format!("{}: evaluation failed (Nix's message is above)", self.file.display())));
        }
        serde_json::from_slice(&output.stdout)
            .map_err(|e| Error::Failed(format!("{}: unexpected output from nix-instantiate: {e}", self.file.display())))
    }
}

/// Builds every machine in one Nix call and returns their records.
pub fn build(machines: &[Machine]) -> Result<Vec<Record>, Error> {
    let drvs: Vec<&str> = machines.iter().map(|m| m.drv_path.as_str()).collect();
    crate::nix::realise(&drvs).map_err(Error::Failed)?;
    machines.iter().map(Machine::record).collect()
}

impl Machine {
    /// `NAME<TAB>PATH`; a configuration with an empty hostName gives a
    /// record without a name. drv and system travel in JSON records.
    fn record(&self) -> Result<Record, Error> {
        let path = StorePath::parse(&self.out)
            .map_err(|e| Error::Failed(format!("{}: evaluation gave {:?}: {e}", self.name, self.out)))?;
        let name = Some(self.name.clone()).filter(|n| !n.is_empty());
        let mut record = Record::new(name, path);
        record.extra.insert("drv".into(), self.drv_path.clone().into());
        if let Some(system) = &self.system {
            record.extra.insert("system".into(), system.clone().into());
        }
        Ok(record)
    }
}
