//! nixpipe-eval: evaluate NixOS configurations to toplevel store paths.

use clap::Parser;
use nixpipe_core::cli::{OutputArgs, Results};
use nixpipe_core::eval::{self, Classic, Evaluated, Flake, Machine, Network, NixArgs, Variant};
use nixpipe_core::{Error, Outcome, TargetSpec};
use std::path::PathBuf;

const EXAMPLES: &str = "\
Examples:
  Build a configuration.nix and deploy it:
    nixpipe-eval -f configuration.nix | nixpipe-copy --to root@web1 | nixpipe-activate --on root@web1 switch

  Pin nixpkgs for the evaluation:
    nixpipe-eval -f configuration.nix --nixpkgs ~/src/nixpkgs

  Every machine of the flake here, evaluated in one Nix process, built in one more:
    nixpipe-eval --all | nixpipe-copy --to 'root@{name}' | nixpipe-activate switch

Each record is NAME<TAB>PATH, NAME being the flake attribute name, or for -f
networking.hostName (no NAME when it is empty). With --json the record also
carries \"drv\" and \"system\". A machine that fails to evaluate is reported
with Nix's message; the others still get their records, and the exit status
is 1.";

/// Evaluate and build NixOS configurations, printing their toplevel store paths.
///
/// Evaluates every machine in one Nix call and builds them all in one more,
/// then writes one record per machine to stdout for nixpipe-copy and
/// nixpipe-activate. Nix's build log goes to stderr.
#[derive(Parser, Debug)]
#[command(name = "nixpipe-eval", version, after_help = EXAMPLES)]
pub struct Cli {
    /// Machines of flakes: .#web1, path/to/flake#web1, github:me/fleet#web1; .# for all of a flake
    #[arg(value_name = "FLAKEREF#NAME")]
    pub flakes: Vec<String>,

    /// Every nixosConfigurations entry of the flakes given (of . when none is)
    #[arg(long)]
    pub all: bool,

    /// A classic configuration.nix, evaluated with <nixpkgs/nixos>
    #[arg(short = 'f', long, value_name = "FILE", conflicts_with_all = ["flakes", "all"])]
    pub file: Option<PathBuf>,

    /// The nixpkgs to evaluate with; the same as -I nixpkgs=PATH, and it wins
    #[arg(long, value_name = "PATH")]
    pub nixpkgs: Option<PathBuf>,

    /// nixpkgs pinned as a tarball (builtins.fetchTarball), e.g. https://github.com/NixOS/nixpkgs/archive/REV.tar.gz
    #[arg(long, value_name = "URL", requires = "nixpkgs_sha256", conflicts_with = "nixpkgs")]
    pub nixpkgs_url: Option<String>,

    /// The sha256 of the --nixpkgs-url tarball's unpacked contents, as fetchTarball takes it
    #[arg(long, value_name = "HASH", requires = "nixpkgs_url")]
    pub nixpkgs_sha256: Option<String>,

    /// Evaluate for another system, e.g. aarch64-linux (with -f or --network; a flake fixes its machines' systems)
    #[arg(long, value_name = "SYSTEM", conflicts_with_all = ["flakes", "all"])]
    pub system: Option<String>,

    /// Add an entry to the Nix search path, as nix-build -I does
    #[arg(short = 'I', value_name = "PATH")]
    pub include: Vec<String>,

    /// A network file of machines, as nixos-build-vms, NixOps and morph use; NAME is the attribute name
    #[arg(long, value_name = "FILE", conflicts_with_all = ["flakes", "all", "file"])]
    pub network: Option<PathBuf>,

    /// The VM variant's toplevel (config.virtualisation.vmVariant.system.build.toplevel), to update a running VM with `nixpipe-activate ... test`
    #[arg(long, group = "variant")]
    pub vm: bool,

    /// The runnable VM (config.system.build.vm)
    #[arg(long, group = "variant")]
    pub vm_runner: bool,

    /// microvm.nix's runner (config.microvm.declaredRunner), for nixpipe-microvm
    #[arg(long, group = "variant")]
    pub microvm_runner: bool,

    /// Any other derivation under config, e.g. system.build.vm
    #[arg(long, value_name = "PATH", group = "variant")]
    pub attr: Option<String>,

    /// Evaluate only and print .drv paths, to build elsewhere
    #[arg(long, conflicts_with = "build_on")]
    pub drv: bool,

    /// Evaluate here, build on TARGET: the .drv closures go there, one nix-store --realise builds them; the outputs stay there
    #[arg(long, value_name = "TARGET")]
    pub build_on: Option<TargetSpec>,

    #[command(flatten)]
    pub output: OutputArgs,
}

pub fn run(cli: Cli) -> Result<Outcome, Error> {
    let mut results = Results::new(&cli.output);
    let variant = variant(&cli);
    // One builder for all: a typo in it is bad usage before any evaluation.
    let build_on = cli.build_on.as_ref().map(|spec| spec.resolve(None)).transpose();
    let build_on = build_on.map_err(|e| Error::Usage(format!("--build-on: {e}")))?;
    let machines = match (&cli.file, &cli.network) {
        (Some(file), _) => Classic::new(file, nix_args(&cli)?)?.evaluate(&variant)?,
        (None, Some(file)) => report(Network::new(file, nix_args(&cli)?)?.evaluate(&variant)?, &mut results),
        (None, None) => evaluate_flakes(&cli, &variant, &mut results)?,
    };
    if !machines.is_empty() {
        let records = match &build_on {
            _ if cli.drv => eval::derivations(&machines)?,
            Some(target) => eval::build_on(target, &machines)?,
            None => eval::build(&machines)?,
        };
        for record in &records {
            results.record(record, Ok(()))?;
        }
    }
    Ok(results.finish())
}

/// The search path and system of -f and --network, nixpkgs fetched first
/// when it is pinned by URL.
fn nix_args(cli: &Cli) -> Result<NixArgs, Error> {
    let fetched = match (&cli.nixpkgs_url, &cli.nixpkgs_sha256) {
        (Some(url), Some(sha256)) => Some(eval::fetch_nixpkgs(url, sha256)?),
        _ => None,
    };
    let nixpkgs = fetched.as_deref().or(cli.nixpkgs.as_deref());
    NixArgs::new(nixpkgs, &cli.include, cli.system.clone())
}

fn variant(cli: &Cli) -> Variant {
    // clap's group lets at most one of them through.
    match &cli.attr {
        Some(path) => Variant::Attr(path.clone()),
        None if cli.vm => Variant::Vm,
        None if cli.vm_runner => Variant::VmRunner,
        None if cli.microvm_runner => Variant::MicrovmRunner,
        None => Variant::Toplevel,
    }
}

/// Each flake once, for all its machines; a machine that fails is reported.
fn evaluate_flakes(cli: &Cli, variant: &Variant, results: &mut Results) -> Result<Vec<Machine>, Error> {
    let flakes = match (cli.flakes.is_empty(), cli.all) {
        (true, true) => Flake::group(&[".".to_owned()], true)?,
        (true, false) => return Err(Error::Usage("give machines as FLAKEREF#NAME, --all, or -f FILE".into())),
        (false, all) => Flake::group(&cli.flakes, all)?,
    };
    let mut machines = Vec::new();
    for flake in flakes {
        machines.extend(report(flake.evaluate(variant)?, results));
    }
    Ok(machines)
}

/// Reports the machines that failed to evaluate; the others, to build.
fn report(evaluated: Evaluated, results: &mut Results) -> Vec<Machine> {
    for (name, why) in &evaluated.failed {
        results.failed(name, why);
    }
    evaluated.machines
}
