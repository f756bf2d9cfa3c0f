//! Adapter errors with stable codes (documented in `docs/errors.md`).

use crate::command::AdapterOutcome;

/// Everything that can go wrong between "a command arrived" and "here is the
/// reply outcome", plus configuration errors. Messages never contain secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, sagaflow_codes::Coded)]
pub enum AdapterError {
    #[error("SF-ADAPTER-001: cannot read adapter config `{file}`: {message}")]
    ConfigRead { file: String, message: String },
    #[error("SF-ADAPTER-002: {file}:{line}:{column}: invalid adapter config: {message}")]
    ConfigParse {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("SF-ADAPTER-003: {file}: `{key}`: {message}")]
    ConfigInvalid {
        file: String,
        key: String,
        message: String,
    },
    #[error("SF-ADAPTER-004: secret unavailable: {source_desc}")]
    SecretUnavailable { source_desc: String },
    #[error("SF-ADAPTER-005: operation `{operation}`: cannot render {part}: {message}")]
    TemplateRender {
        operation: String,
        part: String,
        message: String,
    },
    #[error(
        "SF-ADAPTER-006: operation `{operation}`: request would leave the configured base URL: {reason}"
    )]
    BaseUrlEscape { operation: String, reason: String },
    #[error("SF-ADAPTER-007: operation `{operation}`: transport error: {message}")]
    Transport { operation: String, message: String },
    #[error("SF-ADAPTER-008: operation `{operation}`: timed out after {elapsed_ms} ms")]
    Timeout { operation: String, elapsed_ms: u64 },
    #[error("SF-ADAPTER-009: operation `{operation}`: invalid response from backend: {message}")]
    InvalidResponse { operation: String, message: String },
    #[error(
        "SF-ADAPTER-010: operation `{operation}`: response body exceeds the limit of {limit} bytes"
    )]
    ResponseTooLarge { operation: String, limit: u64 },
    #[error("SF-ADAPTER-011: service `{service}`: circuit breaker is open, failing fast")]
    CircuitOpen { service: String },
    #[error("SF-ADAPTER-012: service `{service}`: cannot obtain OAuth2 token: {message}")]
    TokenFetch { service: String, message: String },
    #[error("SF-ADAPTER-013: service `{service}` has no operation `{operation}`")]
    UnknownOperation { service: String, operation: String },
    #[error("SF-ADAPTER-014: operation `{operation}`: unsafe or malformed XML rejected: {message}")]
    UnsafeXml { operation: String, message: String },
    #[error("SF-ADAPTER-015: cannot register metrics: {message}")]
    Metrics { message: String },
    #[error(
        "SF-ADAPTER-016: service `{service}`: rate limit would delay the call past the command deadline"
    )]
    RateLimited { service: String },
    #[error(
        "SF-ADAPTER-023: {file}: `protection.max-response-bytes` ({max_response_bytes}) plus the reply envelope ({overhead} bytes) exceeds the Kafka producer's `message.max.bytes` ({message_max_bytes}): a body the adapter accepts could make a reply that can never be sent; lower max-response-bytes to at most {fits} or raise message.max.bytes (and the broker's and topic's limits)"
    )]
    MessageLimit {
        file: String,
        max_response_bytes: u64,
        message_max_bytes: u64,
        overhead: u64,
        fits: u64,
    },
    #[error(
        "SF-ADAPTER-024: the idempotency topic `{topic}` has {partitions} partitions but `{commands_topic}` has {command_partitions}; they must match (recreate the idempotency topic with {command_partitions} partitions)"
    )]
    IdempotencyTopic {
        topic: String,
        partitions: usize,
        commands_topic: String,
        command_partitions: usize,
    },
}

impl AdapterError {
    /// Short code put into `ReplyError::code`.
    pub fn reply_code(&self) -> &'static str {
        match self {
            Self::ConfigRead { .. }
            | Self::ConfigParse { .. }
            | Self::ConfigInvalid { .. }
            | Self::MessageLimit { .. }
            | Self::IdempotencyTopic { .. } => "config_error",
            Self::SecretUnavailable { .. } => "secret_unavailable",
            Self::TemplateRender { .. } => "invalid_command",
            Self::BaseUrlEscape { .. } => "base_url_escape",
            Self::Transport { .. } => "connect_error",
            Self::Timeout { .. } => "timeout",
            Self::InvalidResponse { .. } => "invalid_response",
            Self::ResponseTooLarge { .. } => "response_too_large",
            Self::CircuitOpen { .. } => "circuit_open",
            Self::TokenFetch { .. } => "auth_failed",
            Self::UnknownOperation { .. } => "unknown_operation",
            Self::UnsafeXml { .. } => "unsafe_xml",
            Self::Metrics { .. } => "metrics_error",
            Self::RateLimited { .. } => "rate_limited",
        }
    }

    /// How this error is reported to the saga.
    ///
    /// * Permanent problems with the command itself (cannot render, would
    ///   escape the base URL, unknown operation) are business failures: the
    ///   same command will never succeed, so the saga compensates.
    /// * Transport problems, timeouts, open circuit, rate limiting and token
    ///   fetch failures are transient and retried by the executor.
    /// * A backend that answers garbage (invalid / oversized / unsafe body)
    ///   is transient for the saga, but not retried inside the adapter.
    pub fn to_outcome(&self) -> AdapterOutcome {
        let msg = self.to_string();
        let code = self.reply_code();
        match self {
            Self::TemplateRender { .. }
            | Self::BaseUrlEscape { .. }
            | Self::UnknownOperation { .. }
            | Self::ConfigRead { .. }
            | Self::ConfigParse { .. }
            | Self::ConfigInvalid { .. }
            | Self::MessageLimit { .. }
            | Self::IdempotencyTopic { .. } => AdapterOutcome::business_failure(code, msg),
            Self::InvalidResponse { .. }
            | Self::ResponseTooLarge { .. }
            | Self::UnsafeXml { .. }
            | Self::CircuitOpen { .. } => AdapterOutcome::transient(code, msg).not_retryable(),
            Self::Transport { .. }
            | Self::Timeout { .. }
            | Self::TokenFetch { .. }
            | Self::SecretUnavailable { .. }
            | Self::Metrics { .. }
            | Self::RateLimited { .. } => AdapterOutcome::transient(code, msg),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::OutcomeKind;

    #[test]
    fn codes_are_in_messages_and_classified() {
        let e = AdapterError::CircuitOpen {
            service: "payments".into(),
        };
        assert!(e.to_string().starts_with(e.code()));
        let o = e.to_outcome();
        assert_eq!(o.kind, OutcomeKind::TransientFailure);
        assert_eq!(o.error_code(), Some("circuit_open"));
        assert!(!o.retryable);

        let e = AdapterError::BaseUrlEscape {
            operation: "x".into(),
            reason: "absolute URL".into(),
        };
        assert_eq!(e.to_outcome().kind, OutcomeKind::BusinessFailure);
        let e = AdapterError::Timeout {
            operation: "x".into(),
            elapsed_ms: 5,
        };
        assert!(e.to_outcome().retryable);
    }
}
