//! Copying closures between stores, with our own client of the serve
//! protocol or the daemon protocol on both ends (see [`store_connection`]).
//!
//! A copy is: the closure and its path infos from the source (two round
//! trips over serve, one per level of references over the daemon
//! protocol), the valid subset from the target (one), then every missing
//! path written to the target back to back, in dependency order (serve:
//! one AddToStoreNar each; daemon: one AddMultipleToStore for all), while a
//! second thread reads the target's answers as they come. Latency is paid a
//! few times per copy, not once per path as nix-copy-closure pays it.
//!
//! Safety comes from the order and from the target: a path is sent only
//! after everything it refers to, and Nix registers a path only once its
//! whole NAR arrived and matched narHash and narSize. So at any point the
//! target holds complete, valid, closed paths, and a rerun sends only the
//! rest. The target's check is the one that counts: we hash a NAR only for
//! a binary cache, where nobody else would (see [`nar::Check`]), and a
//! store's refusal of a NAR that does not match is turned into our error
//! naming the path.
//!
//! [`store_connection`]: nixpipe_host::store_connection

use nixpipe_host::report::{CopyProgress, Report, Reports};
use nixpipe_host::session::Session;
use nixpipe_host::store_connection::{
    self, Connection, GcRoot, Mode, Protocol, Replies, Requests, Server, Speaks, Start, StoreError,
};
use nixpipe_host::target::{self, Link, SshError, Target, TargetSpec};
use nixpipe_store::binary_cache::BinaryCache;
use nixpipe_store::daemon;
use nixpipe_store::nar::{self, Check, NarHash, RelayError};
use nixpipe_store::path_info::PathInfo;
use nixpipe_store::record::Record;
use nixpipe_store::serve;
use nixpipe_store::signing::SecretKey;
use nixpipe_store::store_path::StorePath;
use nixpipe_store::wire;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{self, Write};
use std::path::Path;
use std::time::Instant;

/// Why a copy failed, or was refused before it began.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the source store has no path info for {0}")]
    NoPathInfo(StorePath),
    #[error("the store on {store} left {path} out of its closure: it does not have it; nothing was copied")]
    LeftOut { path: StorePath, store: String },
    #[error(
        "{path}: the NAR from {from} has hash {got}, not {expected} as its store records; stopped before the target registered it"
    )]
    Corrupt { path: StorePath, from: String, got: NarHash, expected: NarHash },
    #[error(
        "{path}: the NAR from {from} does not have the hash {expected} its store records; {to} refused it and registered nothing of it"
    )]
    CorruptRefused { path: StorePath, from: String, to: String, expected: NarHash },
    #[error("{path}: the NAR from {from} is {seen} bytes, not {size} as its store records; stopped before the target registered it")]
    Short { path: StorePath, from: String, seen: u64, size: u64 },
    #[error(
        "{target} does not trust unsigned paths from {user}: copy as root, add {user} to trusted-users in its nix.conf, \
         or sign with --sign-key FILE and add the public key to its trusted-public-keys"
    )]
    Untrusted { target: String, user: String },
    #[error("cannot read {path}: {why}")]
    ReadLocal { path: StorePath, why: String },
    #[error(transparent)]
    CacheCreate(#[from] nixpipe_store::binary_cache::CreateError),
    #[error("cannot write to {dir}: {why}")]
    CacheWrite { dir: String, why: String },
    #[error(transparent)]
    CannotRun(#[from] nixpipe_host::process::CannotRun),
    #[error(transparent)]
    Nix(#[from] crate::nix::NixError),
    #[error(transparent)]
    HostKey(#[from] nixpipe_host::host_key::HostKeyError),
    #[error("upload to {via} failed, nothing went further: {error}")]
    Upload { via: String, error: Box<CopyError> },
    #[error("{relay} cannot reach {target}: {why} (the relay logs in with your ssh agent, forwarded to it: is the key in it? ssh-add -l)")]
    RelayCannotReach { relay: String, target: String, why: String },
    #[error("cannot make a directory for the ssh control socket: {0}")]
    ControlDir(String),
    /// Bad usage, refused before anything is read.
    #[error("--substitute-on-destination is for stores; file://{0} is a binary cache")]
    SubstituteIntoCache(String),
    #[error("--via file:///DIR needs --sign-key: targets substitute signed paths only")]
    ViaNeedsSignKey,
    #[error("--via is for copies to stores, not to {0}")]
    ViaToCache(String),
    #[error("--via HOST: the relay cannot reach `local`; copy to this machine without --via")]
    ViaToLocal,
}

impl CopyError {
    /// Refused before anything was read or sent: bad usage.
    pub fn is_usage(&self) -> bool {
        match self {
            CopyError::Ssh(e) => e.is_usage(),
            CopyError::Store(e) => e.is_usage(),
            CopyError::Upload { error, .. } => error.is_usage(),
            CopyError::SubstituteIntoCache(_)
            | CopyError::ViaNeedsSignKey
            | CopyError::ViaToCache(_)
            | CopyError::ViaToLocal => true,
            _ => false,
        }
    }
}

/// Where a copy goes, as the user wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DestinationSpec {
    Store(TargetSpec),
    Cache(BinaryCache),
}

impl std::str::FromStr for DestinationSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<DestinationSpec, String> {
        if let Some(cache) = BinaryCache::from_url(s) {
            return cache.map(DestinationSpec::Cache);
        }
        if let Some((scheme, _)) = s.split_once("://").filter(|(scheme, _)| *scheme != "ssh") {
            return Err(format!(
                "{scheme}:// stores are not supported: copy to file:///DIR, an ssh host or local, or use `nix copy --to {s}`"
            ));
        }
        s.parse().map(DestinationSpec::Store).map_err(|e: target::TargetError| e.to_string())
    }
}

/// Where a copy goes, for one record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    Store(Target),
    Cache(BinaryCache),
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Store(target) => target.fmt(f),
            Destination::Cache(cache) => write!(f, "file://{}", cache.dir().display()),
        }
    }
}

/// How NARs travel to an ssh target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Compression {
    /// As they are; ssh encrypts, nothing else.
    #[default]
    None,
    /// zstd-compressed by nixpipe, decompressed by the target's zstd (or
    /// ssh's own compression where the target has no zstd).
    Zstd,
}

#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Which protocol to speak with the stores at both ends.
    pub protocol: Protocol,
    /// How NARs travel to an ssh target.
    pub compression: Compression,
    /// Let the target try its own substituters first.
    pub substitute: bool,
    /// Sign every path sent with this key.
    pub sign_key: Option<SecretKey>,
    /// Say what would be sent, send nothing.
    pub dry_run: bool,
    /// Settings for the destination's nix-store (`--option NAME VALUE`...),
    /// such as the extra substituter of `--via CACHE`.
    pub target_nix_args: Vec<String>,
    /// How the sessions to the destination reach it, such as over the
    /// control socket of a connection already open to it.
    pub target_link: Link,
    /// --no-gc-root: keep no GC root for the records copied.
    pub no_gc_roots: bool,
    /// Where what the copy does is reported.
    pub reports: Reports,
}

impl Options {
    /// Refuses options that cannot work with `to`, before anything is read.
    pub fn check(&self, to: Option<&DestinationSpec>) -> Result<(), CopyError> {
        match to {
            Some(DestinationSpec::Cache(cache)) if self.substitute => {
                Err(CopyError::SubstituteIntoCache(cache.dir().display().to_string()))
            }
            _ => Ok(()),
        }
    }
}

/// One copy: from which store to which destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub from: Target,
    pub to: Destination,
}

/// Groups records by route before anything is copied, so that a record
/// without a usable target is bad input and nothing moves. One copy per
/// route: the paths records share go once.
pub fn routes(
    records: Vec<Record>,
    from: Option<&TargetSpec>,
    to: Option<&DestinationSpec>,
) -> Result<Vec<(Route, Vec<Record>)>, crate::Error> {
    let mut groups: Vec<(Route, Vec<Record>)> = Vec::new();
    for record in records {
        let route =
            route_for(&record, from, to).map_err(|e| crate::Error::Usage(format!("{}: {e}", record.label())))?;
        match groups.iter_mut().find(|(r, _)| *r == route) {
            Some((_, records)) => records.push(record),
            None => groups.push((route, vec![record])),
        }
    }
    Ok(groups)
}

/// The source defaults to the local store; the destination to the machine
/// the record names.
fn route_for(
    record: &Record,
    from: Option<&TargetSpec>,
    to: Option<&DestinationSpec>,
) -> Result<Route, target::TargetError> {
    let from = match from {
        Some(spec) => spec.resolve(record.name.as_deref())?,
        None => Target::Local,
    };
    let to = match to {
        Some(DestinationSpec::Cache(cache)) => Destination::Cache(cache.clone()),
        Some(DestinationSpec::Store(spec)) => Destination::Store(target::for_record(Some(spec), record, None)?),
        None => Destination::Store(target::for_record(None, record, None)?),
    };
    Ok(Route { from, to })
}

/// What one copy did, for `--json`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub from: String,
    pub to: String,
    pub closure_paths: usize,
    pub copied_paths: usize,
    pub copied_bytes: u64,
    pub seconds: f64,
}

/// Makes the closures of `paths` valid at the route's destination.
pub(crate) fn copy_closures(route: &Route, paths: &[&StorePath], options: &Options) -> Result<Summary, CopyError> {
    copy_rooted(route, paths, &[], options)
}

/// Makes the closures of the records' paths valid at the route's
/// destination, each record's path kept there as a GC root named after
/// the record (unless `options.no_gc_roots`), until nixpipe-activate puts
/// it in the system profile.
pub(crate) fn copy_records(route: &Route, records: &[Record], options: &Options) -> Result<Summary, CopyError> {
    let paths: Vec<&StorePath> = records.iter().map(|r| &r.path).collect();
    copy_rooted(route, &paths, &gc_roots(records, options), options)
}

/// The GC roots a copy of `records` leaves on its target.
pub fn gc_roots(records: &[Record], options: &Options) -> Vec<GcRoot> {
    match options.no_gc_roots {
        true => Vec::new(),
        false => records.iter().map(|r| GcRoot { name: gc_root_name(r), path: r.path.clone() }).collect(),
    }
}

/// The name of a record's GC root on its target: its NAME, else its path's
/// hash part (both safe as file names).
pub(crate) fn gc_root_name(record: &Record) -> String {
    record.name.clone().unwrap_or_else(|| record.path.hash_part().to_owned())
}

fn copy_rooted(route: &Route, paths: &[&StorePath], roots: &[GcRoot], options: &Options) -> Result<Summary, CopyError> {
    let Route { from, to } = route;
    let started = Instant::now();
    // Once each: records often share a path, and the serve protocol's
    // replies would not line up with repeated asks.
    let wanted: Vec<StorePath> = paths.iter().map(|&p| p.clone()).collect::<BTreeSet<_>>().into_iter().collect();
    // Both servers start before either is waited for: two ssh handshakes
    // at once.
    let reading = Start {
        mode: Mode::Read,
        protocol: options.protocol,
        link: &Link::default(),
        nix_args: &[],
        roots: &[],
        closure_of: &wanted,
    };
    let mut source = Connection::start(&Session::as_login_user(from.clone(), options.reports), reading)?;
    let mut sink = Sink::start(to, options, roots)?;
    source.greet()?;
    let infos = source.closure_infos(&wanted)?;
    let closure: Vec<StorePath> = infos.iter().map(|info| info.path.clone()).collect();
    // A source that answers with a closure without the path asked for
    // must not pass for one that copied it.
    if let Some(path) = wanted.iter().find(|p| !closure.contains(p)) {
        return Err(CopyError::LeftOut { path: path.clone(), store: from.to_string() });
    }
    let ordered = dependency_order(&closure, infos)?;
    let present = sink.present(&closure, options.substitute)?;
    let missing = ordered
        .into_iter()
        .filter(|info| !present.contains(&info.path))
        .map(|info| Transfer::new(info, options.sign_key.as_ref()))
        .collect::<Vec<_>>();
    if options.substitute && !missing.is_empty() {
        options.reports.report(Report::NotSubstituted { to: to.to_string(), paths: missing.len() });
    }
    let bytes = missing.iter().map(|t| t.info.nar_size).sum();
    if options.dry_run || missing.is_empty() {
        for t in missing.iter().filter(|_| options.dry_run) {
            let (path, bytes) = (t.info.path.to_string(), t.info.nar_size);
            options.reports.report(Report::WouldCopy { path, bytes, to: to.to_string() });
        }
        source.close()?;
        sink.leave();
    } else {
        let sink = sink.for_stream(options, roots)?;
        let progress = options.reports.copy_progress(&to.to_string(), missing.len() as u64, bytes);
        sink.receive(source, &missing, progress.as_ref())?;
    }
    Ok(Summary {
        from: from.to_string(),
        to: to.to_string(),
        closure_paths: closure.len(),
        copied_paths: missing.len(),
        copied_bytes: bytes,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// One path to send, its signature added up front.
struct Transfer {
    info: PathInfo,
}

impl Transfer {
    fn new(mut info: PathInfo, key: Option<&SecretKey>) -> Transfer {
        if let Some(key) = key {
            let signature = key.sign(&info);
            if !info.sigs.contains(&signature) {
                info.sigs.push(signature);
            }
        }
        Transfer { info }
    }
}

/// The receiving end of a copy.
enum Sink {
    /// `zstd`: the session's input is a zstd stream, its greeting unread.
    Store {
        // Boxed: a connection is large, a cache small.
        conn: Box<Connection>,
        zstd: bool,
    },
    Cache(BinaryCache),
}

impl Sink {
    fn start(to: &Destination, options: &Options, roots: &[GcRoot]) -> Result<Sink, CopyError> {
        match to {
            Destination::Store(target) => {
                let probe = options.compression == Compression::Zstd && !target.is_local();
                let mode = if probe { Mode::WriteProbingZstd } else { Mode::Write };
                let how = Start {
                    mode,
                    protocol: options.protocol,
                    link: &options.target_link,
                    nix_args: &options.target_nix_args,
                    roots,
                    closure_of: &[],
                };
                Ok(Sink::Store {
                    conn: Box::new(Connection::start(&Session::as_login_user(target.clone(), options.reports), how)?),
                    zstd: false,
                })
            }
            Destination::Cache(cache) => {
                cache.create()?;
                Ok(Sink::Cache(cache.clone()))
            }
        }
    }

    /// The paths of `closure` already there; greets a store first.
    fn present(&mut self, closure: &[StorePath], substitute: bool) -> Result<BTreeSet<StorePath>, CopyError> {
        match self {
            Sink::Store { conn, .. } => Ok(conn.greet_and_query_valid_paths(closure, substitute)?),
            // Options::check refused substitution into a cache.
            Sink::Cache(cache) => Ok(cache.present(closure)),
        }
    }

    /// The session the NARs go over. Compressed, to an ssh target: a second
    /// session whose input the target's zstd decompresses; where the target
    /// has no zstd, one that ssh compresses (zlib, slower).
    fn for_stream(self, options: &Options, roots: &[GcRoot]) -> Result<Sink, CopyError> {
        let Sink::Store { conn, .. } = self else { return Ok(self) };
        if options.compression != Compression::Zstd || conn.server.target.is_local() {
            return Ok(Sink::Store { conn, zstd: false });
        }
        let session = Session::as_login_user(conn.server.target.clone(), options.reports);
        let has_zstd = conn.has_zstd == Some(true);
        // The second session speaks what the first one found.
        let protocol = Protocol::from(conn.speaks());
        conn.close()?;
        let nix_args = &options.target_nix_args;
        let daemon = protocol == Protocol::Daemon;
        if has_zstd && !daemon {
            let link = &options.target_link;
            let how = Start { mode: Mode::WriteZstd, protocol, link, nix_args, roots, closure_of: &[] };
            return Ok(Sink::Store { conn: Box::new(Connection::start(&session, how)?), zstd: true });
        }
        options.reports.report(Report::NoZstd { target: session.target.to_string(), daemon });
        let link = &Link { compression: true, ..options.target_link.clone() };
        let how = Start { mode: Mode::Write, protocol, link, nix_args, roots, closure_of: &[] };
        let mut conn = Connection::start(&session, how)?;
        conn.greet()?;
        Ok(Sink::Store { conn: Box::new(conn), zstd: false })
    }

    /// Streams the NARs of `missing` from `source` into the sink, then ends
    /// both sessions.
    fn receive(self, source: Connection, missing: &[Transfer], progress: &dyn CopyProgress) -> Result<(), CopyError> {
        let from = source.speaks();
        let Connection { server: mut source_server, requests: asks, replies, .. } = source;
        // The local store is read directly: one process less on the way.
        let local = source_server.target.is_local();
        let (asks, mut nars) = match local {
            true => {
                drop(asks);
                (None, Nars::Dump)
            }
            false => (Some(asks), Nars::Server { replies, speaks: from }),
        };
        match self {
            Sink::Store { conn, zstd } => {
                let to = conn.speaks();
                let Connection { server: mut target_server, requests, replies: mut acks, .. } = *conn;
                let adds = Outgoing::new(requests, zstd, to).map_err(|e| target_server.broken(e))?;
                std::thread::scope(|s| {
                    let asking = s.spawn(move || ask_for_nars(asks, from, missing));
                    let confirming = s.spawn(|| confirm_added(&mut acks, to, zstd, missing.len(), progress));
                    let (sent, open) = match send_nars(&mut nars, adds, to, missing, progress) {
                        Ok(open) => (Ok(()), open),
                        Err(failure) => (Err(failure), None),
                    };
                    let outcome = settle(sent, &mut source_server, Some(&mut target_server));
                    // Both threads end now: their work is done, or their
                    // server stopped under them.
                    let confirmed = confirming.join().expect("confirming thread");
                    // Only now: a daemon whose input ends stops what it does.
                    drop(open);
                    let asked = asking.join().expect("asking thread");
                    outcome?;
                    confirmed.map_err(|e| target_failed(&mut target_server, e))?;
                    asked.map(drop).map_err(|e| CopyError::from(source_server.broken(e)))
                })
                .map_err(|error| refused_as_corrupt(error, &source_server.target, &target_server.target, missing))?;
                drop(acks);
                // Nix 2.34 may take every NAR, then exit refusing one.
                let to = target_server.target.clone();
                target_server.finish().map_err(|said| explain_unsigned_refusal(&to, said.into(), ""))?;
            }
            Sink::Cache(cache) => std::thread::scope(|s| {
                let asking = s.spawn(move || ask_for_nars(asks, from, missing));
                let written = write_nars(&mut nars, &cache, missing, progress);
                let outcome = settle(written, &mut source_server, None);
                let asked = asking.join().expect("asking thread");
                outcome?;
                asked.map(drop).map_err(|e| CopyError::from(source_server.broken(e)))
            })?,
        }
        drop(nars);
        Ok(source_server.finish()?)
    }

    /// Ends a sink that was only asked what it has.
    fn leave(self) {
        if let Sink::Store { conn, .. } = self {
            conn.leave();
        }
    }
}

/// Why a stream stopped.
enum Failure {
    Source(io::Error),
    Target(io::Error),
    /// A NAR did not match its narHash.
    Corrupt {
        path: StorePath,
        expected: NarHash,
        got: NarHash,
    },
    /// A NAR ended before its narSize.
    Short {
        path: StorePath,
        seen: u64,
        size: u64,
    },
    /// Anything else, already said.
    Other(CopyError),
}

/// An I/O error of the destination: writing to the target or the cache.
impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        Failure::Target(e)
    }
}

impl Failure {
    fn of_relay(error: RelayError, t: &Transfer) -> Failure {
        match error {
            RelayError::Read(e) => Failure::Source(e),
            RelayError::Write(e) => Failure::Target(e),
            RelayError::Mismatch(got) => Failure::Corrupt { path: t.info.path.clone(), expected: t.info.nar_hash, got },
            RelayError::Size { seen, size } => Failure::Short { path: t.info.path.clone(), seen, size },
        }
    }
}

/// Turns the first failure into its error, then stops the source so that
/// no thread waits on it any more. The target's input is closed by then
/// (see [`send_nars`]), so it ends by itself.
fn settle(sent: Result<(), Failure>, source: &mut Server, target: Option<&mut Server>) -> Result<(), CopyError> {
    let Err(failure) = sent else { return Ok(()) };
    let error = match failure {
        Failure::Corrupt { path, expected, got } => {
            CopyError::Corrupt { path, from: source.target.to_string(), got, expected }
        }
        Failure::Short { path, seen, size } => CopyError::Short { path, from: source.target.to_string(), seen, size },
        Failure::Source(e) => source.broken(e).into(),
        Failure::Target(e) => match target {
            Some(target) => target_failed(target, e),
            None => StoreError::Broken { store: "the destination".into(), why: e.to_string() }.into(),
        },
        Failure::Other(error) => error,
    };
    source.kill();
    Err(error)
}

/// How Nix words its refusal of a path for want of a trusted signature:
/// "lacks a valid signature" up to 2.2x, "lacks a signature by a trusted
/// key" in 2.26 and later.
const UNSIGNED_REFUSALS: [&str; 2] = ["lacks a valid signature", "lacks a signature by a trusted key"];

/// What the target said when it hung up; its refusal of unsigned paths
/// said with the three ways out.
fn target_failed(target: &mut Server, error: io::Error) -> CopyError {
    let said = target.broken(error).into();
    let stderr = target.stderr();
    explain_unsigned_refusal(&target.target, said, &stderr)
}

/// `said`, or, when the target refused a path for want of a signature it
/// trusts (Nix's words in `said` or the target's `stderr`), that refusal
/// with the three ways out.
fn explain_unsigned_refusal(target: &Target, said: CopyError, stderr: &str) -> CopyError {
    let text = said.to_string();
    if !UNSIGNED_REFUSALS.iter().any(|refusal| text.contains(refusal) || stderr.contains(refusal)) {
        return said;
    }
    let user = match target {
        Target::Ssh(host) => host.user.clone().unwrap_or_else(|| "the ssh user".to_owned()),
        Target::Local => "this user".to_owned(),
    };
    CopyError::Untrusted { target: target.to_string(), user }
}

/// How Nix words its refusal of a NAR that does not match its narHash
/// (every version, over both protocols): `hash mismatch importing path
/// '/nix/store/...'`.
const HASH_MISMATCH: &str = "hash mismatch importing path '";

/// `error`, or, when it is the target's refusal of a NAR that did not
/// match its narHash, our own words for it, naming the path and where it
/// came from.
fn refused_as_corrupt(error: CopyError, from: &Target, to: &Target, missing: &[Transfer]) -> CopyError {
    let text = match &error {
        CopyError::Store(StoreError::Refused { why, .. }) => daemon::strip_colours(why),
        CopyError::Ssh(ssh) | CopyError::Store(StoreError::Ssh(ssh)) => daemon::strip_colours(&ssh.to_string()),
        _ => return error,
    };
    let refused = text.split_once(HASH_MISMATCH).and_then(|(_, rest)| rest.split_once('\''));
    match refused.and_then(|(path, _)| missing.iter().find(|t| t.info.path.as_str() == path)) {
        Some(t) => CopyError::CorruptRefused {
            path: t.info.path.clone(),
            from: from.to_string(),
            to: to.to_string(),
            expected: t.info.nar_hash,
        },
        None => error,
    }
}

/// Asks the source for every NAR at once; the replies come in order, each
/// read to its own end (see [`nar::relay`]). Then ends a serve session: the
/// source exits after its last NAR. A daemon stops at once when its input
/// ends, so its session is returned, open, to be dropped once every NAR is
/// read. Without `asks`
/// (NARs read locally), ends the session at once.
fn ask_for_nars(asks: Option<Requests>, speaks: Speaks, missing: &[Transfer]) -> io::Result<Option<Requests>> {
    let Some(mut asks) = asks else { return Ok(None) };
    for t in missing {
        match speaks {
            Speaks::Serve => serve::write_dump_store_path(&mut asks, &t.info.path)?,
            Speaks::Daemon(_) => daemon::write_nar_from_path(&mut asks, &t.info.path)?,
        }
    }
    asks.flush()?;
    Ok(matches!(speaks, Speaks::Daemon(_)).then_some(asks))
}

/// Reads the target's confirmation of each path as it arrives (serve), or
/// of all of them at once (daemon), after its greeting when that is still
/// unread.
fn confirm_added(
    acks: &mut Replies,
    speaks: Speaks,
    greeting: bool,
    count: usize,
    progress: &dyn CopyProgress,
) -> io::Result<()> {
    let speaks = match greeting {
        true => store_connection::read_hello(acks, speaks)?,
        false => speaks,
    };
    match speaks {
        Speaks::Serve => (1..=count).try_for_each(|done| {
            serve::read_added(acks)?;
            progress.path_done(done as u64);
            Ok(())
        }),
        Speaks::Daemon(version) => {
            daemon::read_frames(acks, version)?;
            progress.path_done(count as u64);
            Ok(())
        }
    }
}

/// Writes every missing path to the target, back to back. After a failure
/// the target's input is closed: it sees its last NAR cut short, and
/// registers nothing of that one and everything before it. After success
/// the input is returned, still open, unless closing it was the way to
/// end the stream (zstd).
fn send_nars(
    nars: &mut Nars,
    mut adds: Outgoing,
    speaks: Speaks,
    missing: &[Transfer],
    progress: &dyn CopyProgress,
) -> Result<Option<Requests>, Failure> {
    let sent = match speaks {
        Speaks::Serve => missing.iter().try_for_each(|t| {
            serve::write_add_to_store_nar(&mut adds, &t.info)?;
            nars.send(t, &mut adds, Check::AtTarget, progress)
        }),
        Speaks::Daemon(_) => add_multiple(nars, &mut adds, missing, progress),
    };
    sent?;
    adds.end().map_err(Failure::Target)
}

/// All of `missing` in one AddMultipleToStore: one framed stream of every
/// path's info and NAR. Only a stream that ended well is ended with its
/// empty frame: after a failure the target sees the stream cut, and keeps
/// only the paths before.
fn add_multiple(
    nars: &mut Nars,
    adds: &mut Outgoing,
    missing: &[Transfer],
    progress: &dyn CopyProgress,
) -> Result<(), Failure> {
    daemon::write_add_multiple(adds)?;
    let mut framed = daemon::Framed::new(&mut *adds);
    wire::write_u64(&mut framed, missing.len() as u64)?;
    for t in missing {
        daemon::write_path_info(&mut framed, &t.info)?;
        nars.send(t, &mut framed, Check::AtTarget, progress)?;
    }
    framed.finish()?;
    Ok(())
}

/// The target's input: as it is, or zstd-compressed.
enum Outgoing {
    Plain(Requests),
    Zstd(zstd::stream::write::Encoder<'static, Requests>),
}

impl Outgoing {
    /// A compressed stream starts with the greeting: nothing can be read
    /// back from it before its input ends (see [`Mode::WriteZstd`]).
    fn new(requests: Requests, zstd: bool, speaks: Speaks) -> io::Result<Outgoing> {
        if !zstd {
            return Ok(Outgoing::Plain(requests));
        }
        let mut out = Outgoing::Zstd(zstd::stream::write::Encoder::new(requests, ZSTD_LEVEL)?);
        store_connection::write_hello(&mut out, speaks)?;
        Ok(out)
    }

    /// Ends the stream: everything flushed, and the input returned to be
    /// closed once the answers are read; a zstd stream is finished and
    /// closed at once, since the target's zstd holds back what it has not
    /// decompressed until its input ends.
    fn end(self) -> io::Result<Option<Requests>> {
        match self {
            Outgoing::Plain(mut w) => w.flush().map(|()| Some(w)),
            Outgoing::Zstd(z) => z.finish()?.flush().map(|()| None),
        }
    }
}

/// zstd's own default: most of the gain for little CPU.
const ZSTD_LEVEL: i32 = 3;

impl Write for Outgoing {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Outgoing::Plain(w) => w.write(buf),
            Outgoing::Zstd(z) => z.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Outgoing::Plain(w) => w.flush(),
            Outgoing::Zstd(z) => z.flush(),
        }
    }
}

/// Writes every missing path into a binary cache, in dependency order.
fn write_nars(
    nars: &mut Nars,
    cache: &BinaryCache,
    missing: &[Transfer],
    progress: &dyn CopyProgress,
) -> Result<(), Failure> {
    for (done, t) in missing.iter().enumerate() {
        cache.add(&t.info, |file| nars.send(t, file, Check::Here, progress)).map_err(|failure| match failure {
            Failure::Target(e) => {
                Failure::Other(CopyError::CacheWrite { dir: cache.dir().display().to_string(), why: e.to_string() })
            }
            other => other,
        })?;
        progress.path_done(done as u64 + 1);
    }
    Ok(())
}

/// Where NARs come from: the source server, or the local store read
/// directly, byte for byte what `nix-store --dump` would send.
enum Nars {
    Server { replies: Replies, speaks: Speaks },
    Dump,
}

impl Nars {
    /// Writes the NAR of `t` to `to`, checked as `check` says.
    fn send(
        &mut self,
        t: &Transfer,
        to: &mut impl Write,
        check: Check,
        progress: &dyn CopyProgress,
    ) -> Result<(), Failure> {
        let (size, hash) = (t.info.nar_size, &t.info.nar_hash);
        match self {
            Nars::Server { replies, speaks } => {
                if let Speaks::Daemon(version) = speaks {
                    daemon::read_frames(replies, *version).map_err(Failure::Source)?;
                }
                nar::relay(replies, to, size, hash, check, |n| progress.sent(n)).map_err(|e| Failure::of_relay(e, t))
            }
            Nars::Dump => {
                let path = Path::new(t.info.path.as_str());
                nar::send_dump(path, to, size, hash, check, |n| progress.sent(n)).map_err(|e| match e {
                    RelayError::Read(e) => {
                        Failure::Other(CopyError::ReadLocal { path: t.info.path.clone(), why: e.to_string() })
                    }
                    other => Failure::of_relay(other, t),
                })
            }
        }
    }
}

/// The path infos of `closure`, every path after everything it refers to.
fn dependency_order(closure: &[StorePath], infos: Vec<PathInfo>) -> Result<Vec<PathInfo>, CopyError> {
    let mut by_path: BTreeMap<StorePath, PathInfo> = infos.into_iter().map(|i| (i.path.clone(), i)).collect();
    if let Some(unknown) = closure.iter().find(|p| !by_path.contains_key(*p)) {
        return Err(CopyError::NoPathInfo(unknown.clone()));
    }
    let mut order: Vec<StorePath> = Vec::with_capacity(by_path.len());
    let mut seen: BTreeSet<&StorePath> = BTreeSet::new();
    // Depth first without recursion: closures can be long chains.
    for root in by_path.keys() {
        if !seen.insert(root) {
            continue;
        }
        let mut stack: Vec<(&StorePath, usize)> = vec![(root, 0)];
        while let Some((path, next)) = stack.last_mut() {
            let references = &by_path[*path].references;
            match references.get(*next) {
                Some(reference) => {
                    *next += 1;
                    // Self-references and (impossible) cycles are skipped.
                    if by_path.contains_key(reference) && seen.insert(reference) {
                        stack.push((reference, 0));
                    }
                }
                None => {
                    order.push((*path).clone());
                    stack.pop();
                }
            }
        }
    }
    Ok(order.iter().map(|p| by_path.remove(p).expect("from by_path")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(n: usize) -> StorePath {
        StorePath::parse(&format!("/nix/store/36m5mhfn262qgji13vrgp907an576qjz-p{n:06}")).unwrap()
    }

    fn info(n: usize, references: &[usize]) -> PathInfo {
        PathInfo {
            path: path(n),
            deriver: None,
            references: references.iter().map(|&r| path(r)).collect(),
            nar_size: 8,
            nar_hash: NarHash::of(b""),
            ca: None,
            sigs: Vec::new(),
        }
    }

    fn order(infos: Vec<PathInfo>) -> Vec<StorePath> {
        let closure: Vec<StorePath> = infos.iter().map(|i| i.path.clone()).collect();
        dependency_order(&closure, infos).unwrap().into_iter().map(|i| i.path).collect()
    }

    #[test]
    fn references_come_first() {
        let got = order(vec![info(1, &[2, 3, 1]), info(2, &[3]), info(3, &[]), info(4, &[1])]);
        assert_eq!(got, [path(3), path(2), path(1), path(4)]);
    }

    #[test]
    fn long_chains_do_not_recurse() {
        const N: usize = 100_000;
        let chain = (0..N).map(|i| info(i, &(i + 1..N).take(1).collect::<Vec<_>>())).collect();
        let got = order(chain);
        assert_eq!(got.first().unwrap(), &path(N - 1));
        assert_eq!(got.last().unwrap(), &path(0));
    }

    #[test]
    fn a_path_without_info_is_an_error() {
        let err = dependency_order(&[path(1), path(2)], vec![info(1, &[])]).unwrap_err();
        assert_eq!(err.to_string(), format!("the source store has no path info for {}", path(2)));
    }

    #[test]
    fn destinations_are_stores_or_file_caches() {
        assert!(matches!("root@web1".parse::<DestinationSpec>(), Ok(DestinationSpec::Store(_))));
        assert!(matches!("ssh://web1".parse::<DestinationSpec>(), Ok(DestinationSpec::Store(_))));
        assert!(matches!("file:///srv/cache".parse::<DestinationSpec>(), Ok(DestinationSpec::Cache(_))));
        let err = "s3://bucket".parse::<DestinationSpec>().unwrap_err();
        assert!(err.contains("nix copy --to s3://bucket"), "{err}");
    }
}
