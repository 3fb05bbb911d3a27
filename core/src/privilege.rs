//! Becoming root on a target: directly when logged in as root, otherwise
//! through sudo (or the program given with --sudo-cmd).
//!
//! The password, when there is one, is asked once on /dev/tty and written
//! to the stdin of a sudo of the run only when that sudo asks for it (its
//! prompt is a marker we watch for on its stderr): never to the command's
//! own input, argv, the environment, a log or a file. Without a password
//! sudo runs with `-n`, so it fails at once instead of waiting for an
//! answer nobody can give.

use crate::session::SessionError;
use crate::target::{SshError, Target};
use std::io::{Read, Write};
use std::process::{Child, Command, Output, Stdio};
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
    #[error("sudo on {target} did not run the command: {why}")]
    DidNotRun { target: String, why: String },
    /// Bad usage: found before anything was done.
    #[error("--ask-sudo-password needs a terminal to ask on (/dev/tty): {0}")]
    NoTerminal(String),
    /// Bad usage: found before anything was done.
    #[error("--sudo-cmd '{0}' is not a command")]
    BadSudoCmd(String),
}

/// How the privileged steps of a run become root.
#[derive(Default)]
pub struct Privilege {
    /// The program and its arguments from --sudo-cmd; None for sudo.
    custom: Option<Vec<String>>,
    password: Option<Zeroizing<String>>,
}

impl Privilege {
    /// `sudo_cmd` split as a shell would; `ask` asks the password now.
    pub fn new(sudo_cmd: Option<&str>, ask: bool) -> Result<Privilege, PrivilegeError> {
        let custom = sudo_cmd
            .map(|cmd| match shlex::split(cmd) {
                Some(words) if !words.is_empty() => Ok(words),
                _ => Err(PrivilegeError::BadSudoCmd(cmd.to_owned())),
            })
            .transpose()?;
        let password = ask.then(ask_password).transpose()?;
        Ok(Privilege { custom, password })
    }

    /// The argv that runs `argv` as root for a login with uid `uid`.
    fn argv(&self, uid: u32, argv: &[&str]) -> Vec<String> {
        let prefix: Vec<String> = match (uid, &self.custom, &self.password) {
            (0, _, _) => Vec::new(),
            (_, Some(custom), _) => custom.clone(),
            // -k: always read the password we send, never a cached ticket
            // that would leave it unread on the command's stdin.
            (_, None, Some(_)) => {
                let started = format!("echo '{STARTED}' >&2; exec \"$@\"");
                ["sudo", "-S", "-k", "-p", PROMPT, "--", "sh", "-c", &started, "nixpipe"].map(String::from).to_vec()
            }
            (_, None, None) => ["sudo", "-n", "--"].map(String::from).to_vec(),
        };
        prefix.into_iter().chain(argv.iter().map(|s| s.to_string())).collect()
    }

    /// Starts `argv` as root on `target` (logged in as `uid`), stdout and
    /// stderr piped, the password (if sudo is used) on its stdin.
    pub fn spawn(&self, target: &Target, uid: u32, argv: &[&str], ssh_options: &[&str]) -> Result<Child, SessionError> {
        let mut child = self.spawn_with_stdin(target, uid, argv, ssh_options)?;
        drop(child.stdin.take());
        Ok(child)
    }

    /// [`Privilege::spawn`], its stdin left open for the command (sudo got
    /// the password first, if it asked for it).
    pub fn spawn_with_stdin(
        &self,
        target: &Target,
        uid: u32,
        argv: &[&str],
        ssh_options: &[&str],
    ) -> Result<Child, SessionError> {
        let argv = self.argv(uid, argv);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut cmd: Command = target.command_with(&argv, ssh_options)?;
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| SshError::from(crate::process::CannotRun::of(&cmd, e)))?;
        match self.password.as_ref().filter(|_| uid != 0 && self.custom.is_none()) {
            Some(password) => Ok(self.answer_sudo(target, &mut child, password).map(|()| child)?),
            None => Ok(child),
        }
    }

    /// Gives sudo the password when it asks, once, and returns when the
    /// command runs: its stderr from then on is the command's. A sudo that
    /// did not ask never gets it (its stdin is the command's input); one
    /// that asks again (a wrong password) gets end of input instead.
    fn answer_sudo(&self, target: &Target, child: &mut Child, password: &str) -> Result<(), PrivilegeError> {
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

    /// Runs `argv` as root to its end, `input` on its stdin (sudo got the
    /// password first, if it asked for it); what it printed, whatever its
    /// status.
    pub fn output(
        &self,
        target: &Target,
        uid: u32,
        argv: &[&str],
        ssh_options: &[&str],
        input: &[u8],
    ) -> Result<Output, SessionError> {
        let mut child = self.spawn_with_stdin(target, uid, argv, ssh_options)?;
        if let Some(mut stdin) = child.stdin.take() {
            // A command that died early is reported from its stderr.
            let _ = stdin.write_all(input);
        }
        child
            .wait_with_output()
            .map_err(|e| SshError::from(crate::process::CannotRun { program: "ssh".into(), why: e.to_string() }).into())
    }

    /// The error of a privileged `program` that failed: sudo's refusal,
    /// else the program's own failure.
    pub fn failure(&self, target: &Target, program: &str, output: &Output) -> SessionError {
        let stderr = String::from_utf8_lossy(&output.stderr);
        match self.refusal(target, &stderr) {
            Some(refusal) => refusal.into(),
            None => target.failure(program, output).into(),
        }
    }

    /// What sudo's words on stderr say of a refusal (read here, once), or
    /// None when it was not sudo's doing.
    pub fn refusal(&self, target: &Target, stderr: &str) -> Option<PrivilegeError> {
        let sudo = self.custom.as_ref().map_or("sudo", |c| c[0].as_str()).to_owned();
        let target = target.to_string();
        let said = |words: [&str; 2]| words.iter().any(|w| stderr.contains(w));
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

/// Asks on the terminal, never on stdin (the pipe); no terminal is an error.
fn ask_password() -> Result<Zeroizing<String>, PrivilegeError> {
    rpassword::prompt_password("[nixpipe] sudo password: ")
        .map(Zeroizing::new)
        .map_err(|e| PrivilegeError::NoTerminal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_password() -> Privilege {
        Privilege { custom: None, password: Some(Zeroizing::new("secret".into())) }
    }

    #[test]
    fn root_needs_no_sudo() {
        assert_eq!(with_password().argv(0, &["id"]), ["id"]);
    }

    #[test]
    fn sudo_reads_the_password_from_stdin_or_never_asks() {
        let started = format!("echo '{STARTED}' >&2; exec \"$@\"");
        assert_eq!(
            with_password().argv(1000, &["id"]),
            ["sudo", "-S", "-k", "-p", PROMPT, "--", "sh", "-c", &started, "nixpipe", "id"]
        );
        assert_eq!(Privilege::default().argv(1000, &["id"]), ["sudo", "-n", "--", "id"]);
    }

    #[test]
    fn the_password_is_never_in_argv() {
        assert!(!with_password().argv(1000, &["id"]).iter().any(|a| a.contains("secret")));
    }

    #[test]
    fn a_custom_command_is_used_as_given() {
        let doas = Privilege::new(Some("doas -n"), false).unwrap();
        assert_eq!(doas.argv(1000, &["id"]), ["doas", "-n", "id"]);
        assert!(Privilege::new(Some(""), false).is_err());
    }
}
