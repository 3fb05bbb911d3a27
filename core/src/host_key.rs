//! The host keys this machine's ssh trusts for a host, so that another
//! machine can check that host with the same trust: never by turning host
//! key checking off.

use crate::process;
use crate::target::SshHost;
use std::process::Command;

/// The alias the keys are written for: the other machine's ssh checks the
/// host under it (`-o HostKeyAlias=...`), whatever address it reaches the
/// host at.
pub const ALIAS: &str = "nixpipe-target";

/// known_hosts lines, for [`ALIAS`], holding every key this machine's ssh
/// (its configuration, NIX_SSHOPTS) accepts for `host`.
pub fn trusted_for(host: &SshHost) -> Result<String, String> {
    let config = resolved_config(host)?;
    let name = lookup_name(&config);
    let mut lines = String::new();
    for file in known_hosts_files(&config) {
        let mut cmd = Command::new("ssh-keygen");
        cmd.args(["-F", &name, "-f", &file]);
        // ssh-keygen exits 1 when the host is not in the file.
        let found = process::capture(&mut cmd)?;
        lines.push_str(&keys_for_alias(&String::from_utf8_lossy(&found.stdout)));
    }
    if lines.is_empty() {
        return Err(format!(
            "this machine knows no host key for {name}, so no other machine can check it: connect once with ssh {}",
            host.destination()
        ));
    }
    Ok(lines)
}

/// `ssh -G`: the settings ssh would use for `host`, as `(key, value)`.
fn resolved_config(host: &SshHost) -> Result<Vec<(String, String)>, String> {
    let mut cmd = host.ssh_command(&["-G"])?;
    let output = process::capture(&mut cmd)?;
    if !output.status.success() {
        return Err(process::failure(&cmd, &output));
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

/// The keys of `ssh-keygen -F` output, rewritten for [`ALIAS`]. Marked
/// lines (@cert-authority, @revoked) are left out: a CA or a revocation
/// is not a key the host presents.
fn keys_for_alias(found: &str) -> String {
    found
        .lines()
        .filter(|line| !line.starts_with('#') && !line.starts_with('@'))
        .filter_map(|line| {
            let mut fields = line.split_whitespace().skip(1);
            Some(format!("{ALIAS} {} {}\n", fields.next()?, fields.next()?))
        })
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
    fn rewrites_found_keys_for_the_alias_and_leaves_marked_lines_out() {
        let found = "# Host [127.0.0.1]:2222 found: line 3\n\
                     [127.0.0.1]:2222 ssh-ed25519 AAAAC3Nz web1\n\
                     |1|abc=|def= ecdsa-sha2-nistp256 AAAAE2Vj\n\
                     @revoked * ssh-rsa AAAAB3Nz\n";
        assert_eq!(
            keys_for_alias(found),
            "nixpipe-target ssh-ed25519 AAAAC3Nz\nnixpipe-target ecdsa-sha2-nistp256 AAAAE2Vj\n"
        );
    }
}
