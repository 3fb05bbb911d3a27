//! Errors and the exit statuses of the pipe contract.

use std::process::ExitCode;

/// Why a command stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad usage or bad input, found before anything was done: exit 2.
    #[error("{0}")]
    Usage(String),
    /// Something failed while acting: exit 1.
    #[error("{0}")]
    Failed(String),
}

impl From<crate::record::RecordError> for Error {
    fn from(e: crate::record::RecordError) -> Error {
        Error::Usage(e.to_string())
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

impl Error {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Error::Usage(_) => ExitCode::from(2),
            Error::Failed(_) => ExitCode::from(1),
        }
    }
}
