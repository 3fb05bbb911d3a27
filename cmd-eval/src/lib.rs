//! nixpipe-eval: evaluate NixOS configurations to toplevel store paths.

use clap::Parser;
use nixpipe_cli::{NixFlagsArgs, OutputArgs, Results};
use nixpipe_deploy::eval::{self, Classic, EvalError, Evaluated, Flake, Machine, Network, NixArgs, Variant};
use nixpipe_deploy::{Error, Outcome};
use nixpipe_host::{Target, TargetSpec};
use std::path::PathBuf;

const EXAMPLES: &str = include_str!("../doc/examples.txt");

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

    /// Only the machines whose deployment.tags carry TAG (again for more: any of them)
    #[arg(long, value_name = "TAG")]
    pub tag: Vec<String>,

    #[command(flatten)]
    pub nix: NixFlagsArgs,

    #[command(flatten)]
    pub output: OutputArgs,
}

/// What to evaluate.
enum Input {
    Classic(Classic),
    Network(Network),
    Flakes(Vec<Flake>),
}

/// Where the machines are built.
enum Build {
    Here,
    /// --drv: not at all; the records are the .drv paths.
    Nowhere,
    On(Target),
}

/// An evaluation, checked: every "bad usage, nothing done" is decided here.
struct Plan {
    input: Input,
    variant: Variant,
    build: Build,
    tags: Vec<String>,
}

impl Plan {
    fn new(cli: &Cli) -> Result<Plan, Error> {
        // One builder for all: a typo in it is bad usage before any evaluation.
        let build = match &cli.build_on {
            _ if cli.drv => Build::Nowhere,
            Some(spec) => Build::On(spec.resolve(None).map_err(|e| Error::Usage(format!("--build-on: {e}")))?),
            None => Build::Here,
        };
        let input = match (&cli.file, &cli.network) {
            (Some(file), _) => Input::Classic(Classic::new(file, nix_args(cli)?)?),
            (None, Some(file)) => Input::Network(Network::new(file, nix_args(cli)?)?),
            (None, None) => Input::Flakes(match (cli.flakes.is_empty(), cli.all) {
                (true, true) => Flake::group(&[".".to_owned()], true)?,
                (true, false) => return Err(Error::Usage("give machines as FLAKEREF#NAME, --all, or -f FILE".into())),
                (false, all) => Flake::group(&cli.flakes, all)?,
            }),
        };
        Ok(Plan { input, variant: variant(cli), build, tags: cli.tag.clone() })
    }

    /// Evaluates every machine, builds them, writes their records; the
    /// machines that fail to evaluate are reported.
    fn run(&self, results: &mut Results) -> Result<(), Error> {
        let machines = match &self.input {
            Input::Classic(classic) => classic.evaluate(&self.variant, nixpipe_cli::reports())?,
            Input::Network(network) => report(network.evaluate(&self.variant, nixpipe_cli::reports())?, results),
            Input::Flakes(flakes) => {
                let mut machines = Vec::new();
                for flake in flakes {
                    machines.extend(report(flake.evaluate(&self.variant, nixpipe_cli::reports())?, results));
                }
                machines
            }
        };
        let machines = self.tagged(machines)?;
        let machines: Vec<Machine> = machines
            .into_iter()
            .filter(|m| m.check_keys().map_err(|why| results.failed(&m.name, &why)).is_ok())
            .collect();
        if machines.is_empty() {
            return Ok(());
        }
        let records = match &self.build {
            Build::Nowhere => eval::derivations(&machines)?,
            Build::On(target) => eval::build_on(target, &machines, nixpipe_cli::reports())?,
            Build::Here => {
                let mut built = Vec::new();
                for (machine, record) in eval::build(&machines, nixpipe_cli::reports())? {
                    match record {
                        Ok(record) => built.push(record),
                        Err(why) => results.failed(&machine.name, &why),
                    }
                }
                built
            }
        };
        records.iter().try_for_each(|record| results.write(record))
    }

    /// The machines carrying one of --tag (all of them without it). A tag
    /// no machine carries is an error: a misspelt tag would otherwise
    /// deploy nothing, silently.
    fn tagged(&self, machines: Vec<Machine>) -> Result<Vec<Machine>, EvalError> {
        let evaluated = machines.len();
        let tagged: Vec<Machine> = machines.into_iter().filter(|m| m.carries_any(&self.tags)).collect();
        match tagged.is_empty() && evaluated > 0 && !self.tags.is_empty() {
            true => Err(EvalError::NoTag(self.tags.clone())),
            false => Ok(tagged),
        }
    }
}

pub fn run(cli: Cli) -> Result<Outcome, Error> {
    cli.nix.apply();
    let mut results = Results::new(&cli.output);
    Plan::new(&cli)?.run(&mut results)?;
    results.finish()
}

/// The search path and system of -f and --network, nixpkgs fetched first
/// when it is pinned by URL.
fn nix_args(cli: &Cli) -> Result<NixArgs, EvalError> {
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

/// Reports the machines that failed to evaluate; the others, to build.
fn report(evaluated: Evaluated, results: &mut Results) -> Vec<Machine> {
    for (name, why) in &evaluated.failed {
        results.failed(name, why);
    }
    evaluated.machines
}
