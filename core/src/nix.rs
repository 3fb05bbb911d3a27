//! Running Nix's own programs: whatever Nix the machine has (2.8 and
//! newer), found on PATH, configured by the user's environment.

use crate::copy::{copy_closures, CopyError, Destination, Options, Route};
use crate::process::{self, CannotRun};
use crate::store_path::StorePath;
use crate::target::{SshError, Target};
use std::process::Command;

/// Why a Nix program did not do its job.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NixError {
    #[error("nix-build failed ({status}); Nix's message is above")]
    BuildFailed { status: String },
    #[error("not all in this machine's store: {why}")]
    NotInStore { why: String },
    #[error("cannot send the derivations to {target}: {error}")]
    SendDerivations { target: String, error: Box<CopyError> },
    #[error("building on {target} failed (Nix's message is above)")]
    BuildOnFailed { target: String },
    #[error("{program} gave {output:?}: {why}")]
    BadOutput { program: String, output: String, why: String },
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error(transparent)]
    CannotRun(#[from] CannotRun),
}

/// Realises derivations in one call, so Nix shares and parallelises the
/// work. Nix's build log goes to stderr as it happens. (nix-build rather
/// than nix-store --realise, which warns about GC roots on every call.)
pub fn realise(drvs: &[&str]) -> Result<(), NixError> {
    let mut cmd = Command::new("nix-build");
    cmd.arg("--no-out-link").args(drvs);
    let output = process::capture_stdout(&mut cmd)?;
    if !output.status.success() {
        return Err(NixError::BuildFailed { status: process::describe_status(output.status) });
    }
    Ok(())
}

/// The closure of `paths` in this machine's store, references first.
pub fn requisites(paths: &[&StorePath]) -> Result<Vec<String>, NixError> {
    let mut cmd = Command::new("nix-store");
    cmd.args(["--query", "--requisites"]).args(paths.iter().map(|p| p.as_str()));
    let closure = process::capture(&mut cmd)?;
    if !closure.status.success() {
        return Err(NixError::NotInStore { why: process::summarize(&closure.stderr) });
    }
    Ok(String::from_utf8_lossy(&closure.stdout).lines().map(str::to_owned).collect())
}

/// Builds `drvs` on `target` (evaluate here, build there): their closures
/// go there as nixpipe-copy sends them, then one `nix-store --realise`
/// builds them all, its log on stderr. The output paths, in order; they stay
/// on the target.
pub fn realise_on(target: &Target, drvs: &[StorePath]) -> Result<Vec<StorePath>, NixError> {
    let route = Route { from: Target::Local, to: Destination::Store(target.clone()) };
    let refs: Vec<&StorePath> = drvs.iter().collect();
    copy_closures(&route, &refs, &Options::default())
        .map_err(|e| NixError::SendDerivations { target: target.to_string(), error: Box::new(e) })?;
    let argv: Vec<&str> = ["nix-store", "--realise"].into_iter().chain(drvs.iter().map(StorePath::as_str)).collect();
    let output = process::capture_stdout(&mut target.command(&argv)?)?;
    if !output.status.success() {
        return Err(NixError::BuildOnFailed { target: target.to_string() });
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            StorePath::parse(line).map_err(|e| NixError::BadOutput {
                program: format!("nix-store --realise on {target}"),
                output: line.to_owned(),
                why: e.to_string(),
            })
        })
        .collect()
}
