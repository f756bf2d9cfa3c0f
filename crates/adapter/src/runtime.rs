//! The adapter process's Kafka loop: a thin driver around the [`Executor`].
//!
//! Consume `sagaflow.commands.<service>` → decode → execute (at most
//! `max-in-flight` at once) → produce the reply to `sagaflow.replies`, keyed
//! by saga id → once the broker acknowledged the reply (and a final
//! outcome's record in the idempotency log), the record is done.
//! Offsets are stored per partition only up to the first record not yet
//! done, and committed periodically and at shutdown: delivery is
//! at-least-once, and a redelivered command is answered from the executor's
//! idempotency store without a second backend call.
//!
//! Records that can never be handled (undecodable, for another service, a
//! reply that cannot be encoded or produced, a handler that panicked) go to
//! the dead-letter topic with their original bytes and headers plus
//! `sagaflow-dlq-*` headers.
//!
//! Final outcomes are also written to the durable idempotency log
//! ([`crate::durable`]), alongside the reply; a partition's part of that log is
//! read back into the idempotency store when the partition is assigned,
//! before any of its commands is handled.

use sagaflow_bus::now_ms;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use futures_util::FutureExt as _;
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureRecord, Producer as _};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use sagaflow_bus::Producer;
use sagaflow_bus::commit::CommitTimer;
use sagaflow_bus::rebalance::{Ownership, RebalanceEvents, RebalancePolicy};
use sagaflow_bus::{KafkaConfig, SagaHeaders, TopicNames, TraceHeaders};
use sagaflow_codec::Codec;
use sagaflow_codec::messages::{Command, Reply, ReplyError as WireReplyError, ReplyOutcome};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::command::{AdapterCommand, AdapterOutcome, OutcomeKind};
use crate::durable;
use crate::error::AdapterError;
use crate::executor::Executor;
use crate::metrics::{AdapterMetrics, RuntimeMetrics};
use crate::offsets::OffsetTracker;
use crate::process::ProcessConfig;

/// Dead-letter headers added to the original record's headers.
pub use sagaflow_bus::dead_letter as dlq_headers;

/// Code in `sagaflow-dlq-code` for a command addressed to another service.
pub const WRONG_SERVICE_CODE: &str = "SF-ADAPTER-020";

/// Code of a command whose handling panicked: in the failure reply's
/// message and in `sagaflow-dlq-code`.
pub const HANDLER_PANIC_CODE: &str = "SF-ADAPTER-021";

/// Code of a reply (or dead letter) the broker refuses for good (too large,
/// invalid record, not authorized …): in the smaller failure reply that
/// replaces it and in `sagaflow-dlq-code`.
pub const UNPRODUCIBLE_CODE: &str = "SF-ADAPTER-022";

/// Why the adapter process could not start or stopped.
#[derive(Debug, Clone, thiserror::Error, sagaflow_codes::Coded)]
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
        sagaflow_telemetry::register_process_metrics(&registry);
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
        // The durable idempotency log, partitioned like the commands.
        let idempotency_topic = durable::topic(&config.topics, &service);
        let command_partitions = partition_count(&producer, &topic).await?;
        sagaflow_bus::ensure_topics(
            &config.kafka,
            &[sagaflow_bus::TopicSpec::new(
                &idempotency_topic,
                i32::try_from(command_partitions).unwrap_or(i32::MAX),
            )
            .compacted()],
        )
        .await
        .map_err(kafka_err)?;
        let partitions = partition_count(&producer, &idempotency_topic).await?;
        if partitions != command_partitions {
            return Err(AdapterError::IdempotencyTopic {
                topic: idempotency_topic,
                partitions,
                commands_topic: topic,
                command_partitions,
            }
            .into());
        }
        let (context, events_rx) = RebalanceEvents::new(
            RebalancePolicy {
                topic: topic.clone(),
                commit: CommitMode::Async,
                report_empty: false,
            },
            sagaflow_bus::lag::LagGauge::new(metrics.consumer_lag.clone(), config.group_id.clone()),
        );
        let consumer = config
            .kafka
            .consumer_with_context(&config.group_id, context)
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
            idempotency_topic,
            kafka: config.kafka.clone(),
            group_id: config.group_id.clone(),
            message_max_bytes: config.message_max_bytes,
        });
        let driver = Driver {
            consumer: Arc::new(consumer),
            shared,
            tracker: OffsetTracker::default(),
            tasks: JoinSet::new(),
            positions: HashMap::new(),
            restored: HashSet::new(),
            restoring: HashMap::new(),
            generation: 0,
            held: Vec::new(),
            restores: JoinSet::new(),
            events: events_rx,
            max_in_flight: config.max_in_flight.get(),
            shutdown_timeout: config.shutdown_timeout,
            commits: CommitTimer::new(COMMIT_INTERVAL),
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

/// Partitions of `topic` (retried briefly: a topic just created may not be
/// in the metadata yet).
async fn partition_count(producer: &Producer, topic: &str) -> Result<usize, RuntimeError> {
    let mut last = String::new();
    for _ in 0..50 {
        let got = sagaflow_bus::partitions_of(producer, topic, Duration::from_secs(10)).await;
        match got {
            Ok(n) if n > 0 => return Ok(n),
            Ok(_) => last = "no partitions in the metadata yet".into(),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(RuntimeError::Kafka {
        message: format!("reading the partitions of `{topic}`: {last}"),
    })
}

// ------------------------------------------------------------------- driver

struct Shared {
    codec: Codec,
    producer: Producer,
    executor: Arc<Executor>,
    metrics: RuntimeMetrics,
    names: TopicNames,
    service: String,
    topic: String,
    idempotency_topic: String,
    kafka: KafkaConfig,
    group_id: String,
    message_max_bytes: u64,
}

/// A record the loop handed to a task, and whether it is done (its reply or
/// dead letter acknowledged by the broker).
struct Finished {
    partition: i32,
    offset: i64,
}

/// A finished restore of the idempotency log for some partitions, each
/// with the restore generation it was started under.
struct Restored {
    partitions: Vec<(i32, u64)>,
    result: Result<u64, String>,
}

struct Driver {
    consumer: Arc<StreamConsumer<RebalanceEvents>>,
    shared: Arc<Shared>,
    tracker: OffsetTracker,
    tasks: JoinSet<Finished>,
    /// The record each running task handles.
    positions: HashMap<tokio::task::Id, (i32, i64)>,
    /// Owned partitions whose idempotency log is in the store.
    restored: HashSet<i32>,
    /// Partitions being restored, with the generation of their restore (a
    /// revocation meanwhile makes that restore's result stale).
    restoring: HashMap<i32, u64>,
    generation: u64,
    /// Records received for partitions still being restored, in order.
    held: Vec<OwnedMessage>,
    restores: JoinSet<Restored>,
    events: mpsc::UnboundedReceiver<Ownership>,
    max_in_flight: usize,
    shutdown_timeout: Duration,
    /// Offsets stored since the last commit, committed
    /// [`COMMIT_INTERVAL`] after the first of them. An idle adapter stores
    /// none, and is not woken for commits.
    commits: CommitTimer,
    ready: Arc<AtomicBool>,
}

/// Stored offsets are committed this long after the first of them.
const COMMIT_INTERVAL: Duration = Duration::from_millis(200);

impl Driver {
    async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<(), RuntimeError> {
        let consumer = Arc::clone(&self.consumer);
        loop {
            let room = self.tasks.len() + self.held.len() < self.max_in_flight;
            let commit_due = self.commits.due();
            tokio::select! {
                biased;
                () = stop_requested(&mut shutdown) => break,
                Some(event) = self.events.recv() => self.ownership(event),
                Some(done) = self.restores.join_next(), if !self.restores.is_empty() => {
                    self.restore_finished(done);
                }
                Some(joined) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    self.finished(joined);
                }
                () = commit_due => self.commit(CommitMode::Async),
                received = consumer.recv(), if room => match received.map(|m| m.detach()) {
                    Ok(m) => {
                        // The rebalance callback that assigned this record's
                        // partition ran inside this `recv`: see it first.
                        while let Ok(event) = self.events.try_recv() {
                            self.ownership(event);
                        }
                        self.received(m);
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

    fn in_flight(&self) -> prometheus::IntGauge {
        self.shared
            .metrics
            .in_flight
            .with_label_values(&[&self.shared.service])
    }

    /// A record arrived: handle it now if its partition's idempotency log
    /// is restored, else hold it until it is.
    fn received(&mut self, m: OwnedMessage) {
        self.tracker.begin(m.partition(), m.offset());
        self.in_flight().inc();
        let p = m.partition();
        if self.restored.contains(&p) {
            self.spawn(m);
        } else {
            if !self.restoring.contains_key(&p) {
                self.start_restore(vec![p], Duration::ZERO);
            }
            self.held.push(m);
        }
    }

    fn spawn(&mut self, m: OwnedMessage) {
        let position = (m.partition(), m.offset());
        let shared = Arc::clone(&self.shared);
        let handle = self.tasks.spawn(handle_record(shared, m));
        self.positions.insert(handle.id(), position);
    }

    fn ownership(&mut self, event: Ownership) {
        match event {
            Ownership::Assigned(partitions) => {
                info!(?partitions, "partitions assigned");
                let new: Vec<i32> = partitions
                    .into_iter()
                    .filter(|p| !self.restored.contains(p) && !self.restoring.contains_key(p))
                    .collect();
                if !new.is_empty() {
                    self.start_restore(new, Duration::ZERO);
                }
            }
            Ownership::Revoked(partitions) => {
                info!(?partitions, "partitions revoked");
                for p in partitions {
                    self.tracker.forget(p);
                    self.restored.remove(&p);
                    self.restoring.remove(&p);
                    let before = self.held.len();
                    self.held.retain(|m| m.partition() != p);
                    let dropped = before - self.held.len();
                    self.in_flight()
                        .sub(i64::try_from(dropped).unwrap_or(i64::MAX));
                }
                self.count_served();
            }
        }
    }

    /// `sagaflow_adapter_served_partitions`: what this adapter answers for.
    fn count_served(&self) {
        self.shared
            .metrics
            .served_partitions
            .with_label_values(&[&self.shared.service])
            .set(i64::try_from(self.restored.len()).unwrap_or(i64::MAX));
    }

    /// Reads the idempotency log of `partitions` into the store (after
    /// `delay`, when retrying a failed restore).
    fn start_restore(&mut self, partitions: Vec<i32>, delay: Duration) {
        self.generation += 1;
        let generation = self.generation;
        for p in &partitions {
            self.restoring.insert(*p, generation);
        }
        let shared = Arc::clone(&self.shared);
        self.restores.spawn(async move {
            tokio::time::sleep(delay).await;
            let result = durable::restore(
                &shared.kafka,
                &shared.producer,
                &shared.group_id,
                &shared.idempotency_topic,
                &partitions,
                Arc::clone(shared.executor.idempotency_store()),
                shared.executor.idempotency_ttl(),
            )
            .await;
            Restored {
                partitions: partitions.into_iter().map(|p| (p, generation)).collect(),
                result,
            }
        });
    }

    fn restore_finished(&mut self, done: Result<Restored, tokio::task::JoinError>) {
        let Ok(done) = done else {
            // Only at shutdown (aborted); a panic is not expected here, but
            // would leave the partitions held: retry those.
            let stuck: Vec<i32> = self.restoring.keys().copied().collect();
            if !stuck.is_empty() && self.restores.is_empty() {
                self.start_restore(stuck, Duration::from_secs(1));
            }
            return;
        };
        let current: Vec<i32> = done
            .partitions
            .iter()
            .filter(|(p, g)| self.restoring.get(p) == Some(g))
            .map(|(p, _)| *p)
            .collect();
        match done.result {
            Ok(n) => {
                self.shared
                    .metrics
                    .idempotency_restored_total
                    .with_label_values(&[&self.shared.service])
                    .inc_by(n);
                info!(
                    partitions = ?current,
                    restored = n,
                    topic = %self.shared.idempotency_topic,
                    "idempotency log restored"
                );
                for p in &current {
                    self.restoring.remove(p);
                    self.restored.insert(*p);
                }
                self.count_served();
                let held = std::mem::take(&mut self.held);
                for m in held {
                    if self.restored.contains(&m.partition()) {
                        self.spawn(m);
                    } else {
                        self.held.push(m);
                    }
                }
            }
            Err(e) => {
                warn!(
                    partitions = ?current,
                    error = %e,
                    "cannot restore the idempotency log; its commands wait, retrying"
                );
                if !current.is_empty() {
                    self.start_restore(current, Duration::from_secs(1));
                }
            }
        }
    }

    fn finished(&mut self, joined: Result<(tokio::task::Id, Finished), tokio::task::JoinError>) {
        self.in_flight().dec();
        let done = match joined {
            Ok((id, done)) => {
                self.positions.remove(&id);
                done
            }
            Err(e) => {
                let position = self.positions.remove(&e.id());
                match (e.is_panic(), position) {
                    // `handle_record` catches panics; one escaping it (from
                    // the dead-lettering itself) must not stall the
                    // partition either: the record counts as done.
                    (true, Some((partition, offset))) => {
                        error!(
                            messaging.kafka.partition = partition,
                            messaging.kafka.offset = offset,
                            code = HANDLER_PANIC_CODE,
                            "a command task panicked outside the handler; skipping the record"
                        );
                        self.shared
                            .metrics
                            .handler_panics_total
                            .with_label_values(&[&self.shared.service])
                            .inc();
                        Finished { partition, offset }
                    }
                    // Aborted at shutdown: not done, will be redelivered.
                    _ => return,
                }
            }
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
                Ok(()) => self.commits.stored(),
                // The partition was revoked meanwhile: its new owner resumes
                // from the last commit, and replays get idempotent replies.
                Err(e) => debug!(partition = done.partition, error = %e, "offset not stored"),
            }
        }
    }

    fn commit(&mut self, mode: CommitMode) {
        if !self.commits.take() {
            return;
        }
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
        // Held records were never started: not done, redelivered.
        let held = std::mem::take(&mut self.held);
        self.in_flight()
            .sub(i64::try_from(held.len()).unwrap_or(i64::MAX));
        self.restores.abort_all();
        let deadline = tokio::time::Instant::now() + self.shutdown_timeout;
        while !self.tasks.is_empty() {
            match tokio::time::timeout_at(deadline, self.tasks.join_next_with_id()).await {
                Ok(Some(joined)) => self.finished(joined),
                Ok(None) => break,
                Err(_) => {
                    warn!(
                        abandoned = self.tasks.len(),
                        "shutdown timeout: abandoning in-flight commands; they will be redelivered"
                    );
                    self.tasks.abort_all();
                    while let Some(joined) = self.tasks.join_next_with_id().await {
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
        let stored = self.commits.pending();
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
    // Defence in depth: whatever panics while handling this record (the
    // handler's own panics are answered inside `process`), the record is
    // dead-lettered and done, so its partition keeps moving.
    let handled = AssertUnwindSafe(process(&shared, &m).instrument(span.clone()))
        .catch_unwind()
        .await;
    if let Err(panic) = handled {
        let what = panic_message(panic.as_ref());
        error!(parent: &span, code = HANDLER_PANIC_CODE, panic = %what, "handling the record panicked; dead-lettering it");
        shared
            .metrics
            .handler_panics_total
            .with_label_values(&[&shared.service])
            .inc();
        let reason = format!("handling the command record panicked: {what}");
        dead_letter(&shared, &m, "handler_panic", HANDLER_PANIC_CODE, &reason)
            .instrument(span)
            .await;
    }
    finished
}

/// The panic's message, cut to 500 bytes.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned());
    let mut end = text.len().min(500);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// Runs the executor; a panicking handler becomes a transient failure (not
/// retried in the adapter) and a dead letter of the command.
async fn execute_contained(
    shared: &Shared,
    m: &OwnedMessage,
    cmd: &Command,
    trace: &TraceHeaders,
) -> AdapterOutcome {
    let acmd = AdapterCommand {
        tracestate: trace.tracestate.clone(),
        ..adapter_command(cmd, trace.traceparent.clone())
    };
    match AssertUnwindSafe(shared.executor.execute(&acmd))
        .catch_unwind()
        .await
    {
        Ok(outcome) => outcome,
        Err(panic) => {
            let what = panic_message(panic.as_ref());
            error!(
                code = HANDLER_PANIC_CODE,
                panic = %what,
                "the handler panicked; answering with a failure reply and dead-lettering the command"
            );
            shared
                .metrics
                .handler_panics_total
                .with_label_values(&[&shared.service])
                .inc();
            let reason = format!(
                "the handler of operation `{}` panicked: {what}",
                cmd.operation
            );
            dead_letter(shared, m, "handler_panic", HANDLER_PANIC_CODE, &reason).await;
            AdapterOutcome::transient(
                "handler_panic",
                format!(
                    "{HANDLER_PANIC_CODE}: the adapter's handler of operation `{}` panicked; the command was dead-lettered with the details",
                    cmd.operation
                ),
            )
            .not_retryable()
        }
    }
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
    // The command's `tracestate` travels with them unchanged (none on a new
    // trace).
    let headers = m
        .headers()
        .map(SagaHeaders::from_headers)
        .unwrap_or_default();
    let parent = cmd
        .trace_parent
        .as_deref()
        .or(headers.traceparent.as_deref())
        .and_then(sagaflow_bus::TraceContext::parse);
    let hop = parent.map_or_else(sagaflow_bus::TraceContext::new_root, |p| p.child());
    let span_start = SystemTime::now();
    span.record("trace.id", hop.trace_id_hex().as_str());
    span.record("span.id", hop.span_id_hex().as_str());
    let trace = TraceHeaders {
        traceparent: Some(hop.header()),
        tracestate: parent.and(headers.tracestate),
    };
    let outcome = execute_contained(shared, m, &cmd, &trace).await;
    // The final outcome's log record and the reply are produced together:
    // the record is done (its offset may be committed) once both are
    // acknowledged. Waiting for the log before producing the reply would
    // add a round trip to every step and protect nothing: a crash after
    // the call and before the log's acknowledgement redelivers the command
    // to the backend (same Idempotency-Key) in either order, and the
    // orchestrator ignores a second reply. The reply is handed to the
    // producer first: the broker appends a connection's requests one after
    // another, and the orchestrator waits for the reply, nobody for the
    // log (a small gain, docs/orchestrator.md). The command stays in flight
    // until both are acknowledged.
    let remembered = async {
        if outcome.is_final() {
            remember(shared, m, &cmd, &outcome).await;
        }
    };
    let replying = send_reply(shared, m, &cmd, &outcome, trace, &mut backoff);
    let (replied, ()) = tokio::join!(replying, remembered);
    let Some(replied) = replied else {
        return;
    };
    shared
        .metrics
        .commands_total
        .with_label_values(&[&shared.service, replied.as_str()])
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
                Attribute::new("sagaflow.outcome", replied.as_str()),
            ],
        );
    }
    // A success is the common case, counted in `sagaflow_adapter_commands_total`
    // and traced: one line each at `info` cost the adapter 7–10 % of its CPU
    // at a thousand commands a second. Anything else is worth a line.
    if replied == OutcomeKind::Success {
        debug!(outcome = replied.as_str(), "replied");
    } else {
        info!(outcome = replied.as_str(), "replied");
    }
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
        tracestate: None,
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

/// Writes a final outcome to the durable idempotency log, to the partition
/// of its command, and waits for the acknowledgement (the reply is
/// produced meanwhile).
async fn remember(shared: &Shared, m: &OwnedMessage, cmd: &Command, outcome: &AdapterOutcome) {
    let value = durable::Completed::encode(outcome, now_ms() as i64);
    let written = produce(
        shared,
        "idempotency",
        &shared.idempotency_topic,
        Some(crate::command::idempotency_key(&cmd.command_id).as_bytes()),
        &value,
        OwnedHeaders::new(),
        Some(m.partition()),
    )
    .await;
    match written {
        Ok(()) => shared
            .metrics
            .idempotency_writes_total
            .with_label_values(&[&shared.service])
            .inc(),
        Err(e) => warn!(
            reason = e.reason,
            error = %e.message,
            "the outcome cannot be written to the idempotency log; after a restart a redelivery would reach the backend again"
        ),
    }
}

/// Encodes and produces the reply to `outcome`. A reply the broker refuses
/// for good is replaced by a small business-failure reply saying why; if
/// even that cannot be produced (or the reply cannot be encoded), the
/// command is dead-lettered. Returns the outcome kind replied, if any.
async fn send_reply(
    shared: &Shared,
    m: &OwnedMessage,
    cmd: &Command,
    outcome: &AdapterOutcome,
    trace: TraceHeaders,
    backoff: &mut Backoff,
) -> Option<OutcomeKind> {
    let replies = shared.names.replies();
    let headers = SagaHeaders {
        saga_id: Some(cmd.saga_id.clone()),
        message_id: Some(format!("{}/reply", cmd.command_id)),
        message_type: Some("Reply".to_owned()),
        traceparent: trace.traceparent,
        tracestate: trace.tracestate,
    }
    .to_owned_headers();
    let bytes = encode_reply(
        shared,
        m,
        &wire_reply(cmd, outcome, now_ms() as i64),
        backoff,
    )
    .await?;
    let key = Some(cmd.saga_id.as_bytes());
    let refused = match produce(
        shared,
        "reply",
        &replies,
        key,
        &bytes,
        headers.clone(),
        None,
    )
    .await
    {
        Ok(()) => return Some(outcome.kind),
        Err(refused) => refused,
    };
    let why = if refused.reason == "message_too_large" {
        format!(
            "the reply ({} bytes) is larger than the producer's message.max.bytes ({}): the backend's response is too large to relay",
            bytes.len(),
            shared.message_max_bytes
        )
    } else {
        format!(
            "the broker refused the reply ({} bytes) for good: {} ({})",
            bytes.len(),
            refused.message,
            refused.reason
        )
    };
    warn!(
        code = UNPRODUCIBLE_CODE,
        reason = refused.reason,
        "{why}; replying with a failure instead"
    );
    let mut small = AdapterOutcome::business_failure(
        "reply_unproducible",
        format!("{UNPRODUCIBLE_CODE}: operation `{}`: {why}", cmd.operation),
    );
    small.http_status = outcome.http_status;
    let small_bytes = encode_reply(
        shared,
        m,
        &wire_reply(cmd, &small, now_ms() as i64),
        backoff,
    )
    .await?;
    match produce(shared, "reply", &replies, key, &small_bytes, headers, None).await {
        Ok(()) => Some(small.kind),
        Err(again) => {
            let reason = format!(
                "{why}; the failure reply was refused too: {}",
                again.message
            );
            dead_letter(shared, m, "unproducible_reply", UNPRODUCIBLE_CODE, &reason).await;
            None
        }
    }
}

/// The encoded reply, retrying while the registry is away; `None` when it
/// can never be encoded (the command is then dead-lettered).
async fn encode_reply(
    shared: &Shared,
    m: &OwnedMessage,
    reply: &Reply,
    backoff: &mut Backoff,
) -> Option<Vec<u8>> {
    let replies = shared.names.replies();
    loop {
        match shared.codec.encode_reply(&replies, reply).await {
            Ok(bytes) => return Some(bytes),
            Err(e) if e.is_retriable() => {
                warn!(error = %e, "cannot encode the reply yet; retrying");
                backoff.wait().await;
            }
            Err(e) => {
                warn!(code = e.code(), error = %e, "reply cannot be encoded; dead-lettering the command");
                dead_letter(shared, m, "unencodable_reply", e.code(), &e.to_string()).await;
                return None;
            }
        }
    }
}

async fn dead_letter(shared: &Shared, m: &OwnedMessage, reason: &str, code: &str, message: &str) {
    let headers = sagaflow_bus::dead_letter::headers(m, code, message);
    let topic = shared.names.dead_letter();
    let produced = produce(
        shared,
        "dead_letter",
        &topic,
        m.key(),
        m.payload().unwrap_or_default(),
        headers,
        None,
    )
    .await;
    if let Err(e) = produced {
        // Counted in the produce failures; the record is done regardless,
        // so its partition moves on.
        error!(
            code,
            reason = e.reason,
            error = %e.message,
            "the dead letter cannot be produced either; the record is dropped"
        );
        return;
    }
    shared
        .metrics
        .dead_letters_total
        .with_label_values(&[&shared.service, reason])
        .inc();
}

/// A produce the broker (or librdkafka) refuses for good.
#[derive(Debug)]
struct Unproducible {
    /// Bounded metric label, e.g. `message_too_large`.
    reason: &'static str,
    message: String,
}

/// Whether a produce error is permanent (retrying the same record can never
/// succeed), and its label.
fn permanent_reason(e: &KafkaError) -> Option<&'static str> {
    use RDKafkaErrorCode as C;
    Some(match e.rdkafka_error_code()? {
        C::MessageSizeTooLarge | C::InvalidMessageSize => "message_too_large",
        C::InvalidMessage | C::InvalidRecord => "invalid_record",
        C::TopicAuthorizationFailed | C::ClusterAuthorizationFailed => "not_authorized",
        C::InvalidTopic => "invalid_topic",
        C::PolicyViolation => "policy_violation",
        C::UnsupportedForMessageFormat => "unsupported",
        C::InvalidRequiredAcks => "invalid_config",
        _ => return None,
    })
}

/// Produces until the broker acknowledges. Transient errors are retried
/// with backoff (the idempotent producer keeps retries free of duplicates)
/// until the task is aborted; permanent ones ([`permanent_reason`]) are
/// counted and returned.
async fn produce(
    shared: &Shared,
    destination: &'static str,
    topic: &str,
    key: Option<&[u8]>,
    payload: &[u8],
    headers: OwnedHeaders,
    partition: Option<i32>,
) -> Result<(), Unproducible> {
    let mut backoff = Backoff::new();
    loop {
        let mut record = FutureRecord::<[u8], [u8]>::to(topic)
            .payload(payload)
            .headers(headers.clone());
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(p) = partition {
            record = record.partition(p);
        }
        match shared
            .producer
            .send(record, Timeout::After(Duration::from_secs(30)))
            .await
        {
            Ok(_) => return Ok(()),
            Err((e, _)) => {
                if let Some(reason) = permanent_reason(&e) {
                    warn!(topic, reason, error = %e, "produce refused for good; not retrying");
                    shared
                        .metrics
                        .produce_failures_total
                        .with_label_values(&[&shared.service, destination, reason])
                        .inc();
                    return Err(Unproducible {
                        reason,
                        message: e.to_string(),
                    });
                }
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
    let app: axum::Router = probes(state).routes();
    tokio::spawn(async move {
        let stop = async move { stop_requested(&mut shutdown).await };
        // Timeouts and a connection cap: no slow client holds the server.
        let server = sagaflow_http::Server::new(sagaflow_http::ServerConfig::default());
        if let Err(e) = server.serve(listener, app, stop).await {
            warn!(error = %e, "HTTP server");
        }
    })
}

/// `/healthz` answers `ok`, `/readyz` `ready` or `stopping` (each with a
/// newline); `/metrics` renders the adapter's registry.
fn probes(state: HttpState) -> sagaflow_http::Probes {
    let registry = state.registry;
    sagaflow_http::Probes {
        ready: state.ready,
        answers: sagaflow_http::ProbeAnswers {
            healthy: "ok\n",
            ready: "ready\n",
            not_ready: "stopping\n",
        },
        metrics: Arc::new(move || {
            use prometheus::Encoder;
            let mut buf = Vec::new();
            prometheus::TextEncoder::new()
                .encode(&registry.gather(), &mut buf)
                .map_err(|e| e.to_string())?;
            Ok(String::from_utf8_lossy(&buf).into_owned())
        }),
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
