//! Real VMs for the tests: the stand-in nixpkgs' runners boot qemu with the
//! kernel and initrd scripts/vm-kit.sh makes (`make test` makes it) and a
//! release root of the testbed as the guest's userland (sshd, the
//! release's Nix): the target release of the run.

use crate::{Release, Run, Testbed, TARGET_NIX_VAR};
use std::fs;
use std::path::{Path, PathBuf};

/// Where scripts/setup.sh has scripts/vm-kit.sh put the kernel and initrd.
pub const KIT: &str = "/var/cache/nixpipe-testbed/vm";
/// Where a systemd host of the testbed has its release root bound, for
/// its MicroVMs' guests (the stand-in microvm-run's default root).
pub const GUEST_ROOT: &str = "/var/cache/nixpipe-testbed/guest-root";
/// The stand-in runners' variable for the guest's root.
pub const ROOT_VARIABLE: &str = "NIXPIPE_TESTBED_VM_ROOT";

/// Stops every VM of its testbed when dropped, also on panic.
pub struct Vms<'a> {
    tb: &'a Testbed,
}

impl Drop for Vms<'_> {
    fn drop(&mut self) {
        let _ = self.tb.command("nixpipe-vm").arg("stop").output();
    }
}

impl Testbed {
    /// Lets this testbed's commands boot real VMs, their guests running the
    /// target release of the run (sid when the run names none); says on
    /// stderr which accelerator the runners use (KVM only where
    /// scripts/vm-kit.sh saw a boot work).
    pub fn vms(&self) -> Vms<'_> {
        let accel = fs::read_to_string(Path::new(KIT).join("accel"))
            .unwrap_or_else(|_| panic!("no VM kit in {KIT}: make test makes it (scripts/vm-kit.sh)"));
        let release = Release::from_env(TARGET_NIX_VAR).unwrap_or_else(|e| panic!("{e}")).unwrap_or(Release::Sid);
        let root = release.root().unwrap_or_else(|e| panic!("{e}"));
        eprintln!("VMs: qemu with {}, guests on {release}", accel.trim());
        self.vm_root.get_or_init(|| root);
        Vms { tb: self }
    }

    /// The deployer's public key, as a configuration authorizes it.
    pub fn public_key(&self) -> String {
        fs::read_to_string(self.path().join("id_ed25519.pub")).unwrap().trim().to_owned()
    }

    /// A VM's configuration in the deployer's directory, NAME.nix: web1's
    /// fixture, the deployer's key authorized for root, and `module`'s
    /// settings (Nix attributes).
    pub fn vm_config(&self, name: &str, module: &str) -> PathBuf {
        let path = self.path().join(format!("{name}.nix"));
        let text = format!(
            "{{ imports = [ {fixtures}/web1/configuration.nix ];\n  users.users.root.openssh.authorizedKeys.keys = [ \"{key}\" ];\n  {module}\n}}\n",
            fixtures = crate::fixtures().display(),
            key = self.public_key(),
        );
        fs::write(&path, text).unwrap();
        path
    }

    /// Runs `command` as root inside the VM whose record is `record`, over
    /// its forwarded ssh port.
    pub fn in_vm(&self, record: &serde_json::Value, command: &str) -> Run {
        let target = record["targetHost"].as_str().expect("a VM's record has its targetHost");
        let (login, port) = target.rsplit_once(':').unwrap();
        self.sh(&format!("ssh $NIX_SSHOPTS -p {port} {login} {}", shlex::try_quote(command).unwrap()))
    }
}

impl Testbed {
    /// Waits (up to 3 minutes) until a VM's sshd answers on
    /// 127.0.0.1:`port`, and adds its host key to the deployer's
    /// known_hosts, as a user who started that VM by hand would.
    pub fn know_vm_at(&self, port: u16) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
        loop {
            let scan = std::process::Command::new("ssh-keyscan")
                .args(["-T", "3", "-t", "ed25519", "-p", &port.to_string(), "127.0.0.1"])
                .stderr(std::process::Stdio::null())
                .output()
                .unwrap();
            let key =
                String::from_utf8_lossy(&scan.stdout).lines().find(|l| l.contains(" ssh-ed25519 ")).map(str::to_owned);
            if let Some(key) = key {
                let mut known = fs::OpenOptions::new().append(true).open(self.path().join("known_hosts")).unwrap();
                std::io::Write::write_all(&mut known, format!("{key}\n").as_bytes()).unwrap();
                return;
            }
            assert!(std::time::Instant::now() < deadline, "no VM's ssh answered on 127.0.0.1:{port} in 180 s");
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    }
}

/// A command, run in a VM, that prints the page at `url`, trying again
/// for 10 s while the web service is not there: one a switch just
/// restarted may not listen yet.
pub fn fetch(url: &str) -> String {
    format!(
        "bb=$(readlink -f /run/current-system/sw/bin/sh); for try in $(seq 50); do \
         $bb wget -qO- {url} && exit 0; sleep 0.2; done; exit 1"
    )
}

/// A port of 127.0.0.1 free now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A command line running in the background in the testbed's directory,
/// its output in files there: a deploy the test acts on while it runs.
pub struct Background<'a> {
    tb: &'a Testbed,
    name: String,
}

impl Testbed {
    /// Starts `pipeline` (one pipeline of commands) in the background as
    /// the deployer; `name` names its files: NAME.out, NAME.err, NAME.pid
    /// (the pipeline's last command), NAME.code once it ended.
    pub fn in_background(&self, name: &str, pipeline: &str) -> Background<'_> {
        self.sh(&format!(
            "( {pipeline} & echo $! >{name}.pid; wait $!; echo $? >{name}.code.tmp; mv {name}.code.tmp {name}.code ) \
             >{name}.out 2>{name}.err </dev/null &"
        ))
        .ok();
        Background { tb: self, name: name.to_owned() }
    }

    /// The qemu options that give a VM a monitor at NAME.monitor in the
    /// testbed's directory (QEMU_OPTS, which the runners pass on).
    pub fn monitor_opts(&self, name: &str) -> String {
        format!("-monitor unix:{},server=on,wait=off", self.path().join(format!("{name}.monitor")).display())
    }

    /// Runs `command` as root in the VM until it succeeds, for up to
    /// `seconds`: across its reboots.
    pub fn until_in_vm(&self, record: &serde_json::Value, command: &str, seconds: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
        let target = record["targetHost"].as_str().expect("a VM's record has its targetHost");
        let (login, port) = target.rsplit_once(':').unwrap();
        let ssh = format!(
            "timeout 20 ssh $NIX_SSHOPTS -o ConnectTimeout=5 -p {port} {login} {}",
            shlex::try_quote(command).unwrap()
        );
        while self.sh(&ssh).code != 0 {
            if std::time::Instant::now() > deadline {
                let name = record["name"].as_str().unwrap_or_default();
                let console = self.path().join(format!("run/nixpipe-vms/{name}/console.log"));
                let console = fs::read_to_string(console).unwrap_or_default();
                let end: Vec<&str> = console.lines().rev().take(40).collect();
                panic!(
                    "{command} did not succeed in the VM within {seconds} s; its console ended:\n{}",
                    end.join("\n")
                );
            }
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }

    /// Resets the VM whose monitor is NAME.monitor, as a watchdog or a
    /// person at its console would: no shutdown, the firmware starts again.
    pub fn reset_vm(&self, name: &str) {
        use std::io::Write;
        let mut monitor = std::os::unix::net::UnixStream::connect(self.path().join(format!("{name}.monitor"))).unwrap();
        monitor.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        // Its prompt, the command, and its prompt again once the command
        // ran: a client that goes before that may take the command along.
        until_prompt(&mut monitor);
        monitor.write_all(b"system_reset\n").unwrap();
        until_prompt(&mut monitor);
        eprintln!("reset the VM {name}");
    }
}

/// Reads a qemu monitor up to its next prompt.
fn until_prompt(monitor: &mut std::os::unix::net::UnixStream) {
    use std::io::Read;
    let (mut said, mut buf) = (Vec::new(), [0; 1024]);
    while !String::from_utf8_lossy(&said).contains("(qemu) ") {
        let n = monitor.read(&mut buf).expect("the VM's monitor answers");
        assert!(n > 0, "the VM's monitor closed");
        said.extend_from_slice(&buf[..n]);
    }
}

impl Background<'_> {
    fn file(&self, ext: &str) -> PathBuf {
        self.tb.path().join(format!("{}.{ext}", self.name))
    }

    /// Waits (up to `seconds`) until its stderr says `text`.
    pub fn wait_for(&self, text: &str, seconds: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
        while !fs::read_to_string(self.file("err")).unwrap_or_default().contains(text) {
            assert!(
                std::time::Instant::now() < deadline && !self.file("code").exists(),
                "'{text}' not said within {seconds} s: {}",
                fs::read_to_string(self.file("err")).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    /// Kills its last command (SIGKILL: no time to clean anything up).
    pub fn kill(&self) {
        self.tb.sh(&format!("kill -9 $(cat {}.pid)", self.name)).ok();
    }

    /// Waits (up to `seconds`) for it to end; how it ended.
    pub fn finish(self, seconds: u64) -> Run {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
        while !self.file("code").exists() {
            assert!(std::time::Instant::now() < deadline, "not ended within {seconds} s");
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        let read = |ext| fs::read_to_string(self.file(ext)).unwrap_or_default();
        let run = Run { code: read("code").trim().parse().unwrap(), stdout: read("out"), stderr: read("err") };
        eprintln!("(in the background)\n{}[exit {}]", run.stderr, run.code);
        run
    }
}
