//! The orchestrator's HTTP API: health, metrics, saga queries, operator
//! requests, and the synchronous facade (one request in, one response out).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rdkafka::producer::FutureRecord;
use sagaflow_bus::Producer;
use sagaflow_bus::{TopicNames, TraceHeaders};
use sagaflow_codec::Codec;
use sagaflow_engine::{Engine, TriggerEvent};
use sagaflow_http::{BearerToken, Refusal};
use serde_json::{Value, json};

use crate::events::EventSchemas;
use crate::handoff::Starts;
use crate::ingest::{self, IngestError, IngestEvent};
use crate::metrics::Metrics;
use crate::runtime::send_envelope;
use crate::view::SagaView;
use crate::wire::Envelope;

/// The OpenAPI 3 description of this router (docs/openapi.json), served
/// at `/v1/openapi.json` under the same token rule as the rest of `/v1`.
pub const OPENAPI: &str = include_str!("../../../docs/openapi.json");

/// Longest wait the synchronous facade accepts.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// Most events one ingest request may carry.
const MAX_BATCH: usize = 1000;

#[derive(Clone)]
pub struct ApiState {
    pub engine: Arc<Engine>,
    pub view: SagaView,
    pub metrics: Metrics,
    pub producer: Producer,
    /// Where saga starts go: this instance's driver when it owns the
    /// saga's partition, else `sagaflow.inputs`.
    pub starts: Starts,
    pub names: TopicNames,
    pub ready: Arc<AtomicBool>,
    /// Bearer token required on `/v1/*`; `None` leaves the API open (only
    /// on loopback, or with `http.open: true`).
    pub token: Option<BearerToken>,
    /// Encodes ingested events.
    pub codec: Arc<Codec>,
    /// Schemas of domain events, by type.
    pub schemas: Arc<EventSchemas>,
    /// Event types the ingest accepts, by topic (without prefix).
    pub ingest: Arc<BTreeMap<String, BTreeSet<String>>>,
}

pub fn router(state: ApiState) -> Router {
    let mut api = Router::new()
        .route("/v1/sagas", get(list))
        .route("/v1/sagas/{id_or_type}", get(show).post(start))
        .route("/v1/sagas/{id}/retry", post(retry))
        .route("/v1/sagas/{id}/abort", post(abort))
        .route("/v1/events/{topic}", post(ingest_events))
        .route("/v1/openapi.json", get(openapi));
    if let Some(token) = state.token.clone() {
        api = sagaflow_http::require_bearer(api, token, render_refusal);
    }
    let (view, metrics) = (state.view.clone(), state.metrics.clone());
    let probes = sagaflow_http::Probes {
        ready: state.ready.clone(),
        answers: sagaflow_http::ProbeAnswers {
            healthy: "ok",
            ready: "ready",
            not_ready: "not ready",
        },
        // The oldest running saga's age is computed when it is asked for.
        metrics: Arc::new(move || {
            view.update_oldest_age(sagaflow_bus::now_ms() as i64);
            Ok(metrics.render())
        }),
    };
    probes.routes().merge(api).with_state(state)
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({ "error": { "code": code, "message": message.into() } })),
    )
        .into_response()
}

/// Why the API refuses a request: each kind states its code once; the
/// JSON body carries the code and the message after it
/// (`{"error": {"code": "SF-API-404", "message": "no saga `x` is known"}}`).
#[derive(Debug, thiserror::Error, sagaflow_codes::Coded)]
enum ApiError {
    #[error("SF-API-400: {0}")]
    BadRequest(String),
    #[error("SF-API-401: {0}")]
    Unauthorized(String),
    #[error("SF-API-404: {0}")]
    NotFound(String),
    #[error("SF-API-408: {0}")]
    BodyTimeout(String),
    #[error("SF-API-413: {0}")]
    TooLarge(String),
    #[error("SF-API-422: {0}")]
    Unprocessable(String),
    #[error("SF-API-503: {0}")]
    Unavailable(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        let code = self.code();
        let (Self::BadRequest(message)
        | Self::Unauthorized(message)
        | Self::NotFound(message)
        | Self::BodyTimeout(message)
        | Self::TooLarge(message)
        | Self::Unprocessable(message)
        | Self::Unavailable(message)) = self;
        error(status, code, message)
    }
}

/// The API's answer to a request the server layer refuses (no token, a
/// body too large or too slow).
pub fn render_refusal(refusal: &Refusal) -> Response {
    let message = refusal.to_string();
    match refusal {
        Refusal::Unauthorized => ApiError::Unauthorized(message),
        Refusal::BodyTimeout(_) => ApiError::BodyTimeout(message),
        Refusal::TooLarge { .. } => ApiError::TooLarge(message),
        Refusal::BodyUnreadable => ApiError::BadRequest(message),
    }
    .into_response()
}

/// Refuses a request that carries a `sagaflow-*` header: Sagaflow sets
/// those itself (see [`ingest::is_reserved_header`]).
fn reserved_header(headers: &HeaderMap) -> Option<Response> {
    let name = headers
        .keys()
        .find(|k| ingest::is_reserved_header(k.as_str()))?;
    let e = IngestError::ReservedHeader(name.as_str().to_owned());
    Some(error(StatusCode::BAD_REQUEST, e.code(), e.to_string()))
}

/// An error message fit for a caller: URLs (the registry's, a broker's)
/// are replaced by `<internal>`; the full message goes to the log.
fn without_addresses(message: &str) -> String {
    message
        .split(' ')
        .map(|w| {
            if w.contains("://") || looks_like_host_port(w) {
                "<internal>"
            } else {
                w
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `10.0.0.5:8081`, `(127.0.0.1:9092)`, `registry:8081`.
fn looks_like_host_port(word: &str) -> bool {
    let w = word.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    match w.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        }
        None => false,
    }
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn list(State(s): State<ApiState>, Query(q): Query<HashMap<String, String>>) -> Response {
    let limit = q
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(100usize)
        .min(1000);
    let sagas = s.view.list(
        q.get("type").map(String::as_str),
        q.get("status").map(String::as_str),
        limit,
    );
    Json(json!({ "sagas": sagas })).into_response()
}

async fn show(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
    match s.view.get(&id) {
        Some(saga) => Json(saga).into_response(),
        None => ApiError::NotFound(format!("no saga `{id}` is known")).into_response(),
    }
}

async fn operator(s: &ApiState, id: &str, abort: Option<String>) -> Response {
    if s.view.get(id).is_none() {
        return ApiError::NotFound(format!("no saga `{id}` is known")).into_response();
    }
    let request_id = uuid::Uuid::new_v4().to_string();
    let env = match abort {
        Some(reason) => Envelope::Abort {
            saga_id: id.to_owned(),
            request_id: request_id.clone(),
            reason,
        },
        None => Envelope::Retry {
            saga_id: id.to_owned(),
            request_id: request_id.clone(),
        },
    };
    match send_envelope(&s.producer, &s.names, &env, TraceHeaders::default()).await {
        Ok(()) => (
            StatusCode::ACCEPTED,
            Json(json!({ "saga_id": id, "request_id": request_id, "status_url": format!("/v1/sagas/{id}") })),
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "an operator request was not acknowledged by the broker");
            ApiError::Unavailable(format!("could not queue the request: {}", without_addresses(&e))).into_response()
        }
    }
}

async fn retry(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
    operator(&s, &id, None).await
}

async fn abort(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    body: Option<Json<Value>>,
) -> Response {
    let reason = body
        .and_then(|Json(b)| b.get("reason").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| "aborted by an operator".to_owned());
    operator(&s, &id, Some(reason)).await
}

/// `POST /v1/sagas/{type}?wait=5s`: starts a saga from the JSON body (the
/// trigger event's payload) and waits for its result. An `Idempotency-Key`
/// header makes a retried request join the same saga.
async fn start(
    State(s): State<ApiState>,
    Path(saga_type): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Option<Json<Value>>,
) -> Response {
    if let Some(refused) = reserved_header(&headers) {
        return refused;
    }
    let Some(Json(payload)) = body else {
        return ApiError::BadRequest(
            "the body must be a JSON object: the trigger event".to_owned(),
        )
        .into_response();
    };
    let Some(def) = s.engine.registry().latest(&saga_type) else {
        let known: Vec<&str> = s
            .engine
            .registry()
            .iter()
            .map(|d| d.saga_type.as_str())
            .collect();
        return ApiError::NotFound(format!(
            "no saga type `{saga_type}`; known: {}",
            known.join(", ")
        ))
        .into_response();
    };
    let wait = match q.get("wait").map(|w| humantime::parse_duration(w)) {
        None => Duration::from_secs(10),
        Some(Ok(d)) => d.min(MAX_WAIT),
        Some(Err(e)) => {
            return ApiError::BadRequest(format!("`wait` is not a duration: {e}")).into_response();
        }
    };
    let message_id = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(|k| format!("http/{saga_type}/{k}"))
        .unwrap_or_else(|| format!("http/{}", uuid::Uuid::new_v4()));
    // The trigger is checked against its schema exactly as the ingest
    // checks an event for the trigger's topic.
    let event = IngestEvent {
        event_type: def.trigger.event_type.clone(),
        key: None,
        headers: BTreeMap::new(),
        payload,
    };
    let full = s.names.prefix.clone() + &def.trigger.topic;
    if let Err(e) = ingest::validate(&s.codec, &s.schemas, &full, &event) {
        let status = match e {
            IngestError::Encode(_) => StatusCode::INTERNAL_SERVER_ERROR,
            IngestError::UnknownType { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::BAD_REQUEST,
        };
        return error(status, e.code(), e.to_string());
    }
    let trigger = TriggerEvent {
        message_id,
        topic: def.trigger.topic.clone(),
        event_type: def.trigger.event_type.clone(),
        payload: event.payload,
    };
    let saga_id = match s.engine.identify(&saga_type, &trigger) {
        Ok((id, _)) => id,
        Err(e) => {
            return ApiError::Unprocessable(e.to_string()).into_response();
        }
    };
    let env = Envelope::Trigger {
        saga_type,
        saga_id: saga_id.clone(),
        event: trigger,
    };
    // A caller's trace context continues into the saga; an invalid one is
    // replaced by a fresh trace.
    let started = s
        .starts
        .start(&s.producer, &s.names, env, caller_trace(&headers))
        .await;
    if let Err(e) = started {
        tracing::warn!(error = %e, "a saga start was not acknowledged by the broker");
        return ApiError::Unavailable(format!(
            "could not start the saga: {}",
            without_addresses(&e)
        ))
        .into_response();
    }
    let status_url = format!("/v1/sagas/{saga_id}");
    match s.view.wait_for_result(&saga_id, wait).await {
        Some(done) => {
            let result = done.result.as_ref();
            Json(json!({
                "saga_id": saga_id,
                "status": done.status,
                "output": result.map(|r| r.output.clone()),
                "error": result.and_then(|r| r.error.clone()),
                "status_url": status_url,
            }))
            .into_response()
        }
        None => (
            StatusCode::ACCEPTED,
            [(header::LOCATION, status_url.clone())],
            Json(json!({ "saga_id": saga_id, "status": "running", "status_url": status_url })),
        )
            .into_response(),
    }
}

/// `POST /v1/events/{topic}`: publishes one event (an envelope object) or a
/// batch (an array of envelopes) to a domain topic of the loaded sagas,
/// encoded with the type's schema. Nothing is published unless every event
/// of the request is valid; 202 once the broker acknowledged all of them.
async fn ingest_events(
    State(s): State<ApiState>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = reserved_header(&headers) {
        return refused;
    }
    // Definitions name topics without the deployment's prefix; accept both.
    let bare = topic
        .strip_prefix(s.names.prefix.as_str())
        .filter(|_| !s.names.prefix.is_empty())
        .unwrap_or(&topic)
        .to_owned();
    let count = |label: &str, outcome: &str, n: usize| {
        s.metrics
            .ingest_events
            .with_label_values(&[label, outcome])
            .inc_by(n as u64);
    };
    let Some(known) = s.ingest.get(&bare) else {
        count("other", "unknown_topic", 1);
        let topics: Vec<&str> = s.ingest.keys().map(String::as_str).collect();
        return ApiError::NotFound(format!(
            "topic `{bare}` is not read or written by any loaded saga; known: {}",
            topics.join(", ")
        ))
        .into_response();
    };
    let parsed: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            count(&bare, "invalid", 1);
            return ApiError::BadRequest(format!(
                "the body is not JSON (line {}, column {}): {e}",
                e.line(),
                e.column()
            ))
            .into_response();
        }
    };
    let (batch, items) = match parsed {
        Value::Array(items) => (true, items),
        other => (false, vec![other]),
    };
    if items.is_empty() || items.len() > MAX_BATCH {
        count(&bare, "invalid", 1);
        return ApiError::BadRequest(format!(
            "a batch holds 1 to {MAX_BATCH} events, this one {}",
            items.len()
        ))
        .into_response();
    }
    let n = items.len();
    let full = s.names.prefix.clone() + &bare;
    let at = |i: usize| {
        if batch {
            format!("event [{i}]: ")
        } else {
            String::new()
        }
    };
    let mut encoded: Vec<(IngestEvent, Vec<u8>)> = Vec::with_capacity(n);
    for (i, item) in items.into_iter().enumerate() {
        let result = match ingest::parse_event(item, None, None)
            .and_then(|e| ingest::check_headers(&e).map(|()| e))
        {
            Ok(event) if !known.contains(&event.event_type) => Err(IngestError::UnknownType {
                event_type: event.event_type,
                topic: bare.clone(),
                known: known.iter().cloned().collect::<Vec<_>>().join(", "),
            }),
            Ok(event)
                if matches!(
                    s.codec.config().format(&full),
                    Some(sagaflow_codec::TopicFormat::Avro { .. })
                ) && s.schemas.get(&event.event_type).is_none() =>
            {
                Err(IngestError::Encode(format!(
                    "no Avro schema for `{}`: set `schemas:` in the orchestrator config to a directory holding it",
                    event.event_type
                )))
            }
            Ok(event) => ingest::encode(&s.codec, &s.schemas, &full, &event)
                .await
                .map(|bytes| (event, bytes)),
            Err(e) => Err(e),
        };
        match result {
            Ok(ok) => encoded.push(ok),
            Err(e) => {
                let (status, outcome) = match &e {
                    IngestError::UnknownType { .. } => (StatusCode::NOT_FOUND, "unknown_type"),
                    IngestError::RegistryUnreachable(_) => {
                        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
                    }
                    IngestError::Encode(_) => (StatusCode::INTERNAL_SERVER_ERROR, "invalid"),
                    IngestError::Envelope(_)
                    | IngestError::Mismatch { .. }
                    | IngestError::ReservedHeader(_) => (StatusCode::BAD_REQUEST, "invalid"),
                };
                count(&bare, outcome, n);
                if matches!(
                    e,
                    IngestError::RegistryUnreachable(_) | IngestError::Encode(_)
                ) {
                    tracing::warn!(topic = %full, error = %e, "ingested event not encoded");
                }
                return error(
                    status,
                    e.code(),
                    format!("{}{}", at(i), without_addresses(&e.to_string())),
                );
            }
        }
    }
    let trace = caller_trace(&headers);
    let sends = encoded.iter().map(|(event, bytes)| {
        let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&full)
            .payload(bytes.as_slice())
            .headers(ingest::record_headers(
                event,
                trace.traceparent.as_deref(),
                trace.tracestate.as_deref(),
            ));
        if let Some(k) = event.key.as_deref() {
            record = record.key(k);
        }
        // Delivery is bounded by the producer's `message.timeout.ms`.
        s.producer.send(record, Duration::from_secs(5))
    });
    let mut delivered = Vec::with_capacity(n);
    let mut failed = None;
    for (i, r) in futures::future::join_all(sends)
        .await
        .into_iter()
        .enumerate()
    {
        match r {
            Ok(d) => delivered.push(json!({"partition": d.partition, "offset": d.offset})),
            Err((e, _)) => {
                failed.get_or_insert((i, e));
            }
        }
    }
    if let Some((i, e)) = failed {
        count(&bare, "accepted", delivered.len());
        count(&bare, "unavailable", n - delivered.len());
        tracing::warn!(topic = %full, error = %e, "ingested events not acknowledged by the broker");
        return ApiError::Unavailable(format!(
            "{}{} of {n} events not acknowledged by the broker: {}",
            at(i),
            n - delivered.len(),
            without_addresses(&e.to_string())
        ))
        .into_response();
    }
    count(&bare, "accepted", n);
    let answer = if batch {
        json!({ "topic": full, "events": delivered })
    } else {
        let mut one = delivered.pop().unwrap_or_default();
        one["topic"] = json!(full);
        one
    };
    (StatusCode::ACCEPTED, Json(answer)).into_response()
}

/// A caller's W3C trace context from its request headers, as it is carried
/// on ([`TraceHeaders::from_caller`]): `traceparent`, and `tracestate`,
/// whose repeated headers are one list joined with commas (W3C).
fn caller_trace(headers: &HeaderMap) -> TraceHeaders {
    let traceparent = headers
        .get("traceparent")
        .map(|v| v.to_str().unwrap_or_default());
    let states: Vec<&str> = headers
        .get_all("tracestate")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let tracestate = (!states.is_empty()).then(|| states.join(","));
    TraceHeaders::from_caller(traceparent, tracestate.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_callers_tracestate_headers_are_one_list_next_to_its_traceparent() {
        const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut h = HeaderMap::new();
        h.insert("traceparent", TP.parse().unwrap());
        h.append("tracestate", "rojo=1".parse().unwrap());
        h.append("tracestate", "congo=2".parse().unwrap());
        let trace = caller_trace(&h);
        assert_eq!(trace.traceparent.as_deref(), Some(TP));
        assert_eq!(trace.tracestate.as_deref(), Some("rojo=1,congo=2"));
        // Without a traceparent the list has no trace to go with.
        h.remove("traceparent");
        assert_eq!(caller_trace(&h), TraceHeaders::default());
    }

    #[test]
    fn caller_errors_show_no_internal_addresses() {
        let m = "SF-CODEC-004: schema registry unreachable: error sending request for url (http://10.1.2.3:8081/subjects/x/versions)";
        let shown = without_addresses(m);
        assert!(!shown.contains("10.1.2.3"), "{shown}");
        assert!(shown.contains("schema registry unreachable"), "{shown}");
        let shown = without_addresses("broker schema-registry:8081 and (127.0.0.1:9092) down");
        assert_eq!(shown, "broker <internal> and <internal> down");
        assert_eq!(
            without_addresses("event [1]: `type` must be a string"),
            "event [1]: `type` must be a string"
        );
    }

    /// `(path, method)` of every `.route(…)` in this file's router.
    /// The routes of this file's router and of the probe routes it merges
    /// (`sagaflow_http::Probes`).
    fn routes_in_source() -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        for source in [
            include_str!("http.rs"),
            include_str!("../../http/src/probes.rs"),
        ] {
            routes_of(source, &mut out);
        }
        out
    }

    fn routes_of(source: &str, out: &mut BTreeSet<(String, String)>) {
        let source = source
            .find("#[cfg(test)]")
            .map_or(source, |end| &source[..end]);
        // rustfmt may break a call over lines: read the code as one line.
        let source = source
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .replace(".route( \"", ".route(\"");
        for chunk in source.split(".route(\"").skip(1) {
            let (path, rest) = chunk.split_once('"').unwrap();
            let rest = &rest[..rest
                .find(".route(")
                .or(rest.find(';'))
                .unwrap_or(rest.len())];
            for method in ["get", "post", "put", "patch", "delete"] {
                let found = rest
                    .match_indices(&format!("{method}("))
                    .any(|(i, _)| i == 0 || !rest.as_bytes()[i - 1].is_ascii_alphanumeric());
                if found {
                    out.insert((path.to_owned(), method.to_owned()));
                }
            }
        }
    }

    #[test]
    fn openapi_document_describes_exactly_the_routes_served() {
        let served = routes_in_source();
        assert!(
            served.contains(&("/healthz".to_owned(), "get".to_owned()))
                && served.contains(&("/v1/sagas/{id_or_type}".to_owned(), "post".to_owned())),
            "the route scan is broken: {served:?}"
        );
        let doc: Value = serde_json::from_str(OPENAPI).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                if method != "parameters" && method != "summary" && method != "description" {
                    documented.insert((path.clone(), method.clone()));
                }
            }
        }
        let undocumented: Vec<_> = served.difference(&documented).collect();
        let not_served: Vec<_> = documented.difference(&served).collect();
        assert!(
            undocumented.is_empty() && not_served.is_empty(),
            "docs/openapi.json drifted from the router: served but not documented {undocumented:?}, documented but not served {not_served:?}"
        );
    }

    #[test]
    fn refusals_carry_api_codes_and_no_token() {
        let r = render_refusal(&Refusal::TooLarge { limit: 10 });
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let r = render_refusal(&Refusal::Unauthorized);
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
}
