//! nixpipe-host: the host layer, acting on one host, local or over ssh:
//! [`target`] (where), [`session`] (the one way to run programs and
//! scripts there), [`privilege`] (the prefix and input that make them
//! root), [`event`] (what the scripts answer), [`store_connection`] (a
//! store's server at the other end of a session), [`host_key`],
//! [`process`] (local programs) and [`report`] (what the core tells the
//! edge). Built on nixpipe-store; knows nothing of deploying.

pub mod event;
#[cfg(any(test, feature = "fake"))]
pub mod fake;
pub mod host_key;
pub mod privilege;
pub mod process;
pub mod report;
pub mod session;
pub mod store_connection;
pub mod target;

pub use target::{Target, TargetSpec};
