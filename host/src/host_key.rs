//! The host keys this machine's ssh trusts for a host, so that another
//! machine can check that host with the same trust: never by turning host
//! key checking off.

use crate::process::{self, CannotRun};
use crate::target::{SshError, SshHost};
use std::process::Command;

/// Why this machine cannot say which keys it trusts for a host.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HostKeyError {
    #[error("this machine knows no host key for {name}, so no other machine can check it: connect once with ssh {destination}")]
    Unknown { name: String, destination: String },
    #[error("{0}")]
    SshConfig(String),
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error(transparent)]
    CannotRun(#[from] CannotRun),
}

/// The known_hosts lines this machine's ssh (its configuration,
/// NIX_SSHOPTS) has for a host, and the name it looks them up by: another
/// machine's ssh checks the host with them under that name (`-o
/// HostKeyAlias=NAME`), whatever address it reaches the host at.
#[derive(Debug, PartialEq, Eq)]
pub struct Trust {
    pub name: String,
    /// Keys, and the `@revoked` and `@cert-authority` lines that apply,
    /// with their meaning: a key revoked here is refused there too.
    pub known_hosts: String,
}

/// What this machine's ssh trusts for `host`.
pub fn trusted_for(host: &SshHost) -> Result<Trust, HostKeyError> {
    let config = resolved_config(host)?;
    let name = lookup_name(&config);
    let mut lines = String::new();
    for file in known_hosts_files(&config) {
        let mut cmd = Command::new("ssh-keygen");
        cmd.args(["-F", &name, "-f", &file]);
        // ssh-keygen exits 1 when the host is not in the file.
        let found = process::capture(&mut cmd)?;
        lines.push_str(&known_lines(&String::from_utf8_lossy(&found.stdout)));
    }
    if !lines.lines().any(|line| !line.starts_with("@revoked")) {
        return Err(HostKeyError::Unknown { name, destination: host.destination() });
    }
    Ok(Trust { name, known_hosts: lines })
}

/// `ssh -G`: the settings ssh would use for `host`, as `(key, value)`.
fn resolved_config(host: &SshHost) -> Result<Vec<(String, String)>, HostKeyError> {
    let mut cmd = host.resolved_config()?;
    let output = process::capture(&mut cmd)?;
    if !output.status.success() {
        return Err(HostKeyError::SshConfig(process::failure(&cmd, &output)));
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_once(' '))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect())
}

fn setting<'a>(config: &'a [(String, String)], key: &str) -> Option<&'a str> {
    config.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// The name ssh looks the host up by: HostKeyAlias, else the real host
/// name, with its port when that is not 22.
fn lookup_name(config: &[(String, String)]) -> String {
    if let Some(alias) = setting(config, "hostkeyalias").filter(|a| *a != "none") {
        return alias.to_owned();
    }
    let host = setting(config, "hostname").unwrap_or_default();
    match setting(config, "port") {
        Some(port) if port != "22" => format!("[{host}]:{port}"),
        _ => host.to_owned(),
    }
}

/// The user's then the global known_hosts files that exist (`ssh -G`
/// has expanded `~` already).
fn known_hosts_files(config: &[(String, String)]) -> Vec<String> {
    ["userknownhostsfile", "globalknownhostsfile"]
        .iter()
        .filter_map(|key| setting(config, key))
        .flat_map(|files| files.split_whitespace())
        .filter(|file| std::path::Path::new(file).is_file())
        .map(str::to_owned)
        .collect()
}

/// The known_hosts lines of `ssh-keygen -F` output, as they are (hashed
/// names match the same name there), its comments left out.
fn known_lines(found: &str) -> String {
    found
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| format!("{line}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn looks_up_by_alias_then_host_and_port() {
        assert_eq!(lookup_name(&config(&[("hostname", "10.0.0.5"), ("port", "22")])), "10.0.0.5");
        assert_eq!(lookup_name(&config(&[("hostname", "127.0.0.1"), ("port", "2222")])), "[127.0.0.1]:2222");
        let aliased = config(&[("hostkeyalias", "web1"), ("hostname", "10.0.0.5"), ("port", "2222")]);
        assert_eq!(lookup_name(&aliased), "web1");
    }

    #[test]
    fn keeps_found_keys_and_marked_lines_as_they_are() {
        let found = "# Host [127.0.0.1]:2222 found: line 3\n\
                     [127.0.0.1]:2222 ssh-ed25519 AAAAC3Nz web1\n\
                     |1|abc=|def= ecdsa-sha2-nistp256 AAAAE2Vj\n\
                     @revoked * ssh-rsa AAAAB3Nz\n\
                     @cert-authority *.example.com ssh-ed25519 AAAAC3Ca\n";
        assert_eq!(
            known_lines(found),
            "[127.0.0.1]:2222 ssh-ed25519 AAAAC3Nz web1\n|1|abc=|def= ecdsa-sha2-nistp256 AAAAE2Vj\n\
             @revoked * ssh-rsa AAAAB3Nz\n@cert-authority *.example.com ssh-ed25519 AAAAC3Ca\n"
        );
    }
}
