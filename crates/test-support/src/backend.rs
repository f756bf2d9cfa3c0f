//! A recording fake backend: a real HTTP server on 127.0.0.1:0 that
//! answers from the test's script (status, headers, body, delay, a chunked
//! body, a different answer per call) and records every request it gets
//! (method, path, query, headers, body, arrival time), so a test counts
//! what the backend actually saw. No mock of HTTP: clients under test talk
//! to it over a socket.
//!
//! Either one script for every request, given its number (0-based):
//!
//! ```ignore
//! let backend = FakeBackend::start(|n, _| match n {
//!     0 => Reply::status(503),
//!     _ => Reply::json(200, json!({"ok": true})),
//! })
//! .await;
//! ```
//!
//! or routes (axum syntax), each with its own script numbered per route;
//! anything else gets 404 and is recorded too:
//!
//! ```ignore
//! let backend = FakeBackend::builder()
//!     .route("POST", "/api/charges/{order}", |_, req| {
//!         Reply::json(201, json!({"id": format!("p-{}", req.param("order"))}))
//!     })
//!     .start()
//!     .await;
//! assert_eq!(backend.count("/api/charges/o-1"), 1);
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{RawPathParams, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::routing::{MethodFilter, MethodRouter, on};

/// The largest request body recorded (larger ones are recorded empty).
const MAX_RECORDED_BODY: usize = 16 * 1024 * 1024;

/// One request as the backend saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// The path, without the query.
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When it arrived.
    pub at: Instant,
    /// The route's `{name}` parameters (none for [`FakeBackend::start`]).
    pub params: BTreeMap<String, String>,
}

impl Seen {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    /// The route parameter `name` (empty if the route has none).
    pub fn param(&self, name: &str) -> &str {
        self.params.get(name).map_or("", String::as_str)
    }

    /// The body as text.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics if it is not.
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
    /// Waited before answering.
    pub delay: Duration,
    /// Stream the body in chunks without a Content-Length.
    pub chunked: bool,
}

impl Reply {
    /// `status` with an empty body.
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            delay: Duration::ZERO,
            chunked: false,
        }
    }

    /// `status` with a JSON body.
    pub fn json(status: u16, value: serde_json::Value) -> Self {
        Self::status(status)
            .header("content-type", "application/json")
            .body(value.to_string())
    }

    /// `status` with an XML body (SOAP).
    pub fn xml(status: u16, text: &str) -> Self {
        Self::status(status)
            .header("content-type", "text/xml; charset=utf-8")
            .body(text)
    }

    /// `status` with a plain-text body.
    pub fn text(status: u16, text: &str) -> Self {
        Self::status(status)
            .header("content-type", "text/plain; charset=utf-8")
            .body(text)
    }

    /// The same reply with `body`.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// The same reply with one more header.
    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.to_owned(), v.to_owned()));
        self
    }

    /// The same reply, sent after `d`.
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }

    /// The same reply with its body streamed in chunks.
    pub fn chunked(mut self) -> Self {
        self.chunked = true;
        self
    }

    fn into_response(self) -> Response {
        let body = if self.chunked {
            let chunks: Vec<Result<Bytes, std::io::Error>> = self
                .body
                .chunks(16 * 1024)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            Body::from_stream(futures_util::stream::iter(chunks))
        } else {
            Body::from(self.body)
        };
        let mut resp = Response::new(body);
        *resp.status_mut() = StatusCode::from_u16(self.status)
            .unwrap_or_else(|e| panic!("fake backend status {}: {e}", self.status));
        for (k, v) in self.headers {
            resp.headers_mut().insert(
                HeaderName::from_bytes(k.as_bytes())
                    .unwrap_or_else(|e| panic!("fake backend header {k}: {e}")),
                HeaderValue::from_str(&v)
                    .unwrap_or_else(|e| panic!("fake backend header {k}: {v}: {e}")),
            );
        }
        resp
    }
}

/// Answers the n-th (0-based) request of a route, or of the whole backend.
type Script = dyn Fn(usize, &Seen) -> Reply + Send + Sync;

/// What every handler of one backend shares.
#[derive(Default)]
struct Shared {
    seen: Mutex<Vec<Seen>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

/// One script and how many requests it answered.
struct Scripted {
    script: Box<Script>,
    calls: AtomicUsize,
}

impl Shared {
    /// Records `req`, asks `scripted` for the answer and sends it after
    /// its delay, counting how many requests are in flight meanwhile.
    async fn answer(
        self: Arc<Self>,
        scripted: Arc<Scripted>,
        params: BTreeMap<String, String>,
        req: Request,
    ) -> Response {
        let (parts, body) = req.into_parts();
        let body = axum::body::to_bytes(body, MAX_RECORDED_BODY)
            .await
            .unwrap_or_default();
        let seen = Seen {
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            headers: parts.headers,
            body,
            at: Instant::now(),
            params,
        };
        self.seen.lock().expect("request log").push(seen.clone());
        let n = scripted.calls.fetch_add(1, Ordering::SeqCst);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let reply = (scripted.script)(n, &seen);
        if !reply.delay.is_zero() {
            tokio::time::sleep(reply.delay).await;
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        reply.into_response()
    }
}

/// Routes of a [`FakeBackend`] before it starts.
#[derive(Default)]
pub struct Builder {
    routes: Vec<(Method, String, Box<Script>)>,
}

impl Builder {
    /// `method path` (axum syntax: `/pets/{id}`) answered by
    /// `script(n, request)`, `n` counting this route's requests from 0.
    pub fn route(
        mut self,
        method: &str,
        path: &str,
        script: impl Fn(usize, &Seen) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let method = Method::from_bytes(method.as_bytes())
            .unwrap_or_else(|e| panic!("fake backend method {method}: {e}"));
        self.routes
            .push((method, path.to_owned(), Box::new(script)));
        self
    }

    /// `method path` answered by `replies` in turn, the last one repeated.
    pub fn replies(self, method: &str, path: &str, replies: Vec<Reply>) -> Self {
        assert!(!replies.is_empty(), "no replies for {method} {path}");
        self.route(method, path, move |n, _| {
            replies[n.min(replies.len() - 1)].clone()
        })
    }

    /// Binds 127.0.0.1:0 and serves the routes; other requests get 404.
    pub async fn start(self) -> FakeBackend {
        let shared = Arc::new(Shared::default());
        let mut paths: BTreeMap<String, MethodRouter> = BTreeMap::new();
        for (method, path, script) in self.routes {
            let filter = MethodFilter::try_from(method.clone())
                .unwrap_or_else(|e| panic!("fake backend method {method}: {e}"));
            let scripted = Arc::new(Scripted {
                script,
                calls: AtomicUsize::new(0),
            });
            let shared = Arc::clone(&shared);
            let handler = on(filter, move |params: RawPathParams, req: Request| {
                let params = params
                    .iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect();
                Arc::clone(&shared).answer(Arc::clone(&scripted), params, req)
            });
            let merged = match paths.remove(&path) {
                Some(existing) => existing.merge(handler),
                None => handler,
            };
            paths.insert(path, merged);
        }
        let mut router = axum::Router::new();
        for (path, handler) in paths {
            router = router.route(&path, handler);
        }
        let not_found = Arc::new(Scripted {
            script: Box::new(|_, _| Reply::status(404)),
            calls: AtomicUsize::new(0),
        });
        let fallback_shared = Arc::clone(&shared);
        let router = router.fallback(move |req: Request| {
            Arc::clone(&fallback_shared).answer(Arc::clone(&not_found), BTreeMap::new(), req)
        });
        FakeBackend::serve(router, shared).await
    }
}

/// A running backend; it stops when dropped.
pub struct FakeBackend {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeBackend {
    /// A backend answering every request, whatever its method and path,
    /// with `script(n, request)` for the n-th (0-based) request.
    pub async fn start(script: impl Fn(usize, &Seen) -> Reply + Send + Sync + 'static) -> Self {
        let shared = Arc::new(Shared::default());
        let scripted = Arc::new(Scripted {
            script: Box::new(script),
            calls: AtomicUsize::new(0),
        });
        let handler_shared = Arc::clone(&shared);
        let router = axum::Router::new().fallback(move |req: Request| {
            Arc::clone(&handler_shared).answer(Arc::clone(&scripted), BTreeMap::new(), req)
        });
        Self::serve(router, shared).await
    }

    /// Routes to add before [`Builder::start`].
    pub fn builder() -> Builder {
        Builder::default()
    }

    async fn serve(router: axum::Router, shared: Arc<Shared>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the fake backend");
        let addr = listener.local_addr().expect("the fake backend's address");
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                .await
                .expect("the fake backend serves");
        });
        Self { addr, shared, task }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().expect("request log").clone()
    }

    /// Requests received on `path` (any method).
    pub fn count(&self, path: &str) -> usize {
        self.seen().iter().filter(|s| s.path == path).count()
    }

    /// Requests received in all.
    pub fn total(&self) -> usize {
        self.shared.seen.lock().expect("request log").len()
    }

    /// The most requests that were being answered at once.
    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn routes_answer_as_scripted_and_every_request_is_recorded() {
        let backend = FakeBackend::builder()
            .route("POST", "/charges/{order}", |n, req| {
                Reply::json(
                    201,
                    json!({"id": format!("p-{}-{n}", req.param("order")), "got": req.json()}),
                )
            })
            .replies(
                "GET",
                "/flaky",
                vec![Reply::text(503, "busy"), Reply::text(200, "fine")],
            )
            .route("GET", "/slow", |_, _| {
                Reply::status(204).delay(Duration::from_millis(300))
            })
            .start()
            .await;
        crate::install_crypto_provider();
        let http = reqwest::Client::new();
        let url = backend.url();
        let r = http
            .post(format!("{url}/charges/o-1"))
            .header("Idempotency-Key", "k1")
            .json(&json!({"amount": 5}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body, json!({"id": "p-o-1-0", "got": {"amount": 5}}));
        let mut statuses = Vec::new();
        for _ in 0..3 {
            let r = http.get(format!("{url}/flaky")).send().await.unwrap();
            statuses.push(r.status().as_u16());
        }
        assert_eq!(statuses, [503, 200, 200]);
        let started = Instant::now();
        let r = http.get(format!("{url}/slow?x=1")).send().await.unwrap();
        assert_eq!(r.status(), 204);
        assert!(started.elapsed() >= Duration::from_millis(300));
        let r = http.delete(format!("{url}/nowhere")).send().await.unwrap();
        assert_eq!(r.status(), 404);

        assert_eq!(backend.total(), 6);
        let seen = backend.seen();
        let charge = &seen[0];
        assert_eq!(charge.method, "POST");
        assert_eq!(charge.header("idempotency-key").as_deref(), Some("k1"));
        assert_eq!(charge.json(), json!({"amount": 5}));
        assert_eq!(charge.param("order"), "o-1");
        assert_eq!(backend.count("/flaky"), 3);
        assert_eq!(seen[4].query.as_deref(), Some("x=1"));
        assert_eq!(
            (seen[5].method.as_str(), seen[5].path.as_str()),
            ("DELETE", "/nowhere")
        );
        assert_eq!(backend.max_in_flight(), 1);
    }

    #[tokio::test]
    async fn one_script_answers_everything_in_order_and_counts_concurrency() {
        let backend = FakeBackend::start(|n, _| {
            Reply::text(200, &"x".repeat(40_000))
                .header("x-call", &n.to_string())
                .delay(Duration::from_millis(500))
                .chunked()
        })
        .await;
        crate::install_crypto_provider();
        let url = backend.url();
        let calls: Vec<_> = (0..3)
            .map(|i| {
                let url = format!("{url}/any/{i}");
                tokio::spawn(async move { reqwest::get(url).await.unwrap() })
            })
            .collect();
        let mut numbers = Vec::new();
        for call in calls {
            let r = call.await.unwrap();
            assert!(r.headers().get("content-length").is_none(), "chunked");
            numbers.push(r.headers()["x-call"].to_str().unwrap().to_owned());
            assert_eq!(r.text().await.unwrap().len(), 40_000);
        }
        numbers.sort();
        assert_eq!(numbers, ["0", "1", "2"]);
        assert_eq!(backend.total(), 3);
        assert_eq!(backend.max_in_flight(), 3);
    }
}
