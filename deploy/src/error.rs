//! Errors and the exit statuses of the pipe contract. Each concern has its
//! own typed error, with its own wording (one line, naming the record or
//! host, what changed, the way out); this is the one place that maps them
//! to exit 2 (bad usage or input, nothing done) or 1 (failed while acting).

use crate::activation::{ActivationError, Changed};
use crate::copy::CopyError;
use crate::eval::EvalError;
use crate::microvm::MicrovmError;
use crate::vm::VmError;
use nixpipe_host::privilege::PrivilegeError;
use nixpipe_host::session::SessionError;
use nixpipe_host::target::SshError;
use nixpipe_store::record::{InputError, RecordError};
use std::process::ExitCode;

/// Why a command stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad usage found while making the plan: exit 2.
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Record(#[from] RecordError),
    /// No records to work on.
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error(transparent)]
    Privilege(#[from] PrivilegeError),
    #[error(transparent)]
    Copy(#[from] CopyError),
    #[error(transparent)]
    Activation(#[from] ActivationError),
    #[error(transparent)]
    Eval(#[from] EvalError),
    #[error(transparent)]
    Microvm(#[from] MicrovmError),
    #[error(transparent)]
    Vm(#[from] VmError),
    /// stdout could not take a record (the pipe's reader is gone).
    #[error("cannot write to stdout: {0}")]
    Output(String),
}

impl From<SessionError> for Error {
    fn from(e: SessionError) -> Error {
        match e {
            SessionError::Ssh(e) => Error::Ssh(e),
            SessionError::Privilege(e) => Error::Privilege(e),
        }
    }
}

impl Error {
    /// Whether nothing was done because the usage or input was bad.
    pub fn is_usage(&self) -> bool {
        match self {
            Error::Usage(_) | Error::Record(_) | Error::Input(_) => true,
            Error::Privilege(e) => e.is_usage(),
            Error::Ssh(e) => e.is_usage(),
            Error::Copy(e) => e.is_usage(),
            Error::Eval(e) => e.is_usage(),
            Error::Activation(e) => e.is_usage(),
            Error::Microvm(MicrovmError::Session(e)) => e.is_usage(),
            Error::Microvm(MicrovmError::Copy(e)) => e.is_usage(),
            Error::Vm(e) => e.is_usage(),
            Error::Microvm(_) | Error::Output(_) => false,
        }
    }

    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(if self.is_usage() { 2 } else { 1 })
    }
}

impl Error {
    /// What the failed step changed, whichever error wraps the one that
    /// knows.
    pub fn changed(&self) -> Changed {
        match self {
            _ if self.is_usage() => Changed::Nothing,
            Error::Activation(e) | Error::Microvm(MicrovmError::Activation(e)) => e.changed(),
            // Reading, evaluating, building locally: nothing on a host.
            Error::Record(_) | Error::Input(_) | Error::Eval(_) | Error::Output(_) | Error::Usage(_) => {
                Changed::Nothing
            }
            // sudo refused, or ssh could not log in: nothing ran.
            Error::Privilege(_) | Error::Ssh(SshError::Unreachable { .. }) => Changed::Nothing,
            // A copy adds valid paths and roots; a session may have run
            // anything; a MicroVM's links may have moved.
            Error::Ssh(_) | Error::Copy(_) | Error::Microvm(_) => Changed::Something,
            // On this machine only: a VM that did not come up is stopped.
            Error::Vm(_) => Changed::Nothing,
        }
    }
}

/// What a run over many records came to.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub failed: usize,
}

impl Outcome {
    pub fn exit_code(self) -> ExitCode {
        if self.failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::copy::CopyError;
    use nixpipe_host::store_connection::StoreError;

    #[test]
    fn bad_usage_stays_bad_usage_whatever_wraps_it() {
        let bad_opts = || SessionError::Ssh(SshError::BadSshOpts);
        for error in [
            Error::Ssh(SshError::BadSshOpts),
            Error::Copy(CopyError::Ssh(SshError::BadSshOpts)),
            Error::Copy(CopyError::Store(StoreError::Session(bad_opts()))),
            Error::Activation(ActivationError::Session(Box::new(bad_opts()))),
            Error::Microvm(MicrovmError::Session(bad_opts())),
            Error::Privilege(PrivilegeError::PasswordForCustom),
        ] {
            assert!(error.is_usage(), "{error}");
        }
        assert!(Error::Ssh(SshError::BadSshOpts).changed() == Changed::Nothing);
        let dropped = SshError::Dropped { target: "web1".into() };
        assert!(!Error::Copy(CopyError::Ssh(dropped.clone())).is_usage());
        assert!(!Error::Activation(ActivationError::Session(Box::new(dropped.into()))).is_usage());
    }
}
