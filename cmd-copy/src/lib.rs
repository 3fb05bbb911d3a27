//! nixpipe-copy: copy closures of store paths to other stores.

use clap::Parser;
use nixpipe_core::cli::{OutputArgs, RecordArgs, Results};
use nixpipe_core::copy::{self, Compression, DestinationSpec, Options, Route, Summary};
use nixpipe_core::fleet;
use nixpipe_core::progress;
use nixpipe_core::signing::SecretKey;
use nixpipe_core::via::{Fetcher, Missed, Via};
use nixpipe_core::{Error, Outcome, Record, StorePath, TargetSpec};
use std::path::PathBuf;

const EXAMPLES: &str = "\
Examples:
  Deploy what nixpipe-eval built:
    nixpipe-eval -f configuration.nix | nixpipe-copy --to root@web1 | nixpipe-activate --on root@web1 switch

  Copy each record to the machine it names:
    nixpipe-eval ... | nixpipe-copy --to 'root@{name}'

  Copy one path by hand (ssh options from NIX_SSHOPTS, as nix-copy-closure):
    NIX_SSHOPTS='-i ~/.ssh/deploy' nixpipe-copy --to root@web1:2222 /nix/store/...-nixos-system-web1

  Fill a signed binary cache, then let a machine pull from it:
    nixpipe-copy --to file:///srv/cache --sign-key /etc/nix/cache.sec /nix/store/...

  Copy from one host to another (the bytes pass through this machine):
    nixpipe-copy --from root@build1 --to root@web1 /nix/store/...

  A fleet over a slow uplink: upload once to a host near the fleet, which copies on:
    nixpipe-eval .# | nixpipe-copy --via root@gateway --to 'root@{name}'";

const COPY_NOTES: &str = "\
How it copies:
  nixpipe-copy speaks the protocol of `nix-store --serve` itself, over the system ssh, on both
  ends: the closure and its path infos from the source, the valid subset from the target, then
  every missing path sent back to back in dependency order. A copy costs a few round trips,
  whatever the number of paths. Each NAR is checked against the source's narHash as it passes;
  a mismatch stops the copy, naming the path, before the target has all of it.

  Interrupted at any point, the target holds only complete, valid paths (Nix registers a path
  once its whole NAR arrived, and every path is sent after its references): run the same
  command again and it sends only the rest.

  With --from A --to B, the bytes pass through this machine. Where B can reach A itself, the
  direct way is to run the copy there: ssh B nix-copy-closure --from A PATH.

  --compress zstd compresses the NARs inside nixpipe's stream; the target's own zstd program
  decompresses them in front of nix-store (a second ssh session, opened only when there is
  something to send). A target without zstd on its PATH gets ssh's compression (zlib) instead,
  with a note. The default is none: on fast links compression costs more time than it saves
  (the README has the measurements); use zstd on slow uplinks.

  Copying to a user that is neither root nor in the target's trusted-users needs signed paths:
  --sign-key signs them, and the target must list the public key in trusted-public-keys.

Upload once (--via):
  --via HOST copies the closures of all records to HOST once, over one ssh connection that every
  step shares; then HOST copies each target what it lacks with nix-copy-closure, up to --jobs
  targets at once. While the upload runs, HOST already logs in to those targets and asks what
  they lack. The bytes this machine sends do not grow with the number of targets. If the upload
  fails, the targets get nothing, and a rerun sends only what HOST still lacks.
  - HOST reaches each target by the name you gave (user@host[:port]), through HOST's own ssh
    configuration and DNS, so targets need no route from here.
  - HOST logs in to the targets with your ssh agent, forwarded to it for the run (ssh -o
    ForwardAgent=yes): while the copy runs, root on HOST can use your agent. Without an agent,
    HOST's own keys must be accepted by the targets.
  - Host keys stay checked: each target must present a key this machine's known_hosts holds for
    it (connect to it once from here first); those keys are handed to HOST for the run.
  - The target user must be root or trusted, or the paths must carry signatures the target
    trusts: --sign-key signs what the upload sends; paths HOST already had keep the
    signatures they had.
  --via file:///DIR --sign-key FILE writes a signed binary cache once; then each target
  substitutes from it, told the cache's URL (--cache-url, e.g. an https:// address where the
  directory is served; by default the file:// URL itself, for a directory every target mounts)
  and public key for that session only. The target user must be root or trusted to set them.
  Whatever a target could not substitute is sent from here, with a note saying so.
  With --dry-run, it says what would go to HOST or the cache, and stops there.";

/// Copy the closures of store paths to another store.
///
/// Reads records (store paths, NAME<TAB>PATH lines or JSON records) from the
/// arguments or stdin and writes each one to stdout once its whole closure is
/// valid on the target. ssh is the system OpenSSH client: ~/.ssh/config, the
/// agent and NIX_SSHOPTS all apply; host keys are always checked.
#[derive(Parser, Debug)]
#[command(name = "nixpipe-copy", version, after_help = EXAMPLES, after_long_help = format!("{COPY_NOTES}\n\n{EXAMPLES}"))]
pub struct Cli {
    #[command(flatten)]
    pub records: RecordArgs,

    /// Where to copy: [user@]host[:port], ssh://..., 'root@{name}', local, or a binary cache file:///DIR [default: the record's NAME]
    #[arg(long, value_name = "TARGET")]
    pub to: Option<DestinationSpec>,

    /// Copy from this store instead of the local one: [user@]host[:port], ssh://..., 'root@{name}'
    #[arg(long, value_name = "TARGET")]
    pub from: Option<TargetSpec>,

    /// Let the target fetch what it can from its own substituters first
    #[arg(short = 's', long)]
    pub substitute_on_destination: bool,

    /// Sign every path copied with this secret key (from nix-store --generate-binary-cache-key)
    #[arg(long, value_name = "FILE")]
    pub sign_key: Option<PathBuf>,

    /// How NARs travel to an ssh target: zstd compresses them in nixpipe's stream and the target's zstd
    /// decompresses them (a target without zstd gets ssh's own compression instead)
    #[arg(long, value_enum, value_name = "HOW", default_value_t = Compression::None)]
    pub compress: Compression,

    /// Say on stderr what would be copied; copy nothing, write no records
    #[arg(long)]
    pub dry_run: bool,

    /// Upload once: copy the closures to this relay host or binary cache (file:///DIR, with --sign-key),
    /// and let every target fetch them from there
    #[arg(long, value_name = "HOST|CACHE", conflicts_with = "from")]
    pub via: Option<String>,

    /// Where the targets fetch a --via file:///DIR cache from, e.g. https://cache.example.org [default: the
    /// file:// URL itself, for a directory every target mounts]
    #[arg(long, value_name = "URL", requires = "via")]
    pub cache_url: Option<String>,

    /// Copy to up to N targets at once
    #[arg(long, short = 'j', value_name = "N", default_value_t = fleet::DEFAULT_JOBS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub jobs: usize,

    #[command(flatten)]
    pub output: OutputArgs,
}

/// Passes on a route's records once its copy is done, or reports why not.
fn report(
    results: &mut Results,
    route: &Route,
    records: &[Record],
    copied: &Result<Summary, String>,
    options: &Options,
    json: bool,
) -> Result<(), Error> {
    if options.dry_run {
        if let Err(why) = copied {
            results.failed(&route.to.to_string(), why);
        }
        return Ok(());
    }
    for record in records {
        let mut record = record.clone();
        if let (Ok(summary), true) = (copied, json) {
            record.extra.insert("copy".into(), serde_json::to_value(summary).expect("a plain struct"));
        }
        results.record(&record, copied.as_ref().map(|_| ()).map_err(Clone::clone))?;
    }
    Ok(())
}

fn upload_failed(via: &Via, why: String) -> Error {
    Error::Failed(format!("upload to {via} failed, nothing went further: {why}"))
}

pub fn run(cli: Cli) -> Result<Outcome, Error> {
    let sign_key = cli.sign_key.as_deref().map(SecretKey::load).transpose().map_err(Error::Usage)?;
    let options = Options {
        compression: cli.compress,
        substitute: cli.substitute_on_destination,
        sign_key,
        dry_run: cli.dry_run,
        target_nix_args: Vec::new(),
        target_ssh_options: Vec::new(),
    };
    let via =
        cli.via.as_deref().map(|spec| Via::parse(spec, cli.cache_url.as_deref())).transpose().map_err(Error::Usage)?;
    options.check(cli.to.as_ref()).map_err(Error::Usage)?;
    let records = cli.records.read()?;
    let routes = copy::routes(records, cli.from.as_ref(), cli.to.as_ref())?;
    let mut results = Results::new(&cli.output);
    if let Some(via) = &via {
        via.check(&options, &routes.iter().map(|(route, _)| &route.to).collect::<Vec<_>>()).map_err(Error::Usage)?;
    }
    let all: Vec<&StorePath> = routes.iter().flat_map(|(_, records)| records.iter().map(|r| &r.path)).collect();
    let mut write_error = None;
    let mut copy_each = |fetcher: Option<&Fetcher>| {
        let fetching = via.as_ref().map(|via| format!("fetching from {via}")).unwrap_or_default();
        fleet::each(
            &routes,
            cli.jobs,
            |(route, records)| {
                let paths: Vec<&StorePath> = records.iter().map(|r| &r.path).collect();
                match fetcher {
                    Some(fetcher) => {
                        let _line = progress::HostLine::new(&route.to.to_string(), &fetching);
                        fetcher.fetch(&route.to, &paths)
                    }
                    None => copy::copy_closures(route, &paths, &options).map_err(Missed::Failed),
                }
            },
            |(route, records), copied| {
                let copied = match copied {
                    // The upload's error is said once, below.
                    Err(Missed::NoUpload) => return false,
                    Err(Missed::Failed(why)) => Err(why),
                    Ok(summary) => Ok(summary),
                };
                if let Err(e) = report(&mut results, route, records, &copied, &options, cli.output.json) {
                    write_error.get_or_insert(e);
                }
                true
            },
        )
    };
    match &via {
        // Dry: what would be uploaded, and no more.
        Some(via) if options.dry_run => {
            via.upload(&all, &options).map_err(|why| upload_failed(via, why))?;
        }
        Some(via) => {
            via.deliver(&all, &options, |fetcher| copy_each(Some(fetcher))).map_err(|why| upload_failed(via, why))?;
        }
        None => {
            copy_each(None);
        }
    }
    if let Some(e) = write_error {
        return Err(e);
    }
    Ok(results.finish())
}
