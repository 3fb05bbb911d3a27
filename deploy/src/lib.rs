//! nixpipe-deploy: the deploy layer, the steps of the nixpipe commands over
//! the host layer (nixpipe-host) and the store layer (nixpipe-store), none
//! of which prints (the commands' edge, nixpipe-cli, renders what they
//! report): [`eval`], [`nix`] and [`build`], [`copy`] and [`via`], [`bundle`],
//! [`activation`] and [`diff`], [`keys`], [`microvm`], [`status`]; [`fleet`] runs them
//! on many hosts (rollouts, `--via`); [`error`] maps every error to the
//! pipe contract's exit status.

pub mod activation;
pub mod build;
pub mod bundle;
pub mod copy;
pub mod diff;
pub mod error;
pub mod eval;
pub mod fleet;
pub mod keys;
pub mod microvm;
pub mod nix;
pub mod status;
pub mod via;
pub mod vm;

pub use activation::Changed;
pub use error::{Error, Outcome};
