//! Custom handlers through the SDK get retries, timeouts, idempotency and
//! caching from the executor.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{cmd, metric};
use sagaflow_adapter::{
    AdapterCommand, AdapterMetrics, AdapterOutcome, CacheKey, CallContext, CommandHandler,
    Executor, ExecutorSettings, OutcomeKind,
};
use serde_json::json;

/// Fails transiently `fail_first` times, then succeeds; optionally slow.
struct Flaky {
    calls: AtomicUsize,
    fail_first: usize,
    retry_after: Option<Duration>,
    sleep: Duration,
}

impl Flaky {
    fn new(fail_first: usize) -> Arc<Self> {
        Arc::new(Self {
            calls: AtomicUsize::new(0),
            fail_first,
            retry_after: None,
            sleep: Duration::ZERO,
        })
    }
}

#[async_trait::async_trait]
impl CommandHandler for Flaky {
    async fn handle(&self, cmd: &AdapterCommand, ctx: &CallContext) -> AdapterOutcome {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.sleep).await;
        if cmd.input["refuse"] == json!(true) {
            return AdapterOutcome::business_failure("refused", "no");
        }
        if n < self.fail_first {
            return AdapterOutcome::transient("busy", "try later")
                .with_retry_after(self.retry_after);
        }
        AdapterOutcome::success(json!({"n": n, "attempt": ctx.attempt}))
    }

    fn cache_key(&self, cmd: &AdapterCommand) -> Option<CacheKey> {
        (cmd.operation == "lookup").then(|| CacheKey {
            key: cmd.input.to_string(),
            ttl: Duration::from_secs(30),
        })
    }
}

fn settings() -> ExecutorSettings {
    let mut s = ExecutorSettings::new("custom");
    s.retry.initial_backoff = Duration::from_millis(5);
    s.retry.max_backoff = Duration::from_millis(20);
    s
}

fn exec(handler: Arc<Flaky>) -> (Executor, prometheus::Registry) {
    let registry = prometheus::Registry::new();
    let metrics = AdapterMetrics::register(&registry).unwrap();
    (Executor::new(settings(), handler, metrics), registry)
}

#[tokio::test]
async fn transient_failures_are_retried_for_custom_handlers() {
    let h = Flaky::new(2);
    let (e, registry) = exec(Arc::clone(&h));
    let out = e.execute(&cmd("do", "a", json!({}))).await;
    assert_eq!(out.kind, OutcomeKind::Success);
    assert_eq!(out.data, json!({"n": 2, "attempt": 3}));
    assert_eq!(h.calls.load(Ordering::SeqCst), 3);
    assert_eq!(
        metric(
            &registry,
            "sagaflow_adapter_retries_total",
            &[("service", "custom")]
        ),
        2.0
    );
    assert_eq!(
        metric(
            &registry,
            "sagaflow_adapter_calls_total",
            &[("status_class", "transient_failure")]
        ),
        2.0
    );
}

#[tokio::test]
async fn retry_after_hint_from_a_handler_is_honoured() {
    let h = Arc::new(Flaky {
        calls: AtomicUsize::new(0),
        fail_first: 1,
        retry_after: Some(Duration::from_millis(300)),
        sleep: Duration::ZERO,
    });
    let (e, _) = exec(Arc::clone(&h));
    let started = Instant::now();
    assert_eq!(
        e.execute(&cmd("do", "a", json!({}))).await.kind,
        OutcomeKind::Success
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn business_failure_is_final_and_remembered() {
    let h = Flaky::new(0);
    let (e, _) = exec(Arc::clone(&h));
    let c = cmd("do", "a", json!({"refuse": true}));
    assert_eq!(e.execute(&c).await.kind, OutcomeKind::BusinessFailure);
    assert_eq!(e.execute(&c).await.kind, OutcomeKind::BusinessFailure);
    assert_eq!(h.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn slow_handler_is_cut_at_the_command_deadline() {
    let h = Arc::new(Flaky {
        calls: AtomicUsize::new(0),
        fail_first: 0,
        retry_after: None,
        sleep: Duration::from_secs(10),
    });
    let (e, _) = exec(Arc::clone(&h));
    let mut c = cmd("do", "a", json!({}));
    c.timeout_ms = 200;
    let started = Instant::now();
    let out = e.execute(&c).await;
    assert_eq!(out.error_code(), Some("timeout"));
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn custom_cache_keys_are_used() {
    let h = Flaky::new(0);
    let (e, registry) = exec(Arc::clone(&h));
    let a = e.execute(&cmd("lookup", "a", json!({"q": 1}))).await;
    let b = e.execute(&cmd("lookup", "b", json!({"q": 1}))).await;
    assert_eq!(a.data, b.data);
    assert_eq!(h.calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        metric(&registry, "sagaflow_adapter_cache_hits_total", &[]),
        1.0
    );
}

#[tokio::test]
async fn persistent_store_can_replace_the_in_memory_one() {
    #[derive(Default)]
    struct Recording(std::sync::Mutex<Vec<String>>);
    #[async_trait::async_trait]
    impl sagaflow_adapter::IdempotencyStore for Recording {
        async fn get(&self, _id: &str) -> Option<AdapterOutcome> {
            None
        }
        async fn put(&self, id: &str, _o: &AdapterOutcome) {
            self.0.lock().unwrap().push(id.to_owned());
        }
    }
    let store = Arc::new(Recording::default());
    let h = Flaky::new(0);
    let (e, _) = exec(Arc::clone(&h));
    let e =
        e.with_idempotency_store(Arc::clone(&store) as Arc<dyn sagaflow_adapter::IdempotencyStore>);
    e.execute(&cmd("do", "a", json!({}))).await;
    assert_eq!(
        *store.0.lock().unwrap(),
        vec!["order-checkout:a/do".to_owned()],
        "stored under the Idempotency-Key: every attempt of the step shares it"
    );
}
