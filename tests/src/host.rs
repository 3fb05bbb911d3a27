//! Throwaway hosts: each its own machine in all that matters to a deployment.
//!
//! A [`Host`] has its own /nix, /etc (an overlay: /etc/nix, /etc/nixos,
//! users: root, and `deploy` with a password and sudo), /var/lib, /run,
//! /usr/local/sbin (for stand-ins of system programs), hostname, and an sshd
//! on a free loopback port. Its [`HostKind`] says what runs it:
//! - [`Init::None`]: mount, UTS and PID namespaces with sshd as PID 1; fast.
//! - [`Init::Systemd`]: systemd-nspawn booting real systemd as PID 1, with
//!   Debian's ssh.service; for what touches systemd-run, systemctl, units.
//!
//! and whose root it runs: this machine's (its Nix), or a Debian release's
//! root (bookworm, trixie, sid: their Nix). Dropping a host, also on panic,
//! kills everything in it; its mounts go with its mount namespace, its cgroups
//! and its directory are removed.

use crate::release::Release;
use crate::{new_key_pair, Testbed, TestbedError, NIX_CONF};
use std::fs;
use std::io::{Read, Write};
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

/// The environment variable naming the Nix release of the targets
/// (`bookworm`, `trixie`, `sid`, or `machine`).
pub const TARGET_NIX_VAR: &str = "NIXPIPE_TEST_TARGET_NIX";
/// The environment variable naming the init of hosts whose kind a test
/// leaves to the run: `none` (namespace hosts, the default) or `systemd`.
pub const TARGET_INIT_VAR: &str = "NIXPIPE_TEST_TARGET_INIT";

/// What runs a host as its PID 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Init {
    /// sshd itself, in namespaces of its own.
    None,
    /// Real systemd, under systemd-nspawn.
    Systemd,
}

/// The platform a host's Nix says it is (its `system` setting).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Platform {
    /// This machine's own.
    Native,
    /// aarch64-linux, its programs run by qemu through binfmt_misc: a
    /// Raspberry Pi, as far as Nix and the programs it runs can tell.
    Aarch64,
}

/// What a host is: its init, the root (so the Nix) it runs and its platform.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostKind {
    pub init: Init,
    /// None: this machine's own root and Nix (namespace hosts only).
    pub release: Option<Release>,
    pub platform: Platform,
}

impl HostKind {
    /// The host this run tests for scenarios that work on any: a namespace
    /// host ([`TARGET_INIT_VAR`] may make it a systemd one) with the target
    /// Nix of the run ([`TARGET_NIX_VAR`], else this machine's).
    pub fn of_run() -> Result<HostKind, TestbedError> {
        match std::env::var(TARGET_INIT_VAR).unwrap_or_default().as_str() {
            "" | "none" => Ok(HostKind {
                init: Init::None,
                release: Release::from_env(TARGET_NIX_VAR)?,
                platform: Platform::Native,
            }),
            "systemd" => HostKind::systemd(),
            other => Err(TestbedError(format!("{TARGET_INIT_VAR}: unknown init `{other}`: none or systemd"))),
        }
    }

    /// A systemd host with the target Nix this run tests, sid's when the
    /// run names none (systemd-nspawn boots a release root, never /).
    pub fn systemd() -> Result<HostKind, TestbedError> {
        let release = Release::from_env(TARGET_NIX_VAR)?.unwrap_or(Release::Sid);
        Ok(HostKind { init: Init::Systemd, release: Some(release), platform: Platform::Native })
    }

    /// The host of [`HostKind::of_run`], aarch64-linux.
    pub fn aarch64() -> Result<HostKind, TestbedError> {
        crate::check_aarch64_emulation()?;
        Ok(HostKind { platform: Platform::Aarch64, ..HostKind::of_run()? })
    }
}

/// One throwaway host. Dropping it kills everything in it.
pub struct Host {
    pub hostname: String,
    pub port: u16,
    pub kind: HostKind,
    // Dropped in this order: the machine stops, then its directory goes.
    machine: Machine,
    dir: TempDir,
}

/// What runs a host: stopped when dropped.
struct Machine {
    init: Init,
    /// `unshare`, whose child is the host's PID 1 (sshd), or whose
    /// grandchild is (systemd, under systemd-nspawn).
    namespace: Child,
    cgroups: Vec<PathBuf>,
    /// What the booted systemd's services made in the machine's /tmp
    /// (PrivateTmp directories, named after its boot id).
    private_tmp: Option<String>,
    /// root's home on the host, HOME of what runs there.
    home: PathBuf,
}

impl Host {
    pub(crate) fn start(testbed: &Testbed, hostname: &str, kind: HostKind) -> Result<Host, TestbedError> {
        let base = match kind.release {
            Some(release) => release.root()?,
            None => PathBuf::from("/"),
        };
        let dir = tempfile::Builder::new()
            .prefix(&format!("nixpipe-host-{hostname}."))
            .tempdir()
            .map_err(|e| TestbedError(format!("cannot make a directory for {hostname}: {e}")))?;
        let root = dir.path();
        lay_out(root, &base, hostname, kind.platform, testbed)?;
        for _attempt in 0..5 {
            let port = free_port();
            let (namespace, cgroups) = match kind.init {
                Init::None => (spawn_namespace(root, &base, hostname, port)?, vec![]),
                Init::Systemd => (spawn_nspawn(root, &base, hostname, port)?, cgroups_of(root)),
            };
            let home = root.join("home/root");
            let mut machine = Machine { init: kind.init, namespace, cgroups, private_tmp: None, home };
            let ready = match kind.init {
                Init::None => wait_for_sshd_log(&mut machine.namespace, root, port),
                Init::Systemd => machine.wait_for_boot(root, port),
            };
            if ready {
                let host_key = fs::read_to_string(root.join("ssh/host_key.pub")).unwrap();
                let mut known = fs::OpenOptions::new().append(true).open(testbed.path().join("known_hosts")).unwrap();
                writeln!(known, "[127.0.0.1]:{port} {}", host_key.trim()).unwrap();
                return Ok(Host { hostname: hostname.to_owned(), port, kind, machine, dir });
            }
            // Lost a race for the port to another test (or did not boot):
            // stop it, then try another port.
            drop(machine);
        }
        // What it said last, in one line.
        let log = fs::read_to_string(root.join("host.log")).unwrap_or_default();
        let said: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
        let last = said[said.len().saturating_sub(3)..].join(" / ");
        Err(TestbedError(format!(
            "host {hostname} did not start: {}",
            if last.is_empty() { "no output" } else { &last }
        )))
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
        self.machine.exec(script)
    }

    /// Which boot of the host runs, seen from outside (never entering a
    /// host that may be shutting down, which would hold its shutdown up):
    /// the pid of its PID 1, another after a reboot; None between two.
    pub fn boot(&self) -> Option<i32> {
        self.machine.init_pid()
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

    /// What systemd's journal on this (systemd) host holds for `unit`.
    pub fn journal(&self, unit: &str) -> String {
        self.sh(&format!("journalctl --no-pager -o cat -u '{unit}' 2>&1"))
    }

    /// Makes `shell` the login shell of `user` on this host: the shell ssh
    /// runs every remote command through.
    pub fn set_login_shell(&self, user: &str, shell: &str) {
        self.sh(&format!("sed -i -E 's#^({user}:([^:]*:){{5}})[^:]*$#\\1{shell}#' /etc/passwd"));
        assert!(self.sh(&format!("getent passwd {user}")).trim_end().ends_with(shell), "{user}'s shell is {shell}");
    }

    /// Installs microvm.nix's host units on this (systemd) host:
    /// `microvm@NAME.service` runs NAME's `current/bin/microvm-run` in its
    /// state directory, and `microvm-set-booted@NAME.service` (part of it,
    /// started before it) points `booted` at what `current` points at while
    /// the VM runs, and removes it when the VM stops.
    pub fn install_microvm_units(&self) {
        self.sh(r#"cat > /etc/systemd/system/microvm-set-booted@.service <<'EOF'
[Unit]
Description=Set /var/lib/microvms/%i/booted
Before=microvm@%i.service
PartOf=microvm@%i.service
[Service]
Type=oneshot
RemainAfterExit=yes
WorkingDirectory=/var/lib/microvms/%i
ExecStart=/bin/sh -c 'ln -sfnT "$(readlink current)" booted'
ExecStop=/bin/rm -f booted
EOF
cat > /etc/systemd/system/microvm@.service <<'EOF'
[Unit]
Description=MicroVM '%i'
Requires=microvm-set-booted@%i.service
After=microvm-set-booted@%i.service
ConditionPathExists=/var/lib/microvms/%i/current/bin/microvm-run
[Service]
Type=simple
WorkingDirectory=/var/lib/microvms/%i
ExecStart=/var/lib/microvms/%i/current/bin/microvm-run
ExecStop=/var/lib/microvms/%i/booted/bin/microvm-shutdown
EOF
systemctl daemon-reload"#);
    }

    /// How many times `unit`'s program started on this (systemd) host: the
    /// lines `starts` (what it prints first) in its journal.
    pub fn journal_count(&self, unit: &str, starts: &str) -> usize {
        // The journal takes the unit's output a moment after it ran.
        std::thread::sleep(Duration::from_millis(300));
        self.journal(unit).lines().filter(|l| *l == starts).count()
    }

    /// Where /nix/var/nix/profiles/system points, resolved to the store path.
    pub fn system_profile(&self) -> Option<String> {
        let out = self.exec("readlink -e /nix/var/nix/profiles/system");
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned()).filter(|s| !s.is_empty())
    }

    /// The host's GC roots, `LINK -> PATH` each, as `nix-store --gc
    /// --print-roots` names them (Nix 2.34 quotes LINK, older Nix does not).
    pub fn gc_roots(&self) -> Vec<String> {
        self.sh("nix-store --gc --print-roots")
            .lines()
            .filter_map(|line| line.split_once(" -> "))
            .map(|(link, path)| format!("{} -> {path}", link.trim_matches('"')))
            .collect()
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

    /// How many times someone logged in over ssh, as the host's sshd says
    /// (`Accepted publickey`): on its journal where systemd runs, else in
    /// its log.
    pub fn logins(&self) -> usize {
        let log = match self.kind.init {
            Init::Systemd => self.sh("journalctl --no-pager -o cat 2>/dev/null || true"),
            Init::None => fs::read_to_string(self.dir().join("host.log")).unwrap_or_default(),
        };
        log.lines().filter(|line| line.contains("Accepted publickey")).count()
    }
}

impl Machine {
    fn exec(&self, script: &str) -> Output {
        let pid = self.init_pid().expect("the host is running").to_string();
        let namespaces: &[&str] = match self.init {
            Init::None => &["--mount", "--uts", "--pid"],
            Init::Systemd => &["--all"],
        };
        Command::new("nsenter")
            .args(["--target", &pid])
            .args(namespaces)
            .args(["--", "sh", "-c", script])
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            // The host's root's home, never this machine's /root.
            .env("HOME", &self.home)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// The pid, in our namespace, of the host's PID 1.
    fn init_pid(&self) -> Option<i32> {
        let child = |pid: u32| -> Option<u32> {
            let children = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
            children.split_whitespace().next()?.parse().ok()
        };
        let first = child(self.namespace.id())?;
        let init = match self.init {
            Init::None => first,
            // unshare -> sh (boots again after a reboot) -> systemd-nspawn -> systemd
            Init::Systemd => child(child(first)?)?,
        };
        Some(init as i32)
    }

    /// Ready when sshd answers with this host's key (a port that another
    /// test's host took first answers with another) and systemd has
    /// finished booting.
    fn wait_for_boot(&mut self, root: &Path, port: u16) -> bool {
        let key = fs::read_to_string(root.join("ssh/host_key.pub")).unwrap_or_default();
        let key = key.split_whitespace().nth(1).unwrap_or("?").to_owned();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if Instant::now() > deadline || self.namespace.try_wait().unwrap().is_some() {
                return false;
            }
            let scan = Command::new("ssh-keyscan")
                .args(["-T", "2", "-t", "ed25519", "-p", &port.to_string(), "127.0.0.1"])
                .stderr(Stdio::null())
                .output();
            if scan.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&key)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let boot_id = self.exec("cat /proc/sys/kernel/random/boot_id");
        let boot_id = String::from_utf8_lossy(&boot_id.stdout).trim().replace('-', "");
        self.private_tmp = (!boot_id.is_empty()).then(|| format!("systemd-private-{boot_id}-"));
        let state = self.exec("timeout 60 systemctl is-system-running --wait");
        let state = String::from_utf8_lossy(&state.stdout).trim().to_owned();
        if state != "running" {
            let failed = self.exec("systemctl --failed --no-legend --plain");
            let _ = fs::OpenOptions::new().append(true).open(root.join("host.log")).and_then(|mut f| {
                writeln!(f, "systemd is {state}: failed units: {}", String::from_utf8_lossy(&failed.stdout))
            });
        }
        true
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        // Killing the host's PID 1 makes the kernel kill everything else in
        // its PID namespace before PID 1 is reaped; systemd-nspawn then
        // exits, unshare reaps its child and exits, so once it is waited for,
        // the host is gone, and its mounts with its mount namespace. Then its
        // cgroups go, depth first, and what its systemd left in /tmp.
        match self.init_pid() {
            Some(pid) => unsafe {
                libc::kill(pid, libc::SIGKILL);
            },
            None => {
                let _ = self.namespace.kill();
            }
        }
        let _ = self.namespace.wait();
        for cgroup in &self.cgroups {
            remove_cgroup(cgroup);
        }
        if let Some(prefix) = &self.private_tmp {
            let tmp = Path::new("/tmp");
            for entry in fs::read_dir(tmp).into_iter().flatten().flatten() {
                if entry.file_name().to_string_lossy().starts_with(prefix.as_str()) {
                    let _ = fs::remove_dir_all(entry.path());
                }
            }
        }
    }
}

/// The host's directory before it starts: its keys, sshd configuration,
/// users, Nix configuration and the directories it mounts.
fn lay_out(
    root: &Path,
    base: &Path,
    hostname: &str,
    platform: Platform,
    testbed: &Testbed,
) -> Result<(), TestbedError> {
    let io = |e: std::io::Error| TestbedError(format!("cannot lay out host {hostname} in {}: {e}", root.display()));
    for sub in [
        "nix",
        "etc/nix",
        "etc/nixos",
        "etc/ssh/sshd_config.d",
        "etc-work",
        "root-upper",
        "root-work",
        "merged",
        "var-lib",
        "run/sshd",
        "home/deploy",
        "home/root",
        "ssh",
        "sbin",
    ] {
        fs::create_dir_all(root.join(sub)).map_err(io)?;
    }
    let system = match platform {
        Platform::Native => "",
        Platform::Aarch64 => "system = aarch64-linux\n",
    };
    fs::write(root.join("etc/nix/nix.conf"), format!("{NIX_CONF}{system}")).map_err(io)?;
    fs::write(root.join("etc/hostname"), format!("{hostname}\n")).map_err(io)?;
    // What marks a NixOS installation, for switch-to-configuration.
    fs::write(root.join("etc/NIXOS"), "").map_err(io)?;
    new_key_pair(&root.join("ssh/host_key"), hostname);
    fs::copy(testbed.path().join("id_ed25519.pub"), root.join("ssh/authorized_keys")).map_err(io)?;
    write_user_database(root, base, hostname).map_err(io)?;
    keep_systemd_off_tmp(&root.join("etc")).map_err(io)?;
    boot_the_system_profile(&root.join("etc"), &root.join("sbin")).map_err(io)?;
    fs::File::create(root.join("host.log")).map_err(io)?;
    Ok(())
}

/// The machine's /tmp is every host's; a booted systemd must neither mount
/// a tmpfs over it nor clean it: its units and tmpfiles rules for /tmp are
/// masked in the host's /etc (inert on a host without systemd).
fn keep_systemd_off_tmp(etc: &Path) -> std::io::Result<()> {
    fs::create_dir_all(etc.join("tmpfiles.d"))?;
    fs::create_dir_all(etc.join("systemd/system"))?;
    for conf in ["tmp.conf", "x11.conf", "systemd-tmp.conf"] {
        fs::write(etc.join("tmpfiles.d").join(conf), "")?;
    }
    for unit in ["tmp.mount", "systemd-tmpfiles-clean.timer"] {
        std::os::unix::fs::symlink("/dev/null", etc.join("systemd/system").join(unit))?;
    }
    Ok(())
}

/// What NixOS's boot loader and stage 2 do, for systemd hosts: at boot, the
/// system profile's generation (the boot default) is what runs, and what
/// was booted: /run/current-system and /run/booted-system.
fn boot_the_system_profile(etc: &Path, sbin: &Path) -> std::io::Result<()> {
    let units = etc.join("systemd/system");
    fs::create_dir_all(units.join("sysinit.target.wants"))?;
    fs::write(units.join("nixpipe-testbed-boot.service"), BOOT_UNIT)?;
    fs::write(sbin.join("nixpipe-testbed-boot"), BOOT_SCRIPT)?;
    fs::set_permissions(sbin.join("nixpipe-testbed-boot"), fs::Permissions::from_mode(0o755))?;
    let wants = units.join("sysinit.target.wants/nixpipe-testbed-boot.service");
    std::os::unix::fs::symlink("../nixpipe-testbed-boot.service", wants)
}

const BOOT_UNIT: &str = "[Unit]
Description=Boot the system profile's generation, as NixOS boots its default entry
DefaultDependencies=no
Before=sysinit.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/nixpipe-testbed-boot
";

/// The testbed's boot loader. A test makes it fall back once to the
/// generation before the default, as a boot loader does when the new entry
/// does not boot, by creating BOOT_FALLBACK.
const BOOT_SCRIPT: &str = r#"#!/bin/sh
profile=/nix/var/nix/profiles/system
p=$(readlink -e $profile) || exit 0
if [ -e /var/lib/nixpipe-testbed/boot-falls-back ]; then
    rm -f /var/lib/nixpipe-testbed/boot-falls-back
    n=$(readlink $profile | sed -n 's/^system-\([0-9]*\)-link$/\1/p')
    p=$(readlink -e "$profile-$((n - 1))-link") || exit 0
fi
ln -sfn "$p" /run/current-system
ln -sfn "$p" /run/booted-system
"#;

/// Created on a systemd host, its next boot falls back to the generation
/// before the boot default.
pub const BOOT_FALLBACK: &str = "/var/lib/nixpipe-testbed/boot-falls-back";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// sshd's configuration: the whole of it for a namespace host's own sshd,
/// a drop-in (sshd_config.d) for Debian's ssh.service on a systemd host.
fn sshd_config(root: &Path, port: u16) -> String {
    format!(
        "Port {port}\nListenAddress 127.0.0.1\nHostKey {r}/ssh/host_key\nAuthorizedKeysFile {r}/ssh/authorized_keys\n\
         PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
         StrictModes no\nUsePAM no\nPidFile none\nPrintMotd no\n",
        r = root.display()
    )
}

/// The host's own user database, from its root's, with a `deploy` user who
/// has a password and sudo, in the upper layer of its /etc.
fn write_user_database(root: &Path, base: &Path, hostname: &str) -> std::io::Result<()> {
    let home = root.join("home/deploy");
    let etc = root.join("etc");
    let add = |file: &str, line: String| -> std::io::Result<()> {
        let mut text = fs::read_to_string(base.join("etc").join(file)).unwrap_or_default();
        if file == "passwd" {
            // root gets a home of its own: the machine's /root and its
            // dotfiles (shell init that takes locks, prints, waits) stay out.
            let own = format!("root:x:0:0:root:{}:/bin/sh", root.join("home/root").display());
            text =
                text.lines().map(|l| if l.starts_with("root:") { own.clone() } else { l.to_owned() } + "\n").collect();
        }
        text.push_str(&line);
        fs::write(etc.join(file), text)
    };
    add("passwd", format!("deploy:x:{DEPLOY_UID}:{DEPLOY_UID}:nixpipe testbed:{}:/bin/sh\n", home.display()))?;
    add("group", format!("deploy:x:{DEPLOY_UID}:\n"))?;
    add("shadow", format!("deploy:{DEPLOY_PASSWORD_HASH}:19000:0:99999:7:::\n"))?;
    fs::write(etc.join("hosts"), format!("127.0.0.1 localhost {hostname}\n"))?;
    fs::write(etc.join("sudoers"), "Defaults !lecture\nroot ALL=(ALL:ALL) ALL\ndeploy ALL=(ALL:ALL) ALL\n")?;
    fs::set_permissions(etc.join("sudoers"), fs::Permissions::from_mode(0o440))?;
    fs::set_permissions(etc.join("shadow"), fs::Permissions::from_mode(0o640))?;
    std::os::unix::fs::chown(&home, Some(DEPLOY_UID), Some(DEPLOY_UID))
}

/// Mounts the host's root at `merged` in a mount namespace of its own: an
/// overlay over `base`, its /etc an overlay whose upper layer is the host's
/// own etc/ (users, sudoers, nix/nix.conf, nixos/), and /nix, /var/lib,
/// /usr/local/sbin empty directories of its own. With `base` this machine's / (`None`), there is no new
/// root: /etc, /nix, /var/lib, /run are mounted over the machine's.
fn mount_root_script(root: &Path, base: &Path) -> String {
    let r = root.display();
    if base == Path::new("/") {
        return format!(
            "mkdir -p /nix 2>/dev/null || [ -d /nix ] || {{ echo 'cannot make /nix (a mount point for the hosts)'; exit 1; }}
mount -t overlay overlay -o lowerdir=/etc,upperdir={r}/etc,workdir={r}/etc-work /etc
mount --bind {r}/nix /nix
mount --bind {r}/var-lib /var/lib
mount --bind {r}/run /run
mount --bind {r}/sbin /usr/local/sbin
"
        );
    }
    let b = base.display();
    format!(
        "m={r}/merged
mount -t overlay overlay -o lowerdir={b},upperdir={r}/root-upper,workdir={r}/root-work $m
mount -t overlay overlay -o lowerdir={b}/etc,upperdir={r}/etc,workdir={r}/etc-work $m/etc
mkdir -p $m/nix $m/tmp $m/var/lib $m/usr/local/sbin
mount --bind {r}/nix $m/nix
mount --bind {r}/var-lib $m/var/lib
mount --bind {r}/sbin $m/usr/local/sbin
"
    )
}

fn spawn_namespace(root: &Path, base: &Path, hostname: &str, port: u16) -> Result<Child, TestbedError> {
    let r = root.display();
    fs::write(root.join("ssh/sshd_config"), sshd_config(root, port)).unwrap();
    // The machine's /tmp is the host's too, as on a host of this machine's
    // root: the host's directory is there, and file:// caches tests make.
    let pivot = if base == Path::new("/") {
        String::new()
    } else {
        format!(
            "mount --bind {r}/run $m/run
mount --rbind /tmp $m/tmp
mount -t proc proc $m/proc
mount --rbind /dev $m/dev
mount --rbind /sys $m/sys
cd $m && pivot_root . . && umount -l . && cd /
"
        )
    };
    let script = format!(
        "set -e
{mounts}{pivot}hostname {hostname}
exec /usr/sbin/sshd -D -e -f {r}/ssh/sshd_config",
        mounts = mount_root_script(root, base)
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--uts", "--pid", "--fork", "--kill-child", "--mount-proc", "--propagation", "private"]);
    cmd.args(["sh", "-c", &script]);
    spawn_logged(cmd, root)
}

/// systemd-nspawn booting the host's root, in a cgroup of its own (it makes
/// its payload/ and supervisor/ there: two in one cgroup collide), with
/// --keep-unit and --register=no: this machine has no D-Bus or machined.
fn spawn_nspawn(root: &Path, base: &Path, hostname: &str, port: u16) -> Result<Child, TestbedError> {
    let r = root.display();
    let ssh = root.join("etc/ssh");
    fs::write(ssh.join("sshd_config.d/nixpipe-testbed.conf"), sshd_config(root, port).replace("PidFile none\n", ""))
        .unwrap();
    let mut join_cgroups = String::new();
    for cgroup in cgroups_of(root) {
        fs::create_dir_all(&cgroup)
            .map_err(|e| TestbedError(format!("cannot make cgroup {} for {hostname}: {e}", cgroup.display())))?;
        join_cgroups += &format!("echo $$ > {}/cgroup.procs\n", cgroup.display());
    }
    let machine = root.file_name().unwrap().to_string_lossy().replace(['.', '_'], "-");
    // Its PID 1 is killed when systemd-nspawn is (it is killed itself when
    // the test process dies without unwinding), as in the namespace host.
    // nspawn keeps its mount-propagation directories in /run/systemd/nspawn:
    // a tmpfs of this mount namespace, so they go with it. On a machine
    // with cgroup v1 hierarchies beside v2 ("hybrid"), nspawn 256 and later
    // (sid's) refuse to run, and systemd 256 and later refuse to boot on
    // v1: in this mount namespace /sys/fs/cgroup is the v2 hierarchy alone
    // (the machine's own, where the host's cgroup already is), so both see
    // what they need, on any machine.
    let unified = match Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists() {
        true => "mount -t cgroup2 cgroup2 /sys/fs/cgroup\n",
        false => "",
    };
    // What a MicroVM of the host boots (the stand-in's microvm-run with
    // testbed.microvmBoots): the VM kit, and its release root as the guest's.
    let vm_binds = match Path::new(crate::vm::KIT).exists() {
        true => format!(
            "--bind-ro={kit} --bind-ro={b}:{guest} ",
            kit = crate::vm::KIT,
            b = base.display(),
            guest = crate::vm::GUEST_ROOT
        ),
        false => String::new(),
    };
    let script = format!(
        "set -e
{mounts}{join_cgroups}mkdir -p /run/systemd/nspawn && mount -t tmpfs tmpfs /run/systemd/nspawn
{unified}export SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1
# A reboot (systemctl reboot) ends systemd-nspawn with 133: boot again, on
# the same root and disk, as a machine that restarts.
status=133
while [ $status = 133 ]; do
  status=0
  systemd-nspawn --quiet --directory=$m --machine={machine} --hostname={hostname} \
    --register=no --keep-unit --console=pipe --link-journal=no \
    --bind={r}/nix:/nix --bind={r}/var-lib:/var/lib --bind={r}/sbin:/usr/local/sbin --bind=/tmp:/tmp {vm_binds}\
    -- /usr/bin/setpriv --pdeathsig KILL /lib/systemd/systemd || status=$?
done
exit $status",
        mounts = mount_root_script(root, base),
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--fork", "--kill-child", "--propagation", "private", "sh", "-c", &script]);
    spawn_logged(cmd, root)
}

/// Runs `cmd` with its output in the host's host.log; if the test process
/// dies without unwinding, the host dies too. (The parent-death signal
/// follows the thread that starts the host: start hosts from the thread
/// that keeps them.)
fn spawn_logged(mut cmd: Command, root: &Path) -> Result<Child, TestbedError> {
    let log = fs::OpenOptions::new().append(true).open(root.join("host.log")).unwrap();
    cmd.stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn().map_err(|e| TestbedError(format!("cannot run unshare (util-linux): {e}")))
}

/// The cgroups a systemd host is started in: one in each hierarchy this
/// machine mounts (cgroup v1's name=systemd and v2's unified, or v2 alone).
/// Named after the test process, so that [`remove_stale_cgroups`] knows
/// which ones a killed test left behind.
fn cgroups_of(root: &Path) -> Vec<PathBuf> {
    let name = format!("{}-{}", std::process::id(), root.file_name().unwrap().to_string_lossy());
    cgroup_parents().into_iter().map(|parent| parent.join(&name)).collect()
}

/// Where the testbed makes its cgroups, in each hierarchy.
fn cgroup_parents() -> Vec<PathBuf> {
    let hybrid = Path::new("/sys/fs/cgroup/systemd").exists();
    ["/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .map(Path::new)
        .filter(|h| h.join("cgroup.procs").exists() && !(hybrid && *h == Path::new("/sys/fs/cgroup")))
        .map(|h| h.join("nixpipe-testbed"))
        .collect()
}

/// Removes the cgroups of hosts whose test process was killed (a host's
/// processes die with it, through their parent-death signal; its cgroups
/// stay), and their directories.
pub(crate) fn remove_stale_cgroups() {
    for parent in cgroup_parents() {
        let Ok(entries) = fs::read_dir(&parent) else { continue };
        for entry in entries.flatten().filter(|e| e.path().is_dir()) {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some((pid, dir)) = name.split_once('-') else { continue };
            let alive = pid.parse::<i32>().is_ok_and(|pid| unsafe { libc::kill(pid, 0) } == 0);
            if !alive {
                remove_cgroup(&entry.path());
                let _ = fs::remove_dir_all(std::env::temp_dir().join(dir));
            }
        }
    }
}

/// Removes a cgroup and those under it, depth first, once nothing runs there.
fn remove_cgroup(cgroup: &Path) {
    if !cgroup.exists() {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let _ = Command::new("find")
            .arg(cgroup)
            .args(["-depth", "-type", "d", "-exec", "rmdir", "{}", ";"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !cgroup.exists() || Instant::now() > deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Ready when our own sshd says it listens: a connect alone could reach
/// another test's host that took the port first.
fn wait_for_sshd_log(namespace: &mut Child, root: &Path, port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    let listening = format!("Server listening on 127.0.0.1 port {port}");
    while Instant::now() < deadline {
        if namespace.try_wait().unwrap().is_some() {
            return false;
        }
        let mut log = String::new();
        let _ = fs::File::open(root.join("host.log")).and_then(|mut f| f.read_to_string(&mut log));
        if log.contains(&listening) && TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}
