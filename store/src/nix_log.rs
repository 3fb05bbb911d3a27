//! Nix's own log as `--log-format internal-json` writes it (Nix 2.8 to
//! 2.34): one `@nix {...}` line per event, read into a [`BuildLog`], the
//! state a build display shows. Activities start and stop (a build, the
//! set of all builds, a substitution, a download); results belong to an
//! activity (a build's log line, the progress of all builds); messages are
//! Nix's own lines (errors, warnings, what it will build). Numbers from
//! Nix's libutil/logging.hh (ActivityType, ResultType).

use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

const PREFIX: &str = "@nix ";
/// The log lines kept of each build: what a failure shows.
const KEPT_LINES: usize = 10;

// ActivityType
const ACT_COPY_PATH: u64 = 100;
const ACT_DOWNLOAD: u64 = 101;
const ACT_COPY_PATHS: u64 = 103;
const ACT_BUILDS: u64 = 104;
const ACT_BUILD: u64 = 105;
// ResultType
const RES_BUILD_LOG_LINE: u64 = 101;
const RES_PROGRESS: u64 = 105;
/// Nix's `lvlWarn`: messages at or below it are errors and warnings.
const LEVEL_WARN: u64 = 1;

/// One build that runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    /// The derivation's name (`hello-2.12.1`).
    pub name: String,
    pub drv: String,
    /// Where it builds: empty for this machine.
    pub machine: String,
    pub started: Instant,
    /// Its latest log line.
    pub last_line: String,
}

/// A build that failed: its derivation and the last lines of its log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    pub drv: String,
    pub last_lines: Vec<String>,
}

/// What Nix's log says so far.
#[derive(Debug)]
pub struct BuildLog {
    pub started: Instant,
    /// Builds done, expected, running, failed (Nix's own count).
    pub builds: [u64; 4],
    /// Paths substituted: done, expected.
    pub substituted: [u64; 2],
    /// The kind of each activity Nix started, by its id.
    kinds: BTreeMap<u64, u64>,
    /// Bytes fetched, by download or substituted path.
    fetched: BTreeMap<u64, u64>,
    pub running: BTreeMap<u64, Running>,
    /// The last lines of each build's log, running or done.
    lines: BTreeMap<u64, (String, VecDeque<String>)>,
    pub failed: Vec<Failed>,
}

impl Default for BuildLog {
    fn default() -> BuildLog {
        BuildLog {
            started: Instant::now(),
            builds: [0; 4],
            substituted: [0; 2],
            kinds: BTreeMap::new(),
            fetched: BTreeMap::new(),
            running: BTreeMap::new(),
            lines: BTreeMap::new(),
            failed: Vec::new(),
        }
    }
}

/// What a line of Nix's stderr means to the display.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    /// Nix's error or warning, to show as it is (without its colours).
    Message(String),
    /// Taken into the state; nothing to print.
    Noted,
    /// Not Nix's JSON: a line to show as it is.
    Other,
}

impl BuildLog {
    /// Takes one line of Nix's stderr.
    pub fn take(&mut self, line: &str) -> Seen {
        let Some(json) = line.strip_prefix(PREFIX) else { return Seen::Other };
        let Ok(event) = serde_json::from_str::<Value>(json) else { return Seen::Other };
        let id = event["id"].as_u64().unwrap_or(0);
        let kind = event["type"].as_u64().unwrap_or(0);
        let fields = event["fields"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        if event["action"].as_str() == Some("start") {
            self.kinds.insert(id, kind);
        }
        match event["action"].as_str() {
            Some("msg") => match event["level"].as_u64() {
                Some(level) if level <= LEVEL_WARN => {
                    let message = without_colours(event["msg"].as_str().unwrap_or(""));
                    self.note_failure(&message);
                    Seen::Message(message)
                }
                _ => Seen::Noted,
            },
            Some("start") if kind == ACT_BUILD => {
                let drv = text(fields, 0);
                let running = Running {
                    name: drv_name(&drv),
                    drv,
                    machine: text(fields, 1),
                    started: Instant::now(),
                    last_line: String::new(),
                };
                self.lines.insert(id, (running.drv.clone(), VecDeque::new()));
                self.running.insert(id, running);
                Seen::Noted
            }
            Some("stop") => {
                self.running.remove(&id);
                Seen::Noted
            }
            Some("result") => {
                self.take_result(id, kind, fields);
                Seen::Noted
            }
            _ => Seen::Noted,
        }
    }

    fn take_result(&mut self, id: u64, kind: u64, fields: &[Value]) {
        let number = |i: usize| fields.get(i).and_then(Value::as_u64).unwrap_or(0);
        match kind {
            RES_BUILD_LOG_LINE => {
                let line = without_colours(&text(fields, 0));
                if let Some((_, lines)) = self.lines.get_mut(&id) {
                    if lines.len() == KEPT_LINES {
                        lines.pop_front();
                    }
                    lines.push_back(line.clone());
                }
                if let Some(running) = self.running.get_mut(&id) {
                    running.last_line = line;
                }
            }
            RES_PROGRESS => match self.kinds.get(&id).copied() {
                Some(ACT_BUILDS) => self.builds = [number(0), number(1), number(2), number(3)],
                Some(ACT_COPY_PATHS) => self.substituted = [number(0), number(1)],
                Some(ACT_DOWNLOAD | ACT_COPY_PATH) => {
                    self.fetched.insert(id, number(0));
                }
                _ => {}
            },
            _ => {}
        }
    }

    /// A builder's failure names its derivation: keep the last lines of
    /// its log for the summary.
    fn note_failure(&mut self, message: &str) {
        let Some(drv) = message.split('\'').find(|part| part.starts_with("/nix/store/") && part.ends_with(".drv"))
        else {
            return;
        };
        if !message.contains("failed") || self.failed.iter().any(|f| f.drv == drv) {
            return;
        }
        let last_lines = self.lines.values().find(|(d, _)| d == drv).map(|(_, l)| l.iter().cloned().collect());
        self.failed.push(Failed { drv: drv.to_owned(), last_lines: last_lines.unwrap_or_default() });
    }

    /// Bytes fetched so far: downloads, and paths copied in from a cache.
    pub fn fetched(&self) -> u64 {
        self.fetched.values().sum()
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

fn text(fields: &[Value], i: usize) -> String {
    fields.get(i).and_then(Value::as_str).unwrap_or("").to_owned()
}

/// `hello-2.12.1` of `/nix/store/<hash>-hello-2.12.1.drv`.
fn drv_name(drv: &str) -> String {
    let base = drv.rsplit('/').next().unwrap_or(drv);
    let base = base.strip_suffix(".drv").unwrap_or(base);
    base.split_once('-').map_or(base, |(_, name)| name).to_owned()
}

/// A message without the terminal colours Nix puts in it.
fn without_colours(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte.
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        plain.push(c);
    }
    plain
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Nix 2.8 wrote for a build of two derivations, one failing.
    const LOG: &str = r#"@nix {"action":"msg","level":3,"msg":"these 2 derivations will be built:"}
@nix {"action":"start","id":2,"level":0,"text":"","type":104}
@nix {"action":"start","id":3,"level":0,"text":"","type":103}
@nix {"action":"result","fields":[0,2,0,0],"id":2,"type":105}
@nix {"action":"start","fields":["/nix/store/lz3c467xjfh3n7b0sqx7jy5xi3vhvdaf-hello-2.12.1.drv","",1,1],"id":9,"level":3,"text":"building '/nix/store/lz3c467xjfh3n7b0sqx7jy5xi3vhvdaf-hello-2.12.1.drv'","type":105}
@nix {"action":"result","fields":[0,2,1,0],"id":2,"type":105}
@nix {"action":"result","fields":["compiling"],"id":9,"type":101}
@nix {"action":"start","fields":["/nix/store/j0s9q2kbyjryakdq94ckqrrgd15363ci-fail.drv","",1,1],"id":10,"level":3,"text":"building","type":105}
@nix {"action":"result","fields":["dying"],"id":10,"type":101}
@nix {"action":"stop","id":10}
@nix {"action":"msg","level":0,"msg":"\u001b[31;1merror:\u001b[0m builder for '\u001b[35;1m/nix/store/j0s9q2kbyjryakdq94ckqrrgd15363ci-fail.drv\u001b[0m' failed with exit code 3"}
@nix {"action":"start","id":11,"level":0,"text":"","type":101}
@nix {"action":"result","fields":[4096,8192],"id":11,"type":105}
@nix {"action":"result","fields":[1,2,0,1],"id":3,"type":105}
something else"#;

    #[test]
    fn nixs_json_log_tells_builds_running_failed_and_fetched() {
        let mut log = BuildLog::default();
        let seen: Vec<Seen> = LOG.lines().map(|line| log.take(line)).collect();
        assert_eq!(seen[0], Seen::Noted, "what will be built is in the status, not printed");
        let error = "error: builder for '/nix/store/j0s9q2kbyjryakdq94ckqrrgd15363ci-fail.drv' failed with exit code 3";
        assert_eq!(seen[10], Seen::Message(error.into()));
        assert_eq!(seen[14], Seen::Other);
        assert_eq!(log.builds, [0, 2, 1, 0]);
        assert_eq!(log.substituted, [1, 2]);
        assert_eq!(log.fetched(), 4096);
        let running: Vec<(&str, &str)> =
            log.running.values().map(|r| (r.name.as_str(), r.last_line.as_str())).collect();
        assert_eq!(running, [("hello-2.12.1", "compiling")]);
        assert_eq!(
            log.failed,
            [Failed {
                drv: "/nix/store/j0s9q2kbyjryakdq94ckqrrgd15363ci-fail.drv".into(),
                last_lines: vec!["dying".into()]
            }]
        );
    }
}
