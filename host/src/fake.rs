//! A scripted host, for fast tests of what runs on hosts (as
//! nixos-rebuild-ng's tests patch its runner): a [`Runner`] that decodes
//! every run back into what it is, a [`Call`] (one of our scripts with its
//! verb and arguments, or a program; as root or not; over which link),
//! records it, and answers with the test's [`Reply`], printed by a local
//! `sh` so that the session reads a real child's output. Built with the
//! `fake` feature; never in the commands.

use crate::session::{Runner, Script};
use crate::target::{Link, SshError, Target};
use base64::Engine;
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

/// One run on the fake host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    /// The script run, None for a program.
    pub script: Option<Script>,
    pub verb: Option<String>,
    /// The script's named arguments.
    pub args: BTreeMap<String, String>,
    /// The script's list, or the program's argv.
    pub list: Vec<String>,
    /// Whether it was made root's (sudo, or a --sudo-cmd, in front).
    pub root: bool,
    pub link: Link,
}

impl Call {
    /// Whether this is `script` (with `verb`, when given).
    pub fn is(&self, script: Script, verb: Option<&str>) -> bool {
        self.script == Some(script) && (verb.is_none() || self.verb.as_deref() == verb)
    }

    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args.get(key).map(String::as_str)
    }
}

/// What the fake host answers a call with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reply {
    pub stdout: String,
    pub stderr: String,
    pub status: i32,
}

impl Reply {
    /// Success, printing `events` (`KIND KEY=VALUE...`, tab-separated as
    /// prelude.sh's emit writes them) on the event channel.
    pub fn events(events: &[&str]) -> Reply {
        Reply { stdout: events.iter().map(|e| event_line(e) + "\n").collect(), ..Reply::default() }
    }

    /// Success, the job's `frames`: each event after the log lines before
    /// it, as job.sh's follow sends them.
    pub fn job(steps: &[Step]) -> Reply {
        let frame = |kind: &str, text: &str| format!("nixpipe-frame {kind} {}\n{text}", text.len());
        let stdout = steps
            .iter()
            .map(|step| match step {
                Step::Log(line) => frame("log", &format!("{line}\n")),
                Step::Event(event) => frame("event", &(event_line(event) + "\n")),
            })
            .collect();
        Reply { stdout, ..Reply::default() }
    }

    pub fn failing(status: i32, stderr: &str) -> Reply {
        Reply { stderr: stderr.to_owned(), status, ..Reply::default() }
    }
}

/// A step of a job as the fake host tells it.
#[derive(Clone, Debug)]
pub enum Step {
    Log(&'static str),
    Event(&'static str),
}

/// `KIND KEY=VALUE...` as a line of prelude.sh's format.
fn event_line(event: &str) -> String {
    let mut words = event.split(' ');
    let kind = words.next().unwrap_or_default();
    std::iter::once(format!("nixpipe-event\t{kind}")).chain(words.map(str::to_owned)).collect::<Vec<_>>().join("\t")
}

type Answer = dyn Fn(&Call) -> Reply + Sync;

/// The scripted host.
pub struct FakeHost {
    answer: Box<Answer>,
    calls: Mutex<Vec<Call>>,
}

impl FakeHost {
    /// A host that answers every call with `answer`'s reply.
    pub fn new(answer: impl Fn(&Call) -> Reply + Sync + 'static) -> FakeHost {
        FakeHost { answer: Box::new(answer), calls: Mutex::new(Vec::new()) }
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Runner for FakeHost {
    /// Each run answers once: the next runs on a session of its own.
    fn holds(&self) -> bool {
        false
    }

    fn start(&self, _: &Target, argv: &[&str], link: &Link, stderr: Stdio) -> Result<Child, SshError> {
        let call = decode(argv, link);
        let reply = (self.answer)(&call);
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).push(call);
        let mut cmd = Command::new("sh");
        // Reads its input first, as a program would (a writer never meets a
        // closed pipe), then answers.
        cmd.args(["-c", r#"cat >/dev/null; printf %s "$1"; printf %s "$2" >&2; exit "$3""#, "fake"])
            .args([&reply.stdout, &reply.stderr, &reply.status.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr);
        Ok(cmd.spawn().map_err(|e| crate::process::CannotRun::of(&cmd, e))?)
    }
}

/// What `argv` runs: session.rs's bootstrap (`sh -c BOOTSTRAP nixpipe
/// SOURCE ARGS`, both in base64) decoded, or a program; anything in front
/// of it made it root's.
fn decode(argv: &[&str], link: &Link) -> Call {
    let base64 = |word: &str| {
        let bytes = base64::engine::general_purpose::STANDARD.decode(word).expect("the bootstrap's base64");
        String::from_utf8(bytes).expect("UTF-8")
    };
    let link = link.clone();
    let Some(at) =
        argv.windows(2).position(|w| w[0] == "sh" && w[1] == "-c").filter(|&i| argv.get(i + 3) == Some(&"nixpipe"))
    else {
        let root = argv.first().is_some_and(|program| ["sudo", "doas", "run0"].contains(program));
        let list = argv.iter().skip_while(|w| root && **w != "--").skip(usize::from(root)).map(|w| w.to_string());
        return Call { script: None, verb: None, args: BTreeMap::new(), list: list.collect(), root, link };
    };
    let source = base64(argv[at + 4]);
    let script = Script::ALL.into_iter().find(|s| s.source() == source);
    let words = shlex::split(&base64(argv[at + 5])).expect("quoted arguments");
    let mut words = words.into_iter().peekable();
    let verb = words.next_if(|w| !w.contains('=') && w != "--");
    let mut args = BTreeMap::new();
    while let Some(word) = words.next_if(|w| w != "--") {
        let (key, value) = word.split_once('=').expect("KEY=VALUE");
        args.insert(key.to_owned(), value.to_owned());
    }
    let list = words.skip(1).collect();
    Call { script, verb, args, list, root: at > 0, link }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::privilege::Privilege;
    use crate::session::{Args, Run, Session};

    #[test]
    fn a_fake_host_is_told_what_runs_and_answers_as_scripted() {
        let host = FakeHost::new(|call| match call.script {
            Some(Script::Facts) => Reply::events(&["host uid=1000 init=systemd machine=x86_64 sudo=1"]),
            Some(Script::Status) => Reply::events(&["status system=/nix/store/a-x current=/nix/store/a-x reboot=0"]),
            _ => Reply::failing(1, "no"),
        });
        let privilege = Privilege::default();
        let session =
            Session::with_runner(Target::parse("deploy@web1").unwrap(), &privilege, Default::default(), &host);
        let run = Run::script(Script::Status, &Args::new().set("path", "/nix/store/a-x")).as_root();
        assert_eq!(session.events(&run).unwrap().len(), 1);
        let err = session.stdout(&Run::program(&["false"]).over(Link::fresh())).unwrap_err();
        assert!(err.to_string().contains("no"), "{err}");
        let calls = host.calls();
        assert!(calls[0].is(Script::Facts, None) && !calls[0].root);
        assert!(calls[1].is(Script::Status, None) && calls[1].root, "{:?}", calls[1]);
        assert_eq!(calls[1].arg("path"), Some("/nix/store/a-x"));
        assert_eq!((calls[2].list.clone(), calls[2].link.fresh), (vec!["false".to_owned()], true));
    }
}
