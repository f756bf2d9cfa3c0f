//! Domain events handed to Sagaflow from outside Kafka: the envelope that
//! `sagaflow publish` reads (one per line) and `POST /v1/events/{topic}`
//! takes, checked and encoded with the topic's schema exactly as an existing
//! system's publisher would write it, so the orchestrator reads it like any
//! other domain event (Avro: typed by the writer record's name).
//!
//! ```json
//! {"type": "OrderPlaced", "key": "o-1", "headers": {"x-source": "crm"}, "payload": {…}}
//! ```

use std::collections::{BTreeMap, BTreeSet};

use rdkafka::message::{Header, OwnedHeaders};
use sagaflow_bus::{TraceHeaders, header_names};
use sagaflow_codec::schema_set::SchemaFile;
use sagaflow_codec::{Codec, EncodeError, TopicFormat};
use sagaflow_engine::DefinitionRegistry;
use serde_json::Value;

use crate::events::EventSchemas;

/// The keys an envelope may have.
const ENVELOPE_KEYS: [&str; 4] = ["type", "key", "headers", "payload"];

/// One event to publish.
#[derive(Clone, Debug, PartialEq)]
pub struct IngestEvent {
    /// Event type: the record's short name (`OrderPlaced`).
    pub event_type: String,
    /// Kafka record key.
    pub key: Option<String>,
    /// Extra Kafka headers (string values).
    pub headers: BTreeMap<String, String>,
    /// The event itself.
    pub payload: Value,
}

/// Why an event cannot be published. Every variant has a stable code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, sagaflow_codes::Coded)]
pub enum IngestError {
    /// The envelope is not shaped as documented.
    #[error("SF-INGEST-001: {0}")]
    Envelope(String),
    /// No schema (or no saga) knows this type on this topic.
    #[error("SF-INGEST-002: unknown event type `{event_type}` for topic `{topic}`; known: {known}")]
    UnknownType {
        event_type: String,
        topic: String,
        known: String,
    },
    /// The payload does not fit the type's schema.
    #[error("SF-INGEST-003: `{event_type}` payload does not match its schema at {message}")]
    Mismatch { event_type: String, message: String },
    /// The schema registry could not be reached.
    #[error("SF-INGEST-004: {0}")]
    RegistryUnreachable(String),
    /// The registry refused, or the topic has no format.
    #[error("SF-INGEST-005: {0}")]
    Encode(String),
    /// A caller supplied a header Sagaflow sets itself.
    #[error(
        "SF-INGEST-006: header `{0}` is reserved: Sagaflow sets `sagaflow-*` headers itself (the message id, saga id, type); remove or rename it"
    )]
    ReservedHeader(String),
}

/// Whether `name` is one of the `sagaflow-*` headers Sagaflow sets itself
/// (any case): a caller who sets `sagaflow-message-id` could make the
/// orchestrator drop another event as a duplicate.
pub fn is_reserved_header(name: &str) -> bool {
    name.get(..RESERVED_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(RESERVED_PREFIX))
}

const RESERVED_PREFIX: &str = "sagaflow-";

/// Refuses an event that carries a reserved header (HTTP ingest).
pub fn check_headers(event: &IngestEvent) -> Result<(), IngestError> {
    match event.headers.keys().find(|k| is_reserved_header(k)) {
        Some(k) => Err(IngestError::ReservedHeader(k.clone())),
        None => Ok(()),
    }
}

fn envelope_err(message: impl Into<String>) -> IngestError {
    IngestError::Envelope(message.into())
}

/// Reads one event. An object whose keys are among `type`, `key`,
/// `headers`, `payload` and which has `payload` is an envelope; anything
/// else is a bare payload of `default_type`. `key_field` is a JSON pointer
/// into the payload for the key when the envelope has none.
pub fn parse_event(
    value: Value,
    default_type: Option<&str>,
    key_field: Option<&str>,
) -> Result<IngestEvent, IngestError> {
    let is_envelope = value.as_object().is_some_and(|o| {
        o.contains_key("payload") && o.keys().all(|k| ENVELOPE_KEYS.contains(&k.as_str()))
    });
    let (event_type, key, headers, payload) = if is_envelope {
        let Value::Object(mut o) = value else {
            unreachable!("checked above")
        };
        let event_type = match o.remove("type") {
            Some(Value::String(t)) if !t.is_empty() => t,
            Some(other) => {
                return Err(envelope_err(format!(
                    "`type` must be a non-empty string, found {other}"
                )));
            }
            None => default_type.map(str::to_owned).ok_or_else(|| {
                envelope_err("the envelope has no `type` (or pass the type for all events)")
            })?,
        };
        let key = match o.remove("key") {
            None | Some(Value::Null) => None,
            Some(Value::String(k)) => Some(k),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(other) => {
                return Err(envelope_err(format!(
                    "`key` must be a string or a number, found {other}"
                )));
            }
        };
        let headers = match o.remove("headers") {
            None | Some(Value::Null) => BTreeMap::new(),
            Some(Value::Object(h)) => h
                .into_iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k, s)),
                    other => Err(envelope_err(format!(
                        "header `{k}` must be a string, found {other}"
                    ))),
                })
                .collect::<Result<_, _>>()?,
            Some(other) => {
                return Err(envelope_err(format!(
                    "`headers` must be an object of strings, found {other}"
                )));
            }
        };
        let payload = o.remove("payload").unwrap_or(Value::Null);
        (event_type, key, headers, payload)
    } else {
        let Some(t) = default_type else {
            return Err(envelope_err(
                "expected an envelope {\"type\": …, \"payload\": {…}} (optional \"key\", \"headers\"); give the type for bare payloads",
            ));
        };
        (t.to_owned(), None, BTreeMap::new(), value)
    };
    if !payload.is_object() {
        return Err(envelope_err(format!(
            "the payload must be a JSON object, found {}",
            short(&payload)
        )));
    }
    let key = match (key, key_field) {
        (Some(k), _) => Some(k),
        (None, Some(pointer)) => Some(match payload.pointer(pointer) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            Some(other) => {
                return Err(envelope_err(format!(
                    "key field {pointer} must be a string or a number, found {}",
                    short(other)
                )));
            }
            None => {
                return Err(envelope_err(format!(
                    "key field {pointer} is not in the payload"
                )));
            }
        }),
        (None, None) => None,
    };
    Ok(IngestEvent {
        event_type,
        key,
        headers,
        payload,
    })
}

fn short(v: &Value) -> String {
    let text = v.to_string();
    if text.chars().count() > 40 {
        format!("{}…", text.chars().take(40).collect::<String>())
    } else {
        text
    }
}

/// The Kafka headers of an event: its own headers, `sagaflow-type`, and
/// the W3C `traceparent` with its `tracestate`. `traceparent` and
/// `tracestate` (the HTTP request's, as [`TraceHeaders::from_caller`]
/// forwards them) win over those among the event's headers; an event's own
/// `traceparent` that is not a valid W3C trace context is replaced by a
/// fresh one, never forwarded, and its own `tracestate` goes only with its
/// own valid `traceparent` and only when it is a valid list.
pub fn record_headers(
    event: &IngestEvent,
    traceparent: Option<&str>,
    tracestate: Option<&str>,
) -> OwnedHeaders {
    let mut out = OwnedHeaders::new_with_capacity(event.headers.len() + 3);
    let trace = match traceparent {
        Some(tp) => TraceHeaders {
            traceparent: Some(tp.to_owned()),
            tracestate: tracestate.map(str::to_owned),
        },
        None => TraceHeaders::from_caller(
            event
                .headers
                .get(header_names::TRACEPARENT)
                .map(String::as_str),
            event
                .headers
                .get(header_names::TRACESTATE)
                .map(String::as_str),
        ),
    };
    for (k, v) in &event.headers {
        if k == header_names::MESSAGE_TYPE
            || k == header_names::TRACEPARENT
            || k == header_names::TRACESTATE
        {
            continue;
        }
        out = out.insert(Header {
            key: k,
            value: Some(v.as_bytes()),
        });
    }
    out = out.insert(Header {
        key: header_names::MESSAGE_TYPE,
        value: Some(event.event_type.as_bytes()),
    });
    for (key, value) in [
        (header_names::TRACEPARENT, &trace.traceparent),
        (header_names::TRACESTATE, &trace.tracestate),
    ] {
        if let Some(value) = value {
            out = out.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
    }
    out
}

/// The trace context to forward for a caller's `traceparent` header: the
/// same when it is valid W3C trace context, a fresh one when it is not,
/// none when there is none.
pub fn caller_traceparent(header: Option<&str>) -> Option<String> {
    TraceHeaders::from_caller(header, None).traceparent
}

/// Whether `topic` (maybe prefixed) is one of the topics `subjects.json`
/// lists for `file`; a placeholder (`sagaflow.commands.<service>`) matches
/// any name in its place. A file without listed topics fits every topic.
pub fn schema_fits_topic(file: &SchemaFile, topic: &str) -> bool {
    file.topics.is_empty()
        || file.topics.iter().any(|t| match t.split_once('<') {
            Some((head, _)) => topic.starts_with(head) || topic.contains(&format!(".{head}")),
            None => topic == t || topic.ends_with(&format!(".{t}")),
        })
}

/// Encodes `event` for `topic` (prefixed, as written): Avro with the schema
/// named by the event type, or JSON as it is.
pub async fn encode(
    codec: &Codec,
    schemas: &EventSchemas,
    topic: &str,
    event: &IngestEvent,
) -> Result<Vec<u8>, IngestError> {
    match codec.config().format(topic) {
        Some(TopicFormat::Json) => {
            serde_json::to_vec(&event.payload).map_err(|e| IngestError::Encode(e.to_string()))
        }
        Some(TopicFormat::Avro { .. }) => {
            let (file, value) = avro_value(schemas, topic, event)?;
            codec
                .encode_avro_value(topic, &file.full_name, &file.text, value)
                .await
                .map_err(|e| match e {
                    EncodeError::RegistryUnreachable { .. } => {
                        IngestError::RegistryUnreachable(e.to_string())
                    }
                    other => IngestError::Encode(other.to_string()),
                })
        }
        None => Err(IngestError::Encode(format!(
            "no format is configured for topic `{topic}`"
        ))),
    }
}

/// Checks `event` against its type's schema for an Avro `topic`; returns
/// the schema file and the Avro value. No registry is asked.
pub fn avro_value<'s>(
    schemas: &'s EventSchemas,
    topic: &str,
    event: &IngestEvent,
) -> Result<(&'s SchemaFile, sagaflow_codec::apache_avro::types::Value), IngestError> {
    let file = schemas
        .get(&event.event_type)
        .filter(|f| schema_fits_topic(f, topic))
        .ok_or_else(|| IngestError::UnknownType {
            event_type: event.event_type.clone(),
            topic: topic.to_owned(),
            known: known_list(schemas.types_for(topic)),
        })?;
    let value =
        sagaflow_codec::json::json_to_avro(&event.payload, &file.schema).map_err(|message| {
            IngestError::Mismatch {
                event_type: event.event_type.clone(),
                message,
            }
        })?;
    Ok((file, value))
}

/// Checks `event` for `topic` (prefixed) exactly as [`encode`] does before
/// it asks the registry: JSON topics take any object, Avro topics the
/// type's schema.
pub fn validate(
    codec: &Codec,
    schemas: &EventSchemas,
    topic: &str,
    event: &IngestEvent,
) -> Result<(), IngestError> {
    match codec.config().format(topic) {
        Some(TopicFormat::Json) => Ok(()),
        Some(TopicFormat::Avro { .. }) if schemas.get(&event.event_type).is_none() => {
            Err(IngestError::Encode(format!(
                "no Avro schema for `{}`: set `schemas:` in the orchestrator config to a directory holding it",
                event.event_type
            )))
        }
        Some(TopicFormat::Avro { .. }) => avro_value(schemas, topic, event).map(|_| ()),
        None => Err(IngestError::Encode(format!(
            "no format is configured for topic `{topic}`"
        ))),
    }
}

fn known_list(types: Vec<String>) -> String {
    if types.is_empty() {
        "(none)".to_owned()
    } else {
        types.join(", ")
    }
}

/// The domain events the loaded sagas name, by topic (without prefix):
/// their triggers, awaited events and emitted events. The HTTP ingest
/// accepts exactly these.
pub fn known_events(registry: &DefinitionRegistry) -> BTreeMap<String, BTreeSet<String>> {
    registry.topics().events()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Headers;
    use sagaflow_bus::TraceContext;
    use serde_json::json;

    fn trace_pairs(h: &OwnedHeaders) -> Vec<(String, String)> {
        h.iter()
            .filter(|x| x.key.starts_with("trace"))
            .map(|x| {
                (
                    x.key.to_owned(),
                    String::from_utf8_lossy(x.value.unwrap()).into_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn tracestate_goes_with_the_traceparent_it_came_with() {
        const OWN: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        const CALLER: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let e = parse_event(
            json!({"type": "T", "headers": {"traceparent": OWN, "tracestate": "own=1"}, "payload": {}}),
            None,
            None,
        )
        .unwrap();
        // The event's own pair travels together.
        assert_eq!(
            trace_pairs(&record_headers(&e, None, None)),
            [
                ("traceparent".to_owned(), OWN.to_owned()),
                ("tracestate".to_owned(), "own=1".to_owned())
            ]
        );
        // The caller's pair wins; the event's own list is not mixed in.
        assert_eq!(
            trace_pairs(&record_headers(&e, Some(CALLER), Some("caller=2"))),
            [
                ("traceparent".to_owned(), CALLER.to_owned()),
                ("tracestate".to_owned(), "caller=2".to_owned())
            ]
        );
        assert_eq!(
            trace_pairs(&record_headers(&e, Some(CALLER), None)),
            [("traceparent".to_owned(), CALLER.to_owned())]
        );
        // An own list that is invalid, or without a valid traceparent, is dropped.
        for headers in [
            json!({"traceparent": OWN, "tracestate": "Bad List"}),
            json!({"traceparent": "00-bad-01", "tracestate": "own=1"}),
            json!({"tracestate": "own=1"}),
        ] {
            let e = parse_event(
                json!({"type": "T", "headers": headers, "payload": {}}),
                None,
                None,
            )
            .unwrap();
            let pairs = trace_pairs(&record_headers(&e, None, None));
            assert!(pairs.iter().all(|(k, _)| k != "tracestate"), "{pairs:?}");
        }
    }

    #[test]
    fn envelopes_and_bare_payloads() {
        let e = parse_event(
            json!({"type": "OrderPlaced", "key": 7, "headers": {"x-a": "1"}, "payload": {"order_id": "o-1"}}),
            None,
            Some("/order_id"),
        )
        .unwrap();
        assert_eq!(e.event_type, "OrderPlaced");
        assert_eq!(e.key.as_deref(), Some("7"), "the envelope's key wins");
        assert_eq!(e.headers["x-a"], "1");
        let bare = parse_event(
            json!({"order_id": "o-2", "payload": 1, "extra": true}),
            Some("OrderPlaced"),
            Some("/order_id"),
        )
        .unwrap();
        assert_eq!(bare.key.as_deref(), Some("o-2"));
        assert_eq!(
            bare.payload["payload"],
            json!(1),
            "not an envelope: other keys"
        );
        let typed = parse_event(json!({"payload": {"a": 1}}), Some("T"), None).unwrap();
        assert_eq!(typed.event_type, "T");
        assert_eq!(typed.payload, json!({"a": 1}));
    }

    #[test]
    fn envelope_errors_say_what_is_wrong() {
        let err = |v: Value, t: Option<&str>, k: Option<&str>| {
            parse_event(v, t, k).unwrap_err().to_string()
        };
        assert!(err(json!({"order_id": "o"}), None, None).contains("expected an envelope"));
        assert!(err(json!({"payload": {}}), None, None).contains("no `type`"));
        assert!(err(json!({"type": 3, "payload": {}}), None, None).contains("`type` must be"));
        assert!(err(json!({"type": "T", "payload": []}), None, None).contains("JSON object"));
        assert!(
            err(
                json!({"type": "T", "headers": {"h": 1}, "payload": {}}),
                None,
                None
            )
            .contains("header `h`")
        );
        assert!(err(json!({"a": 1}), Some("T"), Some("/id")).contains("/id is not in"));
        assert_eq!(
            parse_event(json!([]), Some("T"), None).unwrap_err().code(),
            "SF-INGEST-001"
        );
    }

    #[test]
    fn schemas_fit_the_topics_subjects_json_lists_with_any_prefix() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas");
        let schemas = EventSchemas::load(&dir).unwrap();
        let placed = schemas.get("OrderPlaced").unwrap();
        assert!(schema_fits_topic(placed, "orders.events"));
        assert!(schema_fits_topic(placed, "staging.orders.events"));
        assert!(!schema_fits_topic(placed, "travel.events"));
        assert!(!schema_fits_topic(placed, "myorders.events"));
        let command = schemas.get("Command").unwrap();
        assert!(schema_fits_topic(command, "dev.sagaflow.commands.payment"));
        assert!(!schema_fits_topic(command, "orders.events"));
        assert_eq!(
            schemas.types_for("orders.events"),
            ["OrderCancelled", "OrderCheckedOut", "OrderPlaced"]
        );
    }

    #[test]
    fn headers_carry_type_and_trace_context() {
        let e = parse_event(
            json!({"type": "T", "headers": {"sagaflow-type": "Other", "traceparent": "old", "x": "y"}, "payload": {}}),
            None,
            None,
        )
        .unwrap();
        let h = record_headers(&e, Some("00-abc-def-01"), None);
        let pairs: Vec<(String, String)> = h
            .iter()
            .map(|x| {
                (
                    x.key.to_owned(),
                    String::from_utf8_lossy(x.value.unwrap()).into_owned(),
                )
            })
            .collect();
        assert_eq!(
            pairs,
            [
                ("x".into(), "y".into()),
                ("sagaflow-type".into(), "T".into()),
                ("traceparent".into(), "00-abc-def-01".into())
            ]
        );
    }

    #[test]
    fn sagaflow_headers_are_reserved_in_any_case() {
        for name in ["sagaflow-message-id", "Sagaflow-Saga-Id", "SAGAFLOW-TYPE"] {
            assert!(is_reserved_header(name), "{name}");
        }
        for name in ["sagaflow", "x-sagaflow-id", "traceparent", "s"] {
            assert!(!is_reserved_header(name), "{name}");
        }
        let forged = parse_event(
            json!({"type": "T", "headers": {"x": "1", "sagaflow-message-id": "m-1"}, "payload": {}}),
            None,
            None,
        )
        .unwrap();
        let e = check_headers(&forged).unwrap_err();
        assert_eq!(e, IngestError::ReservedHeader("sagaflow-message-id".into()));
        assert_eq!(e.code(), "SF-INGEST-006");
    }

    #[test]
    fn a_malformed_traceparent_is_replaced_never_forwarded() {
        let bad = "00-not-a-trace-01";
        let fresh = caller_traceparent(Some(bad)).unwrap();
        assert_ne!(fresh, bad);
        assert!(TraceContext::parse(&fresh).is_some(), "{fresh}");
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(caller_traceparent(Some(good)).as_deref(), Some(good));
        assert_eq!(caller_traceparent(None), None);
        let e = parse_event(
            json!({"type": "T", "headers": {"traceparent": bad}, "payload": {}}),
            None,
            None,
        )
        .unwrap();
        let sent: Vec<String> = record_headers(&e, None, None)
            .iter()
            .filter(|h| h.key == "traceparent")
            .map(|h| String::from_utf8_lossy(h.value.unwrap()).into_owned())
            .collect();
        assert_eq!(sent.len(), 1);
        assert_ne!(sent[0], bad);
        assert!(TraceContext::parse(&sent[0]).is_some());
    }
}
