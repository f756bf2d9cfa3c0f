//! The partition core: everything one owned partition knows and decides,
//! with no I/O. Inputs in (`handle_input`, `handle_reply`,
//! `handle_timeout(now)`), writes and effects out as data (`drain`), the
//! next due time from `poll_timeout`. No Kafka, no clock, no randomness:
//! the driver feeds it records and the time, and carries out what it
//! drains; the simulation feeds it schedules.
//!
//! The core holds its partition's sagas, their durable timers (one source
//! of truth: the timers each saga's state says are armed, plus the
//! partition's own housekeeping timers), parked early events (bounded) and
//! the ids of ended sagas (for `dedup-window`).

use std::collections::{BTreeSet, HashMap};
use std::ops::Bound::{Excluded, Unbounded};
use std::sync::Arc;
use std::time::Duration;

use sagaflow_engine::{
    AwaitedEvent, Effect, Engine, Input, Outcome, Reply, SagaState, Timestamp, timer_awaits_input,
};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::changelog::{self, Ended, Parked, Replay};
use crate::metrics::Metrics;
use crate::refusal::{ParkedEventRefused, Refused};
use crate::store::Change;
use crate::wire::Envelope;

/// Timer id that removes a finished saga after `completed-retention`.
const EXPIRE: &str = "@expire";
/// Timer id that drops a saga id's parked early events if the saga has not
/// started by then.
const EARLY_EXPIRE: &str = "@early-expire";
/// Ended markers are swept for expiry at most this often (ms).
const SWEEP_EVERY_MS: u64 = 60_000;
/// What a record carries beyond its value, at most: key, headers (ids,
/// trace context, epoch) and framing.
pub const RECORD_OVERHEAD: usize = 1024;

/// The limits and retentions a core works with.
#[derive(Clone, Debug)]
pub struct Limits {
    pub completed_retention: Duration,
    pub early_event_retention: Duration,
    /// The largest record the driver may produce, in bytes.
    pub record_limit: usize,
    pub max_parked_per_saga: usize,
    pub max_parked_per_partition: usize,
    pub dedup_window: Duration,
}

pub use crate::refusal::Refusal;

/// What the store holds per saga.
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
    /// The trigger's W3C `tracestate` (the vendors' list), carried
    /// unchanged on every record the saga sends; none when the trigger had
    /// none or the saga started a new trace. Records written before sagas
    /// carried it read as none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

/// A saga's trace context as its records carry it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SagaTrace<'a> {
    /// The saga's own span.
    pub span: Option<&'a str>,
    /// The trigger's span (the saga span's parent).
    pub trigger_span: Option<&'a str>,
    /// The trigger's `tracestate`.
    pub tracestate: Option<&'a str>,
}

impl StoredSaga {
    pub fn trace(&self) -> SagaTrace<'_> {
        SagaTrace {
            span: self.traceparent.as_deref(),
            trigger_span: self.trigger_traceparent.as_deref(),
            tracestate: self.tracestate.as_deref(),
        }
    }
}

/// One saga at rest, compactly: its stored form (state and trace context,
/// no outbox) as JSON bytes, and what the core needs between inputs
/// without thawing it. A saga is thawed into an [`Entry`] when an input
/// reaches it and frozen again when its batch is drained: an in-flight
/// saga costs its JSON, not a tree of values.
#[derive(Debug)]
struct Resting {
    frozen: Box<[u8]>,
    saga_type: Arc<str>,
    terminal: bool,
    /// The timers of this saga currently in the core's timer set.
    armed: Box<[(u64, Box<str>)]>,
    /// When each in-flight command was issued (see [`Entry`]).
    issued: Box<[(Box<str>, u64)]>,
    stored_bytes: u32,
}

/// The stored form of a saga at rest (a [`StoredSaga`] without outbox).
#[derive(Serialize)]
struct Frozen<'a> {
    state: &'a SagaState,
    #[serde(skip_serializing_if = "Option::is_none")]
    traceparent: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trigger_traceparent: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tracestate: Option<&'a str>,
}

/// One saga thawed: while inputs are applied to it, until the next drain.
#[derive(Debug)]
pub struct Entry {
    pub state: SagaState,
    pub traceparent: Option<String>,
    pub trigger_traceparent: Option<String>,
    pub tracestate: Option<String>,
    /// The timers of this saga currently in the core's timer set.
    armed: Vec<(u64, String)>,
    /// When each in-flight command was issued (for step latency; not
    /// persisted, so replies to commands issued before a restore are not timed).
    issued: HashMap<String, u64>,
    /// Size of the saga's last changelog record (estimated between
    /// writes): inputs that could push it over the record limit are
    /// measured before they are accepted.
    stored_bytes: usize,
}

/// What a batch of inputs changed, to be written (and then sent) by the
/// driver, in first-touched order.
#[derive(Debug, Default)]
pub struct Drained {
    /// Sagas to write, each with the effects it now owes (its outbox).
    pub sagas: Vec<(String, StoredSaga)>,
    /// Newly parked events: (record key, record).
    pub parked: Vec<(String, Parked)>,
    /// Ended markers: (saga id hash, remembered until).
    pub ended: Vec<(u64, u64)>,
    /// Keys to delete (tombstones).
    pub tombstones: Vec<String>,
}

impl Drained {
    pub fn is_empty(&self) -> bool {
        self.sagas.is_empty()
            && self.parked.is_empty()
            && self.ended.is_empty()
            && self.tombstones.is_empty()
    }
}

/// The sagas of one partition and what they owe.
pub struct PartitionCore {
    partition: i32,
    engine: Arc<Engine>,
    metrics: Metrics,
    limits: Limits,
    /// Sagas at rest.
    sagas: HashMap<String, Resting>,
    /// Sagas thawed since the last drain (never also at rest).
    hot: HashMap<String, Entry>,
    /// One name per saga type, shared by its sagas at rest.
    types: HashMap<String, Arc<str>>,
    /// (due, saga id, timer id).
    timers: BTreeSet<(u64, String, String)>,
    /// Awaited events that arrived before their saga's trigger, by saga
    /// id, each with its changelog key.
    early: HashMap<String, Vec<(String, AwaitedEvent)>>,
    /// Ended saga ids (hashes) and until when a trigger for them is a
    /// replay.
    ended: HashMap<u64, u64>,
    swept_at: u64,
    /// Sagas touched since the last drain, in order, and their new effects.
    order: Vec<String>,
    outbox: HashMap<String, Vec<Effect>>,
    parked: Vec<(String, Parked)>,
    ended_new: Vec<(u64, u64)>,
    tombstones: Vec<String>,
}

/// What a restored partition still owes: the outboxes written but not
/// known to be delivered, per saga.
pub type Owed = Vec<(String, StoredSaga)>;

impl PartitionCore {
    /// A core with nothing in it (a partition never written).
    pub fn new(partition: i32, engine: Arc<Engine>, metrics: Metrics, limits: Limits) -> Self {
        Self {
            partition,
            engine,
            metrics,
            limits,
            sagas: HashMap::new(),
            hot: HashMap::new(),
            types: HashMap::new(),
            timers: BTreeSet::new(),
            early: HashMap::new(),
            ended: HashMap::new(),
            swept_at: 0,
            order: Vec::new(),
            outbox: HashMap::new(),
            parked: Vec::new(),
            ended_new: Vec::new(),
            tombstones: Vec::new(),
        }
    }

    /// Rebuilds the core from a replayed changelog at `now`: sagas, their
    /// timers, parked events (with a full retention from now: parking
    /// times are not stored) and ended ids. Returns what is owed: the
    /// outboxes written after the last delivery mark. `new_trace` makes a
    /// trace context for a saga stored without one (the driver's
    /// randomness, kept out of the core).
    pub fn restore(
        mut self,
        replay: Replay,
        now: u64,
        mut new_trace: impl FnMut() -> String,
    ) -> (Self, Owed) {
        self.swept_at = now;
        self.ended = replay.ended;
        self.early = replay.early;
        let expire_at = now + self.limits.early_event_retention.as_millis() as u64;
        for saga_id in self.early.keys() {
            self.timers
                .insert((expire_at, saga_id.clone(), EARLY_EXPIRE.to_owned()));
        }
        let mut owed = Vec::new();
        for (saga_id, (offset, bytes)) in replay.sagas {
            let mut stored = match serde_json::from_slice::<StoredSaga>(&bytes) {
                Ok(stored) => stored,
                Err(e) => {
                    warn!(saga.id = %saga_id, offset, error = %e, "unreadable saga state in the changelog; skipped");
                    continue;
                }
            };
            drop(bytes);
            // A saga stored without a trace context (written before sagas
            // had one) gets one now, so all its records share a trace.
            if stored.traceparent.is_none() {
                stored.traceparent = Some(new_trace());
            }
            let outbox = std::mem::take(&mut stored.outbox);
            let owes = !outbox.is_empty() && offset > replay.delivered_through;
            if !stored.state.status.is_terminal() {
                self.metrics
                    .sagas_in_flight
                    .with_label_values(&[&stored.state.saga_type])
                    .inc();
            }
            let mut entry = Entry {
                state: stored.state,
                traceparent: stored.traceparent,
                trigger_traceparent: stored.trigger_traceparent,
                tracestate: stored.tracestate,
                armed: Vec::new(),
                issued: HashMap::new(),
                stored_bytes: 0,
            };
            rearm(
                &mut self.timers,
                &saga_id,
                &mut entry,
                self.limits.completed_retention,
            );
            let (resting, mut stored) = self.freeze(entry);
            if owes {
                stored.outbox = outbox;
                owed.push((saga_id.clone(), stored));
            }
            self.sagas.insert(saga_id, resting);
        }
        (self, owed)
    }

    /// A thawed saga put to rest; its state and trace context are handed
    /// back (with an empty outbox) for the caller to use or drop.
    fn freeze(&mut self, entry: Entry) -> (Resting, StoredSaga) {
        let frozen = serde_json::to_vec(&Frozen {
            state: &entry.state,
            traceparent: entry.traceparent.as_deref(),
            trigger_traceparent: entry.trigger_traceparent.as_deref(),
            tracestate: entry.tracestate.as_deref(),
        })
        .expect("a saga serialises");
        let saga_type = match self.types.get(&entry.state.saga_type) {
            Some(t) => t.clone(),
            None => {
                let t: Arc<str> = entry.state.saga_type.as_str().into();
                self.types.insert(entry.state.saga_type.clone(), t.clone());
                t
            }
        };
        let resting = Resting {
            frozen: frozen.into_boxed_slice(),
            saga_type,
            terminal: entry.state.status.is_terminal(),
            armed: entry
                .armed
                .into_iter()
                .map(|(due, id)| (due, id.into_boxed_str()))
                .collect(),
            issued: entry
                .issued
                .into_iter()
                .map(|(id, at)| (id.into_boxed_str(), at))
                .collect(),
            stored_bytes: u32::try_from(entry.stored_bytes).unwrap_or(u32::MAX),
        };
        let stored = StoredSaga {
            state: entry.state,
            outbox: Vec::new(),
            traceparent: entry.traceparent,
            trigger_traceparent: entry.trigger_traceparent,
            tracestate: entry.tracestate,
        };
        (resting, stored)
    }

    /// Takes a saga out to apply inputs to it: thawed if it was at rest.
    fn take(&mut self, saga_id: &str) -> Option<Entry> {
        if let Some(entry) = self.hot.remove(saga_id) {
            return Some(entry);
        }
        let resting = self.sagas.remove(saga_id)?;
        // The core wrote these bytes itself from a valid state.
        let stored: StoredSaga =
            serde_json::from_slice(&resting.frozen).expect("a frozen saga thaws");
        Some(Entry {
            state: stored.state,
            traceparent: stored.traceparent,
            trigger_traceparent: stored.trigger_traceparent,
            tracestate: stored.tracestate,
            armed: resting
                .armed
                .into_iter()
                .map(|(due, id)| (due, id.into_string()))
                .collect(),
            issued: resting
                .issued
                .into_iter()
                .map(|(id, at)| (id.into_string(), at))
                .collect(),
            stored_bytes: resting.stored_bytes as usize,
        })
    }

    fn holds(&self, saga_id: &str) -> bool {
        self.hot.contains_key(saga_id) || self.sagas.contains_key(saga_id)
    }

    /// Whether the saga ended (and is still held).
    fn terminal(&self, saga_id: &str) -> Option<bool> {
        match self.hot.get(saga_id) {
            Some(e) => Some(e.state.status.is_terminal()),
            None => self.sagas.get(saga_id).map(|r| r.terminal),
        }
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// Whether the core holds this saga's state.
    pub fn contains(&self, saga_id: &str) -> bool {
        self.holds(saga_id)
    }

    pub fn len(&self) -> usize {
        self.sagas.len() + self.hot.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Parked early events held.
    pub fn parked(&self) -> usize {
        self.early.values().map(Vec::len).sum()
    }

    /// Ended saga ids remembered.
    pub fn ended(&self) -> usize {
        self.ended.len()
    }

    /// When the next timer is due (ms since the epoch).
    pub fn poll_timeout(&self) -> Option<u64> {
        self.timers.first().map(|t| t.0)
    }

    /// What the timers want at `now`, when the partition's inputs have
    /// been read up to `read` (see [`Self::handle_timeout_read`]): when the
    /// next one may fire, and whether one is due but held until the
    /// partition is read further.
    pub fn due(&self, now: u64, read: u64) -> Due {
        let mut due = Due::default();
        for (at, _, id) in &self.timers {
            if *at > now {
                due.next = due.next.or(Some(*at));
                break;
            }
            if held(*at, id, read) {
                due.held = true;
            } else {
                due.next = due.next.or(Some(*at));
            }
        }
        due
    }

    /// Lets go of the partition: its sagas are no longer counted here.
    pub fn release(&self) {
        let resting = self.sagas.values().map(|r| (r.terminal, &*r.saga_type));
        let hot = self.hot.values();
        let hot = hot.map(|e| (e.state.status.is_terminal(), e.state.saga_type.as_str()));
        for (terminal, saga_type) in resting.chain(hot) {
            if !terminal {
                self.metrics
                    .sagas_in_flight
                    .with_label_values(&[saga_type])
                    .dec();
            }
        }
    }

    /// Everything changed since the last drain, with the outboxes.
    pub fn drain(&mut self) -> Drained {
        let mut out = Drained {
            parked: std::mem::take(&mut self.parked),
            ended: std::mem::take(&mut self.ended_new),
            tombstones: std::mem::take(&mut self.tombstones),
            ..Drained::default()
        };
        for saga_id in std::mem::take(&mut self.order) {
            let outbox = self.outbox.remove(&saga_id).unwrap_or_default();
            let Some(entry) = self.hot.remove(&saga_id) else {
                continue;
            };
            let (resting, mut stored) = self.freeze(entry);
            self.sagas.insert(saga_id.clone(), resting);
            stored.outbox = outbox;
            out.sagas.push((saga_id, stored));
        }
        // Sagas thawed by inputs that changed nothing go back to rest.
        for (saga_id, entry) in std::mem::take(&mut self.hot) {
            let (resting, _) = self.freeze(entry);
            self.sagas.insert(saga_id, resting);
        }
        out
    }

    /// The store writes a drain makes, in order: each saga's record (its
    /// state with its outbox), parked events, ended markers, tombstones.
    /// Takes everything but the sagas, which stay for their effects; notes
    /// each saga's record size for the record-limit checks.
    pub fn changes(&mut self, drained: &mut Drained) -> Vec<Change> {
        let mut changes = Vec::new();
        for (saga_id, stored) in &drained.sagas {
            let payload = serde_json::to_vec(stored).expect("a saga serialises");
            if let Some(r) = self.sagas.get_mut(saga_id) {
                r.stored_bytes = u32::try_from(payload.len()).unwrap_or(u32::MAX);
            }
            changes.push(Change::put(saga_id.clone(), payload));
        }
        for (key, parked) in std::mem::take(&mut drained.parked) {
            let payload = serde_json::to_vec(&parked).expect("an event serialises");
            changes.push(Change::put(key, payload));
        }
        for (hash, until) in std::mem::take(&mut drained.ended) {
            let payload = serde_json::to_vec(&Ended { until }).expect("a marker serialises");
            changes.push(Change::put(changelog::ended_key(hash), payload));
        }
        let tombstones = std::mem::take(&mut drained.tombstones);
        changes.extend(tombstones.into_iter().map(Change::delete));
        changes
    }

    fn owe(&mut self, saga_id: &str, effects: Vec<Effect>) {
        let slot = self.outbox.entry(saga_id.to_owned()).or_insert_with(|| {
            self.order.push(saga_id.to_owned());
            Vec::new()
        });
        slot.extend(effects);
    }

    /// An input envelope (`sagaflow.inputs`) of `input_bytes` bytes,
    /// carrying the trigger's `traceparent` if any and no `tracestate`
    /// (see [`Self::handle_traced_input`]).
    pub fn handle_input(
        &mut self,
        env: Envelope,
        traceparent: Option<&str>,
        input_bytes: usize,
        now: u64,
        new_trace: impl FnOnce(Option<&str>) -> (String, Option<String>),
    ) -> Result<(), Refusal> {
        self.handle_traced_input(env, traceparent, None, input_bytes, now, new_trace)
    }

    /// An input envelope (`sagaflow.inputs`) of `input_bytes` bytes,
    /// carrying the trigger's `traceparent` and `tracestate` if any.
    /// `new_trace` makes the saga's span from the trigger's and returns it
    /// with the trigger's span when that was valid (the driver's
    /// randomness, kept out of the core); the `tracestate` is kept only
    /// with a valid trigger span, as a new trace has no vendor state.
    pub fn handle_traced_input(
        &mut self,
        env: Envelope,
        traceparent: Option<&str>,
        tracestate: Option<&str>,
        input_bytes: usize,
        now: u64,
        new_trace: impl FnOnce(Option<&str>) -> (String, Option<String>),
    ) -> Result<(), Refusal> {
        match env {
            Envelope::Trigger {
                saga_type,
                saga_id,
                event,
            } => {
                if self.holds(&saga_id) {
                    // A redelivered trigger never starts a second saga.
                    self.count("trigger", "duplicate");
                    return Ok(());
                }
                if self
                    .ended
                    .get(&changelog::saga_hash(&saga_id))
                    .is_some_and(|until| *until > now)
                {
                    // The saga ended and its state is gone, but its id is
                    // remembered for `dedup-window`: a replayed trigger.
                    self.count("trigger", "replayed");
                    return Ok(());
                }
                let (state, effects) = self
                    .engine
                    .start(&saga_type, &event, Timestamp(now))
                    .map_err(|source| Refused::Start {
                        saga_type: saga_type.clone(),
                        source,
                    })?;
                if let Some(size) = self.oversized(&state, &effects, tracestate, input_bytes) {
                    return Err(Refused::TooLarge(format!(
                        "saga `{saga_id}`: its state would be {size} bytes, over the record limit of {} bytes (max-record-bytes / message.max.bytes); the trigger is refused",
                        self.limits.record_limit
                    ))
                    .into());
                }
                self.count("trigger", "applied");
                self.metrics
                    .sagas_started
                    .with_label_values(&[&state.saga_type])
                    .inc();
                self.metrics
                    .sagas_in_flight
                    .with_label_values(&[&state.saga_type])
                    .inc();
                let id = state.saga_id.clone();
                let (trace, parent) = new_trace(traceparent);
                let mut entry = Entry {
                    state,
                    traceparent: Some(trace),
                    tracestate: parent.as_ref().and(tracestate).map(str::to_owned),
                    trigger_traceparent: parent,
                    armed: Vec::new(),
                    issued: HashMap::new(),
                    stored_bytes: input_bytes,
                };
                note_issued(&mut entry, &effects, now);
                self.after_apply(&id, &mut entry, false);
                self.hot.insert(id.clone(), entry);
                self.owe(&id, effects);
                if let Some(early) = self.early.remove(&id) {
                    for (key, event) in early {
                        self.tombstones.push(key);
                        let size = serde_json::to_vec(&event.payload).map_or(0, |b| b.len());
                        if let Err(refused) =
                            self.apply(&id, Input::Event(event), size, "event", now)
                        {
                            // The parked event has no record of its own any
                            // more: its refusal is logged and counted.
                            ParkedEventRefused {
                                saga_id: &id,
                                refusal: &refused,
                            }
                            .emit(&self.metrics);
                        }
                    }
                }
                Ok(())
            }
            Envelope::Event { saga_id, event } => {
                if self.holds(&saga_id) {
                    self.apply(&saga_id, Input::Event(event), input_bytes, "event", now)
                } else {
                    self.park(saga_id, event, now)
                }
            }
            Envelope::Retry {
                saga_id,
                request_id,
            } => self.apply(&saga_id, Input::Retry { request_id }, 0, "retry", now),
            Envelope::Abort {
                saga_id,
                request_id,
                reason,
            } => self.apply(
                &saga_id,
                Input::Abort { request_id, reason },
                0,
                "abort",
                now,
            ),
        }
    }

    /// A service's reply to a command (`step` names it for the latency
    /// metric).
    pub fn handle_reply(
        &mut self,
        saga_id: &str,
        step: &str,
        reply: Reply,
        input_bytes: usize,
        now: u64,
    ) -> Result<(), Refusal> {
        let outcome = format!("{:?}", reply.outcome).to_lowercase();
        if let Some(mut entry) = self.take(saga_id) {
            if let Some(issued) = entry.issued.remove(&reply.command_id) {
                let latency = now.saturating_sub(issued) as f64 / 1e3;
                self.metrics
                    .step_latency
                    .with_label_values(&[&entry.state.saga_type, step, &outcome])
                    .observe(latency);
            }
            self.hot.insert(saga_id.to_owned(), entry);
        }
        self.apply(saga_id, Input::Reply(reply), input_bytes, "reply", now)
    }

    /// Fires every timer due at `now`: step timeouts and backoffs (the
    /// engine decides), finished sagas' expiry, parked events' expiry, and
    /// the sweep of ended ids past `dedup-window`. For a caller that has
    /// read every input that arrived before `now`.
    pub fn handle_timeout(&mut self, now: u64) {
        self.handle_timeout_read(now, now);
    }

    /// [`Self::handle_timeout`] when the partition's inputs are known to
    /// be read only up to `read` (ms since the epoch): everything appended
    /// to them before that moment has been applied. A timer that awaits
    /// an input (a reply's timeout, an await's or the saga's deadline) and
    /// is due after `read` is held: a reply that arrived in time may still
    /// be unread behind a takeover, a stopped process or a registry
    /// outage, and must win over the timeout.
    pub fn handle_timeout_read(&mut self, now: u64, read: u64) {
        if now.saturating_sub(self.swept_at) > SWEEP_EVERY_MS {
            self.swept_at = now;
            let tombstones = &mut self.tombstones;
            self.ended.retain(|hash, until| {
                let keep = *until > now;
                if !keep {
                    tombstones.push(changelog::ended_key(*hash));
                }
                keep
            });
        }
        // Held timers stay in the set; the scan goes on past them.
        let mut after: Option<(u64, String, String)> = None;
        loop {
            let next = match &after {
                None => self.timers.first(),
                Some(a) => self.timers.range((Excluded(a), Unbounded)).next(),
            };
            let Some(first) = next.cloned() else {
                break;
            };
            if first.0 > now {
                break;
            }
            if held(first.0, &first.2, read) {
                after = Some(first);
                continue;
            }
            self.timers.remove(&first);
            let (_, saga_id, timer_id) = first;
            if timer_id == EARLY_EXPIRE {
                if !self.holds(&saga_id)
                    && let Some(events) = self.early.remove(&saga_id)
                {
                    warn!(saga.id = %saga_id, events = events.len(), "awaited events expired before their saga started; dropped");
                    self.metrics
                        .inputs
                        .with_label_values(&["event", "expired"])
                        .inc_by(events.len() as u64);
                    self.tombstones.extend(events.into_iter().map(|(k, _)| k));
                }
                continue;
            }
            if timer_id == EXPIRE {
                if self.terminal(&saga_id) == Some(true) {
                    // The state goes; the id is remembered, compactly, for
                    // `dedup-window`, so a replayed trigger is refused.
                    debug!(saga.id = %saga_id, "saga state expired after completed-retention; its id is remembered");
                    self.sagas.remove(&saga_id);
                    self.hot.remove(&saga_id);
                    let hash = changelog::saga_hash(&saga_id);
                    let until = now + self.limits.dedup_window.as_millis() as u64;
                    self.ended.insert(hash, until);
                    self.ended_new.push((hash, until));
                    self.tombstones.push(saga_id);
                }
                continue;
            }
            let mut purpose = "unknown".to_owned();
            if let Some(mut entry) = self.take(&saga_id) {
                if let Some(t) = entry.state.timers.get(&timer_id) {
                    purpose = format!("{:?}", t.purpose);
                }
                entry.armed.retain(|(_, id)| id != &timer_id);
                self.hot.insert(saga_id.clone(), entry);
            }
            self.metrics
                .timers_fired
                .with_label_values(&[&purpose])
                .inc();
            // Timer inputs carry nothing that could grow a saga.
            let _ = self.apply(&saga_id, Input::TimerFired { timer_id }, 0, "timer", now);
        }
    }

    fn count(&self, input: &str, outcome: &str) {
        self.metrics
            .inputs
            .with_label_values(&[input, outcome])
            .inc();
    }

    /// Parks an awaited event whose saga has not started yet (another
    /// topic, read in another order): one changelog record per event, for
    /// `early-event-retention` at most, within the per-saga and
    /// per-partition bounds.
    fn park(&mut self, saga_id: String, event: AwaitedEvent, now: u64) -> Result<(), Refusal> {
        let key = changelog::parked_key(&saga_id, &event.message_id);
        let held = self.early.get(&saga_id).map_or(0, Vec::len);
        if self
            .early
            .get(&saga_id)
            .is_some_and(|v| v.iter().any(|(k, _)| *k == key))
        {
            self.count("event", "duplicate");
            return Ok(());
        }
        if held >= self.limits.max_parked_per_saga {
            return Err(Refused::ParkedLimit(format!(
                "saga `{saga_id}` has not started and already has {held} parked events (max-parked-per-saga)"
            ))
            .into());
        }
        let total = self.parked();
        if total >= self.limits.max_parked_per_partition {
            return Err(Refused::ParkedLimit(format!(
                "partition {} already holds {total} parked events for sagas that have not started (max-parked-per-partition)",
                self.partition
            ))
            .into());
        }
        if held == 0 {
            self.timers.insert((
                now + self.limits.early_event_retention.as_millis() as u64,
                saga_id.clone(),
                EARLY_EXPIRE.to_owned(),
            ));
        }
        self.parked.push((
            key.clone(),
            Parked {
                saga_id: saga_id.clone(),
                event: event.clone(),
            },
        ));
        self.early.entry(saga_id).or_default().push((key, event));
        self.count("event", "parked");
        Ok(())
    }

    /// The size a saga's changelog record would have, if over the limit.
    /// Small inputs cannot push a small saga over: it measures only when
    /// they might (`input_bytes` of `usize::MAX` always measures).
    fn oversized(
        &self,
        state: &SagaState,
        outbox: &[Effect],
        tracestate: Option<&str>,
        input_bytes: usize,
    ) -> Option<usize> {
        if input_bytes < self.limits.record_limit / 8 {
            return None;
        }
        // The stored form carries the trigger's `tracestate` (up to 512
        // bytes) beside the state: it counts too.
        let size = serde_json::to_vec(&(state, outbox)).map_or(usize::MAX, |b| b.len())
            + tracestate.map_or(0, str::len)
            + RECORD_OVERHEAD;
        (size > self.limits.record_limit).then_some(size)
    }

    /// Applies one input to a saga. An input that would grow the saga's
    /// state over the record limit is not applied: the saga is aborted
    /// (compensating what succeeded) with the reason, which is returned
    /// for the driver to dead-letter the input with.
    fn apply(
        &mut self,
        saga_id: &str,
        input: Input,
        input_bytes: usize,
        kind: &str,
        now: u64,
    ) -> Result<(), Refusal> {
        let record_limit = self.limits.record_limit;
        let Some(mut entry) = self.take(saga_id) else {
            debug!(
                saga.id = saga_id,
                input = kind,
                "input for a saga this partition does not hold"
            );
            self.count(kind, "unmatched");
            return Ok(());
        };
        let was_terminal = entry.state.status.is_terminal();
        let before =
            (entry.stored_bytes + input_bytes >= record_limit / 8).then(|| entry.state.clone());
        let mut applied = self.engine.apply(&mut entry.state, input, Timestamp(now));
        let mut refused = None;
        if let Some(before) = before
            && let Some(size) = self.oversized(
                &entry.state,
                &applied.effects,
                entry.tracestate.as_deref(),
                usize::MAX,
            )
        {
            let reason = format!(
                "saga `{saga_id}`: this {kind} would grow its state to {size} bytes, over the record limit of {record_limit} bytes; the saga is aborted"
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
            refused = Some(Refused::TooLarge(reason).into());
        }
        entry.stored_bytes += input_bytes.min(record_limit);
        let outcome = match &applied.outcome {
            Outcome::Applied => "applied",
            Outcome::Duplicate => "duplicate",
            Outcome::Stale(_) => "stale",
            Outcome::Rejected(_) => "rejected",
        };
        self.count(kind, outcome);
        if let Outcome::Rejected(e) = &applied.outcome {
            warn!(saga.id = saga_id, input = kind, error = %e, "input rejected");
        }
        if applied.outcome == Outcome::Applied {
            note_issued(&mut entry, &applied.effects, now);
            self.after_apply(saga_id, &mut entry, was_terminal);
            self.hot.insert(saga_id.to_owned(), entry);
            self.owe(saga_id, applied.effects);
        } else {
            self.hot.insert(saga_id.to_owned(), entry);
        }
        refused.map_or(Ok(()), Err)
    }

    /// Re-syncs a saga's timers with its state and counts its end.
    fn after_apply(&mut self, saga_id: &str, entry: &mut Entry, was_terminal: bool) {
        rearm(
            &mut self.timers,
            saga_id,
            entry,
            self.limits.completed_retention,
        );
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

/// What a partition's timers want of its driver ([`PartitionCore::due`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Due {
    /// When the next timer may fire (ms since the epoch; in the past when
    /// one is due now).
    pub next: Option<u64>,
    /// A timer that awaits an input is due, but held until the partition's
    /// inputs are read further.
    pub held: bool,
}

/// Whether a timer due `at` is held while the inputs are read up to `read`.
fn held(at: u64, id: &str, read: u64) -> bool {
    at > read && timer_awaits_input(id)
}

/// Makes the timer set hold exactly this saga's armed timers, plus its
/// expiry once it has ended. The saga's state is the source of truth; the
/// engine's `ArmTimer`/`CancelTimer` effects describe the same changes.
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

#[cfg(test)]
mod tests {
    use super::*;
    use sagaflow_engine::TriggerEvent;
    use serde_json::json;
    use std::path::Path;

    const T0: u64 = 1_700_000_000_000;

    fn engine() -> Arc<Engine> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../topology");
        let (_, registry) =
            crate::app::load_definitions(&root.join("sagas"), &root.join("services.yaml"))
                .expect("the worked sagas load");
        Arc::new(Engine::new(registry))
    }

    fn limits() -> Limits {
        Limits {
            completed_retention: Duration::from_secs(60),
            early_event_retention: Duration::from_secs(60),
            record_limit: 100_000,
            max_parked_per_saga: 2,
            max_parked_per_partition: 3,
            dedup_window: Duration::from_secs(3600),
        }
    }

    fn core() -> PartitionCore {
        PartitionCore::new(0, engine(), Metrics::default(), limits())
    }

    fn trace(_: Option<&str>) -> (String, Option<String>) {
        (
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
            None,
        )
    }

    fn trigger(order: &str, customer: &str) -> Envelope {
        Envelope::Trigger {
            saga_type: "order-checkout".to_owned(),
            saga_id: format!("order-checkout:{order}"),
            event: TriggerEvent {
                message_id: format!("m-{order}"),
                topic: "orders.events".to_owned(),
                event_type: "OrderPlaced".to_owned(),
                payload: json!({
                    "order_id": order, "customer_id": customer,
                    "items": [{"sku": "S", "quantity": 1, "unit_price_cents": 100}],
                    "total_cents": 100, "currency": "EUR",
                    "shipping_address": {"line1": "1", "postal_code": "1", "city": "B", "country": "DE"},
                    "placed_at": T0
                }),
            },
        }
    }

    fn event(saga: &str, id: &str) -> Envelope {
        Envelope::Event {
            saga_id: saga.to_owned(),
            event: AwaitedEvent {
                message_id: id.to_owned(),
                topic: "identity.events".to_owned(),
                event_type: "EmailVerified".to_owned(),
                payload: json!({}),
            },
        }
    }

    #[test]
    fn a_trigger_starts_a_saga_once_and_owes_its_first_command() {
        let mut c = core();
        c.handle_input(trigger("o-1", "c"), None, 100, T0, trace)
            .unwrap();
        c.handle_input(trigger("o-1", "c"), None, 100, T0, trace)
            .unwrap();
        let d = c.drain();
        assert_eq!(d.sagas.len(), 1);
        let commands = d.sagas[0]
            .1
            .outbox
            .iter()
            .filter(|e| matches!(e, Effect::Command(_)))
            .count();
        assert_eq!(commands, 1);
        assert!(c.poll_timeout().is_some(), "the step's timeout is armed");
        assert!(c.drain().is_empty(), "drained once");
    }

    /// The commands a drain owes, by id.
    fn owed_commands(c: &mut PartitionCore) -> Vec<String> {
        c.drain()
            .sagas
            .iter()
            .flat_map(|(_, s)| &s.outbox)
            .filter_map(|e| match e {
                Effect::Command(cmd) => Some(cmd.command_id.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_timeout_waits_until_the_inputs_are_read_past_it_and_a_backoff_does_not() {
        let mut c = core();
        c.handle_input(trigger("o-1", "c"), None, 100, T0, trace)
            .unwrap();
        c.drain();
        // reserve_inventory: 10 s timeout, then a 200 ms backoff.
        let due = T0 + 10_000;
        let late = T0 + 20_000;
        assert_eq!(
            c.due(late, T0),
            Due {
                next: None,
                held: true
            }
        );
        c.handle_timeout_read(late, due - 1);
        assert!(
            c.drain().is_empty(),
            "read up to just before the deadline: held"
        );
        assert_eq!(
            c.due(late, due),
            Due {
                next: Some(due),
                held: false
            }
        );
        c.handle_timeout_read(late, due);
        assert!(
            owed_commands(&mut c).is_empty(),
            "timed out: a backoff first"
        );
        // The backoff fires on the clock, however far the inputs are read.
        let backoff = c.due(late + 1_000, due).next.expect("the backoff is armed");
        assert!(backoff > due && backoff <= late + 1_000, "{backoff}");
        c.handle_timeout_read(late + 1_000, due);
        assert_eq!(
            owed_commands(&mut c),
            ["order-checkout:o-1/reserve_inventory/2"]
        );
    }

    #[test]
    fn parked_events_are_bounded_per_saga_and_per_partition() {
        let mut c = core();
        c.handle_input(event("s-1", "a"), None, 10, T0, trace)
            .unwrap();
        c.handle_input(event("s-1", "a"), None, 10, T0, trace)
            .unwrap();
        c.handle_input(event("s-1", "b"), None, 10, T0, trace)
            .unwrap();
        let refused = c
            .handle_input(event("s-1", "c"), None, 10, T0, trace)
            .unwrap_err();
        assert_eq!(refused.code, "SF-ORCH-023");
        assert!(refused.reason.contains("max-parked-per-saga"));
        c.handle_input(event("s-2", "a"), None, 10, T0, trace)
            .unwrap();
        let refused = c
            .handle_input(event("s-3", "a"), None, 10, T0, trace)
            .unwrap_err();
        assert!(refused.reason.contains("max-parked-per-partition"));
        assert_eq!(c.parked(), 3);
        assert_eq!(c.drain().parked.len(), 3, "one record per event");
        // They expire with a tombstone each.
        c.handle_timeout(T0 + 61_000);
        assert_eq!(c.parked(), 0);
        assert_eq!(c.drain().tombstones.len(), 3);
    }

    #[test]
    fn an_oversized_trigger_is_refused() {
        let mut c = core();
        let mut env = trigger("o-big", "c");
        if let Envelope::Trigger { event, .. } = &mut env {
            event.payload["customer_id"] = json!("x".repeat(120_000));
        }
        let refused = c.handle_input(env, None, 120_500, T0, trace).unwrap_err();
        assert_eq!(refused.code, "SF-ORCH-022");
        assert!(c.is_empty());
        assert!(c.drain().is_empty());
    }

    #[test]
    fn an_expired_saga_is_remembered_and_a_replayed_trigger_refused() {
        let mut c = core();
        c.handle_input(trigger("o-2", "c"), None, 100, T0, trace)
            .unwrap();
        let saga = "order-checkout:o-2";
        // Abort it: it ends (nothing succeeded, nothing to compensate).
        c.handle_input(
            Envelope::Abort {
                saga_id: saga.to_owned(),
                request_id: "r-1".to_owned(),
                reason: "test".to_owned(),
            },
            None,
            10,
            T0 + 1,
            trace,
        )
        .unwrap();
        let _ = c.drain();
        let mut now = T0 + 1;
        for _ in 0..50 {
            if !c.contains(saga) {
                break;
            }
            now += 10_000;
            c.handle_timeout(now);
        }
        assert!(!c.contains(saga), "the state expired");
        assert_eq!(c.ended(), 1);
        let d = c.drain();
        assert_eq!(d.ended.len(), 1);
        assert!(d.tombstones.contains(&saga.to_owned()));
        c.handle_input(trigger("o-2", "c"), None, 100, now, trace)
            .unwrap();
        assert!(!c.contains(saga), "the replay started nothing");
        assert!(c.drain().is_empty());
    }

    #[test]
    fn a_restore_thaws_only_survivors_and_skips_an_unreadable_record() {
        let mut c = core();
        c.handle_input(trigger("o-1", "c-1"), None, 300, T0, trace)
            .expect("starts");
        let mut d = c.drain();
        let changes = c.changes(&mut d);
        let mut replay = Replay::new();
        for (i, ch) in changes.iter().enumerate() {
            replay.apply(&changelog::Record {
                offset: i as i64,
                key: Some(&ch.key),
                payload: ch.payload.as_deref(),
                epoch: None,
            });
        }
        replay.apply(&changelog::Record {
            offset: 99,
            key: Some("order-checkout:torn"),
            payload: Some(b"{\"state\": {\"trunc"),
            epoch: None,
        });
        let (restored, owed) = core().restore(replay, T0, || "unused".to_owned());
        assert!(restored.contains("order-checkout:o-1"));
        assert!(
            !restored.contains("order-checkout:torn"),
            "skipped, not a panic"
        );
        assert_eq!(restored.len(), 1);
        assert_eq!(owed.len(), 1, "its first command is owed: no delivery mark");
        assert!(!owed[0].1.outbox.is_empty());
    }

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const STATE: &str = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE";

    /// A saga span that continues a valid trigger span, as the driver's is.
    fn continued(parent: Option<&str>) -> (String, Option<String>) {
        let (span, _) = trace(parent);
        (span, parent.map(str::to_owned))
    }

    fn replay_of(changes: &[Change]) -> Replay {
        let mut replay = Replay::new();
        for (i, ch) in changes.iter().enumerate() {
            replay.apply(&changelog::Record {
                offset: i as i64,
                key: Some(&ch.key),
                payload: ch.payload.as_deref(),
                epoch: None,
            });
        }
        replay
    }

    #[test]
    fn the_triggers_tracestate_is_stored_with_the_saga_and_survives_a_restore() {
        let mut c = core();
        c.handle_traced_input(
            trigger("o-1", "c"),
            Some(PARENT),
            Some(STATE),
            100,
            T0,
            continued,
        )
        .unwrap();
        let mut d = c.drain();
        let stored = &d.sagas[0].1;
        assert_eq!(stored.tracestate.as_deref(), Some(STATE));
        assert_eq!(stored.trace().tracestate, Some(STATE));
        assert_eq!(stored.trace().trigger_span, Some(PARENT));
        let changes = c.changes(&mut d);
        // Thawed again for a later input (an abort here), the saga still
        // has it, and so does every record it now owes.
        c.handle_input(
            Envelope::Abort {
                saga_id: "order-checkout:o-1".to_owned(),
                request_id: "r-1".to_owned(),
                reason: "test".to_owned(),
            },
            None,
            10,
            T0 + 1,
            trace,
        )
        .unwrap();
        let d = c.drain();
        assert_eq!(d.sagas[0].1.tracestate.as_deref(), Some(STATE));
        assert!(!d.sagas[0].1.outbox.is_empty());
        let (_, owed) = core().restore(replay_of(&changes), T0, || "unused".to_owned());
        assert_eq!(owed[0].1.tracestate.as_deref(), Some(STATE));
    }

    #[test]
    fn a_new_trace_carries_no_tracestate() {
        let mut c = core();
        // The trigger's span was invalid: the saga starts a new trace.
        c.handle_traced_input(
            trigger("o-1", "c"),
            Some("00-bad-01"),
            Some(STATE),
            100,
            T0,
            trace,
        )
        .unwrap();
        let d = c.drain();
        assert_eq!(d.sagas[0].1.tracestate, None);
        assert_eq!(d.sagas[0].1.trace().trigger_span, None);
    }

    #[test]
    fn a_changelog_record_written_before_tracestate_still_restores() {
        let mut c = core();
        c.handle_input(trigger("o-1", "c"), None, 100, T0, trace)
            .unwrap();
        let d = c.drain();
        let stored = &d.sagas[0].1;
        // The shape the orchestrator wrote before sagas carried a tracestate.
        let old = serde_json::to_vec(&json!({
            "state": stored.state,
            "outbox": stored.outbox,
            "traceparent": PARENT,
            "trigger_traceparent": PARENT,
        }))
        .unwrap();
        let decoded: StoredSaga = serde_json::from_slice(&old).expect("an old record decodes");
        assert_eq!(decoded.tracestate, None);
        assert_eq!(decoded.traceparent.as_deref(), Some(PARENT));
        let mut replay = Replay::new();
        replay.apply(&changelog::Record {
            offset: 0,
            key: Some("order-checkout:o-1"),
            payload: Some(&old),
            epoch: None,
        });
        let (restored, owed) = core().restore(replay, T0, || "unused".to_owned());
        assert!(restored.contains("order-checkout:o-1"));
        assert_eq!(owed.len(), 1);
        assert_eq!(owed[0].1.tracestate, None);
        assert_eq!(owed[0].1.traceparent.as_deref(), Some(PARENT));
    }
}
