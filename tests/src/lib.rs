//! The testbed: throwaway NixOS-like hosts on this machine, and a deployer
//! shell to run nixpipe against them, as a user would.
//!
//! A [`Host`] is a set of namespaces (mount, UTS, PID) with its own /nix,
//! /etc (an overlay: /etc/nix, /etc/nixos, users: root, and `deploy` with a
//! password and sudo), /var/lib, /run, /usr/local/sbin (for stand-ins of
//! system programs), hostname, and an sshd on a free loopback port.
//! It dies with its PID namespace when dropped, also on panic; its mounts go
//! with its mount namespace; its directory is removed.
//!
//! A [`Testbed`] is the deployer's side: an ssh client key, known_hosts and
//! an ssh_config handed to ssh through NIX_SSHOPTS (never ~/.ssh), and a
//! private Nix configuration (never /etc/nix, never a substituter).

pub mod http;
pub mod proxy;

use std::fs;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The password of the `deploy` user on every host.
pub const DEPLOY_PASSWORD: &str = "correct horse battery staple";
/// `openssl passwd -6 -salt nixpipetestbed "$DEPLOY_PASSWORD"`
const DEPLOY_PASSWORD_HASH: &str =
    "$6$nixpipetestbed$TXNTxD5Yow8WPBOyngKVfrI81kkS6eckOlGxNty1yOC.UhFFt1gbwuhRpuiYtGUkSxvIL.THs0SXJpO2snPDh1";
const DEPLOY_UID: u32 = 4242;
/// Where the stand-in switch-to-configuration logs its calls, on a host.
pub const SWITCH_LOG: &str = "/var/lib/nixpipe-testbed/switch.log";
/// Where the stand-in systemctl of [`Host::pretend_systemctl`] logs its calls,
/// and the units it says are active.
pub const SYSTEMCTL_LOG: &str = "/var/lib/nixpipe-testbed/systemctl.log";
pub const ACTIVE_UNITS: &str = "/var/lib/nixpipe-testbed/active-units";
/// Where the stand-in systemd-run of [`Host::pretend_systemd`] logs its calls.
pub const SYSTEMD_RUN_LOG: &str = "/var/lib/nixpipe-testbed/systemd-run.log";

const NIX_CONF: &str =
    "substituters =\nsandbox = false\nbuild-users-group =\nexperimental-features = nix-command flakes\n";

/// The repository's tests/fixtures.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// The stand-in nixpkgs, with busybox put in place for its builders.
pub fn nixpkgs() -> PathBuf {
    let nixpkgs = fixtures().join("nixpkgs");
    let bb = nixpkgs.join("bb");
    if !bb.join("busybox").exists() {
        // Into place by rename, so concurrent tests never see half a file.
        fs::create_dir_all(&bb).unwrap();
        let tmp = tempfile::NamedTempFile::new_in(&bb).unwrap();
        fs::copy(busybox(), tmp.path()).expect("copy busybox into the stand-in nixpkgs");
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        tmp.persist(bb.join("busybox")).unwrap();
    }
    nixpkgs
}

fn busybox() -> &'static str {
    ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox-static is not installed (make test installs it)")
}

/// Where cargo put the nixpipe binaries: next to this test's own.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap();
    let dir = if dir.ends_with("deps") { dir.parent().unwrap() } else { dir };
    assert!(
        dir.join("nixpipe-copy").exists(),
        "no nixpipe binaries in {}: run `cargo build --workspace` first (make test does)",
        dir.display()
    );
    dir.to_owned()
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// What a deployer's shell command did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(self) -> Run {
        assert_eq!(self.code, 0, "expected success; stderr:\n{}", self.stderr);
        self
    }

    pub fn stdout_lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }

    /// The one line a nixpipe command printed about what went wrong.
    pub fn error_line(&self) -> &str {
        let lines: Vec<&str> = self.stderr.lines().filter(|l| l.starts_with("nixpipe-")).collect();
        assert_eq!(lines.len(), 1, "expected one error line, got:\n{}", self.stderr);
        lines[0]
    }

    /// The stdout as JSON lines.
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.stdout.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect()
    }
}

pub struct Testbed {
    dir: TempDir,
}

impl Default for Testbed {
    fn default() -> Self {
        Self::new()
    }
}

impl Testbed {
    pub fn new() -> Testbed {
        let dir = tempfile::Builder::new().prefix("nixpipe-deployer.").tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("nix-conf")).unwrap();
        fs::write(root.join("nix-conf/nix.conf"), NIX_CONF).unwrap();
        new_key_pair(&root.join("id_ed25519"), "nixpipe-testbed");
        fs::write(root.join("known_hosts"), "").unwrap();
        let config = format!(
            "Host *\n  IdentityFile {r}/id_ed25519\n  IdentitiesOnly yes\n  IdentityAgent none\n  UserKnownHostsFile {r}/known_hosts\n  GlobalKnownHostsFile /dev/null\n  StrictHostKeyChecking yes\n  BatchMode yes\n  ConnectTimeout 10\n",
            r = root.display()
        );
        fs::write(root.join("ssh_config"), config).unwrap();
        Testbed { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The ssh options every nixpipe command gets, as a user would set them.
    pub fn nix_sshopts(&self) -> String {
        format!("-F {}", self.path().join("ssh_config").display())
    }

    /// Starts a host named `hostname`.
    pub fn host(&self, hostname: &str) -> Host {
        Host::start(self, hostname)
    }

    /// A command in the deployer's environment: nixpipe on PATH,
    /// NIX_SSHOPTS and a private Nix configuration set, no NIX_PATH, and
    /// NIXPKGS and FIXTURES pointing at the stand-ins.
    pub fn command(&self, program: &str) -> Command {
        let path = format!(
            "{}:{}:{}",
            self.path().join("counting-bin").display(),
            bin_dir().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut cmd = Command::new(program);
        cmd.env("PATH", path)
            .env("NIX_SSHOPTS", self.nix_sshopts())
            .env("NIX_CONF_DIR", self.path().join("nix-conf"))
            // Not ~/.config/nix either: only the testbed's configuration.
            .env("NIX_USER_CONF_FILES", self.path().join("nix-conf/nix.conf"))
            .env("NIXPKGS", nixpkgs())
            .env("FIXTURES", fixtures())
            // CI may run with no SHELL; script(1) then starts /bin/sh, so
            // make every run start the same one.
            .env("SHELL", "/bin/sh")
            // Nor a TERM: tests that want a terminal say which.
            .env_remove("TERM")
            .env_remove("NIX_PATH");
        cmd
    }

    /// Runs a bash command line as the deployer, stdin empty.
    pub fn sh(&self, script: &str) -> Run {
        self.sh_with_input(script, "")
    }

    /// Runs a bash command line as the deployer with `input` on its stdin:
    /// what the user types, never in any argv.
    pub fn sh_with_input(&self, script: &str, input: &str) -> Run {
        let mut child = self
            .command("bash")
            .args(["-o", "pipefail", "-c", script])
            .current_dir(self.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_owned();
        let feeder = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
        let out = child.wait_with_output().unwrap();
        let _ = feeder.join();
        let run = Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        eprintln!("$ {script}\n{}[exit {}]", run.stderr, run.code);
        run
    }

    /// Gives `host` the ssh alias `alias`, logging in as `user`, in the
    /// deployer's ssh config, as users name their machines.
    pub fn alias(&self, alias: &str, host: &Host, user: &str) {
        self.alias_at(alias, host, user, host.port);
    }

    /// [`Testbed::alias`] reaching `host` at another `port` (a proxy's),
    /// its host key checked as ever.
    pub fn alias_at(&self, alias: &str, host: &Host, user: &str, port: u16) {
        let entry = format!(
            "Host {alias}\n  HostName 127.0.0.1\n  Port {port}\n  User {user}\n  HostKeyAlias [127.0.0.1]:{}\n",
            host.port
        );
        let config = self.path().join("ssh_config");
        let rest = fs::read_to_string(&config).unwrap();
        fs::write(config, entry + &rest).unwrap();
    }

    /// Adds `host`'s key to the deployer's known_hosts under `name`: the
    /// deployer trusts a machine it may have no route to.
    pub fn know_host_key(&self, name: &str, host: &Host) {
        let key = fs::read_to_string(host.dir().join("ssh/host_key.pub")).unwrap();
        let mut known = fs::OpenOptions::new().append(true).open(self.path().join("known_hosts")).unwrap();
        writeln!(known, "{name} {}", key.trim()).unwrap();
    }

    /// `command` run with an ssh agent that holds the deployer's key and
    /// that ssh uses, as in a user's desktop session; the agent stops after.
    pub fn with_agent(&self, command: &str) -> String {
        format!(
            "eval \"$(ssh-agent -s)\" >/dev/null && ssh-add -q {} 2>/dev/null && \
             export NIX_SSHOPTS=\"-o IdentityAgent=SSH_AUTH_SOCK $NIX_SSHOPTS\" && {{ {command}; }}; \
             status=$?; ssh-agent -k >/dev/null; exit $status",
            self.path().join("id_ed25519").display()
        )
    }

    /// Builds a fixture expression with real nix-build; its store path.
    pub fn build(&self, nix_args: &str) -> String {
        let run = self.sh(&format!("nix-build --no-out-link -I nixpkgs=\"$NIXPKGS\" {nix_args}")).ok();
        run.stdout.trim().to_owned()
    }

    /// A chain of `count` paths of `bytes` each, each referring to the one
    /// before; `seed` makes them differ from other tests' chains. Its head.
    pub fn filler(&self, count: u32, bytes: u32, seed: &str) -> String {
        self.build(&format!(
            "-E 'with import <nixpkgs> {{}}; filler {{ count = {count}; bytes = {bytes}; seed = \"{seed}\"; }}'"
        ))
    }

    /// A signing key pair NAME.sec and NAME.pub in the deployer's directory,
    /// as `nix-store --generate-binary-cache-key` makes them; the public key.
    pub fn new_key(&self, name: &str) -> String {
        self.sh(&format!("nix-store --generate-binary-cache-key {name}-1 {name}.sec {name}.pub")).ok();
        fs::read_to_string(self.path().join(format!("{name}.pub"))).unwrap()
    }

    /// Builds tests/fixtures/NAME/configuration.nix; its toplevel.
    pub fn system(&self, name: &str) -> String {
        self.build(&format!("'<nixpkgs/nixos>' -A system --arg configuration \"$FIXTURES/{name}/configuration.nix\""))
    }

    /// Copies the flake tests/fixtures/NAME into the deployer's directory
    /// (with web1's configuration.nix as web1.nix beside it), its nixpkgs
    /// input pointing at the stand-in; its path.
    pub fn flake(&self, name: &str) -> PathBuf {
        let dir = self.path().join(name);
        fs::create_dir_all(&dir).unwrap();
        let flake = fs::read_to_string(fixtures().join(name).join("flake.nix")).unwrap();
        fs::write(dir.join("flake.nix"), flake.replace("@nixpkgs@", &nixpkgs().display().to_string())).unwrap();
        fs::copy(fixtures().join("web1/configuration.nix"), dir.join("web1.nix")).unwrap();
        dir
    }

    /// Puts a `program` first on PATH that logs each call's arguments to
    /// `program.calls` in the deployer's directory, then runs the real one.
    pub fn count_calls(&self, program: &str) -> PathBuf {
        let bin = self.path().join("counting-bin");
        fs::create_dir_all(&bin).unwrap();
        let real = String::from_utf8(run_ok(Command::new("sh").args(["-c", &format!("command -v {program}")])).stdout)
            .unwrap();
        let log = self.path().join(format!("{program}.calls"));
        // One line per call, whatever newlines the arguments hold.
        let wrapper = format!(
            "#!/bin/sh\necho \"$*\" | tr '\\n' ' ' >> '{0}'\necho >> '{0}'\nexec {1} \"$@\"\n",
            log.display(),
            real.trim()
        );
        fs::write(bin.join(program), wrapper).unwrap();
        fs::set_permissions(bin.join(program), fs::Permissions::from_mode(0o755)).unwrap();
        log
    }

    /// Builds tests/fixtures/NAME/configuration.nix with `options` (Nix
    /// attributes, no single quotes; `lib` and `pkgs` in scope) on top.
    pub fn system_with(&self, name: &str, options: &str) -> String {
        self.build(&format!(
            r#"'<nixpkgs/nixos>' -A system --arg configuration '{{ lib, pkgs, ... }}: {{ imports = [ "${{builtins.getEnv "FIXTURES"}}/{name}/configuration.nix" ]; {options} }}'"#
        ))
    }
}

/// One throwaway host. Dropping it kills everything in it.
pub struct Host {
    pub hostname: String,
    pub port: u16,
    dir: TempDir,
    namespace: Child,
}

impl Host {
    fn start(testbed: &Testbed, hostname: &str) -> Host {
        let dir = tempfile::Builder::new().prefix(&format!("nixpipe-host-{hostname}.")).tempdir().unwrap();
        let root = dir.path();
        for sub in [
            "nix",
            "etc/nix",
            "etc/nixos",
            "etc-work",
            "var-lib",
            "run/sshd",
            "home/deploy",
            "home/root",
            "ssh",
            "sbin",
        ] {
            fs::create_dir_all(root.join(sub)).unwrap();
        }
        fs::write(root.join("etc/nix/nix.conf"), NIX_CONF).unwrap();
        new_key_pair(&root.join("ssh/host_key"), hostname);
        fs::copy(testbed.path().join("id_ed25519.pub"), root.join("ssh/authorized_keys")).unwrap();
        write_user_database(root, hostname);

        for _attempt in 0..5 {
            let port = free_port();
            fs::write(root.join("ssh/sshd_config"), sshd_config(root, port)).unwrap();
            let mut namespace = spawn_namespace(root, hostname);
            if wait_for_sshd(&mut namespace, root, port) {
                let host_key = fs::read_to_string(root.join("ssh/host_key.pub")).unwrap();
                let mut known = fs::OpenOptions::new().append(true).open(testbed.path().join("known_hosts")).unwrap();
                writeln!(known, "[127.0.0.1]:{port} {}", host_key.trim()).unwrap();
                return Host { hostname: hostname.to_owned(), port, dir, namespace };
            }
            // Lost a race for the port to another test: try another.
            let _ = namespace.kill();
            let _ = namespace.wait();
        }
        panic!("sshd for {hostname} did not start: {}", fs::read_to_string(root.join("sshd.log")).unwrap_or_default());
    }

    /// Lets this host's root reach `other` by ssh as `alias` (in its
    /// ~/.ssh/config), as machines of one network know each other by name.
    pub fn alias(&self, alias: &str, other: &Host) {
        let ssh = self.dir().join("home/root/.ssh");
        fs::create_dir_all(&ssh).unwrap();
        let mut config = fs::OpenOptions::new().create(true).append(true).open(ssh.join("config")).unwrap();
        writeln!(config, "Host {alias}\n  HostName 127.0.0.1\n  Port {}", other.port).unwrap();
    }

    /// `root@127.0.0.1:PORT`
    pub fn target(&self) -> String {
        self.target_as("root")
    }

    pub fn target_as(&self, user: &str) -> String {
        format!("{user}@127.0.0.1:{}", self.port)
    }

    /// Runs a shell command inside the host, as root, without ssh: what
    /// tests use to look at the host itself.
    pub fn exec(&self, script: &str) -> Output {
        let pid = self.init_pid().expect("the host is running").to_string();
        Command::new("nsenter")
            .args(["--target", &pid, "--mount", "--uts", "--pid", "--", "sh", "-c", script])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// [`Host::exec`] that must succeed; its stdout.
    pub fn sh(&self, script: &str) -> String {
        let out = self.exec(script);
        assert!(
            out.status.success(),
            "on {}: `{script}` failed: {}",
            self.hostname,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The lines switch-to-configuration logged on this host.
    pub fn switch_log(&self) -> Vec<String> {
        self.sh(&format!("cat {SWITCH_LOG} 2>/dev/null || true")).lines().map(str::to_owned).collect()
    }

    /// Makes the host look as if systemd ran it: /run/systemd/system, and a
    /// stand-in systemd-run (first on root's PATH) that logs its arguments
    /// to SYSTEMD_RUN_LOG and starts the unit's command detached.
    pub fn pretend_systemd(&self) {
        self.sh(&format!(
            "mkdir -p /run/systemd/system && cat > /usr/local/sbin/systemd-run <<'EOF'
#!/bin/sh
mkdir -p /var/lib/nixpipe-testbed && echo \"$*\" >> {SYSTEMD_RUN_LOG}
while [ $# -gt 0 ] && [ \"$1\" != -- ]; do shift; done
shift
(setsid \"$@\" </dev/null >/dev/null 2>&1 &)
EOF
chmod +x /usr/local/sbin/systemd-run"
        ));
    }

    /// Puts a stand-in systemctl first on root's PATH. It logs each call to
    /// SYSTEMCTL_LOG; `is-active` answers from ACTIVE_UNITS (one unit a
    /// line); `restart microvm@NAME.service` marks the unit active and, as
    /// microvm.nix's units do when a VM starts, points NAME's `booted` at its
    /// `current`; `stop` marks it inactive and removes `booted`.
    pub fn pretend_systemctl(&self) {
        self.sh(&format!(
            r#"mkdir -p /var/lib/nixpipe-testbed && touch {ACTIVE_UNITS} && cat > /usr/local/sbin/systemctl <<'EOF'
#!/bin/sh
echo "$*" >> {SYSTEMCTL_LOG}
[ "$1" = is-active ] && {{ [ "$2" = --quiet ] && shift; grep -qxF "$2" {ACTIVE_UNITS}; exit; }}
vm=${{2#microvm@}}; vm=${{vm%.service}}
case $1 in
  restart|start) grep -qxF "$2" {ACTIVE_UNITS} || echo "$2" >> {ACTIVE_UNITS}
                 ln -sfn "$(readlink /var/lib/microvms/$vm/current)" /var/lib/microvms/$vm/booted ;;
  stop) grep -vxF "$2" {ACTIVE_UNITS} > {ACTIVE_UNITS}.new; mv {ACTIVE_UNITS}.new {ACTIVE_UNITS}
        rm -f /var/lib/microvms/$vm/booted ;;
esac
EOF
chmod +x /usr/local/sbin/systemctl"#
        ));
    }

    /// The calls the stand-in systemctl logged.
    pub fn systemctl_log(&self) -> Vec<String> {
        self.sh(&format!("cat {SYSTEMCTL_LOG} 2>/dev/null || true")).lines().map(str::to_owned).collect()
    }

    /// Where /nix/var/nix/profiles/system points, resolved to the store path.
    pub fn system_profile(&self) -> Option<String> {
        let out = self.exec("readlink -e /nix/var/nix/profiles/system");
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned()).filter(|s| !s.is_empty())
    }

    /// Whether `path` is valid in the host's store.
    pub fn has(&self, path: &str) -> bool {
        self.exec(&format!("nix-store --check-validity {path}")).status.success()
    }

    /// Starts a nix-daemon, for users other than root: what multi-user
    /// NixOS has. It reads the host's nix.conf as it is now.
    pub fn start_nix_daemon(&self) {
        self.sh("nix-daemon </dev/null >/var/lib/nix-daemon.log 2>&1 &");
        let socket = self.dir().join("nix/var/nix/daemon-socket/socket");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "nix-daemon did not start on {}", self.hostname);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Asserts that the host's store is sound: every valid path's contents
    /// match its recorded hash, and every valid path's references are valid.
    pub fn assert_store_sound(&self) {
        self.sh("nix-store --verify --check-contents");
        self.sh("for p in /nix/store/*; do
               if nix-store --check-validity $p 2>/dev/null; then
                 nix-store --check-validity $(nix-store --query --references $p) || exit 1
               fi
             done");
    }

    /// The host's own directory (its /nix is `nix/` in it).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The pid, in our namespace, of the host's PID 1 (its sshd).
    fn init_pid(&self) -> Option<i32> {
        let unshare = self.namespace.id();
        let children = fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children")).ok()?;
        children.split_whitespace().next()?.parse().ok()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // Killing the host's PID 1 makes the kernel kill everything else in
        // its PID namespace before PID 1 is reaped; unshare reaps it and
        // exits, so once it is waited for, the host is gone, and its mounts
        // with its mount namespace. Then the TempDir goes.
        match self.init_pid() {
            Some(pid) => unsafe {
                libc::kill(pid, libc::SIGKILL);
            },
            None => {
                let _ = self.namespace.kill();
            }
        }
        let _ = self.namespace.wait();
    }
}

/// An ed25519 key pair without passphrase: `path` and `path.pub`.
fn new_key_pair(path: &Path, comment: &str) {
    run_ok(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"]).arg(path));
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn sshd_config(root: &Path, port: u16) -> String {
    format!(
        "Port {port}\nListenAddress 127.0.0.1\nHostKey {r}/ssh/host_key\nAuthorizedKeysFile {r}/ssh/authorized_keys\n\
         PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
         StrictModes no\nUsePAM no\nPidFile none\nPrintMotd no\n",
        r = root.display()
    )
}

/// The host's own user database, with a `deploy` user who has a password
/// and sudo, in the upper layer of its /etc.
fn write_user_database(root: &Path, hostname: &str) {
    let home = root.join("home/deploy");
    let etc = root.join("etc");
    let add = |file: &str, line: String| {
        let mut text = fs::read_to_string(format!("/etc/{file}")).unwrap_or_default();
        if file == "passwd" {
            // root gets a home of its own: the machine's /root and its
            // dotfiles (shell init that takes locks, prints, waits) stay out.
            let own = format!("root:x:0:0:root:{}:/bin/sh", root.join("home/root").display());
            text =
                text.lines().map(|l| if l.starts_with("root:") { own.clone() } else { l.to_owned() } + "\n").collect();
        }
        text.push_str(&line);
        fs::write(etc.join(file), text).unwrap();
    };
    add("passwd", format!("deploy:x:{DEPLOY_UID}:{DEPLOY_UID}:nixpipe testbed:{}:/bin/sh\n", home.display()));
    add("group", format!("deploy:x:{DEPLOY_UID}:\n"));
    add("shadow", format!("deploy:{DEPLOY_PASSWORD_HASH}:19000:0:99999:7:::\n"));
    fs::write(etc.join("hosts"), format!("127.0.0.1 localhost {hostname}\n")).unwrap();
    fs::write(etc.join("sudoers"), "Defaults !lecture\nroot ALL=(ALL:ALL) ALL\ndeploy ALL=(ALL:ALL) ALL\n").unwrap();
    fs::set_permissions(etc.join("sudoers"), fs::Permissions::from_mode(0o440)).unwrap();
    fs::set_permissions(etc.join("shadow"), fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::chown(&home, Some(DEPLOY_UID), Some(DEPLOY_UID)).unwrap();
}

fn spawn_namespace(root: &Path, hostname: &str) -> Child {
    let r = root.display();
    // /etc is an overlay whose upper layer is the host's own etc/ (users,
    // sudoers, nix/nix.conf, nixos/): what the host writes there stays its
    // own. /nix, /var/lib and /run are empty directories of its own.
    let script = format!(
        "set -e
mount -t overlay overlay -o lowerdir=/etc,upperdir={r}/etc,workdir={r}/etc-work /etc
mount --bind {r}/nix /nix
mount --bind {r}/var-lib /var/lib
mount --bind {r}/run /run
mount --bind {r}/sbin /usr/local/sbin
hostname {hostname}
exec /usr/sbin/sshd -D -e -f {r}/ssh/sshd_config 2>>{r}/sshd.log"
    );
    let log = fs::File::create(root.join("sshd.log")).unwrap();
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--uts",
        "--pid",
        "--fork",
        "--kill-child",
        "--mount-proc",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(log);
    // If the test process dies without unwinding, the host dies too.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn().expect("cannot run unshare (util-linux)")
}

/// Ready when our own sshd says it listens: a connect alone could reach
/// another test's host that took the port first.
fn wait_for_sshd(namespace: &mut Child, root: &Path, port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    let listening = format!("Server listening on 127.0.0.1 port {port}");
    while Instant::now() < deadline {
        if namespace.try_wait().unwrap().is_some() {
            return false;
        }
        let log = fs::read_to_string(root.join("sshd.log")).unwrap_or_default();
        if log.contains(&listening) && TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}
