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
//! The sagas themselves live in one sans-IO [`PartitionCore`] per owned
//! partition; this driver moves records between Kafka and the cores.
//!
//! A crash after 2 leaves the outbox in the changelog: whoever restores the
//! partition re-sends it (every effect has a stable id, so adapters and
//! readers dedupe). A crash before 4 replays the inputs: the restored state
//! recognises them and they change nothing.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::FutureProducer;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use sagaflow_bus::{KafkaConfig, SagaHeaders, TopicNames, TraceContext};
use sagaflow_codec::Codec;
use sagaflow_engine::{Effect, Engine, SagaState};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::changelog::{self, Ended, EpochMarker, Record, Replay};
use crate::core::{Limits, PartitionCore, Refusal};
use crate::events::{self, EventSchemas};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::outbound::{
    Outgoing, dead_letter, delivered_mark, effect_kind, envelope_record, epoch_of, export_spans,
    now_ms, produce, produce_all, state_record,
};
pub use crate::outbound::{PAYLOAD_OMITTED, send_envelope};
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
    /// Turns true when the instance is asked to stop: ends waits for a
    /// dependency's outage.
    pub stop: watch::Receiver<bool>,
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

/// The driver's loop turns at least this often.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// The instance is stopping while it waited out a dependency's outage.
#[derive(Debug)]
struct Stopping;

/// One owned partition: its core and this owner's place in the changelog.
struct Partition {
    core: PartitionCore,
    /// This owner's epoch: the changelog offset of its ownership marker.
    epoch: i64,
    /// Where this owner's next changelog write should land if nobody else
    /// writes to the partition; a gap means another writer.
    next_offset: i64,
    /// The highest changelog offset of this partition whose outbox has been
    /// delivered but not yet recorded with a delivery mark.
    delivered: Option<i64>,
}

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

/// Records a batch produces besides the cores' writes and effects:
/// re-keyed inputs and dead letters.
#[derive(Default)]
struct Batch {
    records: Vec<Outgoing>,
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

    fn limits(&self) -> Limits {
        Limits {
            completed_retention: self.completed_retention,
            early_event_retention: self.early_event_retention,
            record_limit: self.record_limit,
            max_parked_per_saga: self.max_parked_per_saga,
            max_parked_per_partition: self.max_parked_per_partition,
            dedup_window: self.dedup_window,
        }
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
            self.health.beat();
            while let Ok(ev) = rx.try_recv() {
                self.rebalanced(&producer, &mut owned, ev).await?;
            }
            self.gauges(&owned);
            let next_due = owned
                .parts
                .values()
                .filter_map(|p| p.core.poll_timeout())
                .min();
            // The loop turns at least once a second, to beat for the
            // watchdog: a loop that stops turning is a stuck driver.
            let sleep = match next_due {
                Some(due) => Duration::from_millis(due.saturating_sub(now_ms())),
                None => HEARTBEAT,
            }
            .min(HEARTBEAT);
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
                // Due timers go first: a flood of inputs, or of consumer
                // errors in a broker outage, must not starve them.
                _ = tokio::time::sleep(sleep) => {
                    let now = now_ms();
                    for part in owned.parts.values_mut() {
                        part.core.handle_timeout(now);
                    }
                    self.flush(&producer, &mut owned, Batch::default()).await?;
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
                            self.on_input(&mut part.core, m, &mut work);
                            Ok(())
                        } else if topic == replies {
                            let part = owned.parts.get_mut(&p).expect("restored above");
                            self.on_reply(&mut part.core, m, &mut work).await
                        } else if source.contains(topic) {
                            self.on_source(m, &mut work).await
                        } else {
                            Ok(())
                        };
                        if handled.is_err() {
                            // Stopping while a dependency is down: nothing of
                            // this batch is committed; the next owner or
                            // this instance restarted reads it again.
                            return self.stop(&producer, &consumer, &mut owned).await;
                        }
                    }
                    self.metrics.batch_size.with_label_values(&["orchestrator"]).observe(batch.len() as f64);
                    for p in self.flush(&producer, &mut owned, work).await? {
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
            }
        }
        self.stop(&producer, &consumer, &mut owned).await
    }

    fn gauges(&self, owned: &Owned) {
        let parts = owned.parts.values();
        self.metrics.owned_partitions.set(owned.parts.len() as i64);
        self.metrics
            .parked_events
            .set(parts.clone().map(|p| p.core.parked()).sum::<usize>() as i64);
        self.metrics
            .ended_markers
            .set(parts.map(|p| p.core.ended()).sum::<usize>() as i64);
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
    ) -> Result<(), Stopping> {
        *attempt += 1;
        self.metrics.retries.with_label_values(&[cause]).inc();
        let delay = Duration::from_millis(100u64 << (*attempt).min(6)).min(Duration::from_secs(5));
        warn!(attempt = *attempt, retry_in_ms = delay.as_millis() as u64, error = %error, "{cause} unavailable; the batch waits and retries");
        // Waiting out an outage is progress, not a stall.
        self.health.beat();
        let mut shutdown = self.stop.clone();
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
                // Not ready until the group assigns again (possibly
                // nothing): a rebalance, or a session lost with the broker.
                self.health.set_ready(false);
                for p in ps {
                    owned.lost.remove(&p);
                    owned.revoked.insert(p);
                    if let Some(part) = owned.parts.remove(&p) {
                        self.release(producer, p, &part).await;
                        info!(
                            messaging.kafka.partition = p,
                            sagas = part.core.len(),
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
        part.core.release();
    }

    /// Takes a partition over: writes this owner's epoch marker to the
    /// changelog, rebuilds the partition's sagas by reading the changelog
    /// until the marker comes back (never trusting the high watermark,
    /// which a broker may report below acknowledged records), re-arms
    /// their timers and re-sends what their outboxes still owe.
    async fn restore(&self, producer: &FutureProducer, p: i32) -> Result<Partition, RunError> {
        let started = Instant::now();
        let topic = self.names.saga_state();
        let failed = |message: String| RunError::Restore {
            topic: topic.clone(),
            partition: p,
            message,
        };
        let marker = Outgoing {
            topic: topic.clone(),
            partition: Some(p),
            key: Some(format!(
                "{}{p}/{}",
                changelog::EPOCH_PREFIX,
                uuid::Uuid::new_v4()
            )),
            payload: serde_json::to_vec(&EpochMarker {
                owner: format!("{}/{}", self.group_id, uuid::Uuid::new_v4()),
                partition: p,
            })
            .ok(),
            headers: rdkafka::message::OwnedHeaders::new(),
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
            if read.is_multiple_of(1024) {
                self.health.beat();
            }
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
        // A saga stored without a trace context (written before sagas had
        // one) gets one now, so all its records share a trace.
        for (_, s) in replay.sagas.values_mut() {
            if s.traceparent.is_none() {
                s.traceparent = Some(TraceContext::new_root().header());
            }
        }
        let core = PartitionCore::new(p, self.engine.clone(), self.metrics.clone(), self.limits());
        let (core, owed) = core.restore(replay, now_ms());
        let mut records = Vec::new();
        for (saga_id, stored) in owed {
            for e in &stored.outbox {
                self.metrics
                    .outbox_resent
                    .with_label_values(&[effect_kind(e)])
                    .inc();
                if let Some(r) = self
                    .effect_record(
                        &saga_id,
                        &stored.state,
                        (
                            stored.traceparent.as_deref(),
                            stored.trigger_traceparent.as_deref(),
                        ),
                        e,
                    )
                    .await
                    .map_err(|Stopping| {
                        failed("stopped while the schema registry was unreachable".to_owned())
                    })?
                {
                    records.push(r);
                }
            }
        }
        let resent = records.len();
        produce_all(producer, records, self.record_limit)
            .await
            .map_err(|e| failed(format!("re-sending owed effects: {e}")))?;
        let label = p.to_string();
        self.metrics
            .restore_seconds
            .with_label_values(&[&label])
            .observe(started.elapsed().as_secs_f64());
        self.metrics
            .restored_sagas
            .with_label_values(&[&label])
            .inc_by(core.len() as u64);
        info!(
            messaging.kafka.partition = p,
            sagas = core.len(),
            resent,
            epoch,
            records = read,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "partition restored"
        );
        Ok(Partition {
            core,
            epoch,
            next_offset: epoch + 1,
            // Everything written before the marker is delivered now.
            delivered: (resent > 0).then_some(epoch - 1),
        })
    }

    async fn on_source(&self, m: &BorrowedMessage<'_>, work: &mut Batch) -> Result<(), Stopping> {
        let mut attempt = 0;
        let event = match loop {
            match events::decode(&self.codec, m).await {
                Err(events::EventError::Decode(e)) if e.is_retriable() => {
                    self.backoff(&mut attempt, "registry", &e).await?;
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
                work.records.push(dead_letter(
                    &self.names,
                    m,
                    e.code(),
                    &e.to_string(),
                    self.record_limit,
                ));
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
                    if !self.route(m, &env, event.traceparent.clone(), work) {
                        return Ok(());
                    }
                    routed += 1;
                }
                Err(e) => {
                    let reason = format!("saga `{}`: {e}", def.saga_type);
                    warn!(topic = m.topic(), offset = m.offset(), error = %reason, "trigger cannot start a saga; dead-lettered");
                    self.metrics
                        .dead_letters
                        .with_label_values(&["SF-ORCH-013"])
                        .inc();
                    work.records.push(dead_letter(
                        &self.names,
                        m,
                        "SF-ORCH-013",
                        &reason,
                        self.record_limit,
                    ));
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
                    if !self.route(m, &env, event.traceparent.clone(), work) {
                        return Ok(());
                    }
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

    /// Re-keys a domain event's envelope to `sagaflow.inputs`, or refuses
    /// the event (SF-ORCH-022) when the envelope would exceed the record
    /// limit. False when refused.
    fn route(
        &self,
        m: &BorrowedMessage<'_>,
        env: &Envelope,
        traceparent: Option<String>,
        work: &mut Batch,
    ) -> bool {
        let record = envelope_record(&self.names, env, traceparent);
        if record.size() > self.record_limit {
            let reason = format!(
                "the event makes a saga input of {} bytes, over the record limit of {} bytes",
                record.size(),
                self.record_limit
            );
            self.refuse(m, "SF-ORCH-022", &reason, work);
            return false;
        }
        work.records.push(record);
        true
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
        work.records
            .push(dead_letter(&self.names, m, code, reason, self.record_limit));
    }

    /// A refusal from the core becomes a dead letter of the input.
    fn refused(&self, m: &BorrowedMessage<'_>, r: Result<(), Refusal>, work: &mut Batch) {
        if let Err(r) = r {
            self.refuse(m, r.code, &r.reason, work);
        }
    }

    fn on_input(&self, core: &mut PartitionCore, m: &BorrowedMessage<'_>, work: &mut Batch) {
        let env: Envelope = match m.payload().map(serde_json::from_slice) {
            Some(Ok(env)) => env,
            Some(Err(e)) => {
                let reason = format!("not a Sagaflow input envelope: {e}");
                self.refuse(m, "SF-ORCH-014", &reason, work);
                return;
            }
            None => {
                self.refuse(m, "SF-ORCH-014", "empty input envelope", work);
                return;
            }
        };
        let traceparent = m
            .headers()
            .map(SagaHeaders::from_headers)
            .and_then(|h| h.traceparent);
        let input_bytes = m.payload().map_or(0, <[u8]>::len);
        // The saga is a span of its own: a child of the trigger's, or the
        // root of a new trace.
        let new_trace = |parent: Option<&str>| {
            let parent = parent.and_then(TraceContext::parse);
            let trace = parent.map_or_else(TraceContext::new_root, |p| p.child());
            (trace.header(), parent.map(|p| p.header()))
        };
        let r = core.handle_input(
            env,
            traceparent.as_deref(),
            input_bytes,
            now_ms(),
            new_trace,
        );
        self.refused(m, r, work);
    }

    async fn on_reply(
        &self,
        core: &mut PartitionCore,
        m: &BorrowedMessage<'_>,
        work: &mut Batch,
    ) -> Result<(), Stopping> {
        let Some(bytes) = m.payload() else {
            self.refuse(m, "SF-ORCH-012", "empty reply", work);
            return Ok(());
        };
        let mut attempt = 0;
        let reply = match loop {
            match self.codec.decode_reply(m.topic(), bytes).await {
                Err(e) if e.is_retriable() => {
                    self.backoff(&mut attempt, "registry", &e).await?;
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
        let saga_id = reply.saga_id.clone();
        let step = reply.step.clone();
        let r = core.handle_reply(&saga_id, &step, wire::reply(reply), bytes.len(), now_ms());
        self.refused(m, r, work);
        Ok(())
    }

    /// Persists what the cores changed (each touched saga with its
    /// outbox, parked events, ended markers, tombstones), then sends every
    /// effect and record, each step waiting for the broker's acks. The
    /// state write carries the delivery marks of earlier batches, so a
    /// restore knows which outboxes were delivered at no extra round trip.
    ///
    /// Partitions found taken over by a newer owner are let go: their
    /// effects are not sent, and they are returned so that their inputs
    /// are not committed either.
    async fn flush(
        &self,
        producer: &FutureProducer,
        owned: &mut Owned,
        work: Batch,
    ) -> Result<Vec<i32>, RunError> {
        let topic = self.names.saga_state();
        let mut states = Vec::new();
        let mut effects: Vec<(Option<i32>, Outgoing)> = Vec::new();
        let mut touched = BTreeSet::new();
        for (&p, part) in owned.parts.iter_mut() {
            let drained = part.core.drain();
            if drained.is_empty() {
                continue;
            }
            touched.insert(p);
            let e = part.epoch;
            for (saga_id, stored) in drained.sagas {
                let payload = serde_json::to_vec(&stored).ok();
                part.core
                    .written(&saga_id, payload.as_ref().map_or(0, Vec::len));
                for eff in &stored.outbox {
                    if let Some(r) = self
                        .effect_record(
                            &saga_id,
                            &stored.state,
                            (
                                stored.traceparent.as_deref(),
                                stored.trigger_traceparent.as_deref(),
                            ),
                            eff,
                        )
                        .await
                        .map_err(|Stopping| {
                            RunError::Kafka(
                                "stopped while the schema registry was unreachable".to_owned(),
                            )
                        })?
                    {
                        effects.push((Some(p), r));
                    }
                }
                states.push(state_record(&topic, p, e, saga_id, payload));
            }
            for (key, parked) in drained.parked {
                states.push(state_record(
                    &topic,
                    p,
                    e,
                    key,
                    serde_json::to_vec(&parked).ok(),
                ));
            }
            for (hash, until) in drained.ended {
                let payload = serde_json::to_vec(&Ended { until }).ok();
                states.push(state_record(
                    &topic,
                    p,
                    e,
                    changelog::ended_key(hash),
                    payload,
                ));
            }
            for key in drained.tombstones {
                states.push(state_record(&topic, p, e, key, None));
            }
        }
        effects.extend(work.records.into_iter().map(|r| (None, r)));
        let mut lost = Vec::new();
        if !states.is_empty() {
            for (&p, part) in owned.parts.iter_mut() {
                if let Some(through) = part.delivered.take() {
                    states.push(delivered_mark(&topic, p, part.epoch, through));
                }
            }
            let written = produce_all(producer, states, self.record_limit)
                .await
                .map_err(RunError::Kafka)?;
            let mut by_partition: HashMap<i32, Vec<i64>> = HashMap::new();
            for (p, offset) in written {
                by_partition.entry(p).or_default().push(offset);
            }
            for (p, mut offsets) in by_partition {
                let Some(part) = owned.parts.get_mut(&p) else {
                    continue;
                };
                offsets.sort_unstable();
                let last = *offsets.last().expect("at least one write");
                let contiguous = offsets
                    .iter()
                    .enumerate()
                    .all(|(i, o)| *o == part.next_offset + i as i64);
                if !contiguous
                    && self
                        .taken_over(p, part, last)
                        .await
                        .map_err(RunError::Kafka)?
                {
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
        for p in &lost {
            self.metrics
                .fencing
                .with_label_values(&["partition-lost"])
                .inc();
            warn!(
                messaging.kafka.partition = p,
                "another instance has taken this partition over (a newer ownership marker in the changelog); letting it go without sending this batch's effects"
            );
            if let Some(part) = owned.parts.remove(p) {
                part.core.release();
            }
            owned.lost.insert(*p);
        }
        effects.retain(|(p, _)| p.is_none_or(|p| !lost.contains(&p)));
        produce_all(
            producer,
            effects.into_iter().map(|(_, r)| r).collect(),
            self.record_limit,
        )
        .await
        .map_err(RunError::Kafka)?;
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
    ) -> Result<Option<Outgoing>, Stopping> {
        let mut attempt = 0;
        loop {
            match self
                .try_effect_record(saga_id, state, (saga_span, trigger_span), e)
                .await
            {
                Err(err) if err.is_retriable() => {
                    self.backoff(&mut attempt, "registry", &err).await?;
                }
                Err(err) => {
                    tracing::error!(code = "SF-ORCH-016", saga.id = saga_id, effect = effect_kind(e), error = %err, "effect cannot be encoded and is not sent; fix the schema or definition");
                    self.metrics
                        .dead_letters
                        .with_label_values(&["SF-ORCH-016"])
                        .inc();
                    return Ok(None);
                }
                Ok(r) => return Ok(r),
            }
        }
    }

    async fn try_effect_record(
        &self,
        saga_id: &str,
        state: &SagaState,
        (saga_span, trigger_span): (Option<&str>, Option<&str>),
        e: &Effect,
    ) -> Result<Option<Outgoing>, sagaflow_codec::EncodeError> {
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
            Effect::ArmTimer { .. } | Effect::CancelTimer { .. } => return Ok(None),
        };
        encoded.map(|bytes| {
            Some(Outgoing {
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
            })
        })
    }
}
