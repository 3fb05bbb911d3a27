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
use crate::privilege::{Elevated, Privilege, PrivilegeError};
use crate::process;
use crate::report::Reports;
use crate::target::{Link, SshError, Target};
use std::io::{BufReader, Write};
use std::process::{Child, Output, Stdio};
use std::sync::{LazyLock, OnceLock};

/// Runs the script given in base64 as $1 with the arguments quoted for sh in
/// base64 as $2, so that a script can keep a copy of itself ($self: the job
/// does). In base64 because a `--sudo-cmd` of systemd-run or run0 hands the
/// words to systemd, which expands `${...}` and `$$` in them (an unknown
/// name to nothing): no `${` nor `$$` may reach it, here or in the script.
const BOOTSTRAP: &str = r#"self=$(echo "$1" | base64 -d); eval "set -- $(echo "$2" | base64 -d)"; eval "$self""#;
const ARGS: &str = include_str!("../scripts/args.sh");
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
    pub const ALL: [Script; 10] = [
        Script::Facts,
        Script::Probe,
        Script::Job,
        Script::MicrovmHost,
        Script::Relay,
        Script::Requisites,
        Script::BootState,
        Script::Status,
        Script::Keys,
        Script::Serve,
    ];

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

    /// The whole text that runs: args.sh, the prelude for a script that
    /// answers in events, then the script.
    pub fn source(self) -> String {
        match self.answers_in_events() {
            true => format!("{ARGS}\n{PRELUDE}\n{}", self.body()),
            false => format!("{ARGS}\n{}", self.body()),
        }
    }

    /// The named arguments the script (with `verb`) takes, as its `takes`
    /// line says, and whether a list follows them; None for a verb it does
    /// not have. [`Script::argv`] gives it exactly these.
    fn takes(self, verb: Option<&str>) -> Option<(&'static [&'static str], bool)> {
        const JOB: [&str; 12] = [
            "id",
            "who",
            "action",
            "system",
            "program",
            "confirm",
            "mode",
            "root",
            "bootloader",
            "units_policy",
            "lock_wait",
            "once",
        ];
        Some(match (self, verb) {
            (Script::Facts | Script::BootState, None) => (&[], false),
            (Script::Probe, None) => (&["path", "spec", "which", "hold", "loader"], false),
            (Script::Job, Some("launch" | "job")) => (&JOB, false),
            (Script::Job, Some("follow")) => (&["id", "log_at", "events_at"], false),
            (Script::Job, Some("confirm" | "reject")) => (&["id"], false),
            (Script::Job, Some("forget")) => (&["generation", "previous", "default"], false),
            (Script::MicrovmHost, Some("install")) => (&["name", "runner", "restart"], false),
            (Script::MicrovmHost, Some("list")) => (&[], false),
            (Script::MicrovmHost, Some("remove")) => (&["name", "purge"], false),
            (Script::Relay, None) => (&["destination", "port", "known_as", "making_roots", "protocol"], false),
            (Script::Requisites, None) => (&["before", "after"], false),
            (Script::Status, None) => (&["path"], false),
            (Script::Keys, None) => (&[], true),
            (Script::Serve, None) => (&["protocol", "how"], true),
            _ => return None,
        })
    }

    /// The argv that runs the script with `args`: the verb, `KEY=VALUE`
    /// words, then `--` and the list, each quoted for sh as one word (shlex,
    /// as every remote command). Arguments the script does not take are a
    /// bug here, as they would be refused there (args.sh).
    pub fn argv(self, args: &Args) -> Vec<String> {
        use base64::Engine;
        let base64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
        let (keys, list) = self.takes(args.verb).unwrap_or_else(|| panic!("{self:?} has no verb {:?}", args.verb));
        let mut given: Vec<&str> = args.named.iter().map(|(key, _)| *key).collect();
        given.sort_unstable();
        let mut wanted = keys.to_vec();
        wanted.sort_unstable();
        assert!(
            given == wanted && (list || args.list.is_empty()),
            "{self:?} {:?} takes {keys:?}, given {given:?}",
            args.verb
        );
        let words = args.verb.map(str::to_owned).into_iter().chain(args.named.iter().map(|(k, v)| format!("{k}={v}")));
        let words = words.chain((!args.list.is_empty()).then(|| "--".to_owned())).chain(args.list.iter().cloned());
        // A NUL cannot be an argument at all; the script then sees none there.
        let quoted: Vec<String> =
            words.map(|a| shlex::try_quote(&a).map_or_else(|_| "''".into(), |q| q.into_owned())).collect();
        ["sh", "-c", BOOTSTRAP, "nixpipe"]
            .map(str::to_owned)
            .into_iter()
            .chain([base64(&self.source()), base64(&quoted.join(" "))])
            .collect()
    }
}

/// A script's arguments: a verb for the scripts that have verbs (job.sh's
/// `launch`, `follow`...), named values, and the list of the scripts that
/// take one; args.sh reads them on the host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Args {
    verb: Option<&'static str>,
    named: Vec<(&'static str, String)>,
    list: Vec<String>,
}

impl Args {
    pub fn new() -> Args {
        Args::default()
    }

    /// The arguments of the script's `verb`.
    pub fn verb(verb: &'static str) -> Args {
        Args { verb: Some(verb), ..Args::default() }
    }

    pub fn set(mut self, key: &'static str, value: impl Into<String>) -> Args {
        self.named.push((key, value.into()));
        self
    }

    pub fn list<S: Into<String>>(mut self, items: impl IntoIterator<Item = S>) -> Args {
        self.list.extend(items.into_iter().map(Into::into));
        self
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

impl SessionError {
    /// Bad usage, found before anything ran, whichever error wraps it.
    pub fn is_usage(&self) -> bool {
        match self {
            SessionError::Ssh(e) => e.is_usage(),
            SessionError::Privilege(e) => e.is_usage(),
        }
    }
}

/// What runs on a host, as whom, with what input and over which link: the
/// one description every run on a host takes ([`Session::spawn`] and the
/// calls over it).
#[derive(Clone, Debug)]
pub struct Run<'r> {
    argv: Vec<String>,
    /// What errors call it.
    name: String,
    /// Its stdout is events (a [`Script`] that answers), the rest dropped.
    answers: bool,
    root: bool,
    input: &'r [u8],
    link: Link,
    /// Its stderr goes to ours as it comes (a build's log).
    shows_stderr: bool,
}

impl<'r> Run<'r> {
    /// A program, as the login user.
    pub fn program<S: AsRef<str>>(argv: &[S]) -> Run<'r> {
        let argv: Vec<String> = argv.iter().map(|a| a.as_ref().to_owned()).collect();
        let name = argv[0].clone();
        Run { argv, name, answers: false, root: false, input: &[], link: Link::default(), shows_stderr: false }
    }

    /// One of our scripts, as the login user.
    pub fn script(script: Script, args: &Args) -> Run<'r> {
        Run {
            argv: script.argv(args),
            name: script.name().to_owned(),
            answers: script.answers_in_events(),
            ..Run::program(&["sh"])
        }
    }

    /// As root, the way the session's privilege says.
    pub fn as_root(self) -> Run<'r> {
        Run { root: true, ..self }
    }

    /// With `input` on its stdin.
    pub fn input(self, input: &'r [u8]) -> Run<'r> {
        Run { input, ..self }
    }

    pub fn over(self, link: Link) -> Run<'r> {
        Run { link, ..self }
    }

    pub fn showing_stderr(self) -> Run<'r> {
        Run { shows_stderr: true, ..self }
    }
}

/// What starts a session's processes: on the host itself ([`OnHost`]),
/// or in tests a scripted fake host (the `fake` feature's
/// `fake::FakeHost`), as nixos-rebuild-ng's tests patch its runner.
pub trait Runner: Sync {
    /// Starts `argv` (made root's already, where it is to run as root) on
    /// `target` over `link`: stdin and stdout piped, stderr as given.
    fn start(&self, target: &Target, argv: &[&str], link: &Link, stderr: Stdio) -> Result<Child, SshError>;

    /// Whether a session it started can be held for one more run
    /// ([`Session::answer_holding`]): a scripted host answers each run
    /// once, and cannot.
    fn holds(&self) -> bool {
        true
    }
}

/// Runs on the host: locally, or through ssh.
pub struct OnHost;

impl Runner for OnHost {
    fn start(&self, target: &Target, argv: &[&str], link: &Link, stderr: Stdio) -> Result<Child, SshError> {
        let mut cmd = target.command_with(argv, link)?;
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(stderr);
        Ok(cmd.spawn().map_err(|e| process::CannotRun::of(&cmd, e))?)
    }
}

/// A target, how to become root there, and what was learnt about it: the
/// only way anything runs on a host, local or remote ([`Session::spawn`]).
pub struct Session<'a> {
    pub target: Target,
    privilege: &'a Privilege,
    /// Where what happens on the host is reported.
    pub reports: Reports,
    runner: &'a dyn Runner,
    facts: OnceLock<HostFacts>,
}

/// The privilege of sessions that never become root (copies, builds).
static AS_LOGIN_USER: LazyLock<Privilege> = LazyLock::new(Privilege::default);

impl<'a> Session<'a> {
    pub fn new(target: Target, privilege: &'a Privilege, reports: Reports) -> Session<'a> {
        Session::with_runner(target, privilege, reports, &OnHost)
    }

    /// A session whose processes `runner` starts.
    pub fn with_runner(
        target: Target,
        privilege: &'a Privilege,
        reports: Reports,
        runner: &'a dyn Runner,
    ) -> Session<'a> {
        Session { target, privilege, reports, runner, facts: OnceLock::new() }
    }

    /// A session that runs everything as the login user.
    pub fn as_login_user(target: Target, reports: Reports) -> Session<'static> {
        Session::new(target, &AS_LOGIN_USER, reports)
    }

    /// What the host is, learnt once: from the first script that said it
    /// (the probe does), else by asking.
    pub fn facts(&self) -> Result<&HostFacts, SessionError> {
        if let Some(facts) = self.facts.get() {
            return Ok(facts);
        }
        let facts = self.answer(&Run::script(Script::Facts, &Args::new()), "facts", |e| match e {
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

    /// Starts `run`, stdout (and stderr, unless it shows it) piped, stdin
    /// open for the caller (sudo got its password first, when it asked):
    /// the one place a process on a host is started.
    pub fn spawn(&self, run: &Run) -> Result<Child, SessionError> {
        let elevated = self.elevated(run)?;
        let argv: Vec<&str> = elevated.argv.iter().map(String::as_str).collect();
        let ahead = !run.shows_stderr && elevated.password.is_none() && self.runner.holds();
        if let Some(child) = ahead.then(|| ahead::run(&self.target, &run.link, &argv)).flatten() {
            return Ok(child);
        }
        let stderr = if run.shows_stderr { Stdio::inherit() } else { Stdio::piped() };
        let mut child = self.runner.start(&self.target, &argv, &run.link, stderr)?;
        if let Some(password) = &elevated.password {
            self.privilege.answer_sudo(&self.target, &mut child, password)?;
        }
        Ok(child)
    }

    /// `run`'s argv, made root's when it runs as root (and the password
    /// sudo will ask for, if it asks).
    fn elevated(&self, run: &Run) -> Result<Elevated, SessionError> {
        let argv: Vec<&str> = run.argv.iter().map(String::as_str).collect();
        Ok(match run.root {
            true => self.privilege.elevate(&self.target, self.facts()?, &argv, self.reports)?,
            false => Elevated { argv: run.argv.clone(), password: None },
        })
    }

    /// Whether this session's runs can be held for one more run: not
    /// where a sudo password may be given. Held, a session's input stays
    /// open until its next command, and a login that reads its input first
    /// (a compromised one, fishing for the password it would be given)
    /// would wait for that command while nixpipe waits for the answer.
    pub fn can_hold(&self) -> bool {
        self.runner.holds() && !self.privilege.gives_passwords()
    }

    /// Runs `run`, a script that holds its session once it answered
    /// (probe.sh with `hold=1`), for the one answer `pick` takes from its
    /// events; the session, held for one more run ([`Held::then`]).
    pub fn answer_holding<T>(
        &self,
        run: &Run,
        what: &str,
        mut pick: impl FnMut(Event) -> Option<T>,
    ) -> Result<(T, Held), SessionError> {
        let mut child = self.spawn(run)?;
        let stderr = process::drain(child.stderr.take().expect("piped"));
        let watchdog = process::Watchdog::start(child.id());
        let mut reader = BufReader::new(watchdog.watched(child.stdout.take().expect("piped")));
        let mut printed = Vec::new();
        let read = loop {
            let line = match process::bounded_line(&mut reader, process::LONGEST_KEPT_LINE) {
                Ok(Some(line)) => line,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            };
            let Some(event) = crate::event::parse_line(&String::from_utf8_lossy(&line)) else { continue };
            self.learn(std::slice::from_ref(&event));
            match pick(event) {
                // The script waits for the next run now: nothing else can
                // have come yet.
                Some(answer) if reader.buffer().is_empty() => {
                    child.stdout = Some(reader.into_inner().into_inner());
                    return Ok((answer, Held { child: Some(child), stderr: Some(stderr) }));
                }
                Some(_) => break Ok(()),
                None => printed.extend_from_slice(&line),
            }
        };
        // It ended without its answer: said as a run to its end says it.
        drop(child.stdin.take());
        let status = child.wait().map_err(|e| self.target.waited("ssh", e))?;
        if let Some(seconds) = watchdog.fired() {
            return Err(self.target.waited("ssh", process::Silent(seconds).error()).into());
        }
        read.map_err(|e| self.target.waited("ssh", e))?;
        let output = Output { status, stdout: printed, stderr: stderr.join().unwrap_or_default().into_bytes() };
        if !output.status.success() {
            return Err(self.target.failure(&run.name, &output).into());
        }
        Err(SshError::NoAnswer { target: self.target.to_string(), what: what.to_owned() }.into())
    }

    /// Opens a control master to the host over `link` (which names its
    /// socket): an ssh that runs nothing there and holds the connection
    /// for the sessions over it.
    pub fn open_master(&self, link: &Link) -> Result<Child, SessionError> {
        Ok(self.runner.start(&self.target, &[], link, Stdio::piped())?)
    }

    /// Runs `run` to its end, its input written; what it printed, whatever
    /// its status (of a script, the event lines of its stdout).
    pub fn output(&self, run: &Run) -> Result<Output, SessionError> {
        let mut child = self.spawn(run)?;
        if let Some(mut stdin) = child.stdin.take() {
            // A command that died early is reported from its stderr.
            let _ = stdin.write_all(run.input);
        }
        let waited = match run.answers {
            // Watched: a script says something, or is stopped.
            true => process::wait_keeping(child, crate::event::is_event_line),
            false => child.wait_with_output(),
        };
        waited.map_err(|e| self.target.waited("ssh", e).into())
    }

    /// Runs `run` to its end; what it printed, or the error of its failure.
    pub fn succeeded(&self, run: &Run) -> Result<Output, SessionError> {
        let output = self.output(run)?;
        match (output.status.success(), run.root) {
            (true, _) => Ok(output),
            (false, true) => Err(self.root_failure(&run.name, &output)),
            (false, false) => Err(self.target.failure(&run.name, &output).into()),
        }
    }

    /// Runs `run`, a program, to its end; what it printed on stdout.
    pub fn stdout(&self, run: &Run) -> Result<String, SessionError> {
        let output = self.succeeded(run)?;
        String::from_utf8(output.stdout)
            .map_err(|_| SshError::NotUtf8 { program: run.name.clone(), target: self.target.to_string() }.into())
    }

    /// Runs `run`, a script, to its end; its events.
    pub fn events(&self, run: &Run) -> Result<Vec<Event>, SessionError> {
        let events = crate::event::parse_all(&self.succeeded(run)?.stdout);
        self.learn(&events);
        Ok(events)
    }

    /// Runs `run`, a script, for the one answer `pick` takes from its
    /// events; a script that did not give it is an error naming `what`.
    pub fn answer<T>(&self, run: &Run, what: &str, pick: impl FnMut(Event) -> Option<T>) -> Result<T, SessionError> {
        self.events(run)?
            .into_iter()
            .find_map(pick)
            .ok_or_else(|| SshError::NoAnswer { target: self.target.to_string(), what: what.to_owned() }.into())
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

/// Sessions opened ahead of their first run: a login shell that waits
/// for one command line, started while a command's input is still coming
/// (nixpipe-activate's records, from a copy to the same host), so that the
/// first run starts without a session's start and its round trip.
pub mod ahead {
    use super::{OnHost, Runner};
    use crate::target::{Link, Target};
    use std::io::Write;
    use std::process::{Child, Stdio};
    use std::sync::Mutex;

    /// What a session opened ahead runs: one command line, as ssh would
    /// have been given it, then that command.
    const WAITING: &str = r#"IFS= read -r next || exit 0; eval "$next""#;

    /// The sessions opened ahead and not yet taken.
    static OPEN: Mutex<Vec<(Target, Link, Child)>> = Mutex::new(Vec::new());

    /// Opens, on a thread of its own, the session that the first run to
    /// `target` over `link` goes over: only over our shared connection
    /// (else it would be a login of its own, or a master of the user's
    /// made in a race with the command that feeds this one); never where a
    /// sudo password may be given (see `Session::can_hold`). One left
    /// unused ends with the command: its input ends.
    pub fn open(target: Target, link: Link) {
        std::thread::spawn(move || {
            if !target.warm_up() {
                return;
            }
            if let Ok(child) = OnHost.start(&target, &["sh", "-c", WAITING], &link, Stdio::piped()) {
                OPEN.lock().unwrap_or_else(|p| p.into_inner()).push((target, link, child));
            }
        });
    }

    /// Runs `argv` over the session opened ahead for `target` and `link`,
    /// if there is one still waiting: the child, its stdin open for the
    /// caller.
    pub(super) fn run(target: &Target, link: &Link, argv: &[&str]) -> Option<Child> {
        let mut open = OPEN.lock().unwrap_or_else(|p| p.into_inner());
        let i = open.iter().position(|(t, l, _)| t == target && l == link)?;
        let (_, _, mut child) = open.swap_remove(i);
        drop(open);
        let line = crate::target::remote_command(argv).ok()? + "\n";
        let waiting = matches!(child.try_wait(), Ok(None));
        let written = waiting && child.stdin.as_mut().is_some_and(|stdin| stdin.write_all(line.as_bytes()).is_ok());
        if !written {
            // Gone (a link dropped while the input came): a new session.
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        Some(child)
    }
}

/// A script's session held open after its answer, for one more run over
/// it: that run starts without a session of its own (a round trip, a
/// login shell's start). Dropped unused, it ends: the script reads the end
/// of its input, and exits.
pub struct Held {
    child: Option<Child>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Held {
    /// Starts `run` over the held session (its stdin closed after it), as
    /// root where it runs as root: the child, stdout piped, and what it
    /// prints on stderr (the held script's too). None where sudo would ask
    /// for a password: it is not written over the session that carries the
    /// command; the session ends, and the run needs one of its own.
    pub fn then(
        mut self,
        session: &Session,
        run: &Run,
    ) -> Result<Option<(Child, std::thread::JoinHandle<String>)>, SessionError> {
        let elevated = session.elevated(run)?;
        if elevated.password.is_some() {
            return Ok(None);
        }
        let argv: Vec<&str> = elevated.argv.iter().map(String::as_str).collect();
        let line = crate::target::remote_command(&argv)? + "\n";
        let mut child = self.child.take().expect("held until now");
        let mut stdin = child.stdin.take().expect("piped");
        // A session that died is told by the run's own end (its status).
        let _ = stdin.write_all(line.as_bytes());
        drop(stdin);
        Ok(Some((child, self.stderr.take().expect("held until now"))))
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            drop(child.stdin.take());
            let _ = child.wait();
        }
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

    /// The argv of `script` with `words` as they are, unchecked.
    fn with_words(script: Script, words: &[&str]) -> Vec<String> {
        let mut argv = script.argv(&Args::new().set("path", ""));
        let quoted = shlex::try_join(words.iter().copied()).unwrap();
        argv[5] = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, quoted);
        argv
    }

    #[test]
    fn scripts_run_through_one_bootstrap_with_their_arguments_as_words() {
        let list = ["/nix/store/x y", "$(id)", "${HOME}", "$$", "it's", "", "a\nb"];
        let args = Args::new().set("protocol", "serve").set("how", "a b").list(list);
        let mut echo = Script::Serve.argv(&args);
        assert_eq!(echo[..4], ["sh", "-c", BOOTSTRAP, "nixpipe"]);
        assert_eq!(echo.len(), 6);
        echo[4] = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, r#"printf '[%s]' "$@""#);
        assert_eq!(run_here(&echo), "[protocol=serve][how=a b][--][/nix/store/x y][$(id)][${HOME}][$$][it's][][a\nb]");
    }

    #[test]
    fn nothing_systemd_would_expand_reaches_a_sudo_cmd() {
        for (script, args) in [
            (
                Script::Probe,
                Args::new()
                    .set("path", "${x}")
                    .set("spec", "$$")
                    .set("which", "given")
                    .set("hold", "0")
                    .set("loader", "0"),
            ),
            (Script::Job, Args::verb("confirm").set("id", "${x}$$")),
            (Script::Keys, Args::new().list(["${x}", "$$"])),
            (Script::Serve, Args::new().set("protocol", "${x}").set("how", "$$")),
        ] {
            let argv = script.argv(&args);
            assert!(!argv.iter().any(|word| word.contains("${") || word.contains("$$")), "{script:?}: {argv:?}");
        }
    }

    #[test]
    fn every_script_takes_the_arguments_argv_gives_it() {
        let verbs: [(Script, &[Option<&str>]); 10] = [
            (Script::Facts, &[None]),
            (Script::Probe, &[None]),
            (
                Script::Job,
                &[Some("launch"), Some("follow"), Some("confirm"), Some("reject"), Some("forget"), Some("job")],
            ),
            (Script::MicrovmHost, &[Some("install"), Some("list"), Some("remove")]),
            (Script::Relay, &[None]),
            (Script::Requisites, &[None]),
            (Script::BootState, &[None]),
            (Script::Status, &[None]),
            (Script::Keys, &[None]),
            (Script::Serve, &[None]),
        ];
        for (script, verbs) in verbs {
            for &verb in verbs {
                // The script's own `takes` line: in the verb's function, or
                // the first at the top.
                let body = script.body();
                let from = verb.map_or(0, |v| body.find(&format!("\n{v}() {{")).expect("the verb's function"));
                let line = body[from..].lines().map(str::trim).find(|l| l.starts_with("takes ")).expect("a takes line");
                let words: Vec<&str> = line.split_whitespace().skip(1).take_while(|w| *w != "--").collect();
                let (keys, list) = script.takes(verb).expect("known verb");
                let declared: Vec<&str> = words.iter().copied().filter(|w| *w != "...").collect();
                assert_eq!((declared.as_slice(), words.contains(&"...")), (keys, list), "{script:?} {verb:?}");
            }
        }
    }

    #[test]
    fn a_script_refuses_an_argument_it_does_not_take_and_one_it_lacks() {
        let run = |words: &[&str]| {
            let argv = with_words(Script::Status, words);
            std::process::Command::new(&argv[0]).args(&argv[1..]).output().unwrap()
        };
        for (words, said) in [
            (&["path=/x", "extra=1"][..], "'extra' is not an argument"),
            (&["/nix/store/x"][..], "'/nix/store/x' is not an argument"),
            (&[][..], "needs the argument 'path'"),
        ] {
            let output = run(words);
            assert_eq!(output.status.code(), Some(2), "{words:?}");
            assert!(String::from_utf8_lossy(&output.stderr).contains(said), "{words:?}: {output:?}");
        }
    }

    #[test]
    fn a_script_answers_in_events_whatever_its_programs_print() {
        let argv = Script::Facts.argv(&Args::new());
        let output = std::process::Command::new(&argv[0]).args(&argv[1..]).output().unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(text.lines().all(|l| crate::event::is_event_line(l.as_bytes())), "{text}");
        assert!(matches!(crate::event::parse_all(&output.stdout)[..], [Event::Host(_)]), "{text}");
    }
}
