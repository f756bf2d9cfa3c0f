//! Domain events in and out: decoding what existing systems publish into
//! (event type, JSON payload), and encoding what `emit` steps publish.

use std::collections::HashMap;
use std::path::Path;

use rdkafka::Message;
use rdkafka::message::BorrowedMessage;
use sagaflow_bus::{SagaHeaders, TraceHeaders};
use sagaflow_codec::schema_set::{SchemaFile, load_dir};
use sagaflow_codec::{Codec, DecodeError, EncodeError, TopicFormat};
use serde_json::Value;

/// A decoded domain event.
#[derive(Clone, Debug, PartialEq)]
pub struct DomainEventIn {
    /// The `sagaflow-message-id` header, or `<topic>/<partition>/<offset>`,
    /// which is as stable as the record itself.
    pub message_id: String,
    pub event_type: String,
    pub payload: Value,
    pub traceparent: Option<String>,
    /// The W3C `tracestate` that came with `traceparent` (a valid list).
    pub tracestate: Option<String>,
}

impl DomainEventIn {
    /// The trace headers the event's saga input carries on.
    pub fn trace(&self) -> TraceHeaders {
        TraceHeaders {
            traceparent: self.traceparent.clone(),
            tracestate: self.tracestate.clone(),
        }
    }
}

/// Why a domain event could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, sagaflow_codes::Coded)]
pub enum EventError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("SF-ORCH-010: the event has no type: set the `sagaflow-type` header or a `type` field")]
    NoType,
    #[error("SF-ORCH-011: the Avro value cannot be represented as JSON: {0}")]
    NotJson(String),
    #[error("SF-ORCH-012: the record has no value")]
    Empty,
}

/// Decodes a record of a domain topic. Avro records are typed by their
/// record's name (`io.sagaflow.examples.orders.OrderPlaced` is an
/// `OrderPlaced`); JSON records by the `sagaflow-type` header or a `type`
/// field.
pub async fn decode(codec: &Codec, m: &BorrowedMessage<'_>) -> Result<DomainEventIn, EventError> {
    let headers = m
        .headers()
        .map(SagaHeaders::from_headers)
        .unwrap_or_default();
    let bytes = m.payload().ok_or(EventError::Empty)?;
    let message_id = headers
        .message_id
        .clone()
        .unwrap_or_else(|| format!("{}/{}/{}", m.topic(), m.partition(), m.offset()));
    let (event_type, payload) = match codec.config().format(m.topic()) {
        Some(TopicFormat::Avro { .. }) => {
            let decoded = codec.decode_avro_value(m.topic(), bytes).await?;
            let short = decoded
                .full_name
                .as_deref()
                .map(|n| n.rsplit('.').next().unwrap_or(n).to_owned());
            let payload =
                Value::try_from(decoded.value).map_err(|e| EventError::NotJson(e.to_string()))?;
            let event_type = headers
                .message_type
                .clone()
                .or(short)
                .ok_or(EventError::NoType)?;
            (event_type, payload)
        }
        Some(TopicFormat::Json) => {
            let payload: Value =
                serde_json::from_slice(bytes).map_err(|e| DecodeError::InvalidJson {
                    field: None,
                    message: e.to_string(),
                })?;
            let event_type = headers
                .message_type
                .clone()
                .or_else(|| {
                    payload
                        .get("type")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
                .ok_or(EventError::NoType)?;
            (event_type, payload)
        }
        None => {
            return Err(DecodeError::TopicNotConfigured {
                topic: m.topic().to_owned(),
            }
            .into());
        }
    };
    Ok(DomainEventIn {
        message_id,
        event_type,
        payload,
        traceparent: headers.traceparent,
        tracestate: headers.tracestate,
    })
}

/// Avro schemas of the domain events Sagaflow may emit, by event type
/// (the record's short name).
#[derive(Clone, Debug, Default)]
pub struct EventSchemas {
    by_type: HashMap<String, SchemaFile>,
}

impl EventSchemas {
    pub fn load(dir: &Path) -> Result<Self, sagaflow_codec::schema_set::SchemaSetError> {
        let files = load_dir(dir)?;
        let by_type = files
            .into_iter()
            .map(|f| {
                let short = f
                    .full_name
                    .rsplit('.')
                    .next()
                    .unwrap_or(&f.full_name)
                    .to_owned();
                (short, f)
            })
            .collect();
        Ok(Self { by_type })
    }

    /// The schema of an event type.
    pub fn get(&self, event_type: &str) -> Option<&SchemaFile> {
        self.by_type.get(event_type)
    }

    /// The event types whose schema fits `topic` (per `subjects.json`), sorted.
    pub fn types_for(&self, topic: &str) -> Vec<String> {
        let mut types: Vec<String> = self
            .by_type
            .iter()
            .filter(|(_, f)| crate::ingest::schema_fits_topic(f, topic))
            .map(|(t, _)| t.clone())
            .collect();
        types.sort();
        types
    }

    /// Encodes an emitted event for `topic`: JSON as it is, Avro with the
    /// schema named by the event type.
    pub async fn encode(
        &self,
        codec: &Codec,
        topic: &str,
        event_type: &str,
        payload: &Value,
    ) -> Result<Vec<u8>, EncodeError> {
        match codec.config().format(topic) {
            Some(TopicFormat::Json) => {
                serde_json::to_vec(payload).map_err(|e| EncodeError::ValueMismatch {
                    subject: topic.to_owned(),
                    message: e.to_string(),
                })
            }
            Some(TopicFormat::Avro { .. }) => {
                let file =
                    self.by_type
                        .get(event_type)
                        .ok_or_else(|| EncodeError::ValueMismatch {
                            subject: topic.to_owned(),
                            message: format!(
                                "no Avro schema for event type `{event_type}` in schemas/"
                            ),
                        })?;
                let value =
                    sagaflow_codec::json::json_to_avro(payload, &file.schema).map_err(|e| {
                        EncodeError::ValueMismatch {
                            subject: file.subject.clone(),
                            message: format!(
                                "`{event_type}` payload does not match its schema: {e}"
                            ),
                        }
                    })?;
                codec
                    .encode_avro_value(topic, &file.full_name, &file.text, value)
                    .await
            }
            None => Err(EncodeError::TopicNotConfigured {
                topic: topic.to_owned(),
            }),
        }
    }
}
