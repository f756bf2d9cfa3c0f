//! One saga's W3C trace context, followed from the trigger event's
//! `traceparent` header through the orchestrator's commands, the adapters'
//! outgoing HTTP requests (what the backend received) and the saga's
//! lifecycle events up to its completion; and a saga whose trigger carried
//! no trace context getting a new trace of its own. Every hop (command,
//! lifecycle event, HTTP call) is a child span: same trace id, its own span
//! id. The trigger's (or HTTP caller's) `tracestate` travels unchanged with
//! the trace: on the lifecycle events, the adapters' replies and the
//! backends' requests; a new trace carries none.

mod common;

use std::time::Duration;

use rdkafka::Message;
use rdkafka::consumer::Consumer;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use sagaflow_codec::SagaEvent;
use sagaflow_codec::messages::{LifecycleKind, SagaStatus};
use sagaflow_test_support as support;

use common::Stack;

const WAIT: Duration = Duration::from_secs(120);

fn trace_id(traceparent: &str) -> &str {
    traceparent.split('-').nth(1).unwrap_or("")
}

fn span_id(traceparent: &str) -> &str {
    traceparent.split('-').nth(2).unwrap_or("")
}

fn header(m: &impl Message, name: &str) -> Option<String> {
    m.headers().and_then(|h| {
        h.iter()
            .find(|x| x.key == name)
            .and_then(|x| x.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    })
}

/// The W3C vendor list the traced trigger carries, and the HTTP caller's.
const TRACESTATE: &str = "sagaflow-e2e=t61rcWkgMzE,rojo=00f067aa0ba902b7";
const HTTP_TRACESTATE: &str = "caller@sagaflow=http-3";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sagas_trace_runs_from_its_trigger_to_the_backends_and_its_completion() {
    let mut stack = Stack::start("trace", 3).await;
    stack.start_adapters();
    stack.start_orchestrator();
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace}-00f067aa0ba902b7-01");
    // An existing system's trigger without any trace context.
    let untraced = stack.order_placed("untraced-2", "c-2", 4_200).await;
    stack
        .send_raw(&stack.topic("orders.events"), "untraced-2", &untraced)
        .await;
    let bytes = stack.order_placed("traced-1", "c-1", 4_200).await;
    stack
        .send_with_headers(
            &stack.topic("orders.events"),
            "traced-1",
            &bytes,
            OwnedHeaders::new()
                .insert(Header {
                    key: "traceparent",
                    value: Some(traceparent.as_bytes()),
                })
                .insert(Header {
                    key: "tracestate",
                    value: Some(TRACESTATE),
                }),
        )
        .await;

    // A saga started through the HTTP facade continues the caller's trace.
    let http_trace = "7d2f1c0e9b8a4f6e8d1c2b3a49586776";
    let api = stack.orchestrators[0].http_addr(WAIT);
    let answer = reqwest::Client::new()
        .post(format!("http://{api}/v1/sagas/order-checkout?wait=0s"))
        .header("traceparent", format!("00-{http_trace}-1122334455667788-01"))
        .header("tracestate", HTTP_TRACESTATE)
        .json(&serde_json::json!({
            "order_id": "http-3", "customer_id": "c-3",
            "items": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": 4_200}],
            "total_cents": 4_200, "currency": "EUR",
            "shipping_address": {"line1": "1 Main St", "line2": null, "postal_code": "12345", "city": "Springfield", "country": "DE"},
            "placed_at": 1_700_000_000_000i64,
        }))
        .send()
        .await
        .unwrap();
    assert!(answer.status().is_success(), "{answer:?}");
    let mut http_done = false;

    // The completion, and the trace context on every event of the saga.
    let reader = stack.reader("sagaflow.saga-events");
    let topic = stack.topic("sagaflow.saga-events");
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut completed_with = None;
    let mut kinds = Vec::new();
    let mut spans = std::collections::HashSet::new();
    // The untraced saga's records: (kind, traceparent).
    let mut fresh: Vec<(LifecycleKind, String)> = Vec::new();
    let fresh_done =
        |f: &[(LifecycleKind, String)]| f.iter().any(|(k, _)| *k == LifecycleKind::Completed);
    while completed_with.is_none() || !fresh_done(&fresh) || !http_done {
        let m = match tokio::time::timeout_at(deadline, reader.recv()).await {
            Ok(Ok(m)) => m,
            Ok(Err(_)) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(_) => panic!("no completion of the traced saga\n{}", stack.logs()),
        };
        let header = m.headers().and_then(|h| {
            h.iter()
                .find(|x| x.key == "traceparent")
                .and_then(|x| x.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        });
        let state = self::header(&m, "tracestate");
        let Some(bytes) = m.payload() else { continue };
        match stack.codec.decode_saga_event(&topic, bytes).await {
            Ok(SagaEvent::Lifecycle(l)) if l.saga_id.ends_with("untraced-2") => {
                let h = header.unwrap_or_else(|| panic!("{:?} has no traceparent", l.kind));
                assert_eq!(state, None, "{:?} of a new trace has no tracestate", l.kind);
                fresh.push((l.kind, h));
            }
            Ok(SagaEvent::Result(r)) if r.saga_id.ends_with("untraced-2") => {}
            Ok(SagaEvent::Lifecycle(l)) if l.saga_id.ends_with("http-3") => {
                assert_eq!(
                    header.as_deref().map(trace_id),
                    Some(http_trace),
                    "{:?} of the HTTP-started saga carries the caller's trace",
                    l.kind
                );
                assert_eq!(
                    state.as_deref(),
                    Some(HTTP_TRACESTATE),
                    "{:?} of the HTTP-started saga carries the caller's tracestate",
                    l.kind
                );
                http_done |= l.kind == LifecycleKind::Completed;
            }
            Ok(SagaEvent::Result(r)) if r.saga_id.ends_with("http-3") => {}
            Ok(SagaEvent::Lifecycle(l)) => {
                let h = header.as_deref().unwrap_or_default();
                assert!(
                    span_id(h) != "00f067aa0ba902b7" && spans.insert(span_id(h).to_owned()),
                    "{:?} is a span of its own: {h}",
                    l.kind
                );
                assert_eq!(
                    header.as_deref().map(trace_id),
                    Some(trace),
                    "{:?} carries the saga's trace",
                    l.kind
                );
                assert_eq!(
                    state.as_deref(),
                    Some(TRACESTATE),
                    "{:?} carries the trigger's tracestate unchanged",
                    l.kind
                );
                if l.kind == LifecycleKind::Completed {
                    completed_with = header;
                }
                kinds.push(l.kind);
            }
            Ok(SagaEvent::Result(r)) => {
                assert_eq!(r.status, SagaStatus::Completed, "{r:?}");
                assert_eq!(header.as_deref().map(trace_id), Some(trace));
            }
            Err(e) => panic!("undecodable saga event: {e}"),
        }
    }
    assert!(kinds.first() == Some(&LifecycleKind::Started), "{kinds:?}");

    // The adapters' replies to the traced saga's commands carry its
    // tracestate too; the untraced saga's replies carry none.
    let replies = support::kafka()
        .consumer(&support::unique("trace-replies"))
        .unwrap();
    replies
        .subscribe(&[&stack.topic("sagaflow.replies")])
        .unwrap();
    let (mut traced, mut untraced) = (0, 0);
    let deadline = tokio::time::Instant::now() + WAIT;
    while traced < 3 || untraced < 3 {
        let m = match tokio::time::timeout_at(deadline, replies.recv()).await {
            Ok(Ok(m)) => m,
            Ok(Err(_)) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(_) => panic!("{traced} replies of the traced saga, {untraced} of the untraced"),
        };
        let saga = header(&m, "sagaflow-saga-id").unwrap_or_default();
        let state = header(&m, "tracestate");
        if saga.ends_with("traced-1") {
            assert_eq!(state.as_deref(), Some(TRACESTATE), "reply to {saga}");
            traced += 1;
        } else if saga.ends_with("untraced-2") {
            assert_eq!(state, None, "reply to {saga}");
            untraced += 1;
        }
    }

    // What the backends received: every call of this saga in the same trace.
    let ledger = stack.ledger.lock().unwrap();
    let ops: Vec<&str> = ledger
        .traceparents
        .iter()
        .filter(|(_, tp)| trace_id(tp) == trace)
        .map(|(op, _)| op.as_str())
        .collect();
    for op in ["reserve", "charge", "schedule"] {
        assert!(
            ops.contains(&op),
            "the backend's `{op}` request carried the trace: {:?}",
            ledger.traceparents
        );
    }
    for (op, tp) in ledger
        .traceparents
        .iter()
        .filter(|(_, tp)| trace_id(tp) == trace)
    {
        assert!(
            spans.insert(span_id(tp).to_owned()),
            "the `{op}` call is a span of its own, not the trigger's or an event's: {tp}"
        );
        // The vendor list went with the request, unchanged.
        assert!(
            ledger
                .tracestates
                .iter()
                .any(|(with, ts)| with == tp && ts == TRACESTATE),
            "the `{op}` call carried the trigger's tracestate: {:?}",
            ledger.tracestates
        );
    }
    let http_states: Vec<&str> = ledger
        .tracestates
        .iter()
        .filter(|(tp, _)| trace_id(tp) == http_trace)
        .map(|(_, ts)| ts.as_str())
        .collect();
    assert!(
        !http_states.is_empty() && http_states.iter().all(|ts| *ts == HTTP_TRACESTATE),
        "the HTTP-started saga's calls carried the caller's tracestate: {:?}",
        ledger.tracestates
    );

    // The saga without a trace context got a new, valid trace: every one of
    // its records and backend calls is in it, each hop with its own span.
    let (first_kind, first) = &fresh[0];
    assert_eq!(*first_kind, LifecycleKind::Started);
    let new_trace = trace_id(first).to_owned();
    assert!(
        new_trace.len() == 32 && new_trace != trace && new_trace.chars().any(|c| c != '0'),
        "{first}"
    );
    let mut fresh_spans = std::collections::HashSet::new();
    for (kind, tp) in &fresh {
        assert_eq!(trace_id(tp), new_trace, "{kind:?}: {tp}");
        assert!(fresh_spans.insert(span_id(tp).to_owned()), "{kind:?}: {tp}");
    }
    let fresh_ops: Vec<&str> = ledger
        .traceparents
        .iter()
        .filter(|(_, tp)| trace_id(tp) == new_trace)
        .map(|(op, _)| op.as_str())
        .collect();
    for op in ["reserve", "charge", "schedule"] {
        assert!(
            fresh_ops.contains(&op),
            "the untraced saga's `{op}` call carried its new trace: {:?}",
            ledger.traceparents
        );
    }
    assert!(
        !ledger
            .tracestates
            .iter()
            .any(|(tp, _)| trace_id(tp) == new_trace),
        "a new trace sends no tracestate: {:?}",
        ledger.tracestates
    );
}

/// One exported span, as an OTLP/HTTP JSON collector receives it.
#[derive(Clone, Debug)]
struct Exported {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
}

/// A minimal OTLP/HTTP (JSON) trace collector on 127.0.0.1.
async fn collector() -> (String, std::sync::Arc<std::sync::Mutex<Vec<Exported>>>) {
    use serde_json::Value;
    let spans = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                let doc: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
                let mut got = Vec::new();
                for rs in doc["resourceSpans"].as_array().into_iter().flatten() {
                    let service = rs["resource"]["attributes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|a| a["key"] == "service.name")
                        .map(|a| s(&a["value"]["stringValue"]))
                        .unwrap_or_default();
                    for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                        for span in ss["spans"].as_array().into_iter().flatten() {
                            got.push(Exported {
                                service: service.clone(),
                                name: s(&span["name"]),
                                trace_id: s(&span["traceId"]).to_lowercase(),
                                span_id: s(&span["spanId"]).to_lowercase(),
                                parent: s(&span["parentSpanId"]).to_lowercase(),
                            });
                        }
                    }
                }
                sink.lock().unwrap().extend(got);
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    "{}",
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, spans)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spans_are_exported_over_otlp_as_one_tree_per_saga() {
    let (endpoint, spans) = collector().await;
    let mut stack = Stack::start("otlp", 3).await;
    stack.env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL".into(), "http/json".into()),
        ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
    ];
    stack.start_adapters();
    stack.start_orchestrator();
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let trigger_span = "b7ad6b7169203331";
    let bytes = stack.order_placed("otlp-1", "c-1", 4_200).await;
    stack
        .send_with_headers(
            &stack.topic("orders.events"),
            "otlp-1",
            &bytes,
            OwnedHeaders::new().insert(Header {
                key: "traceparent",
                value: Some(format!("00-{trace}-{trigger_span}-01").as_bytes()),
            }),
        )
        .await;

    // Wait for the saga's span (exported with its result), the three
    // adapters' spans and the three backend calls' client spans.
    let deadline = tokio::time::Instant::now() + WAIT;
    let (saga, tree) = loop {
        let got: Vec<Exported> = spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.trace_id == trace)
            .cloned()
            .collect();
        let saga = got
            .iter()
            .find(|s| s.name == "saga order-checkout")
            .cloned();
        let from_adapters = |prefix: &str| {
            got.iter()
                .filter(|s| s.service == "sagaflow-adapter" && s.name.starts_with(prefix))
                .count()
        };
        // Each process exports in batches of its own: wait for all of them.
        let complete = from_adapters("POST ") >= 3
            && from_adapters("handle ") >= 3
            && got.iter().any(|s| s.name == "send result");
        if let Some(saga) = saga
            && complete
        {
            break (saga, got);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "spans so far: {got:#?}\n{}",
            stack.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let names = |v: &[&Exported]| v.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
    // The saga continues the publisher's span.
    assert_eq!(saga.parent, trigger_span, "{saga:?}");
    assert_eq!(saga.service, "sagaflow-orchestrator");
    let children =
        |parent: &str| -> Vec<&Exported> { tree.iter().filter(|s| s.parent == parent).collect() };
    // Commands are children of the saga; each adapter's handling is a child
    // of its command; each HTTP call a child of the handling.
    let ledger = stack.ledger.lock().unwrap();
    for (op, service) in [
        ("reserve", "inventory"),
        ("charge", "payment"),
        ("schedule", "shipping"),
    ] {
        let sends: Vec<&Exported> = children(&saga.span_id)
            .into_iter()
            .filter(|s| s.name == format!("send {service}.{op}"))
            .collect();
        assert!(
            !sends.is_empty(),
            "no `send {service}.{op}` under the saga: {:?}",
            names(&children(&saga.span_id))
        );
        let handled: Vec<&Exported> = sends
            .iter()
            .flat_map(|s| children(&s.span_id))
            .filter(|s| s.name == format!("handle {service}.{op}"))
            .collect();
        assert!(
            !handled.is_empty(),
            "no adapter span under `send {service}.{op}`: {tree:#?}"
        );
        let calls: Vec<&Exported> = handled
            .iter()
            .flat_map(|h| children(&h.span_id))
            .filter(|s| s.name == format!("POST {op}"))
            .collect();
        assert!(
            !calls.is_empty(),
            "no HTTP client span under `handle {service}.{op}`: {tree:#?}"
        );
        // The backend received exactly that client span's context.
        assert!(
            calls.iter().any(|c| ledger
                .traceparents
                .iter()
                .any(|(o, tp)| o == op && span_id(tp) == c.span_id && trace_id(tp) == trace)),
            "the backend's `{op}` traceparent is the exported client span: {:?} vs {calls:?}",
            ledger.traceparents
        );
    }
    // Lifecycle events and the result are children of the saga too.
    let under_saga = names(&children(&saga.span_id));
    for name in ["started", "completed", "send result"] {
        assert!(
            under_saga.iter().any(|n| n == name),
            "{name}: {under_saga:?}"
        );
    }
}
