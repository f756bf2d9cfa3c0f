//! Adapter overhead benchmark: bare `reqwest` vs `Executor::execute` against
//! the same local axum backend (POST /charges → 201 JSON, answered at once).
//!
//! Run: `cargo bench -p sagaflow-adapter --bench adapter`
//! Scale with `BENCH_CALLS` (calls per measurement, default 20000) and
//! `BENCH_CONCURRENCY` (comma list, default "1,64"). Each measurement stops
//! early after `BENCH_MAX_SECS` (default 8) so the whole run stays < 60 s.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Json;
use axum::http::StatusCode;
use sagaflow_adapter::{AdapterCommand, AdapterMetrics, Executor, OutcomeKind};
use serde_json::{Value, json};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn charges(Json(body): Json<Value>) -> (StatusCode, Json<Value>) {
    let reference = body.get("reference").cloned().unwrap_or(Value::Null);
    (
        StatusCode::CREATED,
        Json(json!({"id": "p-1", "status": {"code": "captured"}, "reference": reference})),
    )
}

fn config(base: &str) -> String {
    format!(
        r#"
service: payments
base-urls: ["{base}"]
protection:
  request-timeout: 5s
  default-command-timeout: 10s
  max-concurrency: 256
operations:
  charge:
    rest:
      method: POST
      path: /charges
      body:
        order_id: "{{{{ input.order_id }}}}"
        amount: "{{{{ input.amount }}}}"
        currency: "{{{{ input.currency }}}}"
        reference: "{{{{ command.command_id }}}}"
      response:
        payment_id: /id
        state: /status/code
"#
    )
}

fn command(n: usize) -> AdapterCommand {
    let id = format!("o-{n}");
    AdapterCommand {
        command_id: format!("order-checkout:{id}/charge/1"),
        saga_id: id.clone(),
        saga_type: "order-checkout".into(),
        step: "charge".into(),
        service: "payments".into(),
        operation: "charge".into(),
        attempt: 1,
        input: json!({"order_id": id, "amount": 12.5, "currency": "EUR"}),
        timeout_ms: 10_000,
        traceparent: None,
        tracestate: None,
    }
}

struct Measured {
    calls: usize,
    elapsed: Duration,
    lat: Vec<Duration>,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64()
    }
    fn pct(&self, p: f64) -> Duration {
        let mut v = self.lat.clone();
        v.sort_unstable();
        if v.is_empty() {
            return Duration::ZERO;
        }
        let i = ((v.len() as f64 - 1.0) * p).round() as usize;
        v[i.min(v.len() - 1)]
    }
}

/// Runs `calls` calls of `f` with `conc` concurrent callers; stops early
/// at `max` wall time.
async fn run<F, Fut>(calls: usize, conc: usize, max: Duration, f: Arc<F>) -> Measured
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(conc);
    for _ in 0..conc {
        let next = Arc::clone(&next);
        let f = Arc::clone(&f);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= calls || started.elapsed() > max {
                    break;
                }
                let t = Instant::now();
                f(n).await;
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::with_capacity(calls);
    for t in tasks {
        lat.extend(t.await.expect("caller task"));
    }
    Measured {
        calls: lat.len(),
        elapsed: started.elapsed(),
        lat,
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    let calls = env_usize("BENCH_CALLS", 20_000);
    let max = Duration::from_secs(env_usize("BENCH_MAX_SECS", 8) as u64);
    let concs: Vec<usize> = std::env::var("BENCH_CONCURRENCY")
        .unwrap_or_else(|_| "1,64".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let app = axum::Router::new().route("/charges", axum::routing::post(charges));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
        let base = format!("http://{addr}");

        // The same client settings as DeclarativeHandler::new.
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("client");
        let url = format!("{base}/charges");
        let bare = Arc::new(move |n: usize| {
            let client = client.clone();
            let url = url.clone();
            async move {
                let id = format!("o-{n}");
                let body = json!({"order_id": id, "amount": 12.5, "currency": "EUR",
                    "reference": format!("order-checkout:{id}/charge/1")});
                let resp = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("idempotency-key", format!("order-checkout:{id}/charge/1"))
                    .body(body.to_string())
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await
                    .expect("bare call");
                assert_eq!(resp.status().as_u16(), 201);
                let v: Value =
                    serde_json::from_slice(&resp.bytes().await.expect("body")).expect("json");
                assert_eq!(v["id"], "p-1");
            }
        });

        let cfg = sagaflow_adapter::config::parse_str(&config(&base), "bench.yaml")
            .expect("parse")
            .validate("bench.yaml")
            .expect("valid");
        let registry = prometheus::Registry::new();
        let metrics = AdapterMetrics::register(&registry).expect("metrics");
        let exec = Arc::new(Executor::from_config(&cfg, metrics).expect("executor"));
        // Command ids are unique across all adapter runs (no idempotency hits).
        let offset = Arc::new(AtomicUsize::new(0));
        let adapter_offset = Arc::clone(&offset);
        let adapter = Arc::new(move |n: usize| {
            let exec = Arc::clone(&exec);
            let cmd = command(adapter_offset.load(Ordering::Relaxed) + n);
            async move {
                let out = exec.execute(&cmd).await;
                assert_eq!(out.kind, OutcomeKind::Success, "{out:?}");
            }
        });

        // Warm-up: connections, allocator, JIT-free but caches.
        run(500, 8, max, Arc::clone(&bare)).await;
        run(500, 8, max, Arc::clone(&adapter)).await;
        offset.fetch_add(1_000_000, Ordering::Relaxed);

        println!("adapter bench: {calls} calls per measurement, backend {base}");
        println!(
            "{:<8} {:>5} {:>8} {:>12} {:>10} {:>10}",
            "what", "C", "calls", "calls/s", "p50 µs", "p99 µs"
        );
        for &c in &concs {
            let b = run(calls, c, max, Arc::clone(&bare)).await;
            let a = run(calls, c, max, Arc::clone(&adapter)).await;
            offset.fetch_add(1_000_000, Ordering::Relaxed);
            for (name, r) in [("bare", &b), ("adapter", &a)] {
                println!(
                    "{:<8} {:>5} {:>8} {:>12.0} {:>10.1} {:>10.1}",
                    name,
                    c,
                    r.calls,
                    r.rate(),
                    us(r.pct(0.50)),
                    us(r.pct(0.99))
                );
            }
            println!(
                "C={c}: adapter/bare calls/s ratio {:.2}, p50 added per call {:.1} µs",
                a.rate() / b.rate(),
                us(a.pct(0.50)) - us(b.pct(0.50))
            );
        }
    });
}
