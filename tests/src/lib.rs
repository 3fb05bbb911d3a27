//! The testbed: throwaway NixOS-like hosts on this machine (see [`host`]),
//! and a deployer shell to run nixpipe against them, as a user would.
//!
//! A [`Testbed`] is the deployer's side: an ssh client key, known_hosts and
//! an ssh_config handed to ssh through NIX_SSHOPTS (never ~/.ssh), a
//! private Nix configuration (never /etc/nix, never a substituter), and the
//! Nix this run's deployer uses: this machine's, or a Debian release's
//! ([`DEPLOYER_NIX_VAR`], see [`release`]).

pub mod host;
pub mod http;
pub mod proxy;
pub mod release;
pub mod vm;

pub use host::{
    Host, HostKind, Init, Platform, BOOT_FALLBACK, DEPLOY_PASSWORD, SWITCH_LOG, TARGET_INIT_VAR, TARGET_NIX_VAR,
};
pub use release::Release;

use std::fs;
use std::io::Write;

use std::os::unix::fs::PermissionsExt;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use tempfile::TempDir;

/// The environment variable naming the Nix release the deployer runs
/// (`bookworm`, `trixie`, `sid`, or `machine`).
pub const DEPLOYER_NIX_VAR: &str = "NIXPIPE_TEST_DEPLOYER_NIX";

/// What went wrong setting up the testbed: one line, for nixpipe-testbed
/// to print; tests panic with it.
#[derive(Debug)]
pub struct TestbedError(pub String);

impl std::fmt::Display for TestbedError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TestbedError {}

/// The Nix configuration of the deployer and of every host: offline, no
/// sandbox or build users.
pub(crate) const NIX_CONF: &str =
    "substituters =\nsandbox = false\nbuild-users-group =\nexperimental-features = nix-command flakes\n";

/// The repository's tests/fixtures.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// This machine's Nix system, e.g. x86_64-linux.
pub fn native_system() -> String {
    format!("{}-linux", std::env::consts::ARCH)
}

/// Where scripts/setup.sh puts Debian's busybox-static for arm64.
pub const AARCH64_BUSYBOX: &str = "/var/cache/nixpipe-testbed/aarch64-linux/busybox";

/// The stand-in nixpkgs, with a busybox for each system it builds for put
/// in place for its builders (bb/SYSTEM/busybox).
pub fn nixpkgs() -> PathBuf {
    let nixpkgs = fixtures().join("nixpkgs");
    let native = busybox().expect("busybox-static is not installed (make test installs it)");
    put_busybox(&nixpkgs.join("bb").join(native_system()), Path::new(native));
    if Path::new(AARCH64_BUSYBOX).exists() {
        put_busybox(&nixpkgs.join("bb/aarch64-linux"), Path::new(AARCH64_BUSYBOX));
    }
    nixpkgs
}

/// Copies `busybox` into `dir` unless it is there.
fn put_busybox(dir: &Path, busybox: &Path) {
    if dir.join("busybox").exists() {
        return;
    }
    // Into place by rename, so concurrent tests never see half a file.
    fs::create_dir_all(dir).unwrap();
    let tmp = tempfile::NamedTempFile::new_in(dir).unwrap();
    fs::copy(busybox, tmp.path()).expect("copy busybox into the stand-in nixpkgs");
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    tmp.persist(dir.join("busybox")).unwrap();
}

fn busybox() -> Option<&'static str> {
    ["/bin/busybox", "/usr/bin/busybox"].into_iter().find(|p| Path::new(p).exists())
}

/// Fails in one line unless this machine runs aarch64 programs (qemu
/// registered with binfmt_misc) and has the aarch64 busybox the stand-in
/// nixpkgs builds with; scripts/setup.sh sets both up.
pub fn check_aarch64_emulation() -> Result<(), TestbedError> {
    let registered = fs::read_to_string("/proc/sys/fs/binfmt_misc/qemu-aarch64").unwrap_or_default();
    let missing: Vec<&str> = [
        (!registered.starts_with("enabled")).then_some("qemu-aarch64 registered in binfmt_misc"),
        (!Path::new(AARCH64_BUSYBOX).exists()).then_some(AARCH64_BUSYBOX),
    ]
    .into_iter()
    .flatten()
    .collect();
    match missing.is_empty() {
        true => Ok(()),
        false => Err(TestbedError(format!(
            "no aarch64 emulation: missing {}; scripts/setup.sh sets it up (make test runs it)",
            missing.join(" and ")
        ))),
    }
}

/// The programs the testbed runs, each with the Debian package that has it.
const PREREQUISITES: &[(&str, &str)] = &[
    ("ssh", "openssh-client"),
    ("ssh-keygen", "openssh-client"),
    ("sshd", "openssh-server"),
    ("unshare", "util-linux"),
    ("nsenter", "util-linux"),
    ("setpriv", "util-linux"),
    ("pivot_root", "util-linux-extra"),
    ("sudo", "sudo"),
    ("systemd-nspawn", "systemd-container"),
    ("debootstrap", "debootstrap"),
];

/// Fails in one line naming what is missing, and how to get it, before
/// anything starts: the testbed needs root and the programs above, and
/// nix-store too when the deployer runs this machine's Nix.
fn check_prerequisites(machine_nix: bool) -> Result<(), TestbedError> {
    if unsafe { libc::geteuid() } != 0 {
        return Err(TestbedError("the testbed needs root (it makes namespaces and mounts)".into()));
    }
    let nix = machine_nix.then_some(("nix-store", "nix-bin"));
    let missing: Vec<String> = PREREQUISITES
        .iter()
        .copied()
        .chain(nix)
        .filter(|(program, _)| !on_path(program))
        .map(|(program, package)| format!("{program} ({package})"))
        .chain(busybox().is_none().then(|| "busybox (busybox-static)".to_owned()))
        .collect();
    match missing.is_empty() {
        true => Ok(()),
        false => Err(TestbedError(format!(
            "missing {}: scripts/setup.sh installs them (make test and make demo run it)",
            missing.join(", ")
        ))),
    }
}

fn on_path(program: &str) -> bool {
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .any(|dir| dir.join(program).is_file())
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

/// What goes before a command line whose peak memory
/// [`Run::max_rss_mib`] then reads (GNU time, which make test installs).
pub const MEASURING_MEMORY: &str = "/usr/bin/time -f 'maxrss %M'";

impl Run {
    /// The most memory the command run after [`MEASURING_MEMORY`] took, in MiB.
    pub fn max_rss_mib(&self) -> u64 {
        let line = self.stderr.lines().find_map(|l| l.strip_prefix("maxrss ")).expect("time's maxrss line");
        line.trim().parse::<u64>().expect("KiB") / 1024
    }

    pub fn ok(self) -> Run {
        assert_eq!(self.code, 0, "expected success; stderr:\n{}", self.stderr);
        self
    }

    pub fn stdout_lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }

    /// The one line a nixpipe command printed about what went wrong (not
    /// the summary at the end of a run over several records).
    pub fn error_line(&self) -> &str {
        let lines: Vec<&str> = self.stderr.lines().filter(|l| l.starts_with("nixpipe-") && !is_summary(l)).collect();
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
    /// The release whose Nix the deployer runs; None: this machine's.
    pub deployer_nix: Option<Release>,
    /// The release root the VMs' runners boot (see [`vm`]), once a test
    /// asked for VMs.
    vm_root: std::sync::OnceLock<PathBuf>,
}

impl Default for Testbed {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether a line is the summary a run over several records ends with,
/// `nixpipe-activate: 1 of 2 succeeded, 1 failed:`.
pub fn is_summary(line: &str) -> bool {
    let Some((_, rest)) = line.split_once(": ") else { return false };
    let mut words = rest.split(' ');
    let counts = (words.next(), words.next(), words.next(), words.next());
    matches!(counts, (Some(n), Some("of"), Some(m), Some(s)) if n.parse::<u32>().is_ok() && m.parse::<u32>().is_ok() && s.starts_with("succeeded"))
}

/// The ssh client configuration of a deployer whose key and known hosts
/// are `dir`/id_ed25519 and `dir`/known_hosts (and the VMs' host keys that
/// `nixpipe-vm start` learns, as the README tells users to add them): only
/// those, host keys always checked, never a question asked.
pub fn ssh_config(dir: &Path) -> String {
    format!(
        "Host *\n  IdentityFile {r}/id_ed25519\n  IdentitiesOnly yes\n  IdentityAgent none\n  UserKnownHostsFile {r}/known_hosts {r}/run/nixpipe-vms/known_hosts\n  GlobalKnownHostsFile /dev/null\n  StrictHostKeyChecking yes\n  BatchMode yes\n  ConnectTimeout 10\n",
        r = dir.display()
    )
}

impl Testbed {
    /// The deployer's side, with the Nix [`DEPLOYER_NIX_VAR`] names.
    pub fn new() -> Testbed {
        Testbed::try_new().unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_new() -> Result<Testbed, TestbedError> {
        let deployer_nix = Release::from_env(DEPLOYER_NIX_VAR)?;
        check_prerequisites(deployer_nix.is_none())?;
        host::remove_stale_cgroups();
        let dir = tempfile::Builder::new()
            .prefix("nixpipe-deployer.")
            .tempdir()
            .map_err(|e| TestbedError(format!("cannot make the deployer's directory: {e}")))?;
        let root = dir.path();
        if let Some(release) = deployer_nix {
            release.install_nix_wrappers(&root.join("nix-bin"))?;
        }
        fs::create_dir_all(root.join("nix-conf")).unwrap();
        fs::write(root.join("nix-conf/nix.conf"), NIX_CONF).unwrap();
        new_key_pair(&root.join("id_ed25519"), "nixpipe-testbed");
        fs::write(root.join("known_hosts"), "").unwrap();
        fs::write(root.join("ssh_config"), ssh_config(root)).unwrap();
        // The deployer's own runtime directory: its shared ssh connections
        // (their sockets) are this testbed's alone, and go with it.
        fs::create_dir(root.join("run")).unwrap();
        fs::set_permissions(root.join("run"), fs::Permissions::from_mode(0o700)).unwrap();
        Ok(Testbed { dir, deployer_nix, vm_root: std::sync::OnceLock::new() })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The ssh options every nixpipe command gets, as a user would set them.
    pub fn nix_sshopts(&self) -> String {
        format!("-F {}", self.path().join("ssh_config").display())
    }

    /// Starts a host named `hostname` of the kind this run tests
    /// ([`HostKind::of_run`]): a namespace host unless the run says otherwise.
    pub fn host(&self, hostname: &str) -> Host {
        self.host_of(hostname, HostKind::of_run().unwrap_or_else(|e| panic!("{e}")))
    }

    /// Starts a host named `hostname` booting real systemd, with the target
    /// Nix of this run.
    pub fn systemd_host(&self, hostname: &str) -> Host {
        self.host_of(hostname, HostKind::systemd().unwrap_or_else(|e| panic!("{e}")))
    }

    /// Starts an aarch64-linux host named `hostname` (see [`Platform::Aarch64`]).
    pub fn aarch64_host(&self, hostname: &str) -> Host {
        self.host_of(hostname, HostKind::aarch64().unwrap_or_else(|e| panic!("{e}")))
    }

    /// Lets the deployer's Nix build for aarch64-linux through qemu, as a
    /// user does with `extra-platforms` in nix.conf.
    pub fn build_aarch64_here(&self) {
        let conf = self.path().join("nix-conf/nix.conf");
        let mut file = fs::OpenOptions::new().append(true).open(conf).unwrap();
        writeln!(file, "extra-platforms = aarch64-linux").unwrap();
    }

    /// Starts a host named `hostname` of `kind`.
    pub fn host_of(&self, hostname: &str, kind: HostKind) -> Host {
        self.try_host(hostname, kind).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_host(&self, hostname: &str, kind: HostKind) -> Result<Host, TestbedError> {
        Host::start(self, hostname, kind)
    }

    /// A command in the deployer's environment: nixpipe on PATH,
    /// NIX_SSHOPTS and a private Nix configuration set, no NIX_PATH, and
    /// NIXPKGS and FIXTURES pointing at the stand-ins.
    pub fn command(&self, program: &str) -> Command {
        let path = format!(
            "{}:{}:{}:{}",
            self.path().join("counting-bin").display(),
            bin_dir().display(),
            self.path().join("nix-bin").display(),
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
            .env("XDG_RUNTIME_DIR", self.path().join("run"))
            .envs(self.vm_root.get().map(|root| (vm::ROOT_VARIABLE, root)))
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

    /// Revokes `host`'s key in the deployer's known_hosts (`@revoked`), as
    /// after a key leaked: the deployer's ssh refuses the host from then on.
    pub fn revoke_host_key(&self, host: &Host) {
        let key = fs::read_to_string(host.dir().join("ssh/host_key.pub")).unwrap();
        let mut known = fs::OpenOptions::new().append(true).open(self.path().join("known_hosts")).unwrap();
        writeln!(known, "@revoked * {}", key.trim()).unwrap();
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
    /// (with its configuration.nix if it has one, and web1's as web1.nix
    /// beside it), its nixpkgs input pointing at the stand-in; its path.
    pub fn flake(&self, name: &str) -> PathBuf {
        let dir = self.path().join(name);
        fs::create_dir_all(&dir).unwrap();
        let flake = fs::read_to_string(fixtures().join(name).join("flake.nix")).unwrap();
        fs::write(dir.join("flake.nix"), flake.replace("@nixpkgs@", &nixpkgs().display().to_string())).unwrap();
        fs::copy(fixtures().join("web1/configuration.nix"), dir.join("web1.nix")).unwrap();
        let own = fixtures().join(name).join("configuration.nix");
        if own.exists() {
            fs::copy(own, dir.join("configuration.nix")).unwrap();
        }
        dir
    }

    /// Puts a `program` first on PATH that logs each call's arguments to
    /// `program.calls` in the deployer's directory, then runs the real one.
    pub fn count_calls(&self, program: &str) -> PathBuf {
        let bin = self.path().join("counting-bin");
        fs::create_dir_all(&bin).unwrap();
        // The one the deployer would run: a release's Nix, say.
        let real = String::from_utf8(run_ok(self.command("sh").args(["-c", &format!("command -v {program}")])).stdout)
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

/// Scans every process's argv and environment for a secret, from
/// [`SecretWatch::start`] to [`SecretWatch::stop`].
pub struct SecretWatch {
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
    scanner: std::thread::JoinHandle<Vec<String>>,
}

impl SecretWatch {
    pub fn start(secret: &'static str) -> SecretWatch {
        use std::sync::atomic::Ordering;
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = done.clone();
        let scanner = std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                for entry in fs::read_dir("/proc").unwrap().flatten() {
                    for file in ["cmdline", "environ"] {
                        let path = entry.path().join(file);
                        let Ok(bytes) = fs::read(&path) else { continue };
                        if bytes.windows(secret.len()).any(|w| w == secret.as_bytes()) {
                            seen.push(path.display().to_string());
                        }
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            seen
        });
        SecretWatch { done, scanner }
    }

    /// Where the secret was seen.
    pub fn stop(self) -> Vec<String> {
        self.done.store(true, std::sync::atomic::Ordering::SeqCst);
        self.scanner.join().unwrap()
    }
}

/// An ed25519 key pair without passphrase: `path` and `path.pub`.
pub(crate) fn new_key_pair(path: &Path, comment: &str) {
    run_ok(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"]).arg(path));
}
