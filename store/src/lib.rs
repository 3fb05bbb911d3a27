//! nixpipe-store: the store layer, what nixpipe knows of Nix stores without
//! acting on any host: the pipe contract ([`store_path`], [`record`]), wire
//! formats ([`wire`] below [`serve`]'s and [`daemon`]'s clients, and
//! [`nar`]), [`path_info`], [`signing`], [`binary_cache`],
//! [`closure_diff`] and Nix's JSON log ([`nix_log`]). Nothing here starts a process or prints.

pub mod binary_cache;
pub mod closure_diff;
pub mod daemon;
pub mod nar;
pub mod nix_log;
pub mod path_info;
pub mod record;
pub mod serve;
pub mod signing;
pub mod store_path;
pub mod wire;

pub use record::{Record, RecordWriter};
pub use store_path::StorePath;
