//! Running Nix's own programs: whatever Nix the machine has (2.8 and
//! newer), found on PATH, configured by the user's environment.

use nixpipe_host::process::{self, CannotRun};
use nixpipe_host::report::{BuildDisplay, Reports};
use nixpipe_host::target::SshError;
use nixpipe_store::nix_log::{BuildLog, Seen};
use nixpipe_store::store_path::StorePath;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

/// Nix's own flags the user gave a step that evaluates or builds
/// (nixpipe-eval, nixpipe-bundle, nixpipe-microvm install), with Nix's
/// names and meanings, passed to every Nix call the step makes, here or on
/// the build host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NixFlags {
    /// What every Nix program takes, the old commands and the new CLI:
    /// --show-trace, --option NAME VALUE, and settings as flags
    /// (--max-jobs, --cores, --keep-going, --builders).
    pub common: Vec<String>,
    /// What only the new CLI takes (`nix eval` of flakes): --impure, the
    /// flake flags, --refresh, --offline, --print-build-logs.
    pub new_cli: Vec<String>,
    /// --keep-going: the machines that build get their records when
    /// another's build fails.
    pub keep_going: bool,
}

static FLAGS: OnceLock<NixFlags> = OnceLock::new();

/// The step's Nix flags, set once, before its first Nix call.
pub fn set_flags(flags: NixFlags) {
    let _ = FLAGS.set(flags);
}

pub(crate) fn flags() -> &'static NixFlags {
    FLAGS.get_or_init(NixFlags::default)
}

/// `program` (nix-build, nix-instantiate) with the flags every Nix
/// program takes.
pub(crate) fn command(program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(&flags().common);
    cmd
}

/// Runs a Nix command that builds (nix-build), its stdout captured. Where
/// the reporter shows builds live (a terminal), Nix writes its log as JSON
/// (`--log-format internal-json`, Nix 2.8 and later) and the display shows
/// what runs and, at the end, one summary; elsewhere Nix's lines go to
/// stderr as they are.
pub(crate) fn build(mut cmd: Command, reports: Reports) -> Result<std::process::Output, CannotRun> {
    let Some(display) = reports.build_display() else { return process::capture_stdout(&mut cmd) };
    let program = cmd.get_program().to_string_lossy().into_owned();
    cmd.args(LOG_FORMAT).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().map_err(|e| CannotRun { program: program.clone(), why: e.to_string() })?;
    followed(child, &*display).map_err(|e| CannotRun { program, why: e.to_string() })
}

/// What makes Nix write its log for a build display.
pub(crate) const LOG_FORMAT: [&str; 2] = ["--log-format", "internal-json"];

/// Reads a Nix build's JSON log from `child`'s stderr into `display` as it
/// comes, and its stdout whole: its output (stderr empty), once it ends.
pub(crate) fn followed(mut child: Child, display: &dyn BuildDisplay) -> std::io::Result<std::process::Output> {
    drop(child.stdin.take());
    let mut stdout = child.stdout.take().expect("piped");
    let paths = std::thread::spawn(move || {
        let mut paths = Vec::new();
        stdout.read_to_end(&mut paths).map(|_| paths)
    });
    let mut log = BuildLog::default();
    for line in BufReader::new(child.stderr.take().expect("piped")).lines() {
        let line = line?;
        match log.take(&line) {
            Seen::Message(message) => display.println(&message),
            Seen::Other => display.println(&line),
            Seen::Noted => {}
        }
        display.update(&log);
    }
    let status = child.wait()?;
    display.finish(&log);
    let stdout = paths.join().expect("a reader does not panic")?;
    Ok(std::process::Output { status, stdout, stderr: Vec::new() })
}

/// Those of `paths` that are not valid in this machine's store.
pub(crate) fn invalid(paths: &[&str]) -> Result<Vec<String>, NixError> {
    let mut cmd = Command::new("nix-store");
    cmd.args(["--check-validity", "--print-invalid"]).args(paths);
    let output = process::capture(&mut cmd)?;
    if !output.status.success() {
        return Err(NixError::NotInStore { why: process::summarize(&output.stderr) });
    }
    Ok(String::from_utf8_lossy(&output.stdout).lines().map(str::to_owned).collect())
}

/// Why a Nix program did not do its job.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NixError {
    #[error("nix-build failed ({status}); Nix's message is above")]
    BuildFailed { status: String },
    #[error("not all in this machine's store: {why}")]
    NotInStore { why: String },
    #[error("building on {target} failed (Nix's message is above)")]
    BuildOnFailed { target: String },
    #[error("{program} gave {output:?}: {why}")]
    BadOutput { program: String, output: String, why: String },
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error(transparent)]
    CannotRun(#[from] CannotRun),
}

/// Realises derivations in one call, so Nix shares and parallelises the
/// work. Nix's build log goes to stderr as it happens. (nix-build rather
/// than nix-store --realise, which warns about GC roots on every call.)
pub fn realise(drvs: &[&str], reports: Reports) -> Result<(), NixError> {
    let mut cmd = command("nix-build");
    cmd.arg("--no-out-link").args(drvs);
    let output = build(cmd, reports)?;
    if !output.status.success() {
        return Err(NixError::BuildFailed { status: process::describe_status(output.status) });
    }
    Ok(())
}

/// What this machine's Nix can build: for its `system` and
/// `extra-platforms` itself, anything else only through remote `builders`.
#[derive(Debug, PartialEq, Eq)]
pub struct Platforms {
    pub systems: Vec<String>,
    pub has_builders: bool,
}

impl Platforms {
    /// From the configuration of the Nix on PATH.
    pub fn here() -> Result<Platforms, NixError> {
        let mut cmd = Command::new("nix");
        cmd.args(["--extra-experimental-features", "nix-command", "show-config"]);
        let output = process::capture(&mut cmd)?;
        if !output.status.success() {
            return Err(NixError::BadOutput {
                program: "nix show-config".into(),
                output: String::new(),
                why: process::summarize(&output.stderr),
            });
        }
        Ok(Platforms::of_config(&String::from_utf8_lossy(&output.stdout)))
    }

    /// From `nix show-config`'s `NAME = VALUE` lines.
    fn of_config(config: &str) -> Platforms {
        let setting = |name: &str| {
            config.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(" = ")).unwrap_or("").trim().to_owned()
        };
        let (system, extra) = (setting("system"), setting("extra-platforms"));
        let systems = std::iter::once(system.as_str()).chain(extra.split_whitespace()).map(str::to_owned).collect();
        Platforms { systems, has_builders: names_builders(&setting("builders")) }
    }

    pub(crate) fn can_build(&self, system: &str) -> bool {
        self.has_builders || self.systems.iter().any(|s| s == system)
    }
}

/// Whether Nix's `builders` setting names any machine: inline, separated by
/// `;` or newlines, or in the file after `@` (Nix's default is
/// `@/etc/nix/machines`, which most machines do not have).
fn names_builders(setting: &str) -> bool {
    let machines = match setting.strip_prefix('@') {
        Some(file) => std::fs::read_to_string(file).unwrap_or_default(),
        None => setting.to_owned(),
    };
    machines.split([';', '\n']).map(str::trim).any(|m| !m.is_empty() && !m.starts_with('#'))
}

/// The closure of `paths` in this machine's store, references first.
pub fn requisites(paths: &[&StorePath]) -> Result<Vec<String>, NixError> {
    let mut cmd = Command::new("nix-store");
    cmd.args(["--query", "--requisites"]).args(paths.iter().map(|p| p.as_str()));
    let closure = process::capture(&mut cmd)?;
    if !closure.status.success() {
        return Err(NixError::NotInStore { why: process::summarize(&closure.stderr) });
    }
    Ok(String::from_utf8_lossy(&closure.stdout).lines().map(str::to_owned).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str =
        "sandbox = false\nsystem = x86_64-linux\nextra-platforms = i686-linux\nbuilders = \nsystem-features = kvm\n";

    #[test]
    fn builds_for_its_system_and_extra_platforms_only() {
        let here = Platforms::of_config(CONFIG);
        assert_eq!(here.systems, ["x86_64-linux", "i686-linux"]);
        assert!(here.can_build("i686-linux"));
        assert!(!here.can_build("aarch64-linux"));
    }

    #[test]
    fn a_machines_file_names_builders_only_when_it_lists_one() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("machines");
        let setting = format!("@{}", file.display());
        assert!(!names_builders(&setting), "no file");
        std::fs::write(&file, "# none yet\n\n").unwrap();
        assert!(!names_builders(&setting));
        std::fs::write(&file, "ssh://pi aarch64-linux\n").unwrap();
        assert!(names_builders(&setting));
    }

    #[test]
    fn remote_builders_may_build_anything() {
        let here = Platforms::of_config(&CONFIG.replace("builders = ", "builders = ssh://pi aarch64-linux"));
        assert!(here.can_build("aarch64-linux"));
    }
}
