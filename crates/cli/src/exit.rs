//! How a command fails, and the exit code that says so.

use std::process::ExitCode;

/// A failed command. The variant decides the exit code.
#[derive(Debug)]
pub(crate) enum Failure {
    /// A check found a problem (exit 1). Details are already printed.
    Found(String),
    /// Usage or configuration error (exit 2).
    Usage(String),
    /// A service could not be reached (exit 3).
    Unreachable(String),
}

impl Failure {
    pub(crate) fn code(&self) -> u8 {
        match self {
            Self::Found(_) => 1,
            Self::Usage(_) => 2,
            Self::Unreachable(_) => 3,
        }
    }

    /// Prints the failure to stderr and returns its exit code.
    pub(crate) fn report(self) -> ExitCode {
        let code = self.code();
        let message = match &self {
            Self::Found(m) => m,
            Self::Usage(m) => m,
            Self::Unreachable(m) => m,
        };
        eprintln!("error: {message}");
        ExitCode::from(code)
    }
}

pub(crate) type CliResult<T = ()> = Result<T, Failure>;
