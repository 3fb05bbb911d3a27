//! Running Nix's own programs: whatever Nix the machine has (2.8 and
//! newer), found on PATH, configured by the user's environment.

use crate::process;
use std::process::Command;

/// Realises derivations in one call, so Nix shares and parallelises the
/// work. Nix's build log goes to stderr as it happens. (nix-build rather
/// than nix-store --realise, which warns about GC roots on every call.)
pub fn realise(drvs: &[&str]) -> Result<(), String> {
    let mut cmd = Command::new("nix-build");
    cmd.arg("--no-out-link").args(drvs);
    let output = process::capture_stdout(&mut cmd)?;
    if !output.status.success() {
        return Err(format!("nix-build failed ({}); Nix's message is above", process::describe_status(output.status)));
    }
    Ok(())
}
