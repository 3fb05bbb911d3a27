//! Evaluating NixOS configurations to their toplevel store paths.
//!
//! Evaluation and building are two steps: one Nix process evaluates every
//! machine of an input (a configuration.nix, or all the machines asked of a
//! flake), one `nix-build` builds them all. When that evaluation fails, each
//! machine is evaluated on its own to tell which ones fail, so that the
//! others still get their records.

use crate::keys::{Key, KeyError};
use crate::nix::NixError;
use nixpipe_host::process::{self, CannotRun};
use nixpipe_host::report::{Report, Reports};
use nixpipe_host::target::Target;
use nixpipe_store::record::Record;
use nixpipe_store::store_path::StorePath;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const CLASSIC_NIX: &str = include_str!("../nix/classic.nix");
const MACHINE_NIX: &str = include_str!("../nix/machine.nix");
const NETWORK_NIX: &str = include_str!("../nix/network.nix");
const DEPLOYMENT_NIX: &str = include_str!("../nix/deployment.nix");

/// Why an evaluation or a build did not give records.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EvalError {
    /// Bad usage: an input that is not there.
    #[error("{path}: {why}")]
    BadInput { path: String, why: String },
    /// Bad usage.
    #[error("{0}: no flake.nix there")]
    NoFlake(String),
    /// Bad usage.
    #[error("no <nixpkgs> in NIX_PATH: give --nixpkgs PATH")]
    NoNixpkgs,
    #[error("cannot fetch nixpkgs from {url}: {why}")]
    FetchNixpkgs { url: String, why: String },
    #[error("{input}: {why}")]
    Evaluation { input: String, why: String },
    #[error("evaluation failed (Nix's message is above)")]
    Failed,
    #[error("unexpected output from Nix: {0}")]
    UnexpectedOutput(String),
    #[error("{machine}: evaluation gave {path:?}: {why}")]
    BadPath { machine: String, path: String, why: String },
    #[error("no machine carries the tag {}", .0.join(" or "))]
    NoTag(Vec<String>),
    #[error(
        "{machine}: this machine's Nix builds for {here}, not {system}: add `extra-platforms = {system}` to nix.conf \
         with qemu-user registered for it in binfmt_misc (on NixOS: boot.binfmt.emulatedSystems = [ \"{system}\" ]), \
         or build on a machine of that platform with --build-on TARGET; nothing was built"
    )]
    CannotBuildHere { machine: String, system: String, here: String },
    #[error("building the bundles failed (Nix's message is above)")]
    BundleBuild,
    /// Its build failed, others were built (--keep-going).
    #[error("its build failed (Nix's message is above); the others were built (--keep-going)")]
    NotBuilt,
    #[error("nix-build gave {got} paths for {want} bundles")]
    BundleCount { got: usize, want: usize },
    #[error(transparent)]
    Nix(#[from] NixError),
    #[error(transparent)]
    Build(#[from] crate::build::BuildError),
    #[error(transparent)]
    CannotRun(#[from] CannotRun),
}

impl EvalError {
    /// Refused before anything was evaluated: bad usage.
    pub fn is_usage(&self) -> bool {
        matches!(self, EvalError::BadInput { .. } | EvalError::NoFlake(_) | EvalError::NoNixpkgs)
    }

    /// The error for an input path that cannot be used.
    pub(crate) fn bad_input(path: &Path, why: impl ToString) -> EvalError {
        EvalError::BadInput { path: path.display().to_string(), why: why.to_string() }
    }
}

/// Which derivation of each machine a record is for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Variant {
    /// config.system.build.toplevel
    #[default]
    Toplevel,
    /// The VM variant's toplevel: the configuration plus what qemu-vm.nix adds.
    Vm,
    /// The runnable VM, config.system.build.vm.
    VmRunner,
    /// microvm.nix's runner of the system, config.microvm.declaredRunner.
    MicrovmRunner,
    /// Any attribute path under config.
    Attr(String),
}

impl Variant {
    fn attr_path(&self) -> Vec<&str> {
        match self {
            Variant::Toplevel => vec!["system", "build", "toplevel"],
            Variant::Vm => vec!["virtualisation", "vmVariant", "system", "build", "toplevel"],
            Variant::VmRunner => vec!["system", "build", "vm"],
            Variant::MicrovmRunner => vec!["microvm", "declaredRunner"],
            Variant::Attr(path) => path.split('.').collect(),
        }
    }

    /// machine.nix applied to this variant's attribute path.
    fn machine_nix(&self) -> String {
        let path = serde_json::to_string(&self.attr_path()).expect("strings serialise");
        format!("(({MACHINE_NIX}) (builtins.fromJSON {}))", nix_string(&path))
    }
}

/// What came of evaluating an input: the machines to build, and the ones
/// that failed with why.
#[derive(Debug, Default)]
pub struct Evaluated {
    pub machines: Vec<Machine>,
    pub failed: Vec<(String, EvalError)>,
}

/// A classic `configuration.nix`, evaluated with `<nixpkgs/nixos>`.
#[derive(Debug, Clone)]
pub struct Classic {
    pub file: PathBuf,
    pub nix: NixArgs,
}

/// How classic inputs (-f, --network) are evaluated.
#[derive(Debug, Clone, Default)]
pub struct NixArgs {
    /// Nix search path entries, as for `nix-build -I`, first match wins.
    pub search_path: Vec<String>,
    /// Evaluate for this system (--system) instead of this machine's.
    pub system: Option<String>,
}

impl NixArgs {
    /// `--nixpkgs PATH` is `-I nixpkgs=PATH` ahead of the -I entries.
    pub fn new(nixpkgs: Option<&Path>, include: &[String], system: Option<String>) -> Result<NixArgs, EvalError> {
        let mut search_path = Vec::new();
        if let Some(nixpkgs) = nixpkgs {
            let nixpkgs = std::fs::canonicalize(nixpkgs).map_err(|e| EvalError::BadInput {
                path: format!("--nixpkgs {}", nixpkgs.display()),
                why: e.to_string(),
            })?;
            search_path.push(format!("nixpkgs={}", nixpkgs.display()));
        }
        search_path.extend(include.iter().cloned());
        Ok(NixArgs { search_path, system })
    }

    /// `nix-instantiate --eval` of `expr` with `--argstr` arguments (and
    /// `system` when given); read-write, so that the .drv files exist for the
    /// build step.
    fn instantiate(&self, expr: &str, args: &[(&str, &str)]) -> Result<Output, CannotRun> {
        let mut cmd = crate::nix::command("nix-instantiate");
        cmd.args(["--eval", "--strict", "--json", "--read-write-mode", "-E", expr]);
        for entry in &self.search_path {
            cmd.args(["-I", entry]);
        }
        let system = self.system.as_deref().map(|s| ("system", s));
        for (name, value) in args.iter().copied().chain(system) {
            cmd.args(["--argstr", name, value]);
        }
        process::capture(&mut cmd)
    }
}

/// nixpkgs pinned as people pin it: a tarball URL and its sha256, fetched
/// (once, and checked) by Nix's builtins.fetchTarball. Its store path.
pub fn fetch_nixpkgs(url: &str, sha256: &str) -> Result<PathBuf, EvalError> {
    let expr = format!("builtins.fetchTarball {{ url = {}; sha256 = {}; }}", nix_string(url), nix_string(sha256));
    let mut cmd = crate::nix::command("nix-instantiate");
    cmd.args(["--eval", "--json", "-E", &expr]);
    let output = process::capture(&mut cmd)?;
    if !output.status.success() {
        let why = process::summarize(&output.stderr);
        return Err(EvalError::FetchNixpkgs { url: url.to_owned(), why });
    }
    let path: String =
        serde_json::from_slice(&output.stdout).map_err(|e| EvalError::UnexpectedOutput(e.to_string()))?;
    Ok(PathBuf::from(path))
}

/// One evaluated machine, not yet built.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Machine {
    pub name: String,
    pub drv_path: String,
    pub out: String,
    pub system: Option<String>,
    pub target_host: Option<String>,
    /// deployment.tags: the groups it belongs to (colmena's option).
    #[serde(default)]
    pub tags: Vec<String>,
    /// deployment.keys, without their contents.
    #[serde(default)]
    pub keys: Vec<EvalKey>,
}

/// A key as machine.nix gives it: whether it has a text, beside the rest.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct EvalKey {
    text: bool,
    #[serde(flatten)]
    key: Key,
}

impl Classic {
    /// `--nixpkgs PATH` is `-I nixpkgs=PATH` ahead of any other entry.
    pub fn new(file: &Path, nix: NixArgs) -> Result<Classic, EvalError> {
        let file = std::fs::canonicalize(file).map_err(|e| EvalError::bad_input(file, e))?;
        if !file.is_file() {
            return Err(EvalError::bad_input(&file, "not a file"));
        }
        Ok(Classic { file, nix })
    }

    /// Evaluates the configuration; Nix's own messages are reported.
    pub fn evaluate(&self, variant: &Variant, reports: Reports) -> Result<Vec<Machine>, EvalError> {
        let expr = format!("({CLASSIC_NIX}) {}", variant.machine_nix());
        let file = self.file.display().to_string();
        let output = self.nix.instantiate(&expr, &[("configuration", &file)])?;
        pass_on_nix_log(&output, reports);
        nix_json(&output).map_err(|why| EvalError::Evaluation { input: file, why: why.to_string() })
    }
}

/// A network file of machines (--network), evaluated with <nixpkgs>.
#[derive(Debug, Clone)]
pub struct Network {
    pub file: PathBuf,
    pub nix: NixArgs,
}

impl Network {
    pub fn new(file: &Path, nix: NixArgs) -> Result<Network, EvalError> {
        let file = std::fs::canonicalize(file).map_err(|e| EvalError::bad_input(file, e))?;
        Ok(Network { file, nix })
    }

    /// Every machine in one nix-instantiate; on failure, each on its own.
    pub fn evaluate(&self, variant: &Variant, reports: Reports) -> Result<Evaluated, EvalError> {
        let expr = format!("({NETWORK_NIX}) ({DEPLOYMENT_NIX}) {}", variant.machine_nix());
        let file = self.file.display().to_string();
        let names = || self.nix.instantiate(&expr, &[("network", &file), ("namesOnly", "1")]);
        let no_names = EvalError::Evaluation {
            input: file.clone(),
            why: "not a network of machines (Nix's message is above)".into(),
        };
        evaluate_all_or_each(
            None,
            (names, no_names),
            |only| {
                let only = serde_json::to_string(&only).expect("strings serialise");
                let vm_network = if matches!(variant, Variant::Vm | Variant::VmRunner) { "1" } else { "" };
                self.nix.instantiate(&expr, &[("network", &file), ("only", &only), ("vmNetwork", vm_network)])
            },
            reports,
        )
    }
}

/// A flake and the nixosConfigurations asked of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flake {
    /// The flake reference; a path made absolute, as Nix resolves it.
    pub reference: String,
    /// The attribute names; None for all of them.
    pub names: Option<Vec<String>>,
}

impl Flake {
    /// Groups `ref#name` arguments by flake, so that each flake is evaluated
    /// once for all its machines. `ref#` (or `--all`) is every machine.
    pub fn group(args: &[String], all: bool) -> Result<Vec<Flake>, EvalError> {
        let mut flakes: Vec<Flake> = Vec::new();
        for arg in args {
            let (reference, name) = arg.split_once('#').unwrap_or((arg, ""));
            let reference = resolve_flake_reference(reference)?;
            let name = name.strip_prefix("nixosConfigurations.").unwrap_or(name);
            let names = (!name.is_empty() && !all).then(|| vec![name.to_owned()]);
            match flakes.iter_mut().find(|f| f.reference == reference) {
                Some(flake) => match (&mut flake.names, names) {
                    (Some(known), Some(more)) => known.extend(more),
                    (known, _) => *known = None,
                },
                None => flakes.push(Flake { reference, names }),
            }
        }
        Ok(flakes)
    }

    /// Evaluates the machines in one `nix eval`; on failure, each on its own.
    pub fn evaluate(&self, variant: &Variant, reports: Reports) -> Result<Evaluated, EvalError> {
        let names = || self.nix_eval("builtins.attrNames");
        let no_names = EvalError::Evaluation {
            input: self.reference.clone(),
            why: "no nixosConfigurations (Nix's message is above)".into(),
        };
        evaluate_all_or_each(
            self.names.as_deref(),
            (names, no_names),
            |only| {
                let only = serde_json::to_string(&only).expect("strings serialise");
                // A configuration that does not declare deployment.* itself
                // gets nixpipe's declarations, as a network file's machines do.
                let apply = format!(
                    "configurations: let machine = {}; only = builtins.fromJSON {}; \
                 names = if only == null then builtins.attrNames configurations else only; \
                 declared = c: if c ? extendModules && !(c.options ? deployment) \
                   then (c.extendModules {{ modules = [ ({DEPLOYMENT_NIX}) ]; }}).config else c.config; in \
                 map (name: machine name (declared configurations.${{name}})) names",
                    variant.machine_nix(),
                    nix_string(&only)
                );
                self.nix_eval(&apply)
            },
            reports,
        )
    }

    fn nix_eval(&self, apply: &str) -> Result<Output, CannotRun> {
        let installable = format!("{}#nixosConfigurations", self.reference);
        let mut cmd = Command::new("nix");
        cmd.args(["--extra-experimental-features", "nix-command flakes", "eval", "--json", &installable]);
        cmd.args(["--apply", apply]);
        let flags = crate::nix::flags();
        cmd.args(&flags.common).args(&flags.new_cli);
        process::capture(&mut cmd)
    }
}

/// Passes Nix's own messages (warnings, errors) on to the user.
fn pass_on_nix_log(output: &Output, reports: Reports) {
    if !output.stderr.is_empty() {
        reports.report(Report::NixLog(output.stderr.clone()));
    }
}

/// Nix's JSON answer, or why there is none.
fn nix_json<T: serde::de::DeserializeOwned>(output: &Output) -> Result<T, EvalError> {
    if !output.status.success() {
        return Err(EvalError::Failed);
    }
    serde_json::from_slice(&output.stdout).map_err(|e| EvalError::UnexpectedOutput(e.to_string()))
}

/// One evaluation for all the machines (`only` None: every one); when it
/// fails, one per machine, so that the failing ones are named with Nix's
/// message and the others still get their records. `all_names` lists the
/// machines (for the fallback), with the error for when it cannot.
fn evaluate_all_or_each(
    only: Option<&[String]>,
    all_names: (impl FnOnce() -> Result<Output, CannotRun>, EvalError),
    evaluate: impl Fn(Option<&[String]>) -> Result<Output, CannotRun>,
    reports: Reports,
) -> Result<Evaluated, EvalError> {
    let output = evaluate(only)?;
    if output.status.success() {
        pass_on_nix_log(&output, reports);
        return Ok(Evaluated { machines: nix_json(&output)?, failed: Vec::new() });
    }
    let names = match only {
        Some(names) => names.to_vec(),
        None => {
            let (list, cannot) = all_names;
            let output = list()?;
            if !output.status.success() {
                pass_on_nix_log(&output, reports);
                return Err(cannot);
            }
            nix_json(&output)?
        }
    };
    let mut evaluated = Evaluated::default();
    for name in names {
        let output = evaluate(Some(std::slice::from_ref(&name)))?;
        pass_on_nix_log(&output, reports);
        match nix_json::<Vec<Machine>>(&output) {
            Ok(machines) => evaluated.machines.extend(machines),
            Err(why) => evaluated.failed.push((name, why)),
        }
    }
    Ok(evaluated)
}

/// A path (`.`, `../x`, `/x`, or empty for `.`) made absolute; any other
/// flake reference (`github:...`) as it is.
fn resolve_flake_reference(reference: &str) -> Result<String, EvalError> {
    let is_path = reference.is_empty() || reference.starts_with('.') || reference.starts_with('/');
    if !is_path {
        return Ok(reference.to_owned());
    }
    let dir = if reference.is_empty() { "." } else { reference };
    let dir = std::fs::canonicalize(dir).map_err(|e| EvalError::bad_input(Path::new(dir), e))?;
    if !dir.join("flake.nix").is_file() {
        return Err(EvalError::NoFlake(dir.display().to_string()));
    }
    Ok(dir.display().to_string())
}

/// A Nix string literal holding `text`.
fn nix_string(text: &str) -> String {
    let escaped = text.replace('\\', "\\\\").replace('"', "\\\"").replace("${", "\\${");
    format!("\"{escaped}\"")
}

/// A machine and its record, or why it has none.
pub type Built<'a> = (&'a Machine, Result<Record, EvalError>);

/// Builds every machine in one Nix call and returns their records; first
/// makes sure this machine's Nix can build each one's system. With Nix's
/// --keep-going, a machine whose build failed is named (Nix's message is
/// above) and the others, built, still get their records.
pub fn build(machines: &[Machine], reports: Reports) -> Result<Vec<Built<'_>>, EvalError> {
    check_buildable_here(machines)?;
    let drvs: Vec<&str> = machines.iter().map(|m| m.drv_path.as_str()).collect();
    let failed = match crate::nix::realise(&drvs, reports) {
        Ok(()) => Vec::new(),
        Err(e) if crate::nix::flags().keep_going => {
            crate::nix::invalid(&machines.iter().map(|m| m.out.as_str()).collect::<Vec<_>>()).map_err(|_| e)?
        }
        Err(e) => return Err(e.into()),
    };
    Ok(machines
        .iter()
        .map(|m| match failed.contains(&m.out) {
            true => (m, Err(EvalError::NotBuilt)),
            false => (m, m.record(&m.out)),
        })
        .collect())
}

/// Refuses, before Nix starts, a machine whose system this machine's Nix
/// neither builds (its `system` and `extra-platforms`) nor hands to remote
/// `builders`: Nix would fail later with only "a 'aarch64-linux' with
/// features {} is required", which names no setting.
fn check_buildable_here(machines: &[Machine]) -> Result<(), EvalError> {
    // This machine's own platform needs no question to Nix.
    let native = format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS);
    let mut platforms = None;
    for machine in machines {
        let Some(system) = machine.system.as_deref().filter(|s| *s != native) else { continue };
        let here = match &platforms {
            Some(here) => here,
            None => platforms.insert(crate::nix::Platforms::here()?),
        };
        if !here.can_build(system) {
            return Err(EvalError::CannotBuildHere {
                machine: machine.name.clone(),
                system: system.to_owned(),
                here: here.systems.join(", "),
            });
        }
    }
    Ok(())
}

/// Builds every machine on `target` (evaluate here, build there); the
/// outputs stay there.
pub fn build_on(target: &Target, machines: &[Machine], reports: Reports) -> Result<Vec<Record>, EvalError> {
    let drvs = machines.iter().map(|m| m.store_path(&m.drv_path)).collect::<Result<Vec<_>, _>>()?;
    crate::build::realise_on(target, &drvs, reports)?;
    machines.iter().map(|m| m.record(&m.out)).collect()
}

/// Records of the .drv paths, for a build elsewhere (--drv).
pub fn derivations(machines: &[Machine]) -> Result<Vec<Record>, EvalError> {
    machines.iter().map(|m| m.record(&m.drv_path)).collect()
}

impl Machine {
    /// Its keys are well formed, and none has its text in the configuration.
    pub fn check_keys(&self) -> Result<(), KeyError> {
        self.keys.iter().try_for_each(|k| match k.text {
            true => Err(KeyError::Text(k.key.name.clone())),
            false => k.key.check(),
        })
    }

    /// Whether it carries one of `tags`; every machine when none is given.
    pub fn carries_any(&self, tags: &[String]) -> bool {
        tags.is_empty() || self.tags.iter().any(|t| tags.contains(t))
    }

    /// `NAME<TAB>PATH`; a configuration with an empty hostName gives a
    /// record without a name. drv and system travel in JSON records.
    fn record(&self, path: &str) -> Result<Record, EvalError> {
        let name = Some(self.name.clone()).filter(|n| !n.is_empty());
        let mut record = Record::new(name, self.store_path(path)?);
        let fields = EvalJson {
            drv: &self.drv_path,
            system: self.system.as_deref(),
            target_host: self.target_host.as_deref(),
            tags: &self.tags,
            keys: self.keys.iter().map(|k| &k.key).collect(),
        };
        record.add_fields(&fields);
        Ok(record)
    }

    fn store_path(&self, path: &str) -> Result<StorePath, EvalError> {
        StorePath::parse(path).map_err(|e| EvalError::BadPath {
            machine: self.name.clone(),
            path: path.to_owned(),
            why: e.to_string(),
        })
    }
}

/// What nixpipe-eval's JSON records carry beside name and path.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct EvalJson<'a> {
    drv: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_host: Option<&'a str>,
    /// Always there, `[]` for none: `jq 'select(.tags | index("db"))'`.
    tags: &'a [String],
    #[serde(skip_serializing_if = "Vec::is_empty")]
    keys: Vec<&'a Key>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_machines_by_flake() {
        let args = ["github:me/fleet#web1", "github:me/fleet#nixosConfigurations.web2", "github:me/other#db1"];
        let args: Vec<String> = args.map(String::from).to_vec();
        let flakes = Flake::group(&args, false).unwrap();
        assert_eq!(
            flakes,
            [
                Flake { reference: "github:me/fleet".into(), names: Some(vec!["web1".into(), "web2".into()]) },
                Flake { reference: "github:me/other".into(), names: Some(vec!["db1".into()]) },
            ]
        );
    }

    #[test]
    fn an_empty_fragment_or_all_means_every_machine() {
        let args = vec!["github:me/fleet#web1".to_owned(), "github:me/fleet#".to_owned()];
        assert_eq!(Flake::group(&args, false).unwrap()[0].names, None);
        assert_eq!(Flake::group(&args[..1], true).unwrap()[0].names, None);
    }

    #[test]
    fn quotes_nix_strings() {
        assert_eq!(nix_string(r#"["a\"b${x}"]"#), r#""[\"a\\\"b\${x}\"]""#);
    }
}
