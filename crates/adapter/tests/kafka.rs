//! The adapter process end to end: a real (embedded) Kafka-protocol broker,
//! a real schema registry, a real HTTP backend; the runtime runs in-process.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Backend, Reply as BackendReply};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::FutureRecord;
use sagaflow_adapter::{
    AdapterCommand, AdapterMetrics, AdapterOutcome, AdapterRuntime, CallContext, CommandHandler,
    Executor, ExecutorSettings, ProcessConfig, RunningAdapter,
};
use sagaflow_bus::Producer;
use sagaflow_bus::{SagaHeaders, TopicNames, TopicSpec, header_names};
use sagaflow_codec::messages::{Command, CommandKind, Reply, ReplyOutcome};
use sagaflow_codec::{Codec, CodecConfig};
use sagaflow_registry::{MemoryLog, Registry, ServeHandle};
use sagaflow_test_support as ts;
use sagaflow_test_support::header;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// The backend: `/api/charges/<order>` answers by the order id's prefix.
async fn backend() -> Backend {
    Backend::start(|_, seen| {
        let order = seen.path.rsplit('/').next().unwrap_or_default();
        if order.starts_with("taken") {
            BackendReply::json(409, json!({"error": "duplicate order"}))
        } else if order.starts_with("down") {
            BackendReply::status(503)
        } else if order.starts_with("slow") {
            BackendReply::json(201, json!({"id": format!("p-{order}")}))
                .delay(Duration::from_millis(1500))
        } else {
            BackendReply::json(201, json!({"id": format!("p-{order}")}))
        }
    })
    .await
}

fn service_yaml(base: &str) -> String {
    format!(
        r#"service: payments
base-urls: ["{base}/api"]
retry: {{ max-attempts: 1 }}
protection: {{ request-timeout: 5s, circuit-breaker: {{ failure-threshold: 100, cool-down: 1s }} }}
operations:
  charge:
    rest:
      method: POST
      path: /charges/{{{{ input.order_id }}}}
      body: {{ amount: "{{{{ input.amount }}}}" }}
      response: {{ payment_id: /id }}
"#
    )
}

enum Wire {
    Avro(String),
    Json,
}

impl Wire {
    fn codec_yaml(&self) -> String {
        match self {
            Self::Avro(url) => {
                format!("  registry: {{ url: \"{url}\" }}\n  default-format: {{ format: avro }}\n")
            }
            Self::Json => "  default-format: { format: json }\n".to_owned(),
        }
    }

    fn codec(&self) -> Codec {
        let config = match self {
            Self::Avro(url) => CodecConfig::avro_everywhere(url.clone()),
            Self::Json => CodecConfig {
                default_format: Some(sagaflow_codec::TopicFormat::Json),
                ..CodecConfig::default()
            },
        };
        Codec::new(config).unwrap()
    }
}

/// Topics under a fresh prefix, so tests never see each other's records.
struct Env {
    names: TopicNames,
    group: String,
    dir: tempfile::TempDir,
    codec: Codec,
    producer: Producer,
}

impl Env {
    async fn new(wire: &Wire, backend: &Backend, command_partitions: i32) -> Self {
        let names = TopicNames::with_prefix(format!("{}.", ts::unique("ak")));
        ts::create(TopicSpec::new(
            names.commands("payments"),
            command_partitions,
        ))
        .await;
        ts::create(TopicSpec::new(names.replies(), 3)).await;
        ts::create(TopicSpec::new(names.dead_letter(), 1)).await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("services")).unwrap();
        std::fs::write(
            dir.path().join("services/payments.yaml"),
            service_yaml(&backend.url()),
        )
        .unwrap();
        let group = ts::unique("adapter-group");
        let process = format!(
            "kafka:\n  bootstrap-servers: \"{}\"\n  properties: {{ fetch.wait.max.ms: \"1\" }}\ntopics: {{ prefix: \"{}\" }}\ncodec:\n{}service: services/payments.yaml\ngroup-id: {group}\nhttp: {{ listen: 127.0.0.1:0 }}\nmax-in-flight: 8\nshutdown-timeout: 20s\n",
            ts::bootstrap_servers(),
            names.prefix,
            wire.codec_yaml(),
        );
        std::fs::write(dir.path().join("adapter.yaml"), process).unwrap();
        Self {
            names,
            group,
            dir,
            codec: wire.codec(),
            producer: ts::kafka().producer().unwrap(),
        }
    }

    fn config(&self) -> ProcessConfig {
        ProcessConfig::load(self.dir.path().join("adapter.yaml")).unwrap()
    }

    async fn start(&self) -> RunningAdapter {
        AdapterRuntime::new(self.config())
            .unwrap()
            .start()
            .await
            .unwrap()
    }

    /// Starts the runtime around a custom handler (the SDK path).
    async fn start_with(&self, handler: Arc<dyn CommandHandler>) -> RunningAdapter {
        let registry = prometheus::Registry::new();
        let metrics = AdapterMetrics::register(&registry).unwrap();
        let executor = Executor::new(ExecutorSettings::new("payments"), handler, metrics);
        AdapterRuntime::with_executor(self.config(), executor, registry)
            .unwrap()
            .start()
            .await
            .unwrap()
    }

    fn commands_topic(&self) -> String {
        self.names.commands("payments")
    }

    async fn send(&self, cmd: &Command) {
        let topic = self.commands_topic();
        let bytes = self.codec.encode_command(&topic, cmd).await.unwrap();
        let headers = SagaHeaders {
            saga_id: Some(cmd.saga_id.clone()),
            message_id: Some(cmd.command_id.clone()),
            message_type: Some("Command".into()),
            traceparent: cmd.trace_parent.clone(),
            tracestate: None,
        }
        .to_owned_headers();
        self.send_raw(&cmd.saga_id, &bytes, headers).await;
    }

    async fn send_raw(&self, key: &str, payload: &[u8], headers: OwnedHeaders) {
        let topic = self.commands_topic();
        let record = FutureRecord::to(&topic)
            .key(key)
            .payload(payload)
            .headers(headers);
        self.producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }

    fn reader(&self, topic: &str) -> StreamConsumer {
        let c = ts::kafka().consumer(&ts::unique("reader")).unwrap();
        c.subscribe(&[topic]).unwrap();
        c
    }

    /// Reads `n` replies (bounded wait), decoded, with their records.
    async fn replies(&self, reader: &StreamConsumer, n: usize) -> Vec<(Reply, OwnedMessage)> {
        let records = ts::consume(reader, n, WAIT).await;
        assert_eq!(records.len(), n, "replies within {WAIT:?}");
        let mut out = Vec::new();
        for m in records {
            let reply = self
                .codec
                .decode_reply(&self.names.replies(), m.payload().unwrap())
                .await
                .unwrap();
            out.push((reply, m));
        }
        out
    }
}

fn command(saga: &str, order: &str, attempt: i32) -> Command {
    Command {
        command_id: Command::action_id(saga, "charge", attempt),
        saga_id: saga.to_owned(),
        saga_type: "order-checkout".into(),
        saga_version: 1,
        step: "charge".into(),
        service: "payments".into(),
        operation: "charge".into(),
        attempt,
        kind: CommandKind::Action,
        input: json!({"order_id": order, "amount": 12}),
        timeout_ms: 10_000,
        issued_at: 1,
        trace_parent: Some(TRACEPARENT.into()),
    }
}

async fn start_registry() -> (Registry, ServeHandle) {
    let registry = Registry::open(MemoryLog::new()).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let handle = registry.serve(listener).unwrap();
    (registry, handle)
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let resp = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

/// The value of the sample of `name` whose labels include all of `labels`.
fn sample(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_commands_get_replies_keyed_by_saga_id_and_redelivery_is_idempotent() {
    let (_registry, handle) = start_registry().await;
    let backend = backend().await;
    let env = Env::new(&Wire::Avro(handle.url()), &backend, 2).await;
    let running = env.start().await;
    let reader = env.reader(&env.names.replies());

    let ok = command("order-checkout:o-1", "ok-1", 1);
    let taken = command("order-checkout:o-2", "taken-2", 1);
    let down = command("order-checkout:o-3", "down-3", 1);
    for c in [&ok, &taken, &down] {
        env.send(c).await;
    }
    let replies: HashMap<String, (Reply, OwnedMessage)> = env
        .replies(&reader, 3)
        .await
        .into_iter()
        .map(|(r, m)| (r.command_id.clone(), (r, m)))
        .collect();

    let (r, m) = &replies[&ok.command_id];
    assert_eq!(r.outcome, ReplyOutcome::Success);
    assert_eq!(r.data, json!({"payment_id": "p-ok-1"}));
    assert_eq!(r.backend_status, Some(201));
    assert_eq!(
        (r.saga_id.as_str(), r.step.as_str()),
        (ok.saga_id.as_str(), "charge")
    );
    assert_eq!(
        (r.service.as_str(), r.operation.as_str(), r.attempt),
        ("payments", "charge", 1)
    );
    assert!(r.completed_at > 1_600_000_000_000, "{}", r.completed_at);
    assert_eq!(m.key(), Some(ok.saga_id.as_bytes()), "keyed by saga id");
    assert_eq!(
        header(m, header_names::SAGA_ID).as_deref(),
        Some(ok.saga_id.as_str())
    );
    assert_eq!(
        header(m, header_names::MESSAGE_ID),
        Some(format!("{}/reply", ok.command_id))
    );
    // The reply is the adapter's span: the command's trace, a new span id.
    let reply_trace = header(m, header_names::TRACEPARENT).unwrap_or_default();
    assert_eq!(
        reply_trace.get(..35),
        TRACEPARENT.get(..35),
        "{reply_trace}"
    );
    assert_ne!(reply_trace, TRACEPARENT);
    assert!(
        sagaflow_bus::TraceContext::parse(&reply_trace).is_some(),
        "{reply_trace}"
    );

    let (r, m) = &replies[&taken.command_id];
    assert_eq!(r.outcome, ReplyOutcome::BusinessFailure);
    assert_eq!(r.error.as_ref().unwrap().code, "http_409");
    assert_eq!(r.backend_status, Some(409));
    assert_eq!(m.key(), Some(taken.saga_id.as_bytes()));

    let (r, m) = &replies[&down.command_id];
    assert_eq!(r.outcome, ReplyOutcome::TransientFailure);
    assert_eq!(r.error.as_ref().unwrap().code, "http_503");
    assert_eq!(m.key(), Some(down.saga_id.as_bytes()));

    // The backend saw each command once, with the trace context.
    assert_eq!(backend.count("/api/charges/ok-1"), 1);
    assert_eq!(backend.count("/api/charges/taken-2"), 1);
    assert_eq!(backend.count("/api/charges/down-3"), 1);
    // Each HTTP call is a span of its own in the command's trace.
    let seen = backend.seen();
    let mut spans = std::collections::HashSet::new();
    for s in &seen {
        let tp = s.header("traceparent").unwrap_or_default();
        assert_eq!(tp.get(..35), TRACEPARENT.get(..35), "{tp}");
        assert!(spans.insert(tp.clone()) && tp != TRACEPARENT, "{tp}");
    }

    // Redelivery of the same command: the same reply, no second call.
    env.send(&ok).await;
    let (again, m) = env.replies(&reader, 1).await.remove(0);
    assert_eq!(again.command_id, ok.command_id);
    assert_eq!(again.outcome, ReplyOutcome::Success);
    assert_eq!(again.data, replies[&ok.command_id].0.data);
    assert_eq!(m.key(), Some(ok.saga_id.as_bytes()));
    assert_eq!(
        backend.count("/api/charges/ok-1"),
        1,
        "answered from the idempotency store"
    );

    let (status, _) = http_get(running.http_addr(), "/healthz").await;
    assert_eq!(status, 200);
    let (status, _) = http_get(running.http_addr(), "/readyz").await;
    assert_eq!(status, 200);
    let (status, text) = http_get(running.http_addr(), "/metrics").await;
    assert_eq!(status, 200);
    // Every process serves its build and the standard process metrics.
    assert!(
        text.contains("sagaflow_build_info{git_sha=") && text.contains("} 1"),
        "{text}"
    );
    #[cfg(target_os = "linux")]
    assert!(sample(&text, "process_resident_memory_bytes", &[]).is_some_and(|b| b > 0.0));
    let commands = "sagaflow_adapter_commands_total";
    assert_eq!(
        sample(
            &text,
            commands,
            &["outcome=\"success\"", "service=\"payments\""]
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, commands, &["outcome=\"business_failure\""]),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, commands, &["outcome=\"transient_failure\""]),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "sagaflow_adapter_idempotent_hits_total", &[]),
        Some(1.0)
    );
    assert!(text.contains("sagaflow_adapter_calls_total"), "{text}");

    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_records_are_dead_lettered_and_the_next_command_still_runs() {
    let backend = backend().await;
    let env = Env::new(&Wire::Json, &backend, 1).await;
    let running = env.start().await;
    let replies = env.reader(&env.names.replies());
    let dead = env.reader(&env.names.dead_letter());

    let garbage_headers = OwnedHeaders::new().insert(Header {
        key: "x-origin",
        value: Some("fuzzer"),
    });
    env.send_raw("saga-garbage", b"\x00\x01 not a command", garbage_headers)
        .await;
    let mut stranger = command("order-checkout:o-9", "ok-9", 1);
    stranger.service = "shipping".into();
    env.send(&stranger).await;
    let next = command("order-checkout:o-10", "ok-10", 1);
    env.send(&next).await;

    let (reply, _) = env.replies(&replies, 1).await.remove(0);
    assert_eq!(reply.command_id, next.command_id);
    assert_eq!(reply.outcome, ReplyOutcome::Success);

    let mut letters = ts::consume(&dead, 2, WAIT).await;
    assert_eq!(letters.len(), 2, "two dead letters");
    // Records run concurrently: dead letters may arrive in either order.
    letters.sort_by_key(|m| header(m, "sagaflow-dlq-source-offset"));
    let g = &letters[0];
    assert_eq!(
        g.payload(),
        Some(&b"\x00\x01 not a command"[..]),
        "original bytes"
    );
    assert_eq!(g.key(), Some(&b"saga-garbage"[..]));
    assert_eq!(
        header(g, "x-origin").as_deref(),
        Some("fuzzer"),
        "original headers"
    );
    assert_eq!(
        header(g, "sagaflow-dlq-code").as_deref(),
        Some("SF-CODEC-006")
    );
    assert!(
        header(g, "sagaflow-dlq-reason")
            .unwrap()
            .contains("invalid JSON")
    );
    assert_eq!(
        header(g, "sagaflow-dlq-source-topic"),
        Some(env.commands_topic())
    );
    assert_eq!(
        header(g, "sagaflow-dlq-source-partition").as_deref(),
        Some("0")
    );
    assert_eq!(
        header(g, "sagaflow-dlq-source-offset").as_deref(),
        Some("0")
    );
    let s = &letters[1];
    assert_eq!(
        header(s, "sagaflow-dlq-code").as_deref(),
        Some("SF-ADAPTER-020")
    );
    assert!(
        header(s, "sagaflow-dlq-reason")
            .unwrap()
            .contains("shipping")
    );
    assert_eq!(
        header(s, "sagaflow-dlq-source-offset").as_deref(),
        Some("1")
    );
    assert_eq!(
        header(s, header_names::SAGA_ID),
        Some(stranger.saga_id.clone())
    );

    assert_eq!(
        backend.total(),
        1,
        "only the valid command reached the backend"
    );
    let (_, text) = http_get(running.http_addr(), "/metrics").await;
    let letters = "sagaflow_adapter_dead_letters_total";
    assert_eq!(
        sample(&text, letters, &["reason=\"undecodable\""]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, letters, &["reason=\"wrong_service\""]),
        Some(1.0),
        "{text}"
    );
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_are_committed_so_a_restart_does_not_repeat_work() {
    let backend = backend().await;
    let env = Env::new(&Wire::Json, &backend, 2).await;
    let running = env.start().await;
    let replies = env.reader(&env.names.replies());
    let first = [
        command("order-checkout:o-20", "ok-20", 1),
        command("order-checkout:o-21", "ok-21", 1),
        command("order-checkout:o-22", "ok-22", 1),
    ];
    for c in &first {
        env.send(c).await;
    }
    env.replies(&replies, 3).await;
    running.shutdown().await.unwrap();

    // A plain consumer of the group starts after the processed commands.
    let probe: StreamConsumer = ts::kafka().consumer(&env.group).unwrap();
    probe.subscribe(&[env.commands_topic().as_str()]).unwrap();
    let mut seen = ts::await_assignment(&probe, 2, WAIT).await.unwrap();
    seen.extend(ts::consume(&probe, 1, Duration::from_secs(3)).await);
    assert!(
        seen.is_empty(),
        "processed commands seen again: {}",
        seen.len()
    );
    probe.unsubscribe();
    drop(probe);

    // A restarted adapter (fresh idempotency store) answers only new work.
    let running = env.start().await;
    let later = command("order-checkout:o-23", "ok-23", 1);
    env.send(&later).await;
    let (reply, _) = env.replies(&replies, 1).await.remove(0);
    assert_eq!(reply.command_id, later.command_id);
    let extra = ts::consume(&replies, 1, Duration::from_secs(3)).await;
    assert!(extra.is_empty(), "old commands replayed: {}", extra.len());
    assert_eq!(backend.total(), 4, "each command called the backend once");
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_commands() {
    let backend = backend().await;
    let env = Env::new(&Wire::Json, &backend, 1).await;
    let mut running = env.start().await;
    let replies = env.reader(&env.names.replies());
    let slow = command("order-checkout:o-30", "slow-30", 1);
    env.send(&slow).await;
    let deadline = Instant::now() + WAIT;
    while backend.total() == 0 {
        assert!(Instant::now() < deadline, "the backend was never called");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The backend holds the call for 1.5 s; stopping now must wait for it.
    let stopped = Instant::now();
    running.stop();
    let mut draining = false;
    while stopped.elapsed() < Duration::from_secs(1) {
        if http_get(running.http_addr(), "/readyz").await.0 == 503 {
            draining = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(draining, "/readyz says 503 while in-flight commands finish");
    running.wait().await.unwrap();
    assert!(
        stopped.elapsed() >= Duration::from_millis(500),
        "did not wait"
    );
    let (reply, _) = env.replies(&replies, 1).await.remove(0);
    assert_eq!(reply.command_id, slow.command_id);
    assert_eq!(reply.outcome, ReplyOutcome::Success);
}

#[tokio::test]
async fn an_unreachable_cluster_fails_start_up() {
    let backend = backend().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.yaml"), service_yaml(&backend.url())).unwrap();
    let process = "kafka:\n  bootstrap-servers: 127.0.0.1:1\n  properties: { socket.connection.setup.timeout.ms: \"1000\" }\ncodec:\n  default-format: { format: json }\nservice: p.yaml\nhttp: { listen: 127.0.0.1:0 }\n";
    let path = dir.path().join("adapter.yaml");
    std::fs::write(&path, process).unwrap();
    let config = ProcessConfig::load(Path::new(&path)).unwrap();
    let err = tokio::time::timeout(WAIT, AdapterRuntime::new(config).unwrap().start())
        .await
        .expect("start-up gives up")
        .unwrap_err();
    assert_eq!(err.code(), "SF-ADAPTER-018", "{err}");
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_run_concurrently_up_to_max_in_flight() {
    let backend = backend().await;
    let env = Env::new(&Wire::Json, &backend, 1).await;
    let file = env.dir.path().join("adapter.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("max-in-flight: 8", "max-in-flight: 2")).unwrap();
    let running = env.start().await;
    let replies = env.reader(&env.names.replies());
    // Every call is held 1.5 s by the backend.
    for i in 0..5 {
        env.send(&command(
            &format!("order-checkout:o-4{i}"),
            &format!("slow-4{i}"),
            1,
        ))
        .await;
    }
    let got = env.replies(&replies, 5).await;
    assert!(got.iter().all(|(r, _)| r.outcome == ReplyOutcome::Success));
    assert_eq!(backend.total(), 5);
    assert_eq!(
        backend.max_in_flight(),
        2,
        "concurrent, and bounded by max-in-flight"
    );
    running.shutdown().await.unwrap();
}

/// A handler that panics on orders starting with `boom` (the injected
/// panic), and succeeds otherwise.
struct Panicky;

#[async_trait::async_trait]
impl CommandHandler for Panicky {
    async fn handle(&self, cmd: &AdapterCommand, _ctx: &CallContext) -> AdapterOutcome {
        let order = cmd.input["order_id"].as_str().unwrap_or_default();
        if order.starts_with("boom") {
            panic!("injected panic for {order}");
        }
        AdapterOutcome::success(json!({"payment_id": format!("p-{order}")}))
    }
}

/// A panicking handler used to kill the command's task: no reply, no dead
/// letter, the partition's commit stuck behind it for ever. Now the saga
/// gets a coded failure reply, the command is dead-lettered with the panic,
/// the next command on the same partition runs, the offset is committed,
/// and the panic is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_gets_a_failure_reply_and_a_dead_letter_and_the_partition_moves_on() {
    let backend = backend().await;
    let env = Env::new(&Wire::Json, &backend, 1).await;
    let running = env.start_with(Arc::new(Panicky)).await;
    let replies = env.reader(&env.names.replies());
    let dead = env.reader(&env.names.dead_letter());
    let boom = command("order-checkout:o-30", "boom-30", 1);
    let next = command("order-checkout:o-31", "ok-31", 1);
    env.send(&boom).await;
    env.send(&next).await;

    let got = env.replies(&replies, 2).await;
    let by_id: HashMap<String, Reply> = got
        .into_iter()
        .map(|(r, _)| (r.command_id.clone(), r))
        .collect();
    let failed = &by_id[&boom.command_id];
    assert_eq!(failed.outcome, ReplyOutcome::TransientFailure, "{failed:?}");
    let err = failed.error.as_ref().expect("an error");
    assert_eq!(err.code, "handler_panic");
    assert!(err.message.contains("SF-ADAPTER-021"), "{}", err.message);
    assert!(err.message.contains("`charge`"), "{}", err.message);
    assert_eq!(by_id[&next.command_id].outcome, ReplyOutcome::Success);

    let letters = ts::consume(&dead, 1, WAIT).await;
    assert_eq!(letters.len(), 1, "one dead letter");
    let l = &letters[0];
    assert_eq!(
        header(l, "sagaflow-dlq-code").as_deref(),
        Some("SF-ADAPTER-021")
    );
    let reason = header(l, "sagaflow-dlq-reason").unwrap();
    assert!(reason.contains("injected panic for boom-30"), "{reason}");
    assert_eq!(
        header(l, "sagaflow-dlq-source-offset").as_deref(),
        Some("0")
    );

    let (_, text) = http_get(running.http_addr(), "/metrics").await;
    assert_eq!(
        sample(&text, "sagaflow_adapter_handler_panics_total", &[]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "sagaflow_adapter_dead_letters_total",
            &["reason=\"handler_panic\""]
        ),
        Some(1.0),
        "{text}"
    );
    no_command_in_flight(running.http_addr()).await;
    let (status, _) = http_get(running.http_addr(), "/readyz").await;
    assert_eq!(status, 200);
    running.shutdown().await.unwrap();

    // Both offsets were committed: the group sees nothing again.
    let probe: StreamConsumer = ts::kafka().consumer(&env.group).unwrap();
    probe.subscribe(&[env.commands_topic().as_str()]).unwrap();
    let mut seen = ts::await_assignment(&probe, 1, WAIT).await.unwrap();
    seen.extend(ts::consume(&probe, 1, Duration::from_secs(3)).await);
    assert!(seen.is_empty(), "records redelivered: {}", seen.len());
}

/// A backend body under `max-response-bytes` can still make a reply over
/// the producer's `message.max.bytes` (here: `1e9` grows to
/// `1000000000.0` when the reply is encoded). Such a reply used to be
/// retried for ever, holding its slot and the partition's commit. Now it is
/// replaced by a small failure reply that says why, and the next command
/// runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_too_large_to_produce_is_replaced_by_a_failure_reply() {
    let backend = Backend::start(|_, seen| {
        let order = seen.path.rsplit('/').next().unwrap_or_default();
        if order.starts_with("huge") {
            let mut body = String::from("{\"id\":[");
            while body.len() < 500_000 {
                body.push_str("1e9,");
            }
            body.push_str("1e9]}");
            BackendReply::status(201)
                .header("content-type", "application/json")
                .body(body)
        } else {
            BackendReply::json(201, json!({"id": format!("p-{order}")}))
        }
    })
    .await;
    let env = Env::new(&Wire::Json, &backend, 1).await;
    let running = env.start().await;
    let replies = env.reader(&env.names.replies());
    let huge = command("order-checkout:o-40", "huge-40", 1);
    let next = command("order-checkout:o-41", "ok-41", 1);
    env.send(&huge).await;
    env.send(&next).await;

    let got = env.replies(&replies, 2).await;
    let by_id: HashMap<String, Reply> = got
        .into_iter()
        .map(|(r, _)| (r.command_id.clone(), r))
        .collect();
    let replaced = &by_id[&huge.command_id];
    assert_eq!(
        replaced.outcome,
        ReplyOutcome::BusinessFailure,
        "{replaced:?}"
    );
    assert_eq!(replaced.backend_status, Some(201));
    let err = replaced.error.as_ref().expect("an error");
    assert_eq!(err.code, "reply_unproducible");
    for part in [
        "SF-ADAPTER-022",
        "message.max.bytes",
        "1000000",
        "too large",
    ] {
        assert!(err.message.contains(part), "{part} in {}", err.message);
    }
    assert_eq!(by_id[&next.command_id].outcome, ReplyOutcome::Success);
    let (_, text) = http_get(running.http_addr(), "/metrics").await;
    assert_eq!(
        sample(
            &text,
            "sagaflow_adapter_produce_failures_total",
            &["destination=\"reply\"", "reason=\"message_too_large\""]
        ),
        Some(1.0),
        "{text}"
    );
    no_command_in_flight(running.http_addr()).await;
    running.shutdown().await.unwrap();
}

/// Waits until the adapter's `sagaflow_adapter_commands_in_flight` is 0. A
/// command is answered once its idempotency-log record is acknowledged
/// too, and its reply goes out ahead of that record, so a reply read back
/// does not mean its command is done yet.
async fn no_command_in_flight(addr: std::net::SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, text) = http_get(addr, "/metrics").await;
        if sample(&text, "sagaflow_adapter_commands_in_flight", &[]) == Some(0.0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "a command still in flight 10 s after its reply: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Completed commands are written to the idempotency log and restored on
/// assignment: an adapter that reads every command again with an empty
/// memory (a new group, as after losing all state) answers them from the
/// log without calling the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_commands_are_restored_from_the_idempotency_log() {
    let backend = backend().await;
    let env = Env::new(&Wire::Json, &backend, 2).await;
    let running = env.start().await;
    let replies = env.reader(&env.names.replies());
    let commands: Vec<Command> = (0..6)
        .map(|i| {
            let order = if i == 5 {
                "taken-55".to_owned()
            } else {
                format!("ok-5{i}")
            };
            command(&format!("order-checkout:o-5{i}"), &order, 1)
        })
        .collect();
    for c in &commands {
        env.send(c).await;
    }
    let first = env.replies(&replies, 6).await;
    assert_eq!(backend.total(), 6);
    running.shutdown().await.unwrap();

    let mut config = env.config();
    config.group_id = ts::unique("adapter-group-fresh");
    let running = AdapterRuntime::new(config).unwrap().start().await.unwrap();
    let again = env.replies(&replies, 6).await;
    assert_eq!(backend.total(), 6, "no command reached the backend twice");
    let outcomes = |rs: &[(Reply, OwnedMessage)]| {
        let mut v: Vec<(String, ReplyOutcome, serde_json::Value)> = rs
            .iter()
            .map(|(r, _)| (r.command_id.clone(), r.outcome, r.data.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    assert_eq!(outcomes(&first), outcomes(&again), "the same replies");
    let (_, text) = http_get(running.http_addr(), "/metrics").await;
    // At least once per partition assignment (a second rebalance restores
    // again).
    assert!(
        sample(&text, "sagaflow_adapter_idempotency_restored_total", &[]).is_some_and(|n| n >= 6.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "sagaflow_adapter_idempotent_hits_total", &[]),
        Some(6.0),
        "{text}"
    );
    // Both partitions of the commands topic are held and restored.
    assert_eq!(
        sample(&text, "sagaflow_adapter_served_partitions", &[]),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "sagaflow_adapter_cache_entries",
            &["cache=\"idempotency\""]
        ),
        Some(6.0),
        "{text}"
    );
    assert!(
        sample(
            &text,
            "sagaflow_adapter_cache_bytes",
            &["cache=\"idempotency\""]
        )
        .is_some_and(|b| b > 0.0),
        "{text}"
    );
    running.shutdown().await.unwrap();
}
