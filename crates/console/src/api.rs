//! The console's HTTP API (`/api/*`, JSON) and the web UI (`/`, plain
//! HTML/JS/CSS compiled into the binary; nothing loads from elsewhere).
//!
//! Access: reads want the read-only or the operator token (or nothing when
//! no read token is configured: loopback only, unless `http.open`);
//! everything that changes a saga or a topic wants the operator token, and
//! is refused outright when none is configured (read-only mode).

use sagaflow_bus::now_ms;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use sagaflow_bus::Producer;
use sagaflow_codec::Codec;
use sagaflow_http::{BearerToken, Refusal};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::ConsoleError;
use crate::follow::Progress;
use crate::store::{AuditLine, DeadLetter, Filter, Store};

const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const STYLE_CSS: &str = include_str!("../assets/style.css");

/// Most sagas one bulk operation acts on; a larger match is refused with
/// its count, so the operator narrows the filter first.
pub const MAX_BULK: i64 = 10_000;
/// Most dead letters one redrive request names.
pub const MAX_REDRIVE: usize = 1_000;

/// The orchestrator API retry and abort go through.
#[derive(Clone)]
pub struct Orchestrator {
    pub url: String,
    /// Its bearer token (never logged: this type has no `Debug`).
    pub token: Option<String>,
    pub client: reqwest::Client,
}

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<Store>,
    pub codec: Arc<Codec>,
    pub producer: Producer,
    pub read_token: Option<BearerToken>,
    pub operator_token: Option<BearerToken>,
    pub orchestrator: Option<Orchestrator>,
    pub progress: Arc<Progress>,
    /// The definitions page's content (empty without `sagas`).
    pub definitions: Arc<Vec<crate::definitions::DefinitionView>>,
}

/// What a request may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Nobody,
    Reader,
    Operator,
}

impl ApiState {
    fn role(&self, headers: &HeaderMap) -> Role {
        let presented = headers
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes())
            .and_then(|v| v.strip_prefix(b"Bearer "));
        if let (Some(p), Some(t)) = (presented, &self.operator_token)
            && t.matches(p)
        {
            return Role::Operator;
        }
        match (&self.read_token, presented) {
            (None, _) => Role::Reader,
            (Some(t), Some(p)) if t.matches(p) => Role::Reader,
            _ => Role::Nobody,
        }
    }

    fn require(&self, headers: &HeaderMap, need: Role) -> Result<(), Box<Response>> {
        if need == Role::Operator && self.operator_token.is_none() {
            return Err(Box::new(error(
                StatusCode::FORBIDDEN,
                "SF-CON-403",
                "the console is read-only: no operator token is configured (`http.operator-token-env`)",
            )));
        }
        let role = self.role(headers);
        if role >= need {
            return Ok(());
        }
        if role == Role::Nobody {
            return Err(Box::new(error(
                StatusCode::UNAUTHORIZED,
                "SF-CON-401",
                "a valid bearer token is required (`Authorization: Bearer <token>`)",
            )));
        }
        Err(Box::new(error(
            StatusCode::FORBIDDEN,
            "SF-CON-403",
            "this needs the operator token; the token given only reads",
        )))
    }
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({ "error": { "code": code, "message": message.into() } })),
    )
        .into_response()
}

fn console_error(e: &ConsoleError) -> Response {
    let status = match e {
        ConsoleError::Filter(_) => StatusCode::BAD_REQUEST,
        ConsoleError::Orchestrator(_) | ConsoleError::Kafka(_) => StatusCode::BAD_GATEWAY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e.code(), e.to_string())
}

/// The answer to a request the server layer refuses.
pub fn render_refusal(refusal: &Refusal) -> Response {
    let code = match refusal {
        Refusal::Unauthorized => "SF-CON-401",
        Refusal::BodyTimeout(_) => "SF-CON-408",
        Refusal::TooLarge { .. } => "SF-CON-413",
        _ => "SF-CON-400",
    };
    error(refusal.status(), code, refusal.to_string())
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The console's routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/api/whoami", get(whoami))
        .route("/api/overview", get(overview))
        .route("/api/sagas", get(search))
        .route("/api/sagas/{id}", get(saga))
        .route("/api/sagas/{id}/retry", post(retry))
        .route("/api/sagas/{id}/abort", post(abort))
        .route("/api/bulk/{action}", post(bulk))
        .route("/api/dead-letters", get(dead_letters))
        .route("/api/dead-letters/redrive", post(redrive))
        .route("/api/dead-letters/{id}", get(dead_letter))
        .route("/api/audit", get(audit))
        .route("/api/definitions", get(definitions))
        .with_state(state)
}

async fn whoami(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    let role = match s.role(&headers) {
        Role::Nobody => "none",
        Role::Reader => "reader",
        Role::Operator => "operator",
    };
    Json(json!({
        "role": role,
        "token_required": s.read_token.is_some(),
        "read_only": s.operator_token.is_none(),
        "can_operate": s.orchestrator.is_some(),
    }))
    .into_response()
}

async fn overview(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    if let Err(r) = s.require(&headers, Role::Reader) {
        return *r;
    }
    match s.store.overview(now_ms() as i64).await {
        Ok(o) => {
            let mut v = serde_json::to_value(o).unwrap_or_default();
            v["indexed_records"] = json!(
                s.progress
                    .records
                    .load(std::sync::atomic::Ordering::Relaxed)
            );
            Json(v).into_response()
        }
        Err(e) => console_error(&e),
    }
}

async fn search(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    if let Err(r) = s.require(&headers, Role::Reader) {
        return *r;
    }
    let (filter, page) = match Filter::from_query(&q) {
        Ok(x) => x,
        Err(e) => return console_error(&e),
    };
    let started = std::time::Instant::now();
    let result = s.store.search(&filter, &page).await;
    match result {
        Ok(p) => {
            let mut v = serde_json::to_value(p).unwrap_or_default();
            v["took_ms"] = json!(started.elapsed().as_secs_f64() * 1000.0);
            Json(v).into_response()
        }
        Err(e) => console_error(&e),
    }
}

async fn saga(State(s): State<ApiState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(r) = s.require(&headers, Role::Reader) {
        return *r;
    }
    match s.store.saga(&id).await {
        Ok(Some(d)) => {
            let diagram = crate::api::diagram(&d);
            let mut v = serde_json::to_value(d).unwrap_or_default();
            v["diagram_svg"] = json!(diagram);
            Json(v).into_response()
        }
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            "SF-CON-404",
            format!("no saga `{id}` in the history"),
        ),
        Err(e) => console_error(&e),
    }
}

/// The body of operator requests.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct OperatorBody {
    /// Who asks (free text for the audit log, e.g. a name).
    actor: Option<String>,
    reason: Option<String>,
    dry_run: bool,
    ids: Vec<i64>,
}

fn parse_body(body: &Bytes) -> Result<OperatorBody, Box<Response>> {
    if body.is_empty() {
        return Ok(OperatorBody::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            "SF-CON-400",
            format!("the body must be a JSON object with actor, reason, dry_run or ids: {e}"),
        ))
    })
}

fn who(b: &OperatorBody) -> String {
    let actor: String = b
        .actor
        .as_deref()
        .unwrap_or("operator")
        .chars()
        .filter(|c| !c.is_control())
        .take(64)
        .collect();
    format!("{actor} (operator token)")
}

impl Orchestrator {
    /// `POST /v1/sagas/{id}/{action}`.
    async fn send(&self, id: &str, action: &str, reason: Option<&str>) -> Result<(), String> {
        let url = format!("{}/v1/sagas/{}/{action}", self.url, percent_encode(id));
        let mut req = self
            .client
            .post(url)
            .timeout(Duration::from_secs(10))
            .json(&json!({ "reason": reason.unwrap_or("aborted from the console") }));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| {
            // Never echo the URL's credentials or the token: reqwest's
            // message names only the URL we built.
            format!("cannot reach the orchestrator: {}", e.without_url())
        })?;
        if resp.status().is_success() {
            return Ok(());
        }
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        Err(format!(
            "{status}: {}",
            body["error"]["message"].as_str().unwrap_or("no message")
        ))
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~:".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn one_saga(
    s: &ApiState,
    headers: &HeaderMap,
    id: &str,
    action: &str,
    body: &Bytes,
) -> Response {
    if let Err(r) = s.require(headers, Role::Operator) {
        return *r;
    }
    let b = match parse_body(body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let Some(o) = &s.orchestrator else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "SF-CON-503",
            "no orchestrator API is configured (`orchestrator.url`)",
        );
    };
    let result = o.send(id, action, b.reason.as_deref()).await;
    let line = AuditLine {
        id: 0,
        at: now_ms() as i64,
        who: who(&b),
        action: action.to_owned(),
        filter: format!("id={id}"),
        matched: 1,
        succeeded: i64::from(result.is_ok()),
        failed: i64::from(result.is_err()),
    };
    if let Err(e) = s.store.audit(&line).await {
        return console_error(&e);
    }
    match result {
        Ok(()) => (
            StatusCode::ACCEPTED,
            Json(json!({ "saga_id": id, "action": action, "accepted": true })),
        )
            .into_response(),
        Err(e) => console_error(&ConsoleError::Orchestrator(e)),
    }
}

async fn retry(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    one_saga(&s, &headers, &id, "retry", &body).await
}

async fn abort(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    one_saga(&s, &headers, &id, "abort", &body).await
}

/// `POST /api/bulk/{retry|abort}?<search filter>` with
/// `{"dry_run": true}` answers how many sagas match; without it, sends the
/// request for each and writes one audit line.
async fn bulk(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(action): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
    body: Bytes,
) -> Response {
    if action != "retry" && action != "abort" {
        return error(
            StatusCode::NOT_FOUND,
            "SF-CON-404",
            format!("unknown bulk action `{action}` (retry, abort)"),
        );
    }
    if let Err(r) = s.require(&headers, Role::Operator) {
        return *r;
    }
    let b = match parse_body(&body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let (filter, _) = match Filter::from_query(&q) {
        Ok(x) => x,
        Err(e) => return console_error(&e),
    };
    let described = serde_json::to_string(&filter).unwrap_or_default();
    let matched = match s.store.count(&filter).await {
        Ok(n) => n,
        Err(e) => return console_error(&e),
    };
    if b.dry_run {
        return Json(
            json!({ "action": action, "dry_run": true, "matched": matched, "filter": filter }),
        )
        .into_response();
    }
    if matched > MAX_BULK {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "SF-CON-422",
            format!(
                "{matched} sagas match; one bulk operation acts on at most {MAX_BULK}: narrow the filter"
            ),
        );
    }
    let Some(o) = &s.orchestrator else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "SF-CON-503",
            "no orchestrator API is configured (`orchestrator.url`)",
        );
    };
    let ids = match s.store.ids(&filter, MAX_BULK).await {
        Ok(ids) => ids,
        Err(e) => return console_error(&e),
    };
    let (mut ok, mut failed, mut errors) = (0i64, 0i64, Vec::new());
    for id in &ids {
        match o.send(id, &action, b.reason.as_deref()).await {
            Ok(()) => ok += 1,
            Err(e) => {
                failed += 1;
                if errors.len() < 10 {
                    errors.push(json!({ "saga_id": id, "error": e }));
                }
            }
        }
    }
    let line = AuditLine {
        id: 0,
        at: now_ms() as i64,
        who: who(&b),
        action: format!("bulk-{action}"),
        filter: described,
        matched: ids.len() as i64,
        succeeded: ok,
        failed,
    };
    if let Err(e) = s.store.audit(&line).await {
        return console_error(&e);
    }
    Json(json!({ "action": action, "matched": ids.len(), "succeeded": ok, "failed": failed, "errors": errors })).into_response()
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct DlqQuery {
    open: Option<bool>,
    limit: Option<i64>,
}

async fn dead_letters(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Query(q): Query<DlqQuery>,
) -> Response {
    if let Err(r) = s.require(&headers, Role::Reader) {
        return *r;
    }
    match s
        .store
        .dead_letters(q.open.unwrap_or(false), q.limit.unwrap_or(100))
        .await
    {
        Ok(list) => Json(json!({ "dead_letters": list })).into_response(),
        Err(e) => console_error(&e),
    }
}

/// The payload of a dead letter, decoded as far as possible: Avro through
/// the registry (the source topic's format), JSON, text, or hex.
async fn decode_payload(codec: &Codec, d: &DeadLetter) -> (String, Value) {
    let Some(bytes) = d.raw_value.as_deref() else {
        return ("none".into(), Value::Null);
    };
    if let Some(topic) = &d.source_topic
        && bytes.first() == Some(&0)
        && let Ok(v) = codec.decode_avro_value(topic, bytes).await
        && let Ok(json) = Value::try_from(v.value)
    {
        return ("avro".into(), json);
    }
    if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
        return ("json".into(), v);
    }
    if let Ok(t) = std::str::from_utf8(bytes) {
        return (
            "text".into(),
            Value::String(t.chars().take(16_384).collect()),
        );
    }
    let hex: String = bytes
        .iter()
        .take(4096)
        .map(|b| format!("{b:02x}"))
        .collect();
    ("hex".into(), Value::String(hex))
}

async fn dead_letter(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Response {
    if let Err(r) = s.require(&headers, Role::Reader) {
        return *r;
    }
    match s.store.dead_letter(id).await {
        Ok(Some(d)) => {
            let (format, payload) = decode_payload(&s.codec, &d).await;
            let mut v = serde_json::to_value(&d).unwrap_or_default();
            v["payload_format"] = json!(format);
            v["payload"] = payload;
            Json(v).into_response()
        }
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            "SF-CON-404",
            format!("no dead letter {id}"),
        ),
        Err(e) => console_error(&e),
    }
}

/// `POST /api/dead-letters/redrive` `{"ids": [..]}`: each dead letter's
/// original key, value and headers (without the `sagaflow-dlq-*` ones) go
/// back to its source topic; it is marked redriven; one audit line.
async fn redrive(State(s): State<ApiState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = s.require(&headers, Role::Operator) {
        return *r;
    }
    let b = match parse_body(&body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    if b.ids.is_empty() || b.ids.len() > MAX_REDRIVE {
        return error(
            StatusCode::BAD_REQUEST,
            "SF-CON-400",
            format!("`ids` must name 1 to {MAX_REDRIVE} dead letters"),
        );
    }
    let mut done = Vec::new();
    let mut errors = Vec::new();
    for id in &b.ids {
        let d = match s.store.dead_letter(*id).await {
            Ok(Some(d)) => d,
            Ok(None) => {
                errors.push(json!({ "id": id, "error": "no such dead letter" }));
                continue;
            }
            Err(e) => return console_error(&e),
        };
        let Some(topic) = d.source_topic.clone() else {
            errors.push(json!({ "id": id, "error": "the dead letter names no source topic" }));
            continue;
        };
        let mut h = OwnedHeaders::new();
        for (k, v) in &d.headers {
            if !k.starts_with("sagaflow-dlq-") {
                h = h.insert(Header {
                    key: k,
                    value: Some(v.as_bytes()),
                });
            }
        }
        let origin = format!("{}/{}/{}", d.topic, d.partition, d.offset);
        h = h.insert(Header {
            key: "sagaflow-redriven-from",
            value: Some(origin.as_bytes()),
        });
        let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&topic).headers(h);
        if let Some(k) = d.raw_key.as_deref() {
            rec = rec.key(k);
        }
        if let Some(v) = d.raw_value.as_deref() {
            rec = rec.payload(v);
        }
        match s.producer.send(rec, Duration::from_secs(10)).await {
            Ok(_) => done.push(*id),
            Err((e, _)) => errors.push(json!({ "id": id, "error": format!("not produced: {e}") })),
        }
    }
    let at = now_ms() as i64;
    let actor = who(&b);
    if let Err(e) = s.store.mark_redriven(&done, &actor, at).await {
        return console_error(&e);
    }
    let line = AuditLine {
        id: 0,
        at,
        who: actor,
        action: "redrive".into(),
        filter: format!("ids={:?}", b.ids),
        matched: b.ids.len() as i64,
        succeeded: done.len() as i64,
        failed: errors.len() as i64,
    };
    if let Err(e) = s.store.audit(&line).await {
        return console_error(&e);
    }
    Json(json!({ "redriven": done, "errors": errors })).into_response()
}

async fn definitions(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    if let Err(r) = s.require(&headers, Role::Reader) {
        return *r;
    }
    Json(json!({ "definitions": s.definitions.as_ref() })).into_response()
}

async fn audit(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    if let Err(r) = s.require(&headers, Role::Reader) {
        return *r;
    }
    match s.store.audit_lines(200).await {
        Ok(lines) => Json(json!({ "audit": lines })).into_response(),
        Err(e) => console_error(&e),
    }
}

// ------------------------------------------------------------------ diagram

/// The state of one step on the saga's diagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StepState {
    Running,
    Succeeded,
    Failed,
    Compensating,
    Compensated,
    CompensationFailed,
}

impl StepState {
    fn class(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Compensating => "compensating",
            Self::Compensated => "compensated",
            Self::CompensationFailed => "compensation-failed",
        }
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The path the saga took, drawn as SVG: one box per step in the order
/// the steps started, coloured by how each ended, the current step
/// outlined, and an arrow back along the compensations.
pub fn diagram(d: &crate::store::SagaDetail) -> String {
    let mut order: Vec<String> = Vec::new();
    let mut state: BTreeMap<String, StepState> = BTreeMap::new();
    for e in &d.events {
        let Some(step) = &e.step else { continue };
        if !order.contains(step) {
            order.push(step.clone());
        }
        let st = match e.kind.as_str() {
            "STEP_STARTED" | "STEP_RETRYING" | "STEP_TIMED_OUT" => StepState::Running,
            "STEP_SUCCEEDED" | "LATE_REPLY" => StepState::Succeeded,
            "STEP_FAILED" => StepState::Failed,
            "COMPENSATION_STEP_STARTED" | "COMPENSATION_STEP_RETRYING" => StepState::Compensating,
            "COMPENSATION_STEP_SUCCEEDED" => StepState::Compensated,
            "COMPENSATION_STEP_FAILED" => StepState::CompensationFailed,
            _ => continue,
        };
        state.insert(step.clone(), st);
    }
    let current = d.saga.current_step.clone();
    let (w, h, gap) = (220, 34, 18);
    let height = 20 + order.len() as i32 * (h + gap) + 20;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="diagram" width="{}" height="{height}" viewBox="0 0 {} {height}" role="img" aria-label="saga diagram">"#,
        w + 80,
        w + 80
    );
    svg.push_str(r#"<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="6" markerHeight="6" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z"/></marker></defs>"#);
    for (i, step) in order.iter().enumerate() {
        let y = 20 + i as i32 * (h + gap);
        let st = state.get(step).copied().unwrap_or(StepState::Running);
        let is_current = current.as_deref() == Some(step.as_str())
            && matches!(
                d.saga.status.as_str(),
                "RUNNING" | "COMPENSATING" | "FAILED"
            );
        svg.push_str(&format!(
            r#"<g class="node {}{}" data-step="{}"><rect x="20" y="{y}" width="{w}" height="{h}" rx="6"/><text x="{}" y="{}" text-anchor="middle">{}</text></g>"#,
            st.class(),
            if is_current { " current" } else { "" },
            xml_escape(step),
            20 + w / 2,
            y + h / 2 + 5,
            xml_escape(step),
        ));
        if i + 1 < order.len() {
            svg.push_str(&format!(
                r#"<line class="edge" x1="{x}" y1="{}" x2="{x}" y2="{}" marker-end="url(#arrow)"/>"#,
                y + h,
                y + h + gap - 2,
                x = 20 + w / 2
            ));
        }
    }
    let compensated: Vec<usize> = order
        .iter()
        .enumerate()
        .filter(|(_, s)| {
            matches!(
                state.get(*s),
                Some(
                    StepState::Compensated
                        | StepState::Compensating
                        | StepState::CompensationFailed
                )
            )
        })
        .map(|(i, _)| i)
        .collect();
    if let (Some(first), Some(_)) = (compensated.first(), compensated.last()) {
        let last_index = order.len().saturating_sub(1);
        let y1 = 20 + last_index as i32 * (h + gap) + h / 2;
        let y2 = 20 + *first as i32 * (h + gap) + h / 2;
        if y1 > y2 {
            svg.push_str(&format!(
                r#"<path class="compensation-edge" d="M {x} {y1} C {c} {y1}, {c} {y2}, {x} {y2}" marker-end="url(#arrow)"/>"#,
                x = 20 + w,
                c = 20 + w + 50,
            ));
        }
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{EventRow, SagaDetail, SagaRow};

    fn event(seq: i64, kind: &str, step: &str) -> EventRow {
        EventRow {
            seq,
            kind: kind.into(),
            step: Some(step.into()),
            attempt: Some(1),
            detail: None,
            at: seq,
            input: None,
            output: None,
            error: None,
        }
    }

    #[test]
    fn the_diagram_shows_the_path_taken_and_the_compensations() {
        let d = SagaDetail {
            saga: SagaRow {
                saga_id: "s".into(),
                saga_type: "t".into(),
                saga_version: 1,
                status: "COMPENSATED".into(),
                started_at: 0,
                updated_at: 0,
                ended_at: Some(9),
                current_step: Some("charge_payment".into()),
                error: None,
                key: None,
            },
            output: None,
            attributes: Default::default(),
            events: vec![
                event(1, "STEP_STARTED", "reserve_inventory"),
                event(2, "STEP_SUCCEEDED", "reserve_inventory"),
                event(3, "STEP_STARTED", "charge_payment"),
                event(4, "STEP_FAILED", "charge_payment"),
                event(5, "COMPENSATION_STEP_STARTED", "reserve_inventory"),
                event(6, "COMPENSATION_STEP_SUCCEEDED", "reserve_inventory"),
            ],
        };
        let svg = diagram(&d);
        assert!(
            svg.contains(r#"class="node compensated" data-step="reserve_inventory""#),
            "{svg}"
        );
        assert!(
            svg.contains(r#"class="node failed" data-step="charge_payment""#),
            "{svg}"
        );
        assert!(svg.contains("compensation-edge"), "{svg}");
        assert!(
            !svg.contains("current"),
            "an ended saga has no current step: {svg}"
        );
    }

    #[test]
    fn step_names_are_escaped_in_the_svg() {
        assert_eq!(xml_escape("<a&\">"), "&lt;a&amp;&quot;&gt;");
    }
}
