//! The driver: reads inputs from Kafka, calls the engine, carries out its
//! effects, persists, commits. Nothing else lives here.
//!
//! Exactly-once completion without broker transactions, per batch of inputs:
//!
//! 1. apply every input to the in-memory saga states (the engine dedupes
//!    inputs it has seen by id);
//! 2. write each touched saga to the compacted changelog together with the
//!    effects it now owes (its *outbox*), and wait for the acks;
//! 3. send the effects (commands, lifecycle events, emitted events, results,
//!    re-keyed inputs, dead letters), and wait for the acks;
//! 4. store the input offsets and commit them.
//!
//! A crash after 2 leaves the outbox in the changelog: whoever restores the
//! partition re-sends it (every effect has a stable id, so adapters and
//! readers dedupe). A crash before 4 replays the inputs: the restored state
//! recognises them and they change nothing.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use sagaflow_bus::{KafkaConfig, SagaHeaders, TopicNames, TraceContext};
use sagaflow_codec::Codec;
use sagaflow_engine::{AwaitedEvent, Effect, Engine, Input, Outcome, SagaState, Timestamp};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::changelog::{self, DeliveredMark, Ended, EpochMarker, Parked, Record, Replay};
use crate::events::{self, EventSchemas};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::wire::{self, Envelope};

/// What the changelog holds per saga.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredSaga {
    pub state: SagaState,
    /// Effects written with this state and maybe not yet sent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outbox: Vec<Effect>,
    /// The saga's own span (its trace context; every record it sends is a
    /// child of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The span the saga continues: the trigger's `traceparent`; none when
    /// the saga started a new trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger_traceparent: Option<String>,
}

/// Everything the driver needs, fixed at start.
pub struct Driver {
    pub engine: Arc<Engine>,
    pub codec: Arc<Codec>,
    pub schemas: EventSchemas,
    pub metrics: Metrics,
    pub kafka: KafkaConfig,
    pub names: TopicNames,
    pub group_id: String,
    pub completed_retention: Duration,
    /// How long parked early events wait for their saga.
    pub early_event_retention: Duration,
    pub max_batch: usize,
    /// The largest record produced (bytes, headers included).
    pub record_limit: usize,
    pub max_parked_per_saga: usize,
    pub max_parked_per_partition: usize,
    /// How long an ended saga id is remembered after its state is removed.
    pub dedup_window: Duration,
    pub health: Health,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Bus(#[from] sagaflow_bus::Error),
    #[error("[SF-ORCH-020] Kafka: {0}")]
    Kafka(String),
    #[error("[SF-ORCH-024] restoring {topic}/{partition}: {message}")]
    Restore {
        topic: String,
        partition: i32,
        message: String,
    },
}

enum Rebalanced {
    Revoked(Vec<i32>),
    Assigned(Vec<i32>),
}

struct RebalanceContext {
    inputs: String,
    tx: tokio::sync::mpsc::UnboundedSender<Rebalanced>,
    lag: sagaflow_bus::lag::LagGauge,
}

impl ClientContext for RebalanceContext {
    fn stats(&self, statistics: rdkafka::statistics::Statistics) {
        self.lag.record(&statistics);
    }
}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            // Hand over cleanly: commit what is stored (only inputs whose
            // effects are durable), so the next owner starts after them.
            if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                debug!(error = %e, "commit on revoke (nothing stored, or already committed)");
            }
            let _ = self
                .tx
                .send(Rebalanced::Revoked(partitions_of(tpl, &self.inputs)));
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let _ = self
                .tx
                .send(Rebalanced::Assigned(partitions_of(tpl, &self.inputs)));
        }
    }
}

fn partitions_of(tpl: &TopicPartitionList, topic: &str) -> Vec<i32> {
    tpl.elements()
        .iter()
        .filter(|e| e.topic() == topic)
        .map(|e| e.partition())
        .collect()
}

/// One owned partition: its sagas and their timers.
#[derive(Default)]
struct Partition {
    /// This owner's epoch: the changelog offset of its ownership marker.
    epoch: i64,
    /// Where this owner's next changelog write should land if nobody else
    /// writes to the partition; a gap means another writer.
    next_offset: i64,
    /// Ended saga ids (hashes) and until when a trigger for them is a replay.
    ended: HashMap<u64, u64>,
    /// When `ended` was last swept for expired markers.
    swept_at: u64,
    sagas: HashMap<String, Entry>,
    /// (due, saga id, timer id); timer id [`EXPIRE`] removes a finished saga.
    timers: BTreeSet<(u64, String, String)>,
    /// The highest changelog offset of this partition whose outbox has been
    /// delivered but not yet recorded with a delivery mark.
    delivered: Option<i64>,
    /// Awaited events that arrived before their saga's trigger (another
    /// topic, read in another order), by saga id, each with its changelog
    /// key (one record per event) and applied when the saga starts.
    early: HashMap<String, Vec<(String, AwaitedEvent)>>,
}

impl Partition {
    fn parked(&self) -> usize {
        self.early.values().map(Vec::len).sum()
    }
}

/// Type header of the delivery marks in the changelog: "every outbox
/// written at or below changelog offset N of this partition has been
/// delivered", so a restore re-sends only what may really be owed.
const DELIVERED_MARK: &str = "sagaflow.DeliveredMark";

/// A record of the changelog, stamped with its writer's epoch.
fn state_record(
    topic: &str,
    p: i32,
    epoch: i64,
    key: String,
    payload: Option<Vec<u8>>,
) -> Outgoing {
    Outgoing {
        topic: topic.to_owned(),
        partition: Some(p),
        key: Some(key),
        payload,
        headers: OwnedHeaders::new().insert(Header {
            key: changelog::EPOCH_HEADER,
            value: Some(epoch.to_string().as_bytes()),
        }),
    }
}

fn delivered_mark(topic: &str, p: i32, epoch: i64, through: i64) -> Outgoing {
    let mut r = state_record(
        topic,
        p,
        epoch,
        changelog::delivered_key(p),
        serde_json::to_vec(&DeliveredMark { through }).ok(),
    );
    r.headers = r.headers.insert(Header {
        key: sagaflow_bus::header_names::MESSAGE_TYPE,
        value: Some(DELIVERED_MARK.as_bytes()),
    });
    r
}

/// The writer's epoch of a changelog record read back.
fn epoch_of(m: &BorrowedMessage<'_>) -> Option<i64> {
    let headers = m.headers()?;
    headers
        .iter()
        .find(|h| h.key == changelog::EPOCH_HEADER)
        .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse().ok())
}

struct Entry {
    state: SagaState,
    traceparent: Option<String>,
    trigger_traceparent: Option<String>,
    /// The timers of this saga currently in `Partition::timers`.
    armed: Vec<(u64, String)>,
    /// When each in-flight command was issued (for step latency; not
    /// persisted, so replies to commands issued before a restore are not timed).
    issued: HashMap<String, u64>,
    /// Size of the saga's last changelog record: inputs that could push it
    /// over the record limit are measured before they are accepted.
    stored_bytes: usize,
}

const EXPIRE: &str = "@expire";
/// Timer id that drops a saga id's parked early events if the saga has
/// not started by then.
const EARLY_EXPIRE: &str = "@early-expire";

/// The instance is stopping while it waited out a dependency's outage.
#[derive(Debug)]
struct Stopping;

/// The partitions this instance holds, and those it must leave alone.
#[derive(Default)]
struct Owned {
    parts: HashMap<i32, Partition>,
    /// Revoked by the group: their inputs belong to the next owner.
    revoked: BTreeSet<i32>,
    /// Taken over by another owner (a newer epoch marker in the
    /// changelog) without a revoke reaching this instance yet: their
    /// inputs are neither applied nor committed until the group assigns
    /// them here again.
    lost: BTreeSet<i32>,
}

/// Effects owed by one batch, per saga, in first-touched order.
#[derive(Default)]
struct Batch {
    order: Vec<(i32, String)>,
    outbox: HashMap<String, Vec<Effect>>,
    /// Records that are not saga effects: re-keyed inputs, dead letters.
    records: Vec<Outgoing>,
    tombstones: Vec<(i32, String)>,
    offsets: Vec<(String, i32, i64)>,
    /// Newly parked early events: (partition, key, event).
    parked: Vec<(i32, String, Parked)>,
    /// Ended markers to write: (partition, saga id hash, remembered until).
    ended: Vec<(i32, u64, u64)>,
}

impl Batch {
    fn owe(&mut self, partition: i32, saga_id: &str, effects: Vec<Effect>) {
        let slot = self.outbox.entry(saga_id.to_owned()).or_insert_with(|| {
            self.order.push((partition, saga_id.to_owned()));
            Vec::new()
        });
        slot.extend(effects);
    }
}

/// What a record carries beyond its key and value, at most: headers
/// (ids, trace context, epoch) and the protocol's framing.
const RECORD_OVERHEAD: usize = 1024;

/// A record to produce.
struct Outgoing {
    topic: String,
    partition: Option<i32>,
    key: Option<String>,
    payload: Option<Vec<u8>>,
    headers: OwnedHeaders,
}

impl Outgoing {
    /// Key, value and headers, plus framing: what the broker measures
    /// against `message.max.bytes`, give or take its batch header.
    fn size(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len) + 8)
            .sum();
        self.key.as_ref().map_or(0, String::len)
            + self.payload.as_ref().map_or(0, Vec::len)
            + headers
            + 128
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// A dead letter: the original bytes and headers, where they came from,
/// and why they could not be processed.
fn dead_letter(names: &TopicNames, m: &BorrowedMessage<'_>, code: &str, reason: &str) -> Outgoing {
    let headers = sagaflow_bus::dead_letter::headers(m, code, reason);
    Outgoing {
        topic: names.dead_letter(),
        partition: None,
        key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        payload: m.payload().map(<[u8]>::to_vec),
        headers,
    }
}

fn envelope_record(names: &TopicNames, env: &Envelope, traceparent: Option<String>) -> Outgoing {
    let headers = SagaHeaders {
        saga_id: Some(env.saga_id().to_owned()),
        message_id: Some(env.message_id().to_owned()),
        message_type: Some("sagaflow.Envelope".to_owned()),
        traceparent,
        tracestate: None,
    };
    Outgoing {
        topic: names.inputs(),
        partition: None,
        key: Some(env.saga_id().to_owned()),
        // Serialising our own enum of strings and JSON values cannot fail.
        payload: serde_json::to_vec(env).ok(),
        headers: headers.to_owned_headers(),
    }
}

/// Sends an envelope to the inputs topic (used by the HTTP API).
pub async fn send_envelope(
    producer: &FutureProducer,
    names: &TopicNames,
    env: &Envelope,
    traceparent: Option<String>,
) -> Result<(), String> {
    let out = envelope_record(names, env, traceparent);
    produce(producer, out).await.map(|_| ())
}

/// Produces one record; returns its partition and offset.
async fn produce(producer: &FutureProducer, out: Outgoing) -> Result<(i32, i64), String> {
    let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&out.topic).headers(out.headers);
    if let Some(k) = out.key.as_deref() {
        record = record.key(k);
    }
    if let Some(p) = out.payload.as_deref() {
        record = record.payload(p);
    }
    if let Some(p) = out.partition {
        record = record.partition(p);
    }
    producer
        .send(record, Duration::from_secs(30))
        .await
        .map(|d| (d.partition, d.offset))
        .map_err(|(e, _)| e.to_string())
}

/// Produces all records and waits for every ack; returns the partition
/// and offset of each. A record over `limit` bytes is not sent (a broker
/// would refuse it for ever): it is logged and counted as SF-ORCH-022.
async fn produce_all(
    producer: &FutureProducer,
    records: Vec<Outgoing>,
    limit: usize,
) -> Result<Vec<(i32, i64)>, String> {
    // All records are enqueued before any ack is awaited, so librdkafka
    // batches them; order per partition is kept by the idempotent producer.
    let sends = records
        .into_iter()
        .filter(|r| {
            let size = r.size();
            if size > limit {
                tracing::error!(
                    code = "SF-ORCH-022",
                    topic = %r.topic,
                    key = r.key.as_deref().unwrap_or_default(),
                    size,
                    limit,
                    "record over the record limit; not sent"
                );
            }
            size <= limit
        })
        .map(|r| produce(producer, r));
    futures::future::join_all(sends).await.into_iter().collect()
}

impl Driver {
    /// The domain topics to read, with the topic prefix applied.
    fn source_topics(&self) -> BTreeSet<String> {
        let mut topics = BTreeSet::new();
        for def in self.engine.registry().iter() {
            topics.insert(self.prefixed(&def.trigger.topic));
            for step in def.steps() {
                if let sagaflow_engine::definition::StepKind::Await(a) = &step.kind {
                    topics.insert(self.prefixed(&a.topic));
                }
            }
        }
        topics
    }

    fn prefixed(&self, topic: &str) -> String {
        format!("{}{topic}", self.names.prefix)
    }

    /// Runs until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), RunError> {
        let inputs = self.names.inputs();
        let replies = self.names.replies();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let consumer: StreamConsumer<RebalanceContext> = self.kafka.consumer_with_context(
            &self.group_id,
            RebalanceContext {
                inputs: inputs.clone(),
                tx,
                lag: sagaflow_bus::lag::LagGauge::new(
                    self.metrics.consumer_lag.clone(),
                    self.group_id.clone(),
                ),
            },
        )?;
        let mut topics: Vec<String> = self.source_topics().into_iter().collect();
        topics.push(inputs.clone());
        topics.push(replies.clone());
        let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&refs)
            .map_err(|e| RunError::Kafka(e.to_string()))?;
        let producer = self.kafka.producer()?;
        info!(topics = ?topics, group = %self.group_id, "orchestrator consuming");
        let mut owned = Owned::default();
        let source: BTreeSet<String> = self.source_topics();
        loop {
            while let Ok(ev) = rx.try_recv() {
                self.rebalanced(&producer, &mut owned, ev).await?;
            }
            self.metrics.owned_partitions.set(owned.parts.len() as i64);
            let next_due = owned
                .parts
                .values()
                .filter_map(|p| p.timers.first().map(|t| t.0))
                .min();
            let sleep = match next_due {
                Some(due) => Duration::from_millis(due.saturating_sub(now_ms())),
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    if *shutdown.borrow() {
                        break;
                    }
                }
                // A rebalance wakes the loop: a newly assigned partition is
                // restored (and its timers armed) even if no input arrives.
                Some(ev) = rx.recv() => {
                    self.rebalanced(&producer, &mut owned, ev).await?;
                }
                m = consumer.recv() => {
                    // Consumption errors (a topic not created yet, a broker
                    // restarting) are reported per message and pass: the
                    // client retries on its own.
                    let first = match m {
                        Ok(m) => m,
                        Err(e) => {
                            warn!(error = %e, "consumer error; retrying");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            continue;
                        }
                    };
                    let mut batch = vec![first];
                    while batch.len() < self.max_batch {
                        match tokio::time::timeout(Duration::ZERO, consumer.recv()).await {
                            Ok(Ok(m)) => batch.push(m),
                            Ok(Err(e)) => {
                                warn!(error = %e, "consumer error; retrying");
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    // Partitions revoked while the batch was collected are no
                    // longer ours: their inputs are left to the next owner.
                    while let Ok(ev) = rx.try_recv() {
                        self.rebalanced(&producer, &mut owned, ev).await?;
                    }
                    let _busy = self.health.busy();
                    let mut work = Batch::default();
                    let mut skipped = BTreeSet::new();
                    for m in &batch {
                        let topic = m.topic();
                        let co_partitioned = topic == inputs || topic == replies;
                        let p = m.partition();
                        if co_partitioned && (owned.revoked.contains(&p) || owned.lost.contains(&p)) {
                            skipped.insert((topic.to_owned(), p));
                            continue;
                        }
                        if co_partitioned && !owned.parts.contains_key(&p) {
                            let part = self.restore(&producer, p).await?;
                            owned.parts.insert(p, part);
                        }
                        let handled = if topic == inputs {
                            let part = owned.parts.get_mut(&p).expect("restored above");
                            self.on_input(part, m, &mut work, &shutdown).await
                        } else if topic == replies {
                            let part = owned.parts.get_mut(&p).expect("restored above");
                            self.on_reply(part, m, &mut work, &shutdown).await
                        } else if source.contains(topic) {
                            self.on_source(m, &mut work, &shutdown).await
                        } else {
                            Ok(())
                        };
                        if handled.is_err() {
                            // Stopping while a dependency is down: nothing of
                            // this batch is committed; the next owner or
                            // this instance restarted reads it again.
                            return self.stop(&producer, &consumer, &mut owned).await;
                        }
                        work.offsets.push((topic.to_owned(), p, m.offset()));
                    }
                    self.metrics.batch_size.with_label_values(&["orchestrator"]).observe(batch.len() as f64);
                    let lost = self.flush(&producer, &mut owned.parts, work).await.map_err(RunError::Kafka)?;
                    for p in lost {
                        if let Some(part) = owned.parts.remove(&p) {
                            self.forget(&part);
                        }
                        owned.lost.insert(p);
                        skipped.insert((inputs.clone(), p));
                        skipped.insert((replies.clone(), p));
                    }
                    let mut tpl = TopicPartitionList::new();
                    for m in &batch {
                        if skipped.contains(&(m.topic().to_owned(), m.partition())) {
                            continue;
                        }
                        let _ = tpl.add_partition_offset(m.topic(), m.partition(), Offset::Offset(m.offset() + 1));
                    }
                    if tpl.count() > 0 {
                        consumer.store_offsets(&tpl).map_err(|e| RunError::Kafka(e.to_string()))?;
                        if let Err(e) = consumer.commit_consumer_state(CommitMode::Async) {
                            debug!(error = %e, "async commit");
                        }
                    }
                }
                _ = tokio::time::sleep(sleep) => {
                    let _busy = self.health.busy();
                    let mut work = Batch::default();
                    let now = now_ms();
                    for (&p, part) in owned.parts.iter_mut() {
                        self.fire_due(p, part, now, &mut work);
                    }
                    let lost = self.flush(&producer, &mut owned.parts, work).await.map_err(RunError::Kafka)?;
                    for p in lost {
                        if let Some(part) = owned.parts.remove(&p) {
                            self.forget(&part);
                        }
                        owned.lost.insert(p);
                    }
                }
            }
        }
        self.stop(&producer, &consumer, &mut owned).await
    }

    /// Waits before retrying work that failed transiently (the schema
    /// registry unreachable): the batch, and so its partitions, wait; the
    /// record is never dead-lettered for a passing outage. Gives up only
    /// when the instance stops.
    async fn backoff(
        &self,
        attempt: &mut u32,
        cause: &str,
        error: &(dyn std::fmt::Display + Sync),
        shutdown: &watch::Receiver<bool>,
    ) -> Result<(), Stopping> {
        *attempt += 1;
        self.metrics.retries.with_label_values(&[cause]).inc();
        let delay = Duration::from_millis(100u64 << (*attempt).min(6)).min(Duration::from_secs(5));
        warn!(attempt = *attempt, retry_in_ms = delay.as_millis() as u64, error = %error, "{cause} unavailable; the batch waits and retries");
        let _waiting = self.health.waiting();
        let mut shutdown = shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.wait_for(|stop| *stop) => return Err(Stopping),
        }
        if *shutdown.borrow() {
            return Err(Stopping);
        }
        Ok(())
    }

    /// A clean stop: pending delivery marks and offsets are written.
    async fn stop(
        &self,
        producer: &FutureProducer,
        consumer: &StreamConsumer<RebalanceContext>,
        owned: &mut Owned,
    ) -> Result<(), RunError> {
        self.health.set_ready(false);
        if let Err(e) = self.mark_delivered(producer, &mut owned.parts).await {
            warn!(error = %e, "recording delivery marks on stop");
        }
        if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
            debug!(error = %e, "final commit");
        }
        info!("orchestrator stopped");
        Ok(())
    }

    /// Hands partitions over (revoke) or takes them (assign: restore). The
    /// instance is ready once it holds and has restored what the group
    /// assigned it, possibly nothing.
    async fn rebalanced(
        &self,
        producer: &FutureProducer,
        owned: &mut Owned,
        ev: Rebalanced,
    ) -> Result<(), RunError> {
        match ev {
            Rebalanced::Revoked(ps) => {
                for p in ps {
                    owned.lost.remove(&p);
                    owned.revoked.insert(p);
                    if let Some(part) = owned.parts.remove(&p) {
                        self.release(producer, p, &part).await;
                        info!(
                            messaging.kafka.partition = p,
                            sagas = part.sagas.len(),
                            "partition revoked"
                        );
                    }
                }
            }
            Rebalanced::Assigned(ps) => {
                for p in ps {
                    owned.revoked.remove(&p);
                    owned.lost.remove(&p);
                    if let std::collections::hash_map::Entry::Vacant(slot) = owned.parts.entry(p) {
                        slot.insert(self.restore(producer, p).await?);
                    }
                }
                self.health.set_ready(true);
            }
        }
        self.metrics.owned_partitions.set(owned.parts.len() as i64);
        Ok(())
    }

    /// Lets a revoked partition go: records its pending delivery mark (a
    /// true statement whoever owns the partition now) and its metrics.
    async fn release(&self, producer: &FutureProducer, p: i32, part: &Partition) {
        if let Some(through) = part.delivered {
            let mark = delivered_mark(&self.names.saga_state(), p, part.epoch, through);
            if let Err(e) = produce(producer, mark).await {
                debug!(error = %e, partition = p, "delivery mark on revoke");
            }
        }
        self.forget(part);
    }

    fn forget(&self, part: &Partition) {
        for e in part.sagas.values() {
            if !e.state.status.is_terminal() {
                self.metrics
                    .sagas_in_flight
                    .with_label_values(&[&e.state.saga_type])
                    .dec();
            }
        }
    }

    /// Takes a partition over: writes this owner's epoch marker to the
    /// changelog, rebuilds the partition's sagas by reading the changelog
    /// until the marker comes back (never trusting the high watermark,
    /// which a broker may report below acknowledged records), re-arms
    /// their timers and re-sends what their outboxes still owe.
    async fn restore(&self, producer: &FutureProducer, p: i32) -> Result<Partition, RunError> {
        let _busy = self.health.busy();
        let started = Instant::now();
        let topic = self.names.saga_state();
        let failed = |message: String| RunError::Restore {
            topic: topic.clone(),
            partition: p,
            message,
        };
        let owner = format!("{}/{}", self.group_id, uuid::Uuid::new_v4());
        let marker = Outgoing {
            topic: topic.clone(),
            partition: Some(p),
            key: Some(format!(
                "{}{p}/{}",
                changelog::EPOCH_PREFIX,
                uuid::Uuid::new_v4()
            )),
            payload: serde_json::to_vec(&EpochMarker {
                owner,
                partition: p,
            })
            .ok(),
            headers: OwnedHeaders::new(),
        };
        let (_, epoch) = produce(producer, marker)
            .await
            .map_err(|e| failed(format!("writing the ownership marker: {e}")))?;
        let reader = self.kafka.consumer(&format!("{}-restore", self.group_id))?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, p, Offset::Beginning)
            .map_err(|e| failed(e.to_string()))?;
        reader.assign(&tpl).map_err(|e| failed(e.to_string()))?;
        let mut replay = Replay::new();
        let mut read = 0u64;
        loop {
            let m = tokio::time::timeout(Duration::from_secs(60), reader.recv())
                .await
                .map_err(|_| {
                    failed(format!(
                        "no record for 60 s after {read} records, before the marker at offset {epoch}"
                    ))
                })?
                .map_err(|e| failed(e.to_string()))?;
            read += 1;
            let key = m.key().map(String::from_utf8_lossy);
            replay.apply(&Record {
                offset: m.offset(),
                key: key.as_deref(),
                payload: m.payload(),
                epoch: epoch_of(&m),
            });
            if m.offset() >= epoch {
                break;
            }
        }
        for (offset, why) in &replay.unreadable {
            warn!(messaging.kafka.partition = p, offset, reason = %why, "unreadable changelog record; skipped");
        }
        if replay.fenced > 0 {
            warn!(
                messaging.kafka.partition = p,
                records = replay.fenced,
                "changelog records written by replaced owners after their replacement; ignored"
            );
            self.metrics
                .fencing
                .with_label_values(&["stale-record"])
                .inc_by(replay.fenced);
        }
        let now = now_ms();
        let mut part = Partition {
            epoch,
            next_offset: epoch + 1,
            ended: replay.ended,
            swept_at: now,
            early: replay.early,
            ..Partition::default()
        };
        // Parking times are not stored: restored early events get a full
        // retention from now.
        let expire_at = now + self.early_event_retention.as_millis() as u64;
        for saga_id in part.early.keys() {
            part.timers
                .insert((expire_at, saga_id.clone(), EARLY_EXPIRE.to_owned()));
        }
        let delivered_through = replay.delivered_through;
        let mut owed = Vec::new();
        for (saga_id, (offset, mut s)) in replay.sagas {
            // A saga stored without a trace context (written before sagas
            // had one) gets one now, so all its records share a trace.
            if s.traceparent.is_none() {
                s.traceparent = Some(TraceContext::new_root().header());
            }
            if !s.outbox.is_empty() && offset > delivered_through {
                for e in &s.outbox {
                    self.metrics
                        .outbox_resent
                        .with_label_values(&[effect_kind(e)])
                        .inc();
                }
                owed.push((
                    saga_id.clone(),
                    s.outbox.clone(),
                    (s.traceparent.clone(), s.trigger_traceparent.clone()),
                    s.state.clone(),
                ));
            }
            if !s.state.status.is_terminal() {
                self.metrics
                    .sagas_in_flight
                    .with_label_values(&[&s.state.saga_type])
                    .inc();
            }
            let mut entry = Entry {
                state: s.state,
                traceparent: s.traceparent,
                trigger_traceparent: s.trigger_traceparent,
                armed: Vec::new(),
                issued: HashMap::new(),
                stored_bytes: 0,
            };
            rearm(
                &mut part.timers,
                &saga_id,
                &mut entry,
                self.completed_retention,
            );
            part.sagas.insert(saga_id, entry);
        }
        let restored = part.sagas.len();
        let mut records = Vec::new();
        for (saga_id, effects, (traceparent, trigger), state) in owed {
            for e in effects {
                if let Some(r) = self
                    .effect_record(
                        &saga_id,
                        &state,
                        (traceparent.as_deref(), trigger.as_deref()),
                        &e,
                    )
                    .await
                {
                    records.push(r);
                }
            }
        }
        let resent = records.len();
        produce_all(producer, records, self.record_limit)
            .await
            .map_err(|e| failed(format!("re-sending owed effects: {e}")))?;
        if resent > 0 {
            // Everything written before the marker is delivered now.
            part.delivered = Some(epoch - 1);
        }
        let label = p.to_string();
        self.metrics
            .restore_seconds
            .with_label_values(&[&label])
            .observe(started.elapsed().as_secs_f64());
        self.metrics
            .restored_sagas
            .with_label_values(&[&label])
            .inc_by(restored as u64);
        info!(
            messaging.kafka.partition = p,
            sagas = restored,
            resent,
            epoch,
            records = read,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "partition restored"
        );
        Ok(part)
    }

    async fn on_source(
        &self,
        m: &BorrowedMessage<'_>,
        work: &mut Batch,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<(), Stopping> {
        let mut attempt = 0;
        let event = match loop {
            match events::decode(&self.codec, m).await {
                Err(events::EventError::Decode(e)) if e.is_retriable() => {
                    self.backoff(&mut attempt, "registry", &e, shutdown).await?;
                }
                decoded => break decoded,
            }
        } {
            Ok(e) => e,
            Err(e) => {
                warn!(topic = m.topic(), offset = m.offset(), error = %e, "undecodable domain event; dead-lettered");
                self.metrics
                    .dead_letters
                    .with_label_values(&[e.code()])
                    .inc();
                work.records
                    .push(dead_letter(&self.names, m, e.code(), &e.to_string()));
                return Ok(());
            }
        };
        // Definitions name topics without the deployment's prefix.
        let topic = m
            .topic()
            .strip_prefix(self.names.prefix.as_str())
            .unwrap_or(m.topic());
        let mut routed = 0;
        for def in self
            .engine
            .registry()
            .triggered_by(topic, &event.event_type)
        {
            // Triggers start the latest version; ids follow from the key.
            if self
                .engine
                .registry()
                .latest(&def.saga_type)
                .map(|d| d.version)
                != Some(def.version)
            {
                continue;
            }
            let trigger = sagaflow_engine::TriggerEvent {
                message_id: event.message_id.clone(),
                topic: topic.to_owned(),
                event_type: event.event_type.clone(),
                payload: event.payload.clone(),
            };
            match self.engine.identify(&def.saga_type, &trigger) {
                Ok((saga_id, _key)) => {
                    let env = Envelope::Trigger {
                        saga_type: def.saga_type.clone(),
                        saga_id,
                        event: trigger,
                    };
                    work.records.push(envelope_record(
                        &self.names,
                        &env,
                        event.traceparent.clone(),
                    ));
                    routed += 1;
                }
                Err(e) => {
                    let reason = format!("saga `{}`: {e}", def.saga_type);
                    warn!(topic = m.topic(), offset = m.offset(), error = %reason, "trigger cannot start a saga; dead-lettered");
                    self.metrics
                        .dead_letters
                        .with_label_values(&["SF-ORCH-013"])
                        .inc();
                    work.records
                        .push(dead_letter(&self.names, m, "SF-ORCH-013", &reason));
                }
            }
        }
        for c in self
            .engine
            .correlate(topic, &event.event_type, &event.payload)
        {
            match self
                .engine
                .saga_id_for(&c.saga_type, c.saga_version, &c.key)
            {
                Ok(saga_id) => {
                    let env = Envelope::Event {
                        saga_id,
                        event: sagaflow_engine::AwaitedEvent {
                            message_id: event.message_id.clone(),
                            topic: topic.to_owned(),
                            event_type: event.event_type.clone(),
                            payload: event.payload.clone(),
                        },
                    };
                    work.records.push(envelope_record(
                        &self.names,
                        &env,
                        event.traceparent.clone(),
                    ));
                    routed += 1;
                }
                Err(e) => warn!(error = %e, "awaited event cannot be mapped to a saga id"),
            }
        }
        if routed == 0 {
            self.metrics
                .inputs
                .with_label_values(&["domain-event", "unmatched"])
                .inc();
        }
        Ok(())
    }

    /// Dead-letters an input with a coded reason, counted and logged once.
    fn refuse(&self, m: &BorrowedMessage<'_>, code: &str, reason: &str, work: &mut Batch) {
        warn!(
            topic = m.topic(),
            messaging.kafka.partition = m.partition(),
            offset = m.offset(),
            code,
            reason,
            "input refused; dead-lettered"
        );
        self.metrics.dead_letters.with_label_values(&[code]).inc();
        work.records.push(dead_letter(&self.names, m, code, reason));
    }

    async fn on_input(
        &self,
        part: &mut Partition,
        m: &BorrowedMessage<'_>,
        work: &mut Batch,
        _shutdown: &watch::Receiver<bool>,
    ) -> Result<(), Stopping> {
        let env: Envelope = match m.payload().map(serde_json::from_slice) {
            Some(Ok(env)) => env,
            Some(Err(e)) => {
                let reason = format!("not a Sagaflow input envelope: {e}");
                self.refuse(m, "SF-ORCH-014", &reason, work);
                return Ok(());
            }
            None => {
                self.refuse(m, "SF-ORCH-014", "empty input envelope", work);
                return Ok(());
            }
        };
        let input_bytes = m.payload().map_or(0, <[u8]>::len);
        let traceparent = m
            .headers()
            .map(SagaHeaders::from_headers)
            .and_then(|h| h.traceparent);
        let p = m.partition();
        let now = Timestamp(now_ms());
        match env {
            Envelope::Trigger {
                saga_type,
                saga_id,
                event,
            } => {
                if part.sagas.contains_key(&saga_id) {
                    // A redelivered trigger never starts a second saga.
                    self.metrics
                        .inputs
                        .with_label_values(&["trigger", "duplicate"])
                        .inc();
                    return Ok(());
                }
                if part
                    .ended
                    .get(&changelog::saga_hash(&saga_id))
                    .is_some_and(|until| *until > now.0)
                {
                    // The saga ended and its state is gone, but its id is
                    // remembered for `dedup-window`: a replayed trigger.
                    self.metrics
                        .inputs
                        .with_label_values(&["trigger", "replayed"])
                        .inc();
                    return Ok(());
                }
                match self.engine.start(&saga_type, &event, now) {
                    Ok((state, effects)) => {
                        if let Some(size) = self.oversized(&state, &effects, input_bytes) {
                            let reason = format!(
                                "saga `{saga_id}`: its state would be {size} bytes, over the record limit of {} bytes (max-record-bytes / message.max.bytes); the trigger is refused",
                                self.record_limit
                            );
                            self.refuse(m, "SF-ORCH-022", &reason, work);
                            return Ok(());
                        }
                        self.metrics
                            .inputs
                            .with_label_values(&["trigger", "applied"])
                            .inc();
                        self.metrics
                            .sagas_started
                            .with_label_values(&[&state.saga_type])
                            .inc();
                        self.metrics
                            .sagas_in_flight
                            .with_label_values(&[&state.saga_type])
                            .inc();
                        let id = state.saga_id.clone();
                        // The saga is a span of its own: a child of the
                        // trigger's, or the root of a new trace.
                        let parent = traceparent.as_deref().and_then(TraceContext::parse);
                        let trace = parent.map_or_else(TraceContext::new_root, |p| p.child());
                        let mut entry = Entry {
                            state,
                            traceparent: Some(trace.header()),
                            trigger_traceparent: parent.map(|p| p.header()),
                            armed: Vec::new(),
                            issued: HashMap::new(),
                            stored_bytes: input_bytes,
                        };
                        note_issued(&mut entry, &effects, now.0);
                        self.after_apply(&mut part.timers, &id, &mut entry, false);
                        part.sagas.insert(id.clone(), entry);
                        work.owe(p, &id, effects);
                        if let Some(early) = part.early.remove(&id) {
                            for (key, event) in early {
                                work.tombstones.push((p, key));
                                let size =
                                    serde_json::to_vec(&event.payload).map_or(0, |b| b.len());
                                if let Err(refused) = self.apply(
                                    part,
                                    p,
                                    &id,
                                    Input::Event(event),
                                    size,
                                    "event",
                                    work,
                                ) {
                                    // The parked event has no record of its own any more: its
                                    // refusal is logged and counted, not dead-lettered.
                                    warn!(saga.id = %id, reason = %refused, "parked event refused");
                                    self.metrics
                                        .dead_letters
                                        .with_label_values(&["SF-ORCH-022"])
                                        .inc();
                                }
                            }
                        }
                    }
                    Err(e) => {
                        let reason = format!("starting saga `{saga_type}`: {e}");
                        self.refuse(m, "SF-ORCH-015", &reason, work);
                    }
                }
            }
            Envelope::Event { saga_id, event } => {
                if part.sagas.contains_key(&saga_id) {
                    if let Err(reason) = self.apply(
                        part,
                        p,
                        &saga_id,
                        Input::Event(event),
                        input_bytes,
                        "event",
                        work,
                    ) {
                        self.refuse(m, "SF-ORCH-022", &reason, work);
                    }
                } else {
                    self.park(part, p, saga_id, event, m, now.0, work);
                }
            }
            Envelope::Retry {
                saga_id,
                request_id,
            } => {
                let _ = self.apply(
                    part,
                    p,
                    &saga_id,
                    Input::Retry { request_id },
                    0,
                    "retry",
                    work,
                );
            }
            Envelope::Abort {
                saga_id,
                request_id,
                reason,
            } => {
                let _ = self.apply(
                    part,
                    p,
                    &saga_id,
                    Input::Abort { request_id, reason },
                    0,
                    "abort",
                    work,
                );
            }
        }
        Ok(())
    }

    /// Parks an awaited event whose saga has not started yet (another
    /// topic, read in another order): one changelog record per event, for
    /// `early-event-retention` at most, within the per-saga and
    /// per-partition bounds; past them it is dead-lettered.
    #[allow(clippy::too_many_arguments)]
    fn park(
        &self,
        part: &mut Partition,
        p: i32,
        saga_id: String,
        event: AwaitedEvent,
        m: &BorrowedMessage<'_>,
        now: u64,
        work: &mut Batch,
    ) {
        let key = changelog::parked_key(&saga_id, &event.message_id);
        let held = part.early.get(&saga_id).map_or(0, Vec::len);
        if part
            .early
            .get(&saga_id)
            .is_some_and(|v| v.iter().any(|(k, _)| *k == key))
        {
            self.metrics
                .inputs
                .with_label_values(&["event", "duplicate"])
                .inc();
            return;
        }
        if held >= self.max_parked_per_saga {
            let reason = format!(
                "saga `{saga_id}` has not started and already has {held} parked events (max-parked-per-saga)"
            );
            self.refuse(m, "SF-ORCH-023", &reason, work);
            return;
        }
        let total = part.parked();
        if total >= self.max_parked_per_partition {
            let reason = format!(
                "partition {p} already holds {total} parked events for sagas that have not started (max-parked-per-partition)"
            );
            self.refuse(m, "SF-ORCH-023", &reason, work);
            return;
        }
        if held == 0 {
            part.timers.insert((
                now + self.early_event_retention.as_millis() as u64,
                saga_id.clone(),
                EARLY_EXPIRE.to_owned(),
            ));
        }
        work.parked.push((
            p,
            key.clone(),
            Parked {
                saga_id: saga_id.clone(),
                event: event.clone(),
            },
        ));
        part.early.entry(saga_id).or_default().push((key, event));
        self.metrics
            .inputs
            .with_label_values(&["event", "parked"])
            .inc();
    }

    /// The size a saga's changelog record would have, if over the limit.
    fn oversized(&self, state: &SagaState, outbox: &[Effect], input_bytes: usize) -> Option<usize> {
        // Small inputs cannot push a small saga over: measure only when
        // they might.
        if input_bytes < self.record_limit / 8 {
            return None;
        }
        let size =
            serde_json::to_vec(&(state, outbox)).map_or(usize::MAX, |b| b.len()) + RECORD_OVERHEAD;
        (size > self.record_limit).then_some(size)
    }

    async fn on_reply(
        &self,
        part: &mut Partition,
        m: &BorrowedMessage<'_>,
        work: &mut Batch,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<(), Stopping> {
        let Some(bytes) = m.payload() else {
            self.refuse(m, "SF-ORCH-012", "empty reply", work);
            return Ok(());
        };
        let mut attempt = 0;
        let reply = match loop {
            match self.codec.decode_reply(m.topic(), bytes).await {
                Err(e) if e.is_retriable() => {
                    self.backoff(&mut attempt, "registry", &e, shutdown).await?;
                }
                decoded => break decoded,
            }
        } {
            Ok(r) => r,
            Err(e) => {
                self.refuse(m, e.code(), &e.to_string(), work);
                return Ok(());
            }
        };
        let outcome = format!("{:?}", reply.outcome).to_lowercase();
        self.metrics
            .replies_received
            .with_label_values(&[&reply.service, &outcome])
            .inc();
        if let Some(entry) = part.sagas.get_mut(&reply.saga_id)
            && let Some(issued) = entry.issued.remove(&reply.command_id)
        {
            let latency = now_ms().saturating_sub(issued) as f64 / 1e3;
            self.metrics
                .step_latency
                .with_label_values(&[&entry.state.saga_type, &reply.step, &outcome])
                .observe(latency);
        }
        let saga_id = reply.saga_id.clone();
        if let Err(reason) = self.apply(
            part,
            m.partition(),
            &saga_id,
            Input::Reply(wire::reply(reply)),
            bytes.len(),
            "reply",
            work,
        ) {
            self.refuse(m, "SF-ORCH-022", &reason, work);
        }
        Ok(())
    }

    /// Applies one input to a saga. An input that would grow the saga's
    /// state over the record limit is not applied: the saga is aborted
    /// (compensating what succeeded) with the reason, which is returned for
    /// the caller to dead-letter the input with.
    #[allow(clippy::too_many_arguments)]
    fn apply(
        &self,
        part: &mut Partition,
        p: i32,
        saga_id: &str,
        input: Input,
        input_bytes: usize,
        kind: &str,
        work: &mut Batch,
    ) -> Result<(), String> {
        let Some(entry) = part.sagas.get_mut(saga_id) else {
            debug!(
                saga.id = saga_id,
                input = kind,
                "input for a saga this partition does not hold"
            );
            self.metrics
                .inputs
                .with_label_values(&[kind, "unmatched"])
                .inc();
            return Ok(());
        };
        let was_terminal = entry.state.status.is_terminal();
        let now = now_ms();
        let before = (entry.stored_bytes + input_bytes >= self.record_limit / 8)
            .then(|| entry.state.clone());
        let mut applied = self.engine.apply(&mut entry.state, input, Timestamp(now));
        let mut refused = None;
        if let Some(before) = before
            && let Some(size) = self.oversized(&entry.state, &applied.effects, usize::MAX)
        {
            let reason = format!(
                "saga `{saga_id}`: this {kind} would grow its state to {size} bytes, over the record limit of {} bytes; the saga is aborted",
                self.record_limit
            );
            entry.state = before;
            let request_id = format!("{saga_id}/oversized/{}", entry.state.seq);
            applied = self.engine.apply(
                &mut entry.state,
                Input::Abort {
                    request_id,
                    reason: reason.clone(),
                },
                Timestamp(now),
            );
            refused = Some(reason);
        }
        entry.stored_bytes += input_bytes.min(self.record_limit);
        let outcome = match &applied.outcome {
            Outcome::Applied => "applied",
            Outcome::Duplicate => "duplicate",
            Outcome::Stale(_) => "stale",
            Outcome::Rejected(_) => "rejected",
        };
        self.metrics
            .inputs
            .with_label_values(&[kind, outcome])
            .inc();
        if let Outcome::Rejected(e) = &applied.outcome {
            warn!(saga.id = saga_id, input = kind, error = %e, "input rejected");
        }
        if applied.outcome == Outcome::Applied {
            note_issued(entry, &applied.effects, now);
            self.after_apply(&mut part.timers, saga_id, entry, was_terminal);
            work.owe(p, saga_id, applied.effects);
        }
        refused.map_or(Ok(()), Err)
    }

    /// Re-syncs a saga's timers with its state and counts its end.
    fn after_apply(
        &self,
        timers: &mut BTreeSet<(u64, String, String)>,
        saga_id: &str,
        entry: &mut Entry,
        was_terminal: bool,
    ) {
        rearm(timers, saga_id, entry, self.completed_retention);
        if !was_terminal && entry.state.status.is_terminal() {
            let t = entry.state.saga_type.clone();
            let outcome = entry.state.status.to_string();
            self.metrics
                .sagas_ended
                .with_label_values(&[&t, &outcome])
                .inc();
            self.metrics.sagas_in_flight.with_label_values(&[&t]).dec();
            let secs = entry
                .state
                .updated_at
                .0
                .saturating_sub(entry.state.started_at.0) as f64
                / 1e3;
            self.metrics
                .saga_duration
                .with_label_values(&[&t, &outcome])
                .observe(secs);
        } else if was_terminal && !entry.state.status.is_terminal() {
            // An operator retry brought a failed saga back.
            self.metrics
                .sagas_in_flight
                .with_label_values(&[&entry.state.saga_type])
                .inc();
        }
    }

    fn fire_due(&self, p: i32, part: &mut Partition, now: u64, work: &mut Batch) {
        if now.saturating_sub(part.swept_at) > 60_000 {
            part.swept_at = now;
            part.ended.retain(|hash, until| {
                let keep = *until > now;
                if !keep {
                    work.tombstones.push((p, changelog::ended_key(*hash)));
                }
                keep
            });
        }
        while let Some(first) = part.timers.first().cloned() {
            if first.0 > now {
                break;
            }
            part.timers.remove(&first);
            let (_, saga_id, timer_id) = first;
            if timer_id == EARLY_EXPIRE {
                if !part.sagas.contains_key(&saga_id)
                    && let Some(events) = part.early.remove(&saga_id)
                {
                    warn!(saga.id = %saga_id, events = events.len(), "awaited events expired before their saga started; dropped");
                    self.metrics
                        .inputs
                        .with_label_values(&["event", "expired"])
                        .inc_by(events.len() as u64);
                    for (key, _) in events {
                        work.tombstones.push((p, key));
                    }
                }
                continue;
            }
            if timer_id == EXPIRE {
                if let Some(e) = part.sagas.get(&saga_id)
                    && e.state.status.is_terminal()
                {
                    // The state goes; the id is remembered, compactly, for
                    // `dedup-window`, so a replayed trigger is refused.
                    part.sagas.remove(&saga_id);
                    let hash = changelog::saga_hash(&saga_id);
                    let until = now + self.dedup_window.as_millis() as u64;
                    part.ended.insert(hash, until);
                    work.ended.push((p, hash, until));
                    work.tombstones.push((p, saga_id));
                }
                continue;
            }
            let purpose = part
                .sagas
                .get(&saga_id)
                .and_then(|e| e.state.timers.get(&timer_id))
                .map(|t| format!("{:?}", t.purpose))
                .unwrap_or_else(|| "unknown".to_owned());
            self.metrics
                .timers_fired
                .with_label_values(&[&purpose])
                .inc();
            if let Some(entry) = part.sagas.get_mut(&saga_id) {
                entry.armed.retain(|(_, id)| id != &timer_id);
            }
            let _ = self.apply(
                part,
                p,
                &saga_id,
                Input::TimerFired { timer_id },
                0,
                "timer",
                work,
            );
        }
    }

    /// Persists the batch's sagas with their outboxes, then sends every
    /// effect and record, each step waiting for the broker's acks. The
    /// state write carries the delivery marks of earlier batches, so a
    /// restore knows which outboxes were delivered at no extra round trip.
    ///
    /// Returns the partitions found taken over by a newer owner: their
    /// effects are not sent, and the caller lets them go.
    async fn flush(
        &self,
        producer: &FutureProducer,
        owned: &mut HashMap<i32, Partition>,
        mut work: Batch,
    ) -> Result<Vec<i32>, String> {
        let topic = self.names.saga_state();
        let epoch = |owned: &HashMap<i32, Partition>, p: i32| owned.get(&p).map_or(-1, |x| x.epoch);
        let mut states = Vec::with_capacity(work.order.len() + work.tombstones.len());
        let mut effects: Vec<(Option<i32>, Outgoing)> = Vec::new();
        for (p, saga_id) in &work.order {
            let e = epoch(owned, *p);
            let Some(entry) = owned
                .get_mut(p)
                .and_then(|part| part.sagas.get_mut(saga_id))
            else {
                continue;
            };
            let outbox = work.outbox.remove(saga_id).unwrap_or_default();
            let stored = StoredSaga {
                state: entry.state.clone(),
                outbox,
                traceparent: entry.traceparent.clone(),
                trigger_traceparent: entry.trigger_traceparent.clone(),
            };
            let payload = serde_json::to_vec(&stored).ok();
            entry.stored_bytes = payload.as_ref().map_or(0, Vec::len);
            states.push(state_record(&topic, *p, e, saga_id.clone(), payload));
            for eff in &stored.outbox {
                if let Some(r) = self
                    .effect_record(
                        saga_id,
                        &entry.state,
                        (
                            entry.traceparent.as_deref(),
                            entry.trigger_traceparent.as_deref(),
                        ),
                        eff,
                    )
                    .await
                {
                    effects.push((Some(*p), r));
                }
            }
        }
        for (p, key, parked) in work.parked {
            let payload = serde_json::to_vec(&parked).ok();
            states.push(state_record(&topic, p, epoch(owned, p), key, payload));
        }
        for (p, hash, until) in work.ended {
            let payload = serde_json::to_vec(&Ended { until }).ok();
            states.push(state_record(
                &topic,
                p,
                epoch(owned, p),
                changelog::ended_key(hash),
                payload,
            ));
        }
        for (p, key) in work.tombstones {
            states.push(state_record(&topic, p, epoch(owned, p), key, None));
        }
        effects.extend(work.records.drain(..).map(|r| (None, r)));
        let mut lost = Vec::new();
        if !states.is_empty() {
            let touched: BTreeSet<i32> = states.iter().filter_map(|s| s.partition).collect();
            for (&p, part) in owned.iter_mut() {
                if let Some(through) = part.delivered.take() {
                    states.push(delivered_mark(&topic, p, part.epoch, through));
                }
            }
            let written = produce_all(producer, states, self.record_limit).await?;
            let mut by_partition: HashMap<i32, Vec<i64>> = HashMap::new();
            for (p, offset) in written {
                by_partition.entry(p).or_default().push(offset);
            }
            for (p, mut offsets) in by_partition {
                let Some(part) = owned.get_mut(&p) else {
                    continue;
                };
                offsets.sort_unstable();
                let last = *offsets.last().expect("at least one write");
                let contiguous = offsets
                    .iter()
                    .enumerate()
                    .all(|(i, o)| *o == part.next_offset + i as i64);
                if !contiguous && self.taken_over(p, part, last).await? {
                    lost.push(p);
                    continue;
                }
                part.next_offset = last + 1;
                // Every outbox written above is delivered once the effects
                // below are; the next batch says so.
                if touched.contains(&p) {
                    part.delivered = Some(last);
                }
            }
        }
        if !lost.is_empty() {
            for p in &lost {
                self.metrics
                    .fencing
                    .with_label_values(&["partition-lost"])
                    .inc();
                warn!(
                    messaging.kafka.partition = p,
                    "another instance has taken this partition over (a newer ownership marker in the changelog); letting it go without sending this batch's effects"
                );
            }
            effects.retain(|(p, _)| p.is_none_or(|p| !lost.contains(&p)));
        }
        produce_all(
            producer,
            effects.into_iter().map(|(_, r)| r).collect(),
            self.record_limit,
        )
        .await?;
        Ok(lost)
    }

    /// Someone else wrote to this partition's changelog between this
    /// owner's writes. Reads what was written: a newer ownership marker
    /// means the partition was taken over (true); anything else is a late
    /// write of a replaced owner, which every restore ignores (false).
    async fn taken_over(&self, p: i32, part: &Partition, through: i64) -> Result<bool, String> {
        let topic = self.names.saga_state();
        let reader = self
            .kafka
            .consumer(&format!("{}-fence", self.group_id))
            .map_err(|e| e.to_string())?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, p, Offset::Offset(part.next_offset))
            .map_err(|e| e.to_string())?;
        reader.assign(&tpl).map_err(|e| e.to_string())?;
        let mut foreign = 0u64;
        loop {
            let m = tokio::time::timeout(Duration::from_secs(30), reader.recv())
                .await
                .map_err(|_| {
                    format!("[SF-ORCH-024] reading {topic}/{p} up to {through}: no record for 30 s")
                })?
                .map_err(|e| format!("[SF-ORCH-024] reading {topic}/{p}: {e}"))?;
            let is_marker = m
                .key()
                .is_some_and(|k| k.starts_with(changelog::EPOCH_PREFIX.as_bytes()));
            if is_marker && m.offset() > part.epoch {
                return Ok(true);
            }
            if epoch_of(&m) != Some(part.epoch) {
                foreign += 1;
            }
            if m.offset() >= through {
                break;
            }
        }
        if foreign > 0 {
            self.metrics
                .fencing
                .with_label_values(&["foreign-write"])
                .inc_by(foreign);
            warn!(
                messaging.kafka.partition = p,
                records = foreign,
                "late changelog writes of a replaced owner; restores ignore them"
            );
        }
        Ok(false)
    }

    /// Records the delivery marks still pending (on a clean stop), so the
    /// next owner re-sends nothing.
    async fn mark_delivered(
        &self,
        producer: &FutureProducer,
        owned: &mut HashMap<i32, Partition>,
    ) -> Result<(), String> {
        let topic = self.names.saga_state();
        let marks: Vec<Outgoing> = owned
            .iter_mut()
            .filter_map(|(&p, part)| {
                Some(delivered_mark(
                    &topic,
                    p,
                    part.epoch,
                    part.delivered.take()?,
                ))
            })
            .collect();
        produce_all(producer, marks, self.record_limit)
            .await
            .map(|_| ())
    }

    /// The Kafka record for one effect (timers have none).
    async fn effect_record(
        &self,
        saga_id: &str,
        state: &SagaState,
        (saga_span, trigger_span): (Option<&str>, Option<&str>),
        e: &Effect,
    ) -> Option<Outgoing> {
        // Every record is a hop of its own: a child span of the saga's.
        let saga = TraceContext::continue_or_start(saga_span);
        let hop = saga.child();
        let traceparent = Some(hop.header());
        if sagaflow_telemetry::exporting() {
            export_spans(
                state,
                &saga,
                trigger_span.and_then(TraceContext::parse),
                &hop,
                e,
                &self.names,
            );
        }
        // Each effect: where it goes, its key and message id, and its bytes.
        let (topic, key, message_id, kind, encoded) = match e {
            Effect::Command(c) => {
                let topic = self.names.commands(&c.service);
                let wire = wire::command(c, now_ms() as i64, traceparent.clone());
                let encoded = self.codec.encode_command(&topic, &wire).await;
                if encoded.is_ok() {
                    let kind = format!("{:?}", c.kind).to_lowercase();
                    self.metrics
                        .commands_sent
                        .with_label_values(&[&c.service, &kind])
                        .inc();
                }
                (
                    topic,
                    saga_id.to_owned(),
                    c.command_id.clone(),
                    "Command".to_owned(),
                    encoded,
                )
            }
            Effect::Lifecycle(l) => {
                let topic = self.names.saga_events();
                let encoded = self
                    .codec
                    .encode_lifecycle_event(&topic, &wire::lifecycle(l))
                    .await;
                (
                    topic,
                    saga_id.to_owned(),
                    l.event_id.clone(),
                    "SagaLifecycleEvent".to_owned(),
                    encoded,
                )
            }
            Effect::Result(r) => {
                let topic = self.names.saga_events();
                let wire = wire::result(r, state, state.updated_at.0 as i64);
                let encoded = self.codec.encode_saga_result(&topic, &wire).await;
                (
                    topic,
                    saga_id.to_owned(),
                    format!("{saga_id}/result"),
                    "SagaResult".to_owned(),
                    encoded,
                )
            }
            Effect::Emit(d) => {
                let topic = self.prefixed(&d.topic);
                let encoded = self
                    .schemas
                    .encode(&self.codec, &topic, &d.event_type, &d.payload)
                    .await;
                (
                    topic,
                    d.key.clone(),
                    d.event_id.clone(),
                    d.event_type.clone(),
                    encoded,
                )
            }
            Effect::ArmTimer { .. } | Effect::CancelTimer { .. } => return None,
        };
        match encoded {
            Ok(bytes) => Some(Outgoing {
                topic,
                partition: None,
                key: Some(key),
                payload: Some(bytes),
                headers: SagaHeaders {
                    saga_id: Some(saga_id.to_owned()),
                    message_id: Some(message_id),
                    message_type: Some(kind),
                    traceparent,
                    tracestate: None,
                }
                .to_owned_headers(),
            }),
            Err(err) => {
                warn!(saga.id = saga_id, effect = effect_kind(e), error = %err, "effect cannot be encoded; the saga's lifecycle shows it");
                self.metrics
                    .dead_letters
                    .with_label_values(&["SF-ORCH-016"])
                    .inc();
                None
            }
        }
    }
}

/// Exports the span of one record the saga sends (and, with its result,
/// the saga's own span, from its start to its end) over OTLP.
fn export_spans(
    state: &SagaState,
    saga: &TraceContext,
    trigger: Option<TraceContext>,
    hop: &TraceContext,
    e: &Effect,
    names: &TopicNames,
) {
    use sagaflow_telemetry::{Attribute, HopKind};
    let now = SystemTime::now();
    let mut attrs = vec![
        Attribute::new("saga.id", state.saga_id.clone()),
        Attribute::new("saga.type", state.saga_type.clone()),
        Attribute::new("messaging.system", "kafka"),
        Attribute::new("messaging.operation.type", "send"),
    ];
    let name = match e {
        Effect::Command(c) => {
            attrs.push(Attribute::new("saga.step", c.step.clone()));
            attrs.push(Attribute::new("sagaflow.attempt", i64::from(c.attempt)));
            attrs.push(Attribute::new(
                "messaging.destination.name",
                names.commands(&c.service),
            ));
            format!("send {}.{}", c.service, c.operation)
        }
        Effect::Lifecycle(l) => {
            if let Some(step) = &l.step {
                attrs.push(Attribute::new("saga.step", step.clone()));
            }
            attrs.push(Attribute::new(
                "messaging.destination.name",
                names.saga_events(),
            ));
            format!("{:?}", l.kind).to_lowercase()
        }
        Effect::Result(r) => {
            let ms = |t: u64| UNIX_EPOCH + std::time::Duration::from_millis(t);
            sagaflow_telemetry::hop(
                format!("saga {}", state.saga_type),
                HopKind::Internal,
                saga,
                trigger.as_ref(),
                ms(state.started_at.0),
                ms(state.updated_at.0).max(ms(state.started_at.0)),
                vec![
                    Attribute::new("saga.id", state.saga_id.clone()),
                    Attribute::new("saga.type", state.saga_type.clone()),
                    Attribute::new("saga.status", format!("{:?}", r.status).to_lowercase()),
                ],
            );
            attrs.push(Attribute::new(
                "messaging.destination.name",
                names.saga_events(),
            ));
            "send result".to_owned()
        }
        Effect::Emit(d) => {
            attrs.push(Attribute::new(
                "messaging.destination.name",
                d.topic.clone(),
            ));
            format!("send {}", d.event_type)
        }
        Effect::ArmTimer { .. } | Effect::CancelTimer { .. } => return,
    };
    sagaflow_telemetry::hop(name, HopKind::Producer, hop, Some(saga), now, now, attrs);
}

fn note_issued(entry: &mut Entry, effects: &[Effect], now: u64) {
    for e in effects {
        if let Effect::Command(c) = e {
            entry.issued.insert(c.command_id.clone(), now);
        }
    }
    if entry.state.status.is_terminal() {
        entry.issued.clear();
    }
}

fn effect_kind(e: &Effect) -> &'static str {
    match e {
        Effect::Command(_) => "command",
        Effect::Lifecycle(_) => "lifecycle",
        Effect::ArmTimer { .. } => "arm-timer",
        Effect::CancelTimer { .. } => "cancel-timer",
        Effect::Emit(_) => "emit",
        Effect::Result(_) => "result",
    }
}

/// Makes the partition's timer set hold exactly this saga's armed timers,
/// plus its expiry once it has ended.
fn rearm(
    timers: &mut BTreeSet<(u64, String, String)>,
    saga_id: &str,
    entry: &mut Entry,
    retention: Duration,
) {
    for (due, id) in entry.armed.drain(..) {
        timers.remove(&(due, saga_id.to_owned(), id));
    }
    let mut armed: Vec<(u64, String)> = entry
        .state
        .timers()
        .map(|(id, at)| (at.0, id.to_owned()))
        .collect();
    if entry.state.status.is_terminal() {
        armed.push((
            entry.state.updated_at.0 + retention.as_millis() as u64,
            EXPIRE.to_owned(),
        ));
    }
    for (due, id) in &armed {
        timers.insert((*due, saga_id.to_owned(), id.clone()));
    }
    entry.armed = armed;
}
