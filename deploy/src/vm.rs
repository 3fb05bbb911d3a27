//! Real VMs on this machine, started as nixos-build-vms' driver starts a
//! network of them: each record's runner (config.system.build.vm, its
//! `bin/run-NAME-vm`) in the background with its ssh forwarded to a port of
//! 127.0.0.1 (`QEMU_NET_OPTS=hostfwd=...`, as NixOS's runners take it), all
//! of them on one private network where the runner asks for one (a vde
//! hub, `QEMU_VDE_SOCKET_1`, as NixOS's test driver makes it), each waited
//! for until its sshd answers, its host key learned over that port.
//!
//! Every VM has a directory of its own in the user's private runtime
//! directory (`$XDG_RUNTIME_DIR/nixpipe-vms/NAME`): its pid, its port, its
//! record, its console's log and its host key. A VM's host key is learned
//! with ssh-keyscan over 127.0.0.1:PORT while the qemu that nixpipe started
//! holds that port: no network lies between them, so the key is the guest's.

use nixpipe_host::process::private_runtime_dir;
use nixpipe_host::report::Reports;
use nixpipe_store::Record;
use std::fs;
use std::io::{self, Read};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The network's one link, as NixOS's test driver names its vde switches.
const VDE_VARIABLE: &str = "QEMU_VDE_SOCKET_1";
/// How long a stopped VM's qemu gets to exit before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Console lines an error quotes.
const CONSOLE_LINES: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("{path} is not a VM runner (no bin/run-NAME-vm in it: nixpipe-eval --vm-runner gives one)")]
    NotARunner { path: String },
    #[error("two VMs are called {name}")]
    SameName { name: String },
    #[error("{name} already runs (pid {pid}); stop it first: nixpipe-vm stop {name}")]
    AlreadyRuns { name: String, pid: u32 },
    #[error("no VM called {name} runs")]
    NotRunning { name: String },
    #[error("port {port} of 127.0.0.1 is taken: {why}")]
    PortTaken { port: u16, why: String },
    #[error("no private runtime directory for the VMs ($XDG_RUNTIME_DIR/nixpipe-vms or /tmp/nixpipe-vms-UID, this user's, mode 0700)")]
    NoStateDir,
    #[error("these VMs share a network, which needs vde_switch (Debian's vde2): {0}")]
    NoVde(String),
    #[error("{name}'s runner exited ({status}) before its ssh answered; its console ends: {console}")]
    Exited { name: String, status: String, console: String },
    #[error(
        "{name}'s ssh did not answer within {seconds} s (--boot-timeout); stopped it; its console ends: {console}"
    )]
    Timeout { name: String, seconds: u64, console: String },
    #[error("{what}: {why}")]
    Io { what: String, why: String },
}

impl VmError {
    /// Bad input, found before any VM started.
    pub fn is_usage(&self) -> bool {
        matches!(self, VmError::NotARunner { .. } | VmError::SameName { .. })
    }

    fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> VmError {
        let what = what.into();
        move |e| VmError::Io { what, why: e.to_string() }
    }
}

/// One record's runner: the VM's name and the program that boots it.
#[derive(Debug, Clone)]
pub struct Runner {
    pub name: String,
    pub program: PathBuf,
    pub record: Record,
}

impl Runner {
    /// The runner in the record's path; the VM is named by the record, or
    /// else by the runner (`run-NAME-vm`).
    pub fn of(record: &Record) -> Result<Runner, VmError> {
        let not_a_runner = || VmError::NotARunner { path: record.path.to_string() };
        let bin = Path::new(record.path.as_str()).join("bin");
        let program = fs::read_dir(&bin)
            .map_err(|_| not_a_runner())?
            .filter_map(Result::ok)
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .find(|file| file.starts_with("run-") && file.ends_with("-vm") && file.len() > "run--vm".len())
            .ok_or_else(not_a_runner)?;
        let name = match &record.name {
            Some(name) => name.clone(),
            None => program["run-".len()..program.len() - "-vm".len()].to_owned(),
        };
        Ok(Runner { name, program: bin.join(program), record: record.clone() })
    }

    /// Whether it puts its VM on the network's link.
    fn joins_the_network(&self) -> bool {
        fs::read_to_string(&self.program).map(|text| text.contains(VDE_VARIABLE)).unwrap_or(false)
    }
}

/// The directory of every VM this user started.
pub struct VmDir {
    root: PathBuf,
}

/// A VM that runs, as its directory says.
#[derive(Debug, Clone)]
pub struct Running {
    pub name: String,
    pub pid: u32,
    pub record: Record,
}

impl VmDir {
    pub fn open() -> Result<VmDir, VmError> {
        Ok(VmDir { root: private_runtime_dir("nixpipe-vms").ok_or(VmError::NoStateDir)? })
    }

    fn of(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The host keys of the running VMs, for the user's ssh
    /// (`UserKnownHostsFile`).
    pub fn known_hosts(&self) -> PathBuf {
        self.root.join("known_hosts")
    }

    /// The VMs whose qemu still runs, by name.
    pub fn running(&self) -> Vec<Running> {
        let mut names: Vec<String> = fs::read_dir(&self.root)
            .map(|dir| dir.filter_map(Result::ok).filter(|e| e.path().join("record").exists()))
            .into_iter()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names.into_iter().filter_map(|name| self.running_vm(&name)).collect()
    }

    fn running_vm(&self, name: &str) -> Option<Running> {
        let dir = self.of(name);
        let pid: u32 = fs::read_to_string(dir.join("pid")).ok()?.trim().parse().ok()?;
        let record = Record::parse(fs::read_to_string(dir.join("record")).ok()?.trim_end()).ok()?;
        is_vm(pid, name).then(|| Running { name: name.to_owned(), pid, record })
    }

    /// Writes the known_hosts file anew from the running VMs' keys.
    fn write_known_hosts(&self) -> Result<(), VmError> {
        let lines: String = self
            .running()
            .iter()
            .filter_map(|vm| fs::read_to_string(self.of(&vm.name).join("host_key")).ok())
            .collect();
        write_whole(&self.known_hosts(), &lines)
    }
}

/// How `start_all` starts the VMs.
pub struct StartOptions {
    /// The first VM's ssh port, the next ones' after it; else free ports.
    pub first_port: Option<u16>,
    pub boot_timeout: Duration,
}

/// Starts every runner at once, waits until each VM's ssh answers, and
/// gives each record with its `targetHost` (root@127.0.0.1:PORT). All or
/// nothing: when one does not come up, the others started here are stopped.
pub fn start_all(
    dir: &VmDir,
    runners: &[Runner],
    options: &StartOptions,
    reports: Reports,
) -> Result<Vec<Record>, VmError> {
    check_names(dir, runners)?;
    let ports = ports(runners.len(), options.first_port)?;
    let network = runners.iter().any(Runner::joins_the_network).then(|| start_network(dir)).transpose()?;
    let mut started: Vec<(Child, &Runner, u16)> = Vec::new();
    for (runner, port) in runners.iter().zip(ports) {
        match spawn(dir, runner, port, network.as_deref()) {
            Ok(child) => started.push((child, runner, port)),
            Err(e) => {
                forget(dir, started.into_iter().map(|(child, runner, _)| (child, runner)));
                return Err(e);
            }
        }
    }
    let begun = Instant::now();
    let waited: Vec<(Child, &Runner, u16, Result<String, VmError>)> = std::thread::scope(|scope| {
        let waits: Vec<_> = started
            .into_iter()
            .map(|(mut child, runner, port)| {
                let console = dir.of(&runner.name).join("console.log");
                scope.spawn(move || {
                    let key = wait_for_ssh(&mut child, &runner.name, port, &console, options.boot_timeout);
                    (child, runner, port, key)
                })
            })
            .collect();
        waits.into_iter().map(|wait| wait.join().expect("a VM's wait does not panic")).collect()
    });
    let mut up = Vec::new();
    let mut first_error = None;
    let mut children = Vec::new();
    for (child, runner, port, key) in waited {
        match key {
            Ok(key) => up.push((runner, port, key)),
            Err(e) => first_error = first_error.or(Some(e)),
        }
        children.push((child, runner));
    }
    if let Some(e) = first_error {
        forget(dir, children.into_iter());
        return Err(e);
    }
    let mut records = Vec::new();
    for (runner, port, key) in up {
        let record = record_of(runner, port);
        let vm = dir.of(&runner.name);
        write_whole(&vm.join("host_key"), &format!("[127.0.0.1]:{port} {key}\n"))?;
        write_whole(&vm.join("record"), &format!("{}\n", record.to_line(true)))?;
        reports
            .step(&runner.name, &format!("up at root@127.0.0.1:{port} after {:.1} s", begun.elapsed().as_secs_f64()));
        records.push(record);
    }
    dir.write_known_hosts()?;
    Ok(records)
}

/// Every name once, and none of a VM that runs.
fn check_names(dir: &VmDir, runners: &[Runner]) -> Result<(), VmError> {
    for (i, runner) in runners.iter().enumerate() {
        if runners[..i].iter().any(|other| other.name == runner.name) {
            return Err(VmError::SameName { name: runner.name.clone() });
        }
        if let Some(vm) = dir.running_vm(&runner.name) {
            return Err(VmError::AlreadyRuns { name: vm.name, pid: vm.pid });
        }
    }
    Ok(())
}

/// `count` ports: from `first` on, each checked free; else ones the
/// system gives free now (qemu binds them a moment later).
fn ports(count: usize, first: Option<u16>) -> Result<Vec<u16>, VmError> {
    (0..count)
        .map(|i| {
            let wanted = first.map(|first| first.saturating_add(i as u16)).unwrap_or(0);
            let listener = TcpListener::bind(("127.0.0.1", wanted))
                .map_err(|e| VmError::PortTaken { port: wanted, why: e.to_string() })?;
            Ok(listener.local_addr().map_err(VmError::io("a free port"))?.port())
        })
        .collect::<Result<Vec<u16>, VmError>>()
        .and_then(|ports| {
            // The system may give the same free port twice.
            let mut unique = ports.clone();
            unique.sort_unstable();
            unique.dedup();
            match unique.len() == ports.len() {
                true => Ok(ports),
                false => self::ports(count, first),
            }
        })
}

/// The network's vde hub, started unless it runs; its socket directory.
fn start_network(dir: &VmDir) -> Result<PathBuf, VmError> {
    let socket = dir.root.join("vde1.ctl");
    let pid_file = dir.root.join("vde1.pid");
    if read_pid(&pid_file).is_some_and(is_alive) && socket.exists() {
        return Ok(socket);
    }
    let _ = fs::remove_dir_all(&socket);
    let _ = fs::remove_file(&pid_file);
    let status = Command::new("vde_switch")
        .args(["--hub", "--daemon", "--sock"])
        .arg(&socket)
        .arg("--pidfile")
        .arg(&pid_file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .map_err(|e| VmError::NoVde(e.to_string()))?;
    match status.success() && socket.exists() {
        true => Ok(socket),
        false => Err(VmError::NoVde(format!("vde_switch failed ({status})"))),
    }
}

/// Starts one runner in its own directory, in a process group of its own
/// (a Ctrl-C of the start command does not reach it), its console to
/// console.log.
fn spawn(dir: &VmDir, runner: &Runner, port: u16, network: Option<&Path>) -> Result<Child, VmError> {
    let vm = dir.of(&runner.name);
    let _ = fs::remove_dir_all(&vm);
    fs::create_dir(&vm).map_err(VmError::io(format!("cannot make {}", vm.display())))?;
    let console = fs::File::create(vm.join("console.log")).map_err(VmError::io("cannot write the console's log"))?;
    let console_too = console.try_clone().map_err(VmError::io("cannot write the console's log"))?;
    // The user's own forwards stay, after ssh's.
    let forward = format!("hostfwd=tcp:127.0.0.1:{port}-:22");
    let net_opts = match std::env::var("QEMU_NET_OPTS") {
        Ok(theirs) if !theirs.is_empty() => format!("{forward},{theirs}"),
        _ => forward,
    };
    let mut cmd = Command::new(&runner.program);
    cmd.current_dir(&vm)
        .env("QEMU_NET_OPTS", net_opts)
        .stdin(Stdio::null())
        .stdout(console)
        .stderr(console_too)
        .process_group(0);
    if let Some(socket) = network {
        cmd.env(VDE_VARIABLE, socket);
    }
    let child = cmd.spawn().map_err(VmError::io(format!("cannot run {}", runner.program.display())))?;
    write_whole(&vm.join("pid"), &format!("{}\n", child.id()))?;
    write_whole(&vm.join("port"), &format!("{port}\n"))?;
    Ok(child)
}

/// Waits until the VM's sshd gives its host key on `port`, the runner
/// ends, or `timeout` passes; the key (`ssh-ed25519 AAAA...`).
fn wait_for_ssh(
    child: &mut Child,
    name: &str,
    port: u16,
    console: &Path,
    timeout: Duration,
) -> Result<String, VmError> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(VmError::Exited {
                name: name.into(),
                status: status.to_string(),
                console: console_end(console),
            });
        }
        if let Some(key) = host_key(port) {
            return Ok(key);
        }
        if Instant::now() >= deadline {
            return Err(VmError::Timeout {
                name: name.into(),
                seconds: timeout.as_secs(),
                console: console_end(console),
            });
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The ed25519 host key sshd gives on 127.0.0.1:`port`, if it answers.
/// One connection: sshd counts connections that never log in against
/// their source (OpenSSH 9.8's PerSourcePenalties), and every VM's
/// connections come from the same address of qemu's.
fn host_key(port: u16) -> Option<String> {
    let output = Command::new("ssh-keyscan")
        .args(["-T", "3", "-t", "ed25519", "-p", &port.to_string(), "127.0.0.1"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        let (_host, kind, key) = (words.next()?, words.next()?, words.next()?);
        (kind == "ssh-ed25519").then(|| format!("{kind} {key}"))
    })
}

/// The last lines of a console's log, on one line: what the runner and the
/// guest's own programs said (a stage 1 that fails says why), then the
/// kernel's panic, if any; only the kernel's last lines where nothing else
/// spoke (its backtraces say little to a user).
fn console_end(console: &Path) -> String {
    let mut text = String::new();
    let _ = fs::File::open(console).and_then(|mut file| file.read_to_string(&mut text));
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|line| !line.is_empty()).collect();
    let (kernel, others): (Vec<&str>, Vec<&str>) = lines.iter().partition(|line| is_kernel_line(line));
    let panic = kernel.iter().rev().find_map(|line| line.find("Kernel panic").map(|at| &line[at..]));
    let mut end: Vec<&str> = match others.is_empty() {
        true => kernel[kernel.len().saturating_sub(CONSOLE_LINES)..].to_vec(),
        false => others[others.len().saturating_sub(CONSOLE_LINES)..].to_vec(),
    };
    end.extend(panic.filter(|_| !others.is_empty()));
    match end.is_empty() {
        true => "(nothing)".into(),
        false => end.join(" / "),
    }
}

/// A kernel message as the console shows it: `[    4.233322] ...`.
fn is_kernel_line(line: &str) -> bool {
    line.strip_prefix('[')
        .and_then(|rest| rest.split_once(']'))
        .is_some_and(|(time, _)| time.trim().parse::<f64>().is_ok())
}

/// The record a started VM is deployed by: the runner's, its ssh target
/// added.
fn record_of(runner: &Runner, port: u16) -> Record {
    let mut record = runner.record.clone();
    record.name = Some(runner.name.clone());
    record.extra.insert("targetHost".into(), format!("root@127.0.0.1:{port}").into());
    record
}

/// The record with the ssh target of the running VM of its name.
pub fn targeted(mut record: Record, running: &[Running]) -> Result<Record, VmError> {
    let name = record.label().to_owned();
    let vm = running.iter().find(|vm| record.name.as_deref() == Some(&vm.name));
    let target = vm.and_then(|vm| vm.record.extra.get("targetHost")).ok_or(VmError::NotRunning { name })?;
    record.extra.insert("targetHost".into(), target.clone());
    Ok(record)
}

/// Stops VMs this run started and that must not stay.
fn forget<'a>(dir: &VmDir, started: impl Iterator<Item = (Child, &'a Runner)>) {
    for (mut child, runner) in started {
        let _ = child.kill();
        let _ = child.wait();
        let _ = fs::remove_dir_all(dir.of(&runner.name));
    }
    stop_network_when_idle(dir);
}

/// Stops the VMs named (every one when none is), each its qemu told to
/// quit and killed after 10 s; their directories and host keys go.
pub fn stop(dir: &VmDir, names: &[String], reports: Reports) -> Result<(), VmError> {
    let running = dir.running();
    let chosen: Vec<&Running> = match names {
        [] => running.iter().collect(),
        names => names
            .iter()
            .map(|name| running.iter().find(|vm| &vm.name == name).ok_or(VmError::NotRunning { name: name.clone() }))
            .collect::<Result<_, _>>()?,
    };
    for vm in chosen {
        terminate(vm.pid);
        let _ = fs::remove_dir_all(dir.of(&vm.name));
        reports.step(&vm.name, "stopped");
    }
    // VMs whose qemu has ended on its own leave only a directory.
    if names.is_empty() {
        forget_ended(dir);
    }
    dir.write_known_hosts()?;
    stop_network_when_idle(dir);
    Ok(())
}

fn forget_ended(dir: &VmDir) {
    let running: Vec<String> = dir.running().into_iter().map(|vm| vm.name).collect();
    for entry in fs::read_dir(&dir.root).into_iter().flatten().filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.path().join("pid").exists() && !running.contains(&name) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

fn stop_network_when_idle(dir: &VmDir) {
    if !dir.running().is_empty() {
        return;
    }
    if let Some(pid) = read_pid(&dir.root.join("vde1.pid")) {
        terminate(pid);
    }
    let _ = fs::remove_dir_all(dir.root.join("vde1.ctl"));
    let _ = fs::remove_file(dir.root.join("vde1.pid"));
}

/// SIGTERM (qemu quits at once), SIGKILL after the grace time.
fn terminate(pid: u32) {
    let pid_t = pid as libc::pid_t;
    unsafe { libc::kill(pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + STOP_GRACE;
    while is_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if is_alive(pid) {
        unsafe { libc::kill(pid_t, libc::SIGKILL) };
    }
}

fn read_pid(file: &Path) -> Option<u32> {
    fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// Whether the process runs (a zombie does not).
fn is_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command's name in parentheses.
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Whether `pid` is still the qemu of VM `name` (`-name NAME`, as every
/// NixOS runner passes it), and not a process that has its number since.
fn is_vm(pid: u32, name: &str) -> bool {
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    is_alive(pid) && args.windows(2).any(|pair| pair[0] == b"-name" && pair[1] == name.as_bytes())
}

/// Writes a file whole: a reader sees the old one or the new one.
fn write_whole(path: &Path, text: &str) -> Result<(), VmError> {
    let tmp = path.with_extension("new");
    fs::write(&tmp, text)
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(VmError::io(format!("cannot write {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_console_ends_in_its_last_lines_on_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        fs::write(&log, "booting\n\nstage 1\nkernel panic\n  qemu: exit\n").unwrap();
        assert_eq!(console_end(&log), "stage 1 / kernel panic / qemu: exit");
        let panic = "[    2.5] Run /init as init process\nnixpipe-vm stage 1: no stage 2 at /x\n\
                     [    4.2] Kernel panic - not syncing: Attempted to kill init!\n[    4.2]  </TASK>\n";
        fs::write(&log, panic).unwrap();
        assert_eq!(
            console_end(&log),
            "nixpipe-vm stage 1: no stage 2 at /x / Kernel panic - not syncing: Attempted to kill init!"
        );
        fs::write(&log, "[    1.0] a\n[    2.0] b\n").unwrap();
        assert_eq!(console_end(&log), "[    1.0] a / [    2.0] b");
        assert_eq!(console_end(&dir.path().join("none")), "(nothing)");
    }

    #[test]
    fn free_ports_are_different_and_a_taken_one_is_named() {
        let ports = ports(3, None).unwrap();
        assert!(ports[0] != ports[1] && ports[1] != ports[2] && ports[0] != ports[2]);
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let error = self::ports(1, Some(port)).unwrap_err().to_string();
        assert!(error.starts_with(&format!("port {port} of 127.0.0.1 is taken")), "{error}");
    }

    #[test]
    fn a_vm_is_only_a_process_whose_qemu_is_named_so() {
        assert!(!is_vm(std::process::id(), "web1"));
        assert!(is_alive(std::process::id()));
    }
}
