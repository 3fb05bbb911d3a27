//! Where a command acts: `local`, or a host reached with the system ssh.
//!
//! Forms: `local`, `[user@]host[:port]`, `ssh://[user@]host[:port]`, with
//! `[v6addr]` for IPv6. A target may hold `{name}`, replaced by the record's
//! NAME, so `--to 'root@{name}'` fans records out to their machines.

use crate::process::{self, CannotRun};
use nixpipe_store::record::Record;
use std::collections::HashMap;
use std::fmt;
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};

/// A target the user wrote that cannot be one: bad usage.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("bad target '{spec}': {why}")]
    Bad { spec: String, why: String },
    #[error("the record has no name to fill {{name}} in '{0}'")]
    NoNameToFill(String),
    #[error("the record has no name and no target was given")]
    NoTarget,
}

/// Why running something on a target failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SshError {
    /// ssh could not connect (no route, refused, wrong host key): what it said.
    #[error("cannot reach {target}: {why}")]
    Unreachable { target: String, why: String },
    /// The connection (or a control master) died without a word.
    #[error("the ssh connection to {target} dropped")]
    Dropped { target: String },
    /// The program ran there and failed.
    #[error("{program} failed on {target} ({status}): {why}")]
    Failed { program: String, target: String, status: String, why: String },
    #[error("{program} on {target} printed something that is not UTF-8")]
    NotUtf8 { program: String, target: String },
    /// A script ended without the answer it gives.
    #[error("{target} did not say its {what}")]
    NoAnswer { target: String, what: String },
    /// Nothing came from the host, nor went to it, for this long.
    #[error("{target} gave no sign of life for {seconds} s (--timeout); stopped waiting for it")]
    Silent { target: String, seconds: u64 },
    #[error("cannot quote the remote command: {0}")]
    Quote(String),
    #[error("NIX_SSHOPTS: unbalanced quotes")]
    BadSshOpts,
    #[error(transparent)]
    CannotRun(#[from] CannotRun),
}

impl SshError {
    /// Bad usage, found before anything ran: a NIX_SSHOPTS ssh cannot take.
    pub fn is_usage(&self) -> bool {
        matches!(self, SshError::BadSshOpts)
    }
}

const NAME_PLACEHOLDER: &str = "{name}";

/// How a command's ssh connection is made. The one value every ssh
/// option of ours comes from, turned into ssh's words in one place
/// ([`Link::options`]); NIX_SSHOPTS and the port follow them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Link {
    /// A connection of its own, never a shared ControlMaster: it proves a
    /// new login works now (confirming a switch, after a reboot).
    pub fresh: bool,
    /// Keepalives every this many seconds, three missed ones ending it.
    pub keepalive: Option<u64>,
    /// Give up the handshake after this many seconds.
    pub connect_timeout: Option<u64>,
    /// ssh's own compression (zlib), for a stream nothing else compresses.
    pub compression: bool,
    /// Over a control master we hold (the relay's), or as that master.
    pub control: Option<Control>,
}

/// A control master of ours: its socket, whether sessions over it forward
/// the ssh agent, whether this command is the master itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Control {
    pub socket: std::path::PathBuf,
    pub forward_agent: bool,
    pub master: bool,
}

impl Link {
    /// A connection of its own.
    pub fn fresh() -> Link {
        Link { fresh: true, ..Link::default() }
    }

    /// Whether it may go over the host's shared connection: not when it
    /// must be a connection of its own, goes over a master of ours, or
    /// compresses (a property of the connection, not of a session on it).
    fn may_share(&self) -> bool {
        !self.fresh && self.control.is_none() && !self.compression
    }

    /// The ssh options that make this link. They come before NIX_SSHOPTS,
    /// because ssh takes the first value it is given: a ControlPath=none of
    /// ours must win over the user's ControlPath.
    pub fn options(&self) -> Vec<String> {
        let mut options: Vec<String> = Vec::new();
        let mut set = |name: &str, value: &str| options.extend(["-o".to_owned(), format!("{name}={value}")]);
        if self.fresh {
            set("ControlMaster", "no");
            set("ControlPath", "none");
        }
        if let Some(control) = &self.control {
            set("ControlPath", &control.socket.display().to_string());
            set("ControlPersist", "no");
            if control.forward_agent {
                set("ForwardAgent", "yes");
            }
            if control.master {
                set("ControlMaster", "yes");
            }
        }
        if let Some(seconds) = self.keepalive {
            set("ServerAliveInterval", &seconds.to_string());
            set("ServerAliveCountMax", "3");
        }
        if let Some(seconds) = self.connect_timeout {
            set("ConnectTimeout", &seconds.to_string());
        }
        if self.compression {
            set("Compression", "yes");
        }
        if self.control.as_ref().is_some_and(|c| c.master) {
            options.push("-N".to_owned());
        }
        options
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Local,
    /// Boxed: a target travels in every error.
    Ssh(Box<SshHost>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SshHost {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
}

/// A target as the user wrote it, `{name}` not yet filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetSpec(String);

impl std::str::FromStr for TargetSpec {
    type Err = TargetError;

    /// Checks the form up front, with a stand-in name, so that a typo is
    /// bad usage before any record is touched.
    fn from_str(s: &str) -> Result<TargetSpec, TargetError> {
        let spec = TargetSpec(s.to_owned());
        spec.resolve(Some("name"))?;
        Ok(spec)
    }
}

impl TargetSpec {
    /// The target for one record: `{name}` replaced by its NAME.
    pub fn resolve(&self, name: Option<&str>) -> Result<Target, TargetError> {
        let text = if self.0.contains(NAME_PLACEHOLDER) {
            let name = name.ok_or_else(|| TargetError::NoNameToFill(self.0.clone()))?;
            self.0.replace(NAME_PLACEHOLDER, name)
        } else {
            self.0.clone()
        };
        Target::parse(&text)
    }
}

/// The target of each record: `spec` when given; otherwise the JSON
/// record's `targetHost` (deployment.targetHost, or where `nixpipe-vm
/// start` forwarded a VM's ssh), as colmena deploys to it; otherwise the
/// record's NAME as an ssh host, or `unnamed` for a record without one.
pub fn for_record(spec: Option<&TargetSpec>, record: &Record, unnamed: Option<Target>) -> Result<Target, TargetError> {
    let target_host = record.extra.get("targetHost").and_then(|host| host.as_str());
    match (spec, target_host, &record.name) {
        (Some(spec), _, name) => spec.resolve(name.as_deref()),
        (None, Some(host), _) => Target::parse(host),
        (None, None, Some(name)) => Target::parse(name),
        (None, None, None) => unnamed.ok_or(TargetError::NoTarget),
    }
}

impl Target {
    pub fn parse(s: &str) -> Result<Target, TargetError> {
        if s == "local" {
            return Ok(Target::Local);
        }
        let rest = s.strip_prefix("ssh://").unwrap_or(s);
        let (user, hostport) = match rest.split_once('@') {
            Some((user, hostport)) => (Some(user), hostport),
            None => (None, rest),
        };
        let (host, port) = split_port(hostport).map_err(|why| TargetError::Bad { spec: s.to_owned(), why })?;
        if let Some(user) = user {
            check_user(user).map_err(|why| TargetError::Bad { spec: s.to_owned(), why })?;
        }
        check_host(host).map_err(|why| TargetError::Bad { spec: s.to_owned(), why })?;
        Ok(Target::Ssh(Box::new(SshHost { user: user.map(str::to_owned), host: host.to_owned(), port })))
    }

    /// Makes the host's connection ready (see [`SshHost::warm_up`]), for
    /// a command whose input is still coming: whether its sessions go over
    /// our shared connection.
    pub fn warm_up(&self) -> bool {
        match self {
            Target::Ssh(host) => host.warm_up(),
            Target::Local => false,
        }
    }

    pub fn is_local(&self) -> bool {
        matches!(self, Target::Local)
    }

    /// A command that runs `argv` on the target over `link`: directly when
    /// local, through ssh otherwise. stdin is closed: it belongs to the pipe.
    /// Only a [`crate::session::Session`] starts it.
    pub(crate) fn command_with(&self, argv: &[&str], link: &Link) -> Result<Command, SshError> {
        let mut cmd = match self {
            // Nothing to run: a master here is nothing at all.
            Target::Local if argv.is_empty() => Command::new("true"),
            Target::Local => {
                let mut cmd = Command::new(argv[0]);
                cmd.args(&argv[1..]);
                cmd
            }
            Target::Ssh(host) => {
                let mut cmd = host.ssh_command(link)?;
                // A master (`-N`) runs nothing there.
                if !argv.is_empty() {
                    cmd.arg(remote_command(argv)?);
                }
                cmd
            }
        };
        cmd.stdin(Stdio::null());
        Ok(cmd)
    }

    /// The error for a program on this target that failed to run or was
    /// stopped by its watchdog.
    pub fn waited(&self, program: &str, e: std::io::Error) -> SshError {
        match e.get_ref().and_then(|inner| inner.downcast_ref::<process::Silent>()) {
            Some(&process::Silent(seconds)) => SshError::Silent { target: self.to_string(), seconds },
            None => process::CannotRun { program: program.to_owned(), why: e.to_string() }.into(),
        }
    }

    /// The error of a failed remote program, telling an ssh failure (exit
    /// 255: no route, refused, wrong host key) from the program's own.
    pub fn failure(&self, program: &str, output: &Output) -> SshError {
        let why = process::summarize(&output.stderr);
        let target = self.to_string();
        if !self.is_local() && output.status.code() == Some(255) {
            // ssh says why it could not connect; a connection that drops
            // later, or a control master that dies, leaves it silent.
            return match why.is_empty() {
                true => SshError::Dropped { target },
                false => SshError::Unreachable { target, why },
            };
        }
        let status = process::describe_status(output.status);
        SshError::Failed { program: program.to_owned(), target, status, why }
    }
}

fn split_port(hostport: &str) -> Result<(&str, Option<u16>), String> {
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or("unclosed '['")?;
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':').ok_or("junk after ']'")?)),
        }
    } else {
        match hostport.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (hostport, None),
        }
    };
    let port = port
        .map(|p| {
            p.parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| format!("port '{p}' is not a number from 1 to 65535"))
        })
        .transpose()?;
    Ok((host, port))
}

/// ssh takes a leading '-' as an option: never let a host or user be one.
fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("no host".into());
    }
    if host.starts_with('-') {
        return Err("a host cannot start with '-'".into());
    }
    if let Some(c) = host.chars().find(|&c| !(c.is_ascii_alphanumeric() || ".-_:%".contains(c))) {
        return Err(format!("{c:?} is not allowed in a host name"));
    }
    Ok(())
}

fn check_user(user: &str) -> Result<(), String> {
    if user.is_empty() || user.starts_with('-') {
        return Err("bad user name".into());
    }
    if let Some(c) = user.chars().find(|&c| !(c.is_ascii_alphanumeric() || "._-".contains(c))) {
        return Err(format!("{c:?} is not allowed in a user name"));
    }
    Ok(())
}

impl SshHost {
    /// `user@host`, as ssh and nix-copy-closure take it.
    pub fn destination(&self) -> String {
        match &self.user {
            Some(user) => format!("{user}@{}", self.host),
            None => self.host.clone(),
        }
    }

    /// The ssh options for this host: NIX_SSHOPTS, then the port.
    pub(crate) fn ssh_options(&self) -> Result<Vec<String>, SshError> {
        let mut opts = nix_sshopts()?;
        if let Some(port) = self.port {
            opts.extend(["-p".to_owned(), port.to_string()]);
        }
        Ok(opts)
    }

    /// `ssh LINK OPTIONS DEFAULTS -- user@host`, ready for the remote
    /// command (none for a master): the one place an ssh argv is made.
    pub fn ssh_command(&self, link: &Link) -> Result<Command, SshError> {
        let (options, _) = self.session_options(link)?;
        Ok(self.ssh(&[link.options(), options].concat()))
    }

    /// The options of a session over `link` (after the link's own):
    /// NIX_SSHOPTS and the port, what we add where the user set nothing,
    /// and our shared connection's where the session may go over it; and
    /// whether it does.
    fn session_options(&self, link: &Link) -> Result<(Vec<String>, bool), SshError> {
        let options = self.ssh_options()?;
        let defaults = self.defaults(&options);
        let mut options = [options, defaults.liveness].concat();
        let shared = match link.may_share() && defaults.shares_nothing {
            true => self.shared_connection(&options),
            false => Vec::new(),
        };
        let over_shared = !shared.is_empty();
        options.extend(shared);
        Ok((options, over_shared))
    }

    /// The options of a session over the host's shared connection, as
    /// nixos-rebuild-ng and nh share one: opened by the first session of a
    /// host (of this command, or of a command of the last minute) and used
    /// by every later one, closing itself a minute after its last session
    /// (ControlPersist). It is opened on its own (`ssh -N -f`, its output
    /// nowhere), never by a session whose output someone reads: a master
    /// started by a session keeps that session's output open after it ends.
    /// None where there is no private directory for its socket, or
    /// NIXPIPE_SSH_SHARE=no says not to; a session whose master could not
    /// be opened connects on its own, and says why it cannot.
    fn shared_connection(&self, options: &[String]) -> Vec<String> {
        if matches!(std::env::var("NIXPIPE_SSH_SHARE").as_deref(), Ok("no" | "0" | "false")) {
            return Vec::new();
        }
        let Some(dir) = control_dir() else { return Vec::new() };
        let path = ["-o".to_owned(), format!("ControlPath={}/%C", dir.display())];
        let over = |more: &[&str]| {
            self.ssh(&[options, &path, &more.iter().map(|m| m.to_string()).collect::<Vec<_>>()].concat())
        };
        static OPENED: PerHost<Opening> = OnceLock::new();
        let key = self.key(options);
        let lock = dir.join(lock_name(&key));
        let opening = of_host(&OPENED, key);
        // One thread opens it, once; the others of this host wait for it,
        // and so do the other commands of a pipeline (a file lock): two
        // commands started together log in once.
        let mut opened = opening.lock().unwrap_or_else(|p| p.into_inner());
        let _held = (!*opened).then(|| process::FileLock::exclusive(&lock));
        if !*opened && !run_within(over(&["-O", "check"]), MASTER_ANSWERS_WITHIN) {
            let persist = format!("ControlPersist={SHARED_FOR_SECONDS}");
            let master = over(&["-o", "ControlMaster=auto", "-o", &persist, "-N", "-f"]);
            run_within(master, MASTER_OPENS_WITHIN);
        }
        // Should it die, a session connects on its own: ssh falls back.
        *opened = true;
        [vec!["-o".to_owned(), "ControlMaster=no".to_owned()], path.to_vec()].concat()
    }

    /// Learns what every session to the host needs before the first one
    /// starts (the user's ssh settings, the shared connection, opened or
    /// waited for); whether the sessions go over our shared connection.
    fn warm_up(&self) -> bool {
        self.session_options(&Link::default()).is_ok_and(|(_, over_shared)| over_shared)
    }

    /// `ssh -G OPTIONS -- user@host`: prints the settings ssh would use
    /// for the host, one `key value` per line.
    pub(crate) fn resolved_config(&self) -> Result<Command, SshError> {
        Ok(self.ssh(&[vec!["-G".to_owned()], self.ssh_options()?].concat()))
    }

    fn ssh(&self, options: &[String]) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.args(options).arg("--").arg(self.destination()).stdin(Stdio::null());
        cmd
    }

    /// What we add where the user's ssh configuration and NIX_SSHOPTS set
    /// nothing (`ssh -G` says, once per host and options): keepalives and
    /// a connect timeout, so that a dead link is noticed within a minute,
    /// and a host that never finishes the handshake within 30 s; and
    /// whether they set a ControlMaster or ControlPath of their own.
    fn defaults(&self, options: &[String]) -> Defaults {
        // Asked once per host and options, by whichever thread comes first
        // (a warm-up, a session); the others wait for its answer.
        static KNOWN: PerHost<std::sync::Arc<OnceLock<Defaults>>> = OnceLock::new();
        of_host(&KNOWN, self.key(options)).get_or_init(|| self.asked_defaults(options)).clone()
    }

    /// What tells this host apart in a [`PerHost`]: its options and destination.
    fn key(&self, options: &[String]) -> Vec<String> {
        options.iter().cloned().chain([self.destination()]).collect()
    }

    fn asked_defaults(&self, options: &[String]) -> Defaults {
        let config = self
            .ssh(&[vec!["-G".to_owned()], options.to_vec()].concat())
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
            .unwrap_or_default();
        let setting = |name: &str| config.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ').map(str::trim));
        let mut liveness = Vec::new();
        if matches!(setting("serveraliveinterval"), Some("0")) {
            liveness.extend(["-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4"].map(String::from));
        }
        if matches!(setting("connecttimeout"), Some("none")) {
            liveness.extend(["-o", "ConnectTimeout=30"].map(String::from));
        }
        let shares_nothing = matches!(setting("controlmaster"), Some("false")) && setting("controlpath").is_none();
        Defaults { liveness, shares_nothing }
    }
}

/// What nixpipe adds to a host's ssh options, from what the user set.
#[derive(Clone, Debug, Default)]
struct Defaults {
    liveness: Vec<String>,
    /// Neither ControlMaster nor ControlPath set: the host's connections
    /// may share ours.
    shares_nothing: bool,
}

/// What this command learnt of each host, by its ssh options and destination.
type PerHost<T> = OnceLock<Mutex<HashMap<Vec<String>, T>>>;

/// The value of `key` in `map`, a default one put there first.
fn of_host<T: Clone + Default>(map: &'static PerHost<T>, key: Vec<String>) -> T {
    map.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner()).entry(key).or_default().clone()
}

/// Held while a host's shared connection is being opened: whether this
/// command opened it, or found it open, already.
type Opening = std::sync::Arc<Mutex<bool>>;

/// How long a shared connection outlives its last session: the next
/// command of a pipeline, or of the next minute, logs in no more.
const SHARED_FOR_SECONDS: u32 = 60;

/// How long opening a shared connection may take before the session goes
/// on without it (ConnectTimeout, ours or the user's, ends it sooner).
const MASTER_OPENS_WITHIN: std::time::Duration = std::time::Duration::from_secs(60);

/// How long asking a shared connection whether it is up may take: it is a
/// local socket, and a master that does not answer is as good as none.
const MASTER_ANSWERS_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// The lock file of the shared connection of `key` (its options and
/// destination): ssh's own %C names the socket, this the lock beside it.
fn lock_name(key: &[String]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(key.join("\0").as_bytes());
    let hex: String = digest.iter().take(20).map(|b| format!("{b:02x}")).collect();
    format!("{hex}.lock")
}

/// Runs `cmd`, its input and output nowhere, for at most `limit` (killed
/// after that); whether it exited well within it.
fn run_within(mut cmd: Command, limit: std::time::Duration) -> bool {
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    let Ok(mut child) = cmd.spawn() else { return false };
    let started = std::time::Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.success(),
            Ok(None) if started.elapsed() <= limit => std::thread::sleep(std::time::Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
        }
    }
}

/// `$XDG_RUNTIME_DIR/nixpipe-ssh`, else `/tmp/nixpipe-ssh-UID`: made
/// private (0700) if it is not there, and used only if it is a directory
/// of this user's that nobody else can enter (a socket there is a login to
/// every host it reaches) and short enough for ssh's socket paths.
fn control_dir() -> Option<std::path::PathBuf> {
    static DIR: OnceLock<Option<std::path::PathBuf>> = OnceLock::new();
    DIR.get_or_init(private_control_dir).clone()
}

fn private_control_dir() -> Option<std::path::PathBuf> {
    let dir = process::private_runtime_dir("nixpipe-ssh")?;
    // %C is 40 hex digits; a socket's path must fit in 104 bytes.
    (dir.as_os_str().len() + 41 < 100).then_some(dir)
}

/// The one string ssh hands the login user's shell, whatever shell that is
/// (sh, bash, fish, tcsh): a POSIX sh that decodes `argv`, every word
/// quoted for sh, from base64 and runs it. A quoted multi-line script is not
/// something every login shell passes through (tcsh rejects it, then runs
/// pieces of it); `sh -c` and a quoted line of base64 and `$(...)` are.
pub fn remote_command(argv: &[&str]) -> Result<String, SshError> {
    use base64::Engine;
    let line = shlex::try_join(argv.iter().copied()).map_err(|e| SshError::Quote(e.to_string()))?;
    let encoded = base64::engine::general_purpose::STANDARD.encode(line);
    Ok(format!("sh -c 'eval \"$(echo {encoded} | base64 -d)\"'"))
}

/// Extra ssh options from NIX_SSHOPTS, split as a shell would.
pub fn nix_sshopts() -> Result<Vec<String>, SshError> {
    match std::env::var("NIX_SSHOPTS") {
        Err(_) => Ok(Vec::new()),
        Ok(opts) => shlex::split(&opts).ok_or(SshError::BadSshOpts),
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Local => f.write_str("local"),
            Target::Ssh(h) => {
                let host = if h.host.contains(':') { format!("[{}]", h.host) } else { h.host.clone() };
                let user = h.user.as_deref().map(|u| format!("{u}@")).unwrap_or_default();
                match h.port {
                    Some(port) => write!(f, "{user}{host}:{port}"),
                    None => write!(f, "{user}{host}"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ssh(user: Option<&str>, host: &str, port: Option<u16>) -> Target {
        Target::Ssh(Box::new(SshHost { user: user.map(Into::into), host: host.into(), port }))
    }

    #[test]
    fn a_link_is_said_in_ssh_options_in_one_place() {
        assert_eq!(Link::default().options(), Vec::<String>::new());
        assert_eq!(Link::fresh().options(), ["-o", "ControlMaster=no", "-o", "ControlPath=none"]);
        let confirm = Link { connect_timeout: Some(7), keepalive: Some(5), ..Link::fresh() };
        assert_eq!(
            confirm.options()[4..],
            ["-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3", "-o", "ConnectTimeout=7"]
        );
        let control = Control { socket: "/tmp/x/s".into(), forward_agent: true, master: true };
        let master = Link { control: Some(control), ..Link::default() };
        assert_eq!(
            master.options(),
            [
                "-o",
                "ControlPath=/tmp/x/s",
                "-o",
                "ControlPersist=no",
                "-o",
                "ForwardAgent=yes",
                "-o",
                "ControlMaster=yes",
                "-N"
            ]
        );
    }

    #[test]
    fn sessions_share_a_connection_unless_the_user_shares_their_own_or_one_must_be_new() {
        let host = SshHost { user: None, host: "web1.invalid".into(), port: None };
        let with =
            |words: &[&str]| host.defaults(&words.iter().map(|w| w.to_string()).collect::<Vec<_>>()).shares_nothing;
        assert!(with(&["-F", "/dev/null"]));
        assert!(!with(&["-F", "/dev/null", "-o", "ControlMaster=auto", "-o", "ControlPath=/run/x/%C"]));
        assert!(!with(&["-F", "/dev/null", "-o", "ControlPath=/run/x/%C"]));
        assert!(!with(&["-F", "/dev/null", "-o", "ControlMaster=yes"]));
        assert!(Link::default().may_share() && Link { keepalive: Some(5), ..Link::default() }.may_share());
        assert!(!Link::fresh().may_share() && !Link { compression: true, ..Link::default() }.may_share());
    }

    #[test]
    fn keepalives_and_a_connect_timeout_only_where_the_user_set_none() {
        let host = SshHost { user: None, host: "web1.invalid".into(), port: None };
        let none = ["-F".to_owned(), "/dev/null".to_owned()];
        assert_eq!(
            host.defaults(&none).liveness,
            ["-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4", "-o", "ConnectTimeout=30"]
        );
        let theirs: Vec<String> =
            ["-F", "/dev/null", "-o", "ConnectTimeout=5", "-o", "ServerAliveInterval=60"].map(String::from).to_vec();
        assert!(host.defaults(&theirs).liveness.is_empty());
    }

    #[test]
    fn parses_every_documented_form() {
        assert_eq!(Target::parse("local"), Ok(Target::Local));
        assert_eq!(Target::parse("web1"), Ok(ssh(None, "web1", None)));
        assert_eq!(Target::parse("root@web1"), Ok(ssh(Some("root"), "web1", None)));
        assert_eq!(Target::parse("root@127.0.0.1:2222"), Ok(ssh(Some("root"), "127.0.0.1", Some(2222))));
        assert_eq!(
            Target::parse("ssh://deploy@web1.example.org:22"),
            Ok(ssh(Some("deploy"), "web1.example.org", Some(22)))
        );
        assert_eq!(Target::parse("root@[::1]:2222"), Ok(ssh(Some("root"), "::1", Some(2222))));
        assert_eq!(Target::parse("[fe80::1%eth0]"), Ok(ssh(None, "fe80::1%eth0", None)));
    }

    #[test]
    fn displays_as_written() {
        for s in ["local", "web1", "root@127.0.0.1:2222", "root@[::1]:2222"] {
            assert_eq!(Target::parse(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn refuses_option_injection_and_junk() {
        for s in [
            "-oProxyCommand=sh",
            "root@-x",
            "-l@web1",
            "",
            "@web1",
            "web1:",
            "web1:0",
            "web1:99999",
            "web1:22x",
            "a b",
            "web1;id",
            "[::1",
            "[::1]x",
            "web1/x",
            "$(id)@h",
        ] {
            assert!(Target::parse(s).is_err(), "{s:?}");
        }
    }

    #[test]
    fn fills_in_the_record_name() {
        let spec: TargetSpec = "root@{name}:2222".parse().unwrap();
        assert_eq!(spec.resolve(Some("web1")), Ok(ssh(Some("root"), "web1", Some(2222))));
        assert!(spec.resolve(None).unwrap_err().to_string().contains("has no name"));
        assert!("root@{name}:x".parse::<TargetSpec>().is_err());
    }

    #[test]
    fn defaults_to_the_record_name_then_to_the_fallback() {
        let p = nixpipe_store::store_path::StorePath::parse("/nix/store/36m5mhfn262qgji13vrgp907an576qjz-top").unwrap();
        let named = Record::new(Some("web1".into()), p.clone());
        let unnamed = Record::new(None, p);
        assert_eq!(for_record(None, &named, None), Ok(ssh(None, "web1", None)));
        assert_eq!(for_record(None, &unnamed, Some(Target::Local)), Ok(Target::Local));
        assert!(for_record(None, &unnamed, None).is_err());
    }

    #[test]
    fn a_records_target_host_goes_before_its_name_and_after_the_users_target() {
        let p = nixpipe_store::store_path::StorePath::parse("/nix/store/36m5mhfn262qgji13vrgp907an576qjz-top").unwrap();
        let mut vm = Record::new(Some("web1".into()), p);
        vm.extra.insert("targetHost".into(), "root@127.0.0.1:2221".into());
        assert_eq!(for_record(None, &vm, None), Ok(ssh(Some("root"), "127.0.0.1", Some(2221))));
        let spec: TargetSpec = "deploy@{name}".parse().unwrap();
        assert_eq!(for_record(Some(&spec), &vm, None), Ok(ssh(Some("deploy"), "web1", None)));
    }

    #[test]
    fn remote_commands_reach_sh_as_one_line_any_login_shell_passes_through() {
        use base64::Engine;
        let t = ssh(Some("root"), "web1", Some(2222));
        let cmd = t.command_with(&["sh", "-c", "echo $1\nid", "x y"], &Link::default()).unwrap();
        let args: Vec<_> = cmd.get_args().map(|a| a.to_str().unwrap().to_owned()).collect();
        let tail = &args[args.len() - 3..];
        assert_eq!(tail[0..2], ["--", "root@web1"]);
        assert!(args.windows(2).any(|w| w == ["-p", "2222"]), "{args:?}");
        let remote = &tail[2];
        assert!(!remote.contains('\n'), "{remote}");
        let encoded = remote.strip_prefix("sh -c 'eval \"$(echo ").and_then(|r| r.strip_suffix(" | base64 -d)\"'"));
        let line = base64::engine::general_purpose::STANDARD.decode(encoded.expect(remote)).unwrap();
        let words = shlex::split(std::str::from_utf8(&line).unwrap()).unwrap();
        assert_eq!(words, ["sh", "-c", "echo $1\nid", "x y"]);
    }
}
