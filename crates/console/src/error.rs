//! The console's errors, each with a stable code (docs/errors.md, `SF-CON`).

/// Why the console could not do something.
#[derive(Debug, thiserror::Error, sagaflow_codes::Coded)]
pub enum ConsoleError {
    /// The configuration is invalid.
    #[error("SF-CON-001: console configuration: {0}")]
    Config(String),
    /// The history database could not be opened or written.
    #[error("SF-CON-002: history database `{path}`: {message}")]
    Database { path: String, message: String },
    /// A query against the history failed.
    #[error("SF-CON-003: history query failed: {0}")]
    Query(String),
    /// Kafka could not be reached or refused a request.
    #[error("SF-CON-004: kafka: {0}")]
    Kafka(String),
    /// The HTTP listener could not be bound.
    #[error("SF-CON-005: cannot listen on {addr}: {message}")]
    Listen { addr: String, message: String },
    /// A search filter is not valid.
    #[error("SF-CON-006: bad filter: {0}")]
    Filter(String),
    /// The orchestrator API refused or could not be reached.
    #[error("SF-CON-007: orchestrator API: {0}")]
    Orchestrator(String),
}

impl From<libsql::Error> for ConsoleError {
    fn from(e: libsql::Error) -> Self {
        Self::Query(e.to_string())
    }
}
