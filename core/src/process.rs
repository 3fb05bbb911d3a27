//! Running programs: capturing what they say and turning a failure into one
//! readable line.

use std::io::{self, BufRead, BufReader, Read};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};

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

/// How much of a host program's stderr is kept, at its start and at its
/// end: every error message there is, and no more memory than that however
/// much a host prints.
const KEPT_STDERR: usize = 32 << 10;
/// The longest stdout line kept; longer ones (no answer of ours is) are
/// read and dropped.
pub const LONGEST_KEPT_LINE: usize = 16 << 20;

/// Waits for `child`, keeping of its stdout only the lines `keep` takes
/// (each at most [`LONGEST_KEPT_LINE`]) and of its stderr the first and
/// last [`KEPT_STDERR`] bytes: what a host prints before or around its
/// answer costs no memory.
pub fn wait_keeping(mut child: Child, keep: fn(&[u8]) -> bool) -> io::Result<Output> {
    let stderr = child.stderr.take().map(|e| std::thread::spawn(move || head_and_tail(e, KEPT_STDERR)));
    let mut kept = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        let mut reader = BufReader::new(stdout);
        while let Some(line) = bounded_line(&mut reader, LONGEST_KEPT_LINE)? {
            if keep(&line) {
                kept.extend_from_slice(&line);
            }
        }
    }
    let status = child.wait()?;
    let stderr = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
    Ok(Output { status, stdout: kept, stderr })
}

/// The next line of `reader` with its newline; a line longer than `max` is
/// read to its end and given as empty. None at the end.
pub fn bounded_line(reader: &mut impl BufRead, max: usize) -> io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let n = reader.by_ref().take(max as u64 + 1).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') && line.len() > max {
        // Too long: the rest of it goes by unkept.
        loop {
            let buf = reader.fill_buf()?;
            if buf.is_empty() {
                break;
            }
            match buf.iter().position(|&b| b == b'\n') {
                Some(at) => {
                    reader.consume(at + 1);
                    break;
                }
                None => {
                    let len = buf.len();
                    reader.consume(len);
                }
            }
        }
        line.clear();
    }
    Ok(Some(line))
}

/// All of `input` read, its first and last `keep` bytes kept (joined by a
/// line that says how much went between).
fn head_and_tail(mut input: impl Read, keep: usize) -> Vec<u8> {
    let (mut head, mut tail): (Vec<u8>, std::collections::VecDeque<u8>) = (Vec::new(), Default::default());
    let mut skipped = 0u64;
    let mut buf = [0u8; 8192];
    while let Ok(n) = input.read(&mut buf) {
        if n == 0 {
            break;
        }
        let mut bytes = &buf[..n];
        let to_head = bytes.len().min(keep - head.len());
        head.extend_from_slice(&bytes[..to_head]);
        bytes = &bytes[to_head..];
        tail.extend(bytes);
        while tail.len() > keep {
            tail.pop_front();
            skipped += 1;
        }
    }
    if skipped > 0 {
        head.extend_from_slice(format!("\n[{skipped} bytes not kept]\n").as_bytes());
    }
    head.extend(tail);
    head
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
    fn a_flood_of_output_keeps_only_the_answer_and_the_ends_of_stderr() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "head -c 50000000 /dev/zero; echo; echo answer; head -c 20000000 /dev/zero | tr '\\0' x >&2; echo >&2; echo error: at the end >&2"]);
        let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let out = wait_keeping(child, |line| line.starts_with(b"answer")).unwrap();
        assert_eq!(out.stdout, b"answer\n");
        assert!(out.stderr.len() < 2 * KEPT_STDERR + 100, "{}", out.stderr.len());
        assert_eq!(summarize(&out.stderr), "error: at the end");
    }

    #[test]
    fn a_line_longer_than_the_bound_is_dropped_and_the_next_one_read() {
        let input = format!("{}\nnext\n", "y".repeat(100));
        let mut reader = BufReader::with_capacity(16, input.as_bytes());
        assert_eq!(bounded_line(&mut reader, 10).unwrap(), Some(Vec::new()));
        assert_eq!(bounded_line(&mut reader, 10).unwrap(), Some(b"next\n".to_vec()));
        assert_eq!(bounded_line(&mut reader, 10).unwrap(), None);
    }

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
