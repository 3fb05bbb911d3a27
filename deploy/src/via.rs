//! Upload once (`nixpipe-copy --via`): the closures go over this machine's
//! uplink once, to a relay host or a binary cache, and every target fetches
//! them from there; the bytes this machine sends do not grow with the
//! number of targets.
//!
//! - A relay (`--via HOST`) gets the union of the closures by our own copy,
//!   then copies each target what it lacks with nix-copy-closure (see
//!   via/relay.sh). While the upload runs, the relay already logs in to
//!   the targets and asks what they lack: the upload leaves this machine's
//!   CPU and the relay's mostly idle, and a handshake is costly. The relay
//!   logs in with this machine's ssh agent, forwarded to it for the run,
//!   and checks each target's host key against the keys this machine
//!   trusts for it.
//! - A binary cache (`--via file:///DIR`) is written natively and signed;
//!   each target then substitutes from it, told the cache's URL and public
//!   key for that one session. Whatever a target could not substitute is
//!   sent from here, and said.

use crate::copy::{self, CopyError, Destination, Options, Route, Summary};
use crate::nix;
use nixpipe_host::event::Event;
use nixpipe_host::host_key;
use nixpipe_host::process;
use nixpipe_host::report::Reports;
use nixpipe_host::session::{Args, Run, Script, Session};
use nixpipe_host::store_connection::{self, StoreError};
use nixpipe_host::target::{Control, Link, Target};
use nixpipe_store::binary_cache::BinaryCache;
use nixpipe_store::record::Record;
use nixpipe_store::store_path::StorePath;
use std::fmt;
use std::io::{Read, Write};
use std::process::{Child, Output};
use std::sync::{Condvar, Mutex};
use std::thread;
use std::time::Duration;
use tempfile::TempDir;

/// Where the closures go first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Via {
    Relay(Target),
    Cache { cache: BinaryCache, url: String },
}

impl Via {
    /// `spec` as given to --via: `file:///DIR`, or an ssh host. `cache_url`
    /// is where targets fetch a cache from (default: its file:// URL).
    pub fn parse(spec: &str, cache_url: Option<&str>) -> Result<Via, String> {
        if let Some(cache) = BinaryCache::from_url(spec) {
            let url = cache_url.unwrap_or(spec).to_owned();
            return Ok(Via::Cache { cache: cache?, url });
        }
        if cache_url.is_some() {
            return Err("--cache-url is for --via file:///DIR".into());
        }
        match Target::parse(spec).map_err(|e| e.to_string())? {
            Target::Local => Err("--via local: this machine is where the copy starts; name a relay host".into()),
            relay => Ok(Via::Relay(relay)),
        }
    }

    /// Refuses what cannot work before anything moves.
    pub fn check(&self, options: &Options, destinations: &[&Destination]) -> Result<(), CopyError> {
        if matches!(self, Via::Cache { .. }) && options.sign_key.is_none() {
            return Err(CopyError::ViaNeedsSignKey);
        }
        for to in destinations {
            match (self, to) {
                (_, Destination::Cache(_)) => return Err(CopyError::ViaToCache(to.to_string())),
                (Via::Relay(_), Destination::Store(Target::Local)) => return Err(CopyError::ViaToLocal),
                _ => {}
            }
        }
        Ok(())
    }

    /// Copies the closures of `paths` from this machine to the relay or the
    /// cache: the one time they cross this machine's uplink.
    pub fn upload(&self, paths: &[&StorePath], options: &Options) -> Result<Summary, CopyError> {
        let to = match self {
            Via::Relay(relay) => Destination::Store(relay.clone()),
            Via::Cache { cache, .. } => Destination::Cache(cache.clone()),
        };
        copy::copy_closures(&Route { from: Target::Local, to }, paths, options)
    }

    /// Uploads the closures of `paths` while `fetch_all` has the targets
    /// fetch them: each fetch does what it can before it needs the
    /// closures, then waits for the upload. Err: the upload failed, and the
    /// fetches took nothing.
    pub(crate) fn deliver<R>(
        &self,
        paths: &[&StorePath],
        options: &Options,
        fetch_all: impl FnOnce(&Fetcher) -> R,
    ) -> Result<R, CopyError> {
        let from = self.source(options)?;
        // The upload to a relay goes over the connection already open.
        let upload_options = match &from {
            Source::Relay(relay) => Options { target_link: relay.link(false, false), ..options.clone() },
            Source::Cache(_) => options.clone(),
        };
        let fetcher = Fetcher { from, uploaded: Gate::default() };
        thread::scope(|scope| {
            let upload = scope.spawn(|| {
                let uploaded = self.upload(paths, &upload_options);
                fetcher.uploaded.open(uploaded.is_ok());
                uploaded
            });
            let fetched = fetch_all(&fetcher);
            upload.join().expect("the upload does not panic")?;
            Ok(fetched)
        })
    }

    /// Where the targets fetch from.
    fn source(&self, options: &Options) -> Result<Source, CopyError> {
        match self {
            Via::Relay(relay) => RelayConnection::open(relay, options.reports).map(Source::Relay),
            Via::Cache { url, .. } => {
                let key = options.sign_key.as_ref().map(|k| k.public()).unwrap_or_default();
                Ok(Source::Cache(Box::new(Options {
                    substitute: true,
                    target_nix_args: [
                        "--option",
                        "extra-substituters",
                        url,
                        "--option",
                        "extra-trusted-public-keys",
                        &key,
                    ]
                    .map(String::from)
                    .to_vec(),
                    ..options.clone()
                })))
            }
        }
    }
}

/// Makes targets fetch from the relay or the cache.
pub struct Fetcher {
    from: Source,
    uploaded: Gate,
}

enum Source {
    Relay(RelayConnection),
    /// The options of a copy whose target substitutes from the cache.
    Cache(Box<Options>),
}

/// Why a target got nothing.
#[derive(Debug)]
pub enum Missed {
    /// The upload failed: said once, not for each target.
    NoUpload,
    Failed(CopyError),
}

impl<E: Into<CopyError>> From<E> for Missed {
    fn from(error: E) -> Missed {
        Missed::Failed(error.into())
    }
}

impl Fetcher {
    /// Makes the closures of the records' paths valid on `to`, once they
    /// are uploaded, with the GC roots of a copy under `options`.
    pub fn fetch(&self, to: &Destination, records: &[Record], options: &Options) -> Result<Summary, Missed> {
        match (&self.from, to) {
            (Source::Relay(relay), Destination::Store(target)) => {
                relay.copy_to(target, records, options, &self.uploaded)
            }
            (Source::Cache(session), to) => match self.uploaded.wait() {
                true => Ok(copy::copy_records(&Route { from: Target::Local, to: to.clone() }, records, session)?),
                false => Err(Missed::NoUpload),
            },
            (Source::Relay(_), Destination::Cache(_)) => unreachable!("refused by Via::check"),
        }
    }
}

/// Whether the upload succeeded: told once by the upload, waited for by
/// the fetches.
#[derive(Default)]
struct Gate {
    uploaded: Mutex<Option<bool>>,
    told: Condvar,
}

impl Gate {
    fn open(&self, uploaded: bool) {
        *self.uploaded.lock().unwrap_or_else(|p| p.into_inner()) = Some(uploaded);
        self.told.notify_all();
    }

    /// Waits for the upload to end; whether it succeeded.
    fn wait(&self) -> bool {
        let uploaded = self.uploaded.lock().unwrap_or_else(|p| p.into_inner());
        let told = self.told.wait_while(uploaded, |u| u.is_none()).unwrap_or_else(|p| p.into_inner());
        told.unwrap_or(false)
    }
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Via::Relay(relay) => relay.fmt(f),
            Via::Cache { cache, .. } => write!(f, "file://{}", cache.dir().display()),
        }
    }
}

/// One ssh connection to the relay that every target's copy runs over:
/// sshd lets only a few connections authenticate at once (MaxStartups),
/// and each new one would pay the handshake over the slow link again.
pub struct RelayConnection {
    relay: Target,
    master: Child,
    /// Holds the control socket; removed when dropped.
    dir: TempDir,
}

impl RelayConnection {
    fn open(relay: &Target, reports: Reports) -> Result<RelayConnection, CopyError> {
        let dir = tempfile::Builder::new()
            .prefix("nixpipe-relay.")
            .tempdir()
            .map_err(|e| CopyError::ControlDir(e.to_string()))?;
        let master = Link {
            control: Some(Control { socket: dir.path().join(SOCKET), forward_agent: true, master: true }),
            ..Link::default()
        };
        let mut master =
            Session::as_login_user(relay.clone(), reports).open_master(&master).map_err(StoreError::from)?;
        drop(master.stdin.take());
        // Ready once the control socket is there; an ssh that exits first
        // could not connect.
        while !dir.path().join(SOCKET).exists() {
            if let Ok(Some(status)) = master.try_wait() {
                let mut stderr = Vec::new();
                master.stderr.take().map(|mut e| e.read_to_end(&mut stderr));
                return Err(relay.failure("ssh", &Output { status, stdout: Vec::new(), stderr }).into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(RelayConnection { relay: relay.clone(), master, dir })
    }

    /// A session over the master; `forward_agent` for one that logs in
    /// further (a session asks, the master forwards).
    fn link(&self, forward_agent: bool, master: bool) -> Link {
        let control = Control { socket: self.dir.path().join(SOCKET), forward_agent, master };
        Link { control: Some(control), ..Link::default() }
    }

    /// Runs relay.sh on the relay: it logs in to `target`, makes the
    /// records' GC roots there and finds what it lacks at once, and copies
    /// that once `uploaded` says the closure is on the relay, as `options`
    /// say (their protocol, their roots).
    fn copy_to(
        &self,
        target: &Target,
        records: &[Record],
        options: &Options,
        uploaded: &Gate,
    ) -> Result<Summary, Missed> {
        let started = std::time::Instant::now();
        let (roots, protocol) = (copy::gc_roots(records, options), options.protocol);
        let relay = &self.relay;
        let Target::Ssh(host) = target else { unreachable!("refused by Via::check") };
        // Before the upload the relay cannot tell the closure: it is told.
        let trust = host_key::trusted_for(host)?;
        let mut input = trust.known_hosts + "\n";
        let paths: Vec<&StorePath> = records.iter().map(|r| &r.path).collect();
        for path in nix::requisites(&paths)? {
            input += &path;
            input.push('\n');
        }
        input.push('\n');
        let port = host.port.map(|p| p.to_string()).unwrap_or_default();
        let destination = host.destination();
        let making_roots = match roots.is_empty() {
            true => String::new(),
            false => {
                let argv = store_connection::making_roots(&roots);
                nixpipe_host::target::remote_command(&argv.iter().map(String::as_str).collect::<Vec<_>>())?
            }
        };
        let args = Args::new()
            .set("destination", destination)
            .set("port", port)
            .set("known_as", trust.name)
            .set("making_roots", making_roots)
            .set("protocol", protocol.word());
        let session = Session::as_login_user(relay.clone(), options.reports);
        let mut child =
            session.spawn(&Run::script(Script::Relay, &args).over(self.link(true, false))).map_err(StoreError::from)?;
        // The script prints one line before "go": its output can wait. A
        // relay that exits without reading is reported by its status.
        let mut stdin = child.stdin.take().expect("piped");
        let _ = stdin.write_all(input.as_bytes());
        let go = uploaded.wait();
        if go {
            let _ = stdin.write_all(b"go\n");
        }
        drop(stdin);
        let output = child.wait_with_output().map_err(|e| relay.waited("ssh", e))?;
        if !go {
            return Err(Missed::NoUpload);
        }
        match output.status.code() {
            Some(0) => {}
            Some(TARGET_UNREACHABLE) => {
                return Err(Missed::Failed(CopyError::RelayCannotReach {
                    relay: relay.to_string(),
                    target: target.to_string(),
                    why: process::summarize(&output.stderr),
                }))
            }
            _ => return Err(relay.failure("the relay's copy", &output).into()),
        }
        let mut closure_paths = 0;
        let mut sent = Vec::new();
        for event in nixpipe_host::event::parse_all(&output.stdout) {
            match event {
                Event::Closure { paths } => closure_paths = paths,
                Event::Sent { size, .. } => sent.push(size),
                _ => {}
            }
        }
        Ok(Summary {
            from: relay.to_string(),
            to: target.to_string(),
            closure_paths,
            copied_paths: sent.len(),
            copied_bytes: sent.iter().sum(),
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}

impl Drop for RelayConnection {
    fn drop(&mut self) {
        let _ = self.master.kill();
        let _ = self.master.wait();
    }
}

/// The control socket's name in its private directory.
const SOCKET: &str = "ssh";

/// The exit status of relay.sh when the target cannot be reached from the
/// relay.
const TARGET_UNREACHABLE: i32 = 3;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::copy::{routes, DestinationSpec};

    fn record(name: &str) -> Record {
        let path = StorePath::parse("/nix/store/36m5mhfn262qgji13vrgp907an576qjz-nixos-system").unwrap();
        Record::new(Some(name.into()), path)
    }

    fn destinations(to: &str, names: &[&str]) -> Vec<Destination> {
        let to: DestinationSpec = to.parse().unwrap();
        let records = names.iter().map(|n| record(n)).collect();
        routes(records, None, Some(&to)).unwrap().into_iter().map(|(route, _)| route.to).collect()
    }

    #[test]
    fn a_relay_routes_every_record_to_its_own_host() {
        let via = Via::parse("deploy@relay:2222", None).unwrap();
        let to = destinations("root@{name}", &["web1", "web2", "web1"]);
        assert_eq!(to.iter().map(ToString::to_string).collect::<Vec<_>>(), ["root@web1", "root@web2"]);
        assert!(via.check(&Options::default(), &to.iter().collect::<Vec<_>>()).is_ok());
        assert_eq!(via.to_string(), "deploy@relay:2222");
    }

    #[test]
    fn what_a_via_cannot_do_is_bad_usage_before_anything_moves() {
        let relay = Via::parse("relay", None).unwrap();
        let cache = Via::parse("file:///srv/cache", Some("https://cache.example")).unwrap();
        let local = destinations("local", &["web1"]);
        let into_cache = destinations("file:///srv/other", &["web1"]);
        for (via, to, options) in [
            (&relay, &local, Options::default()),
            (&relay, &into_cache, Options::default()),
            (&cache, &destinations("root@web1", &["web1"]), Options::default()),
        ] {
            let refused = via.check(&options, &to.iter().collect::<Vec<_>>()).unwrap_err();
            assert!(refused.is_usage(), "{refused}");
        }
        for (spec, url) in [("local", None), ("relay", Some("https://cache.example")), ("-oProxyCommand=x", None)] {
            assert!(Via::parse(spec, url).is_err(), "{spec}");
        }
    }
}
