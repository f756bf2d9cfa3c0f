//! Refusing an input, said once.
//!
//! [`Refused`] is why the orchestrator will not take a record (each reason
//! states its code once, in its message). The events below are the only
//! places a refusal is logged, counted (`sagaflow_dead_letters_total`,
//! label `reason` = the code) and dead-lettered, in the manner of Vector's
//! `internal_events`: one type per thing that happens, pairing its log line
//! with its counter.

use rdkafka::Message;
use rdkafka::message::BorrowedMessage;
use sagaflow_bus::TopicNames;
use sagaflow_codec::{DecodeError, EncodeError};
use sagaflow_codes::Coded;
use sagaflow_engine::EngineError;
use tracing::{error, warn};

use crate::events::EventError;
use crate::metrics::Metrics;
use crate::outbound::{Outgoing, dead_letter};

/// Why an input (or an effect) is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, sagaflow_codes::Coded)]
pub enum Refused {
    /// A domain event that cannot be read.
    #[error(transparent)]
    Event(#[from] EventError),
    /// A reply that cannot be decoded.
    #[error(transparent)]
    Reply(#[from] DecodeError),
    /// A reply record without a value.
    #[error("SF-ORCH-012: empty reply")]
    EmptyReply,
    /// A trigger whose saga id cannot be worked out.
    #[error("SF-ORCH-013: saga `{saga_type}`: {source}")]
    Identify {
        saga_type: String,
        #[source]
        source: EngineError,
    },
    /// A record of `sagaflow.inputs` that is not an input envelope.
    #[error("SF-ORCH-014: not a Sagaflow input envelope: {0}")]
    Envelope(String),
    /// A record of `sagaflow.inputs` without a value.
    #[error("SF-ORCH-014: empty input envelope")]
    EmptyEnvelope,
    /// The engine will not start the saga.
    #[error("SF-ORCH-015: starting saga `{saga_type}`: {source}")]
    Start {
        saga_type: String,
        #[source]
        source: EngineError,
    },
    /// An effect that cannot be encoded (not sent; no record to
    /// dead-letter).
    #[error("SF-ORCH-016: {effect} cannot be encoded: {source}")]
    Unencodable {
        effect: &'static str,
        #[source]
        source: EncodeError,
    },
    /// The input, or the saga state it would make, is over the record
    /// limit.
    #[error("SF-ORCH-022: {0}")]
    TooLarge(String),
    /// An early event over `max-parked-per-saga` / `-per-partition`.
    #[error("SF-ORCH-023: {0}")]
    ParkedLimit(String),
}

impl Refused {
    /// The reason put into the dead letter's `sagaflow-dlq-reason` header:
    /// the message after the code (the code has a header of its own); a
    /// wrapped codec or event error keeps its whole message, as it always
    /// did.
    pub fn reason(&self) -> String {
        let text = self.to_string();
        match self {
            Self::Event(_) | Self::Reply(_) => text,
            _ => text
                .strip_prefix(self.code())
                .and_then(|t| t.strip_prefix(": "))
                .map_or_else(|| text.clone(), str::to_owned),
        }
    }
}

/// An input the core (or the driver) will not take: the code and reason it
/// is dead-lettered with, as the dead letter's headers carry them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub code: &'static str,
    pub reason: String,
}

impl From<Refused> for Refusal {
    fn from(r: Refused) -> Self {
        Self {
            code: r.code(),
            reason: r.reason(),
        }
    }
}

impl Coded for Refusal {
    fn code(&self) -> &'static str {
        self.code
    }
}

/// A record refused: logged with its code and place, counted, and
/// dead-lettered with the code and reason in its headers.
pub(crate) struct InputRefused<'a> {
    pub record: &'a BorrowedMessage<'a>,
    pub refusal: Refusal,
}

impl InputRefused<'_> {
    /// Logs and counts the refusal and returns the dead letter to produce
    /// (the value left out when it would go over `limit` bytes).
    pub(crate) fn emit(self, metrics: &Metrics, names: &TopicNames, limit: usize) -> Outgoing {
        let m = self.record;
        let Refusal { code, reason } = self.refusal;
        warn!(
            topic = m.topic(),
            messaging.kafka.partition = m.partition(),
            offset = m.offset(),
            code,
            reason,
            "input refused; dead-lettered"
        );
        metrics.dead_letters.with_label_values(&[code]).inc();
        dead_letter(names, m, code, &reason, limit)
    }
}

/// A refusal with no record left to dead-letter: a parked event refused
/// when its saga starts (its record was consumed long ago). Logged and
/// counted.
pub(crate) struct ParkedEventRefused<'a> {
    pub saga_id: &'a str,
    pub refusal: &'a Refusal,
}

impl ParkedEventRefused<'_> {
    pub(crate) fn emit(self, metrics: &Metrics) {
        let code = self.refusal.code;
        warn!(saga.id = %self.saga_id, code, reason = %self.refusal.reason, "parked event refused");
        metrics.dead_letters.with_label_values(&[code]).inc();
    }
}

/// An effect the saga owes that cannot be encoded: not sent, logged as an
/// error (the schema or the definition needs fixing) and counted.
pub(crate) struct EffectDropped<'a> {
    pub saga_id: &'a str,
    pub effect: &'static str,
    pub error: EncodeError,
}

impl EffectDropped<'_> {
    pub(crate) fn emit(self, metrics: &Metrics) {
        let refused = Refused::Unencodable {
            effect: self.effect,
            source: self.error,
        };
        let code = refused.code();
        error!(code, saga.id = self.saga_id, effect = self.effect, error = %refused, "effect cannot be encoded and is not sent; fix the schema or definition");
        metrics.dead_letters.with_label_values(&[code]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_is_the_message_after_the_code() {
        let r = Refused::EmptyEnvelope;
        assert_eq!(r.code(), "SF-ORCH-014");
        assert_eq!(r.reason(), "empty input envelope");
        let r = Refused::ParkedLimit("partition 3 holds 10".into());
        assert_eq!(r.code(), "SF-ORCH-023");
        assert_eq!(r.to_string(), "SF-ORCH-023: partition 3 holds 10");
        assert_eq!(r.reason(), "partition 3 holds 10");
    }

    #[test]
    fn a_wrapped_error_keeps_its_own_code_and_whole_message() {
        let r = Refused::from(DecodeError::TooShort { len: 2 });
        assert_eq!(r.code(), "SF-CODEC-001");
        assert!(r.reason().starts_with("SF-CODEC-001: payload too short"));
        let r = Refused::from(EventError::NoType);
        assert_eq!(r.code(), "SF-ORCH-010");
        assert!(r.reason().starts_with("SF-ORCH-010: the event has no type"));
    }

    #[test]
    fn engine_errors_stay_sources() {
        let r = Refused::Start {
            saga_type: "checkout".into(),
            source: EngineError::UnknownDefinition {
                saga_type: "checkout".into(),
                version: None,
            },
        };
        assert_eq!(r.code(), "SF-ORCH-015");
        let source = std::error::Error::source(&r).expect("a source");
        assert!(source.to_string().starts_with("SF-ENG-001"));
        assert!(
            r.reason()
                .starts_with("starting saga `checkout`: SF-ENG-001: ")
        );
    }
}
