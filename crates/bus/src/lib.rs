//! Sagaflow's Kafka plumbing: client configuration passed through to
//! librdkafka, the topic names and definitions Sagaflow uses, and the
//! message headers that carry saga identity and trace context.

pub mod baseline;
mod clock;
pub mod commit;
mod config;
pub mod dead_letter;
mod headers;
pub mod lag;
mod partition;
pub mod producer;
mod ready;
pub mod rebalance;
mod topics;

pub use clock::now_ms;
pub use config::{ClientRole, DEFAULT_FETCH_WAIT_MS, KafkaConfig};
pub use headers::{SagaHeaders, header_names};
pub use partition::{murmur2, partition_for, partitions_of};
pub use producer::{DeliveryFuture, Producer};
pub use ready::ready;
/// W3C trace context lives in `sagaflow-trace` (no Kafka client needed);
/// re-exported so `sagaflow_bus::TraceContext` and `sagaflow_bus::trace`
/// keep working.
pub use sagaflow_trace::{self as trace, TraceContext, TraceHeaders};
pub use topics::{TopicNames, TopicSpec, check_reachable, ensure_topics};

/// Errors from setting up Kafka clients and topics.
#[derive(Clone, Debug, thiserror::Error, sagaflow_codes::Coded)]
pub enum Error {
    #[error("SF-BUS-001: creating the Kafka {role} client: {message}")]
    Client { role: &'static str, message: String },
    #[error("SF-BUS-002: creating topic `{topic}`: {message}")]
    CreateTopic { topic: String, message: String },
    #[error("SF-BUS-003: topic `{topic}` is invalid: {message}")]
    InvalidTopic { topic: String, message: String },
    #[error(
        "SF-BUS-004: no Kafka broker answered at {bootstrap} within {seconds}s ({message}): check kafka.bootstrap-servers and that the broker is up"
    )]
    Unreachable {
        bootstrap: String,
        seconds: u64,
        message: String,
    },
}
