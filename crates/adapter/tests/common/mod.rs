//! Real HTTP backends for the integration tests: axum servers on
//! 127.0.0.1:0 that record every request they receive and answer from a
//! script. No mocks of HTTP anywhere.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use sagaflow_adapter::{AdapterCommand, AdapterMetrics, Executor};

/// One request as the backend saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }
}

/// What the backend answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub delay: Duration,
    /// Stream the body in chunks without a Content-Length.
    pub chunked: bool,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            delay: Duration::ZERO,
            chunked: false,
        }
    }

    pub fn json(status: u16, value: serde_json::Value) -> Self {
        Self::status(status)
            .header("content-type", "application/json")
            .body(value.to_string())
    }

    pub fn xml(status: u16, text: &str) -> Self {
        Self::status(status)
            .header("content-type", "text/xml; charset=utf-8")
            .body(text)
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.to_owned(), v.to_owned()));
        self
    }

    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }

    pub fn chunked(mut self) -> Self {
        self.chunked = true;
        self
    }
}

type Script = dyn Fn(usize, &Seen) -> Reply + Send + Sync;

struct Shared {
    seen: Mutex<Vec<Seen>>,
    script: Box<Script>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

/// A running backend; stops when dropped.
pub struct Backend {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    /// Starts a backend; `script(n, request)` answers the n-th (0-based)
    /// request.
    pub async fn start(script: impl Fn(usize, &Seen) -> Reply + Send + Sync + 'static) -> Self {
        let shared = Arc::new(Shared {
            seen: Mutex::new(Vec::new()),
            script: Box::new(script),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, shared, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// Requests received on `path`.
    pub fn count(&self, path: &str) -> usize {
        self.seen().iter().filter(|s| s.path == path).count()
    }

    pub fn total(&self) -> usize {
        self.shared.seen.lock().unwrap().len()
    }

    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }
}

async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 16 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let seen = Seen {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers,
        body,
        at: Instant::now(),
    };
    let n = {
        let mut all = shared.seen.lock().unwrap();
        all.push(seen.clone());
        all.len() - 1
    };
    let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let reply = (shared.script)(n, &seen);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    shared.in_flight.fetch_sub(1, Ordering::SeqCst);
    let body = if reply.chunked {
        let chunks: Vec<Result<Bytes, std::io::Error>> = reply
            .body
            .chunks(16 * 1024)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        Body::from_stream(futures_util::stream::iter(chunks))
    } else {
        Body::from(reply.body)
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::from_u16(reply.status).unwrap();
    for (k, v) in reply.headers {
        resp.headers_mut().insert(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(&v).unwrap(),
        );
    }
    resp
}

/// A command for `operation` with a deterministic id.
pub fn cmd(operation: &str, id: &str, input: serde_json::Value) -> AdapterCommand {
    AdapterCommand {
        command_id: format!("order-checkout:{id}/{operation}/1"),
        saga_id: id.to_owned(),
        saga_type: "order-checkout".into(),
        step: operation.to_owned(),
        service: "test".into(),
        operation: operation.to_owned(),
        attempt: 1,
        input,
        timeout_ms: 10_000,
        traceparent: None,
        tracestate: None,
    }
}

/// Parses and validates `yaml`, builds an executor with fresh metrics.
pub fn executor(yaml: &str) -> (Executor, prometheus::Registry) {
    let cfg = sagaflow_adapter::config::parse_str(yaml, "test.yaml")
        .unwrap()
        .validate("test.yaml")
        .unwrap();
    let registry = prometheus::Registry::new();
    let metrics = AdapterMetrics::register(&registry).unwrap();
    (Executor::from_config(&cfg, metrics).unwrap(), registry)
}

/// Sum of a counter/gauge family's samples whose labels include `labels`.
pub fn metric(registry: &prometheus::Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut total = 0.0;
    for family in registry.gather() {
        if family.name() != name {
            continue;
        }
        for m in family.get_metric() {
            let ok = labels.iter().all(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == *k && l.value() == *v)
            });
            if ok {
                total += match family.get_field_type() {
                    prometheus::proto::MetricType::COUNTER => m.get_counter().get_value(),
                    prometheus::proto::MetricType::GAUGE => m.get_gauge().get_value(),
                    _ => m.get_histogram().get_sample_count() as f64,
                };
            }
        }
    }
    total
}

/// A retry section with tiny backoff so tests run fast.
pub const FAST_RETRY: &str =
    "retry:\n  max-attempts: 3\n  initial-backoff: 10ms\n  max-backoff: 50ms\n";
