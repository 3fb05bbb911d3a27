//! Evaluating NixOS configurations to their toplevel store paths.
//!
//! Evaluation and building are two steps: one Nix process evaluates every
//! machine of an input (a configuration.nix, or all the machines asked of a
//! flake), one `nix-build` builds them all. When that evaluation fails, each
//! machine is evaluated on its own to tell which ones fail, so that the
//! others still get their records.

use crate::error::Error;
use crate::process;
use crate::record::Record;
use crate::store_path::StorePath;
use crate::target::Target;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const CLASSIC_NIX: &str = include_str!("../nix/classic.nix");
const MACHINE_NIX: &str = include_str!("../nix/machine.nix");
const NETWORK_NIX: &str = include_str!("../nix/network.nix");

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
    pub failed: Vec<(String, String)>,
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
    pub fn new(nixpkgs: Option<&Path>, include: &[String], system: Option<String>) -> Result<NixArgs, Error> {
        let mut search_path = Vec::new();
        if let Some(nixpkgs) = nixpkgs {
            let nixpkgs = std::fs::canonicalize(nixpkgs)
                .map_err(|e| Error::Usage(format!("--nixpkgs {}: {e}", nixpkgs.display())))?;
            search_path.push(format!("nixpkgs={}", nixpkgs.display()));
        }
        search_path.extend(include.iter().cloned());
        Ok(NixArgs { search_path, system })
    }

    /// `nix-instantiate --eval` of `expr` with `--argstr` arguments (and
    /// `system` when given); read-write, so that the .drv files exist for the
    /// build step.
    fn instantiate(&self, expr: &str, args: &[(&str, &str)]) -> Result<Output, String> {
        let mut cmd = Command::new("nix-instantiate");
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
pub fn fetch_nixpkgs(url: &str, sha256: &str) -> Result<PathBuf, Error> {
    let expr = format!("builtins.fetchTarball {{ url = {}; sha256 = {}; }}", nix_string(url), nix_string(sha256));
    let mut cmd = Command::new("nix-instantiate");
    cmd.args(["--eval", "--json", "-E", &expr]);
    let output = process::capture(&mut cmd).map_err(Error::Failed)?;
    if !output.status.success() {
        let why = process::summarize(&output.stderr);
        return Err(Error::Failed(format!("cannot fetch nixpkgs from {url}: {why}")));
    }
    let path: String = serde_json::from_slice(&output.stdout)
        .map_err(|e| Error::Failed(format!("unexpected output from nix-instantiate: {e}")))?;
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
}

impl Classic {
    /// `--nixpkgs PATH` is `-I nixpkgs=PATH` ahead of any other entry.
    pub fn new(file: &Path, nix: NixArgs) -> Result<Classic, Error> {
        let file = std::fs::canonicalize(file).map_err(|e| Error::Usage(format!("{}: {e}", file.display())))?;
        if !file.is_file() {
            return Err(Error::Usage(format!("{}: not a file", file.display())));
        }
        Ok(Classic { file, nix })
    }

    /// Evaluates the configuration; Nix's own messages go to stderr.
    pub fn evaluate(&self, variant: &Variant) -> Result<Vec<Machine>, Error> {
        let expr = format!("({CLASSIC_NIX}) {}", variant.machine_nix());
        let file = self.file.display().to_string();
        let output = self.nix.instantiate(&expr, &[("configuration", &file)]).map_err(Error::Failed)?;
        eprint!("{}", String::from_utf8_lossy(&output.stderr));
        nix_json(&output, EVALUATION_FAILED).map_err(|why| Error::Failed(format!("{file}: {why}")))
    }
}

/// A network file of machines (--network), evaluated with <nixpkgs>.
#[derive(Debug, Clone)]
pub struct Network {
    pub file: PathBuf,
    pub nix: NixArgs,
}

impl Network {
    pub fn new(file: &Path, nix: NixArgs) -> Result<Network, Error> {
        let file = std::fs::canonicalize(file).map_err(|e| Error::Usage(format!("{}: {e}", file.display())))?;
        Ok(Network { file, nix })
    }

    /// Every machine in one nix-instantiate; on failure, each on its own.
    pub fn evaluate(&self, variant: &Variant) -> Result<Evaluated, Error> {
        let expr = format!("({NETWORK_NIX}) {}", variant.machine_nix());
        let file = self.file.display().to_string();
        let names = || self.nix.instantiate(&expr, &[("network", &file), ("namesOnly", "1")]);
        let no_names = format!("{file}: not a network of machines (Nix's message is above)");
        evaluate_all_or_each(None, (names, no_names), |only| {
            let only = serde_json::to_string(&only).expect("strings serialise");
            self.nix.instantiate(&expr, &[("network", &file), ("only", &only)])
        })
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
    pub fn group(args: &[String], all: bool) -> Result<Vec<Flake>, Error> {
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
    pub fn evaluate(&self, variant: &Variant) -> Result<Evaluated, Error> {
        let names = || self.nix_eval("builtins.attrNames");
        let no_names = format!("{}: no nixosConfigurations (Nix's message is above)", self.reference);
        evaluate_all_or_each(self.names.as_deref(), (names, no_names), |only| {
            let only = serde_json::to_string(&only).expect("strings serialise");
            let apply = format!(
                "configurations: let machine = {}; only = builtins.fromJSON {}; \
                 names = if only == null then builtins.attrNames configurations else only; in \
                 map (name: machine name configurations.${{name}}.config) names",
                variant.machine_nix(),
                nix_string(&only)
            );
            self.nix_eval(&apply)
        })
    }

    fn nix_eval(&self, apply: &str) -> Result<Output, String> {
        let installable = format!("{}#nixosConfigurations", self.reference);
        let mut cmd = Command::new("nix");
        cmd.args(["--extra-experimental-features", "nix-command flakes", "eval", "--json", &installable]);
        cmd.args(["--apply", apply]);
        process::capture(&mut cmd)
    }
}

const EVALUATION_FAILED: &str = "evaluation failed (Nix's message is above)";

/// Nix's JSON answer, or `failed` when Nix did not succeed.
fn nix_json<T: serde::de::DeserializeOwned>(output: &Output, failed: &str) -> Result<T, String> {
    if !output.status.success() {
        return Err(failed.to_owned());
    }
    serde_json::from_slice(&output.stdout).map_err(|e| format!("unexpected output from Nix: {e}"))
}

/// One evaluation for all the machines (`only` None: every one); when it
/// fails, one per machine, so that the failing ones are named with Nix's
/// message and the others still get their records. `all_names` lists the
/// machines (for the fallback), with the error for when it cannot.
fn evaluate_all_or_each(
    only: Option<&[String]>,
    all_names: (impl FnOnce() -> Result<Output, String>, String),
    evaluate: impl Fn(Option<&[String]>) -> Result<Output, String>,
) -> Result<Evaluated, Error> {
    let output = evaluate(only).map_err(Error::Failed)?;
    if output.status.success() {
        eprint!("{}", String::from_utf8_lossy(&output.stderr));
        let machines = nix_json(&output, EVALUATION_FAILED).map_err(Error::Failed)?;
        return Ok(Evaluated { machines, failed: Vec::new() });
    }
    let names = match only {
        Some(names) => names.to_vec(),
        None => {
            let (list, cannot) = all_names;
            let output = list().map_err(Error::Failed)?;
            if !output.status.success() {
                eprint!("{}", String::from_utf8_lossy(&output.stderr));
            }
            nix_json(&output, &cannot).map_err(Error::Failed)?
        }
    };
    let mut evaluated = Evaluated::default();
    for name in names {
        let output = evaluate(Some(std::slice::from_ref(&name))).map_err(Error::Failed)?;
        eprint!("{}", String::from_utf8_lossy(&output.stderr));
        match nix_json::<Vec<Machine>>(&output, EVALUATION_FAILED) {
            Ok(machines) => evaluated.machines.extend(machines),
            Err(why) => evaluated.failed.push((name, why)),
        }
    }
    Ok(evaluated)
}

/// A path (`.`, `../x`, `/x`, or empty for `.`) made absolute; any other
/// flake reference (`github:...`) as it is.
fn resolve_flake_reference(reference: &str) -> Result<String, Error> {
    let is_path = reference.is_empty() || reference.starts_with('.') || reference.starts_with('/');
    if !is_path {
        return Ok(reference.to_owned());
    }
    let dir = if reference.is_empty() { "." } else { reference };
    let dir = std::fs::canonicalize(dir).map_err(|e| Error::Usage(format!("{dir}: {e}")))?;
    if !dir.join("flake.nix").is_file() {
        return Err(Error::Usage(format!("{}: no flake.nix there", dir.display())));
    }
    Ok(dir.display().to_string())
}

/// A Nix string literal holding `text`.
fn nix_string(text: &str) -> String {
    let escaped = text.replace('\\', "\\\\").replace('"', "\\\"").replace("${", "\\${");
    format!("\"{escaped}\"")
}

/// Builds every machine in one Nix call and returns their records.
pub fn build(machines: &[Machine]) -> Result<Vec<Record>, Error> {
    let drvs: Vec<&str> = machines.iter().map(|m| m.drv_path.as_str()).collect();
    crate::nix::realise(&drvs).map_err(Error::Failed)?;
    machines.iter().map(|m| m.record(&m.out)).collect()
}

/// Builds every machine on `target` (evaluate here, build there); the
/// outputs stay there.
pub fn build_on(target: &Target, machines: &[Machine]) -> Result<Vec<Record>, Error> {
    let drvs = machines
        .iter()
        .map(|m| StorePath::parse(&m.drv_path).map_err(|e| Error::Failed(format!("{}: {e}", m.name))))
        .collect::<Result<Vec<_>, _>>()?;
    crate::nix::realise_on(target, &drvs).map_err(Error::Failed)?;
    machines.iter().map(|m| m.record(&m.out)).collect()
}

/// Records of the .drv paths, for a build elsewhere (--drv).
pub fn derivations(machines: &[Machine]) -> Result<Vec<Record>, Error> {
    machines.iter().map(|m| m.record(&m.drv_path)).collect()
}

impl Machine {
    /// `NAME<TAB>PATH`; a configuration with an empty hostName gives a
    /// record without a name. drv and system travel in JSON records.
    fn record(&self, path: &str) -> Result<Record, Error> {
        let path = StorePath::parse(path)
            .map_err(|e| Error::Failed(format!("{}: evaluation gave {path:?}: {e}", self.name)))?;
        let name = Some(self.name.clone()).filter(|n| !n.is_empty());
        let mut record = Record::new(name, path);
        record.extra.insert("drv".into(), self.drv_path.clone().into());
        if let Some(system) = &self.system {
            record.extra.insert("system".into(), system.clone().into());
        }
        if let Some(host) = &self.target_host {
            record.extra.insert("targetHost".into(), host.clone().into());
        }
        Ok(record)
    }
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
