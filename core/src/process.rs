//! Running programs: capturing what they say and turning a failure into one
//! readable line.

use std::io;
use std::process::{ChildStdin, Command, ExitStatus, Output, Stdio};

/// A program that could not be started (or waited for).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot run {program}: {why}")]
pub struct CannotRun {
    pub program: String,
    pub why: String,
}

impl CannotRun {
    pub fn of(cmd: &Command, e: io::Error) -> CannotRun {
        CannotRun { program: program_name(cmd), why: e.to_string() }
    }
}

/// What the user sees of a failing program's stderr: Nix's `error:` line if
/// there is one, else the last line; control characters dropped, bounded.
pub fn summarize(stderr: &[u8]) -> String {
    const MAX: usize = 400;
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let line = lines.iter().find(|l| l.starts_with("error:")).or(lines.last()).copied().unwrap_or("");
    let clean: String = line.chars().filter(|c| !c.is_control()).take(MAX).collect();
    clean
}

/// "exit 3", or the signal that killed it.
pub fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        (None, None) => "unknown status".to_owned(),
    }
}

fn program_name(cmd: &Command) -> String {
    cmd.get_program().to_string_lossy().into_owned()
}

/// Runs `cmd` to the end with stdout and stderr captured.
pub fn capture(cmd: &mut Command) -> Result<Output, CannotRun> {
    cmd.output().map_err(|e| CannotRun::of(cmd, e))
}

/// Runs `cmd` to the end, stdout and stderr captured, with `feed` writing
/// its stdin as it goes (closed once `feed` returns). A program that exits
/// without reading is reported by its status, so writes may fail quietly.
/// `feed` must not wait on the program's output: it is read only after.
pub fn capture_feeding(cmd: &mut Command, feed: impl FnOnce(&mut ChildStdin)) -> Result<Output, CannotRun> {
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| CannotRun::of(cmd, e))?;
    if let Some(mut stdin) = child.stdin.take() {
        feed(&mut stdin);
    }
    child.wait_with_output().map_err(|e| CannotRun::of(cmd, e))
}

/// Runs `cmd` with stdout captured and stderr passed through to ours, for
/// programs whose log the user should watch as it comes (nix-build).
pub fn capture_stdout(cmd: &mut Command) -> Result<Output, CannotRun> {
    cmd.stderr(Stdio::inherit());
    capture(cmd)
}

/// The one line for a program that ran and failed.
pub fn failure(cmd: &Command, output: &Output) -> String {
    let summary = summarize(&output.stderr);
    let status = describe_status(output.status);
    if summary.is_empty() {
        format!("{} failed ({status})", program_name(cmd))
    } else {
        format!("{} failed ({status}): {summary}", program_name(cmd))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefers_nix_error_lines() {
        let stderr = b"building '/nix/store/x.drv'...\nerror: builder for '/nix/store/x.drv' failed with exit code 1\n       last 10 log lines:\n";
        assert_eq!(summarize(stderr), "error: builder for '/nix/store/x.drv' failed with exit code 1");
    }

    #[test]
    fn otherwise_takes_the_last_line_cleaned() {
        assert_eq!(
            summarize(b"a\nssh: connect to host 127.0.0.1 port 1: Connection refused\r\n\n"),
            "ssh: connect to host 127.0.0.1 port 1: Connection refused"
        );
        assert_eq!(summarize(b"\x1b[31mred\x07\n"), "[31mred");
        assert_eq!(summarize(b""), "");
    }

    #[test]
    fn reports_a_missing_program() {
        let mut cmd = Command::new("/nonexistent/program");
        assert!(capture(&mut cmd).unwrap_err().to_string().starts_with("cannot run /nonexistent/program:"));
    }
}
