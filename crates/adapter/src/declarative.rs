//! The declarative adapter: REST/JSON, SOAP/XML and GraphQL operations
//! described in the service's YAML config, run as a [`CommandHandler`].

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use reqwest::Method;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use url::Url;

use crate::auth::Auth;
use crate::command::{AdapterCommand, AdapterOutcome, OutcomeKind};
use crate::config::{
    GraphqlErrorOutcome, GraphqlOperation, Operation, OperationKind, RestOperation, ServiceConfig,
    SoapOperation, SoapVersion, StatusRules,
};
use crate::error::AdapterError;
use crate::handler::{CacheKey, CallContext, CommandHandler};
use crate::template::{Renderer, context};
use crate::xml::{self, SoapReply, XmlError};

/// Runs the operations of one [`ServiceConfig`] against its base URLs.
pub struct DeclarativeHandler {
    service: String,
    base_urls: Vec<Url>,
    operations: BTreeMap<String, Operation>,
    client: reqwest::Client,
    auth: Auth,
    renderer: Renderer,
    request_timeout: Duration,
    max_response_bytes: u64,
}

impl std::fmt::Debug for DeclarativeHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeclarativeHandler")
            .field("service", &self.service)
            .field("base_urls", &self.base_urls)
            .field("operations", &self.operations.keys().collect::<Vec<_>>())
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

/// A fully rendered request.
struct Prepared {
    method: Method,
    url: Url,
    query: Vec<(String, String)>,
    headers: HeaderMap,
    body: Option<Vec<u8>>,
}

impl Prepared {
    fn cache_key(&self, operation: &str) -> String {
        let mut key = format!("{operation}\n{} {}\n", self.method, self.url);
        for (k, v) in &self.query {
            key.push_str(&format!("{k}={v}&"));
        }
        key.push('\n');
        let mut headers: Vec<_> = self
            .headers
            .iter()
            .map(|(k, v)| format!("{k}:{}", String::from_utf8_lossy(v.as_bytes())))
            .collect();
        headers.sort();
        key.push_str(&headers.join("\n"));
        key.push('\n');
        if let Some(b) = &self.body {
            key.push_str(&String::from_utf8_lossy(b));
        }
        key
    }
}

impl DeclarativeHandler {
    /// Builds the handler; resolves secrets (env/file) now, so a missing
    /// secret fails at start-up rather than at the first command.
    pub fn new(cfg: &ServiceConfig) -> Result<Self, AdapterError> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(cfg.protection.request_timeout)
            .build()
            .map_err(|e| AdapterError::Transport {
                operation: "<client>".into(),
                message: e.without_url().to_string(),
            })?;
        let auth = Auth::from_config(cfg.auth.as_ref(), &cfg.service, &client)?;
        Ok(Self {
            service: cfg.service.clone(),
            base_urls: cfg.base_urls.clone(),
            operations: cfg.operations.clone(),
            client,
            auth,
            renderer: Renderer::new(),
            request_timeout: cfg.protection.request_timeout,
            max_response_bytes: cfg.protection.max_response_bytes,
        })
    }

    fn operation(&self, cmd: &AdapterCommand) -> Result<&Operation, AdapterError> {
        self.operations
            .get(&cmd.operation)
            .ok_or_else(|| AdapterError::UnknownOperation {
                service: self.service.clone(),
                operation: cmd.operation.clone(),
            })
    }

    fn prepare(
        &self,
        op: &Operation,
        cmd: &AdapterCommand,
        base: &Url,
    ) -> Result<Prepared, AdapterError> {
        let ctx = context(cmd);
        let render_err = |part: &str, e: minijinja::Error| AdapterError::TemplateRender {
            operation: op.name.clone(),
            part: part.to_owned(),
            message: e.to_string(),
        };
        let (path_src, header_srcs) = match &op.kind {
            OperationKind::Rest(r) => (&r.path, &r.headers),
            OperationKind::Soap(s) => (&s.path, &s.headers),
            OperationKind::Graphql(g) => (&g.path, &g.headers),
        };
        let path = self
            .renderer
            .path(path_src, &ctx)
            .map_err(|e| render_err("path", e))?;
        let url = crate::urls::join_locked(base, &path).map_err(|reason| {
            AdapterError::BaseUrlEscape {
                operation: op.name.clone(),
                reason,
            }
        })?;
        let mut headers = HeaderMap::new();
        for (name, src) in header_srcs {
            let value = self
                .renderer
                .plain(src, &ctx)
                .map_err(|e| render_err(&format!("header `{name}`"), e))?;
            let value =
                HeaderValue::from_str(&value).map_err(|_| AdapterError::TemplateRender {
                    operation: op.name.clone(),
                    part: format!("header `{name}`"),
                    message: "rendered value is not a valid header value".into(),
                })?;
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                AdapterError::TemplateRender {
                    operation: op.name.clone(),
                    part: format!("header `{name}`"),
                    message: "not a valid header name".into(),
                }
            })?;
            headers.insert(name, value);
        }
        match &op.kind {
            OperationKind::Rest(r) => {
                let mut query = Vec::new();
                for (k, src) in &r.query {
                    let v = self
                        .renderer
                        .plain(src, &ctx)
                        .map_err(|e| render_err(&format!("query `{k}`"), e))?;
                    query.push((k.clone(), v));
                }
                let body = match &r.body {
                    None => None,
                    Some(t) => {
                        let v = self
                            .renderer
                            .json(t, &ctx)
                            .map_err(|e| render_err("body", e))?;
                        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                        Some(serde_json::to_vec(&v).unwrap_or_default())
                    }
                };
                Ok(Prepared {
                    method: r.method.clone(),
                    url,
                    query,
                    headers,
                    body,
                })
            }
            OperationKind::Soap(s) => {
                let inner = self
                    .renderer
                    .xml(&s.body, &ctx)
                    .map_err(|e| render_err("SOAP body", e))?;
                let envelope = soap_envelope(s.version, &inner);
                if let Err(e) = xml::parse_safely(&envelope) {
                    let message = match e {
                        XmlError::Unsafe(m) | XmlError::Invalid(m) => m,
                    };
                    return Err(AdapterError::TemplateRender {
                        operation: op.name.clone(),
                        part: "SOAP body".into(),
                        message: format!("rendered envelope is not well-formed: {message}"),
                    });
                }
                let content_type = match s.version {
                    SoapVersion::V11 => {
                        let action = HeaderValue::from_str(&format!("\"{}\"", s.action))
                            .map_err(|_| render_err_static(op, "SOAPAction"))?;
                        headers.insert(HeaderName::from_static("soapaction"), action);
                        "text/xml; charset=utf-8".to_owned()
                    }
                    SoapVersion::V12 => {
                        format!(
                            "application/soap+xml; charset=utf-8; action=\"{}\"",
                            s.action
                        )
                    }
                };
                headers.insert(
                    CONTENT_TYPE,
                    HeaderValue::from_str(&content_type)
                        .map_err(|_| render_err_static(op, "Content-Type"))?,
                );
                Ok(Prepared {
                    method: Method::POST,
                    url,
                    query: Vec::new(),
                    headers,
                    body: Some(envelope.into_bytes()),
                })
            }
            OperationKind::Graphql(g) => {
                let variables = self
                    .renderer
                    .json(&g.variables, &ctx)
                    .map_err(|e| render_err("variables", e))?;
                let mut request = serde_json::Map::new();
                request.insert("query".into(), g.document.clone().into());
                if let Some(name) = &g.operation_name {
                    request.insert("operationName".into(), name.clone().into());
                }
                request.insert("variables".into(), variables);
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                headers.insert(
                    reqwest::header::ACCEPT,
                    HeaderValue::from_static("application/graphql-response+json, application/json"),
                );
                Ok(Prepared {
                    method: Method::POST,
                    url,
                    query: Vec::new(),
                    headers,
                    body: Some(
                        serde_json::to_vec(&serde_json::Value::Object(request)).unwrap_or_default(),
                    ),
                })
            }
        }
    }

    async fn call(
        &self,
        cmd: &AdapterCommand,
        ctx: &CallContext,
    ) -> Result<AdapterOutcome, AdapterError> {
        let op = self.operation(cmd)?;
        let base_index = usize::try_from(ctx.attempt.saturating_sub(1)).unwrap_or(0)
            % self.base_urls.len().max(1);
        let prepared = self.prepare(op, cmd, &self.base_urls[base_index])?;
        let timeout_err = |started: tokio::time::Instant| AdapterError::Timeout {
            operation: op.name.clone(),
            elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        };
        let started = tokio::time::Instant::now();
        let resp_method = prepared.method.clone();
        let mut req = self
            .client
            .request(prepared.method.clone(), prepared.url)
            .headers(prepared.headers)
            .header("idempotency-key", header_value(cmd.idempotency_key()));
        if !prepared.query.is_empty() {
            req = req.query(&prepared.query);
        }
        // Each HTTP attempt is a client span, a child of the command's.
        let parent_span = cmd
            .traceparent
            .as_deref()
            .and_then(sagaflow_bus::TraceContext::parse);
        let http_span = parent_span.map(|p| p.child());
        let http_start = SystemTime::now();
        if let Some(span) = &http_span {
            let tp = span.header();
            match HeaderValue::from_str(&tp) {
                Ok(v) => req = req.header("traceparent", v),
                Err(_) => tracing::warn!(operation = %op.name, "dropping invalid traceparent"),
            }
            // The vendors' list goes with the trace it belongs to, unchanged.
            if let Some(state) = cmd.tracestate.as_deref() {
                match HeaderValue::from_str(state) {
                    Ok(v) => req = req.header("tracestate", v),
                    Err(_) => tracing::warn!(operation = %op.name, "dropping invalid tracestate"),
                }
            }
        }
        if let Some(body) = prepared.body {
            req = req.body(body);
        }
        let budget = self.request_timeout.min(ctx.remaining());
        if budget.is_zero() {
            return Err(timeout_err(started));
        }
        req = self.auth.apply(req, budget).await?;
        let budget = self.request_timeout.min(ctx.remaining());
        let resp = req
            .timeout(budget.max(Duration::from_millis(1)))
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    timeout_err(started)
                } else {
                    AdapterError::Transport {
                        operation: op.name.clone(),
                        message: describe_reqwest(&e),
                    }
                }
            })?;
        let status = resp.status().as_u16();
        if let (Some(span), true) = (&http_span, sagaflow_telemetry::exporting()) {
            use sagaflow_telemetry::Attribute;
            let url = resp.url();
            sagaflow_telemetry::hop(
                format!("{} {}", resp_method, op.name),
                sagaflow_telemetry::HopKind::Client,
                span,
                parent_span.as_ref(),
                http_start,
                SystemTime::now(),
                vec![
                    Attribute::new("http.request.method", resp_method.to_string()),
                    Attribute::new("http.response.status_code", i64::from(status)),
                    Attribute::new("server.address", url.host_str().unwrap_or("").to_owned()),
                    Attribute::new("saga.id", cmd.saga_id.clone()),
                    Attribute::new("saga.step", cmd.step.clone()),
                    Attribute::new("sagaflow.operation", op.name.clone()),
                ],
            );
        }
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let body = read_limited(resp, self.max_response_bytes)
            .await
            .map_err(|e| match e {
                ReadError::TooLarge => AdapterError::ResponseTooLarge {
                    operation: op.name.clone(),
                    limit: self.max_response_bytes,
                },
                ReadError::Http(e) if e.is_timeout() => timeout_err(started),
                ReadError::Http(e) => AdapterError::Transport {
                    operation: op.name.clone(),
                    message: describe_reqwest(&e),
                },
            })?;
        if status == 401 && self.auth.invalidate().await {
            return Ok(AdapterOutcome::transient(
                "http_401",
                format!(
                    "backend rejected the access token for operation `{}`; it will be refreshed",
                    op.name
                ),
            )
            .with_status(status));
        }
        let outcome = match &op.kind {
            OperationKind::Rest(r) => rest_outcome(op, r, status, &body)?,
            OperationKind::Soap(s) => soap_outcome(op, s, status, &body)?,
            OperationKind::Graphql(g) => graphql_outcome(op, g, status, &body)?,
        };
        Ok(outcome.with_retry_after(retry_after))
    }
}

fn render_err_static(op: &Operation, part: &str) -> AdapterError {
    AdapterError::TemplateRender {
        operation: op.name.clone(),
        part: part.to_owned(),
        message: "not a valid header value".into(),
    }
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// reqwest errors without the URL (it may carry an API key in the query).
fn describe_reqwest(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut msg = String::from(if e.is_connect() {
        "cannot connect"
    } else if e.is_request() {
        "request failed"
    } else if e.is_body() || e.is_decode() {
        "cannot read response body"
    } else {
        "HTTP error"
    });
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !text.contains("://") {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}

fn soap_envelope(version: SoapVersion, body: &str) -> String {
    let ns = match version {
        SoapVersion::V11 => xml::SOAP11_NS,
        SoapVersion::V12 => xml::SOAP12_NS,
    };
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<soap:Envelope xmlns:soap=\"{ns}\"><soap:Body>{body}</soap:Body></soap:Envelope>"
    )
}

enum ReadError {
    TooLarge,
    Http(reqwest::Error),
}

/// Streams the body, stopping as soon as it exceeds `limit` bytes.
async fn read_limited(mut resp: reqwest::Response, limit: u64) -> Result<Vec<u8>, ReadError> {
    if resp.content_length().is_some_and(|len| len > limit) {
        return Err(ReadError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(ReadError::Http)? {
        if (body.len() + chunk.len()) as u64 > limit {
            return Err(ReadError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The longest `Retry-After` the adapter honours. A backend's hint is
/// outside input: `Retry-After: 10000000000000000000` must not overflow the
/// clock arithmetic of the retry loop. Longer hints are clamped to this (and
/// a hint past the command's deadline means "no retry in the adapter"
/// anyway).
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// `Retry-After` as delay-seconds or an HTTP-date, clamped to
/// [`MAX_RETRY_AFTER`]. Digits too large for a `u64` also clamp.
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        let secs = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
    )
}

fn status_failure(op: &Operation, kind: OutcomeKind, status: u16) -> AdapterOutcome {
    let code = format!("http_{status}");
    let message = format!("backend answered HTTP {status} for operation `{}`", op.name);
    match kind {
        OutcomeKind::TransientFailure => AdapterOutcome::transient(code, message),
        _ => AdapterOutcome::business_failure(code, message),
    }
    .with_status(status)
}

fn rest_outcome(
    op: &Operation,
    rest: &RestOperation,
    status: u16,
    body: &[u8],
) -> Result<AdapterOutcome, AdapterError> {
    let kind = rest.statuses.classify(status);
    if kind != OutcomeKind::Success {
        let data = serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
        return Ok(status_failure(op, kind, status).with_data(data));
    }
    if rest.discard_body {
        return Ok(AdapterOutcome::success(serde_json::Value::Null).with_status(status));
    }
    let invalid = |message: String| AdapterError::InvalidResponse {
        operation: op.name.clone(),
        message,
    };
    let json: serde_json::Value = if body.iter().all(u8::is_ascii_whitespace) {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(body)
            .map_err(|e| invalid(format!("HTTP {status} body is not valid JSON ({e})")))?
    };
    let data = map_pointers(
        json,
        &rest.response,
        &format!("HTTP {status} body"),
        invalid,
    )?;
    Ok(AdapterOutcome::success(data).with_status(status))
}

/// Maps reply fields to JSON pointers into `json` (empty: all of it).
fn map_pointers(
    json: serde_json::Value,
    pointers: &BTreeMap<String, String>,
    what: &str,
    invalid: impl Fn(String) -> AdapterError,
) -> Result<serde_json::Value, AdapterError> {
    if pointers.is_empty() {
        return Ok(json);
    }
    let mut map = serde_json::Map::new();
    for (field, pointer) in pointers {
        let v = json.pointer(pointer).ok_or_else(|| {
            invalid(format!(
                "{what} has no `{pointer}` (for reply field `{field}`)"
            ))
        })?;
        map.insert(field.clone(), v.clone());
    }
    Ok(serde_json::Value::Object(map))
}

/// The longest backend error message put into a reply.
const MAX_GRAPHQL_MESSAGE: usize = 500;

/// One entry of a GraphQL response's `errors[]`, as far as rules need it.
struct GraphqlError {
    code: Option<String>,
    path: Vec<String>,
    message: String,
}

impl GraphqlError {
    fn read(v: &serde_json::Value) -> Self {
        let code = v
            .pointer("/extensions/code")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned);
        let path = v
            .get("path")
            .and_then(serde_json::Value::as_array)
            .map(|segs| {
                segs.iter()
                    .map(|s| match s {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut message: String = v
            .get("message")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("(no message)")
            .chars()
            .take(MAX_GRAPHQL_MESSAGE)
            .collect();
        message.retain(|c| !c.is_control());
        Self {
            code,
            path,
            message,
        }
    }

    /// The reply's `error.code`: the backend's `extensions.code` when it is
    /// a short machine-readable token, else `graphql_error`.
    fn reply_code(&self) -> String {
        match &self.code {
            Some(c)
                if !c.is_empty()
                    && c.len() <= 64
                    && c.chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-' | '.')) =>
            {
                c.clone()
            }
            _ => "graphql_error".to_owned(),
        }
    }
}

/// GraphQL over HTTP: the HTTP status is classified first (as for REST);
/// a 2xx body must be a GraphQL response. Each `errors[]` entry is
/// classified by the first matching rule, unmatched entries are business
/// failures. A business failure anywhere decides, then a transient one; a
/// response whose errors are all `success` is a success only if it has
/// `data` (partial data). So an error inside a 200 is never a success
/// unless the configuration says so.
fn graphql_outcome(
    op: &Operation,
    gql: &GraphqlOperation,
    status: u16,
    body: &[u8],
) -> Result<AdapterOutcome, AdapterError> {
    let kind = gql.statuses.classify(status);
    if kind != OutcomeKind::Success {
        let data = serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
        return Ok(status_failure(op, kind, status).with_data(data));
    }
    let invalid = |message: String| AdapterError::InvalidResponse {
        operation: op.name.clone(),
        message,
    };
    let json: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("HTTP {status} body is not valid JSON ({e})")))?;
    let Some(obj) = json.as_object() else {
        return Err(invalid(format!(
            "HTTP {status} body is not a GraphQL response (not a JSON object)"
        )));
    };
    let errors = match obj.get("errors") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::Array(list)) => list.iter().map(GraphqlError::read).collect(),
        Some(_) => {
            return Err(invalid(format!(
                "HTTP {status} GraphQL response has an `errors` that is not a list"
            )));
        }
    };
    let data = obj.get("data").cloned().unwrap_or(serde_json::Value::Null);
    if data.is_null() && errors.is_empty() {
        return Err(invalid(format!(
            "HTTP {status} GraphQL response has neither `data` nor `errors`"
        )));
    }
    let classified: Vec<(GraphqlErrorOutcome, &GraphqlError)> = errors
        .iter()
        .map(|e| {
            let outcome = gql
                .errors
                .iter()
                .find(|r| r.matches(e.code.as_deref(), &e.path))
                .map_or(GraphqlErrorOutcome::BusinessFailure, |r| r.outcome);
            (outcome, e)
        })
        .collect();
    let deciding = classified
        .iter()
        .find(|(o, _)| *o == GraphqlErrorOutcome::BusinessFailure)
        .or_else(|| {
            classified
                .iter()
                .find(|(o, _)| *o == GraphqlErrorOutcome::Transient)
        })
        .or_else(|| classified.first().filter(|_| data.is_null()));
    if let Some((outcome, e)) = deciding {
        let at = if e.path.is_empty() {
            String::new()
        } else {
            format!(" at `{}`", e.path.join("."))
        };
        let more = if errors.len() > 1 {
            format!(" (and {} more)", errors.len() - 1)
        } else {
            String::new()
        };
        let message = format!(
            "GraphQL error `{}`{at} from operation `{}`: {}{more}",
            e.code.as_deref().unwrap_or("-"),
            op.name,
            e.message
        );
        let code = e.reply_code();
        let failure = match outcome {
            GraphqlErrorOutcome::Transient => AdapterOutcome::transient(code, message),
            // A business failure, or errors allowed as success but no data.
            _ => AdapterOutcome::business_failure(code, message),
        };
        return Ok(failure.with_status(status).with_data(json));
    }
    let mapped = map_pointers(
        data,
        &gql.data,
        &format!("HTTP {status} GraphQL `data`"),
        invalid,
    )?;
    Ok(AdapterOutcome::success(mapped).with_status(status))
}

fn soap_outcome(
    op: &Operation,
    soap: &SoapOperation,
    status: u16,
    body: &[u8],
) -> Result<AdapterOutcome, AdapterError> {
    let by_status = StatusRules::default().classify(status);
    let invalid = |message: String| AdapterError::InvalidResponse {
        operation: op.name.clone(),
        message,
    };
    let text = match std::str::from_utf8(body) {
        Ok(t) => t,
        Err(_) if by_status != OutcomeKind::Success => {
            return Ok(status_failure(op, by_status, status));
        }
        Err(e) => return Err(invalid(format!("body is not UTF-8 ({e})"))),
    };
    match xml::read_soap_reply(text, &soap.response) {
        Err(XmlError::Unsafe(message)) => Err(AdapterError::UnsafeXml {
            operation: op.name.clone(),
            message,
        }),
        Err(XmlError::Invalid(_)) if by_status != OutcomeKind::Success => {
            Ok(status_failure(op, by_status, status))
        }
        Err(XmlError::Invalid(message)) => Err(invalid(message)),
        Ok(SoapReply::Fault(fault)) => {
            let all: Vec<&str> = std::iter::once(fault.code.as_str())
                .chain(fault.subcodes.iter().map(String::as_str))
                .collect();
            let named = |list: &[String]| all.iter().any(|c| list.iter().any(|l| l == c));
            let code = fault.subcodes.last().unwrap_or(&fault.code).clone();
            let message = format!(
                "SOAP fault `{}` from operation `{}`: {}",
                all.join("/"),
                op.name,
                fault.message
            );
            let transient = !named(&soap.business_faults)
                && (named(&soap.transient_faults)
                    || fault.code.starts_with("Server")
                    || fault.code.starts_with("Receiver"));
            Ok(if transient {
                AdapterOutcome::transient(code, message)
            } else {
                AdapterOutcome::business_failure(code, message)
            }
            .with_status(status))
        }
        Ok(SoapReply::Values(_)) if by_status != OutcomeKind::Success => {
            Ok(status_failure(op, by_status, status))
        }
        Ok(SoapReply::Values(values)) => {
            Ok(AdapterOutcome::success(serde_json::Value::Object(values)).with_status(status))
        }
    }
}

#[async_trait::async_trait]
impl CommandHandler for DeclarativeHandler {
    async fn handle(&self, cmd: &AdapterCommand, ctx: &CallContext) -> AdapterOutcome {
        match self.call(cmd, ctx).await {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::warn!(
                    service = %self.service,
                    operation = %cmd.operation,
                    error.code = e.code(),
                    error = %e,
                    "backend call failed"
                );
                e.to_outcome()
            }
        }
    }

    fn cache_key(&self, cmd: &AdapterCommand) -> Option<CacheKey> {
        let op = self.operations.get(&cmd.operation)?;
        let ttl = op.cache_ttl?;
        let prepared = self.prepare(op, cmd, self.base_urls.first()?).ok()?;
        Some(CacheKey {
            key: prepared.cache_key(&op.name),
            ttl,
        })
    }

    fn knows_operation(&self, operation: &str) -> bool {
        self.operations.contains_key(operation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_and_http_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(parse_retry_after(" 3 ", now), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        // Hostile hints are clamped, never overflow.
        for huge in [
            "10000000000000000000",
            "99999999999999999999999",
            "Fri, 31 Dec 9999 23:59:59 GMT",
        ] {
            assert_eq!(
                parse_retry_after(huge, now),
                Some(MAX_RETRY_AFTER),
                "{huge}"
            );
        }
    }

    #[test]
    fn soap_envelopes_use_the_right_namespace() {
        assert!(soap_envelope(SoapVersion::V11, "<a/>").contains(xml::SOAP11_NS));
        assert!(soap_envelope(SoapVersion::V12, "<a/>").contains(xml::SOAP12_NS));
    }
}
