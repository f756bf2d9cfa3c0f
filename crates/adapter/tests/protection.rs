//! Rate limit, concurrency limit and circuit breaker against a real server.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Backend, Reply, cmd, executor, metric};
use sagaflow_adapter::OutcomeKind;
use sagaflow_adapter::protection::CircuitState;
use serde_json::json;

fn config(base: &str, protection: &str) -> String {
    format!(
        r#"
service: inventory
base-urls: ["{base}"]
retry:
  max-attempts: 1
protection:
{protection}
operations:
  reserve:
    rest:
      method: POST
      path: /reserve/{{{{ input.sku }}}}
"#
    )
}

fn reserve(id: &str) -> sagaflow_adapter::AdapterCommand {
    cmd("reserve", id, json!({"sku": "s-1"}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_spaces_calls() {
    let backend = Backend::start(|_, _| Reply::status(204)).await;
    let (exec, registry) = executor(&config(
        &backend.url(),
        "  rate-limit: { per-second: 5, burst: 1 }",
    ));
    let exec = Arc::new(exec);
    let started = Instant::now();
    let tasks: Vec<_> = (0..5)
        .map(|i| {
            let exec = Arc::clone(&exec);
            tokio::spawn(async move { exec.execute(&reserve(&format!("r-{i}"))).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().kind, OutcomeKind::Success);
    }
    let mut at: Vec<Instant> = backend.seen().iter().map(|s| s.at).collect();
    at.sort();
    assert_eq!(at.len(), 5);
    // 5 calls at 5/s with burst 1: the last is ≥ 4 × 200 ms after the first.
    assert!(
        at[4] - at[0] >= Duration::from_millis(750),
        "calls not spaced: {:?}",
        at[4] - at[0]
    );
    for pair in at.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(150),
            "{:?}",
            pair[1] - pair[0]
        );
    }
    assert!(started.elapsed() >= Duration::from_millis(750));
    assert!(metric(&registry, "sagaflow_adapter_rate_limit_waits_total", &[]) >= 4.0);
}

#[tokio::test]
async fn rate_limit_wait_past_deadline_fails_transient() {
    let backend = Backend::start(|_, _| Reply::status(204)).await;
    let (exec, _) = executor(&config(
        &backend.url(),
        "  rate-limit: { per-second: 1, burst: 1 }",
    ));
    assert_eq!(exec.execute(&reserve("a")).await.kind, OutcomeKind::Success);
    let mut c = reserve("b");
    c.timeout_ms = 200;
    let out = exec.execute(&c).await;
    assert_eq!(out.kind, OutcomeKind::TransientFailure);
    assert_eq!(out.error_code(), Some("rate_limited"));
    assert_eq!(backend.total(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limit_bounds_in_flight_calls() {
    let backend = Backend::start(|_, _| Reply::status(204).delay(Duration::from_millis(150))).await;
    let (exec, _) = executor(&config(&backend.url(), "  max-concurrency: 2"));
    let exec = Arc::new(exec);
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let exec = Arc::clone(&exec);
            tokio::spawn(async move { exec.execute(&reserve(&format!("c-{i}"))).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().kind, OutcomeKind::Success);
    }
    assert_eq!(backend.total(), 6);
    assert_eq!(backend.max_in_flight(), 2);
}

#[tokio::test]
async fn circuit_opens_fails_fast_then_half_opens_and_closes() {
    let (logs, _guard) = common::capture_logs();
    // Fails for the first 4 requests, healthy afterwards.
    let backend = Backend::start(|n, _| {
        if n < 4 {
            Reply::status(503)
        } else {
            Reply::status(204)
        }
    })
    .await;
    let (exec, registry) = executor(&config(
        &backend.url(),
        "  circuit-breaker: { failure-threshold: 3, cool-down: 400ms }",
    ));
    let gauge = |r: &prometheus::Registry| {
        metric(
            r,
            "sagaflow_adapter_circuit_state",
            &[("service", "inventory")],
        )
    };
    for i in 0..3 {
        let out = exec.execute(&reserve(&format!("f-{i}"))).await;
        assert_eq!(out.error_code(), Some("http_503"));
    }
    assert_eq!(exec.circuit_state(), CircuitState::Open);
    assert_eq!(gauge(&registry), 2.0);
    let started = Instant::now();
    let out = exec.execute(&reserve("fast")).await;
    assert_eq!(out.kind, OutcomeKind::TransientFailure);
    assert_eq!(out.error_code(), Some("circuit_open"));
    assert!(started.elapsed() < Duration::from_millis(100), "fails fast");
    assert_eq!(backend.total(), 3, "no call while open");

    // After the cool-down one probe goes through; it fails (4th request) → open again.
    tokio::time::sleep(Duration::from_millis(450)).await;
    let out = exec.execute(&reserve("probe-1")).await;
    assert_eq!(out.error_code(), Some("http_503"));
    assert_eq!(backend.total(), 4);
    assert_eq!(exec.circuit_state(), CircuitState::Open);
    assert_eq!(
        exec.execute(&reserve("still-open")).await.error_code(),
        Some("circuit_open")
    );

    // Next probe succeeds → closed.
    tokio::time::sleep(Duration::from_millis(450)).await;
    let out = exec.execute(&reserve("probe-2")).await;
    assert_eq!(out.kind, OutcomeKind::Success, "{out:?}");
    assert_eq!(exec.circuit_state(), CircuitState::Closed);
    assert_eq!(gauge(&registry), 0.0);
    assert_eq!(
        exec.execute(&reserve("after")).await.kind,
        OutcomeKind::Success
    );
    assert_eq!(backend.total(), 6);
    assert_eq!(
        metric(
            &registry,
            "sagaflow_adapter_calls_total",
            &[("status_class", "circuit_open")]
        ),
        2.0
    );
    // Each change of state is logged, with the service and, when it opens,
    // the failure that opened it: an operator reading the log sees why
    // commands failed fast, and since when.
    let logs = logs.text();
    let transitions: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("circuit breaker"))
        .collect();
    assert_eq!(transitions.len(), 3, "{logs}");
    for (line, level, what) in [
        (transitions[0], " WARN ", "circuit breaker opened"),
        (
            transitions[1],
            " WARN ",
            "circuit breaker probe failed; open again",
        ),
        (transitions[2], " INFO ", "circuit breaker closed"),
    ] {
        assert!(line.contains(level) && line.contains(what), "{line}");
        assert!(line.contains("service=\"inventory\""), "{line}");
    }
    for line in &transitions[..2] {
        assert!(line.contains("last_error=\"http_503\""), "{line}");
        assert!(line.contains("cool_down_ms=400"), "{line}");
    }
    assert!(
        transitions[0].contains("consecutive_failures=3"),
        "{}",
        transitions[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_lets_exactly_one_probe_through() {
    let backend = Backend::start(|n, _| {
        if n < 1 {
            Reply::status(500)
        } else {
            Reply::status(204).delay(Duration::from_millis(300))
        }
    })
    .await;
    let (exec, _) = executor(&config(
        &backend.url(),
        "  circuit-breaker: { failure-threshold: 1, cool-down: 200ms }",
    ));
    exec.execute(&reserve("f")).await;
    assert_eq!(exec.circuit_state(), CircuitState::Open);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let exec = Arc::new(exec);
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let exec = Arc::clone(&exec);
            tokio::spawn(async move { exec.execute(&reserve(&format!("p-{i}"))).await })
        })
        .collect();
    let mut ok = 0;
    let mut open = 0;
    for t in tasks {
        match t.await.unwrap().error_code() {
            None => ok += 1,
            Some("circuit_open") => open += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((ok, open), (1, 3));
    assert_eq!(backend.total(), 2);
}
