//! Generated files: man pages in man/ and shell completions in completions/,
//! both from the clap definitions of the commands.
//!
//! `cargo xtask gen` writes them; `cargo xtask gen --check` fails when the
//! checked-in files are not what the code generates (run in CI).
//! `cargo xtask layers [--show]` checks the crates' module graphs (see
//! layers.rs).

mod layers;

use clap::CommandFactory;
use clap_complete::Shell;
use roff::{bold, roman, Roff};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn commands() -> Vec<clap::Command> {
    vec![
        nixpipe_eval::Cli::command(),
        nixpipe_copy::Cli::command(),
        nixpipe_activate::Cli::command(),
        nixpipe_bundle::Cli::command(),
        nixpipe_microvm::Cli::command(),
        nixpipe_status::Cli::command(),
        nixpipe_vm::Cli::command(),
    ]
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_owned();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["gen"] => generate(&root, false),
        ["gen", "--check"] => generate(&root, true),
        ["layers"] => check_layers(&root, false),
        ["layers", "--show"] => check_layers(&root, true),
        _ => {
            eprintln!("usage: cargo xtask gen [--check] | cargo xtask layers [--show]");
            ExitCode::from(2)
        }
    }
}

fn check_layers(root: &Path, show: bool) -> ExitCode {
    let problems = layers::check(root, show);
    for problem in &problems {
        eprintln!("{problem}");
    }
    match problems.is_empty() {
        true => ExitCode::SUCCESS,
        false => ExitCode::FAILURE,
    }
}

/// Writes the generated files, or with `check` only says which are stale.
fn generate(root: &Path, check: bool) -> ExitCode {
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

/// nixpipe(7): the pipe contract every command follows, from its text in
/// doc/nixpipe.7.txt: `= TITLE` starts a section, blank lines part
/// paragraphs, a line starting with `*` is bold (a term, whose next line
/// is its meaning in an exit-status list).
fn pipe_contract_page() -> String {
    let mut page = Roff::new();
    page.control("TH", ["NIXPIPE", "7"]);
    // Whether the section has text yet, and whether a blank line followed it.
    let (mut written, mut blank) = (false, false);
    let mut lines = include_str!("../doc/nixpipe.7.txt").lines().peekable();
    while let Some(line) = lines.next() {
        if let Some(title) = line.strip_prefix("= ") {
            page.control("SH", [title]);
            (written, blank) = (false, false);
            continue;
        }
        if line.is_empty() {
            blank = written;
            continue;
        }
        if blank {
            page.control("PP", []);
            blank = false;
        }
        written = true;
        match line.strip_prefix('*') {
            // A short term with its meaning on the next line: a list item.
            Some(term) if term.len() <= 2 => {
                page.control("TP", []).text([bold(term)]);
                page.text([roman(lines.next().unwrap_or_default())]);
            }
            Some(text) => {
                page.text([bold(text)]);
            }
            None => {
                page.text([roman(line)]);
            }
        }
    }
    page.render()
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_command_line_is_consistent() {
        for command in super::commands() {
            command.debug_assert();
        }
    }
}
