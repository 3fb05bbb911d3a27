//! deployment.keys: secrets a deploy puts on its hosts, in colmena's shape.
//!
//! A record carries only each key's name, settings and where its content
//! comes from (`keyFile`, a path on the deployer, or `keyCommand`, run there);
//! the content is read on the deployer when the key is uploaded and goes to
//! the host over ssh's stdin only: never argv, the environment, a log, a
//! record or the Nix store. On the host (host/scripts/keys.sh) each key is
//! written to a temporary file in its directory that already has the key's
//! owner and mode, then renamed into place: nobody reads a half-written key,
//! or one with the wrong mode.

use nixpipe_host::event::Event;
use nixpipe_host::session::{Args, Run, Script, Session, SessionError};
use nixpipe_store::record::Record;
use serde::{Deserialize, Serialize};
use std::process::{Command, Stdio};
use zeroize::Zeroizing;

/// When a key goes up: before the switch (the default; a failed upload
/// stops the host with nothing switched) or after it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UploadAt {
    #[default]
    PreActivation,
    PostActivation,
}

/// One key of a record, as nixpipe-eval writes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Key {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_command: Option<Vec<String>>,
    pub dest_dir: String,
    pub user: String,
    pub group: String,
    pub permissions: String,
    #[serde(default)]
    pub upload_at: UploadAt,
}

/// Why a key did not reach its host.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KeyError {
    #[error("key {key}: {why}")]
    Bad { key: String, why: String },
    #[error(
        "key {0}: a key's text lives in the repository and easily reaches the Nix store: give it as keyFile or keyCommand"
    )]
    Text(String),
    #[error("the keys of the record are not a list of keys: {0}")]
    NotKeys(String),
    #[error("key {key}: cannot read {path}: {why}")]
    Read { key: String, path: String, why: String },
    #[error("key {key}: keyCommand {command} failed: {why}")]
    Command { key: String, command: String, why: String },
    #[error("{target} did not write every key")]
    NotWritten { target: String },
    #[error(transparent)]
    Session(#[from] SessionError),
}

impl Key {
    /// Every field checked before any key is read or any host touched:
    /// they become a file name, a directory, an owner and a mode as root.
    pub fn check(&self) -> Result<(), KeyError> {
        let bad = |why: String| Err(KeyError::Bad { key: self.name.clone(), why });
        let name_ok = !self.name.starts_with('.')
            && !self.name.is_empty()
            && self.name.len() <= 255
            && self.name.chars().all(|c| c.is_ascii_alphanumeric() || "._+-@".contains(c));
        if !name_ok {
            return bad(
                "a key's name is a file name of at most 255 bytes: letters, digits and . _ + - @, not first a dot"
                    .into(),
            );
        }
        let dir_ok = self.dest_dir.starts_with('/')
            && self.dest_dir != "/"
            && self.dest_dir.len() < 4096
            && !self.dest_dir.split('/').any(|part| part == ".." || part == ".")
            && !self.dest_dir.chars().any(char::is_control);
        if !dir_ok {
            return bad(format!(
                "destDir {:?} is not a directory below / (absolute, without . or .. or control characters)",
                self.dest_dir
            ));
        }
        for (what, id) in [("user", &self.user), ("group", &self.group)] {
            let ok = id.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && id.len() <= 32
                && id.chars().all(|c| c.is_ascii_alphanumeric() || "_-".contains(c));
            if !ok {
                return bad(format!("{what} {id:?} is not a user or group name"));
            }
        }
        let mode =
            (3..=4).contains(&self.permissions.len()).then(|| u32::from_str_radix(&self.permissions, 8).ok()).flatten();
        match mode {
            None => return bad(format!("permissions {:?} are not an octal mode such as 0600", self.permissions)),
            Some(mode) if mode > 0o777 => {
                return bad(format!(
                    "permissions {:?} set setuid, setgid or sticky bits: a key is no program",
                    self.permissions
                ))
            }
            Some(mode) if mode & 0o400 == 0 => {
                return bad(format!("permissions {:?} do not let the key's own user read it", self.permissions))
            }
            Some(_) => {}
        }
        match (&self.key_file, &self.key_command) {
            (Some(_), None) => Ok(()),
            (None, Some(argv)) if argv.first().map_or(true, String::is_empty) => bad("its keyCommand is empty".into()),
            (None, Some(_)) => Ok(()),
            (None, None) => bad("it has no keyFile and no keyCommand".into()),
            (Some(_), Some(_)) => bad("it has both keyFile and keyCommand: give one".into()),
        }
    }

    /// The key's content, read now on the deployer: the file's, or what
    /// the command printed (run without a shell, stdin closed).
    fn content(&self) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let key = self.name.clone();
        if let Some(path) = &self.key_file {
            return std::fs::read(path).map(Zeroizing::new).map_err(|e| KeyError::Read {
                key,
                path: path.clone(),
                why: e.to_string(),
            });
        }
        let argv = self.key_command.as_deref().unwrap_or_default();
        let command = shlex::try_join(argv.iter().map(String::as_str)).unwrap_or_else(|_| argv.join(" "));
        let failed = |why: String| KeyError::Command { key: key.clone(), command: command.clone(), why };
        let (program, args) = argv.split_first().ok_or_else(|| failed("it is empty".into()))?;
        let output = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| failed(e.to_string()))?;
        let stdout = Zeroizing::new(output.stdout);
        match output.status.success() {
            true => Ok(stdout),
            false => Err(failed(format!("{}: {}", output.status, nixpipe_host::process::summarize(&output.stderr)))),
        }
    }
}

/// The keys a record carries (none without a `keys` field), checked. A
/// key with `text` is refused, even beside a keyFile: its secret is in the
/// configuration.
pub fn of_record(record: &Record) -> Result<Vec<Key>, KeyError> {
    let Some(keys) = record.extra.get("keys") else { return Ok(Vec::new()) };
    if let Some(list) = keys.as_array() {
        if let Some(key) = list.iter().find(|k| k.get("text").is_some()) {
            let name = key.get("name").and_then(|n| n.as_str()).unwrap_or("?");
            return Err(KeyError::Text(nixpipe_store::record::excerpt(name)));
        }
    }
    let keys: Vec<Key> = serde_json::from_value(keys.clone()).map_err(|e| KeyError::NotKeys(e.to_string()))?;
    keys.iter().try_for_each(Key::check)?;
    Ok(keys)
}

/// Writes `keys` on the session's host as root, in one round trip: their
/// settings as the script's arguments, their contents one after the other
/// on its stdin.
pub fn upload(session: &Session, keys: &[&Key]) -> Result<(), KeyError> {
    if keys.is_empty() {
        return Ok(());
    }
    let mut input = Zeroizing::new(Vec::new());
    let mut args = Vec::new();
    for key in keys {
        let content = key.content()?;
        args.extend([
            key.name.clone(),
            key.dest_dir.clone(),
            key.user.clone(),
            key.group.clone(),
            key.permissions.clone(),
            content.len().to_string(),
        ]);
        input.extend_from_slice(&content);
    }
    let events = session.events(&Run::script(Script::Keys, &Args::new().list(args)).as_root().input(&input))?;
    match events.iter().filter(|e| matches!(e, Event::KeyWritten)).count() == keys.len() {
        true => Ok(()),
        false => Err(KeyError::NotWritten { target: session.target.to_string() }),
    }
}
