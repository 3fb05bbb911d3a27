//! One typed way to act on a host: a [`Session`] holds a target, how to
//! become root there, and what was learnt about it once; every program and
//! every [`Script`] nixpipe runs on a host goes through it.
//!
//! Scripts are files in core/scripts, run as `sh -c BOOTSTRAP nixpipe
//! SCRIPT ARGS...` (the one place that argv is made). The ones that answer
//! start with prelude.sh and answer in one format, events on a channel the
//! programs they run do not write to (see prelude.sh), parsed here once
//! into typed [`Event`]s.

use crate::event::{Event, HostFacts};
use crate::privilege::{Privilege, PrivilegeError};
use crate::process;
use crate::target::{SshError, Target};
use std::process::{Child, Command, Output};
use std::sync::OnceLock;

/// ssh options for a connection of its own: never a shared ControlMaster,
/// which would prove nothing about whether the host lets anyone in now.
pub const NEW_CONNECTION: [&str; 4] = ["-o", "ControlMaster=no", "-o", "ControlPath=none"];

/// Runs the script given as $1 with the arguments after it, so that a
/// script can keep a copy of itself ($self: the job does).
const BOOTSTRAP: &str = r#"self=$1; shift; eval "$self""#;
const PRELUDE: &str = include_str!("../scripts/prelude.sh");

/// The scripts nixpipe runs on hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Script {
    /// The session's facts and nothing else.
    Facts,
    /// What nixpipe-activate checks before anything changes.
    Probe,
    /// The activation job and its follower (run as root).
    Job,
    /// microvm.nix's layout of /var/lib/microvms (run as root).
    MicrovmHost,
    /// The relay's side of `nixpipe-copy --via HOST`.
    Relay,
    /// The closures of two systems, for --diff.
    Requisites,
    /// Which boot this is, and what runs (--reboot).
    BootState,
    /// What runs, is booted and is in the profile (nixpipe-status).
    Status,
    /// Writes deployment.keys (run as root; their contents on stdin).
    Keys,
    /// nix-store --serve --write after the copy's GC roots (and for zstd,
    /// a byte saying whether it is there, or zstd in front).
    Serve,
}

impl Script {
    /// The script's own text.
    fn body(self) -> &'static str {
        match self {
            Script::Facts => include_str!("../scripts/facts.sh"),
            Script::Probe => include_str!("../scripts/probe.sh"),
            Script::Job => include_str!("../scripts/job.sh"),
            Script::MicrovmHost => include_str!("../scripts/microvm-host.sh"),
            Script::Relay => include_str!("../scripts/relay.sh"),
            Script::Requisites => include_str!("../scripts/requisites.sh"),
            Script::BootState => include_str!("../scripts/boot-state.sh"),
            Script::Status => include_str!("../scripts/status.sh"),
            Script::Keys => include_str!("../scripts/keys.sh"),
            Script::Serve => include_str!("../scripts/serve.sh"),
        }
    }

    /// Whether it answers in events; the serve script's stdout is the
    /// protocol's, and stays its.
    fn answers_in_events(self) -> bool {
        self != Script::Serve
    }

    /// The whole text that runs: the prelude, then the script.
    pub fn source(self) -> String {
        match self.answers_in_events() {
            true => format!("{PRELUDE}\n{}", self.body()),
            false => self.body().to_owned(),
        }
    }

    /// The argv that runs the script with `args`, words never parsed as
    /// shell.
    pub fn argv<S: AsRef<str>>(self, args: &[S]) -> Vec<String> {
        let head = ["sh".to_owned(), "-c".to_owned(), BOOTSTRAP.to_owned(), "nixpipe".to_owned(), self.source()];
        head.into_iter().chain(args.iter().map(|a| a.as_ref().to_owned())).collect()
    }
}

/// Why something run on a host failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error(transparent)]
    Privilege(#[from] PrivilegeError),
}

/// A target, how to become root there, and what was learnt about it.
pub struct Session<'a> {
    pub target: Target,
    privilege: &'a Privilege,
    facts: OnceLock<HostFacts>,
}

impl<'a> Session<'a> {
    pub fn new(target: Target, privilege: &'a Privilege) -> Session<'a> {
        Session { target, privilege, facts: OnceLock::new() }
    }

    /// What the host is, learnt once: from the first script that said it
    /// (the probe does), else by asking.
    pub fn facts(&self) -> Result<&HostFacts, SessionError> {
        if let Some(facts) = self.facts.get() {
            return Ok(facts);
        }
        let facts = self.answer(Script::Facts, &[] as &[&str], &[], "facts", |e| match e {
            Event::Host(facts) => Some(facts),
            _ => None,
        })?;
        Ok(self.facts.get_or_init(|| facts))
    }

    /// Keeps the host facts among `events`.
    fn learn(&self, events: &[Event]) {
        if let Some(Event::Host(facts)) = events.iter().find(|e| matches!(e, Event::Host(_))) {
            let _ = self.facts.set(facts.clone());
        }
    }

    /// A command that runs `argv` on the host as the login user, ssh with
    /// `ssh_options` first.
    pub fn command(&self, argv: &[&str], ssh_options: &[&str]) -> Result<Command, SshError> {
        self.target.command_with(argv, ssh_options)
    }

    /// Runs `argv` as the login user; what it printed on stdout.
    pub fn run(&self, argv: &[&str]) -> Result<String, SshError> {
        self.target.run(argv)
    }

    /// Runs `script` as the login user; its events.
    pub fn script<S: AsRef<str>>(&self, script: Script, args: &[S]) -> Result<Vec<Event>, SessionError> {
        self.script_with(script, args, &[])
    }

    /// [`Session::script`] with more ssh options (a new connection, a
    /// timeout).
    pub fn script_with<S: AsRef<str>>(
        &self,
        script: Script,
        args: &[S],
        ssh_options: &[&str],
    ) -> Result<Vec<Event>, SessionError> {
        let argv = script.argv(args);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let output = process::capture(&mut self.target.command_with(&argv, ssh_options)?).map_err(SshError::from)?;
        if !output.status.success() {
            return Err(self.target.failure(script.name(), &output).into());
        }
        let events = crate::event::parse_all(&output.stdout);
        self.learn(&events);
        Ok(events)
    }

    /// Runs `script` as the login user (ssh with `ssh_options`) for the one
    /// answer `pick` takes from its events; a script that did not give it
    /// is an error naming `what`.
    pub fn answer<S: AsRef<str>, T>(
        &self,
        script: Script,
        args: &[S],
        ssh_options: &[&str],
        what: &str,
        pick: impl FnMut(Event) -> Option<T>,
    ) -> Result<T, SessionError> {
        let events = self.script_with(script, args, ssh_options)?;
        events
            .into_iter()
            .find_map(pick)
            .ok_or_else(|| SshError::NoAnswer { target: self.target.to_string(), what: what.to_owned() }.into())
    }

    /// Runs `script` as root to its end; its events, or why not.
    pub fn script_as_root<S: AsRef<str>>(&self, script: Script, args: &[S]) -> Result<Vec<Event>, SessionError> {
        self.script_as_root_with_input(script, args, &[])
    }

    /// [`Session::script_as_root`] with `input` on the script's stdin.
    pub fn script_as_root_with_input<S: AsRef<str>>(
        &self,
        script: Script,
        args: &[S],
        input: &[u8],
    ) -> Result<Vec<Event>, SessionError> {
        let argv = script.argv(args);
        let output = self.output_as_root(&argv.iter().map(String::as_str).collect::<Vec<_>>(), &[], input)?;
        if !output.status.success() {
            return Err(self.privilege.failure(&self.target, script.name(), &output));
        }
        Ok(crate::event::parse_all(&output.stdout))
    }

    /// Runs `argv` as root to its end with `input` on its stdin; what it
    /// printed, whatever its status.
    pub fn output_as_root(&self, argv: &[&str], ssh_options: &[&str], input: &[u8]) -> Result<Output, SessionError> {
        self.privilege.output(&self.target, self.facts()?, argv, ssh_options, input)
    }

    /// Starts `script` as root, stdout and stderr piped, stdin closed.
    pub fn spawn_script_as_root<S: AsRef<str>>(
        &self,
        script: Script,
        args: &[S],
        ssh_options: &[&str],
    ) -> Result<Child, SessionError> {
        let argv = script.argv(args);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        self.privilege.spawn(&self.target, self.facts()?, &argv, ssh_options)
    }

    /// One line for a privileged program that failed (sudo's refusal, or
    /// the program's own failure).
    pub fn root_failure(&self, program: &str, output: &Output) -> SessionError {
        self.privilege.failure(&self.target, program, output)
    }

    /// Turns what sudo said about a refusal into an error, or None when it
    /// was not sudo's doing.
    pub fn refusal(&self, stderr: &str) -> Option<PrivilegeError> {
        self.privilege.refusal(&self.target, stderr)
    }
}

impl Script {
    /// What errors call it.
    fn name(self) -> &'static str {
        match self {
            Script::Facts => "the facts script",
            Script::Probe => "the probe",
            Script::Job => "the activation job",
            Script::MicrovmHost => "the microvm host script",
            Script::Relay => "the relay's copy",
            Script::Requisites => "nix-store --query --requisites",
            Script::BootState => "the boot state script",
            Script::Status => "the status script",
            Script::Keys => "the keys script",
            Script::Serve => "nix-store --serve",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_run_through_one_bootstrap_with_their_arguments_as_words() {
        let argv = Script::Probe.argv(&["/nix/store/x y", "$(id)"]);
        assert_eq!(argv[..4], ["sh", "-c", BOOTSTRAP, "nixpipe"]);
        assert!(argv[4].starts_with(PRELUDE));
        assert_eq!(argv[5..], ["/nix/store/x y", "$(id)"]);
        assert!(!Script::Serve.argv(&[] as &[&str])[4].contains("emit"));
    }
}
