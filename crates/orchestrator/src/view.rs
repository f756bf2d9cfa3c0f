//! The saga view: every instance reads `sagaflow.saga-events` (lifecycle
//! events and results of all sagas) into a small in-memory query model, so
//! any instance answers `GET /v1/sagas/...` and the synchronous facade,
//! whichever instance owns the saga. Eventually consistent by a few ms.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::{Message, Offset, TopicPartitionList};
use sagaflow_bus::lag::{LagContext, LagGauge};
use sagaflow_bus::{KafkaConfig, header_names};
use sagaflow_codec::messages::{LifecycleKind, SagaLifecycleEvent, SagaResult};
use sagaflow_codec::{Codec, SagaEvent};
use serde::Serialize;
use tokio::sync::{oneshot, watch};
use tracing::{debug, warn};

/// Lifecycle events kept per saga.
const HISTORY: usize = 200;
/// Sagas kept in the view. Beyond it the oldest finished saga is dropped;
/// when none has finished, the saga first seen longest ago, running or not
/// (its state stays in the orchestrator; only this query model forgets it).
pub const MAX_SAGAS: usize = 100_000;

/// The view's own metrics.
#[derive(Clone)]
pub struct ViewMetrics {
    /// `sagaflow_view_sagas`: sagas held in the view.
    pub sagas: prometheus::IntGauge,
    /// `sagaflow_view_evictions_total{status}`: sagas dropped to keep the
    /// view within its cap, by whether they had finished (`finished`,
    /// `running`).
    pub evictions: prometheus::IntCounterVec,
    /// `sagaflow_saga_oldest_running_age_seconds{saga_type}`: how long the
    /// oldest saga in the view that has not ended (running or
    /// compensating) has been going; 0 when none. Set on each scrape
    /// ([`SagaView::update_oldest_age`]).
    pub oldest_running_age: prometheus::GaugeVec,
}

impl ViewMetrics {
    /// Registers the view's metrics in `registry`.
    pub fn new(registry: &prometheus::Registry) -> Self {
        let sagas = prometheus::IntGauge::new(
            "sagaflow_view_sagas",
            "Sagas held in the instance's saga view (GET /v1/sagas)",
        )
        .expect("valid metric");
        let evictions = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "sagaflow_view_evictions_total",
                "Sagas dropped from the saga view to keep it within its cap",
            ),
            &["status"],
        )
        .expect("valid metric");
        let oldest_running_age = prometheus::GaugeVec::new(
            prometheus::Opts::new(
                "sagaflow_saga_oldest_running_age_seconds",
                "Age of the oldest saga not ended (running or compensating) in the saga view, by saga type",
            ),
            &["saga_type"],
        )
        .expect("valid metric");
        let _ = registry.register(Box::new(sagas.clone()));
        let _ = registry.register(Box::new(evictions.clone()));
        let _ = registry.register(Box::new(oldest_running_age.clone()));
        Self {
            sagas,
            evictions,
            oldest_running_age,
        }
    }
}

impl Default for ViewMetrics {
    fn default() -> Self {
        Self::new(&prometheus::Registry::new())
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SagaSummary {
    pub saga_id: String,
    pub saga_type: String,
    pub saga_version: i32,
    /// running, compensating, completed, compensated, failed.
    pub status: String,
    pub current_step: Option<String>,
    pub started_at: i64,
    pub updated_at: i64,
    pub result: Option<SagaResult>,
    pub history: VecDeque<SagaLifecycleEvent>,
}

#[derive(Default)]
struct Inner {
    sagas: BTreeMap<String, SagaSummary>,
    seen: HashSet<String>,
    /// Saga ids by the order they ended (may name sagas already dropped).
    finished: VecDeque<String>,
    /// Saga ids by the order they were first seen (may name sagas already
    /// dropped).
    arrived: VecDeque<String>,
    /// Sagas not ended, by type then start time: the oldest is the first
    /// (a type stays as a key once seen, so its gauge can go back to 0).
    open: BTreeMap<String, BTreeSet<(i64, String)>>,
    /// Requests waiting for a saga's result, by saga id: each is woken by
    /// its own saga's result only (waking every waiter on every saga's end
    /// cost 100 in-flight facade requests a lookup and a copy of the saga
    /// each, per ended saga).
    waiters: HashMap<String, Vec<(u64, oneshot::Sender<SagaSummary>)>>,
    next_waiter: u64,
}

/// `(saga type, (started at, saga id))` of a saga that has not ended.
type OpenKey = (String, (i64, String));

fn open_key(s: &SagaSummary) -> Option<OpenKey> {
    (s.result.is_none() && matches!(s.status.as_str(), "running" | "compensating"))
        .then(|| (s.saga_type.clone(), (s.started_at, s.saga_id.clone())))
}

impl Inner {
    fn key_of(&self, saga_id: &str) -> Option<OpenKey> {
        self.sagas.get(saga_id).and_then(open_key)
    }

    /// Moves a saga in the open index from `before` to `after`.
    fn reindex(&mut self, before: Option<OpenKey>, after: Option<OpenKey>) {
        if before == after {
            return;
        }
        if let Some((t, k)) = before
            && let Some(set) = self.open.get_mut(&t)
        {
            set.remove(&k);
        }
        if let Some((t, k)) = after {
            self.open.entry(t).or_default().insert(k);
        }
    }

    fn forget(&mut self, saga_id: &str) -> bool {
        let key = self.key_of(saga_id);
        self.reindex(key, None);
        match self.sagas.remove(saga_id) {
            Some(s) => {
                for e in s.history {
                    self.seen.remove(&e.event_id);
                }
                true
            }
            None => false,
        }
    }

    /// Drops sagas beyond `cap`: finished ones first, oldest first.
    fn evict(&mut self, cap: usize, metrics: &ViewMetrics) {
        while self.sagas.len() > cap {
            if let Some(old) = self.finished.pop_front() {
                if self.forget(&old) {
                    metrics.evictions.with_label_values(&["finished"]).inc();
                }
            } else if let Some(old) = self.arrived.pop_front() {
                if self.forget(&old) {
                    metrics.evictions.with_label_values(&["running"]).inc();
                }
            } else {
                break;
            }
        }
        // The queues may name dropped sagas; keep them within twice the cap.
        let bound = cap.saturating_mul(2).max(16);
        if self.arrived.len() > bound {
            let sagas = &self.sagas;
            self.arrived.retain(|id| sagas.contains_key(id));
        }
        if self.finished.len() > bound {
            let sagas = &self.sagas;
            let mut kept = HashSet::new();
            self.finished
                .retain(|id| sagas.contains_key(id) && kept.insert(id.clone()));
        }
    }
}

/// A registered waiter: unregisters itself when the wait ends, however it
/// ends.
struct Waiter<'a> {
    view: &'a SagaView,
    saga_id: &'a str,
    token: u64,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let mut inner = self.view.lock();
        if let Some(waiting) = inner.waiters.get_mut(self.saga_id) {
            waiting.retain(|(t, _)| *t != self.token);
            if waiting.is_empty() {
                inner.waiters.remove(self.saga_id);
            }
        }
    }
}

/// Shared, cheap to clone.
#[derive(Clone)]
pub struct SagaView {
    inner: Arc<Mutex<Inner>>,
    cap: usize,
    metrics: ViewMetrics,
}

impl Default for SagaView {
    fn default() -> Self {
        Self::new(MAX_SAGAS, ViewMetrics::default())
    }
}

fn status_after(kind: LifecycleKind, current: &str) -> String {
    match kind {
        LifecycleKind::Compensating => "compensating",
        LifecycleKind::Completed => "completed",
        LifecycleKind::Compensated => "compensated",
        LifecycleKind::Failed => "failed",
        LifecycleKind::Resumed | LifecycleKind::Started => "running",
        _ => return current.to_owned(),
    }
    .to_owned()
}

impl SagaView {
    /// A view holding at most `cap` sagas.
    pub fn new(cap: usize, metrics: ViewMetrics) -> Self {
        Self {
            inner: Arc::default(),
            cap: cap.max(1),
            metrics,
        }
    }

    /// Sagas held now.
    pub fn len(&self) -> usize {
        self.lock().sagas.len()
    }

    /// Whether the view holds no saga.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data; keep serving it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn apply(&self, event: SagaEvent) {
        let mut inner = self.lock();
        match event {
            SagaEvent::Lifecycle(e) => {
                if !inner.seen.insert(e.event_id.clone()) {
                    return;
                }
                if !inner.sagas.contains_key(&e.saga_id) {
                    inner.arrived.push_back(e.saga_id.clone());
                }
                let id = e.saga_id.clone();
                let before = inner.key_of(&id);
                let s = inner
                    .sagas
                    .entry(e.saga_id.clone())
                    .or_insert_with(|| SagaSummary {
                        saga_id: e.saga_id.clone(),
                        saga_type: e.saga_type.clone(),
                        saga_version: e.saga_version,
                        status: "running".to_owned(),
                        current_step: None,
                        started_at: e.at,
                        updated_at: e.at,
                        result: None,
                        history: VecDeque::new(),
                    });
                s.status = status_after(e.kind, &s.status);
                if matches!(
                    e.kind,
                    LifecycleKind::StepStarted | LifecycleKind::CompensationStepStarted
                ) {
                    s.current_step = e.step.clone();
                }
                s.updated_at = s.updated_at.max(e.at);
                let dropped = if s.history.len() == HISTORY {
                    s.history.pop_front()
                } else {
                    None
                };
                s.history.push_back(e);
                if let Some(old) = dropped {
                    inner.seen.remove(&old.event_id);
                }
                let after = inner.key_of(&id);
                inner.reindex(before, after);
                inner.evict(self.cap, &self.metrics);
                self.metrics.sagas.set(inner.sagas.len() as i64);
            }
            SagaEvent::Result(r) => {
                let id = r.saga_id.clone();
                let before = inner.key_of(&id);
                inner.reindex(before, None);
                if let Some(s) = inner.sagas.get_mut(&id) {
                    // The same result twice (applied by the owner in this
                    // process, then read from the topic) changes nothing.
                    if s.result.as_ref() == Some(&r) {
                        return;
                    }
                    s.result = Some(r);
                } else {
                    inner.arrived.push_back(id.clone());
                    inner.sagas.insert(
                        id.clone(),
                        SagaSummary {
                            saga_id: id.clone(),
                            saga_type: r.saga_type.clone(),
                            saga_version: r.saga_version,
                            status: format!("{:?}", r.status).to_lowercase(),
                            current_step: None,
                            started_at: r.started_at,
                            updated_at: r.ended_at,
                            result: Some(r),
                            history: VecDeque::new(),
                        },
                    );
                }
                if let Some(waiting) = inner.waiters.remove(&id)
                    && let Some(s) = inner.sagas.get(&id)
                {
                    for (_, tx) in waiting {
                        let _ = tx.send(s.clone());
                    }
                }
                inner.finished.push_back(id);
                inner.evict(self.cap, &self.metrics);
                self.metrics.sagas.set(inner.sagas.len() as i64);
            }
        }
    }

    /// Whether the saga event a record carries is applied already, judged by
    /// its headers alone: the owner in this process applies its own events
    /// as it sends them, and the topic brings each back to the follower,
    /// which then need not decode it (Avro decoding was 2.2 % of the stack's
    /// CPU at 100 sagas in flight). A lifecycle id `apply` has seen, or the
    /// result of a saga that has one (a saga ends once), changes nothing.
    fn has_applied(&self, message_id: &str, message_type: Option<&str>) -> bool {
        let inner = self.lock();
        if message_type == Some("SagaResult") {
            return message_id
                .strip_suffix("/result")
                .and_then(|saga| inner.sagas.get(saga))
                .is_some_and(|s| s.result.is_some());
        }
        inner.seen.contains(message_id)
    }

    /// Sets `sagaflow_saga_oldest_running_age_seconds` for `now_ms`
    /// (milliseconds since the Unix epoch): one look at the first entry of
    /// each type's index, not a pass over the view.
    pub fn update_oldest_age(&self, now_ms: i64) {
        let inner = self.lock();
        for (saga_type, open) in &inner.open {
            let age = open.first().map_or(0.0, |(started, _)| {
                (now_ms - started).max(0) as f64 / 1000.0
            });
            self.metrics
                .oldest_running_age
                .with_label_values(&[saga_type.as_str()])
                .set(age);
        }
    }

    pub fn get(&self, saga_id: &str) -> Option<SagaSummary> {
        self.lock().sagas.get(saga_id).cloned()
    }

    /// Sagas filtered by type and status, newest first, without history.
    /// Holds the lock for one pass over the view and clones only the
    /// `limit` sagas it returns.
    pub fn list(
        &self,
        saga_type: Option<&str>,
        status: Option<&str>,
        limit: usize,
    ) -> Vec<SagaSummary> {
        if limit == 0 {
            return Vec::new();
        }
        let inner = self.lock();
        // The worst of the best `limit` so far on top: oldest, then the
        // largest id.
        let mut best: BinaryHeap<(Reverse<i64>, &str)> = BinaryHeap::with_capacity(limit + 1);
        for s in inner.sagas.values() {
            if saga_type.is_some_and(|t| s.saga_type != t)
                || status.is_some_and(|st| s.status != st)
            {
                continue;
            }
            let key = (Reverse(s.updated_at), s.saga_id.as_str());
            if best.len() == limit && best.peek().is_some_and(|worst| key >= *worst) {
                continue;
            }
            best.push(key);
            if best.len() > limit {
                best.pop();
            }
        }
        best.into_sorted_vec()
            .into_iter()
            .filter_map(|(_, id)| inner.sagas.get(id))
            .map(|s| SagaSummary {
                saga_id: s.saga_id.clone(),
                saga_type: s.saga_type.clone(),
                saga_version: s.saga_version,
                status: s.status.clone(),
                current_step: s.current_step.clone(),
                started_at: s.started_at,
                updated_at: s.updated_at,
                result: s.result.clone(),
                history: VecDeque::new(),
            })
            .collect()
    }

    /// Waits until the saga has a result, or `timeout` passes. Only the
    /// saga's own result wakes the waiter; a waiter that times out or is
    /// dropped (its caller gone) leaves nothing behind.
    pub async fn wait_for_result(&self, saga_id: &str, timeout: Duration) -> Option<SagaSummary> {
        let (rx, token) = {
            let mut inner = self.lock();
            if let Some(s) = inner.sagas.get(saga_id).filter(|s| s.result.is_some()) {
                return Some(s.clone());
            }
            let (tx, rx) = oneshot::channel();
            inner.next_waiter += 1;
            let token = inner.next_waiter;
            inner
                .waiters
                .entry(saga_id.to_owned())
                .or_default()
                .push((token, tx));
            (rx, token)
        };
        let _registered = Waiter {
            view: self,
            saga_id,
            token,
        };
        tokio::time::timeout(timeout, rx).await.ok()?.ok()
    }

    /// Requests waiting for a result now, over all sagas.
    pub fn waiting(&self) -> usize {
        self.lock().waiters.values().map(Vec::len).sum()
    }

    /// Follows the saga events topic from the beginning until shutdown.
    pub async fn follow(
        self,
        kafka: KafkaConfig,
        topic: String,
        partitions: i32,
        codec: Arc<Codec>,
        lag: prometheus::IntGaugeVec,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), String> {
        // Reported as consumer `sagaflow-view` (the group id is per process).
        let consumer: StreamConsumer<LagContext> = kafka
            .consumer_with_context(
                &format!("sagaflow-view-{}", uuid::Uuid::new_v4()),
                LagContext(LagGauge::new(lag, "sagaflow-view")),
            )
            .map_err(|e| e.to_string())?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(&topic, p, Offset::Beginning)
                .map_err(|e| e.to_string())?;
        }
        consumer.assign(&tpl).map_err(|e| e.to_string())?;
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    if *shutdown.borrow() {
                        return Ok(());
                    }
                }
                m = consumer.recv() => match m {
                    Ok(m) => {
                        let Some(bytes) = m.payload() else { continue };
                        if let Some(id) = header(&m, header_names::MESSAGE_ID)
                            && self.has_applied(id, header(&m, header_names::MESSAGE_TYPE))
                        {
                            continue;
                        }
                        match codec.decode_saga_event(&topic, bytes).await {
                            Ok(e) => self.apply(e),
                            Err(e) => warn!(offset = m.offset(), error = %e, "unreadable saga event; skipped by the view"),
                        }
                    }
                    Err(e) => {
                        debug!(error = %e, "saga view consumer");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    }
}

/// A header of `m` as text, without copying it.
fn header<'m>(m: &'m impl Message, name: &str) -> Option<&'m str> {
    m.headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| std::str::from_utf8(h.value?).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sagaflow_codec::messages::SagaStatus;

    fn ev(id: &str, seq: u32, kind: LifecycleKind, step: Option<&str>) -> SagaEvent {
        SagaEvent::Lifecycle(SagaLifecycleEvent {
            event_id: format!("{id}/{seq}"),
            saga_id: id.into(),
            saga_type: "order-checkout".into(),
            saga_version: 1,
            kind,
            step: step.map(Into::into),
            attempt: None,
            detail: None,
            at: i64::from(seq),
            ..Default::default()
        })
    }

    fn result(id: &str, at: i64) -> SagaEvent {
        ended_as(id, SagaStatus::Completed, at)
    }

    /// The result of saga `id`, started at 1, ended `status` at `at`.
    fn ended_as(id: &str, status: SagaStatus, at: i64) -> SagaEvent {
        SagaEvent::Result(SagaResult {
            saga_id: id.into(),
            saga_type: "order-checkout".into(),
            saga_version: 1,
            status,
            output: serde_json::json!({}),
            error: None,
            started_at: 1,
            ended_at: at,
        })
    }

    fn oldest_age(registry: &prometheus::Registry) -> Option<f64> {
        registry
            .gather()
            .into_iter()
            .find(|f| f.name() == "sagaflow_saga_oldest_running_age_seconds")
            .map(|f| f.get_metric()[0].get_gauge().get_value())
    }

    #[test]
    fn oldest_running_age_follows_starts_ends_and_evictions() {
        let registry = prometheus::Registry::new();
        let view = SagaView::new(3, ViewMetrics::new(&registry));
        view.update_oldest_age(10_000);
        assert_eq!(oldest_age(&registry), None, "no saga type seen yet");
        // `at` is the sequence number in ms: a started at 1, b at 2.
        view.apply(ev("a", 1, LifecycleKind::Started, None));
        view.apply(ev("b", 2, LifecycleKind::Started, None));
        view.update_oldest_age(5_001);
        assert_eq!(oldest_age(&registry), Some(5.0));
        // Compensating is still not ended.
        view.apply(ev("a", 3, LifecycleKind::Compensating, None));
        view.update_oldest_age(5_001);
        assert_eq!(oldest_age(&registry), Some(5.0));
        // a ends: b (started at 2) is the oldest.
        view.apply(ev("a", 4, LifecycleKind::Compensated, None));
        view.update_oldest_age(5_002);
        assert_eq!(oldest_age(&registry), Some(5.0));
        // b's result arrives: nothing open, the gauge goes back to 0.
        view.apply(result("b", 9));
        view.update_oldest_age(5_002);
        assert_eq!(oldest_age(&registry), Some(0.0));
        // Running sagas evicted from the view leave the index too.
        for i in 0..5 {
            view.apply(ev(&format!("r{i}"), 100 + i, LifecycleKind::Started, None));
        }
        view.update_oldest_age(1_000_000);
        let oldest_kept = 1_000_000.0 - 102.0;
        assert_eq!(oldest_age(&registry), Some(oldest_kept / 1000.0));
        // A clock behind the start never reads negative.
        view.update_oldest_age(0);
        assert_eq!(oldest_age(&registry), Some(0.0));
    }

    #[test]
    fn an_event_applied_by_the_owner_and_read_from_the_topic_counts_once() {
        let registry = prometheus::Registry::new();
        let view = SagaView::new(100, ViewMetrics::new(&registry));
        for _ in 0..2 {
            view.apply(ev("s", 1, LifecycleKind::Started, None));
            view.apply(result("s", 2));
        }
        let s = view.get("s").expect("held");
        assert_eq!(s.history.len(), 1);
        assert_eq!(
            view.lock().finished.len(),
            1,
            "one place in the eviction queue"
        );
    }

    #[test]
    fn running_sagas_are_bounded_too_finished_ones_go_first() {
        let registry = prometheus::Registry::new();
        let view = SagaView::new(100, ViewMetrics::new(&registry));
        // Far more running sagas than the cap: the view stays at the cap.
        for i in 0..1_000u32 {
            view.apply(ev(&format!("r{i}"), 1, LifecycleKind::Started, None));
        }
        assert_eq!(view.len(), 100);
        assert!(view.get("r0").is_none(), "the oldest went first");
        assert!(view.get("r999").is_some());
        // A finished saga is dropped before any running one.
        view.apply(ev("f", 1, LifecycleKind::Started, None));
        view.apply(result("f", 2));
        view.apply(ev("new", 1, LifecycleKind::Started, None));
        assert!(view.get("f").is_none(), "the finished saga was dropped");
        assert!(view.get("r999").is_some() && view.get("new").is_some());
        assert_eq!(view.len(), 100);
        let text = {
            let mut out = Vec::new();
            prometheus::Encoder::encode(
                &prometheus::TextEncoder::new(),
                &registry.gather(),
                &mut out,
            )
            .unwrap();
            String::from_utf8(out).unwrap()
        };
        assert!(text.contains("sagaflow_view_sagas 100"), "{text}");
        assert!(
            text.contains("sagaflow_view_evictions_total{status=\"running\"} 901"),
            "{text}"
        );
        assert!(
            text.contains("sagaflow_view_evictions_total{status=\"finished\"} 1"),
            "{text}"
        );
        // The bookkeeping queues stay bounded as well.
        for i in 0..10_000u32 {
            view.apply(ev(&format!("x{i}"), 1, LifecycleKind::Started, None));
        }
        let inner = view.lock();
        assert!(inner.arrived.len() <= 200 && inner.seen.len() <= 200);
    }

    #[test]
    fn list_keeps_the_newest_within_the_limit_in_order() {
        let view = SagaView::default();
        for i in 0..50u32 {
            view.apply(ev(&format!("s{i:02}"), i, LifecycleKind::Started, None));
        }
        view.apply(ev("t", 7, LifecycleKind::Started, None));
        let ids = |v: Vec<SagaSummary>| v.into_iter().map(|s| s.saga_id).collect::<Vec<_>>();
        assert_eq!(ids(view.list(None, None, 3)), ["s49", "s48", "s47"]);
        assert_eq!(
            ids(view.list(None, Some("running"), 100)).len(),
            51,
            "all of them when fewer than the limit"
        );
        let around_7 = ids(view.list(None, None, 51));
        let at = around_7.iter().position(|i| i == "s07").unwrap();
        assert_eq!(around_7[at + 1], "t", "ties by updated_at go by id");
        assert!(view.list(Some("other"), None, 10).is_empty());
        assert!(view.list(None, None, 0).is_empty());
        assert!(view.list(None, None, 1)[0].history.is_empty());
    }

    #[test]
    fn events_applied_already_are_known_by_their_headers() {
        let view = SagaView::default();
        view.apply(ev("s1", 1, LifecycleKind::Started, None));
        assert!(view.has_applied("s1/1", Some("SagaLifecycleEvent")));
        assert!(view.has_applied("s1/1", None));
        assert!(!view.has_applied("s1/2", Some("SagaLifecycleEvent")));
        assert!(!view.has_applied("s1/result", Some("SagaResult")));
        view.apply(result("s1", 2));
        assert!(view.has_applied("s1/result", Some("SagaResult")));
        assert!(!view.has_applied("s2/result", Some("SagaResult")));
        // A lifecycle id is never taken for a result, nor the other way.
        assert!(!view.has_applied("s1/result", Some("SagaLifecycleEvent")));
        assert!(!view.has_applied("s1/1", Some("SagaResult")));
    }

    #[tokio::test]
    async fn follows_status_dedupes_and_wakes_waiters() {
        let view = SagaView::default();
        view.apply(ev("s1", 1, LifecycleKind::Started, None));
        view.apply(ev("s1", 2, LifecycleKind::StepStarted, Some("reserve")));
        view.apply(ev("s1", 2, LifecycleKind::StepStarted, Some("reserve")));
        let s = view.get("s1").unwrap();
        assert_eq!(s.status, "running");
        assert_eq!(s.current_step.as_deref(), Some("reserve"));
        assert_eq!(s.history.len(), 2, "duplicate event ids are dropped");

        let waiter = {
            let view = view.clone();
            tokio::spawn(async move { view.wait_for_result("s1", Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        view.apply(ev("s1", 3, LifecycleKind::Compensating, None));
        view.apply(ev("s1", 4, LifecycleKind::Compensated, None));
        view.apply(ended_as("s1", SagaStatus::Compensated, 4));
        let done = waiter.await.unwrap().expect("result arrives");
        assert_eq!(done.status, "compensated");
        assert_eq!(
            view.list(Some("order-checkout"), Some("compensated"), 10)
                .len(),
            1
        );
        assert!(view.list(None, Some("running"), 10).is_empty());
        assert!(
            view.wait_for_result("nope", Duration::from_millis(10))
                .await
                .is_none()
        );
        assert_eq!(view.waiting(), 0, "a timed-out waiter leaves nothing");
    }

    #[tokio::test]
    async fn a_waiter_wakes_for_its_own_saga_only_and_leaves_nothing_behind() {
        let view = SagaView::default();
        let waiter = {
            let view = view.clone();
            tokio::spawn(async move { view.wait_for_result("mine", Duration::from_secs(5)).await })
        };
        while view.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        for i in 0..50 {
            view.apply(result(&format!("other-{i}"), 2));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !waiter.is_finished(),
            "other sagas' results do not end the wait"
        );
        assert_eq!(view.waiting(), 1);
        view.apply(result("mine", 7));
        let got = waiter.await.unwrap().expect("its result");
        assert_eq!(got.saga_id, "mine");
        assert_eq!(got.result.expect("a result").ended_at, 7);
        assert_eq!(view.waiting(), 0);

        // A caller that goes away (its request dropped) unregisters.
        let gone = {
            let view = view.clone();
            tokio::spawn(
                async move { view.wait_for_result("never", Duration::from_secs(60)).await },
            )
        };
        while view.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        gone.abort();
        let _ = gone.await;
        assert_eq!(view.waiting(), 0, "an aborted wait leaves nothing");
    }
}
