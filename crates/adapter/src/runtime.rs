//! The adapter process's Kafka loop: a thin driver around the [`Executor`].
//!
//! Consume `sagaflow.commands.<service>` → decode → execute (at most
//! `max-in-flight` at once) → produce the reply to `sagaflow.replies`, keyed
//! by saga id → once the broker acknowledged the reply, the record is done.
//! Offsets are stored per partition only up to the first record not yet
//! done, and committed periodically and at shutdown: delivery is
//! at-least-once, and a redelivered command is answered from the executor's
//! idempotency store without a second backend call.
//!
//! Records that can never be handled (undecodable, for another service, a
//! reply that cannot be encoded) go to the dead-letter topic with their
//! original bytes and headers plus `sagaflow-dlq-*` headers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::Message;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use sagaflow_bus::{SagaHeaders, TopicNames};
use sagaflow_codec::Codec;
use sagaflow_codec::messages::{Command, Reply, ReplyError as WireReplyError, ReplyOutcome};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::command::{AdapterCommand, AdapterOutcome, OutcomeKind};
use crate::error::AdapterError;
use crate::executor::Executor;
use crate::metrics::{AdapterMetrics, RuntimeMetrics};
use crate::offsets::OffsetTracker;
use crate::process::ProcessConfig;

/// Dead-letter headers added to the original record's headers.
pub use sagaflow_bus::dead_letter as dlq_headers;

/// Code in `sagaflow-dlq-code` for a command addressed to another service.
pub const WRONG_SERVICE_CODE: &str = "SF-ADAPTER-020";

/// Why the adapter process could not start or stopped.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    /// Configuration, secrets or metrics.
    #[error(transparent)]
    Adapter(#[from] AdapterError),
    #[error("SF-ADAPTER-017: Kafka client: {message}")]
    Kafka { message: String },
    #[error("SF-ADAPTER-018: Kafka cluster `{bootstrap}` unreachable: {message}")]
    Unreachable { bootstrap: String, message: String },
    #[error("SF-ADAPTER-019: cannot serve HTTP on {listen}: {message}")]
    Listen { listen: SocketAddr, message: String },
}

impl RuntimeError {
    /// Stable code, e.g. `SF-ADAPTER-018`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Adapter(e) => e.code(),
            Self::Kafka { .. } => "SF-ADAPTER-017",
            Self::Unreachable { .. } => "SF-ADAPTER-018",
            Self::Listen { .. } => "SF-ADAPTER-019",
        }
    }
}

/// An adapter process, ready to [`start`](AdapterRuntime::start).
pub struct AdapterRuntime {
    config: ProcessConfig,
    executor: Arc<Executor>,
    registry: prometheus::Registry,
    metrics: RuntimeMetrics,
}

impl std::fmt::Debug for AdapterRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdapterRuntime")
            .field("service", &self.executor.service())
            .field("group_id", &self.config.group_id)
            .finish_non_exhaustive()
    }
}

impl AdapterRuntime {
    /// The declarative adapter of `config.service`, with its own metrics
    /// registry (served on `/metrics`).
    pub fn new(config: ProcessConfig) -> Result<Self, RuntimeError> {
        let registry = prometheus::Registry::new();
        let metrics = AdapterMetrics::register(&registry)?;
        let executor = Executor::from_config(&config.service, metrics)?;
        Self::with_executor(config, executor, registry)
    }

    /// Runs any executor (e.g. one around a custom `CommandHandler`). The
    /// consumed topic is `sagaflow.commands.<executor.service()>`; the loop's
    /// metrics are registered in `registry`, which `/metrics` serves.
    pub fn with_executor(
        config: ProcessConfig,
        executor: Executor,
        registry: prometheus::Registry,
    ) -> Result<Self, RuntimeError> {
        let metrics = RuntimeMetrics::register(&registry)?;
        Ok(Self {
            config,
            executor: Arc::new(executor),
            registry,
            metrics,
        })
    }

    /// Checks that the cluster answers, subscribes, serves HTTP and spawns
    /// the loop. Stop it with [`RunningAdapter::shutdown`].
    pub async fn start(self) -> Result<RunningAdapter, RuntimeError> {
        let Self {
            config,
            executor,
            registry,
            metrics,
        } = self;
        let service = executor.service().to_owned();
        let topic = config.topics.commands(&service);
        let codec = Codec::from_validated(config.codec.clone()).map_err(|e| {
            AdapterError::ConfigInvalid {
                file: config.service_file.display().to_string(),
                key: "codec".into(),
                message: e.to_string(),
            }
        })?;
        let kafka_err = |e: sagaflow_bus::Error| RuntimeError::Kafka {
            message: e.to_string(),
        };
        let producer = config.kafka.producer().map_err(kafka_err)?;
        sagaflow_bus::check_reachable(&config.kafka, Duration::from_secs(10))
            .await
            .map_err(|e| RuntimeError::Unreachable {
                bootstrap: config.kafka.bootstrap_servers.clone(),
                message: match e {
                    sagaflow_bus::Error::Unreachable { message, .. } => message,
                    other => other.to_string(),
                },
            })?;
        // Adapters may start before any orchestrator created their topic.
        // (Only the commands topic: replies must keep the partition count
        // the orchestrators co-partition by, so they create it.)
        sagaflow_bus::ensure_topics(&config.kafka, &[sagaflow_bus::TopicSpec::new(&topic, 6)])
            .await
            .map_err(kafka_err)?;
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let consumer = config
            .kafka
            .consumer_with_context(
                &config.group_id,
                RebalanceEvents {
                    events: events_tx,
                    lag: sagaflow_bus::lag::LagGauge::new(
                        metrics.consumer_lag.clone(),
                        config.group_id.clone(),
                    ),
                },
            )
            .map_err(kafka_err)?;
        consumer
            .subscribe(&[topic.as_str()])
            .map_err(|e| RuntimeError::Kafka {
                message: format!("subscribing to `{topic}`: {e}"),
            })?;

        let listener = tokio::net::TcpListener::bind(config.http_listen)
            .await
            .map_err(|e| RuntimeError::Listen {
                listen: config.http_listen,
                message: e.to_string(),
            })?;
        let http_addr = listener.local_addr().map_err(|e| RuntimeError::Listen {
            listen: config.http_listen,
            message: e.to_string(),
        })?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        // The HTTP endpoint outlives the drain, so `/readyz` says 503 meanwhile.
        let (http_stop_tx, http_stop_rx) = watch::channel(false);
        let ready = Arc::new(AtomicBool::new(true));
        let http = spawn_http(
            listener,
            HttpState {
                registry,
                ready: Arc::clone(&ready),
            },
            http_stop_rx,
        );
        info!(
            service = %service,
            topic = %topic,
            group = %config.group_id,
            http = %http_addr,
            "adapter started"
        );
        let shared = Arc::new(Shared {
            codec,
            producer,
            executor,
            metrics,
            names: config.topics.clone(),
            service,
            topic,
        });
        let driver = Driver {
            consumer: Arc::new(consumer),
            shared,
            tracker: OffsetTracker::default(),
            tasks: JoinSet::new(),
            events: events_rx,
            max_in_flight: config.max_in_flight.get(),
            shutdown_timeout: config.shutdown_timeout,
            stored: false,
            ready,
        };
        let task = tokio::spawn(async move {
            let result = driver.run(shutdown_rx).await;
            let _ = http_stop_tx.send(true);
            let _ = http.await;
            result
        });
        Ok(RunningAdapter {
            http_addr,
            shutdown: shutdown_tx,
            task: Some(task),
        })
    }
}

/// A started adapter process. Dropping it also stops the loop (gracefully,
/// in the background); [`shutdown`](Self::shutdown) waits for that.
#[derive(Debug)]
pub struct RunningAdapter {
    http_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<Result<(), RuntimeError>>>,
}

impl RunningAdapter {
    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Asks the loop to stop: no new records are read, in-flight commands
    /// finish (within `shutdown-timeout`), offsets are committed.
    pub fn stop(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Waits until the loop has ended (after [`stop`](Self::stop), or on a
    /// fatal error). Returns at once if it was already awaited.
    pub async fn wait(&mut self) -> Result<(), RuntimeError> {
        let Some(task) = self.task.as_mut() else {
            return Ok(());
        };
        let result = task.await;
        self.task = None;
        result.unwrap_or_else(|e| {
            Err(RuntimeError::Kafka {
                message: format!("the adapter loop ended abnormally: {e}"),
            })
        })
    }

    /// [`stop`](Self::stop), then [`wait`](Self::wait).
    pub async fn shutdown(mut self) -> Result<(), RuntimeError> {
        self.stop();
        self.wait().await
    }
}

/// Runs the declarative adapter of `config` until `shutdown` resolves, then
/// stops gracefully (or until the loop fails).
pub async fn run_until(
    config: ProcessConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), RuntimeError> {
    let mut running = AdapterRuntime::new(config)?.start().await?;
    tokio::select! {
        result = running.wait() => result,
        () = shutdown => running.shutdown().await,
    }
}

// ------------------------------------------------------------------ rebalance

/// Hands partition revocations to the loop; returns at once.
struct RebalanceEvents {
    events: mpsc::UnboundedSender<Vec<i32>>,
    lag: sagaflow_bus::lag::LagGauge,
}

impl ClientContext for RebalanceEvents {
    fn stats(&self, statistics: rdkafka::statistics::Statistics) {
        self.lag.record(&statistics);
    }
}

impl ConsumerContext for RebalanceEvents {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            // Commit what is stored (done) for the partitions going away.
            if tpl.count() > 0
                && let Err(e) = consumer.commit_consumer_state(CommitMode::Async)
            {
                debug!(error = %e, "commit before revocation");
            }
            let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            let _ = self.events.send(partitions);
        }
    }
}

// ------------------------------------------------------------------- driver

struct Shared {
    codec: Codec,
    producer: FutureProducer,
    executor: Arc<Executor>,
    metrics: RuntimeMetrics,
    names: TopicNames,
    service: String,
    topic: String,
}

/// A record the loop handed to a task, and whether it is done (its reply or
/// dead letter acknowledged by the broker).
struct Finished {
    partition: i32,
    offset: i64,
}

struct Driver {
    consumer: Arc<StreamConsumer<RebalanceEvents>>,
    shared: Arc<Shared>,
    tracker: OffsetTracker,
    tasks: JoinSet<Finished>,
    events: mpsc::UnboundedReceiver<Vec<i32>>,
    max_in_flight: usize,
    shutdown_timeout: Duration,
    /// Offsets were stored since the last commit.
    stored: bool,
    ready: Arc<AtomicBool>,
}

const COMMIT_INTERVAL: Duration = Duration::from_millis(200);

impl Driver {
    async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<(), RuntimeError> {
        let mut commit_tick = tokio::time::interval(COMMIT_INTERVAL);
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let consumer = Arc::clone(&self.consumer);
        loop {
            let room = self.tasks.len() < self.max_in_flight;
            tokio::select! {
                biased;
                () = stop_requested(&mut shutdown) => break,
                Some(revoked) = self.events.recv() => {
                    for p in revoked {
                        self.tracker.forget(p);
                    }
                }
                Some(joined) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    self.finished(joined);
                }
                _ = commit_tick.tick() => self.commit(CommitMode::Async),
                received = consumer.recv(), if room => match received.map(|m| m.detach()) {
                    Ok(m) => {
                        self.tracker.begin(m.partition(), m.offset());
                        self.shared
                            .metrics
                            .in_flight
                            .with_label_values(&[&self.shared.service])
                            .inc();
                        let shared = Arc::clone(&self.shared);
                        self.tasks.spawn(handle_record(shared, m));
                    }
                    Err(e) => {
                        warn!(error = %e, "Kafka consumer error");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        self.drain().await;
        Ok(())
    }

    fn finished(&mut self, joined: Result<Finished, tokio::task::JoinError>) {
        self.shared
            .metrics
            .in_flight
            .with_label_values(&[&self.shared.service])
            .dec();
        let Ok(done) = joined else {
            // Aborted at shutdown: not done, will be redelivered.
            return;
        };
        if let Some(next) = self.tracker.complete(done.partition, done.offset) {
            let mut tpl = TopicPartitionList::new();
            if let Err(e) =
                tpl.add_partition_offset(&self.shared.topic, done.partition, Offset::Offset(next))
            {
                warn!(error = %e, "building the offsets to store");
                return;
            }
            match self.consumer.store_offsets(&tpl) {
                Ok(()) => self.stored = true,
                // The partition was revoked meanwhile: its new owner resumes
                // from the last commit, and replays get idempotent replies.
                Err(e) => debug!(partition = done.partition, error = %e, "offset not stored"),
            }
        }
    }

    fn commit(&mut self, mode: CommitMode) {
        if !self.stored {
            return;
        }
        self.stored = false;
        if let Err(e) = self.consumer.commit_consumer_state(mode) {
            debug!(error = %e, "offset commit");
        }
    }

    /// Stops reading, lets in-flight commands finish, commits, flushes.
    async fn drain(mut self) {
        self.ready.store(false, Ordering::SeqCst);
        info!(
            in_flight = self.tasks.len(),
            "adapter stopping; finishing in-flight commands"
        );
        let deadline = tokio::time::Instant::now() + self.shutdown_timeout;
        while !self.tasks.is_empty() {
            match tokio::time::timeout_at(deadline, self.tasks.join_next()).await {
                Ok(Some(joined)) => self.finished(joined),
                Ok(None) => break,
                Err(_) => {
                    warn!(
                        abandoned = self.tasks.len(),
                        "shutdown timeout: abandoning in-flight commands; they will be redelivered"
                    );
                    self.tasks.abort_all();
                    while let Some(joined) = self.tasks.join_next().await {
                        self.finished(joined);
                    }
                }
            }
        }
        if self.tracker.pending() > 0 {
            debug!(pending = self.tracker.pending(), "offsets left uncommitted");
        }
        let consumer = Arc::clone(&self.consumer);
        let producer = self.shared.producer.clone();
        let stored = self.stored;
        let _ = tokio::task::spawn_blocking(move || {
            if stored && let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                warn!(error = %e, "final offset commit failed");
            }
            consumer.unsubscribe();
            if let Err(e) = producer.flush(Duration::from_secs(10)) {
                warn!(error = %e, "producer flush");
            }
        })
        .await;
        info!("adapter stopped");
    }
}

async fn stop_requested(shutdown: &mut watch::Receiver<bool>) {
    // An error means the sender is gone: nobody can ask any more, so stop.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

// --------------------------------------------------------------- one record

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

async fn handle_record(shared: Arc<Shared>, m: OwnedMessage) -> Finished {
    let span = info_span!(
        "adapter.command",
        saga.id = tracing::field::Empty,
        saga.step = tracing::field::Empty,
        command.id = tracing::field::Empty,
        trace.id = tracing::field::Empty,
        span.id = tracing::field::Empty,
        messaging.kafka.partition = m.partition(),
        messaging.kafka.offset = m.offset(),
    );
    let finished = Finished {
        partition: m.partition(),
        offset: m.offset(),
    };
    process(&shared, &m).instrument(span).await;
    finished
}

/// Handles one record until its reply or dead letter is acknowledged.
async fn process(shared: &Shared, m: &OwnedMessage) {
    let started = Instant::now();
    let payload = m.payload().unwrap_or_default();
    let mut backoff = Backoff::new();
    let cmd = loop {
        match shared.codec.decode_command(&shared.topic, payload).await {
            Ok(cmd) => break cmd,
            Err(e) if e.is_retriable() => {
                warn!(error = %e, "cannot decode the command yet; retrying");
                backoff.wait().await;
            }
            Err(e) => {
                warn!(code = e.code(), error = %e, "undecodable command record; dead-lettering");
                dead_letter(shared, m, "undecodable", e.code(), &e.to_string()).await;
                return;
            }
        }
    };
    let span = tracing::Span::current();
    span.record("saga.id", cmd.saga_id.as_str());
    span.record("saga.step", cmd.step.as_str());
    span.record("command.id", cmd.command_id.as_str());
    if cmd.service != shared.service {
        let reason = format!(
            "command for service `{}` on the topic of service `{}`",
            cmd.service, shared.service
        );
        warn!(%reason, "dead-lettering");
        dead_letter(shared, m, "wrong_service", WRONG_SERVICE_CODE, &reason).await;
        return;
    }
    // This command's handling is a span of its own, a child of the
    // orchestrator's command span (or the root of a new trace when the
    // command carried none); the HTTP calls and the reply are its children.
    let parent = cmd.trace_parent.clone().or_else(|| {
        m.headers()
            .and_then(|h| SagaHeaders::from_headers(h).traceparent)
    });
    let parent = parent
        .as_deref()
        .and_then(sagaflow_bus::TraceContext::parse);
    let hop = parent.map_or_else(sagaflow_bus::TraceContext::new_root, |p| p.child());
    let span_start = SystemTime::now();
    span.record("trace.id", hop.trace_id_hex().as_str());
    span.record("span.id", hop.span_id_hex().as_str());
    let traceparent = Some(hop.header());
    let outcome = shared
        .executor
        .execute(&adapter_command(&cmd, traceparent.clone()))
        .await;
    let reply = wire_reply(&cmd, &outcome, now_ms());
    let replies = shared.names.replies();
    let bytes = loop {
        match shared.codec.encode_reply(&replies, &reply).await {
            Ok(bytes) => break bytes,
            Err(e) if e.is_retriable() => {
                warn!(error = %e, "cannot encode the reply yet; retrying");
                backoff.wait().await;
            }
            Err(e) => {
                warn!(code = e.code(), error = %e, "reply cannot be encoded; dead-lettering the command");
                dead_letter(shared, m, "unencodable_reply", e.code(), &e.to_string()).await;
                return;
            }
        }
    };
    let headers = SagaHeaders {
        saga_id: Some(cmd.saga_id.clone()),
        message_id: Some(format!("{}/reply", cmd.command_id)),
        message_type: Some("Reply".to_owned()),
        traceparent,
        tracestate: None,
    }
    .to_owned_headers();
    produce(
        shared,
        &replies,
        Some(cmd.saga_id.as_bytes()),
        &bytes,
        headers,
    )
    .await;
    shared
        .metrics
        .commands_total
        .with_label_values(&[&shared.service, outcome.kind.as_str()])
        .inc();
    shared
        .metrics
        .duration
        .with_label_values(&[&shared.service])
        .observe(started.elapsed().as_secs_f64());
    if sagaflow_telemetry::exporting() {
        use sagaflow_telemetry::Attribute;
        sagaflow_telemetry::hop(
            format!("handle {}.{}", cmd.service, cmd.operation),
            sagaflow_telemetry::HopKind::Consumer,
            &hop,
            parent.as_ref(),
            span_start,
            SystemTime::now(),
            vec![
                Attribute::new("saga.id", cmd.saga_id.clone()),
                Attribute::new("saga.type", cmd.saga_type.clone()),
                Attribute::new("saga.step", cmd.step.clone()),
                Attribute::new("messaging.system", "kafka"),
                Attribute::new("messaging.operation.type", "process"),
                Attribute::new("messaging.destination.name", shared.topic.clone()),
                Attribute::new("sagaflow.outcome", outcome.kind.as_str()),
            ],
        );
    }
    info!(outcome = outcome.kind.as_str(), "replied");
}

/// The executor's view of a wire command.
pub(crate) fn adapter_command(cmd: &Command, traceparent: Option<String>) -> AdapterCommand {
    AdapterCommand {
        command_id: cmd.command_id.clone(),
        saga_id: cmd.saga_id.clone(),
        saga_type: cmd.saga_type.clone(),
        step: cmd.step.clone(),
        service: cmd.service.clone(),
        operation: cmd.operation.clone(),
        attempt: u32::try_from(cmd.attempt).unwrap_or(0),
        input: cmd.input.clone(),
        timeout_ms: u64::try_from(cmd.timeout_ms).unwrap_or(0),
        traceparent,
    }
}

/// The wire reply for `outcome`.
pub(crate) fn wire_reply(cmd: &Command, outcome: &AdapterOutcome, completed_at: i64) -> Reply {
    Reply {
        command_id: cmd.command_id.clone(),
        saga_id: cmd.saga_id.clone(),
        step: cmd.step.clone(),
        attempt: cmd.attempt,
        service: cmd.service.clone(),
        operation: cmd.operation.clone(),
        outcome: match outcome.kind {
            OutcomeKind::Success => ReplyOutcome::Success,
            OutcomeKind::BusinessFailure => ReplyOutcome::BusinessFailure,
            OutcomeKind::TransientFailure => ReplyOutcome::TransientFailure,
        },
        data: outcome.data.clone(),
        error: outcome.error.as_ref().map(|e| WireReplyError {
            code: e.code.clone(),
            message: e.message.clone(),
        }),
        completed_at,
        backend_status: outcome.http_status.map(i32::from),
    }
}

async fn dead_letter(shared: &Shared, m: &OwnedMessage, reason: &str, code: &str, message: &str) {
    let headers = sagaflow_bus::dead_letter::headers(m, code, message);
    let topic = shared.names.dead_letter();
    produce(
        shared,
        &topic,
        m.key(),
        m.payload().unwrap_or_default(),
        headers,
    )
    .await;
    shared
        .metrics
        .dead_letters_total
        .with_label_values(&[&shared.service, reason])
        .inc();
}

/// Produces until the broker acknowledges (the idempotent producer keeps
/// retries free of duplicates); gives up only when the task is aborted.
async fn produce(
    shared: &Shared,
    topic: &str,
    key: Option<&[u8]>,
    payload: &[u8],
    headers: OwnedHeaders,
) {
    let mut backoff = Backoff::new();
    loop {
        let mut record = FutureRecord::<[u8], [u8]>::to(topic)
            .payload(payload)
            .headers(headers.clone());
        if let Some(key) = key {
            record = record.key(key);
        }
        match shared
            .producer
            .send(record, Timeout::After(Duration::from_secs(30)))
            .await
        {
            Ok(_) => return,
            Err((e, _)) => {
                warn!(topic, error = %e, "produce failed; retrying");
                shared
                    .metrics
                    .produce_retries_total
                    .with_label_values(&[&shared.service])
                    .inc();
                backoff.wait().await;
            }
        }
    }
}

struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Self(Duration::from_millis(100))
    }

    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
    }
}

// --------------------------------------------------------------------- HTTP

#[derive(Clone)]
struct HttpState {
    registry: prometheus::Registry,
    ready: Arc<AtomicBool>,
}

fn spawn_http(
    listener: tokio::net::TcpListener,
    state: HttpState,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    use axum::routing::get;
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state);
    tokio::spawn(async move {
        let stop = async move { stop_requested(&mut shutdown).await };
        // Timeouts and a connection cap: no slow client holds the server.
        let server = sagaflow_http::Server::new(sagaflow_http::ServerConfig::default());
        if let Err(e) = server.serve(listener, app, stop).await {
            warn!(error = %e, "HTTP server");
        }
    })
}

async fn readyz(
    axum::extract::State(state): axum::extract::State<HttpState>,
) -> (axum::http::StatusCode, &'static str) {
    if state.ready.load(Ordering::SeqCst) {
        (axum::http::StatusCode::OK, "ready\n")
    } else {
        (axum::http::StatusCode::SERVICE_UNAVAILABLE, "stopping\n")
    }
}

async fn metrics(
    axum::extract::State(state): axum::extract::State<HttpState>,
) -> (
    axum::http::StatusCode,
    [(&'static str, &'static str); 1],
    String,
) {
    use prometheus::Encoder;
    let mut buf = Vec::new();
    let encoder = prometheus::TextEncoder::new();
    match encoder.encode(&state.registry.gather(), &mut buf) {
        Ok(()) => (
            axum::http::StatusCode::OK,
            [("content-type", "text/plain; version=0.0.4")],
            String::from_utf8_lossy(&buf).into_owned(),
        ),
        Err(e) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            [("content-type", "text/plain")],
            e.to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sagaflow_codec::messages::CommandKind;

    fn command() -> Command {
        Command {
            command_id: "s-1/pay/2".into(),
            saga_id: "s-1".into(),
            saga_type: "order".into(),
            saga_version: 1,
            step: "pay".into(),
            service: "payments".into(),
            operation: "charge".into(),
            attempt: 2,
            kind: CommandKind::Action,
            input: serde_json::json!({"amount": 5}),
            timeout_ms: -1,
            issued_at: 1,
            trace_parent: None,
        }
    }

    #[test]
    fn wire_command_maps_to_the_executor_view() {
        let a = adapter_command(&command(), Some("00-ab-cd-01".into()));
        assert_eq!(a.attempt, 2);
        assert_eq!(a.timeout_ms, 0, "a negative budget means the default");
        assert_eq!(a.traceparent.as_deref(), Some("00-ab-cd-01"));
        assert_eq!(a.input["amount"], 5);
    }

    #[test]
    fn outcomes_map_to_wire_replies() {
        let o = AdapterOutcome::business_failure("http_409", "taken").with_status(409);
        let r = wire_reply(&command(), &o, 42);
        assert_eq!(r.outcome, ReplyOutcome::BusinessFailure);
        assert_eq!(r.backend_status, Some(409));
        assert_eq!(r.error.as_ref().map(|e| e.code.as_str()), Some("http_409"));
        assert_eq!((r.attempt, r.completed_at), (2, 42));
        let r = wire_reply(
            &command(),
            &AdapterOutcome::success(serde_json::json!({"id": 1})),
            1,
        );
        assert_eq!(r.outcome, ReplyOutcome::Success);
        assert_eq!(r.error, None);
        assert_eq!(r.data["id"], 1);
    }
}
