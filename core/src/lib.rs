//! nixpipe-core: everything the nixpipe commands share, one module per
//! concept, none of which prints (the commands' edge, nixpipe-cli, renders
//! what they [`report`]).
//!
//! - The pipe contract: [`store_path`], [`record`], [`error`].
//! - Acting on hosts: [`target`] (local or ssh), [`privilege`] (becoming
//!   root), [`session`] (one typed way to run programs and scripts on a
//!   host), [`event`] (what scripts answer), [`process`] (local programs).
//! - Wire formats: [`wire`] below [`serve`] (Nix's serve protocol),
//!   [`daemon`] (the daemon's worker protocol) and [`nar`]; [`path_info`],
//!   [`signing`], [`binary_cache`]. [`store_connection`] runs either
//!   protocol's server, local or behind ssh.
//! - The steps: [`eval`] and [`nix`], [`copy`] and [`via`], [`bundle`],
//!   [`activation`] and [`closure_diff`], [`microvm`], [`status`]; [`fleet`]
//!   runs them on many hosts (rollouts, `--via`).

pub mod activation;
pub mod binary_cache;
pub mod bundle;
pub mod closure_diff;
pub mod copy;
pub mod daemon;
pub mod error;
pub mod eval;
pub mod event;
pub mod fleet;
pub mod host_key;
pub mod keys;
pub mod microvm;
pub mod nar;
pub mod nix;
pub mod path_info;
pub mod privilege;
pub mod process;
pub mod record;
pub mod report;
pub mod serve;
pub mod session;
pub mod signing;
pub mod status;
pub mod store_connection;
pub mod store_path;
pub mod target;
pub mod via;
pub mod wire;

pub use error::{Error, Outcome};
pub use record::{Record, RecordWriter};
pub use store_path::StorePath;
pub use target::{Target, TargetSpec};
