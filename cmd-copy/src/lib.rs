//! nixpipe-copy: copy closures of store paths to other stores.

use clap::Parser;
use nixpipe_cli::{JobsArgs, OutputArgs, RecordArgs, Results};
use nixpipe_deploy::copy::{self, Compression, CopyError, DestinationSpec, Options, Route, Summary};
use nixpipe_deploy::fleet;
use nixpipe_deploy::via::Via;
use nixpipe_deploy::{Error, Outcome};
use nixpipe_host::store_connection::Protocol;
use nixpipe_host::TargetSpec;
use nixpipe_store::signing::SecretKey;
use nixpipe_store::Record;
use std::path::PathBuf;

const EXAMPLES: &str = include_str!("../doc/examples.txt");
const HOW_IT_COPIES: &str = include_str!("../doc/how-it-copies.txt");

/// Copy the closures of store paths to another store.
///
/// Reads records (store paths, NAME<TAB>PATH lines or JSON records) from the
/// arguments or stdin and writes each one to stdout once its whole closure is
/// valid on the target. ssh is the system OpenSSH client: ~/.ssh/config, the
/// agent and NIX_SSHOPTS all apply; host keys are always checked.
#[derive(Parser, Debug)]
#[command(name = "nixpipe-copy", version, after_help = EXAMPLES, after_long_help = format!("{HOW_IT_COPIES}\n\n{EXAMPLES}"))]
pub struct Cli {
    #[command(flatten)]
    pub records: RecordArgs,

    /// Where to copy: [user@]host[:port], ssh://..., 'root@{name}', local, or a binary cache file:///DIR [default: the record's NAME]
    #[arg(long, value_name = "TARGET")]
    pub to: Option<DestinationSpec>,

    /// Copy from this store instead of the local one: [user@]host[:port], ssh://..., 'root@{name}'
    #[arg(long, value_name = "TARGET")]
    pub from: Option<TargetSpec>,

    /// Which protocol to speak with the stores at both ends: serve (`nix-store --serve --write`, the
    /// legacy ssh:// store), daemon (`nix-daemon --stdio`, the ssh-ng:// store: Nix 2.4 or newer, nix-daemon
    /// on the remote PATH), or auto: serve where the store's nix-store still has --serve, else daemon
    #[arg(long, value_enum, value_name = "PROTOCOL", default_value_t = Protocol::Auto, env = "NIXPIPE_COPY_PROTOCOL")]
    pub protocol: Protocol,

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

    /// Keep no GC root on the target for the records copied (by default each record's path is one, under
    /// /nix/var/nix/gcroots/nixpipe/NAME, until nixpipe-activate has put it in the system profile)
    #[arg(long)]
    pub no_gc_root: bool,

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

    #[command(flatten)]
    pub jobs: JobsArgs,

    #[command(flatten)]
    pub output: OutputArgs,
}

/// What JSON records of a copy carry.
#[derive(serde::Serialize)]
struct CopyJson<'a> {
    copy: &'a Summary,
}

/// A copy, checked: every "bad usage, nothing done" is decided here.
struct Plan {
    routes: Vec<(Route, Vec<Record>)>,
    via: Option<Via>,
    options: Options,
    jobs: usize,
    output: OutputArgs,
}

impl Plan {
    fn new(cli: Cli) -> Result<Plan, Error> {
        let sign_key = cli.sign_key.as_deref().map(SecretKey::load).transpose().map_err(Error::Usage)?;
        let options = Options {
            protocol: cli.protocol,
            compression: cli.compress,
            substitute: cli.substitute_on_destination,
            sign_key,
            dry_run: cli.dry_run,
            target_nix_args: Vec::new(),
            target_link: Default::default(),
            no_gc_roots: cli.no_gc_root,
            reports: nixpipe_cli::reports(),
        };
        let via = cli.via.as_deref().map(|spec| Via::parse(spec, cli.cache_url.as_deref()));
        let via = via.transpose().map_err(Error::Usage)?;
        options.check(cli.to.as_ref())?;
        let records = cli.records.read()?;
        let output = cli.output.for_records(&records);
        let routes = copy::routes(records, cli.from.as_ref(), cli.to.as_ref())?;
        if let Some(via) = &via {
            via.check(&options, &routes.iter().map(|(route, _)| &route.to).collect::<Vec<_>>())?;
        }
        Ok(Plan { routes, via, options, jobs: cli.jobs.jobs(), output })
    }

    /// Copies every route; writes each route's records once its copy is
    /// done (with --dry-run: none).
    fn run(self) -> Result<Outcome, Error> {
        let Plan { routes, via, options, jobs, output } = self;
        let mut results = Results::new(&output);
        let json = output.json;
        fleet::copy_routes(&routes, via.as_ref(), &options, jobs, |route, records, copied| {
            let written = report(&mut results, route, records, &copied, options.dry_run, json);
            results.keep(written);
        })?;
        results.finish()
    }
}

pub fn run(cli: Cli) -> Result<Outcome, Error> {
    Plan::new(cli)?.run()
}

/// Passes on a route's records once its copy is done, or reports why not.
fn report(
    results: &mut Results,
    route: &Route,
    records: &[Record],
    copied: &Result<Summary, CopyError>,
    dry_run: bool,
    json: bool,
) -> Result<(), Error> {
    match copied {
        Err(why) if dry_run => results.failed(&route.to.to_string(), why),
        _ if dry_run => {}
        Err(why) => records.iter().for_each(|record| results.failed(record.label(), why)),
        Ok(summary) => {
            for record in records {
                let mut record = record.clone();
                if json {
                    record.add_fields(&CopyJson { copy: summary });
                }
                results.write(&record)?;
            }
        }
    }
    Ok(())
}
