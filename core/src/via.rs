//! Upload once (`nixpipe-copy --via`): the closures go over this machine's
//! uplink once, to a relay host or a binary cache, and every target fetches
//! them from there; the bytes this machine sends do not grow with the
//! number of targets.
//!
//! - A relay (`--via HOST`) gets the union of the closures by our own copy,
//!   then streams each target what it lacks, as one `nix-store --export`
//!   into the target's `nix-store --import` (see via/relay.sh). The relay
//!   logs in to the targets with this machine's ssh agent, forwarded to it
//!   for the run, and checks each target's host key against the keys this
//!   machine trusts for it.
//! - A binary cache (`--via file:///DIR`) is written natively and signed;
//!   each target then substitutes from it, told the cache's URL and public
//!   key for that one session. Whatever a target could not substitute is
//!   sent from here, and said.

use crate::binary_cache::BinaryCache;
use crate::copy::{self, Destination, Options, Route, Summary};
use crate::host_key;
use crate::process;
use crate::store_path::StorePath;
use crate::target::Target;
use std::fmt;

const RELAY_SCRIPT: &str = include_str!("via/relay.sh");

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
        match Target::parse(spec)? {
            Target::Local => Err("--via local: this machine is where the copy starts; name a relay host".into()),
            relay => Ok(Via::Relay(relay)),
        }
    }

    /// Refuses what cannot work before anything moves.
    pub fn check(&self, options: &Options, destinations: &[&Destination]) -> Result<(), String> {
        if matches!(self, Via::Cache { .. }) && options.sign_key.is_none() {
            return Err("--via file:///DIR needs --sign-key: targets substitute signed paths only".into());
        }
        for to in destinations {
            match (self, to) {
                (_, Destination::Cache(_)) => return Err(format!("--via is for copies to stores, not to {to}")),
                (Via::Relay(_), Destination::Store(Target::Local)) => {
                    return Err("--via HOST: the relay cannot reach `local`; copy to this machine without --via".into())
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Copies the closures of `paths` from this machine to the relay or the
    /// cache: the one time they cross this machine's uplink.
    pub fn upload(&self, paths: &[&StorePath], options: &Options) -> Result<Summary, String> {
        let to = match self {
            Via::Relay(relay) => Destination::Store(relay.clone()),
            Via::Cache { cache, .. } => Destination::Cache(cache.clone()),
        };
        copy::copy_closures(&Route { from: Target::Local, to }, paths, options)
    }

    /// Makes the closures of `paths` valid on `to`, fetched from the relay
    /// or the cache, after [`Via::upload`].
    pub fn fetch(&self, to: &Destination, paths: &[&StorePath], options: &Options) -> Result<Summary, String> {
        match (self, to) {
            (Via::Relay(relay), Destination::Store(target)) => through_relay(relay, target, paths),
            (Via::Cache { url, .. }, to) => {
                let key = options.sign_key.as_ref().map(|k| k.public()).unwrap_or_default();
                let session = Options {
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
                };
                copy::copy_closures(&Route { from: Target::Local, to: to.clone() }, paths, &session)
            }
            (Via::Relay(_), Destination::Cache(_)) => unreachable!("refused by Via::check"),
        }
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

/// The exit status of relay.sh when the target cannot be reached from the
/// relay.
const TARGET_UNREACHABLE: i32 = 3;

/// Runs relay.sh on the relay, with this machine's agent forwarded and its
/// trusted keys for `target` on the script's stdin.
fn through_relay(relay: &Target, target: &Target, paths: &[&StorePath]) -> Result<Summary, String> {
    let started = std::time::Instant::now();
    let Target::Ssh(host) = target else { unreachable!("refused by Via::check") };
    let keys = host_key::trusted_for(host)?;
    let port = host.port.map(|p| p.to_string()).unwrap_or_default();
    let destination = host.destination();
    let mut argv = vec!["sh", "-c", RELAY_SCRIPT, "nixpipe-relay", &destination, &port];
    let paths: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
    argv.extend(paths.iter().map(String::as_str));
    let mut cmd = relay.command_with(&argv, &["-o", "ForwardAgent=yes"])?;
    let output = process::capture_with_input(&mut cmd, keys.as_bytes())?;
    match output.status.code() {
        Some(0) => {}
        Some(TARGET_UNREACHABLE) => {
            return Err(format!(
                "{relay} cannot reach {target}: {} (the relay logs in with your ssh agent, forwarded to it: \
                 is the key in it? ssh-add -l)",
                process::summarize(&output.stderr)
            ))
        }
        _ => return Err(relay.failure("the relay's copy", &output)),
    }
    let report = String::from_utf8_lossy(&output.stdout);
    let mut lines = report.lines();
    let closure_paths = lines.next().and_then(|n| n.trim().parse().ok()).unwrap_or(0);
    let sent: Vec<u64> = lines.filter_map(|l| l.rsplit_once(' ')?.1.parse().ok()).collect();
    Ok(Summary {
        from: relay.to_string(),
        to: target.to_string(),
        closure_paths,
        copied_paths: sent.len(),
        copied_bytes: sent.iter().sum(),
        seconds: started.elapsed().as_secs_f64(),
    })
}
