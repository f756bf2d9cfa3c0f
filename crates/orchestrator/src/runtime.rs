//! The driver: moves records between Kafka and the partition cores, and
//! nothing else. Exactly-once completion without broker transactions, per
//! batch of inputs:
//!
//! 1. apply every input to its partition's [`PartitionCore`] (the engine
//!    dedupes inputs it has seen by id);
//! 2. write each touched saga to the [`SagaStore`] together with the
//!    effects it now owes (its *outbox*), and wait for the acks; a
//!    partition found taken over by a newer owner is let go here;
//! 3. hand the effects (commands, lifecycle events, emitted events,
//!    results, re-keyed inputs, dead letters) to the producer, and go on
//!    with the next batch while the broker acknowledges them;
//! 4. once a batch's effects are all acknowledged (batches settle in
//!    order), note them delivered for the next state write, then store the
//!    batch's input offsets, committed within [`COMMIT_INTERVAL`].
//!
//! A crash after 2 leaves the outbox in the store: whoever restores the
//! partition re-sends it (every effect has a stable id, so adapters and
//! readers dedupe). A crash before 4, or before the stored offsets are
//! committed, replays the inputs: the restored state recognises them and
//! they change nothing. The one thing the overlap of 3
//! with the next batch must not do is replace a saga's stored outbox while
//! its effects are unacknowledged (a failed send would then be owed by
//! nobody): a batch that changes such a saga first waits for the batches
//! before it to settle. The rest lives in files named
//! for what it does: [`routing`](crate::routing) (domain events in),
//! [`intake`](crate::intake) (inputs and replies in),
//! [`effects`](crate::effects) (effects out), rebalances
//! ([`sagaflow_bus::rebalance`]),
//! [`store`](crate::store).

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::BorrowedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use sagaflow_bus::producer::Canceled;
use sagaflow_bus::{DeliveryFuture, Producer};
use sagaflow_bus::{KafkaConfig, TopicNames, TraceContext};
use sagaflow_codec::Codec;
use sagaflow_engine::Engine;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

pub use crate::core::StoredSaga;
use crate::core::{Limits, PartitionCore};
use crate::events::EventSchemas;
use crate::handoff::{Start, Taken};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::outbound::{Acks, Outbound, Outgoing, effect_kind, now_ms, produce_all};
pub use crate::outbound::{PAYLOAD_OMITTED, send_envelope};
use crate::store::{KafkaStore, Lease, Restored, SagaStore, StoreError};
use crate::tick::{Ticks, tick_of};
use crate::view::SagaView;
use sagaflow_bus::commit::CommitTimer;
use sagaflow_bus::rebalance::{Ownership, RebalanceEvents, RebalancePolicy};

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
    /// At most this many batches' effects await their acknowledgements
    /// while the driver goes on; the next batch waits for the oldest to
    /// settle (1: every batch's effects are acknowledged before the next).
    pub pipeline_depth: usize,
    /// The largest record produced (bytes, headers included).
    pub record_limit: usize,
    pub max_parked_per_saga: usize,
    pub max_parked_per_partition: usize,
    /// How long an ended saga id is remembered after its state is removed.
    pub dedup_window: Duration,
    pub health: Health,
    /// This process's saga view: fed the lifecycle events and results of
    /// the sagas this instance owns as soon as they are acknowledged.
    pub view: Option<SagaView>,
    /// Turns true when the instance is asked to stop: ends waits for a
    /// dependency's outage.
    pub stop: watch::Receiver<bool>,
    /// Saga starts the HTTP facade hands over ([`crate::handoff`]).
    pub starts: Option<mpsc::Receiver<Start>>,
}

#[derive(Debug, thiserror::Error, sagaflow_codes::Coded)]
pub enum RunError {
    #[error(transparent)]
    Bus(#[from] sagaflow_bus::Error),
    #[error("SF-ORCH-020: Kafka: {0}")]
    Kafka(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The driver's loop turns at least this often.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// The instance is stopping while it waited out a dependency's outage.
#[derive(Debug)]
pub(crate) struct Stopping;

/// One owned partition: its core and this owner's lease in the store.
pub(crate) struct Partition {
    pub(crate) core: PartitionCore,
    lease: Lease,
    /// How far its inputs and replies are read, for the timers that
    /// await them (`tick`).
    pub(crate) ticks: Ticks,
}

/// The partitions this instance holds, and those it must leave alone.
pub(crate) struct Owned {
    pub(crate) parts: HashMap<i32, Partition>,
    /// Revoked by the group: their inputs belong to the next owner.
    revoked: BTreeSet<i32>,
    /// Taken over by another owner (a newer epoch marker in the store)
    /// without a revoke reaching this instance yet: their inputs are
    /// neither applied nor committed until the group assigns them here
    /// again.
    lost: BTreeSet<i32>,
    /// Batches whose effects are handed to the producer and not all
    /// acknowledged yet, oldest first.
    sending: VecDeque<Sending>,
    /// Tick records on their way (`tick`).
    ticks_sent: FuturesUnordered<DeliveryFuture>,
    /// Offsets stored since the last commit, committed
    /// [`COMMIT_INTERVAL`] after the first of them.
    commits: CommitTimer,
    /// Delivery marks pending on some lease: each goes with its
    /// partition's next changes, and all of them [`MARK_INTERVAL`] after
    /// the first, whether or not their partitions changed.
    marks: CommitTimer,
}

/// Stored offsets are committed this long after the first of them, not
/// after every batch: a commit is a broker request, and at 10 sagas in
/// flight one per batch was 0.8 of a saga's 22 requests. A crash re-reads
/// at most this much more, which the restored states recognise; a revoke
/// and a clean stop commit what is stored at once.
const COMMIT_INTERVAL: Duration = Duration::from_millis(100);

/// How long a delivery mark may wait for its partition's next changes
/// before it is written alone. A producer sends one request per partition
/// (librdkafka), so a mark written with another partition's changes was a
/// request of its own: at 10 sagas in flight, 5.2 changelog requests per
/// saga where its changes need about 3 (docs/orchestrator.md, "Delivery
/// marks"). A crash re-sends at most this much more of an idle
/// partition's effects, which carry stable ids.
const MARK_INTERVAL: Duration = Duration::from_secs(1);

/// One batch's effects on their way: what to do once the broker has
/// acknowledged them all.
struct Sending {
    acks: Acks,
    /// When the effects were handed to the producer.
    since: Instant,
    /// Per partition written: the lease's epoch and the changelog offset
    /// its unsent outboxes end at, as the batch's write left them.
    unsent: Vec<(i32, i64, i64)>,
    /// The stored records (partition, key) whose outboxes these effects
    /// are: a later batch must not overwrite them before this settles.
    keys: HashSet<(i32, String)>,
    /// The batch's input offsets, committed once it settles.
    commit: Option<TopicPartitionList>,
}

impl Owned {
    /// Sends a tick for every partition with a timer held until its inputs
    /// are read further, unless one is already on its way, and returns how
    /// long the loop may sleep: until the next timer that may fire, or a
    /// tick to send again, a heartbeat at most (a loop that stops turning
    /// is a stuck driver). A held timer wakes nothing: its tick read back
    /// does. Also arms the delivery marks' timer while a lease has a mark
    /// pending.
    fn tick_and_sleep(
        &mut self,
        producer: &Producer,
        names: &TopicNames,
        metrics: &Metrics,
    ) -> Duration {
        let (now, at) = (now_ms(), Instant::now());
        let mut sleep = HEARTBEAT;
        for (&p, part) in &mut self.parts {
            if part.lease.delivery_pending() {
                self.marks.stored();
            }
            let due = part.core.due(now, part.ticks.read());
            if due.held && part.ticks.due(at) {
                let sent = part.ticks.send(producer, names, p, now, at);
                metrics.timer_ticks.inc_by(sent.len() as u64);
                self.ticks_sent.extend(sent);
            }
            if let Some(next) = due.next {
                sleep = sleep.min(Duration::from_millis(next.saturating_sub(now)));
            }
            if let Some(again) = part.ticks.resend_at() {
                sleep = sleep.min(again.saturating_duration_since(at));
            }
        }
        sleep
    }

    /// Whether a batch still sending wrote one of these records.
    fn sending_any(&self, keys: &HashSet<(i32, String)>) -> bool {
        self.sending.iter().any(|s| !s.keys.is_disjoint(keys))
    }

    /// Whether an input of this co-partitioned partition is someone
    /// else's to apply.
    pub(crate) fn foreign(&self, p: i32) -> bool {
        self.revoked.contains(&p) || self.lost.contains(&p)
    }
}

/// Records a batch produces besides the cores' writes and effects:
/// re-keyed inputs and dead letters.
#[derive(Default)]
pub(crate) struct Batch {
    pub(crate) records: Vec<Outgoing>,
}

type Subscribed = (
    StreamConsumer<RebalanceEvents>,
    mpsc::UnboundedReceiver<Ownership>,
);

impl Driver {
    /// Runs until `shutdown` turns true.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<(), RunError> {
        let (consumer, mut rx) = self.subscribe()?;
        let producer = self.kafka.producer()?;
        let outbound = Outbound::new(
            producer.clone(),
            self.kafka.producer()?,
            self.names.saga_events(),
        );
        let mut starts = self.starts.take();
        let mut inputs_partitions = self.inputs_partitions(&producer).await;
        // The changelog has a client of its own: a state write, which the
        // batch waits for, does not queue behind the previous batches'
        // effects on one connection (the broker serves a connection's
        // requests in order). docs/orchestrator.md, "A producer for the
        // changelog".
        let store = KafkaStore::new(
            self.kafka.clone(),
            self.kafka.producer()?,
            self.names.saga_state(),
            self.group_id.clone(),
            self.record_limit,
            self.health.clone(),
        );
        let mut owned = Owned {
            parts: HashMap::new(),
            revoked: BTreeSet::new(),
            lost: BTreeSet::new(),
            sending: VecDeque::new(),
            ticks_sent: FuturesUnordered::new(),
            commits: CommitTimer::new(COMMIT_INTERVAL),
            marks: CommitTimer::new(MARK_INTERVAL),
        };
        loop {
            // Effects the broker has not acknowledged for a while are a
            // driver that is not progressing, as a blocked send was.
            if owned
                .sending
                .front()
                .is_none_or(|s| s.since.elapsed() < HEARTBEAT)
            {
                self.health.beat();
            }
            while let Ok(ev) = rx.try_recv() {
                self.settle_all(&consumer, &mut owned).await?;
                inputs_partitions = self
                    .on_rebalance(&store, &producer, &mut owned, ev, inputs_partitions)
                    .await?;
            }
            while owned.sending.len() >= self.pipeline_depth.max(1) {
                self.settle_oldest(&consumer, &mut owned).await?;
            }
            self.gauges(&owned);
            let sleep = owned.tick_and_sleep(&producer, &self.names, &self.metrics);
            tokio::select! {
                biased;
                _ = shutdown.changed() => if *shutdown.borrow() { break },
                // A rebalance wakes the loop: a newly assigned partition is
                // restored (and its timers armed) even if no input arrives.
                Some(ev) = rx.recv() => {
                    self.settle_all(&consumer, &mut owned).await?;
                    inputs_partitions = self.on_rebalance(&store, &producer, &mut owned, ev, inputs_partitions).await?;
                }
                // The oldest batch's effects are acknowledged.
                acked = async {
                    match owned.sending.front_mut() {
                        Some(s) => (&mut s.acks).await,
                        None => std::future::pending().await,
                    }
                } => {
                    let sent = owned.sending.pop_front().expect("the batch just acknowledged");
                    if let Some(done) = Self::settled(&mut owned, sent, acked)? {
                        self.commit(&consumer, &mut owned, done)?;
                    }
                }
                // A tick the broker did not take is a failed produce.
                Some(delivered) = owned.ticks_sent.next(), if !owned.ticks_sent.is_empty() => {
                    match delivered {
                        Ok(Ok(_)) => {}
                        Ok(Err((e, _))) => {
                            return Err(RunError::Kafka(format!("a timer tick was not delivered: {e}")));
                        }
                        Err(Canceled) => {
                            return Err(RunError::Kafka("a timer tick was not delivered: the producer stopped".into()));
                        }
                    }
                }
                // Due timers go first: a flood of inputs, or of consumer
                // errors in a broker outage, must not starve them.
                _ = tokio::time::sleep(sleep) => {
                    let now = now_ms();
                    for part in owned.parts.values_mut() {
                        part.core.handle_timeout_read(now, part.ticks.read());
                    }
                    self.flush(&store, &outbound, &mut owned, Batch::default()).await?;
                }
                // Delivery marks that waited long enough for their
                // partitions' changes are written alone.
                () = owned.marks.due() => {
                    self.flush(&store, &outbound, &mut owned, Batch::default()).await?;
                }
                () = owned.commits.due() => {
                    owned.commits.take();
                    if let Err(e) = consumer.commit_consumer_state(CommitMode::Async) {
                        debug!(error = %e, "async commit");
                    }
                }
                m = consumer.recv() => {
                    let Some(batch) = self.collect(&consumer, m).await else { continue };
                    let handed = self.more_starts(&mut starts, Vec::new());
                    // Partitions revoked while the batch was collected are no
                    // longer ours: their inputs are left to the next owner.
                    while let Ok(ev) = rx.try_recv() {
                        self.settle_all(&consumer, &mut owned).await?;
                        inputs_partitions = self.on_rebalance(&store, &producer, &mut owned, ev, inputs_partitions).await?;
                    }
                    let turn = self
                        .on_batch(&store, &outbound, &mut owned, &batch, handed, inputs_partitions)
                        .await?;
                    if !self.turned(&consumer, &mut owned, turn)? {
                        break;
                    }
                }
                // Saga starts from this instance's facade, when no record
                // is waiting (records take them along otherwise).
                Some(start) = async {
                    match &mut starts {
                        Some(starts) => starts.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    let handed = self.more_starts(&mut starts, vec![start]);
                    let turn = self
                        .on_batch(&store, &outbound, &mut owned, &[], handed, inputs_partitions)
                        .await?;
                    if !self.turned(&consumer, &mut owned, turn)? {
                        break;
                    }
                }
            }
        }
        self.stop(&store, &consumer, &mut owned).await
    }

    /// Waits for the oldest sending batch's acknowledgements and settles it.
    async fn settle_oldest(
        &self,
        consumer: &StreamConsumer<RebalanceEvents>,
        owned: &mut Owned,
    ) -> Result<(), RunError> {
        if let Some(mut sent) = owned.sending.pop_front() {
            let acked = (&mut sent.acks).await;
            if let Some(done) = Self::settled(owned, sent, acked)? {
                self.commit(consumer, owned, done)?;
            }
        }
        Ok(())
    }

    /// Waits until every sending batch has settled.
    async fn settle_all(
        &self,
        consumer: &StreamConsumer<RebalanceEvents>,
        owned: &mut Owned,
    ) -> Result<(), RunError> {
        while !owned.sending.is_empty() {
            self.settle_oldest(consumer, owned).await?;
        }
        Ok(())
    }

    /// A batch was applied: its input offsets are committed once its
    /// effects settle. False when the instance is stopping while a
    /// dependency is down: nothing of the batch is committed; the next
    /// owner reads it.
    fn turned(
        &self,
        consumer: &StreamConsumer<RebalanceEvents>,
        owned: &mut Owned,
        turn: ControlFlow<(), TopicPartitionList>,
    ) -> Result<bool, RunError> {
        let ControlFlow::Continue(done) = turn else {
            return Ok(false);
        };
        match owned.sending.back_mut() {
            Some(last) => merge_offsets(&mut last.commit, done),
            None => self.commit(consumer, owned, done)?,
        }
        Ok(true)
    }

    /// `first` and the saga starts already waiting, up to `max-batch`.
    fn more_starts(
        &self,
        starts: &mut Option<mpsc::Receiver<Start>>,
        mut first: Vec<Start>,
    ) -> Vec<Start> {
        if let Some(starts) = starts {
            while first.len() < self.max_batch {
                match starts.try_recv() {
                    Ok(start) => first.push(start),
                    Err(_) => break,
                }
            }
        }
        first
    }

    /// The inputs topic's partition count, which places a saga start; `None`
    /// (every start then goes through the topic) when the metadata cannot
    /// be read.
    async fn inputs_partitions(&self, producer: &Producer) -> Option<i32> {
        let inputs = self.names.inputs();
        match sagaflow_bus::partitions_of(producer, &inputs, Duration::from_secs(5)).await {
            Ok(n) if n > 0 => i32::try_from(n).ok(),
            Ok(_) => None,
            Err(e) => {
                warn!(error = %e, topic = %inputs, "cannot read the inputs' partition count; the facade's starts go through the topic");
                None
            }
        }
    }

    /// A rebalance; an assignment reads the inputs' partition count again.
    async fn on_rebalance(
        &self,
        store: &impl SagaStore,
        producer: &Producer,
        owned: &mut Owned,
        ev: Ownership,
        partitions: Option<i32>,
    ) -> Result<Option<i32>, RunError> {
        let assigned = matches!(ev, Ownership::Assigned(_));
        self.rebalanced(store, producer, owned, ev).await?;
        Ok(if assigned {
            self.inputs_partitions(producer).await
        } else {
            partitions
        })
    }

    /// A batch's effects are acknowledged: the leases it wrote under note
    /// them delivered (the next state write says so); returns its input
    /// offsets, to commit now. A failed send stops the driver as a failed
    /// produce always has: nothing of the batch is committed, and the
    /// outboxes stay owed in the store for the next owner.
    fn settled(
        owned: &mut Owned,
        sent: Sending,
        acked: Result<Vec<(i32, i64)>, String>,
    ) -> Result<Option<TopicPartitionList>, RunError> {
        acked.map_err(RunError::Kafka)?;
        for (p, epoch, through) in sent.unsent {
            // A partition let go meanwhile leaves its outboxes to the next
            // owner's restore.
            if let Some(part) = owned.parts.get_mut(&p)
                && part.lease.epoch == epoch
            {
                part.lease.sent_through(through);
            }
        }
        Ok(sent.commit)
    }

    fn subscribe(&self) -> Result<Subscribed, RunError> {
        let inputs = self.names.inputs();
        let lag = sagaflow_bus::lag::LagGauge::new(
            self.metrics.consumer_lag.clone(),
            self.group_id.clone(),
        );
        // The inputs' partitions are the unit of ownership; the replies
        // are co-partitioned with them. The revoke's commit waits for the
        // broker: the next owner starts exactly after what is stored.
        let policy = RebalancePolicy {
            topic: inputs.clone(),
            commit: CommitMode::Sync,
            report_empty: true,
        };
        let (context, rx) = RebalanceEvents::new(policy, lag);
        let consumer = self.kafka.consumer_with_context(&self.group_id, context)?;
        let mut topics: Vec<String> = self.source_topics().into_iter().collect();
        topics.extend([inputs, self.names.replies()]);
        let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&refs)
            .map_err(|e| RunError::Kafka(e.to_string()))?;
        info!(topics = ?topics, group = %self.group_id, "orchestrator consuming");
        Ok((consumer, rx))
    }

    /// The first record and whatever else is ready at once, up to
    /// `max-batch`. Consumption errors (a topic not created yet, a broker
    /// restarting) are reported per message and pass: the client retries
    /// on its own.
    async fn collect<'c>(
        &self,
        consumer: &'c StreamConsumer<RebalanceEvents>,
        first: KafkaResult<BorrowedMessage<'c>>,
    ) -> Option<Vec<BorrowedMessage<'c>>> {
        let first = match first {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "consumer error; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
                return None;
            }
        };
        let mut batch = vec![first];
        while batch.len() < self.max_batch {
            match sagaflow_bus::ready(consumer) {
                Some(Ok(m)) => batch.push(m),
                Some(Err(e)) => {
                    warn!(error = %e, "consumer error; retrying");
                    break;
                }
                None => break,
            }
        }
        Some(batch)
    }

    /// Applies a batch of records, persists and sends what they caused.
    /// Continues with the offsets to commit (inputs of partitions that are
    /// not ours, or were found taken over, are left out); breaks when the
    /// instance is stopping during a dependency's outage.
    async fn on_batch(
        &self,
        store: &impl SagaStore,
        outbound: &Outbound,
        owned: &mut Owned,
        batch: &[BorrowedMessage<'_>],
        handed: Vec<Start>,
        inputs_partitions: Option<i32>,
    ) -> Result<ControlFlow<(), TopicPartitionList>, RunError> {
        let (inputs, replies) = (self.names.inputs(), self.names.replies());
        let sources = self.source_topics();
        let mut work = Batch::default();
        let mut skipped = BTreeSet::new();
        let read_at = now_ms() as i64;
        // The histogram of each source, looked up once per batch.
        let [from_inputs, from_replies, from_events] = ["inputs", "replies", "events"]
            .map(|source| self.metrics.input_delay.with_label_values(&[source]));
        for m in batch {
            let (topic, p) = (m.topic(), m.partition());
            let delay = match topic {
                t if t == inputs => &from_inputs,
                t if t == replies => &from_replies,
                _ => &from_events,
            };
            if let Some(ts) = m.timestamp().to_millis() {
                delay.observe((read_at - ts).max(0) as f64 / 1000.0);
            }
            let co_partitioned = topic == inputs || topic == replies;
            if co_partitioned && owned.foreign(p) {
                skipped.insert(p);
                continue;
            }
            if co_partitioned && !owned.parts.contains_key(&p) {
                let part = self.restore(store, outbound.producer(), p).await?;
                owned.parts.insert(p, part);
            }
            let part = owned.parts.get_mut(&p);
            // A tick read back: everything before it in this partition
            // has been read (`tick`).
            if co_partitioned && let Some(at) = tick_of(m) {
                if let Some(part) = part {
                    part.ticks.seen(topic == replies, at);
                }
                continue;
            }
            let handled = match part {
                Some(part) if topic == inputs => {
                    self.on_input(&mut part.core, m, &mut work);
                    Ok(())
                }
                Some(part) if topic == replies => self.on_reply(&mut part.core, m, &mut work).await,
                _ if sources.contains(topic) => self.on_source(m, &mut work).await,
                _ => Ok(()),
            };
            if handled.is_err() {
                return Ok(ControlFlow::Break(()));
            }
        }
        let mut applied = Vec::new();
        for start in handed {
            match self.on_start(owned, &start, inputs_partitions) {
                Some(p) => applied.push((p, start)),
                None => start.answer(Taken::Elsewhere),
            }
        }
        self.metrics
            .batch_size
            .with_label_values(&["orchestrator"])
            .observe((batch.len() + applied.len()) as f64);
        skipped.extend(self.flush(store, outbound, owned, work).await?);
        // The starts' state is written: durable unless their partition was
        // found taken over, whose new owner gets them through the inputs.
        for (p, start) in applied {
            let taken = if skipped.contains(&p) {
                Taken::Elsewhere
            } else {
                Taken::Applied
            };
            start.answer(taken);
        }
        let mut done = TopicPartitionList::new();
        for m in batch {
            let (topic, p) = (m.topic(), m.partition());
            if (topic == inputs || topic == replies) && skipped.contains(&p) {
                continue;
            }
            let _ = done.add_partition_offset(topic, p, Offset::Offset(m.offset() + 1));
        }
        Ok(ControlFlow::Continue(done))
    }

    /// Stores a settled batch's offsets; they are committed within
    /// [`COMMIT_INTERVAL`].
    fn commit(
        &self,
        consumer: &StreamConsumer<RebalanceEvents>,
        owned: &mut Owned,
        done: TopicPartitionList,
    ) -> Result<(), RunError> {
        if done.count() == 0 {
            return Ok(());
        }
        // A batch may settle after its partition was revoked (the revoke
        // waits for the batches in flight): that offset is the next
        // owner's to read again, and the state it restores recognises
        // those inputs. The client refuses offsets of partitions it no
        // longer holds.
        let assigned = consumer
            .assignment()
            .map_err(|e| RunError::Kafka(e.to_string()))?;
        let mut held = TopicPartitionList::new();
        for e in done.elements() {
            if assigned.find_partition(e.topic(), e.partition()).is_some() {
                let _ = held.add_partition_offset(e.topic(), e.partition(), e.offset());
            }
        }
        if held.count() == 0 {
            return Ok(());
        }
        consumer
            .store_offsets(&held)
            .map_err(|e| RunError::Kafka(e.to_string()))?;
        owned.commits.stored();
        Ok(())
    }

    pub(crate) fn limits(&self) -> Limits {
        Limits {
            completed_retention: self.completed_retention,
            early_event_retention: self.early_event_retention,
            record_limit: self.record_limit,
            max_parked_per_saga: self.max_parked_per_saga,
            max_parked_per_partition: self.max_parked_per_partition,
            dedup_window: self.dedup_window,
        }
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
    pub(crate) async fn backoff(
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
        store: &impl SagaStore,
        consumer: &StreamConsumer<RebalanceEvents>,
        owned: &mut Owned,
    ) -> Result<(), RunError> {
        self.health.set_ready(false);
        if let Err(e) = self.settle_all(consumer, owned).await {
            warn!(error = %e, "effects not acknowledged on stop; the next owner re-sends them");
        }
        let leases = owned.parts.values_mut().map(|p| &mut p.lease).collect();
        if let Err(e) = store.mark_delivered(leases).await {
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
        store: &impl SagaStore,
        producer: &Producer,
        owned: &mut Owned,
        ev: Ownership,
    ) -> Result<(), RunError> {
        match ev {
            Ownership::Revoked(ps) => {
                // Not ready until the group assigns again (possibly
                // nothing): a rebalance, or a session lost with the broker.
                self.health.set_ready(false);
                for p in ps {
                    owned.lost.remove(&p);
                    owned.revoked.insert(p);
                    if let Some(mut part) = owned.parts.remove(&p) {
                        // The pending delivery mark is a true statement
                        // whoever owns the partition now.
                        if let Err(e) = store.mark_delivered(vec![&mut part.lease]).await {
                            debug!(error = %e, partition = p, "delivery mark on revoke");
                        }
                        part.core.release();
                        info!(
                            messaging.kafka.partition = p,
                            sagas = part.core.len(),
                            "partition revoked"
                        );
                    }
                }
            }
            Ownership::Assigned(ps) => {
                for p in ps {
                    owned.revoked.remove(&p);
                    owned.lost.remove(&p);
                    if let Entry::Vacant(slot) = owned.parts.entry(p) {
                        slot.insert(self.restore(store, producer, p).await?);
                    }
                }
                self.health.set_ready(true);
            }
        }
        self.metrics.owned_partitions.set(owned.parts.len() as i64);
        Ok(())
    }

    /// Takes a partition over: the store writes this owner's epoch marker
    /// and reads the partition back to it; the core rebuilds its sagas and
    /// timers; what their outboxes still owe is re-sent.
    async fn restore(
        &self,
        store: &impl SagaStore,
        producer: &Producer,
        p: i32,
    ) -> Result<Partition, RunError> {
        let started = Instant::now();
        let Restored {
            mut lease,
            replay,
            records,
        } = store.take_over(p).await?;
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
        let core = PartitionCore::new(p, self.engine.clone(), self.metrics.clone(), self.limits());
        let new_trace = || TraceContext::new_root().header();
        let (core, owed) = core.restore(replay, now_ms(), new_trace);
        let mut resend = Vec::new();
        for (saga_id, stored) in owed {
            for e in &stored.outbox {
                self.metrics
                    .outbox_resent
                    .with_label_values(&[effect_kind(e)])
                    .inc();
                let record = self
                    .effect_record(&saga_id, &stored.state, stored.trace(), e)
                    .await;
                resend.extend(record.map_err(|Stopping| stopped("re-sending owed effects"))?);
            }
        }
        let resent = resend.len();
        produce_all(producer, resend, self.record_limit)
            .await
            .map_err(|e| RunError::Kafka(format!("re-sending owed effects: {e}")))?;
        if resent > 0 {
            // Everything written before the marker is delivered now.
            lease.sent_before_marker();
        }
        let label = p.to_string();
        let elapsed = started.elapsed();
        self.metrics
            .restore_seconds
            .with_label_values(&[&label])
            .observe(elapsed.as_secs_f64());
        self.metrics
            .restored_sagas
            .with_label_values(&[&label])
            .inc_by(core.len() as u64);
        info!(
            messaging.kafka.partition = p,
            sagas = core.len(),
            resent,
            epoch = lease.epoch,
            records,
            elapsed_ms = elapsed.as_millis() as u64,
            "partition restored"
        );
        Ok(Partition {
            core,
            lease,
            ticks: Ticks::default(),
        })
    }

    /// Persists what the cores changed (each touched saga with its
    /// outbox, parked events, ended markers, tombstones), waiting for the
    /// broker's acks, then hands every effect and record to the producer
    /// and queues the batch as [`Sending`]: the driver goes on while the
    /// acks come. The state write carries the delivery marks of batches
    /// settled before, so a restore knows which outboxes were delivered at
    /// no extra round trip.
    ///
    /// Partitions found taken over by a newer owner are let go: their
    /// effects are not sent, and they are returned so that their inputs
    /// are not committed either.
    async fn flush(
        &self,
        store: &impl SagaStore,
        outbound: &Outbound,
        owned: &mut Owned,
        work: Batch,
    ) -> Result<Vec<i32>, RunError> {
        let mut effects: Vec<(Option<i32>, Outgoing)> = Vec::new();
        let mut seen = Vec::new();
        let mut drains = Vec::new();
        let mut keys = HashSet::new();
        for (&p, Partition { core, .. }) in owned.parts.iter_mut() {
            let mut drained = core.drain();
            let changes = core.changes(&mut drained);
            for (saga_id, stored) in &drained.sagas {
                for eff in &stored.outbox {
                    let record = self
                        .effect_record(saga_id, &stored.state, stored.trace(), eff)
                        .await;
                    let record = record.map_err(|Stopping| stopped("sending effects"))?;
                    effects.extend(record.map(|r| (Some(p), r)));
                    if self.view.is_some() {
                        seen.extend(self.view_event(&stored.state, eff).map(|ev| (p, ev)));
                    }
                }
            }
            keys.extend(changes.iter().map(|c| (p, c.key.clone())));
            drains.push((p, changes));
        }
        // A record whose outbox is still on its way is overwritten only
        // once that outbox is acknowledged.
        // Their input offsets are committed with this batch's.
        let mut commit = None;
        if owned.sending_any(&keys) {
            while let Some(mut sent) = owned.sending.pop_front() {
                let acked = (&mut sent.acks).await;
                if let Some(done) = Self::settled(owned, sent, acked)? {
                    merge_offsets(&mut commit, done);
                }
            }
        }
        let mut lost = Vec::new();
        // A partition's pending delivery mark goes with its own changes
        // (one produce request per partition); all of them once they have
        // waited `MARK_INTERVAL`.
        let all_marks = owned.marks.is_due() && owned.marks.take();
        if all_marks || drains.iter().any(|(_, changes)| !changes.is_empty()) {
            let mut batch = Vec::new();
            let mut changes_of: HashMap<i32, Vec<_>> = drains.into_iter().collect();
            for (p, part) in owned.parts.iter_mut() {
                let changes = changes_of.remove(p).unwrap_or_default();
                if all_marks || !changes.is_empty() {
                    batch.push((&mut part.lease, changes));
                }
            }
            let written = store.write(batch).await?;
            if written.foreign > 0 {
                self.metrics
                    .fencing
                    .with_label_values(&["foreign-write"])
                    .inc_by(written.foreign);
                warn!(
                    records = written.foreign,
                    "late changelog writes of a replaced owner; restores ignore them"
                );
            }
            lost = written.lost;
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
        effects.extend(work.records.into_iter().map(|r| (None, r)));
        let records: Vec<Outgoing> = effects.into_iter().map(|(_, r)| r).collect();
        if !records.is_empty() || commit.is_some() {
            let acks = outbound.enqueue_all(records, self.record_limit).await;
            let unsent = owned
                .parts
                .iter()
                .filter_map(|(&p, part)| part.lease.unsent().map(|u| (p, part.lease.epoch, u)))
                .collect();
            keys.retain(|(p, _)| !lost.contains(p));
            owned.sending.push_back(Sending {
                acks,
                since: Instant::now(),
                unsent,
                keys,
                commit,
            });
        }
        // The state is durable: the view may show it now.
        if let Some(view) = &self.view {
            for (_, ev) in seen.into_iter().filter(|(p, _)| !lost.contains(p)) {
                view.apply(ev);
            }
        }
        Ok(lost)
    }
}

/// Adds `later`'s offsets to `into`, a later offset replacing an earlier
/// one of the same partition.
fn merge_offsets(into: &mut Option<TopicPartitionList>, later: TopicPartitionList) {
    let Some(into) = into else {
        *into = Some(later);
        return;
    };
    for e in later.elements() {
        let (topic, p, offset) = (e.topic(), e.partition(), e.offset());
        if into.find_partition(topic, p).is_some() {
            let _ = into.set_partition_offset(topic, p, offset);
        } else {
            let _ = into.add_partition_offset(topic, p, offset);
        }
    }
}

fn stopped(doing: &str) -> RunError {
    RunError::Kafka(format!(
        "{doing}: stopped while the schema registry was unreachable"
    ))
}
