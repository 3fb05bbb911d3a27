//! nixpipe-core: everything the nixpipe commands share.
//!
//! Each module holds one concept, named after it: [`store_path`],
//! [`record`] (the pipe contract), [`target`] (local or ssh), [`process`]
//! (running programs and reporting their failures), [`nix`] (running Nix),
//! and one module per step: [`eval`], [`copy`], [`activation`].

pub mod activation;
pub mod binary_cache;
pub mod bundle;
pub mod cli;
pub mod closure_diff;
pub mod copy;
pub mod error;
pub mod eval;
pub mod fleet;
pub mod host_key;
pub mod microvm;
pub mod nar;
pub mod nix;
pub mod privilege;
pub mod process;
pub mod progress;
pub mod record;
pub mod serve;
pub mod signing;
pub mod store_path;
pub mod target;
pub mod via;

pub use error::{Error, Outcome};
pub use record::{Record, RecordWriter};
pub use store_path::StorePath;
pub use target::{Target, TargetSpec};
