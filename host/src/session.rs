//! One typed way to act on a host: a [`Session`] holds a target, how to
//! become root there, and what was learnt about it once; every program and
//! every [`Script`] nixpipe runs on a host goes through it.
//!
//! Scripts are files in host/scripts, run as `sh -c BOOTSTRAP nixpipe
//! SCRIPT ARGS...` (the one place that argv is made). The ones that answer
//! start with prelude.sh and answer in one format, events on a channel the
//! programs they run do not write to (see prelude.sh), parsed here once
//! into typed [`Event`]s.

use crate::event::{Event, HostFacts};
use crate::privilege::{Privilege, PrivilegeError};
use crate::process;
use crate::target::{SshError, Target};
use std::io::Write;
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;

/// ssh options for a connection of its own: never a shared ControlMaster,
/// which would prove nothing about whether the host lets anyone in now.
pub const NEW_CONNECTION: [&str; 4] = ["-o", "ControlMaster=no", "-o", "ControlPath=none"];

/// Runs the script given in base64 as $1 with the arguments quoted for sh in
/// base64 as $2, so that a script can keep a copy of itself ($self: the job
/// does). In base64 because a `--sudo-cmd` of systemd-run or run0 hands the
/// words to systemd, which expands `${...}` and `$$` in them (an unknown
/// name to nothing): no `${` nor `$$` may reach it, here or in the script.
const BOOTSTRAP: &str = r#"self=$(echo "$1" | base64 -d); eval "set -- $(echo "$2" | base64 -d)"; eval "$self""#;
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

    /// The argv that runs the script with `args`, each quoted for sh as one
    /// word (shlex, as every remote command).
    pub fn argv<S: AsRef<str>>(self, args: &[S]) -> Vec<String> {
        use base64::Engine;
        let base64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
        // A NUL cannot be an argument at all; the script then sees none there.
        let quoted: Vec<String> = args
            .iter()
            .map(|a| shlex::try_quote(a.as_ref()).map_or_else(|_| "''".into(), |q| q.into_owned()))
            .collect();
        ["sh", "-c", BOOTSTRAP, "nixpipe"]
            .map(str::to_owned)
            .into_iter()
            .chain([base64(&self.source()), base64(&quoted.join(" "))])
            .collect()
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
        let mut cmd = self.target.command_with(&argv, ssh_options)?;
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let output = cmd
            .spawn()
            .and_then(|child| process::wait_keeping(child, crate::event::is_event_line))
            .map_err(|e| self.target.waited(&cmd.get_program().to_string_lossy(), e))?;
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
            return Err(self.root_failure(script.name(), &output));
        }
        Ok(crate::event::parse_all(&output.stdout))
    }

    /// Runs `argv` as root to its end with `input` on its stdin; what it
    /// printed, whatever its status.
    pub fn output_as_root(&self, argv: &[&str], ssh_options: &[&str], input: &[u8]) -> Result<Output, SessionError> {
        let mut child = self.spawn_as_root_with_stdin(argv, ssh_options)?;
        if let Some(mut stdin) = child.stdin.take() {
            // A command that died early is reported from its stderr.
            let _ = stdin.write_all(input);
        }
        process::wait_keeping(child, crate::event::is_event_line).map_err(|e| self.target.waited("ssh", e).into())
    }

    /// Starts `argv` as root, stdout and stderr piped, its stdin open for
    /// the command (sudo got the password first, if it asked for it).
    pub fn spawn_as_root_with_stdin(&self, argv: &[&str], ssh_options: &[&str]) -> Result<Child, SessionError> {
        let elevated = self.privilege.elevate(&self.target, self.facts()?, argv)?;
        let argv: Vec<&str> = elevated.argv.iter().map(String::as_str).collect();
        let mut cmd = self.target.command_with(&argv, ssh_options)?;
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| SshError::from(process::CannotRun::of(&cmd, e)))?;
        if let Some(password) = &elevated.password {
            self.privilege.answer_sudo(&self.target, &mut child, password)?;
        }
        Ok(child)
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
        let mut child = self.spawn_as_root_with_stdin(&argv, ssh_options)?;
        drop(child.stdin.take());
        Ok(child)
    }

    /// One line for a privileged program that failed (sudo's refusal, or
    /// the program's own failure).
    pub fn root_failure(&self, program: &str, output: &Output) -> SessionError {
        let stderr = String::from_utf8_lossy(&output.stderr);
        match self.refusal(&stderr) {
            Some(refusal) => refusal.into(),
            None => self.target.failure(program, output).into(),
        }
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

    /// Runs `argv` here with sh, as a host would: what the script prints.
    fn run_here(argv: &[String]) -> String {
        let out = std::process::Command::new(&argv[0]).args(&argv[1..]).output().unwrap();
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn scripts_run_through_one_bootstrap_with_their_arguments_as_words() {
        let args = ["/nix/store/x y", "$(id)", "${HOME}", "$$", "it's", "", "a\nb"];
        let argv = Script::Probe.argv(&args);
        assert_eq!(argv[..4], ["sh", "-c", BOOTSTRAP, "nixpipe"]);
        assert_eq!(argv.len(), 6);
        let mut echo = Script::Serve.argv(&args);
        echo[4] = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, r#"printf '[%s]' "$@""#);
        assert_eq!(run_here(&echo), "[/nix/store/x y][$(id)][${HOME}][$$][it's][][a\nb]");
    }

    #[test]
    fn nothing_systemd_would_expand_reaches_a_sudo_cmd() {
        for script in [Script::Job, Script::Probe, Script::Keys, Script::Serve] {
            let argv = script.argv(&["${x}", "$$"]);
            assert!(!argv.iter().any(|word| word.contains("${") || word.contains("$$")), "{script:?}: {argv:?}");
        }
    }

    #[test]
    fn a_script_answers_in_events_whatever_its_programs_print() {
        let argv = Script::Facts.argv(&[] as &[&str]);
        let output = std::process::Command::new(&argv[0]).args(&argv[1..]).output().unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(text.lines().all(|l| crate::event::is_event_line(l.as_bytes())), "{text}");
        assert!(matches!(crate::event::parse_all(&output.stdout)[..], [Event::Host(_)]), "{text}");
    }
}
