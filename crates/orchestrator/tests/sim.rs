//! Deterministic simulation of the orchestrator's exactly-once protocol:
//! the real partition core, the real store rules (the in-memory
//! [`MemoryStore`] backend: epoch markers, the restore fold, the fencing
//! gap check the Kafka store runs too), the three worked sagas, and a
//! world that does what brokers and processes do — redeliver uncommitted
//! inputs, crash at every step of a batch (in the middle of the state
//! write too), let a replaced owner (a zombie) write after a takeover,
//! deliver replies late and twice — and the driver's pipelining: a
//! batch's effects are handed to the producer and acknowledged later,
//! batches settle in order (delivery marks, then the offsets stored and
//! committed later on a timer, so a crash re-reads what is not committed),
//! a crash loses any unacknowledged effect or not, and a batch that changes a
//! saga whose effects are unacknowledged waits for them first. Timers that
//! await an input fire only once the owner has read everything appended
//! before them (the driver's ticks), and a replaced owner that resumes
//! commits what it stored, as the embedded broker lets it.
//!
//! Each schedule is a seed. Invariants, checked after every schedule:
//! every saga ends, once (one distinct terminal event); no effect is lost
//! (every command is answered, every saga that was started finishes, and
//! every command and lifecycle event a write that stood put in the store
//! is sent at least once);
//! each effect is applied once per idempotency key; compensations run only
//! for steps that succeeded, in reverse order; nothing that succeeded is
//! left behind (a saga that ended compensated undid every step that
//! succeeded and has a compensation, unless the success came past its late
//! window: [`late_success`]).
//!
//! `cargo test` runs a few hundred schedules; `SAGAFLOW_SIM_SCHEDULES=N`
//! runs N; `SAGAFLOW_SIM_SEED=S` replays one. A failing schedule prints
//! its seed.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use common::{engine, limits};
use sagaflow_demo::samples;
use sagaflow_engine::{
    AwaitedEvent, CommandKind, Effect, Engine, LifecycleKind, Reply, ReplyOutcome, TriggerEvent,
};
use sagaflow_orchestrator::core::{Drained, Limits, PartitionCore};
use sagaflow_orchestrator::metrics::Metrics;
use sagaflow_orchestrator::store::{Lease, MemoryStore, Restored, SagaStore, Written, ready};
use sagaflow_orchestrator::wire::Envelope;
use serde_json::{Value, json};

/// A small deterministic generator (xorshift64*): no dependency, same
/// sequence on every machine.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const TRACE: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// An owner of the (one) partition: its core and its place in the log.
struct Owner {
    core: PartitionCore,
    lease: Lease,
    /// Positions in the inputs and replies topics (next to read).
    inputs_at: usize,
    replies_at: usize,
    /// Batches whose effects are handed to the producer, not acknowledged
    /// yet, oldest first (the driver's `Sending`).
    sending: VecDeque<Sending>,
    /// Input positions stored by settled batches and not committed yet
    /// (the driver commits them on a timer): lost if the owner dies.
    stored: Option<(usize, usize)>,
}

/// One batch's effects on their way.
struct Sending {
    effects: Vec<(String, Effect)>,
    /// Whether the broker has them already (a consumer may read them
    /// before the producer hears the ack).
    visible: bool,
    /// The lease's epoch and unsent outboxes' end after the batch's write.
    unsent: Option<(i64, i64)>,
    /// The stored records the batch wrote.
    keys: BTreeSet<String>,
    /// Input positions to commit once it settles.
    upto: (usize, usize),
}

/// What a command did at the simulated backend.
#[derive(Default)]
struct Backend {
    /// Applied effects per idempotency key.
    applied: HashMap<String, u32>,
    /// Outcome decided per idempotency key (a retry gets the same answer,
    /// as a backend that dedupes would give).
    decided: HashMap<String, (ReplyOutcome, Value)>,
    /// When the outcome of each key was decided (its first reply appended).
    decided_at: HashMap<String, u64>,
}

struct World {
    rng: Rng,
    engine: Arc<Engine>,
    limits: Limits,
    now: u64,
    /// The changelog: the in-memory store, the driver's fencing rules.
    store: MemoryStore,
    inputs: Vec<Envelope>,
    replies: Vec<(String, String, Reply)>,
    /// When each input and each reply was appended (`now` then): what a
    /// tick read back tells the owner (the driver's held timers).
    appended: (Vec<u64>, Vec<u64>),
    /// Committed positions (inputs, replies).
    committed: (usize, usize),
    owner: Option<Owner>,
    /// A replaced owner that has not noticed yet.
    zombie: Option<Owner>,
    /// Commands sent, in order (re-sends included).
    commands: Vec<sagaflow_engine::Command>,
    commands_answered: usize,
    backend: Backend,
    /// Lifecycle events sent, by saga: (event id, kind, step).
    lifecycle: BTreeMap<String, Vec<(String, LifecycleKind, Option<String>)>>,
    started: BTreeSet<String>,
    /// Awaited events to publish once their saga exists: (saga id, event).
    pending_events: Vec<AwaitedEvent>,
    /// Ids of the commands and lifecycle events in outboxes that writes
    /// which stood (not fenced) put in the store: each is owed.
    owed: BTreeSet<String>,
    /// Ids of the commands and lifecycle events sent.
    sent: BTreeSet<String>,
    /// When each command was issued: the time of the batch whose outbox
    /// first held it (its step's timers count from then, however late a
    /// restore re-sends it).
    issued_at: HashMap<String, u64>,
    /// Send a batch's effects before its state write (breaks the protocol).
    early_effects: bool,
}

impl World {
    fn new(seed: u64) -> Self {
        Self {
            rng: Rng::new(seed),
            engine: engine(),
            limits: limits(),
            now: 1_700_000_000_000,
            store: MemoryStore::new(),
            inputs: Vec::new(),
            appended: (Vec::new(), Vec::new()),
            replies: Vec::new(),
            committed: (0, 0),
            owner: None,
            zombie: None,
            commands: Vec::new(),
            commands_answered: 0,
            backend: Backend::default(),
            lifecycle: BTreeMap::new(),
            started: BTreeSet::new(),
            pending_events: Vec::new(),
            owed: BTreeSet::new(),
            sent: BTreeSet::new(),
            issued_at: HashMap::new(),
            early_effects: false,
        }
    }

    /// A domain event routed as the driver routes it (trigger or awaited).
    fn publish(&mut self, topic: &str, event_type: &str, payload: Value, n: usize) {
        let message_id = format!("{topic}/{n}");
        for def in self.engine.registry().triggered_by(topic, event_type) {
            let event = TriggerEvent {
                message_id: message_id.clone(),
                topic: topic.to_owned(),
                event_type: event_type.to_owned(),
                payload: payload.clone(),
            };
            let (saga_id, _) = self.engine.identify(&def.saga_type, &event).unwrap();
            self.started.insert(saga_id.clone());
            self.appended.0.push(self.now);
            self.inputs.push(Envelope::Trigger {
                saga_type: def.saga_type.clone(),
                saga_id,
                event,
            });
        }
        for c in self.engine.correlate(topic, event_type, &payload) {
            let saga_id = self
                .engine
                .saga_id_for(&c.saga_type, c.saga_version, &c.key)
                .unwrap();
            self.appended.0.push(self.now);
            self.inputs.push(Envelope::Event {
                saga_id,
                event: AwaitedEvent {
                    message_id: message_id.clone(),
                    topic: topic.to_owned(),
                    event_type: event_type.to_owned(),
                    payload: payload.clone(),
                },
            });
        }
    }

    /// A new owner takes over: writes its marker, reads the log back to
    /// it, re-sends what is owed, and reads inputs from the committed
    /// positions.
    fn take_over(&mut self) {
        let Restored {
            mut lease, replay, ..
        } = ready(self.store.take_over(0)).expect("a takeover");
        let core = PartitionCore::new(
            0,
            self.engine.clone(),
            Metrics::default(),
            self.limits.clone(),
        );
        let (core, mut owed) = core.restore(replay, self.now, || TRACE.to_owned());
        // The core keeps sagas in hash maps: sorted, a seed replays alike.
        owed.sort_by(|a, b| a.0.cmp(&b.0));
        if !owed.is_empty() {
            lease.sent_before_marker();
        }
        for (saga_id, stored) in owed {
            for e in stored.outbox {
                self.send(&saga_id, e);
            }
        }
        self.owner = Some(Owner {
            core,
            lease,
            inputs_at: self.committed.0,
            replies_at: self.committed.1,
            sending: VecDeque::new(),
            stored: None,
        });
    }

    /// An owner's process dies: of its unacknowledged effects, each
    /// reached the broker or did not.
    fn crash(&mut self, o: Owner) {
        for s in o.sending {
            if s.visible {
                continue;
            }
            for (saga_id, e) in s.effects {
                if self.rng.chance(50) {
                    self.send(&saga_id, e);
                }
            }
        }
    }

    /// The effects of a batch, handed to the producer after its write;
    /// some reach the broker at once.
    fn enqueue(&mut self, o: &mut Owner, mut s: Sending) {
        if self.rng.chance(50) {
            for (saga_id, e) in s.effects.drain(..) {
                self.send(&saga_id, e);
            }
            s.visible = true;
        }
        o.sending.push_back(s);
    }

    /// The oldest batch's effects are acknowledged: the lease notes them
    /// delivered and its input positions are stored, maybe committed (a
    /// zombie's too).
    fn settle_oldest(&mut self, o: &mut Owner) {
        let Some(s) = o.sending.pop_front() else {
            return;
        };
        for (saga_id, e) in s.effects {
            self.send(&saga_id, e);
        }
        if let Some((epoch, through)) = s.unsent
            && o.lease.epoch == epoch
        {
            o.lease.sent_through(through);
        }
        // A replaced owner that resumes commits too: the embedded broker
        // does not refuse a commit of an old generation (Kafka does), so
        // its stored positions may land, behind or ahead of the new
        // owner's.
        o.stored = Some(s.upto);
        if self.rng.chance(50) {
            Self::commit(&mut self.committed, o);
        }
    }

    /// The owner's commit timer: what it stored is committed.
    fn commit(committed: &mut (usize, usize), o: &mut Owner) {
        if let Some(upto) = o.stored.take() {
            *committed = upto;
        }
    }

    /// Notes when the commands in a batch's outboxes were issued.
    fn issued(&mut self, drained: &Drained) {
        for (_, stored) in &drained.sagas {
            for e in &stored.outbox {
                if let Effect::Command(c) = e {
                    self.issued_at
                        .entry(c.command_id.clone())
                        .or_insert(self.now);
                }
            }
        }
    }

    /// How far `o` has read its partition, as a tick read back would say:
    /// everything appended before the returned moment has been applied.
    fn read_through(&self, o: &Owner) -> u64 {
        let unread = [
            self.appended.0.get(o.inputs_at),
            self.appended.1.get(o.replies_at),
        ];
        unread
            .into_iter()
            .flatten()
            .map(|at| at.saturating_sub(1))
            .fold(self.now, u64::min)
    }

    fn send(&mut self, saga_id: &str, e: Effect) {
        self.sent.extend(effect_id(&e));
        match e {
            Effect::Command(c) => self.commands.push(c),
            Effect::Lifecycle(l) => self
                .lifecycle
                .entry(saga_id.to_owned())
                .or_default()
                .push((l.event_id, l.kind, l.step)),
            _ => {}
        }
    }

    /// One batch of `owner` (or of the zombie): read, apply, write, then —
    /// unless it crashes or finds itself replaced — send and commit.
    fn batch(&mut self, zombie: bool) {
        if !zombie && self.owner.is_none() {
            // The crashed process is back.
            self.take_over();
        }
        let Some(mut o) = (if zombie {
            self.zombie.take()
        } else {
            self.owner.take()
        }) else {
            return;
        };
        let n_in = self.rng.below(4) as usize;
        let n_re = self.rng.below(4) as usize;
        let in_end = (o.inputs_at + n_in).min(self.inputs.len());
        let re_end = (o.replies_at + n_re).min(self.replies.len());
        for i in o.inputs_at..in_end {
            let env = self.inputs[i].clone();
            let _ = o
                .core
                .handle_input(env, None, 100, self.now, |_| (TRACE.to_owned(), None));
        }
        for i in o.replies_at..re_end {
            let (saga_id, step, reply) = self.replies[i].clone();
            let _ = o.core.handle_reply(&saga_id, &step, reply, 100, self.now);
        }
        o.inputs_at = in_end;
        o.replies_at = re_end;
        if self.rng.chance(30) {
            let read = self.read_through(&o);
            o.core.handle_timeout_read(self.now, read);
        }
        let mut drained = o.core.drain();
        drained.sagas.sort_by(|a, b| a.0.cmp(&b.0));
        let mut changes = o.core.changes(&mut drained);
        self.issued(&drained);
        let keys: BTreeSet<String> = changes.iter().map(|c| c.key.clone()).collect();
        // A record whose outbox is unacknowledged is overwritten only once
        // it settles (the driver's rule).
        if o.sending.iter().any(|s| !s.keys.is_disjoint(&keys)) {
            while !o.sending.is_empty() {
                self.settle_oldest(&mut o);
            }
        }
        // The rule broken on purpose, for
        // `effects_sent_before_their_state_write_break_the_protocol`:
        // effects handed to the producer before the state write that owes
        // them is acknowledged.
        if self.early_effects {
            for (saga_id, stored) in &drained.sagas {
                for e in &stored.outbox {
                    self.send(saga_id, e.clone());
                }
            }
        }
        // A crash in the middle of the state write: part of it is durable.
        if !zombie && !changes.is_empty() && self.rng.chance(2) {
            changes.truncate(self.rng.below(changes.len() as u64) as usize);
            let _ = ready(self.store.write(vec![(&mut o.lease, changes)]));
            self.crash(o);
            return;
        }
        let written = if changes.is_empty() {
            Written::default()
        } else {
            ready(self.store.write(vec![(&mut o.lease, changes)])).expect("a write")
        };
        // Crash after the state write, before the effects.
        if !zombie && self.rng.chance(3) {
            self.crash(o);
            return;
        }
        if written.lost.contains(&0) {
            // Taken over: let the partition go, no effects, no commit (the
            // earlier batches' effects still reach the broker, or not).
            self.crash(o);
            return;
        }
        let effects: Vec<(String, Effect)> = drained
            .sagas
            .into_iter()
            .flat_map(|(saga_id, stored)| {
                stored.outbox.into_iter().map(move |e| (saga_id.clone(), e))
            })
            .collect();
        self.owed
            .extend(effects.iter().filter_map(|(_, e)| effect_id(e)));
        let effects = if self.early_effects {
            Vec::new()
        } else {
            effects
        };
        let unsent = o.lease.unsent().map(|u| (o.lease.epoch, u));
        let upto = (o.inputs_at, o.replies_at);
        self.enqueue(
            &mut o,
            Sending {
                effects,
                visible: false,
                unsent,
                keys,
                upto,
            },
        );
        // Crash before the acks.
        if !zombie && self.rng.chance(3) {
            self.crash(o);
            return;
        }
        // Some acks arrive (oldest first).
        for _ in 0..self.rng.below(3) {
            self.settle_oldest(&mut o);
        }
        if !zombie {
            self.owner = Some(o);
        } else {
            self.zombie = Some(o);
        }
    }

    /// The adapters: answer some commands sent so far (maybe twice, maybe
    /// late), applying each effect once per idempotency key.
    fn adapters(&mut self) {
        let upto =
            (self.commands_answered + 1 + self.rng.below(4) as usize).min(self.commands.len());
        for i in self.commands_answered..upto {
            let c = self.commands[i].clone();
            let decided = match self.backend.decided.get(&c.idempotency_key) {
                Some(d) => d.clone(),
                None => {
                    let fail = c.kind == CommandKind::Action && self.rng.chance(15);
                    let d = if fail {
                        (ReplyOutcome::BusinessFailure, json!({}))
                    } else {
                        *self
                            .backend
                            .applied
                            .entry(c.idempotency_key.clone())
                            .or_default() += 1;
                        (ReplyOutcome::Success, reply_data(&c))
                    };
                    self.backend
                        .decided
                        .insert(c.idempotency_key.clone(), d.clone());
                    self.backend
                        .decided_at
                        .insert(c.idempotency_key.clone(), self.now);
                    d
                }
            };
            let copies = if self.rng.chance(10) { 2 } else { 1 };
            for _ in 0..copies {
                self.appended.1.push(self.now);
                self.replies.push((
                    c.saga_id.clone(),
                    c.step.clone(),
                    Reply {
                        message_id: format!("{}/reply", c.command_id),
                        command_id: c.command_id.clone(),
                        outcome: decided.0,
                        data: decided.1.clone(),
                        error: (decided.0 != ReplyOutcome::Success).then(|| "declined".to_owned()),
                    },
                ));
            }
        }
        self.commands_answered = upto;
    }

    fn step(&mut self) {
        match self.rng.below(100) {
            0..=44 => self.batch(false),
            45..=74 => self.adapters(),
            75..=84 => {
                self.now += self.rng.below(40_000);
                if let Some(o) = self.owner.as_mut() {
                    Self::commit(&mut self.committed, o);
                }
            }
            85..=87 => {
                // A crash: the owner is gone; a new one takes over.
                if let Some(o) = self.owner.take() {
                    self.crash(o);
                }
                self.take_over();
            }
            88..=90 => {
                // A pause: the owner is replaced while it is still alive.
                if let Some(z) = self.zombie.take() {
                    self.crash(z);
                }
                self.zombie = self.owner.take();
                self.take_over();
            }
            91..=95 => self.batch(true),
            _ => {
                if let Some(e) = self.pending_events.pop() {
                    self.publish(
                        "identity.events",
                        "EmailVerified",
                        e.payload,
                        10_000 + self.inputs.len(),
                    );
                }
            }
        }
    }

    /// Lets everything settle: no more crashes, time passes, every input
    /// and reply is read, until every saga has ended.
    fn settle(&mut self) -> bool {
        if let Some(z) = self.zombie.take() {
            self.crash(z);
        }
        if self.owner.is_none() {
            self.take_over();
        }
        for e in std::mem::take(&mut self.pending_events) {
            self.publish(
                "identity.events",
                "EmailVerified",
                e.payload,
                20_000 + self.inputs.len(),
            );
        }
        for _ in 0..5_000 {
            if self.all_ended() {
                return true;
            }
            let o = self.owner.as_ref().expect("an owner");
            let idle = o.inputs_at == self.inputs.len()
                && o.replies_at == self.replies.len()
                && self.commands_answered == self.commands.len();
            if idle {
                self.now += 30_000;
                if let Some(o) = self.owner.as_mut() {
                    o.core.handle_timeout(self.now);
                }
            }
            // Batches without crashes.
            let mut o = self.owner.take().expect("an owner");
            let end_in = self.inputs.len();
            let end_re = self.replies.len();
            for i in o.inputs_at..end_in {
                let env = self.inputs[i].clone();
                let _ = o
                    .core
                    .handle_input(env, None, 100, self.now, |_| (TRACE.to_owned(), None));
            }
            for i in o.replies_at..end_re {
                let (saga_id, step, reply) = self.replies[i].clone();
                let _ = o.core.handle_reply(&saga_id, &step, reply, 100, self.now);
            }
            o.inputs_at = end_in;
            o.replies_at = end_re;
            while !o.sending.is_empty() {
                self.settle_oldest(&mut o);
            }
            let mut drained = o.core.drain();
            drained.sagas.sort_by(|a, b| a.0.cmp(&b.0));
            let changes = o.core.changes(&mut drained);
            self.issued(&drained);
            if !changes.is_empty() {
                let written = ready(self.store.write(vec![(&mut o.lease, changes)]));
                assert!(written.expect("a write").lost.is_empty(), "the only owner");
            }
            for (saga_id, stored) in drained.sagas {
                for e in stored.outbox {
                    self.send(&saga_id, e);
                }
            }
            if let Some(u) = o.lease.unsent() {
                o.lease.sent_through(u);
            }
            self.committed = (end_in, end_re);
            self.owner = Some(o);
            self.adapters();
        }
        self.all_ended()
    }

    fn all_ended(&self) -> bool {
        self.started.iter().all(|id| {
            self.lifecycle
                .get(id)
                .is_some_and(|evs| evs.iter().any(|(_, k, _)| terminal(*k)))
        })
    }
}

/// The id a command or lifecycle event is deduped by.
fn effect_id(e: &Effect) -> Option<String> {
    match e {
        Effect::Command(c) => Some(format!("command {}", c.command_id)),
        Effect::Lifecycle(l) => Some(format!("event {}", l.event_id)),
        _ => None,
    }
}

fn terminal(k: LifecycleKind) -> bool {
    matches!(
        k,
        LifecycleKind::Completed | LifecycleKind::Compensated | LifecycleKind::Failed
    )
}

/// What a successful backend answers: the fields the worked sagas bind.
fn reply_data(c: &sagaflow_engine::Command) -> Value {
    let id = format!("{}-{}", c.operation, c.saga_id.len());
    json!({
        "reservation_id": id, "payment_id": id, "tracking_number": id,
        "verdict": "approve", "booking_ref": id, "flight_ref": id, "hotel_ref": id,
        "car_ref": id, "crm_id": id, "account_id": id, "workspace_id": id,
        "customer_ref": id, "billing_account": id,
    })
}

/// Whether the action of `key` may have succeeded only after its late
/// window had closed: its first reply was appended more than two step
/// timeouts after the last attempt was issued. The window closes one step
/// timeout after the last attempt's timeout fired, which is never earlier
/// than that, so a success appended before it must be undone. Past it,
/// nothing compensates (a known gap: docs/orchestrator.md, "Not yet"): a
/// real adapter that reads a command that late (it was down, or a restore
/// re-sent the command long after it was issued) still runs it.
fn late_success(w: &World, key: &str) -> bool {
    let Some(decided) = w.backend.decided_at.get(key) else {
        return false;
    };
    w.commands
        .iter()
        .filter(|c| c.idempotency_key == key)
        .map(|c| w.issued_at[&c.command_id] + 2 * c.timeout_ms)
        .max()
        .is_some_and(|closed| *decided > closed)
}

/// The worked sagas' calls that have no compensation (topology/sagas/).
const NOT_UNDONE: [&str; 3] = ["fraud_check", "schedule_shipping", "confirm"];

/// Runs one schedule and checks the invariants; `Err` says which broke.
fn run(seed: u64) -> Result<(), String> {
    run_with(seed, false)
}

/// [`run`], with a batch's effects sent before its state write when
/// `early_effects`.
fn run_with(seed: u64, early_effects: bool) -> Result<(), String> {
    let mut w = World::new(seed);
    w.early_effects = early_effects;
    w.take_over();
    let sagas = 3 + w.rng.below(6) as usize;
    for i in 0..sagas {
        let at = 1_700_000_000_000 + i as i64;
        match w.rng.below(3) {
            0 => {
                let customer = if w.rng.chance(20) { "broke" } else { "c-1" };
                let total = if w.rng.chance(30) { 250_000 } else { 4_200 };
                w.publish(
                    "orders.events",
                    "OrderPlaced",
                    samples::order_placed(&format!("o-{i}"), customer, total, at),
                    i,
                );
            }
            1 => w.publish(
                "travel.events",
                "BookingRequested",
                samples::booking_requested(&format!("b-{i}"), "c-1", at),
                i,
            ),
            _ => {
                let c = format!("cust-{i}");
                let email = format!("{c}@example.com");
                w.publish(
                    "customers.events",
                    "CustomerSignedUp",
                    samples::customer_signed_up(&c, &email, at),
                    i,
                );
                w.pending_events.push(AwaitedEvent {
                    message_id: format!("verified-{i}"),
                    topic: "identity.events".to_owned(),
                    event_type: "EmailVerified".to_owned(),
                    payload: samples::email_verified(&c, &email, at + 1000),
                });
            }
        }
        // Replays of the same trigger, as a producer's retry would send.
        if w.rng.chance(20) {
            let again = w.inputs.last().cloned().expect("just published");
            w.appended.0.push(w.now);
            w.inputs.push(again);
        }
    }
    for _ in 0..(50 + w.rng.below(150)) {
        w.step();
    }
    if !w.settle() {
        let open: Vec<_> = w
            .started
            .iter()
            .filter(|id| {
                !w.lifecycle
                    .get(*id)
                    .is_some_and(|evs| evs.iter().any(|(_, k, _)| terminal(*k)))
            })
            .collect();
        return Err(format!("sagas never ended: {open:?}"));
    }
    // Nothing a standing write owed is lost.
    let lost: Vec<_> = w.owed.difference(&w.sent).collect();
    if !lost.is_empty() {
        return Err(format!("owed effects never sent: {lost:?}"));
    }
    // Every saga ends once: one distinct terminal event (copies share ids).
    for (saga, evs) in &w.lifecycle {
        let ends: BTreeSet<_> = evs
            .iter()
            .filter(|(_, k, _)| terminal(*k))
            .map(|(id, k, _)| (id.clone(), format!("{k:?}")))
            .collect();
        if ends.len() > 1 {
            return Err(format!("saga {saga} ended {} times: {ends:?}", ends.len()));
        }
    }
    // Each effect applied once per idempotency key.
    if let Some((key, n)) = w.backend.applied.iter().find(|(_, n)| **n > 1) {
        return Err(format!("effect {key} applied {n} times"));
    }
    // Compensations only for steps that succeeded, in reverse order.
    let mut succeeded: HashMap<String, Vec<String>> = HashMap::new();
    let mut compensated: HashMap<String, Vec<String>> = HashMap::new();
    for c in &w.commands {
        let ok = w
            .backend
            .decided
            .get(&c.idempotency_key)
            .is_some_and(|d| d.0 == ReplyOutcome::Success);
        match c.kind {
            CommandKind::Action if ok => {
                let v = succeeded.entry(c.saga_id.clone()).or_default();
                if !v.contains(&c.step) {
                    v.push(c.step.clone());
                }
            }
            CommandKind::Compensation => {
                let v = compensated.entry(c.saga_id.clone()).or_default();
                if !v.contains(&c.step) {
                    v.push(c.step.clone());
                }
            }
            CommandKind::Action => {}
        }
    }
    // Nothing that succeeded is left behind: a saga that ended compensated
    // has undone every step that succeeded and has a compensation.
    for (saga, evs) in &w.lifecycle {
        if !evs.iter().any(|(_, k, _)| *k == LifecycleKind::Compensated) {
            continue;
        }
        let comps = compensated.get(saga).cloned().unwrap_or_default();
        for s in succeeded.get(saga).into_iter().flatten() {
            let step = s.rsplit('/').next().unwrap_or(s);
            let late = late_success(&w, &format!("{saga}/{s}"));
            if !NOT_UNDONE.contains(&step) && !late && !comps.contains(s) {
                return Err(format!(
                    "saga {saga} ended compensated, but {s} succeeded and was never undone (compensated: {comps:?})"
                ));
            }
        }
    }
    for (saga, comps) in &compensated {
        let done = succeeded.get(saga).cloned().unwrap_or_default();
        for s in comps {
            if !done.contains(s) {
                return Err(format!(
                    "saga {saga} compensated {s}, which never succeeded ({done:?})"
                ));
            }
        }
        // Branches of a `parallel` step (`step/branch`) compensate in any
        // order among themselves; steps in sequence, in reverse.
        fn groups(steps: Vec<&String>) -> Vec<String> {
            let mut g: Vec<String> = steps
                .into_iter()
                .map(|s| s.split('/').next().unwrap_or(s).to_owned())
                .collect();
            g.dedup();
            g
        }
        let order = groups(done.iter().filter(|s| comps.contains(s)).rev().collect());
        let got = groups(comps.iter().collect());
        if order != got {
            return Err(format!(
                "saga {saga} compensated in the order {got:?}, expected {order:?}"
            ));
        }
    }
    Ok(())
}

#[test]
fn the_protocol_holds_over_seeded_schedules() {
    if let Ok(seed) = std::env::var("SAGAFLOW_SIM_SEED") {
        let seed: u64 = seed.parse().expect("SAGAFLOW_SIM_SEED is a number");
        if let Err(e) = run(seed) {
            panic!("schedule {seed}: {e}");
        }
        return;
    }
    let n: u64 = std::env::var("SAGAFLOW_SIM_SCHEDULES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let started = std::time::Instant::now();
    for seed in 0..n {
        if let Err(e) = run(seed) {
            panic!(
                "schedule {seed} broke an invariant: {e}\nreplay: SAGAFLOW_SIM_SEED={seed} cargo test -p sagaflow-orchestrator --test sim"
            );
        }
    }
    eprintln!(
        "{n} schedules in {:.2} s ({:.0}/s)",
        started.elapsed().as_secs_f64(),
        n as f64 / started.elapsed().as_secs_f64()
    );
}

/// Sending a batch's effects before its state write is acknowledged would
/// save a changelog round trip per step (#16), and it breaks the protocol.
/// After a crash the inputs are read again, the inputs, the replies and
/// the ticks in other batches, and the restored saga can take another path
/// than the one whose effects already went out. On 2026-12-04 about one
/// schedule in 110 broke this way (36 of 4,000), always as a saga ending
/// twice: one path applied a step's reply before its timeout, the replay
/// the timeout first, and the two sent different lifecycle events under
/// the same ids (`<saga>/3` a `StepFailed` on one and a `StepTimedOut` on
/// the other) and two terminal events. Kept as a test that the simulation
/// sees it; the rule it breaks is the driver's (`runtime.rs`, `flush`:
/// write, then send).
#[test]
fn effects_sent_before_their_state_write_break_the_protocol() {
    let n: u64 = std::env::var("SAGAFLOW_SIM_SCHEDULES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let broken = (0..n).find_map(|seed| run_with(seed, true).err().map(|e| (seed, e)));
    let Some((seed, e)) = broken else {
        panic!("{n} schedules with effects sent before their state write broke nothing");
    };
    eprintln!("effects before the state write: schedule {seed} broke an invariant: {e}");
}
