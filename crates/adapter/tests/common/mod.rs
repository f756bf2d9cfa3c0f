//! What the adapter's integration tests share: the recording fake backend
//! (real HTTP servers on 127.0.0.1:0 that record every request and answer
//! from a script; no mocks of HTTP anywhere), commands, executors and
//! their metrics.
#![allow(dead_code, unreachable_pub, unused_imports)]

use sagaflow_adapter::{AdapterCommand, AdapterMetrics, Executor};
pub use sagaflow_test_support::backend::{FakeBackend as Backend, Reply, Seen};
use sagaflow_test_support::metrics;

/// A command for `operation` with a deterministic id.
pub fn cmd(operation: &str, id: &str, input: serde_json::Value) -> AdapterCommand {
    AdapterCommand {
        command_id: format!("order-checkout:{id}/{operation}/1"),
        saga_id: id.to_owned(),
        saga_type: "order-checkout".into(),
        step: operation.to_owned(),
        service: "test".into(),
        operation: operation.to_owned(),
        attempt: 1,
        input,
        timeout_ms: 10_000,
        traceparent: None,
        tracestate: None,
    }
}

/// Parses and validates `yaml`, builds an executor with fresh metrics.
pub fn executor(yaml: &str) -> (Executor, prometheus::Registry) {
    let cfg = sagaflow_adapter::config::parse_str(yaml, "test.yaml")
        .unwrap()
        .validate("test.yaml")
        .unwrap();
    let registry = prometheus::Registry::new();
    let metrics = AdapterMetrics::register(&registry).unwrap();
    (Executor::from_config(&cfg, metrics).unwrap(), registry)
}

/// Sum of a counter/gauge family's samples whose labels include `labels`
/// (a histogram's: how many observations).
pub fn metric(registry: &prometheus::Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .expect("metrics encode as text");
    metrics::value(&text, name, labels)
        .unwrap_or_else(|| metrics::sum(&text, &format!("{name}_count"), labels))
}

/// A retry section with tiny backoff so tests run fast.
pub const FAST_RETRY: &str =
    "retry:\n  max-attempts: 3\n  initial-backoff: 10ms\n  max-backoff: 50ms\n";

/// Everything logged on this thread, at every level, while the guard lives
/// (a `#[tokio::test]` runs on one thread).
#[derive(Clone, Default)]
pub struct LogBuf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl LogBuf {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for LogBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn capture_logs() -> (LogBuf, tracing::subscriber::DefaultGuard) {
    let logs = LogBuf::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    (logs, tracing::subscriber::set_default(subscriber))
}
