//! Copying closures between stores.
//!
//! This first version hands ssh copies to `nix-copy-closure`; the native
//! serve-protocol client replaces it.

use crate::nix;
use crate::process;
use crate::store_path::StorePath;
use crate::target::Target;
use std::process::Command;

/// Makes the closures of `paths` valid on `target`.
pub fn copy_closures(target: &Target, paths: &[&StorePath]) -> Result<(), String> {
    match target {
        // The local store is both ends: there is nothing to move, only to
        // check that the paths are really there.
        Target::Local => match nix::invalid_local_paths(paths)?.first() {
            Some(missing) => Err(format!("{missing} is not valid in the local store")),
            None => Ok(()),
        },
        Target::Ssh(host) => {
            let sshopts = shlex::try_join(host.ssh_options()?.iter().map(String::as_str))
                .map_err(|e| format!("cannot quote ssh options: {e}"))?;
            let mut cmd = Command::new("nix-copy-closure");
            cmd.env("NIX_SSHOPTS", sshopts).arg("--to").arg(host.destination()).args(paths);
            let output = process::capture(&mut cmd)?;
            if output.status.success() {
                return Ok(());
            }
            match ssh_reason(&output.stderr) {
                Some(reason) => Err(format!("cannot reach {target}: {reason}")),
                None => Err(target.failure("nix-copy-closure", &output)),
            }
        }
    }
}

/// Nix says only "cannot connect to HOST"; the line ssh printed before it
/// says why (refused, host key, permission denied).
fn ssh_reason(stderr: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let at = lines.iter().position(|l| l.starts_with("error: cannot connect to"))?;
    let reason = at.checked_sub(1).map(|i| lines[i]).unwrap_or(lines[at]);
    Some(process::summarize(reason.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_reason_ssh_gave() {
        let stderr = b"Host key verification failed.\r\nerror: cannot connect to 'root@127.0.0.1'\n";
        assert_eq!(ssh_reason(stderr).as_deref(), Some("Host key verification failed."));
        assert_eq!(ssh_reason(b"error: cannot connect to 'x'\n").as_deref(), Some("error: cannot connect to 'x'"));
        assert_eq!(ssh_reason(b"error: path is not valid\n"), None);
    }
}
