//! Generated files: man pages in man/ and shell completions in completions/,
//! both from the clap definitions of the commands.
//!
//! `cargo xtask gen` writes them; `cargo xtask gen --check` fails when the
//! checked-in files are not what the code generates (run in CI).

use clap::CommandFactory;
use clap_complete::Shell;
use roff::{bold, italic, roman, Roff};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn commands() -> Vec<clap::Command> {
    vec![
        nixpipe_eval::Cli::command(),
        nixpipe_copy::Cli::command(),
        nixpipe_activate::Cli::command(),
        nixpipe_bundle::Cli::command(),
        nixpipe_microvm::Cli::command(),
    ]
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let check = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["gen"] => false,
        ["gen", "--check"] => true,
        _ => {
            eprintln!("usage: cargo xtask gen [--check]");
            return ExitCode::from(2);
        }
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_owned();
    let stale: Vec<PathBuf> = generated_files()
        .into_iter()
        .filter_map(|(rel, content)| {
            let path = root.join(rel);
            if std::fs::read(&path).ok().as_deref() == Some(&content[..]) {
                return None;
            }
            if !check {
                std::fs::create_dir_all(path.parent().unwrap()).expect("create dir");
                std::fs::write(&path, &content).expect("write generated file");
            }
            Some(path)
        })
        .collect();
    for path in &stale {
        eprintln!("{} {}", if check { "stale:" } else { "wrote" }, path.display());
    }
    if check && !stale.is_empty() {
        eprintln!("generated files are out of date: run `cargo xtask gen` and commit");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn generated_files() -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    for cmd in commands() {
        let name = cmd.get_name().to_owned();
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd.clone()).render(&mut page).expect("render man page");
        files.push((PathBuf::from(format!("man/{name}.1")), page));
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd.clone(), &name, &mut script);
            let file = match shell {
                Shell::Bash => format!("completions/{name}.bash"),
                Shell::Zsh => format!("completions/_{name}"),
                _ => format!("completions/{name}.fish"),
            };
            files.push((PathBuf::from(file), script));
        }
    }
    files.push((PathBuf::from("man/nixpipe.7"), pipe_contract_page().into_bytes()));
    files
}

/// nixpipe(7): the pipe contract every command follows.
fn pipe_contract_page() -> String {
    let mut page = Roff::new();
    page.control("TH", ["NIXPIPE", "7"])
        .control("SH", ["NAME"])
        .text([roman("nixpipe \\- NixOS deployment as small commands joined by pipes of store paths")])
        .control("SH", ["SYNOPSIS"])
        .text([bold(
            "nixpipe-eval -f configuration.nix | nixpipe-copy --to root@web1 | nixpipe-activate --on root@web1 switch",
        )]);
    section(&mut page, "RECORDS", &[
        "A record is one line. Plain form: an absolute store path. Named form: NAME, a tab, then the path; NAME names the machine (a configuration name, which is also the default ssh target). A line starting with { is a JSON record, {\"name\":..,\"path\":..}; fields a command does not know are passed on unchanged. --json makes a command write JSON records.",
        "Store paths are checked strictly: /nix/store/, 32 nix-base32 characters, a dash, and a name of the characters Nix allows (letters, digits, + - . _ ? =), not starting with a dot. NAME is letters, digits and . _ + -, not starting with . + or -. Lines may end in LF or CRLF; empty lines are skipped; a line may hold at most 65536 bytes.",
    ]);
    section(&mut page, "INPUT AND OUTPUT", &[
        "A command reads records from its arguments, or from stdin when it has none, and reads all of them before it acts: one bad line means nothing is done, and the error names the line. No records at all is an error too, so that a failed step before it in the pipe does not look like success.",
        "stdout carries records only: those the command handled successfully, so the next command can go on (one exception: nixpipe-activate --json also writes the failed records, marked with their result). Logs, progress and errors go to stderr. Nothing reads a password or an answer from stdin, which is the pipe.",
    ]);
    section(&mut page, "TARGETS", &[
        "local, [user@]host[:port], ssh://[user@]host[:port], with [addr] for IPv6. A target may hold {name}, replaced by each record's NAME. Without a target a record goes to its NAME over ssh. ssh is the system OpenSSH client: ~/.ssh/config, the agent, ProxyJump and ControlMaster keep working, host keys are always checked, and NIX_SSHOPTS adds options as it does for nix-copy-closure.",
    ]);
    page.control("SH", ["EXIT STATUS"])
        .control("TP", [])
        .text([bold("0")])
        .text([roman("every record was done.")])
        .control("TP", [])
        .text([bold("1")])
        .text([roman("some record failed; the records that succeeded were still written to stdout.")])
        .control("TP", [])
        .text([bold("2")])
        .text([roman("bad usage or bad input; nothing was done.")]);
    section(&mut page, "ERRORS", &[
        "An error is one line on stderr that names the command and the record, host or input line: nixpipe-copy: web1: ...",
    ]);
    page.control("SH", ["SEE ALSO"]).text([
        italic("nixpipe-eval"),
        roman("(1), "),
        italic("nixpipe-copy"),
        roman("(1), "),
        italic("nixpipe-activate"),
        roman("(1), "),
        italic("nixpipe-bundle"),
        roman("(1), "),
        italic("nixpipe-microvm"),
        roman("(1)"),
    ]);
    page.render()
}

fn section(page: &mut Roff, title: &str, paragraphs: &[&str]) {
    page.control("SH", [title]);
    for (i, text) in paragraphs.iter().enumerate() {
        if i > 0 {
            page.control("PP", []);
        }
        page.text([roman(*text)]);
    }
}
