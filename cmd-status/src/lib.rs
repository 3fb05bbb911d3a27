//! nixpipe-status: which hosts run the systems their records name.

use clap::Parser;
use nixpipe_cli::{JobsArgs, OutputArgs, RecordArgs, Results};
use nixpipe_deploy::status::{self, FailedJson, HostStatus};
use nixpipe_deploy::{fleet, Error, Outcome};
use nixpipe_host::privilege::Privilege;
use nixpipe_host::session::Session;
use nixpipe_host::{Target, TargetSpec};
use nixpipe_store::Record;

const EXAMPLES: &str = include_str!("../doc/examples.txt");

/// Tell what each host runs, against the record meant for it.
///
/// Reads records (from nixpipe-eval), asks each record's host in one
/// read-only round trip what it runs, boots and holds in its system
/// profile, and writes the records on: all of them, or with --changed only
/// those whose host does not run them, for nixpipe-copy and
/// nixpipe-activate to deploy.
#[derive(Parser, Debug)]
#[command(name = "nixpipe-status", version, after_help = EXAMPLES)]
pub struct Cli {
    #[command(flatten)]
    pub records: RecordArgs,

    /// Which host to ask: [user@]host[:port], ssh://..., 'root@{name}', or local [default: the record's NAME, else local]
    #[arg(long, value_name = "TARGET")]
    pub on: Option<TargetSpec>,

    /// Write only the records whose host does not run them (and those whose host could not tell)
    #[arg(long)]
    pub changed: bool,

    #[command(flatten)]
    pub jobs: JobsArgs,

    #[command(flatten)]
    pub output: OutputArgs,
}

/// Which host each record is asked on, checked before any is asked.
struct Plan {
    records: Vec<(Record, Target)>,
    output: OutputArgs,
}

impl Plan {
    fn new(cli: &Cli) -> Result<Plan, Error> {
        let records = cli.records.read()?;
        let output = cli.output.for_records(&records);
        Ok(Plan { records: fleet::with_targets(records, cli.on.as_ref(), Some(Target::Local))?, output })
    }

    /// Asks every host, `jobs` at a time; writes the records on as
    /// `cli` says.
    fn run(self, cli: &Cli) -> Result<Outcome, Error> {
        // Nothing here needs root: sudo is never run.
        let privilege = Privilege::default();
        let reports = nixpipe_cli::reports();
        let mut results = Results::new(&self.output);
        let json = self.output.json;
        fleet::each(
            &self.records,
            cli.jobs.jobs(),
            |(record, target)| {
                let _line = reports.host_line(record.label(), &format!("asking {target}"));
                status::of(&Session::new(target.clone(), &privilege, reports), record)
            },
            |(record, target), status| {
                let written = write(&mut results, cli.changed, json, record, target, status);
                results.keep(written);
                true
            },
        );
        results.finish()
    }
}

pub fn run(cli: Cli) -> Result<Outcome, Error> {
    Plan::new(&cli)?.run(&cli)
}

/// Says what the host runs, and writes the record on when it should be.
fn write(
    results: &mut Results,
    changed: bool,
    json: bool,
    record: &Record,
    target: &Target,
    status: Result<HostStatus, nixpipe_host::session::SessionError>,
) -> Result<(), Error> {
    let target = target.to_string();
    let mut record = record.clone();
    match status {
        Ok(status) => {
            nixpipe_cli::reports().step(record.label(), &status.summary());
            if changed && status.runs() {
                return Ok(());
            }
            if json {
                record.add_fields(&status.json(&target));
            }
        }
        Err(why) => {
            results.failed(record.label(), &why);
            if !changed && !json {
                return Ok(());
            }
            if json {
                record.add_fields(&FailedJson { target: &target, error: why.to_string() });
            }
        }
    }
    results.write(&record)
}
