//! What every nixpipe command does the same way: its name in messages,
//! one-line errors on stderr, exit statuses, shared flags.

use crate::error::{Error, Outcome};
use std::process::ExitCode;
use std::sync::OnceLock;

static PROGRAM: OnceLock<&'static str> = OnceLock::new();

/// The name messages start with: `nixpipe-copy: web1: ...`.
pub fn program() -> &'static str {
    PROGRAM.get().copied().unwrap_or("nixpipe")
}

/// Parses the command line, runs the command and turns its result into
/// the exit status of the pipe contract: 0 all done, 1 some record failed,
/// 2 bad usage or input.
pub fn main<C: clap::Parser>(program: &'static str, run: impl FnOnce(C) -> Result<Outcome, Error>) -> ExitCode {
    let _ = PROGRAM.set(program);
    let cli = match C::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(program, e),
    };
    match run(cli) {
        Ok(outcome) => outcome.exit_code(),
        Err(e) => {
            crate::progress::println(&format!("{program}: {e}"));
            e.exit_code()
        }
    }
}

/// clap's own errors in the one line of the pipe contract, naming the flag
/// (`nixpipe-copy: unexpected argument '--too' found (--help for more)`),
/// exit 2; --help and --version as clap shows them.
fn usage_error(program: &str, e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    eprintln!("{program}: {} (--help for more)", one_line(&e.render().to_string()));
    ExitCode::from(2)
}

/// clap's message without its usage and hints, its lines joined.
fn one_line(message: &str) -> String {
    message
        .lines()
        .take_while(|line| !line.starts_with("Usage:") && !line.starts_with("For more information"))
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("tip:"))
        .collect::<Vec<_>>()
        .join(" ")
        .trim_start_matches("error: ")
        .to_owned()
}

/// Reports one record's failure; the run goes on with the others.
pub fn record_failed(who: &str, why: &str) {
    crate::progress::println(&format!("{}: {who}: {why}", program()));
}

/// Progress and notes for the person at the terminal, on stderr.
pub fn note(what: &str) {
    crate::progress::println(&format!("{}: {what}", program()));
}

/// A line of what happens on a host, for the user on stderr, marked with
/// the record it is about (`web1 | ...`); never an error line. On a
/// terminal it is also the host's latest step on its progress line.
pub fn show(label: &str, line: &str) {
    crate::progress::println(&format!("{label} | {line}"));
    crate::progress::step(label, line);
}

/// The records a command works on, flattened into its clap struct.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RecordArgs {
    /// Store paths or records; read from stdin when none are given
    #[arg(value_name = "PATH")]
    pub paths: Vec<String>,
}

impl RecordArgs {
    /// The records, from the arguments or else stdin, checked whole.
    pub fn read(&self) -> Result<Vec<crate::Record>, Error> {
        crate::record::from_args_or_stdin(&self.paths)
    }
}

/// Flags every command shares, flattened into each command's clap struct.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct OutputArgs {
    /// Write JSON records (one object per line) instead of plain lines
    #[arg(long)]
    pub json: bool,
}

/// Pairs every record with its target before anything is done, so a record
/// without a usable target is bad input and nothing happens.
pub fn with_targets(
    records: Vec<crate::Record>,
    spec: Option<&crate::TargetSpec>,
    unnamed: Option<crate::Target>,
) -> Result<Vec<(crate::Record, crate::Target)>, Error> {
    records
        .into_iter()
        .map(|record| match crate::target::for_record(spec, &record, unnamed.clone()) {
            Ok(target) => Ok((record, target)),
            Err(e) => Err(Error::Usage(format!("{}: {e}", record.label()))),
        })
        .collect()
}

/// Passes on the records that succeeded and reports the ones that failed.
pub struct Results {
    writer: crate::RecordWriter,
    outcome: Outcome,
}

impl Results {
    pub fn new(output: &OutputArgs) -> Results {
        Results { writer: crate::RecordWriter::new(output.json), outcome: Outcome::default() }
    }

    pub fn record(&mut self, record: &crate::Record, result: Result<(), String>) -> Result<(), Error> {
        match result {
            Ok(()) => self.write(record),
            Err(why) => {
                self.failed(record.label(), &why);
                Ok(())
            }
        }
    }

    /// Writes a record to stdout, whatever became of it.
    pub fn write(&mut self, record: &crate::Record) -> Result<(), Error> {
        crate::progress::suspend(|| self.writer.write(record))
            .map_err(|e| Error::Failed(format!("cannot write to stdout: {e}")))
    }

    /// Reports a failure that is not one record's.
    pub fn failed(&mut self, who: &str, why: &str) {
        record_failed(who, why);
        self.outcome.failed += 1;
    }

    pub fn finish(self) -> Outcome {
        self.outcome
    }
}
