//! nixpipe-vm: start a network of VMs from their runners, list and stop them.

use clap::{Parser, Subcommand};
use nixpipe_cli::{OutputArgs, RecordArgs, Results};
use nixpipe_deploy::vm::{self, Runner, StartOptions, VmDir};
use nixpipe_deploy::{Error, Outcome};
use nixpipe_store::Record;
use std::time::Duration;

const EXAMPLES: &str = include_str!("../doc/examples.txt");

/// Start VMs from their runners (nixpipe-eval --vm-runner), together on one network, and stop them.
#[derive(Parser, Debug)]
#[command(name = "nixpipe-vm", version, after_help = EXAMPLES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Start every runner record's VM at once; write each one's record with its ssh target (JSON, targetHost)
    Start {
        /// The first VM's ssh port on 127.0.0.1, the next VMs' after it [default: free ports]
        #[arg(long, value_name = "PORT")]
        ssh_port: Option<u16>,

        /// Give up on a VM whose ssh has not answered after SECONDS (and stop every VM of this start)
        #[arg(long, value_name = "SECONDS", default_value_t = 180, value_parser = clap::builder::RangedU64ValueParser::<u64>::new().range(1..))]
        boot_timeout: u64,

        #[command(flatten)]
        records: RecordArgs,
    },
    /// Write the records of the VMs that run (JSON, targetHost)
    List,
    /// Give each record the ssh target of the running VM of its name (JSON, targetHost): what to deploy where
    Target {
        #[command(flatten)]
        records: RecordArgs,
    },
    /// Stop the VMs named, or every one
    Stop {
        /// The VMs' names [default: all]
        names: Vec<String>,
    },
    /// Print the path of the known_hosts file that holds the running VMs' host keys
    KnownHosts,
}

/// What the command does, checked before any VM starts or stops.
enum Plan {
    Start { runners: Vec<Runner>, options: StartOptions },
    List,
    Target { records: Vec<Record> },
    Stop { names: Vec<String> },
    KnownHosts,
}

impl Plan {
    fn new(cli: Cli) -> Result<Plan, Error> {
        Ok(match cli.command {
            Command::Start { ssh_port, boot_timeout, records } => Plan::Start {
                runners: records.read()?.iter().map(Runner::of).collect::<Result<_, _>>()?,
                options: StartOptions { first_port: ssh_port, boot_timeout: Duration::from_secs(boot_timeout) },
            },
            Command::List => Plan::List,
            Command::Target { records } => Plan::Target { records: records.read()? },
            Command::Stop { names } => Plan::Stop { names },
            Command::KnownHosts => Plan::KnownHosts,
        })
    }

    fn run(self) -> Result<Outcome, Error> {
        let dir = VmDir::open()?;
        let reports = nixpipe_cli::reports();
        // Always JSON: a VM's record is nothing without its targetHost.
        let json = OutputArgs { json: true, plain: false };
        let mut results = match self {
            Plan::Start { .. } => Results::new(&json),
            _ => Results::listing(&json),
        };
        match self {
            Plan::Start { runners, options } => {
                for record in vm::start_all(&dir, &runners, &options, reports)? {
                    results.write(&record)?;
                }
            }
            Plan::List => {
                for vm in dir.running() {
                    results.write(&vm.record)?;
                }
            }
            Plan::Target { records } => {
                let running = dir.running();
                for record in records {
                    results.write(&vm::targeted(record, &running)?)?;
                }
            }
            Plan::Stop { names } => vm::stop(&dir, &names, reports)?,
            Plan::KnownHosts => println!("{}", dir.known_hosts().display()),
        }
        results.finish()
    }
}

pub fn run(cli: Cli) -> Result<Outcome, Error> {
    Plan::new(cli)?.run()
}
