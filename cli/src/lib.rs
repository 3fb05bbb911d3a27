//! nixpipe-cli: what every nixpipe command does the same way at its edge:
//! its name in messages, one-line errors on stderr, exit statuses, the flag
//! groups commands share, writing records, and the one [`reporter`] that
//! renders what the core reports (on stderr, progress lines on a terminal
//! only). The core never prints; this crate is where printing happens.

pub mod progress;
pub mod reporter;

use nixpipe_deploy::fleet::{self, Rollout};
use nixpipe_deploy::{Changed, Error, Outcome};
use nixpipe_host::privilege::{Ask, Privilege};
use nixpipe_host::report::Reports;
use nixpipe_store::{Record, RecordWriter};
use std::process::ExitCode;
use std::sync::OnceLock;

static PROGRAM: OnceLock<&'static str> = OnceLock::new();

/// The name messages start with: `nixpipe-copy: web1: ...`.
pub fn program() -> &'static str {
    PROGRAM.get().copied().unwrap_or("nixpipe")
}

/// The reporter every command hands down: [`reporter::Terminal`].
pub fn reports() -> Reports {
    Reports::to(&reporter::Terminal)
}

/// Parses the command line, runs the command, and turns its result into the exit status of the pipe contract: 0 all
/// done, 1 some record failed, 2 bad usage or input.
pub fn main<C: clap::Parser>(program: &'static str, run: impl FnOnce(C) -> Result<Outcome, Error>) -> ExitCode {
    let _ = PROGRAM.set(program);
    let cli = match C::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(program, e),
    };
    // NIX_SSHOPTS is part of the command line: a malformed one is bad
    // usage, said before anything is done, whatever later step would
    // have found it.
    if let Err(e) = nixpipe_host::target::nix_sshopts() {
        progress::println(&format!("{program}: {e}"));
        return ExitCode::from(2);
    }
    match run(cli) {
        Ok(outcome) => outcome.exit_code(),
        Err(e) => {
            progress::println(&format!("{program}: {e}"));
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
    progress::println(&format!("{program}: {} (--help for more)", one_line(&e.render().to_string())));
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

/// The records a command works on.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RecordArgs {
    /// Store paths or records; read from stdin when none are given
    #[arg(value_name = "PATH")]
    pub paths: Vec<String>,
}

impl RecordArgs {
    /// The records, from the arguments or else stdin, checked whole.
    pub fn read(&self) -> Result<Vec<Record>, Error> {
        Ok(nixpipe_store::record::from_args_or_stdin(&self.paths)?)
    }
}

/// --json and --plain, as every command takes them.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct OutputArgs {
    /// Write JSON records (one object per line) [default: JSON when the records came as JSON, else plain lines]
    #[arg(long)]
    pub json: bool,

    /// Write plain records (NAME<TAB>PATH), also when they came as JSON
    #[arg(long, conflicts_with = "json")]
    pub plain: bool,
}

impl OutputArgs {
    /// The output for these records: as a Unix filter, the format they came
    /// in (JSON as soon as one came as JSON), unless --json or --plain says.
    pub fn for_records(&self, records: &[Record]) -> OutputArgs {
        let json = self.json || (!self.plain && records.iter().any(|record| record.json));
        OutputArgs { json, plain: !json }
    }
}

/// Nix's own flags, as every step that evaluates or builds takes them: the
/// same names and meanings as Nix's, passed to every Nix call of the step.
#[derive(clap::Args, Debug, Clone, Default)]
#[command(next_help_heading = "Nix's own flags (passed to every Nix call of the step, here or on the build host)")]
pub struct NixFlagsArgs {
    /// Show the trace of an evaluation error
    #[arg(long)]
    pub show_trace: bool,

    /// Set a Nix setting, as `nix --option NAME VALUE` (again for more)
    #[arg(long, num_args = 2, value_names = ["NAME", "VALUE"], action = clap::ArgAction::Append)]
    pub option: Vec<String>,

    /// Build at most N derivations at once (Nix's max-jobs; `auto` for one per core)
    #[arg(long, value_name = "N")]
    pub max_jobs: Option<String>,

    /// Let each build use N cores (Nix's cores; 0 for all)
    #[arg(long, value_name = "N")]
    pub cores: Option<String>,

    /// Keep building the other derivations when one fails: the machines that build get their records, the
    /// others are named
    #[arg(long, short = 'k')]
    pub keep_going: bool,

    /// Show the full log of every build (as `nix build -L`; nix-build, which builds here, shows them anyway)
    #[arg(long, short = 'L')]
    pub print_build_logs: bool,

    /// Build on these machines (Nix's builders setting, e.g. 'ssh://builder x86_64-linux')
    #[arg(long, value_name = "SPEC")]
    pub builders: Option<String>,

    /// Let a flake's evaluation read files and the environment outside it
    #[arg(long)]
    pub impure: bool,

    /// Use FLAKEREF for the flake's input INPUT (again for more)
    #[arg(long, num_args = 2, value_names = ["INPUT", "FLAKEREF"], action = clap::ArgAction::Append)]
    pub override_input: Vec<String>,

    /// Lock every input of the flake anew
    #[arg(long)]
    pub recreate_lock_file: bool,

    /// Do not write the flake's lock file
    #[arg(long)]
    pub no_write_lock_file: bool,

    /// Fetch flake inputs and tarballs anew, whatever is cached
    #[arg(long)]
    pub refresh: bool,

    /// Use only what is here: no downloads, no substituters
    #[arg(long)]
    pub offline: bool,
}

impl NixFlagsArgs {
    /// The step's Nix flags, set for all its Nix calls.
    pub fn apply(&self) {
        let mut common = switches(&[(self.show_trace, "--show-trace"), (self.keep_going, "--keep-going")]);
        common.extend(pairs("--option", &self.option));
        for (name, value) in [("--max-jobs", &self.max_jobs), ("--cores", &self.cores), ("--builders", &self.builders)]
        {
            if let Some(value) = value {
                common.extend([name.to_owned(), value.clone()]);
            }
        }
        let mut new_cli = switches(&[
            (self.impure, "--impure"),
            (self.recreate_lock_file, "--recreate-lock-file"),
            (self.no_write_lock_file, "--no-write-lock-file"),
            (self.refresh, "--refresh"),
            (self.offline, "--offline"),
            (self.print_build_logs, "--print-build-logs"),
        ]);
        new_cli.extend(pairs("--override-input", &self.override_input));
        nixpipe_deploy::nix::set_flags(nixpipe_deploy::nix::NixFlags { common, new_cli, keep_going: self.keep_going });
    }
}

/// The names of the flags that are on.
fn switches(flags: &[(bool, &str)]) -> Vec<String> {
    flags.iter().filter(|(on, _)| *on).map(|(_, name)| (*name).to_owned()).collect()
}

/// `NAME A B` for each pair of `values` (a flag that takes two, given again for more).
fn pairs(name: &str, values: &[String]) -> Vec<String> {
    values.chunks(2).flat_map(|pair| [name.to_owned(), pair[0].clone(), pair[1].clone()]).collect()
}

/// How the privileged steps become root, as every command that has them
/// takes it.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct PrivilegeArgs {
    /// Ask the sudo password once, on the terminal, and give it to the sudo of every host of the run that asks
    /// for one: a host whose login is compromised keeps it (--sudo-password-per-host does not share it)
    #[arg(long)]
    pub ask_sudo_password: bool,

    /// Ask a sudo password for each host that needs one, naming the host: no host gets another's
    #[arg(long, conflicts_with = "ask_sudo_password")]
    pub sudo_password_per_host: bool,

    /// Become root with CMD instead of sudo: 'doas -n', run0 (systemd 256 and later), 'systemd-run --uid=0
    /// --pipe --wait --quiet'; it must let the user in without a password
    #[arg(long, value_name = "CMD")]
    pub sudo_cmd: Option<String>,
}

impl PrivilegeArgs {
    /// The privilege of the run; asks the password now when told to.
    pub fn privilege(&self) -> Result<Privilege, Error> {
        let ask = match (self.ask_sudo_password, self.sudo_password_per_host) {
            (_, true) => Ask::PerHost,
            (true, false) => Ask::Once,
            (false, false) => Ask::Never,
        };
        Ok(Privilege::new(self.sudo_cmd.as_deref(), ask)?)
    }
}

/// How many hosts at once, as every command over many hosts takes it.
#[derive(clap::Args, Debug, Clone)]
pub struct JobsArgs {
    /// Work on up to N hosts at once
    #[arg(long, short = 'j', value_name = "N", default_value_t = fleet::DEFAULT_JOBS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    jobs: usize,

    /// Give up on a host (or store) that neither says nor takes a byte for SECONDS: a login that hangs, a
    /// daemon that never answers, a frozen link; the other hosts go on
    #[arg(long, value_name = "SECONDS", default_value_t = nixpipe_host::process::DEFAULT_SILENCE_LIMIT, value_parser = clap::builder::RangedU64ValueParser::<u64>::new().range(1..))]
    timeout: u64,
}

impl JobsArgs {
    /// Hosts at once, and the silence limit of the run (set now, for
    /// every host program the run starts). The fields are private: no
    /// command can take the one without the other.
    pub fn jobs(&self) -> usize {
        nixpipe_host::process::set_silence_limit(self.timeout);
        self.jobs
    }

    /// Every host as soon as a slot is free, whatever fails.
    pub fn rollout(&self) -> Rollout {
        Rollout { jobs: self.jobs(), ..Rollout::default() }
    }
}

/// Passes on the records that succeeded and reports the ones that failed;
/// at the end of a run over more than one, one summary.
pub struct Results {
    writer: RecordWriter,
    outcome: Outcome,
    /// The first record that could not be written from a callback of a
    /// run over many hosts, which cannot stop there: said at the end.
    unwritten: Option<Error>,
    /// Whom the run wrote a record for, and who failed: for the summary.
    written: Vec<String>,
    failures: Vec<Failure>,
    summarize: bool,
}

/// One failed record (or host), as the summary names it.
struct Failure {
    who: String,
    why: String,
    changed: Option<Changed>,
}

impl Results {
    pub fn new(output: &OutputArgs) -> Results {
        Results {
            writer: RecordWriter::new(output.json),
            outcome: Outcome::default(),
            unwritten: None,
            written: Vec::new(),
            failures: Vec::new(),
            summarize: true,
        }
    }

    /// Records written without a summary at the end: a listing, not a run
    /// over hosts that may fail.
    pub fn listing(output: &OutputArgs) -> Results {
        Results { summarize: false, ..Results::new(output) }
    }

    /// Keeps the first error of `written` for [`Results::finish`], where a
    /// run over many hosts cannot return it at once.
    pub fn keep(&mut self, written: Result<(), Error>) {
        if let Err(e) = written {
            self.unwritten.get_or_insert(e);
        }
    }

    /// Writes the record when `result` is Ok, reports the failure otherwise.
    pub fn record<E: std::fmt::Display>(&mut self, record: &Record, result: Result<(), E>) -> Result<(), Error> {
        match result {
            Ok(()) => self.write(record),
            Err(why) => {
                self.failed(record.label(), &why);
                Ok(())
            }
        }
    }

    /// Writes a record to stdout, whatever became of it.
    pub fn write(&mut self, record: &Record) -> Result<(), Error> {
        self.written.push(record.label().to_owned());
        progress::suspend(|| self.writer.write(record)).map_err(|e| Error::Output(e.to_string()))
    }

    /// Reports one failure, naming what failed; the run goes on.
    pub fn failed(&mut self, who: &str, why: &dyn std::fmt::Display) {
        self.failed_with(who, why, None);
    }

    /// Reports one failure and what it left changed (whether a host was
    /// rolled back), for the summary; the run goes on.
    pub fn failed_with(&mut self, who: &str, why: &dyn std::fmt::Display, changed: Option<Changed>) {
        progress::println(&format!("{}: {who}: {why}", program()));
        self.outcome.failed += 1;
        self.failures.push(Failure { who: who.to_owned(), why: why.to_string(), changed });
    }

    /// What the run came to, or the first record that could not be
    /// written; after a run over more than one record, the summary on
    /// stderr first.
    pub fn finish(self) -> Result<Outcome, Error> {
        // A line at a time: each line printed is kept to one line.
        for line in self.summary().iter().flat_map(|summary| summary.lines()) {
            progress::println(line);
        }
        self.unwritten.map_or(Ok(self.outcome), Err)
    }

    /// How many succeeded, then each failure with its reason and whether
    /// it was rolled back: what colmena and clan print at the end of a run.
    fn summary(&self) -> Option<String> {
        let failed = |who: &String| self.failures.iter().any(|f| &f.who == who);
        let mut succeeded: Vec<&String> = self.written.iter().filter(|who| !failed(who)).collect();
        succeeded.dedup();
        let total = succeeded.len() + self.failures.len();
        if total < 2 || !self.summarize {
            return None;
        }
        let mut summary = format!("{}: {} of {total} succeeded", program(), succeeded.len());
        if !self.failures.is_empty() {
            summary += &format!(", {} failed:", self.failures.len());
        }
        for failure in &self.failures {
            let changed = match failure.changed {
                Some(Changed::RolledBack) => " (rolled back)",
                Some(Changed::Nothing) => " (nothing changed)",
                Some(Changed::Something) => " (not rolled back)",
                None => "",
            };
            summary += &format!("\n  {}: {}{changed}", failure.who, failure.why);
        }
        Some(summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nixpipe_store::store_path::StorePath;

    fn record(name: &str) -> Record {
        let path = StorePath::parse("/nix/store/36m5mhfn262qgji13vrgp907an576qjz-top").unwrap();
        Record::new(Some(name.into()), path)
    }

    #[test]
    fn a_run_over_several_records_ends_with_who_succeeded_and_who_failed_and_how() {
        let mut results = Results::new(&OutputArgs { json: false, plain: true });
        results.written.push(record("web1").label().to_owned());
        results.failures.push(Failure {
            who: "web2".into(),
            why: "switch failed; rolled back".into(),
            changed: Some(Changed::RolledBack),
        });
        results.failures.push(Failure {
            who: "web3".into(),
            why: "cannot reach web3".into(),
            changed: Some(Changed::Nothing),
        });
        assert_eq!(
            results.summary().unwrap(),
            "nixpipe: 1 of 3 succeeded, 2 failed:\n  web2: switch failed; rolled back (rolled back)\n  web3: cannot reach web3 (nothing changed)"
        );
        let mut listing = Results::listing(&OutputArgs::default());
        listing.written.extend(["web1".into(), "web2".into()]);
        assert_eq!(listing.summary(), None, "a listing has none");
        let mut alone = Results::new(&OutputArgs::default());
        alone.written.push("web1".into());
        assert_eq!(alone.summary(), None, "one record needs no summary");
        alone.written.push("web2".into());
        assert_eq!(alone.summary().unwrap(), "nixpipe: 2 of 2 succeeded");
    }
}
