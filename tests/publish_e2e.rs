//! Events handed to Sagaflow from outside Kafka start sagas exactly as an
//! existing publisher's events do: `sagaflow publish` (JSON lines) and the
//! orchestrator's `POST /v1/events/{topic}`, against the embedded broker, a
//! real registry, real orchestrator and adapter processes and the HTTP
//! backends.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::Message;
use rdkafka::consumer::Consumer;
use rdkafka::message::Headers;
use sagaflow_codec::messages::SagaStatus;
use sagaflow_test_support as support;
use sagaflow_test_support::metrics;
use serde_json::{Value, json};

use common::Stack;

const WAIT: Duration = Duration::from_secs(180);

fn order(id: &str, total: i64) -> Value {
    sagaflow_demo::samples::order_placed(id, "c-1", total, 1_700_000_000_000)
}

/// Waits for `ids` (order ids) to end; returns their statuses.
async fn results(stack: &Stack, ids: &[&str]) -> BTreeMap<String, SagaStatus> {
    let reader = stack.results_reader();
    let mut all = BTreeMap::new();
    let mut copies = 0;
    let wanted: Vec<String> = ids.iter().map(|o| format!("order-checkout:{o}")).collect();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !wanted.iter().all(|w| all.contains_key(w)) && tokio::time::Instant::now() < deadline {
        let more = all.len() + 1;
        stack
            .collect_results(&reader, &mut all, &mut copies, more, Duration::from_secs(5))
            .await;
    }
    wanted
        .iter()
        .map(|w| {
            let r = all
                .get(w)
                .unwrap_or_else(|| panic!("no result for {w}\n{}", stack.logs()));
            (w.clone(), r.status)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn published_json_lines_start_sagas_that_complete() {
    let mut stack = Stack::start("publish", 2).await;
    stack.start_adapters();
    stack.start_orchestrator();
    // Listening means the orchestrator created its topics.
    stack.orchestrators[0].http_addr(WAIT);

    let file = stack.path("orders.jsonl");
    let lines = [
        json!({"type": "OrderPlaced", "key": "pub-1", "payload": order("pub-1", 1_000)})
            .to_string(),
        "{not json".to_owned(),
        json!({"type": "OrderPlaced", "payload": order("oos-pub-2", 2_000)}).to_string(),
    ];
    std::fs::write(&file, lines.join("\n")).unwrap();
    let topic = stack.topic("orders.events");
    let schemas = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    let run = |input: &str| {
        std::process::Command::new(support::process::sagaflow_bin())
            .args([
                "publish",
                "--topic",
                &topic,
                "--bootstrap-servers",
                support::bootstrap_servers(),
                "--registry",
                &stack.registry_url,
                "--schemas",
                schemas.to_str().unwrap(),
                "--key-field",
                "/order_id",
                input,
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let out = run(file.to_str().unwrap()).wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("orders.jsonl:2:2: invalid JSON"),
        "{stderr}"
    );

    // The same from stdin, as a pipe from a CDC export would.
    let mut child = run("-");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        writeln!(
            stdin,
            "{}",
            json!({"type": "OrderPlaced", "payload": order("pub-3", 3_000)})
        )
        .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("published 1 event to"));

    let ended = results(&stack, &["pub-1", "oos-pub-2", "pub-3"]).await;
    assert_eq!(
        ended.values().copied().collect::<Vec<_>>(),
        [
            SagaStatus::Compensated,
            SagaStatus::Completed,
            SagaStatus::Completed
        ],
        "{ended:?}"
    );
    let effects = stack.effects();
    for o in ["pub-1", "pub-3"] {
        assert_eq!(
            effects.get(&("schedule".to_owned(), o.to_owned())),
            Some(&1),
            "{effects:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn posted_events_start_sagas_and_bad_requests_name_the_problem() {
    let mut stack = Stack::start("ingest", 2).await;
    stack.start_adapters();
    let token = "s3cret-token";
    let n = stack.start_orchestrator_with_token(token);
    let base = format!("http://{}", stack.orchestrators[n].http_addr(WAIT));
    let client = reqwest::Client::new();
    let post = |path: &str, body: String, auth: bool| {
        let mut r = client
            .post(format!("{base}{path}"))
            .header("content-type", "application/json")
            .body(body);
        if auth {
            r = r.bearer_auth(token);
        }
        r.send()
    };
    let events = "/v1/events/orders.events";

    let unauthorized = post(events, "{}".into(), false).await.unwrap();
    assert_eq!(unauthorized.status(), 401);

    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace}-00f067aa0ba902b7-01");
    let one = client
        .post(format!("{base}{events}"))
        .bearer_auth(token)
        .header("traceparent", &traceparent)
        .json(&json!({"type": "OrderPlaced", "key": "in-1", "payload": order("in-1", 1_000)}))
        .send()
        .await
        .unwrap();
    assert_eq!(one.status(), 202);
    let one: Value = one.json().await.unwrap();
    assert_eq!(one["topic"], stack.topic("orders.events"), "{one}");
    assert!(one["offset"].as_i64().is_some(), "{one}");

    let batch = json!([
        {"type": "OrderPlaced", "payload": order("in-2", 2_000)},
        {"type": "OrderPlaced", "payload": order("oos-in-3", 3_000)},
    ]);
    let answer = post(events, batch.to_string(), true).await.unwrap();
    assert_eq!(answer.status(), 202);
    let answer: Value = answer.json().await.unwrap();
    assert_eq!(
        answer["events"].as_array().map(Vec::len),
        Some(2),
        "{answer}"
    );

    // Bad requests: nothing is published, the error names the problem.
    let mut wrong = order("bad-1", 1);
    wrong["shipping_address"]["city"] = json!(42);
    let cases = [
        (
            events,
            "{\"type\": \"OrderPlaced\",\n \"payload\": }".to_owned(),
            400,
            "SF-API-400",
            "line 2, column",
        ),
        (
            events,
            json!({"type": "OrderPlaced", "payload": wrong}).to_string(),
            400,
            "SF-INGEST-003",
            "/shipping_address/city: expected a string, found 42",
        ),
        (
            events,
            json!([{"type": "OrderPlaced", "payload": order("bad-2", 1)}, {"payload": {}}])
                .to_string(),
            400,
            "SF-INGEST-001",
            "event [1]: ",
        ),
        (
            events,
            json!({"type": "OrderShipped", "payload": {}}).to_string(),
            404,
            "SF-INGEST-002",
            "for topic `orders.events`; known: OrderPlaced",
        ),
        (
            "/v1/events/payroll.events",
            json!({"type": "OrderPlaced", "payload": {}}).to_string(),
            404,
            "SF-API-404",
            "`payroll.events` is not read or written by any loaded saga",
        ),
    ];
    for (path, body, status, code, message) in cases {
        let r = post(path, body.clone(), true).await.unwrap();
        assert_eq!(r.status(), status, "{body}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], code, "{e}");
        let text = e["error"]["message"].as_str().unwrap_or_default();
        assert!(text.contains(message), "`{message}` not in {e}");
    }

    let ended = results(&stack, &["in-1", "in-2", "oos-in-3"]).await;
    assert_eq!(
        ended.values().copied().collect::<Vec<_>>(),
        [
            SagaStatus::Completed,
            SagaStatus::Completed,
            SagaStatus::Compensated
        ],
        "{ended:?}"
    );
    let effects = stack.effects();
    assert!(
        !effects.keys().any(|(_, o)| o.starts_with("bad-")),
        "rejected requests published nothing: {effects:?}"
    );
    // The request's trace context rode on the Kafka record.
    let reader = support::kafka()
        .consumer(&support::unique("ingest"))
        .unwrap();
    reader.subscribe(&[&stack.topic("orders.events")]).unwrap();
    let records = support::consume(&reader, 3, Duration::from_secs(30)).await;
    assert_eq!(records.len(), 3, "exactly the three accepted events");
    let traced: Vec<String> = records
        .iter()
        .filter_map(|m| {
            m.headers()?
                .iter()
                .find(|h| h.key == "traceparent")
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        })
        .collect();
    assert_eq!(traced, [traceparent]);
    let metrics = metrics::scrape(&format!("{base}/metrics")).await.unwrap();
    for line in [
        "sagaflow_ingest_events_total{outcome=\"accepted\",topic=\"orders.events\"} 3",
        "sagaflow_ingest_events_total{outcome=\"unknown_topic\",topic=\"other\"} 1",
    ] {
        assert!(metrics.contains(line), "`{line}` not in metrics");
    }
}
