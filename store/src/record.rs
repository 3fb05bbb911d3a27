//! Pipe records: what flows between nixpipe commands, one per line.
//!
//! - plain: `/nix/store/...`
//! - named: `NAME<TAB>/nix/store/...`
//! - JSON: `{"name": ..., "path": ..., ...}`; fields this command does not
//!   know are carried through to the next one.
//!
//! Input is read and checked whole before a command acts, so a bad line 7
//! means nothing was done for lines 1 to 6 either.

use crate::store_path::StorePath;
use serde_json::{Map, Value};
use std::io::{self, BufRead, IsTerminal, Read, Write};

/// Records are short; a longer line is junk and is refused before it is
/// held in memory whole.
pub(crate) const MAX_LINE: usize = 64 * 1024;
const NAME_MAX: usize = 253;

#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// The machine this record is for: a configuration name, also the
    /// default ssh target.
    pub name: Option<String>,
    pub path: StorePath,
    /// JSON fields other than name and path, passed on unchanged.
    pub extra: Map<String, Value>,
    /// Whether it came as a JSON line: a filter writes it on as one (a
    /// pipe keeps the format it is given).
    pub json: bool,
}

/// Where a bad record came from, for the one-line error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Line(usize),
    Argument(usize),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Line(n) => write!(f, "line {n}"),
            Origin::Argument(n) => write!(f, "argument {n}"),
        }
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {problem}")]
pub struct RecordError {
    pub origin: Origin,
    pub problem: String,
}

impl Record {
    pub fn new(name: Option<String>, path: StorePath) -> Record {
        Record { name, path, extra: Map::new(), json: false }
    }

    /// The record's name, or its path where it has none: what errors name.
    pub fn label(&self) -> &str {
        self.name.as_deref().unwrap_or(self.path.as_str())
    }

    /// Parses one line (without its line ending).
    pub fn parse(line: &str) -> Result<Record, String> {
        if line.starts_with('{') {
            return parse_json(line);
        }
        let (name, path) = match line.split_once('\t') {
            Some((name, path)) => (Some(parse_name(name)?), path),
            None => (None, line),
        };
        let path = StorePath::parse(path).map_err(|e| format!("{e}: {}", excerpt(path)))?;
        Ok(Record::new(name, path))
    }

    /// The line this record is written as (without the newline).
    pub fn to_line(&self, json: bool) -> String {
        if json {
            return serde_json::to_string(&self.to_json()).expect("records serialize");
        }
        match &self.name {
            Some(name) => format!("{name}\t{}", self.path),
            None => self.path.to_string(),
        }
    }

    /// Adds the fields of a command's typed JSON (a struct serialised with
    /// the camelCase rule of Nix's own JSON) to the record.
    pub fn add_fields(&mut self, fields: &impl serde::Serialize) {
        if let Ok(Value::Object(fields)) = serde_json::to_value(fields) {
            self.extra.extend(fields);
        }
    }

    pub(crate) fn to_json(&self) -> Value {
        let mut obj = Map::new();
        if let Some(name) = &self.name {
            obj.insert("name".into(), name.clone().into());
        }
        obj.insert("path".into(), self.path.to_string().into());
        obj.extend(self.extra.clone());
        Value::Object(obj)
    }
}

fn parse_json(line: &str) -> Result<Record, String> {
    let mut obj: Map<String, Value> = serde_json::from_str(line).map_err(|e| format!("not a JSON record: {e}"))?;
    let name = match obj.remove("name") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(parse_name(&s)?),
        Some(_) => return Err("JSON record: \"name\" is not a string".into()),
    };
    let path = match obj.remove("path") {
        Some(Value::String(s)) => {
            StorePath::parse(&s).map_err(|e| format!("JSON record: \"path\": {e}: {}", excerpt(&s)))?
        }
        Some(_) => return Err("JSON record: \"path\" is not a string".into()),
        None => return Err("JSON record has no \"path\"".into()),
    };
    Ok(Record { name, path, extra: obj, json: true })
}

/// Names end up in ssh targets (`root@{name}`) and file names, so they are
/// kept to what a host or configuration name needs. `local` is the target
/// word for this machine: as a NAME it would make a record activate the
/// deployer itself (say `--on local` for that).
pub(crate) fn parse_name(name: &str) -> Result<String, String> {
    let ok_first = name.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_');
    let ok_rest = name.chars().all(|c| c.is_ascii_alphanumeric() || "._+-".contains(c));
    if name.is_empty() {
        Err("empty name before the tab".into())
    } else if name.len() > NAME_MAX {
        Err(format!("name is longer than {NAME_MAX} characters"))
    } else if !ok_first || !ok_rest {
        Err(format!("bad name {}: names are letters, digits and . _ + - (not first: . + -)", excerpt(name)))
    } else if name == "local" {
        Err("`local` is a target, not a machine name: use --on local (or --to local) for this machine".into())
    } else {
        Ok(name.to_owned())
    }
}

/// A bounded, escaped quote of user input for error messages.
pub fn excerpt(s: &str) -> String {
    const MAX: usize = 80;
    if s.chars().count() <= MAX {
        format!("{s:?}")
    } else {
        let head: String = s.chars().take(MAX).collect();
        format!("{head:?}...")
    }
}

/// Reads every record from `input`, or fails at the first bad line.
pub(crate) fn read_all(mut input: impl BufRead) -> Result<Vec<Record>, RecordError> {
    let mut records = Vec::new();
    let mut buf = Vec::new();
    for number in 1.. {
        let origin = Origin::Line(number);
        let fail = |problem: String| RecordError { origin, problem };
        buf.clear();
        let n = Read::take(&mut input, MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|e| fail(format!("cannot read: {e}")))?;
        if n == 0 {
            break;
        }
        if n > MAX_LINE && buf.last() != Some(&b'\n') {
            return Err(fail(format!("longer than {MAX_LINE} bytes")));
        }
        let line = strip_line_ending(&buf);
        if line.contains(&0) {
            return Err(fail("contains a NUL byte".into()));
        }
        let line = std::str::from_utf8(line).map_err(|_| fail("not UTF-8 text".into()))?;
        if line.is_empty() {
            continue;
        }
        records.push(Record::parse(line).map_err(fail)?);
    }
    Ok(records)
}

/// `\n` or `\r\n`: files written on Windows or served over HTTP still work.
fn strip_line_ending(buf: &[u8]) -> &[u8] {
    let line = buf.strip_suffix(b"\n").unwrap_or(buf);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Records from the command line when there are any, else from stdin. No
/// records at all is an error: a failed step before us in the pipe must not
/// look like success.
pub fn from_args_or_stdin(args: &[String]) -> Result<Vec<Record>, InputError> {
    let records = if args.is_empty() {
        let stdin = io::stdin();
        if stdin.is_terminal() {
            return Err(InputError::NoRecords("no store paths given and stdin is a terminal"));
        }
        read_all(stdin.lock())?
    } else {
        from_args(args)?
    };
    if records.is_empty() {
        return Err(InputError::NoRecords("no records on stdin"));
    }
    Ok(records)
}

/// The longest VM name whose files all fit in a file name (255 bytes): the
/// longest is the GC root's temporary link `booted-NAME.nixpipe-new`.
pub const VM_NAME_MAX: usize = 255 - "booted-".len() - ".nixpipe-new".len();

/// A VM's name, checked as record names are, and short enough for every
/// file it names: checked by every verb before anything changes.
pub fn parse_vm_name(name: &str) -> Result<String, String> {
    let name = parse_name(name)?;
    match name.len() > VM_NAME_MAX {
        true => {
            Err(format!("VM name is longer than {VM_NAME_MAX} characters: its GC roots would not fit in a file name"))
        }
        false => Ok(name),
    }
}

/// Why a command got no records to work on: bad input, exit 2.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("{0} (pipe records in, or give store paths as arguments)")]
    NoRecords(&'static str),
    #[error(transparent)]
    Record(#[from] RecordError),
}

fn from_args(args: &[String]) -> Result<Vec<Record>, RecordError> {
    args.iter()
        .enumerate()
        .map(|(i, arg)| Record::parse(arg).map_err(|problem| RecordError { origin: Origin::Argument(i + 1), problem }))
        .collect()
}

/// Writes lines to stdout, each flushed at once so that the next command
/// in the pipe can start on it. When the reader goes away (`| head -1`),
/// the rest is dropped quietly, as coreutils do: nothing more to tell it,
/// and no reason to stop the work.
#[derive(Default)]
pub struct StdoutLines {
    closed: bool,
}

impl StdoutLines {
    pub fn line(&mut self, text: &str) -> io::Result<()> {
        if self.closed {
            return Ok(());
        }
        let mut out = io::stdout().lock();
        match writeln!(out, "{text}").and_then(|()| out.flush()) {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(())
            }
            other => other,
        }
    }
}

/// Writes records to stdout, one line each (see [`StdoutLines`]).
pub struct RecordWriter {
    json: bool,
    out: StdoutLines,
}

impl RecordWriter {
    pub fn new(json: bool) -> RecordWriter {
        RecordWriter { json, out: StdoutLines::default() }
    }

    pub fn write(&mut self, record: &Record) -> io::Result<()> {
        self.out.line(&record.to_line(self.json))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P1: &str = "/nix/store/36m5mhfn262qgji13vrgp907an576qjz-top";
    const P2: &str = "/nix/store/25z9mdpf4f4wj9z4bkzkbbgqcpvi5zmz-dep";

    fn read(input: &[u8]) -> Result<Vec<Record>, RecordError> {
        read_all(input)
    }

    fn problem_at(input: &[u8]) -> (Origin, String) {
        let e = read(input).unwrap_err();
        (e.origin, e.problem)
    }

    #[test]
    fn reads_plain_named_and_json_records() {
        let input = format!("{P1}\nweb1\t{P2}\n{{\"name\":\"db1\",\"path\":\"{P1}\",\"targetHost\":\"10.0.0.1\"}}\n");
        let recs = read(input.as_bytes()).unwrap();
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[0], Record::new(None, StorePath::parse(P1).unwrap()));
        assert_eq!(recs[1].name.as_deref(), Some("web1"));
        assert_eq!(recs[2].name.as_deref(), Some("db1"));
        assert_eq!(recs[2].extra["targetHost"], "10.0.0.1");
    }

    #[test]
    fn json_records_keep_unknown_fields_on_the_way_out() {
        let line = format!("{{\"name\":\"db1\",\"path\":\"{P1}\",\"system\":\"x86_64-linux\"}}");
        let rec = Record::parse(&line).unwrap();
        let back: Value = serde_json::from_str(&rec.to_line(true)).unwrap();
        assert_eq!(back, serde_json::from_str::<Value>(&line).unwrap());
        assert_eq!(rec.to_line(false), format!("db1\t{P1}"));
    }

    #[test]
    fn accepts_crlf_and_a_missing_final_newline_and_skips_blank_lines() {
        let input = format!("{P1}\r\n\nweb1\t{P2}");
        let recs = read(input.as_bytes()).unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[1].path.as_str(), P2);
    }

    #[test]
    fn a_bad_line_names_its_number_even_after_good_lines() {
        let input = format!("{P1}\n{P2}\n/tmp/evil\n{P1}\n");
        let (origin, problem) = problem_at(input.as_bytes());
        assert_eq!(origin, Origin::Line(3));
        assert!(problem.contains("does not start with /nix/store/"), "{problem}");
    }

    #[test]
    fn refuses_nul_bytes() {
        let input = format!("{P1}\n{P2}\0junk\n");
        assert_eq!(problem_at(input.as_bytes()), (Origin::Line(2), "contains a NUL byte".into()));
    }

    #[test]
    fn refuses_non_utf8() {
        let mut input = b"web1\t".to_vec();
        input.extend_from_slice(&[0xff, 0xfe]);
        assert_eq!(problem_at(&input), (Origin::Line(1), "not UTF-8 text".into()));
    }

    #[test]
    fn refuses_a_megabyte_line_without_holding_it() {
        let mut input = format!("{P1}\n").into_bytes();
        input.extend(std::iter::repeat(b'a').take(1 << 20));
        input.extend_from_slice(b"\n");
        let (origin, problem) = problem_at(&input);
        assert_eq!(origin, Origin::Line(2));
        assert!(problem.starts_with("longer than"), "{problem}");
        let exact = format!("{}\n", "a".repeat(MAX_LINE + 1));
        assert!(problem_at(exact.as_bytes()).1.starts_with("longer than"));
    }

    #[test]
    fn refuses_shell_metacharacters_in_names() {
        for name in [
            "web1;rm -rf /",
            "$(reboot)",
            "`id`",
            "a b",
            "-oProxyCommand=x",
            "web1|x",
            "a&b",
            "../etc",
            "a'b",
            "root@web1",
        ] {
            let line = format!("{name}\t{P1}");
            assert!(Record::parse(&line).unwrap_err().contains("bad name"), "{name}");
        }
    }

    #[test]
    fn refuses_trailing_junk_and_extra_fields() {
        for line in
            [format!("{P1} "), format!("{P1}\tx"), format!(" {P1}"), format!("web1\t{P1}\textra"), format!("{P1};id")]
        {
            assert!(Record::parse(&line).is_err(), "{line:?}");
        }
        assert!(Record::parse(&format!("\t{P1}")).unwrap_err().contains("empty name"));
    }

    #[test]
    fn refuses_malformed_json_records() {
        let cases = [
            ("{", "not a JSON record"),
            ("{\"name\":\"web1\"}", "has no \"path\""),
            ("{\"path\":42}", "\"path\" is not a string"),
            ("{\"path\":\"/etc/passwd\"}", "does not start with"),
            (&*format!("{{\"name\":7,\"path\":\"{P1}\"}}"), "\"name\" is not a string"),
            (&*format!("{{\"path\":\"{P1}\"}} trailing"), "not a JSON record"),
        ];
        for (line, want) in cases {
            let got = Record::parse(line).unwrap_err();
            assert!(got.contains(want), "{line}: {got}");
        }
    }

    #[test]
    fn arguments_are_numbered_in_errors() {
        let args = vec![P1.to_string(), "nonsense".to_string()];
        let e = from_args(&args).unwrap_err();
        assert_eq!(e.origin, Origin::Argument(2));
        assert_eq!(e.to_string().lines().count(), 1);
    }

    #[test]
    fn error_messages_quote_hostile_input_on_one_bounded_line() {
        let line = format!("{}\u{1b}[31m\n\u{7}", "x".repeat(500));
        let e = Record::parse(&line).unwrap_err();
        assert!(!e.contains('\n') && !e.contains('\u{1b}'), "{e:?}");
        assert!(e.len() < 300, "{}", e.len());
    }
}
