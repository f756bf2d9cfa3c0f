//! The adapter's view of a saga command and of the reply it sends back.
//!
//! These are plain structs: the Kafka glue maps the wire `Command`/`Reply`
//! types to and from them, so the backend-calling core does not depend on
//! any codec.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One command for the service this adapter fronts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterCommand {
    /// Deterministic id (`<saga type>:<saga id>/<step>/<attempt>`): the
    /// dedupe key for redeliveries; see [`AdapterCommand::idempotency_key`].
    pub command_id: String,
    pub saga_id: String,
    pub saga_type: String,
    pub step: String,
    pub service: String,
    pub operation: String,
    pub attempt: u32,
    pub input: serde_json::Value,
    /// Total time budget for this command, retries included. `0` means "use
    /// the adapter's configured default".
    pub timeout_ms: u64,
    /// W3C trace context, forwarded to the backend unchanged.
    pub traceparent: Option<String>,
    /// W3C `tracestate` (the vendors' list) that came with `traceparent`,
    /// forwarded to the backend unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

impl AdapterCommand {
    /// The backend's `Idempotency-Key`: the command id without its attempt
    /// number, so every attempt of one step (a retry after a timeout the
    /// orchestrator declared, a redelivery after a crash) is one operation
    /// to the backend, which applies it at most once.
    pub fn idempotency_key(&self) -> &str {
        idempotency_key(&self.command_id)
    }
}

/// The `Idempotency-Key` of a command id: the id without its attempt
/// number (`<saga>/<step>/<attempt>` → `<saga>/<step>`).
pub(crate) fn idempotency_key(command_id: &str) -> &str {
    match command_id.rsplit_once('/') {
        Some((operation, attempt))
            if attempt.bytes().all(|b| b.is_ascii_digit()) && !attempt.is_empty() =>
        {
            operation
        }
        _ => command_id,
    }
}

/// How a call ended, as the saga sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OutcomeKind {
    /// The backend did what was asked.
    Success,
    /// The backend refused for a business reason; the saga compensates.
    BusinessFailure,
    /// The call could not be completed now; the saga's retry policy decides.
    TransientFailure,
}

impl OutcomeKind {
    /// Stable lowercase name (used in logs and metrics).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::BusinessFailure => "business_failure",
            Self::TransientFailure => "transient_failure",
        }
    }
}

/// Error details of a failed call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyError {
    /// Short machine-readable code, e.g. `http_409`, `circuit_open`,
    /// `timeout`, `invalid_response`, or a SOAP fault code.
    pub code: String,
    /// Human-readable message. Never contains secrets.
    pub message: String,
}

/// The result of executing one command: what goes into the reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterOutcome {
    pub kind: OutcomeKind,
    pub data: serde_json::Value,
    pub error: Option<ReplyError>,
    /// HTTP status the backend answered with, when there was one.
    pub http_status: Option<u16>,
    /// Hint for the executor (from `Retry-After`); not part of the reply.
    #[serde(skip)]
    pub retry_after: Option<Duration>,
    /// `false` when retrying inside the adapter is pointless (e.g. the
    /// backend answered garbage); the outcome is still transient for the saga.
    #[serde(skip, default = "default_true")]
    pub retryable: bool,
}

fn default_true() -> bool {
    true
}

impl AdapterOutcome {
    /// A successful outcome carrying `data`.
    pub fn success(data: serde_json::Value) -> Self {
        Self {
            kind: OutcomeKind::Success,
            data,
            error: None,
            http_status: None,
            retry_after: None,
            retryable: true,
        }
    }

    /// A business failure (the saga compensates).
    pub fn business_failure(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::failure(OutcomeKind::BusinessFailure, code, message)
    }

    /// A transient failure (retried by the executor, then by the saga).
    pub fn transient(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::failure(OutcomeKind::TransientFailure, code, message)
    }

    fn failure(kind: OutcomeKind, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind,
            data: serde_json::Value::Null,
            error: Some(ReplyError {
                code: code.into(),
                message: message.into(),
            }),
            http_status: None,
            retry_after: None,
            retryable: true,
        }
    }

    /// Sets the backend HTTP status.
    pub fn with_status(mut self, status: u16) -> Self {
        self.http_status = Some(status);
        self
    }

    /// Sets reply data.
    pub fn with_data(mut self, data: serde_json::Value) -> Self {
        self.data = data;
        self
    }

    /// Asks the executor to wait at least `after` before the next attempt.
    pub fn with_retry_after(mut self, after: Option<Duration>) -> Self {
        self.retry_after = after;
        self
    }

    /// Marks a transient failure as not worth retrying inside the adapter.
    pub fn not_retryable(mut self) -> Self {
        self.retryable = false;
        self
    }

    /// The error code, if any.
    pub fn error_code(&self) -> Option<&str> {
        self.error.as_ref().map(|e| e.code.as_str())
    }

    /// `true` for outcomes that are final for this command id (success and
    /// business failure); those are remembered for idempotency.
    pub fn is_final(&self) -> bool {
        self.kind != OutcomeKind::TransientFailure
    }
}

#[cfg(test)]
mod idempotency_key_tests {
    use super::AdapterCommand;

    fn cmd(id: &str) -> AdapterCommand {
        AdapterCommand {
            command_id: id.to_owned(),
            saga_id: "order-checkout:o-1".to_owned(),
            saga_type: "order-checkout".to_owned(),
            step: "charge".to_owned(),
            service: "payment".to_owned(),
            operation: "charge".to_owned(),
            attempt: 1,
            input: serde_json::Value::Null,
            timeout_ms: 0,
            traceparent: None,
            tracestate: None,
        }
    }

    #[test]
    fn every_attempt_of_a_step_shares_one_key() {
        let first = cmd("order-checkout:o-1/charge/1");
        let second = cmd("order-checkout:o-1/charge/2");
        assert_eq!(first.idempotency_key(), "order-checkout:o-1/charge");
        assert_eq!(first.idempotency_key(), second.idempotency_key());
        assert_eq!(
            cmd("order-checkout:o-1/charge/compensate/3").idempotency_key(),
            "order-checkout:o-1/charge/compensate"
        );
        // An action and its compensation are different operations.
        assert_ne!(
            first.idempotency_key(),
            cmd("order-checkout:o-1/charge/compensate/1").idempotency_key()
        );
        // Ids from another producer without an attempt suffix pass unchanged.
        assert_eq!(cmd("custom-id").idempotency_key(), "custom-id");
        assert_eq!(cmd("a/b/").idempotency_key(), "a/b/");
    }
}
