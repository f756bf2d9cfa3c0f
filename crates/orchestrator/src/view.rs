//! The saga view: every instance reads `sagaflow.saga-events` (lifecycle
//! events and results of all sagas) into a small in-memory query model, so
//! any instance answers `GET /v1/sagas/...` and the synchronous facade,
//! whichever instance owns the saga. Eventually consistent by a few ms.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use sagaflow_bus::KafkaConfig;
use sagaflow_bus::lag::{LagContext, LagGauge};
use sagaflow_codec::messages::{LifecycleKind, SagaLifecycleEvent, SagaResult};
use sagaflow_codec::{Codec, SagaEvent};
use serde::Serialize;
use tokio::sync::{broadcast, watch};
use tracing::{debug, warn};

/// Lifecycle events kept per saga.
const HISTORY: usize = 200;
/// Sagas kept in the view; the oldest finished ones are dropped first.
const MAX_SAGAS: usize = 100_000;

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
    finished: VecDeque<String>,
}

/// Shared, cheap to clone.
#[derive(Clone)]
pub struct SagaView {
    inner: Arc<Mutex<Inner>>,
    ended: broadcast::Sender<String>,
}

impl Default for SagaView {
    fn default() -> Self {
        Self {
            inner: Arc::default(),
            ended: broadcast::channel(1024).0,
        }
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
                if s.history.len() == HISTORY {
                    s.history.pop_front();
                }
                s.history.push_back(e);
            }
            SagaEvent::Result(r) => {
                let id = r.saga_id.clone();
                if let Some(s) = inner.sagas.get_mut(&id) {
                    s.result = Some(r);
                } else {
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
                inner.finished.push_back(id.clone());
                while inner.sagas.len() > MAX_SAGAS {
                    let Some(old) = inner.finished.pop_front() else {
                        break;
                    };
                    if let Some(s) = inner.sagas.remove(&old) {
                        for e in s.history {
                            inner.seen.remove(&e.event_id);
                        }
                    }
                }
                drop(inner);
                let _ = self.ended.send(id);
            }
        }
    }

    pub fn get(&self, saga_id: &str) -> Option<SagaSummary> {
        self.lock().sagas.get(saga_id).cloned()
    }

    /// Sagas filtered by type and status, newest first, without history.
    pub fn list(
        &self,
        saga_type: Option<&str>,
        status: Option<&str>,
        limit: usize,
    ) -> Vec<SagaSummary> {
        let inner = self.lock();
        let mut out: Vec<SagaSummary> = inner
            .sagas
            .values()
            .filter(|s| saga_type.is_none_or(|t| s.saga_type == t))
            .filter(|s| status.is_none_or(|st| s.status == st))
            .map(|s| SagaSummary {
                history: VecDeque::new(),
                ..s.clone()
            })
            .collect();
        out.sort_by(|a, b| {
            b.updated_at
                .cmp(&a.updated_at)
                .then(a.saga_id.cmp(&b.saga_id))
        });
        out.truncate(limit);
        out
    }

    /// Waits until the saga has a result, or `timeout` passes.
    pub async fn wait_for_result(&self, saga_id: &str, timeout: Duration) -> Option<SagaSummary> {
        let mut rx = self.ended.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(s) = self.get(saga_id)
                && s.result.is_some()
            {
                return Some(s);
            }
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Err(_) => return None,
                Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => continue,
                Ok(Err(broadcast::error::RecvError::Closed)) => return None,
            }
        }
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
        })
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
        view.apply(SagaEvent::Result(SagaResult {
            saga_id: "s1".into(),
            saga_type: "order-checkout".into(),
            saga_version: 1,
            status: SagaStatus::Compensated,
            output: serde_json::json!({}),
            error: None,
            started_at: 1,
            ended_at: 4,
        }));
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
    }
}
