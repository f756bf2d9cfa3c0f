//! REST/JSON operations against a real local HTTP server.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::{Backend, FAST_RETRY, Reply, cmd, executor, metric};
use sagaflow_adapter::OutcomeKind;
use serde_json::json;

fn config(base: &str, extra: &str) -> String {
    format!(
        r#"
service: payments
base-urls: ["{base}/api"]
{FAST_RETRY}
protection:
  request-timeout: 2s
  default-command-timeout: 5s
  max-response-bytes: 4096
  max-concurrency: 8
{extra}
operations:
  charge:
    rest:
      method: POST
      path: /charges/{{{{ input.order_id }}}}
      query:
        currency: "{{{{ input.currency }}}}"
      headers:
        X-Saga: "{{{{ command.saga_type }}}}"
      body:
        amount: "{{{{ input.amount }}}}"
        reference: "{{{{ command.command_id }}}}"
        items: "{{{{ input.items }}}}"
      response:
        payment_id: /id
        state: /status/code
  refund:
    rest:
      method: DELETE
      path: /charges/{{{{ input.order_id }}}}
      statuses:
        success: [404]
  lookup:
    cacheable: {{ ttl: 30s }}
    rest:
      method: GET
      path: /customers/{{{{ input.customer }}}}
  raw:
    rest:
      method: GET
      path: /raw/{{{{ input.p | safe }}}}
  encoded:
    rest:
      method: GET
      path: /accounts/{{{{ input.id }}}}
"#
    )
}

fn charge(id: &str) -> sagaflow_adapter::AdapterCommand {
    cmd(
        "charge",
        id,
        json!({"order_id": id, "currency": "EUR", "amount": 12.5, "items": [{"sku": "a"}]}),
    )
}

#[tokio::test]
async fn success_is_mapped_and_request_is_rendered() {
    let backend = Backend::start(|_, _| {
        Reply::json(
            201,
            json!({"id": "p-1", "status": {"code": "captured"}, "noise": 1}),
        )
    })
    .await;
    let (exec, registry) = executor(&config(&backend.url(), ""));
    let mut c = charge("o-1");
    c.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
    let out = exec.execute(&c).await;
    assert_eq!(out.kind, OutcomeKind::Success, "{out:?}");
    assert_eq!(out.data, json!({"payment_id": "p-1", "state": "captured"}));
    assert_eq!(out.http_status, Some(201));
    assert!(out.error.is_none());

    let seen = backend.seen();
    assert_eq!(seen.len(), 1);
    let req = &seen[0];
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/api/charges/o-1");
    assert_eq!(req.query.as_deref(), Some("currency=EUR"));
    assert_eq!(req.header("x-saga").as_deref(), Some("order-checkout"));
    assert_eq!(
        req.header("idempotency-key").as_deref(),
        Some("order-checkout:o-1/charge")
    );
    // The HTTP call is a child span: same trace, its own span id.
    let tp = req.header("traceparent").unwrap_or_default();
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && !tp.contains("00f067aa0ba902b7"),
        "{tp}"
    );
    assert_eq!(
        req.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(
        req.json(),
        json!({"amount": 12.5, "reference": "order-checkout:o-1/charge/1", "items": [{"sku": "a"}]})
    );
    assert_eq!(
        metric(
            &registry,
            "sagaflow_adapter_calls_total",
            &[
                ("service", "payments"),
                ("operation", "charge"),
                ("status_class", "2xx")
            ]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &registry,
            "sagaflow_adapter_call_duration_seconds",
            &[("operation", "charge")]
        ),
        1.0
    );
}

#[tokio::test]
async fn no_traceparent_means_no_header() {
    let backend =
        Backend::start(|_, _| Reply::json(200, json!({"id": "x", "status": {"code": "c"}}))).await;
    let (exec, _) = executor(&config(&backend.url(), ""));
    exec.execute(&charge("o-1")).await;
    assert!(backend.seen()[0].header("traceparent").is_none());
}

#[tokio::test]
async fn business_failures_409_and_422_are_not_retried() {
    let backend = Backend::start(|n, _| {
        if n == 0 {
            Reply::json(409, json!({"error": "already charged"}))
        } else {
            Reply::json(422, json!({"error": "bad amount"}))
        }
    })
    .await;
    let (exec, _) = executor(&config(&backend.url(), ""));
    let out = exec.execute(&charge("o-1")).await;
    assert_eq!(out.kind, OutcomeKind::BusinessFailure);
    assert_eq!(out.error_code(), Some("http_409"));
    assert_eq!(out.http_status, Some(409));
    assert_eq!(out.data, json!({"error": "already charged"}));
    let out = exec.execute(&charge("o-2")).await;
    assert_eq!(out.kind, OutcomeKind::BusinessFailure);
    assert_eq!(out.error_code(), Some("http_422"));
    assert_eq!(
        backend.total(),
        2,
        "each failure hit the backend exactly once"
    );
}

#[tokio::test]
async fn configured_status_overrides_default() {
    let backend = Backend::start(|_, _| Reply::status(404)).await;
    let (exec, _) = executor(&config(&backend.url(), ""));
    let out = exec
        .execute(&cmd("refund", "o-1", json!({"order_id": "o-1"})))
        .await;
    assert_eq!(out.kind, OutcomeKind::Success, "{out:?}");
    assert_eq!(backend.seen()[0].method, "DELETE");
}

#[tokio::test]
async fn transient_retry_after_seconds_then_success() {
    let backend = Backend::start(|n, _| match n {
        0 => Reply::status(503).header("retry-after", "1"),
        _ => Reply::json(200, json!({"id": "p-2", "status": {"code": "ok"}})),
    })
    .await;
    let (exec, registry) = executor(&config(&backend.url(), ""));
    let started = Instant::now();
    let out = exec.execute(&charge("o-1")).await;
    assert_eq!(out.kind, OutcomeKind::Success, "{out:?}");
    let seen = backend.seen();
    assert_eq!(seen.len(), 2);
    let gap = seen[1].at - seen[0].at;
    assert!(
        gap >= Duration::from_millis(950),
        "Retry-After honoured, gap {gap:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(
        metric(
            &registry,
            "sagaflow_adapter_retries_total",
            &[("operation", "charge")]
        ),
        1.0
    );
}

#[tokio::test]
async fn transient_retry_after_http_date_is_honoured() {
    let backend = Backend::start(|n, _| match n {
        0 => {
            let at = SystemTime::now() + Duration::from_secs(2);
            Reply::status(429).header("retry-after", &httpdate::fmt_http_date(at))
        }
        _ => Reply::json(200, json!({"id": "p-3", "status": {"code": "ok"}})),
    })
    .await;
    let (exec, _) = executor(&config(&backend.url(), ""));
    let out = exec.execute(&charge("o-1")).await;
    assert_eq!(out.kind, OutcomeKind::Success, "{out:?}");
    let seen = backend.seen();
    assert_eq!(seen.len(), 2);
    // HTTP dates have one-second resolution: at least ~1 s must have passed.
    assert!(seen[1].at - seen[0].at >= Duration::from_millis(900));
}

#[tokio::test]
async fn retry_after_beyond_the_deadline_gives_up_early() {
    let backend = Backend::start(|_, _| Reply::status(503).header("retry-after", "30")).await;
    let (exec, _) = executor(&config(&backend.url(), ""));
    let mut c = charge("o-1");
    c.timeout_ms = 2_000;
    let started = Instant::now();
    let out = exec.execute(&c).await;
    assert_eq!(out.kind, OutcomeKind::TransientFailure);
    assert_eq!(out.error_code(), Some("http_503"));
    assert_eq!(backend.total(), 1);
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn transient_exhausted_is_reported_transient() {
    let backend = Backend::start(|_, _| Reply::status(500)).await;
    let yaml = config(&backend.url(), "").replace(
        "max-concurrency: 8",
        "max-concurrency: 8\n  circuit-breaker: { failure-threshold: 100 }",
    );
    let (exec, registry) = executor(&yaml);
    let out = exec.execute(&charge("o-1")).await;
    assert_eq!(out.kind, OutcomeKind::TransientFailure);
    assert_eq!(out.error_code(), Some("http_500"));
    assert_eq!(out.http_status, Some(500));
    assert_eq!(backend.total(), 3, "max-attempts: 3");
    assert_eq!(
        metric(&registry, "sagaflow_adapter_retries_total", &[]),
        2.0
    );
    assert_eq!(
        metric(
            &registry,
            "sagaflow_adapter_calls_total",
            &[("status_class", "5xx")]
        ),
        3.0
    );
    // Transient outcomes are not remembered: a redelivery tries again.
    exec.execute(&charge("o-1")).await;
    assert_eq!(backend.total(), 6);
}

#[tokio::test]
async fn command_timeout_bounds_everything() {
    let backend = Backend::start(|_, _| Reply::status(200).delay(Duration::from_secs(5))).await;
    let (exec, _) = executor(&config(&backend.url(), ""));
    let mut c = charge("o-1");
    c.timeout_ms = 300;
    let started = Instant::now();
    let out = exec.execute(&c).await;
    let elapsed = started.elapsed();
    assert_eq!(out.kind, OutcomeKind::TransientFailure);
    assert_eq!(out.error_code(), Some("timeout"));
    assert!(
        out.error
            .as_ref()
            .unwrap()
            .message
            .contains("SF-ADAPTER-008")
    );
    assert!(
        elapsed >= Duration::from_millis(250) && elapsed < Duration::from_millis(1500),
        "{elapsed:?}"
    );
    assert_eq!(backend.total(), 1);
}

#[tokio::test]
async fn request_timeout_is_retried_within_the_command_budget() {
    let backend = Backend::start(|n, _| {
        if n == 0 {
            Reply::status(200).delay(Duration::from_secs(5))
        } else {
            Reply::json(200, json!({"id": "p", "status": {"code": "ok"}}))
        }
    })
    .await;
    let yaml = config(&backend.url(), "").replace("request-timeout: 2s", "request-timeout: 200ms");
    let (exec, _) = executor(&yaml);
    let out = exec.execute(&charge("o-1")).await;
    assert_eq!(out.kind, OutcomeKind::Success, "{out:?}");
    assert_eq!(backend.total(), 2);
}

#[tokio::test]
async fn garbage_body_on_2xx_is_invalid_response() {
    let backend = Backend::start(|_, _| Reply::status(200).body("<html>oops")).await;
    let (exec, _) = executor(&config(&backend.url(), ""));
    let out = exec.execute(&charge("o-1")).await;
    assert_eq!(out.kind, OutcomeKind::TransientFailure);
    assert_eq!(out.error_code(), Some("invalid_response"));
    let msg = &out.error.as_ref().unwrap().message;
    assert!(msg.contains("SF-ADAPTER-009"), "{msg}");
    assert!(msg.contains("`charge`"), "{msg}");
    assert!(msg.contains("not valid JSON"), "{msg}");
    assert_eq!(
        backend.total(),
        1,
        "garbage is not retried inside the adapter"
    );
}

/// `discard-body: true`: the status alone decides; a text body (the
/// public petstore's `Pet deleted`) is a success with no data, while the
/// same body without it stays an `invalid_response`, and the 4xx rules
/// still apply.
#[tokio::test]
async fn a_discarded_body_is_not_read_and_the_status_decides() {
    let backend = Backend::start(|_, seen| {
        if seen.path.ends_with("/gone") {
            Reply::status(409).body("already gone")
        } else {
            Reply::status(200).body("Pet deleted")
        }
    })
    .await;
    let yaml = config(&backend.url(), "").replace(
        "  encoded:\n",
        "  forget:\n    rest:\n      method: DELETE\n      path: /pets/{{ input.id }}\n      discard-body: true\n  keep:\n    rest:\n      method: DELETE\n      path: /pets/{{ input.id }}\n  encoded:\n",
    );
    let (exec, _) = executor(&yaml);
    let out = exec
        .execute(&cmd("forget", "f-1", json!({"id": "7"})))
        .await;
    assert_eq!(out.kind, OutcomeKind::Success, "{out:?}");
    assert_eq!(out.data, serde_json::Value::Null);
    assert_eq!(out.http_status, Some(200));
    let out = exec.execute(&cmd("keep", "k-1", json!({"id": "7"}))).await;
    assert_eq!(out.error_code(), Some("invalid_response"), "{out:?}");
    let out = exec
        .execute(&cmd("forget", "f-2", json!({"id": "gone"})))
        .await;
    assert_eq!(out.kind, OutcomeKind::BusinessFailure, "{out:?}");
    assert_eq!(out.http_status, Some(409));
}

#[test]
fn a_discarded_body_cannot_be_mapped() {
    let yaml = config("http://127.0.0.1:9", "").replace(
        "  encoded:\n",
        "  forget:\n    rest:\n      method: DELETE\n      path: /pets/1\n      discard-body: true\n      response: { id: /id }\n  encoded:\n",
    );
    let raw = sagaflow_adapter::config::parse_str(&yaml, "payments.yaml").unwrap();
    let err = raw.validate("payments.yaml").unwrap_err().to_string();
    assert!(err.contains("operations.forget.rest.discard-body"), "{err}");
    assert!(err.contains("remove `response:`"), "{err}");
}

#[tokio::test]
async fn missing_mapped_field_is_invalid_response() {
    let backend = Backend::start(|_, _| Reply::json(200, json!({"id": "p"}))).await;
    let (exec, _) = executor(&config(&backend.url(), ""));
    let out = exec.execute(&charge("o-1")).await;
    assert_eq!(out.error_code(), Some("invalid_response"));
    assert!(out.error.unwrap().message.contains("/status/code"));
}

#[tokio::test]
async fn oversized_bodies_are_cut_off() {
    let big = vec![b'x'; 1024 * 1024];
    let chunked = big.clone();
    let backend = Backend::start(move |n, _| {
        if n == 0 {
            Reply::status(200).body(chunked.clone()).chunked()
        } else {
            Reply::status(200).body(big.clone())
        }
    })
    .await;
    let (exec, _) = executor(&config(&backend.url(), ""));
    for id in ["o-1", "o-2"] {
        let out = exec.execute(&charge(id)).await;
        assert_eq!(out.kind, OutcomeKind::TransientFailure);
        assert_eq!(out.error_code(), Some("response_too_large"), "{out:?}");
        assert!(out.error.unwrap().message.contains("4096 bytes"));
    }
    assert_eq!(backend.total(), 2);
}

#[tokio::test]
async fn redelivered_command_gets_the_stored_reply() {
    let backend = Backend::start(|n, _| {
        Reply::json(
            200,
            json!({"id": format!("p-{n}"), "status": {"code": "ok"}}),
        )
    })
    .await;
    let (exec, registry) = executor(&config(&backend.url(), ""));
    let first = exec.execute(&charge("o-1")).await;
    let again = exec.execute(&charge("o-1")).await;
    assert_eq!(first, again);
    assert_eq!(again.data["payment_id"], "p-0");
    assert_eq!(backend.total(), 1);
    assert_eq!(
        metric(&registry, "sagaflow_adapter_idempotent_hits_total", &[]),
        1.0
    );
    // A different command id is a different call.
    let other = exec.execute(&charge("o-2")).await;
    assert_eq!(other.data["payment_id"], "p-1");
    assert_eq!(backend.total(), 2);
}

#[tokio::test]
async fn business_failures_are_remembered_too() {
    let backend = Backend::start(|_, _| Reply::status(409)).await;
    let (exec, _) = executor(&config(&backend.url(), ""));
    let a = exec.execute(&charge("o-1")).await;
    let b = exec.execute(&charge("o-1")).await;
    assert_eq!(a, b);
    assert_eq!(backend.total(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_make_one_call() {
    let backend = Backend::start(|_, _| {
        Reply::json(200, json!({"id": "p", "status": {"code": "ok"}}))
            .delay(Duration::from_millis(300))
    })
    .await;
    let (exec, registry) = executor(&config(&backend.url(), ""));
    let exec = Arc::new(exec);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let exec = Arc::clone(&exec);
            tokio::spawn(async move { exec.execute(&charge("o-1")).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    assert_eq!(backend.total(), 1, "single flight");
    assert!(
        outcomes
            .iter()
            .all(|o| o.kind == OutcomeKind::Success && *o == outcomes[0])
    );
    assert_eq!(
        metric(&registry, "sagaflow_adapter_idempotent_hits_total", &[]),
        7.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_duplicate_does_not_start_a_second_call() {
    let backend = Backend::start(|_, _| {
        Reply::json(200, json!({"id": "p", "status": {"code": "ok"}}))
            .delay(Duration::from_millis(400))
    })
    .await;
    let (exec, _) = executor(&config(&backend.url(), ""));
    let exec = Arc::new(exec);
    let spawn = |exec: &Arc<sagaflow_adapter::Executor>| {
        let exec = Arc::clone(exec);
        tokio::spawn(async move { exec.execute(&charge("o-1")).await })
    };
    let first = spawn(&exec);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let waiter = spawn(&exec);
    tokio::time::sleep(Duration::from_millis(50)).await;
    waiter.abort();
    let _ = waiter.await;
    let third = spawn(&exec);
    assert_eq!(first.await.unwrap().kind, OutcomeKind::Success);
    assert_eq!(third.await.unwrap().kind, OutcomeKind::Success);
    assert_eq!(backend.total(), 1);
}

#[tokio::test]
async fn cacheable_lookups_are_served_from_cache() {
    let backend = Backend::start(|n, _| Reply::json(200, json!({"n": n}))).await;
    let (exec, registry) = executor(&config(&backend.url(), ""));
    let a = exec
        .execute(&cmd("lookup", "s-1", json!({"customer": "c-1"})))
        .await;
    let b = exec
        .execute(&cmd("lookup", "s-2", json!({"customer": "c-1"})))
        .await;
    let c = exec
        .execute(&cmd("lookup", "s-3", json!({"customer": "c-2"})))
        .await;
    assert_eq!(a.data, json!({"n": 0}));
    assert_eq!(
        b.data,
        json!({"n": 0}),
        "same request, other saga: cache hit"
    );
    assert_eq!(c.data, json!({"n": 1}));
    assert_eq!(backend.total(), 2);
    assert_eq!(
        metric(
            &registry,
            "sagaflow_adapter_cache_hits_total",
            &[("operation", "lookup")]
        ),
        1.0
    );
}

#[tokio::test]
async fn base_url_escapes_are_rejected_before_any_call() {
    let backend = Backend::start(|_, _| Reply::status(200)).await;
    let evil = Backend::start(|_, _| Reply::status(200)).await;
    let (exec, _) = executor(&config(&backend.url(), ""));
    let attempts = [
        format!("{}/steal", evil.url()),
        format!("/{}/steal", evil.addr),
        "../../admin".to_owned(),
        "a/../../admin".to_owned(),
        "%2e%2e/admin".to_owned(),
        "x?next=http://evil".to_owned(),
    ];
    for (i, p) in attempts.iter().enumerate() {
        let out = exec
            .execute(&cmd("raw", &format!("e-{i}"), json!({"p": p})))
            .await;
        assert_eq!(out.kind, OutcomeKind::BusinessFailure, "{p}: {out:?}");
        assert_eq!(out.error_code(), Some("base_url_escape"), "{p}");
        assert!(out.error.unwrap().message.contains("SF-ADAPTER-006"));
    }
    assert_eq!(backend.total(), 0);
    assert_eq!(evil.total(), 0);
    // Without `| safe`, values are percent-encoded into one segment and the
    // request stays below the base path.
    let out = exec
        .execute(&cmd("encoded", "e-x", json!({"id": "../../admin"})))
        .await;
    assert_eq!(out.kind, OutcomeKind::Success, "{out:?}");
    let seen = backend.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/api/accounts/..%2F..%2Fadmin");
    // A legitimate multi-segment value with `| safe` still works.
    let out = exec.execute(&cmd("raw", "ok", json!({"p": "a/b"}))).await;
    assert_eq!(out.kind, OutcomeKind::Success);
    assert_eq!(backend.seen()[1].path, "/api/raw/a/b");
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let evil = Backend::start(|_, _| Reply::status(200)).await;
    let location = format!("{}/x", evil.url());
    let backend =
        Backend::start(move |_, _| Reply::status(302).header("location", &location)).await;
    let (exec, _) = executor(&config(&backend.url(), ""));
    let out = exec
        .execute(&cmd("encoded", "r-1", json!({"id": "1"})))
        .await;
    assert_eq!(out.kind, OutcomeKind::BusinessFailure);
    assert_eq!(out.error_code(), Some("http_302"));
    assert_eq!(evil.total(), 0);
}

#[tokio::test]
async fn missing_input_and_unknown_operation_are_business_failures() {
    let backend = Backend::start(|_, _| Reply::status(200)).await;
    let (exec, registry) = executor(&config(&backend.url(), ""));
    let out = exec
        .execute(&cmd("charge", "o-1", json!({"order_id": "o-1"})))
        .await;
    assert_eq!(out.kind, OutcomeKind::BusinessFailure);
    assert_eq!(out.error_code(), Some("invalid_command"));
    let out = exec.execute(&cmd("nope", "o-1", json!({}))).await;
    assert_eq!(out.kind, OutcomeKind::BusinessFailure);
    assert_eq!(out.error_code(), Some("unknown_operation"));
    assert_eq!(backend.total(), 0);
    assert_eq!(
        metric(
            &registry,
            "sagaflow_adapter_calls_total",
            &[("operation", "unknown")]
        ),
        1.0
    );
}

#[tokio::test]
async fn connect_errors_are_transient_and_retried() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let (exec, registry) = executor(&config(&format!("http://{addr}"), ""));
    let out = exec.execute(&charge("o-1")).await;
    assert_eq!(out.kind, OutcomeKind::TransientFailure);
    assert_eq!(out.error_code(), Some("connect_error"));
    let msg = out.error.unwrap().message;
    assert!(
        msg.starts_with("SF-ADAPTER-007") && msg.contains("cannot connect"),
        "{msg}"
    );
    assert_eq!(
        metric(
            &registry,
            "sagaflow_adapter_calls_total",
            &[("status_class", "connect_error")]
        ),
        3.0
    );
}

#[tokio::test]
async fn second_base_url_is_used_on_retry() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}/api", listener.local_addr().unwrap());
    drop(listener);
    let backend =
        Backend::start(|_, _| Reply::json(200, json!({"id": "p", "status": {"code": "ok"}}))).await;
    let yaml = config(&backend.url(), "").replace(
        &format!("base-urls: [\"{}/api\"]", backend.url()),
        &format!("base-urls: [\"{dead}\", \"{}/api\"]", backend.url()),
    );
    assert!(yaml.contains(&dead));
    let (exec, registry) = executor(&yaml);
    let out = exec.execute(&charge("o-1")).await;
    assert_eq!(out.kind, OutcomeKind::Success, "{out:?}");
    assert_eq!(backend.total(), 1);
    assert_eq!(
        metric(
            &registry,
            "sagaflow_adapter_calls_total",
            &[("status_class", "connect_error")]
        ),
        1.0
    );
}

#[tokio::test]
async fn header_injection_through_input_is_refused() {
    let backend = Backend::start(|_, _| Reply::status(200)).await;
    let (exec, _) = executor(&config(&backend.url(), ""));
    let mut c = charge("o-1");
    c.input["currency"] = json!("EUR");
    // X-Saga renders command.saga_type; put CR/LF into it.
    c.saga_type = "order\r\nX-Evil: 1".into();
    let out = exec.execute(&c).await;
    assert_eq!(out.kind, OutcomeKind::BusinessFailure);
    assert_eq!(out.error_code(), Some("invalid_command"));
    assert_eq!(backend.total(), 0);
}
