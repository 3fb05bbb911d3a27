//! Becoming root on a target: directly when logged in as root, otherwise
//! through sudo (or the program given with --sudo-cmd).
//!
//! What each host needs is learnt once, with the session's facts: a login
//! as root needs nothing, a sudo that lets the user in without a password
//! (`sudo -n true`) needs none. The password is asked only when a host of
//! the run needs it, and then once for all of them.
//!
//! The password, when there is one, is asked on /dev/tty (once for the
//! run, or once per host that needs one: --sudo-password-per-host) and written
//! to the stdin of a sudo of the run only when that sudo asks for it (its
//! prompt is a marker we watch for on its stderr): never to the command's
//! own input, argv, the environment, a log or a file. Without a password
//! sudo runs with `-n`, so it fails at once instead of waiting for an
//! answer nobody can give.

use crate::event::HostFacts;
use crate::report::Reports;
use crate::target::Target;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::process::Child;
use std::sync::Mutex;
use zeroize::Zeroizing;

/// What sudo prints (on stderr, with -S) when it asks for the password.
const PROMPT: &str = "[nixpipe: sudo asks]";
/// What the command's wrapper prints on stderr once sudo let it run: from
/// then on, stdin is the command's.
const STARTED: &str = "[nixpipe: sudo ran it]";

/// Why a privileged step did not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrivilegeError {
    #[error("{sudo} on {target} needs a password: pass --ask-sudo-password to be asked once on the terminal")]
    NeedsPassword { sudo: String, target: String },
    #[error("{sudo} on {target} refused the password")]
    WrongPassword { sudo: String, target: String },
    #[error("{sudo} on {target} does not let this user become root")]
    NotAllowed { sudo: String, target: String },
    /// A --sudo-cmd that wants the user to authenticate: only sudo is
    /// given a password.
    #[error("{sudo} on {target} asks this user to authenticate, and only sudo gets a password: let the user in without one (doas.conf's nopass, a polkit rule)")]
    NeedsAuthentication { sudo: String, target: String },
    #[error("{sudo} is not on {target}")]
    NotThere { sudo: String, target: String },
    #[error("sudo on {target} did not run the command: {why}")]
    DidNotRun { target: String, why: String },
    /// Bad usage: found before anything was done.
    #[error("--ask-sudo-password needs a terminal to ask on (/dev/tty): {0}")]
    NoTerminal(String),
    /// Bad usage: found before anything was done.
    #[error("--sudo-cmd '{0}' is not a command")]
    BadSudoCmd(String),
    /// Bad usage: found before anything was done.
    #[error(
        "a sudo password goes to sudo only: a --sudo-cmd must let the user in without one (doas.conf's nopass, a \
         polkit rule for run0 and systemd-run)"
    )]
    PasswordForCustom,
}

impl PrivilegeError {
    /// Bad usage, found before anything was done.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            PrivilegeError::NoTerminal(_) | PrivilegeError::BadSudoCmd(_) | PrivilegeError::PasswordForCustom
        )
    }
}

/// Whether, and how, the sudo password is asked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Ask {
    /// Never: a sudo that wants one fails at once.
    #[default]
    Never,
    /// Once for the run, given to every host whose sudo asks for it.
    Once,
    /// Once for each host that needs one, so that no host ever gets
    /// another's.
    PerHost,
}

/// A command made to run as root: its words, and the password for sudo
/// (never in the words: [`Privilege::answer_sudo`] gives it).
pub struct Elevated {
    pub argv: Vec<String>,
    pub password: Option<Zeroizing<String>>,
}

/// How the privileged steps of a run become root: a prefix for the
/// command and, for sudo, the password on its stdin before the command's
/// own input (nixos-rebuild-ng's `Elevator`). It starts nothing itself;
/// the session runs what it makes.
#[derive(Default)]
pub struct Privilege {
    /// The program and its arguments from --sudo-cmd; None for sudo.
    custom: Option<Vec<String>>,
    ask: Ask,
    /// The passwords asked: by target for [`Ask::PerHost`], under "" for
    /// [`Ask::Once`]. Held while asking, so that hosts needing one at once
    /// ask once.
    passwords: Mutex<HashMap<String, Zeroizing<String>>>,
}

impl Privilege {
    /// `sudo_cmd` split as a shell would; `ask`: ask the password now
    /// ([`Ask::Once`]) or when a host needs it ([`Ask::PerHost`]); a
    /// terminal to ask on must be there now.
    pub fn new(sudo_cmd: Option<&str>, ask: Ask) -> Result<Privilege, PrivilegeError> {
        let custom = sudo_cmd
            .map(|cmd| match shlex::split(cmd) {
                Some(words) if !words.is_empty() => Ok(words),
                _ => Err(PrivilegeError::BadSudoCmd(cmd.to_owned())),
            })
            .transpose()?;
        if custom.is_some() && ask != Ask::Never {
            return Err(PrivilegeError::PasswordForCustom);
        }
        if ask != Ask::Never {
            std::fs::File::open("/dev/tty").map_err(|e| PrivilegeError::NoTerminal(e.to_string()))?;
        }
        let privilege = Privilege { custom, ask, ..Privilege::default() };
        // The one password of the run is asked now, before the records come
        // (after a build and a copy that may take long), as nixos-rebuild-ng
        // asks before it builds; a host that needs none never gets it.
        if ask == Ask::Once {
            let password = ask_password("[nixpipe] sudo password: ")?;
            privilege.passwords.lock().unwrap_or_else(|p| p.into_inner()).insert(String::new(), password);
        }
        Ok(privilege)
    }

    /// Whether some host may be given a sudo password.
    pub fn gives_passwords(&self) -> bool {
        self.ask != Ask::Never
    }

    /// The password for `target`, asked now if it is the first to need it
    /// (of the run, or of that host with [`Ask::PerHost`]); None when the
    /// host needs none (root, passwordless sudo, --sudo-cmd) or none was to
    /// be asked.
    fn password_for(
        &self,
        target: &Target,
        facts: &HostFacts,
        reports: Reports,
    ) -> Result<Option<Zeroizing<String>>, PrivilegeError> {
        if facts.uid == 0
            || self.custom.is_some()
            || self.ask == Ask::Never
            || facts.sudo_without_password == Some(true)
        {
            return Ok(None);
        }
        let key = match self.ask {
            Ask::PerHost => target.to_string(),
            _ => String::new(),
        };
        let mut passwords = self.passwords.lock().unwrap_or_else(|p| p.into_inner());
        if !passwords.contains_key(&key) {
            let prompt = match self.ask {
                Ask::PerHost => format!("[nixpipe] sudo password for {target}: "),
                _ => "[nixpipe] sudo password: ".to_owned(),
            };
            let password = reports.while_paused(|| ask_password(&prompt))?;
            passwords.insert(key.clone(), password);
        }
        Ok(passwords.get(&key).cloned())
    }

    /// The argv that runs `argv` as root on a host with `facts`, with or
    /// without a password to give sudo.
    fn argv(&self, facts: &HostFacts, password: bool, argv: &[&str]) -> Vec<String> {
        let prefix: Vec<String> = match (facts.uid, &self.custom, password) {
            (0, _, _) => Vec::new(),
            (_, Some(custom), _) => custom.clone(),
            // -k: always read the password we send, never a cached ticket
            // that would leave it unread on the command's stdin.
            (_, None, true) => {
                let started = format!("echo '{STARTED}' >&2; exec \"$@\"");
                ["sudo", "-S", "-k", "-p", PROMPT, "--", "sh", "-c", &started, "nixpipe"].map(String::from).to_vec()
            }
            (_, None, false) => ["sudo", "-n", "--"].map(String::from).to_vec(),
        };
        prefix.into_iter().chain(argv.iter().map(|s| s.to_string())).collect()
    }

    /// What runs `argv` as root on `target` (a host with `facts`): the
    /// words to run there, and the password sudo is to be given when it asks
    /// (asked now, if this is the first host to need it).
    pub(crate) fn elevate(
        &self,
        target: &Target,
        facts: &HostFacts,
        argv: &[&str],
        reports: Reports,
    ) -> Result<Elevated, PrivilegeError> {
        let password = self.password_for(target, facts, reports)?;
        Ok(Elevated { argv: self.argv(facts, password.is_some(), argv), password })
    }

    /// Gives sudo the password when it asks, once, and returns when the
    /// command runs: its stderr from then on is the command's. A sudo that
    /// did not ask never gets it (its stdin is the command's input); one
    /// that asks again (a wrong password) gets end of input instead.
    pub(crate) fn answer_sudo(&self, target: &Target, child: &mut Child, password: &str) -> Result<(), PrivilegeError> {
        let mut stderr = child.stderr.take().expect("piped");
        let mut said = Vec::new();
        let mut asked = false;
        let started = format!("{STARTED}\n");
        let mut byte = [0u8; 1];
        // Byte by byte: what follows STARTED must stay unread.
        while stderr.read(&mut byte).unwrap_or(0) == 1 {
            said.push(byte[0]);
            if said.ends_with(PROMPT.as_bytes()) {
                said.truncate(said.len() - PROMPT.len());
                match asked {
                    false => {
                        let line = Zeroizing::new(format!("{password}\n"));
                        let _ = child.stdin.as_mut().expect("piped").write_all(line.as_bytes());
                        asked = true;
                    }
                    true => drop(child.stdin.take()),
                }
            } else if said.ends_with(started.as_bytes()) {
                child.stderr = Some(stderr);
                return Ok(());
            }
        }
        let _ = child.wait();
        let said = String::from_utf8_lossy(&said);
        Err(self.refusal(target, &said).unwrap_or_else(|| PrivilegeError::DidNotRun {
            target: target.to_string(),
            why: crate::process::summarize(said.as_bytes()),
        }))
    }

    /// What sudo's (or doas's, or polkit's for run0 and systemd-run) words
    /// on stderr say of a refusal (read here, once), or None when it was
    /// not their doing.
    pub fn refusal(&self, target: &Target, stderr: &str) -> Option<PrivilegeError> {
        let sudo = self.custom.as_ref().map_or("sudo", |c| c[0].as_str()).to_owned();
        let target = target.to_string();
        let said = |words: [&str; 2]| words.iter().any(|w| stderr.contains(w));
        if self.custom.is_some() {
            return custom_refusal(sudo, target, stderr);
        }
        if said(["a password is required", "a terminal is required"]) {
            return Some(PrivilegeError::NeedsPassword { sudo, target });
        }
        if said(["incorrect password", "Sorry, try again"]) {
            return Some(PrivilegeError::WrongPassword { sudo, target });
        }
        if said(["is not in the sudoers file", "not allowed to execute"]) {
            return Some(PrivilegeError::NotAllowed { sudo, target });
        }
        None
    }
}

/// What the words of a --sudo-cmd (doas, run0, systemd-run) say of a
/// refusal. Polkit speaks through systemd-run, before the unit starts.
fn custom_refusal(sudo: String, target: String, stderr: &str) -> Option<PrivilegeError> {
    let polkit = "Failed to start transient service unit: ";
    let polkit_says =
        |words: &str| stderr.lines().any(|l| l.starts_with(polkit) && l.to_lowercase().contains(&words.to_lowercase()));
    if stderr.contains("doas: Authentication required") || polkit_says("interactive authentication") {
        return Some(PrivilegeError::NeedsAuthentication { sudo, target });
    }
    if stderr.contains("doas: Operation not permitted") || polkit_says("Access denied") {
        return Some(PrivilegeError::NotAllowed { sudo, target });
    }
    // The login user's sh says it (dash, bash).
    if [format!("{sudo}: not found"), format!("{sudo}: command not found")].iter().any(|w| stderr.contains(w)) {
        return Some(PrivilegeError::NotThere { sudo, target });
    }
    None
}

/// Asks on the terminal, never on stdin (the pipe); no terminal is an error.
fn ask_password(prompt: &str) -> Result<Zeroizing<String>, PrivilegeError> {
    rpassword::prompt_password(prompt).map(Zeroizing::new).map_err(|e| PrivilegeError::NoTerminal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(uid: u32, sudo_without_password: Option<bool>) -> HostFacts {
        HostFacts { uid, systemd: true, machine: "x86_64".into(), sudo_without_password }
    }

    fn asked() -> Privilege {
        let privilege = Privilege { ask: Ask::Once, ..Privilege::default() };
        privilege.passwords.lock().unwrap().insert(String::new(), Zeroizing::new("secret".into()));
        privilege
    }

    #[test]
    fn root_needs_no_sudo() {
        assert_eq!(asked().argv(&host(0, None), false, &["id"]), ["id"]);
    }

    #[test]
    fn sudo_reads_the_password_from_stdin_or_never_asks() {
        let started = format!("echo '{STARTED}' >&2; exec \"$@\"");
        assert_eq!(
            asked().argv(&host(1000, Some(false)), true, &["id"]),
            ["sudo", "-S", "-k", "-p", PROMPT, "--", "sh", "-c", &started, "nixpipe", "id"]
        );
        assert_eq!(Privilege::default().argv(&host(1000, Some(false)), false, &["id"]), ["sudo", "-n", "--", "id"]);
    }

    #[test]
    fn the_password_is_never_in_argv() {
        assert!(!asked().argv(&host(1000, Some(false)), true, &["id"]).iter().any(|a| a.contains("secret")));
    }

    #[test]
    fn a_host_that_needs_no_password_is_given_none() {
        let privilege = asked();
        let web1 = Target::parse("deploy@web1").unwrap();
        let given =
            |p: &Privilege, facts| p.password_for(&web1, &facts, Reports::default()).unwrap().map(|p| p.to_string());
        assert_eq!(given(&privilege, host(0, None)), None);
        assert_eq!(given(&privilege, host(1000, Some(true))), None);
        assert_eq!(given(&privilege, host(1000, Some(false))).as_deref(), Some("secret"));
        assert_eq!(given(&Privilege::default(), host(1000, Some(false))), None);
    }

    #[test]
    fn per_host_passwords_are_kept_apart() {
        let privilege = Privilege { ask: Ask::PerHost, ..Privilege::default() };
        privilege.passwords.lock().unwrap().insert("deploy@web1".into(), Zeroizing::new("one".into()));
        privilege.passwords.lock().unwrap().insert("deploy@web2".into(), Zeroizing::new("two".into()));
        let given = |t: &str| {
            privilege.password_for(&Target::parse(t).unwrap(), &host(1000, Some(false)), Reports::default()).unwrap()
        };
        assert_eq!(given("deploy@web1").as_deref().map(String::as_str), Some("one"));
        assert_eq!(given("deploy@web2").as_deref().map(String::as_str), Some("two"));
    }

    #[test]
    fn a_password_for_a_sudo_cmd_is_bad_usage() {
        assert_eq!(Privilege::new(Some("doas -n"), Ask::Once).err(), Some(PrivilegeError::PasswordForCustom));
    }

    #[test]
    fn the_refusals_of_doas_and_polkit_are_told_apart() {
        let target = Target::Local;
        let refusal = |cmd: &str, stderr: &str| Privilege::new(Some(cmd), Ask::Never).unwrap().refusal(&target, stderr);
        let interactive = "Failed to start transient service unit: Access denied as the requested operation \
                           requires interactive authentication. However, ...";
        for (cmd, stderr) in [
            ("doas", "doas: Authentication required"),
            ("run0", interactive),
            ("systemd-run", "Failed to start transient service unit: Interactive authentication required."),
        ] {
            assert!(matches!(refusal(cmd, stderr), Some(PrivilegeError::NeedsAuthentication { .. })), "{stderr}");
        }
        for (cmd, stderr) in [
            ("doas", "doas: Operation not permitted"),
            ("run0", "Failed to start transient service unit: Access denied"),
        ] {
            assert!(matches!(refusal(cmd, stderr), Some(PrivilegeError::NotAllowed { .. })), "{stderr}");
        }
        assert!(matches!(refusal("run0", "sh: 1: run0: not found"), Some(PrivilegeError::NotThere { .. })));
        assert_eq!(refusal("doas", "rm: cannot remove 'x': Operation not permitted"), None);
    }

    #[test]
    fn a_custom_command_is_used_as_given() {
        let doas = Privilege::new(Some("doas -n"), Ask::Never).unwrap();
        assert_eq!(doas.argv(&host(1000, None), false, &["id"]), ["doas", "-n", "id"]);
        assert!(Privilege::new(Some(""), Ask::Never).is_err());
    }
}
