//! The stack the end-to-end tests run: the embedded broker (in this test
//! process), a real schema registry, real HTTP backends for the order
//! checkout services, and `sagaflow orchestrator` / `sagaflow adapter`
//! as real child processes.

#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::FutureRecord;
use sagaflow_bus::Producer;
use sagaflow_codec::messages::{LifecycleKind, SagaResult};
use sagaflow_codec::{Codec, CodecConfig, SagaEvent};
use sagaflow_test_support::process::ChildGuard;
use sagaflow_test_support::{self as support};
use serde_json::{Value, json};

pub const SERVICES: [&str; 4] = ["inventory", "fraud", "payment", "shipping"];

/// What the backends did, deduplicated by `Idempotency-Key` as a careful
/// real API does: a repeated key returns the first answer and changes nothing.
#[derive(Default)]
pub struct Ledger {
    /// Idempotency-Key → the response first given.
    answered: HashMap<String, (u16, Value)>,
    /// Effective operations: (service operation, order id) → count.
    pub effects: BTreeMap<(String, String), u32>,
    /// Every HTTP request received, including repeats.
    pub requests: u64,
    /// Requests that carried no Idempotency-Key.
    pub missing_keys: u64,
    /// (operation, traceparent header) of every request that carried one.
    pub traceparents: Vec<(String, String)>,
    /// (traceparent header, tracestate header) of every request that
    /// carried a tracestate.
    pub tracestates: Vec<(String, String)>,
    /// Orders `flaky-*` whose `schedule` already failed once with a 503.
    flaked: std::collections::HashSet<String>,
    /// Successful calls per Idempotency-Key, repeats included: what a
    /// backend that does not de-duplicate would have applied.
    pub raw_calls: BTreeMap<String, u32>,
    /// Releasing the reservation of a `stuck-*` order fails (503, not
    /// remembered, so every retry reaches the backend) until this is set:
    /// a compensation that fails for good until an operator has fixed the
    /// backend and retries the saga.
    pub unstick: bool,
}

pub type Shared = Arc<Mutex<Ledger>>;

fn field(body: &Value, name: &str) -> String {
    body.get(name)
        .and_then(|v| {
            v.as_str()
                .map(str::to_owned)
                .or_else(|| Some(v.to_string()))
        })
        .unwrap_or_default()
}

async fn handle(
    State(ledger): State<Shared>,
    UrlPath(op): UrlPath<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut l = ledger.lock().unwrap();
    l.requests += 1;
    if let Some(tp) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
        l.traceparents.push((op.clone(), tp.to_owned()));
    }
    if let Some(ts) = headers.get("tracestate").and_then(|v| v.to_str().ok()) {
        let tp = headers.get("traceparent").and_then(|v| v.to_str().ok());
        l.tracestates
            .push((tp.unwrap_or_default().to_owned(), ts.to_owned()));
    }
    let Some(key) = key else {
        l.missing_keys += 1;
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "Idempotency-Key required"})),
        )
            .into_response();
    };
    if let Some((status, v)) = l.answered.get(&key) {
        let (status, v) = (*status, v.clone());
        if status < 300 {
            *l.raw_calls.entry(key).or_default() += 1;
        }
        return (StatusCode::from_u16(status).unwrap(), Json(v)).into_response();
    }
    let order = field(&body, "order_id");
    // A flaky shipping backend: the first `schedule` of a `flaky-*` order
    // is a 503 (not remembered, so the adapter's retry gets a real answer).
    if op == "schedule" && order.starts_with("flaky-") && l.flaked.insert(order.clone()) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "try again"})),
        )
            .into_response();
    }
    if op == "release" && field(&body, "reservation_id").starts_with("r-stuck-") && !l.unstick {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "reservation locked"})),
        )
            .into_response();
    }
    let (status, answer) = match op.as_str() {
        "reserve" if order.starts_with("oos-") => (409, json!({"error": "out of stock"})),
        "reserve" => (201, json!({"reservation_id": format!("r-{order}")})),
        "release" => (200, json!({"released": field(&body, "reservation_id")})),
        "screen" => {
            let verdict = if field(&body, "customer_id") == "fraudster" {
                "reject"
            } else {
                "accept"
            };
            (200, json!({"verdict": verdict}))
        }
        "charge" if field(&body, "customer_id") == "broke" => {
            (402, json!({"error": "card declined"}))
        }
        "charge" => (201, json!({"payment_id": format!("p-{order}")})),
        "refund" => (200, json!({"refunded": field(&body, "payment_id")})),
        "schedule" => (201, json!({"tracking_number": format!("t-{order}")})),
        _ => (404, json!({"error": "no such operation"})),
    };
    if status < 300 {
        // Releases and refunds name the order through their reference.
        let subject = if !order.is_empty() {
            order
        } else if let Some(o) = field(&body, "reservation_id").strip_prefix("r-") {
            o.to_owned()
        } else {
            field(&body, "payment_id")
                .trim_start_matches("p-")
                .to_owned()
        };
        *l.effects.entry((op.clone(), subject)).or_default() += 1;
        *l.raw_calls.entry(key.clone()).or_default() += 1;
    }
    l.answered.insert(key, (status, answer.clone()));
    (StatusCode::from_u16(status).unwrap(), Json(answer)).into_response()
}

/// Starts the backends (one HTTP server, a path per operation).
pub async fn backends() -> (String, Shared) {
    let ledger = Shared::default();
    let app = Router::new()
        .route("/ops/{op}", post(handle))
        .with_state(ledger.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, ledger)
}

pub struct Stack {
    pub dir: tempfile::TempDir,
    pub prefix: String,
    pub registry_url: String,
    pub ledger: Shared,
    pub codec: Arc<Codec>,
    pub producer: Producer,
    pub orchestrators: Vec<ChildGuard>,
    pub adapters: Vec<ChildGuard>,
    /// Environment given to every process the stack starts from now on.
    pub env: Vec<(String, String)>,
    /// Distinct terminal lifecycle events (COMPLETED, COMPENSATED, FAILED)
    /// seen by `collect_results`, by saga id: their event ids.
    pub terminal: Mutex<BTreeMap<String, BTreeSet<String>>>,
    registry: Option<sagaflow_registry::ServeHandle>,
}

fn codec_yaml(registry: &str) -> String {
    format!("  registry:\n    url: {registry}\n  default-format:\n    format: avro\n")
}

impl Stack {
    pub async fn start(name: &str, partitions: u32) -> Self {
        let sagas = Path::new(env!("CARGO_MANIFEST_DIR")).join("topology/sagas");
        Self::start_with_sagas(name, partitions, &sagas).await
    }

    /// A stack whose orchestrators load the saga definitions of `sagas`
    /// (a directory) instead of `topology/sagas`.
    pub async fn start_with_sagas(name: &str, partitions: u32, sagas: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let prefix = format!("{}.", support::unique(name));
        let registry = sagaflow_registry::Registry::open_dir(&dir.path().join("registry"))
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let handle = registry.serve(listener).unwrap();
        let registry_url = handle.url().to_string();
        let (backend, ledger) = backends().await;
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let bootstrap = support::bootstrap_servers();
        // A 2 ms fetch wait, not the consumers' default (1 s): with
        // librdkafka's 500 ms the paused-owner test's stopped owner once
        // outlived its 10 s session (docs/orchestrator.md, "Not yet").
        // `SAGAFLOW_TEST_FETCH_WAIT_MS` runs the stacks with another wait.
        let fetch_wait: u32 = std::env::var("SAGAFLOW_TEST_FETCH_WAIT_MS").map_or(2, |ms| {
            ms.parse()
                .unwrap_or_else(|_| panic!("SAGAFLOW_TEST_FETCH_WAIT_MS={ms:?}: not milliseconds"))
        });
        let kafka = format!(
            "kafka:\n  bootstrap-servers: {bootstrap}\n  properties:\n    fetch.wait.max.ms: \"{fetch_wait}\"\n"
        );
        std::fs::write(
            dir.path().join("orchestrator.yaml"),
            format!(
                "{kafka}topics:\n  prefix: {prefix}\ncodec:\n{}sagas:\n  dir: {}\n  services: {}\nschemas: {}\npartitions: {partitions}\ngroup-id: {prefix}orchestrator\nhttp:\n  listen: 127.0.0.1:0\ncompleted-retention: 10m\n",
                codec_yaml(&registry_url),
                sagas.display(),
                root.join("topology/services.yaml").display(),
                root.join("schemas").display(),
            ),
        )
        .unwrap();
        for service in SERVICES {
            let ops: &[(&str, &[(&str, &str)])] = match service {
                "inventory" => &[
                    ("reserve", &[("reservation_id", "/reservation_id")]),
                    ("release", &[]),
                ],
                "fraud" => &[("screen", &[("verdict", "/verdict")])],
                "payment" => &[
                    ("charge", &[("payment_id", "/payment_id")]),
                    ("refund", &[]),
                ],
                _ => &[("schedule", &[("tracking_number", "/tracking_number")])],
            };
            let mut y = format!(
                "service: {service}\nbase-urls:\n  - {backend}\nprotection:\n  request-timeout: 5s\nretry:\n  max-attempts: 3\n  initial-backoff: 50ms\n  max-backoff: 500ms\noperations:\n"
            );
            for (op, response) in ops {
                y.push_str(&format!(
                    "  {op}:\n    rest:\n      method: POST\n      path: /ops/{op}\n      body: \"{{{{ input }}}}\"\n      statuses:\n        business-failure: [402, 409, 422]\n"
                ));
                if !response.is_empty() {
                    y.push_str("      response:\n");
                    for (k, v) in *response {
                        y.push_str(&format!("        {k}: {v}\n"));
                    }
                }
            }
            std::fs::write(dir.path().join(format!("{service}.service.yaml")), y).unwrap();
            std::fs::write(
                dir.path().join(format!("{service}.adapter.yaml")),
                format!(
                    "{kafka}topics:\n  prefix: {prefix}\ncodec:\n{}service: {service}.service.yaml\ngroup-id: {prefix}adapter-{service}\nhttp:\n  listen: 127.0.0.1:0\n",
                    codec_yaml(&registry_url)
                ),
            )
            .unwrap();
        }
        let codec = Arc::new(
            Codec::new(
                serde_json::from_value::<CodecConfig>(json!({
                    "registry": {"url": registry_url},
                    "default-format": {"format": "avro"}
                }))
                .unwrap(),
            )
            .unwrap(),
        );
        let producer = support::kafka().producer().unwrap();
        Self {
            dir,
            prefix,
            registry_url,
            ledger,
            codec,
            producer,
            orchestrators: Vec::new(),
            adapters: Vec::new(),
            // Adapters log each reply at debug: a post-mortem needs them.
            env: match std::env::var("RUST_LOG") {
                Ok(v) if !v.is_empty() => Vec::new(),
                _ => vec![(
                    "RUST_LOG".to_owned(),
                    "info,sagaflow_adapter::runtime=debug".to_owned(),
                )],
            },
            terminal: Mutex::default(),
            registry: Some(handle),
        }
    }

    /// Stops the schema registry (an outage); `restart_registry` brings it
    /// back on the same address with the same schemas.
    pub async fn stop_registry(&mut self) {
        if let Some(h) = self.registry.take() {
            h.shutdown().await.unwrap();
        }
    }

    pub async fn restart_registry(&mut self) {
        let registry = sagaflow_registry::Registry::open_dir(&self.dir.path().join("registry"))
            .await
            .unwrap();
        let addr = self.registry_url.trim_start_matches("http://").to_owned();
        let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
        self.registry = Some(registry.serve(listener).unwrap());
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// Starts an orchestrator in `slot` (a stable `group.instance.id`, as a
    /// StatefulSet pod keeps its name): a restarted slot takes over the
    /// killed member's partitions at once. Returns its index.
    pub fn start_orchestrator_in(&mut self, slot: usize) -> usize {
        let cfg = self.static_member(
            "orchestrator.yaml",
            &format!("orchestrator-slot-{slot}.yaml"),
            &format!("orchestrator-{slot}"),
        );
        let n = self.orchestrators.len();
        let log = self.path(&format!("orchestrator-{n}-{}.log", support::unique("run")));
        self.orchestrators.push(ChildGuard::sagaflow(
            &format!("orchestrator-{n} (slot {slot})"),
            &["orchestrator", "--config", cfg.to_str().unwrap()],
            log,
            &self.env_refs(),
        ));
        n
    }

    /// Starts an orchestrator whose `/v1/*` API wants `token` as bearer
    /// token (`http.token-env`). Returns its index.
    pub fn start_orchestrator_with_token(&mut self, token: &str) -> usize {
        let base = std::fs::read_to_string(self.path("orchestrator.yaml")).unwrap();
        let cfg = self.path("orchestrator-token.yaml");
        let with_token = base.replacen(
            "http:\n  listen: 127.0.0.1:0\n",
            "http:\n  listen: 127.0.0.1:0\n  token-env: SAGAFLOW_TEST_API_TOKEN\n",
            1,
        );
        assert_ne!(base, with_token, "orchestrator.yaml has an http section");
        std::fs::write(&cfg, with_token).unwrap();
        let n = self.orchestrators.len();
        let log = self.path(&format!("orchestrator-{n}-{}.log", support::unique("run")));
        self.orchestrators.push(ChildGuard::sagaflow(
            &format!("orchestrator-{n} (token)"),
            &["orchestrator", "--config", cfg.to_str().unwrap()],
            log,
            &[("SAGAFLOW_TEST_API_TOKEN", token)],
        ));
        n
    }

    /// Writes config `file` again as `out`, with a stable
    /// `group.instance.id` of `<stack prefix><instance>` under its Kafka
    /// properties. Unique per stack: tests share one broker, and tansu
    /// appears to key static members by instance id across groups.
    fn static_member(&self, file: &str, out: &str, instance: &str) -> PathBuf {
        let base = std::fs::read_to_string(self.path(file)).unwrap();
        let cfg = self.path(out);
        let with_instance = base.replacen(
            "  properties:\n",
            &format!(
                "  properties:\n    group.instance.id: \"{}{instance}\"\n",
                self.prefix
            ),
            1,
        );
        std::fs::write(&cfg, with_instance).unwrap();
        cfg
    }

    fn env_refs(&self) -> Vec<(&str, &str)> {
        self.env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    pub fn start_orchestrator(&mut self) {
        let slot = self.orchestrators.len();
        self.start_orchestrator_in(slot);
    }

    pub fn start_adapters(&mut self) {
        for service in SERVICES {
            self.start_adapter(service);
        }
    }

    /// Starts (or restarts) the adapter of `service` under a stable
    /// `group.instance.id`, so a restart takes its partitions back at once
    /// (tansu never expires a dead member). Returns its index.
    pub fn start_adapter(&mut self, service: &str) -> usize {
        let cfg = self.static_member(
            &format!("{service}.adapter.yaml"),
            &format!("{service}.adapter-static.yaml"),
            &format!("adapter-{service}"),
        );
        let log = self.path(&format!("adapter-{service}-{}.log", support::unique("run")));
        self.adapters.push(ChildGuard::sagaflow(
            service,
            &["adapter", "--config", cfg.to_str().unwrap()],
            log,
            &self.env_refs(),
        ));
        self.adapters.len() - 1
    }

    /// Waits until adapter `i` serves `partitions` partitions (held, and
    /// its idempotency log restored). A member killed before its group has
    /// settled can leave partitions to nobody on tansu (docs/broker.md), so
    /// tests that kill adapters again wait for this first.
    pub async fn adapter_serves(&self, i: usize, partitions: usize) {
        let adapter = &self.adapters[i];
        let addr = adapter.http_addr(Duration::from_secs(60));
        sagaflow_test_support::metrics::wait_for_sum(
            &format!("http://{addr}/metrics"),
            "sagaflow_adapter_served_partitions",
            &[],
            partitions as f64,
            Duration::from_secs(180),
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{} never served its partitions: {e}\n{}",
                adapter.name,
                self.logs()
            )
        });
    }

    pub fn topic(&self, t: &str) -> String {
        format!("{}{t}", self.prefix)
    }

    /// Publishes an OrderPlaced event (Avro, Confluent wire format) as an
    /// existing system would; the key is the order id.
    pub async fn place_order(&self, order_id: &str, customer: &str, total_cents: i64) {
        let bytes = self.order_placed(order_id, customer, total_cents).await;
        self.send_raw(&self.topic("orders.events"), order_id, &bytes)
            .await;
    }

    /// An OrderPlaced event's bytes as a publisher would send them
    /// ([`order_json`], Avro-encoded).
    pub async fn order_placed(&self, order_id: &str, customer: &str, total_cents: i64) -> Vec<u8> {
        let schema = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/examples/orders/OrderPlaced.avsc"),
        )
        .unwrap();
        let parsed = sagaflow_codec::apache_avro::Schema::parse_str(&schema).unwrap();
        let event = order_json(order_id, customer, total_cents);
        let value = sagaflow_codec::json::json_to_avro(&event, &parsed)
            .unwrap_or_else(|e| panic!("OrderPlaced does not match its schema: {e}"));
        self.codec
            .encode_avro_value(
                &self.topic("orders.events"),
                "io.sagaflow.examples.orders.OrderPlaced",
                &schema,
                value,
            )
            .await
            .unwrap()
    }

    /// Publishes pre-encoded records (key, bytes) to `topic` in the
    /// background at about `per_sec`, many in flight at once, as a busy
    /// upstream system does. The task ends when all are acknowledged.
    pub fn publish_paced(
        &self,
        topic: &str,
        records: Vec<(String, Vec<u8>)>,
        per_sec: u32,
    ) -> tokio::task::JoinHandle<()> {
        let producer = self.producer.clone();
        let topic = topic.to_owned();
        tokio::spawn(async move {
            let period = Duration::from_secs_f64(1.0 / f64::from(per_sec.max(1)));
            let mut tick = tokio::time::interval(period);
            let mut pending = Vec::with_capacity(records.len());
            for (key, bytes) in records {
                tick.tick().await;
                let producer = producer.clone();
                let topic = topic.clone();
                pending.push(tokio::spawn(async move {
                    producer
                        .send(
                            FutureRecord::to(&topic).key(&key).payload(&bytes),
                            Duration::from_secs(30),
                        )
                        .await
                        .map_err(|(e, _)| e)
                        .unwrap();
                }));
            }
            for p in pending {
                p.await.unwrap();
            }
        })
    }

    pub async fn send_raw(&self, topic: &str, key: &str, bytes: &[u8]) {
        self.send_with_headers(topic, key, bytes, rdkafka::message::OwnedHeaders::new())
            .await;
    }

    pub async fn send_with_headers(
        &self,
        topic: &str,
        key: &str,
        bytes: &[u8],
        headers: rdkafka::message::OwnedHeaders,
    ) {
        self.producer
            .send(
                FutureRecord::to(topic)
                    .key(key)
                    .payload(bytes)
                    .headers(headers),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }

    /// A reader of the saga events topic from the beginning.
    pub fn results_reader(&self) -> StreamConsumer {
        self.reader("sagaflow.saga-events")
    }

    /// A reader of the stack's topic `t` (unprefixed) from the beginning,
    /// in a group of its own.
    pub fn reader(&self, t: &str) -> StreamConsumer {
        let c = support::kafka()
            .consumer(&support::unique("reader"))
            .unwrap();
        c.subscribe(&[&self.topic(t)]).unwrap();
        c
    }

    /// Reads results until `n` sagas have one or `timeout` passes, then
    /// whatever else arrives within 2 s (re-sent copies, events a saga
    /// should not have), so that checks see everything.
    pub async fn collect_all(
        &self,
        reader: &StreamConsumer,
        results: &mut BTreeMap<String, SagaResult>,
        copies: &mut usize,
        n: usize,
        timeout: Duration,
    ) {
        self.collect_results(reader, results, copies, n, timeout)
            .await;
        self.drain_saga_events(reader, results, copies, Duration::from_secs(2))
            .await;
    }

    /// Reads saga events until `n` distinct sagas have a result or
    /// `timeout` passes. Returns the results by saga id and how many result
    /// records there were in all (re-sent copies included).
    pub async fn collect_results(
        &self,
        reader: &StreamConsumer,
        results: &mut BTreeMap<String, SagaResult>,
        copies: &mut usize,
        n: usize,
        timeout: Duration,
    ) {
        let deadline = tokio::time::Instant::now() + timeout;
        while results.len() < n {
            let Ok(m) = tokio::time::timeout_at(deadline, reader.recv()).await else {
                return;
            };
            // The topic appears when the orchestrator creates it.
            let Ok(m) = m else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            self.note_saga_event(&m, results, copies).await;
        }
    }

    /// Goes on reading saga events until none has come for `idle`, so that
    /// copies re-sent late are counted too.
    pub async fn drain_saga_events(
        &self,
        reader: &StreamConsumer,
        results: &mut BTreeMap<String, SagaResult>,
        copies: &mut usize,
        idle: Duration,
    ) {
        while let Ok(m) = tokio::time::timeout(idle, reader.recv()).await {
            if let Ok(m) = m {
                self.note_saga_event(&m, results, copies).await;
            }
        }
    }

    async fn note_saga_event(
        &self,
        m: &rdkafka::message::BorrowedMessage<'_>,
        results: &mut BTreeMap<String, SagaResult>,
        copies: &mut usize,
    ) {
        let Some(bytes) = m.payload() else { return };
        let topic = self.topic("sagaflow.saga-events");
        match self.codec.decode_saga_event(&topic, bytes).await {
            Ok(SagaEvent::Lifecycle(l))
                if matches!(
                    l.kind,
                    LifecycleKind::Completed | LifecycleKind::Compensated | LifecycleKind::Failed
                ) =>
            {
                self.terminal
                    .lock()
                    .unwrap()
                    .entry(l.saga_id.clone())
                    .or_default()
                    .insert(l.event_id.clone());
            }
            Ok(SagaEvent::Result(r)) => {
                *copies += 1;
                if let Some(prev) = results.get(&r.saga_id) {
                    assert_eq!(
                        prev.status, r.status,
                        "saga {} ended twice, differently",
                        r.saga_id
                    );
                }
                results.insert(r.saga_id.clone(), r);
            }
            _ => {}
        }
    }

    /// Every process's output so far, for a check on what was logged
    /// (`logs` is for a failure's message: it also asks the broker).
    pub fn output(&self) -> String {
        self.orchestrators
            .iter()
            .chain(&self.adapters)
            .map(|c| c.output())
            .collect()
    }

    /// The last lines of every process's log; the full logs are kept under
    /// the system temp dir (the path is printed) for a failure's post-mortem.
    pub fn logs(&self) -> String {
        let keep = std::env::temp_dir()
            .join("sagaflow-e2e-logs")
            .join(self.prefix.trim_end_matches('.'));
        let mut out = format!("(full logs: {})\n", keep.display());
        let _ = std::fs::create_dir_all(&keep);
        let groups = self.groups();
        let _ = std::fs::write(keep.join("groups.txt"), &groups);
        out.push_str(&groups);
        // Adapters restart under their service's name: the index keeps
        // each process's log apart.
        let adapters = self.adapters.iter().enumerate();
        let named = self.orchestrators.iter().map(|c| (c.name.clone(), c));
        for (file, c) in named.chain(adapters.map(|(i, c)| (format!("{}-{i}", c.name), c))) {
            let text = c.output();
            let _ = std::fs::write(keep.join(format!("{}.log", file.replace(' ', "_"))), &text);
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            out.push_str(&format!("--- {} ---\n", c.name));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// The stack's consumer groups as the broker describes them: who is a
    /// member (a post-mortem of a stalled partition starts here).
    fn groups(&self) -> String {
        let consumer: StreamConsumer =
            match support::kafka().consumer(&support::unique("describer")) {
                Ok(c) => c,
                Err(e) => return format!("(groups: {e})\n"),
            };
        let list = match consumer.fetch_group_list(None, Duration::from_secs(5)) {
            Ok(l) => l,
            Err(e) => return format!("(groups: {e})\n"),
        };
        let mut out = String::new();
        for g in list
            .groups()
            .iter()
            .filter(|g| g.name().starts_with(&self.prefix))
        {
            out.push_str(&format!("group {} ({}):", g.name(), g.state()));
            for m in g.members() {
                out.push_str(&format!(" {}", m.id()));
            }
            out.push('\n');
        }
        out
    }

    pub fn effects(&self) -> BTreeMap<(String, String), u32> {
        self.ledger.lock().unwrap().effects.clone()
    }
}

/// An OrderPlaced event as JSON: the body of `POST /v1/sagas/order-checkout`.
pub fn order_json(order_id: &str, customer: &str, total_cents: i64) -> serde_json::Value {
    json!({
        "order_id": order_id,
        "customer_id": customer,
        "items": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": total_cents}],
        "total_cents": total_cents,
        "currency": "EUR",
        "shipping_address": {"line1": "1 Main St", "line2": null, "postal_code": "12345", "city": "Springfield", "country": "DE"},
        "placed_at": 1_700_000_000_000i64,
    })
}
