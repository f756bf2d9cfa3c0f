//! Hostile callers at the orchestrator's HTTP API, against a real
//! `sagaflow orchestrator` process, the embedded broker and a real
//! registry: forged `sagaflow-*` headers, a malformed `traceparent`, a
//! facade trigger that does not fit its schema, an oversized body, slow
//! clients, and a non-loopback API without a token.

mod common;

use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::Consumer;
use rdkafka::message::Headers;
use sagaflow_test_support::metrics;
use sagaflow_test_support::process::ChildGuard;
use sagaflow_test_support::{self as support};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::Stack;

const WAIT: Duration = Duration::from_secs(180);

/// Starts an orchestrator with `http` as its `http:` section.
fn start_with_http(stack: &mut Stack, name: &str, http: &str) -> ChildGuard {
    let base = std::fs::read_to_string(stack.path("orchestrator.yaml")).unwrap();
    let with = base.replacen("http:\n  listen: 127.0.0.1:0\n", http, 1);
    assert_ne!(base, with, "orchestrator.yaml has an http section");
    let cfg = stack.path(&format!("orchestrator-{name}.yaml"));
    std::fs::write(&cfg, with).unwrap();
    let log = stack.path(&format!("orchestrator-{name}.log"));
    ChildGuard::sagaflow(
        name,
        &["orchestrator", "--config", cfg.to_str().unwrap()],
        log,
        &[],
    )
}

fn order(id: &str) -> Value {
    sagaflow_demo::samples::order_placed(id, "c-1", 1_000, 1_700_000_000_000)
}

async fn error_of(r: reqwest::Response) -> (u16, String, String) {
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or_default();
    (
        status,
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_callers_get_coded_refusals_and_nothing_forged_reaches_kafka() {
    let mut stack = Stack::start("edges", 1).await;
    let orchestrator = start_with_http(
        &mut stack,
        "edges",
        "http:\n  listen: 127.0.0.1:0\n  limits:\n    header-timeout: 1s\n    max-body-bytes: 65536\n",
    );
    let base = format!("http://{}", orchestrator.http_addr(WAIT));
    let client = reqwest::Client::new();
    let events = format!("{base}/v1/events/orders.events");

    // A forged de-duplication id, in the envelope or as an HTTP header.
    let forged = client
        .post(&events)
        .json(&json!({"type": "OrderPlaced", "key": "forged-1",
            "headers": {"sagaflow-message-id": "forged"}, "payload": order("forged-1")}))
        .send()
        .await
        .unwrap();
    let (status, code, message) = error_of(forged).await;
    assert_eq!((status, code.as_str()), (400, "SF-INGEST-006"), "{message}");
    assert!(message.contains("sagaflow-message-id"), "{message}");
    let forged = client
        .post(&events)
        .header("Sagaflow-Message-Id", "forged")
        .json(&json!({"type": "OrderPlaced", "key": "forged-2", "payload": order("forged-2")}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(forged).await.1, "SF-INGEST-006");

    // A malformed trace context is replaced, not forwarded.
    let bad_trace = "00-zzzz-01";
    let ok = client
        .post(&events)
        .header("traceparent", bad_trace)
        .json(&json!({"type": "OrderPlaced", "key": "edge-1",
            "headers": {"x-source": "crm"}, "payload": order("edge-1")}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 202);

    // The facade checks the trigger against its schema, as ingest does.
    let facade = format!("{base}/v1/sagas/order-checkout?wait=0s");
    let r = client
        .post(&facade)
        .json(&json!({"order_id": {"a": 1}}))
        .send()
        .await
        .unwrap();
    let (status, code, message) = error_of(r).await;
    assert_eq!((status, code.as_str()), (400, "SF-INGEST-003"), "{message}");
    assert!(message.contains("/order_id"), "{message}");
    let r = client
        .post(&facade)
        .header("sagaflow-saga-id", "order-checkout:someone-else")
        .json(&order("facade-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await.1, "SF-INGEST-006");

    // A body above the limit: 413 before it is read.
    let big = json!({"type": "OrderPlaced", "payload": {"pad": "x".repeat(100_000)}});
    let r = client.post(&events).json(&big).send().await.unwrap();
    let (status, code, _) = error_of(r).await;
    assert_eq!((status, code.as_str()), (413, "SF-API-413"));

    // Exactly the accepted event reached Kafka, with its own headers, no
    // forged ones, and a valid fresh trace context.
    let reader = support::kafka()
        .consumer(&support::unique("edges"))
        .unwrap();
    reader.subscribe(&[&stack.topic("orders.events")]).unwrap();
    let records = support::consume(&reader, 3, Duration::from_secs(20)).await;
    assert_eq!(records.len(), 1, "only the accepted event was published");
    let headers: Vec<(String, String)> = records[0]
        .headers()
        .map(|h| {
            h.iter()
                .map(|x| {
                    (
                        x.key.to_owned(),
                        String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert!(!headers.iter().any(|(_, v)| v == "forged"), "{headers:?}");
    assert!(headers.contains(&("x-source".into(), "crm".into())));
    let trace = headers
        .iter()
        .find(|(k, _)| k == "traceparent")
        .map(|(_, v)| v.clone())
        .expect("a trace context");
    assert_ne!(trace, bad_trace);
    assert!(
        sagaflow_bus::TraceContext::parse(&trace).is_some(),
        "{trace}"
    );
    // The refused facade requests started nothing.
    let inputs = stack.reader("sagaflow.inputs");
    // (The accepted `edge-1` event is repartitioned there by the
    // orchestrator; nothing of the refused requests may be.)
    let started = support::consume(&inputs, 10, Duration::from_secs(5)).await;
    for m in &started {
        let text = format!(
            "{} {}",
            String::from_utf8_lossy(m.key().unwrap_or_default()),
            support::text(m)
        );
        assert!(
            !text.contains("facade-1") && !text.contains("someone-else") && !text.contains("\"a\""),
            "a refused facade request reached the inputs topic: {text}"
        );
    }

    // Slow clients: half-sent requests are cut at the header timeout while
    // a normal client is served at once.
    let addr = base.trim_start_matches("http://").to_owned();
    let began = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"POST /v1/events/orders.events HTTP/1.1\r\nhost: x\r\ncontent-")
            .await
            .unwrap();
        slow.push(s);
    }
    let health = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let served_after = began.elapsed();
    assert!(served_after < Duration::from_secs(1), "served meanwhile");
    for s in &mut slow {
        let mut buf = [0u8; 256];
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "a half-sent request was still held");
    }
    let held = began.elapsed();
    assert!(
        held >= Duration::from_secs(1),
        "cut by the timeout: {held:?}"
    );
    eprintln!(
        "slow clients: 50 half-sent requests all closed after {held:?} (header timeout 1s); /healthz answered after {served_after:?}"
    );
    let metrics = metrics::scrape(&format!("{base}/metrics")).await.unwrap();
    assert!(
        metrics.contains("sagaflow_view_sagas"),
        "view size exported"
    );
    drop(orchestrator);

    // A non-loopback API without a token does not start.
    let mut open = start_with_http(&mut stack, "open", "http:\n  listen: 0.0.0.0:0\n");
    sagaflow_test_support::process::wait_until(
        "the open orchestrator to exit on its own",
        Duration::from_secs(60),
        || (!open.running()).then_some(()),
    );
    let log = open.output();
    assert!(log.contains("SF-API-001"), "{log}");
    assert!(!log.contains("HTTP API listening"), "{log}");
}

/// Calls every operation of docs/openapi.json on a real orchestrator (with
/// a token) and checks each answer's status is one the document lists for
/// that operation; every operation is called at least once, and `/v1` is
/// refused without the token as documented.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_documented_operation_answers_with_a_documented_status() {
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string("docs/openapi.json").unwrap()).unwrap();
    let mut stack = Stack::start("openapi", 1).await;
    let token = "openapi-test-token-0123456789";
    let n = stack.start_orchestrator_with_token(token);
    let base = format!("http://{}", stack.orchestrators[n].http_addr(WAIT));
    let client = reqwest::Client::new();
    let mut seen: Vec<(String, String, u16)> = Vec::new();
    let mut call =
        async |method: &str, template: &str, url: &str, auth: bool, body: Option<Value>| {
            let mut r = client.request(method.parse().unwrap(), format!("{base}{url}"));
            if auth {
                r = r.bearer_auth(token);
            }
            if let Some(b) = body {
                r = r.json(&b);
            }
            let r = r.send().await.unwrap();
            let status = r.status().as_u16();
            let text = r.text().await.unwrap();
            seen.push((template.to_owned(), method.to_lowercase(), status));
            (status, text)
        };

    let deadline = Instant::now() + WAIT;
    loop {
        let (status, _) = call("GET", "/readyz", "/readyz", false, None).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        call("GET", "/healthz", "/healthz", false, None).await.0,
        200
    );
    assert_eq!(
        call("GET", "/metrics", "/metrics", false, None).await.0,
        200
    );
    // Every process serves its build and the standard process metrics.
    let metrics = metrics::scrape(&format!("{base}/metrics")).await.unwrap();
    for name in [
        "sagaflow_build_info{",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ] {
        assert!(metrics.contains(name), "{name} not in /metrics:\n{metrics}");
    }

    // Every /v1 operation without the token.
    for (path, item) in doc["paths"].as_object().unwrap() {
        if !path.starts_with("/v1") {
            continue;
        }
        let url = path
            .replace("{id_or_type}", "order-checkout")
            .replace("{id}", "order-checkout:none")
            .replace("{topic}", "orders.events");
        for method in item.as_object().unwrap().keys() {
            if method != "parameters" {
                let (status, _) = call(method, path, &url, false, None).await;
                assert_eq!(status, 401, "{method} {url} without a token");
            }
        }
    }

    let (status, body) = call("GET", "/v1/openapi.json", "/v1/openapi.json", true, None).await;
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), doc);

    let list = "/v1/sagas";
    let (status, body) = call(
        "GET",
        list,
        "/v1/sagas?type=order-checkout&status=running&limit=5",
        true,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(serde_json::from_str::<Value>(&body).unwrap()["sagas"].is_array());

    let one = "/v1/sagas/{id_or_type}";
    assert_eq!(
        call("GET", one, "/v1/sagas/order-checkout:nobody", true, None)
            .await
            .0,
        404
    );
    assert_eq!(
        call(
            "POST",
            one,
            "/v1/sagas/no-such-saga",
            true,
            Some(order("oa-0"))
        )
        .await
        .0,
        404
    );
    let (status, body) = call(
        "POST",
        one,
        "/v1/sagas/order-checkout?wait=0s",
        true,
        Some(order("oa-1")),
    )
    .await;
    assert!(status == 200 || status == 202, "{status} {body}");
    let saga_id = serde_json::from_str::<Value>(&body).unwrap()["saga_id"]
        .as_str()
        .unwrap()
        .to_owned();
    loop {
        let (status, body) = call("GET", one, &format!("/v1/sagas/{saga_id}"), true, None).await;
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{saga_id} never in the view: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // No adapter runs: the saga waits on its first step, and /metrics shows
    // how long the oldest such saga has been going.
    metrics::wait_until(
        &format!("{base}/metrics"),
        deadline.saturating_duration_since(Instant::now()),
        |text| {
            metrics::value(
                text,
                "sagaflow_saga_oldest_running_age_seconds",
                &[("saga_type", "order-checkout")],
            )
            .is_some_and(|a| a > 0.0)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("no oldest running age in\n{e}"));
    let retry = "/v1/sagas/{id}/retry";
    assert_eq!(
        call(
            "POST",
            retry,
            "/v1/sagas/order-checkout:nobody/retry",
            true,
            None
        )
        .await
        .0,
        404
    );
    assert_eq!(
        call(
            "POST",
            retry,
            &format!("/v1/sagas/{saga_id}/retry"),
            true,
            None
        )
        .await
        .0,
        202
    );
    let abort = "/v1/sagas/{id}/abort";
    let reason = Some(json!({"reason": "openapi test"}));
    assert_eq!(
        call(
            "POST",
            abort,
            &format!("/v1/sagas/{saga_id}/abort"),
            true,
            reason
        )
        .await
        .0,
        202
    );

    let events = "/v1/events/{topic}";
    let event = json!({"type": "OrderPlaced", "key": "oa-2", "payload": order("oa-2")});
    assert_eq!(
        call(
            "POST",
            events,
            "/v1/events/orders.events",
            true,
            Some(event)
        )
        .await
        .0,
        202
    );
    assert_eq!(
        call(
            "POST",
            events,
            "/v1/events/no.such.topic",
            true,
            Some(json!({}))
        )
        .await
        .0,
        404
    );
    assert_eq!(
        call(
            "POST",
            events,
            "/v1/events/orders.events",
            true,
            Some(json!([]))
        )
        .await
        .0,
        400
    );

    // Every answer was documented, and every operation was called.
    let mut problems = Vec::new();
    for (path, method, status) in &seen {
        let responses = &doc["paths"][path][method]["responses"];
        if responses.get(status.to_string()).is_none() {
            problems.push(format!("{method} {path} answered {status}, not documented"));
        }
    }
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item
            .as_object()
            .unwrap()
            .keys()
            .filter(|m| *m != "parameters")
        {
            if !seen.iter().any(|(p, m, _)| p == path && m == method) {
                problems.push(format!("{method} {path} was never called"));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}
