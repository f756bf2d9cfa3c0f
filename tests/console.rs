//! The saga console against a real stack: the embedded broker, a schema
//! registry, `sagaflow orchestrator`, `sagaflow adapter`s, HTTP backends
//! and `sagaflow console` as a child process.

mod common;
mod console_support;

use std::collections::BTreeMap;
use std::time::Duration;

use common::Stack;
use console_support::{self as cs, OPERATOR_TOKEN, READ_TOKEN};
use futures::future::join_all;
use rdkafka::producer::FutureRecord;
use sagaflow_codec::SagaEvent;
use sagaflow_codec::messages::{LifecycleKind, SagaLifecycleEvent, SagaResult, SagaStatus};
use sagaflow_test_support::{self as support};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(180);

fn event<'a>(saga: &'a Value, kind: &str, step: &str) -> &'a Value {
    saga["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == kind && (step.is_empty() || e["step"] == step))
        .unwrap_or_else(|| panic!("no {kind} {step} in {saga:#}"))
}

/// Lifecycle events carry each step's input, output and error body, with
/// the definition's sensitive fields redacted; the console indexes them
/// and finds sagas by key, search attribute, status and error text. Reads
/// want a token, and the read token cannot retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_history_carries_step_data_and_answers_searches() {
    let mut stack = Stack::start("console-history", 2).await;
    stack.start_orchestrator();
    stack.start_adapters();
    let db = stack.path("history.db");
    let cfg = cs::config(&stack, "console", &db, None, true);
    let console = cs::start(&stack, "console", &cfg);
    stack.place_order("ok-1", "alice", 5_000).await;
    stack.place_order("declined-1", "broke", 7_000).await;

    // Straight from the topic: a completed saga's events carry step data.
    let reader = stack.results_reader();
    let topic = stack.topic("sagaflow.saga-events");
    let mut seen_output = None;
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen_output.is_none() {
        let m = tokio::time::timeout_at(deadline, reader.recv())
            .await
            .unwrap_or_else(|_| panic!("no STEP_SUCCEEDED on the topic\n{}", stack.logs()));
        let Ok(m) = m else { continue };
        let Some(bytes) = rdkafka::Message::payload(&m) else {
            continue;
        };
        if let Ok(SagaEvent::Lifecycle(e)) = stack.codec.decode_saga_event(&topic, bytes).await
            && e.kind == LifecycleKind::StepSucceeded
            && e.saga_id == "order-checkout:ok-1"
            && e.step.as_deref() == Some("reserve_inventory")
        {
            seen_output = e.output.clone();
        }
    }
    assert_eq!(seen_output, Some(json!({"reservation_id": "r-ok-1"})));

    let ok = cs::saga_with_status(&stack, &console, "order-checkout:ok-1", "COMPLETED").await;
    let started = event(&ok, "STARTED", "");
    assert_eq!(started["input"]["order_id"], "ok-1");
    assert_eq!(
        started["input"]["shipping_address"], "[redacted]",
        "{started:#}"
    );
    assert_eq!(ok["attributes"]["customer_id"], "alice");
    assert_eq!(ok["attributes"]["key"], "ok-1");
    assert_eq!(ok["key"], "ok-1");
    let reserve = event(&ok, "STEP_STARTED", "reserve_inventory");
    assert_eq!(reserve["input"]["order_id"], "ok-1");
    let reserved = event(&ok, "STEP_SUCCEEDED", "reserve_inventory");
    assert_eq!(reserved["output"]["reservation_id"], "r-ok-1");
    let charged = event(&ok, "STEP_SUCCEEDED", "charge_payment");
    assert_eq!(charged["output"]["payment_id"], "p-ok-1");
    assert!(
        ok["diagram_svg"]
            .as_str()
            .unwrap()
            .contains("charge_payment")
    );
    assert!(
        ok["output"].is_object(),
        "the result's output is kept: {ok:#}"
    );

    let declined =
        cs::saga_with_status(&stack, &console, "order-checkout:declined-1", "COMPENSATED").await;
    let failed = event(&declined, "STEP_FAILED", "charge_payment");
    assert_eq!(
        failed["error"]["data"]["error"], "card declined",
        "{failed:#}"
    );
    event(
        &declined,
        "COMPENSATION_STEP_SUCCEEDED",
        "reserve_inventory",
    );
    assert!(
        declined["diagram_svg"]
            .as_str()
            .unwrap()
            .contains(r#"class="node compensated" data-step="reserve_inventory""#)
    );

    let search = |q: &'static str| {
        let url = console.url.clone();
        async move {
            let (code, v) = cs::get(&url, &format!("/api/sagas?{q}"), Some(READ_TOKEN)).await;
            assert_eq!(code, 200, "{q}: {v}");
            v["sagas"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["saga_id"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(search("key=ok-1").await, ["order-checkout:ok-1"]);
    assert_eq!(
        search("attr.customer_id=broke").await,
        ["order-checkout:declined-1"]
    );
    assert_eq!(
        search("error=card%20declined").await,
        ["order-checkout:declined-1"],
        "{:#}",
        declined["error"]
    );
    assert_eq!(
        search("status=COMPLETED&type=order-checkout").await,
        ["order-checkout:ok-1"]
    );
    assert_eq!(
        search("id=order-checkout:decl").await,
        ["order-checkout:declined-1"]
    );
    assert!(search("attr.customer_id=nobody").await.is_empty());

    // Bad input is a 400 naming the parameter; a missing token is a 401;
    // the read token cannot act; nothing acts without an orchestrator.
    let (code, v) = cs::get(&console.url, "/api/sagas?colour=red", Some(READ_TOKEN)).await;
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (400, Some("SF-CON-006")),
        "{v}"
    );
    assert_eq!(cs::get(&console.url, "/api/overview", None).await.0, 401);
    assert_eq!(
        cs::get(&console.url, "/api/overview", Some("wrong"))
            .await
            .0,
        401
    );
    let (code, _) = cs::post(
        &console.url,
        "/api/sagas/order-checkout:ok-1/retry",
        Some(READ_TOKEN),
        json!({}),
    )
    .await;
    assert_eq!(code, 403);
    let (code, _) = cs::post(
        &console.url,
        "/api/bulk/retry?status=FAILED",
        Some(READ_TOKEN),
        json!({"dry_run": true}),
    )
    .await;
    assert_eq!(code, 403);
    let (code, v) = cs::post(
        &console.url,
        "/api/bulk/retry?status=COMPENSATED",
        Some(OPERATOR_TOKEN),
        json!({"dry_run": true}),
    )
    .await;
    assert_eq!((code, v["matched"].as_i64()), (200, Some(1)), "{v}");
    let (_, o) = cs::get(&console.url, "/api/overview", Some(READ_TOKEN)).await;
    assert_eq!(o["counts"]["order-checkout"]["COMPLETED"], 1, "{o}");
    assert_eq!(o["counts"]["order-checkout"]["COMPENSATED"], 1, "{o}");
    // Nothing of the tokens in the log.
    let log = console.child.output();
    assert!(!log.contains(READ_TOKEN) && !log.contains(OPERATOR_TOKEN));
}

fn life(id: &str, seq: u32, kind: LifecycleKind, at: i64) -> SagaLifecycleEvent {
    SagaLifecycleEvent {
        event_id: format!("{id}/{seq}"),
        saga_id: id.to_owned(),
        saga_type: "order-checkout".into(),
        saga_version: 1,
        kind,
        step: (seq > 1 && seq < 6).then(|| format!("step_{}", seq / 2)),
        attempt: Some(1),
        detail: None,
        at,
        input: Some(json!({"n": seq})),
        attributes: if seq == 1 {
            [("key".to_string(), id.to_string())].into()
        } else {
            Default::default()
        },
        ..Default::default()
    }
}

/// Publishes `sagas` synthetic sagas (6 lifecycle events and a result
/// each) to the saga events topic, and `dead` dead letters.
async fn publish_history(stack: &Stack, sagas: usize, dead: usize) {
    let topic = stack.topic("sagaflow.saga-events");
    let kinds = [
        LifecycleKind::Started,
        LifecycleKind::StepStarted,
        LifecycleKind::StepSucceeded,
        LifecycleKind::StepStarted,
        LifecycleKind::StepSucceeded,
        LifecycleKind::Completed,
    ];
    // Recent times: the console's retention (7d here) removes sagas that
    // ended longer ago.
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - 3_600_000;
    let mut records: Vec<(String, Vec<u8>)> = Vec::new();
    for n in 0..sagas {
        let id = format!("order-checkout:h-{n:05}");
        for (i, kind) in kinds.iter().enumerate() {
            let e = life(&id, i as u32 + 1, *kind, t0 + n as i64);
            records.push((id.clone(), stack.codec.encode(&topic, &e).await.unwrap()));
        }
        let r = SagaResult {
            saga_id: id.clone(),
            saga_type: "order-checkout".into(),
            saga_version: 1,
            status: SagaStatus::Completed,
            output: json!({"n": n}),
            error: None,
            started_at: t0 + n as i64,
            ended_at: t0 + 1 + n as i64,
        };
        records.push((id, stack.codec.encode(&topic, &r).await.unwrap()));
    }
    for chunk in records.chunks(500) {
        let sends = chunk.iter().map(|(k, v)| {
            stack.producer.send(
                FutureRecord::to(&topic).key(k).payload(v),
                Duration::from_secs(30),
            )
        });
        for r in join_all(sends).await {
            r.map_err(|(e, _)| e).unwrap();
        }
    }
    let orders = stack.topic("orders.events");
    for i in 0..dead {
        cs::send_dead_letter(
            stack,
            &orders,
            i as i64,
            &format!("d-{i}"),
            format!("junk {i}").as_bytes(),
            "SF-ORCH-010",
            "the event has no type",
        )
        .await;
    }
}

async fn counts(db: &std::path::Path) -> BTreeMap<String, i64> {
    sagaflow_console::Store::open(db)
        .await
        .unwrap()
        .table_counts()
        .await
        .unwrap()
}

/// kill -9 in the middle of indexing, then a restart on the same file:
/// every saga, event and dead letter is there exactly once. Then the file
/// is deleted and a new console rebuilds the same history from the topics.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_history_survives_kill_9_and_rebuilds_from_the_topics() {
    let stack = Stack::start("console-durable", 3).await;
    for t in ["sagaflow.saga-events", "sagaflow.dead-letter"] {
        support::create(sagaflow_bus::TopicSpec::new(stack.topic(t), 3)).await;
    }
    let (sagas, dead) = (4_000usize, 40usize);
    let events = sagas * 6;
    let records = sagas * 7 + dead;
    publish_history(&stack, sagas, dead).await;

    let db = stack.path("durable.db");
    // Small transactions, so that the kill lands in the middle.
    let cfg = cs::config_with(&stack, "durable", &db, None, false, "batch-size: 25\n");
    let mut console = cs::start(&stack, "durable", &cfg);
    // Kill as soon as some (not all) records are in.
    let at_kill = cs::until(
        &stack,
        Some(&console),
        "the first indexed batch",
        Duration::from_secs(120),
        || {
            let url = console.url.clone();
            async move {
                let (_, o) = cs::get(&url, "/api/overview", None).await;
                o["indexed_records"].as_u64().filter(|n| *n > 0)
            }
        },
    )
    .await;
    console.child.kill9();
    assert!(
        (at_kill as usize) < records,
        "the kill came after indexing had finished ({at_kill} records): nothing was tested"
    );
    let partial = counts(&db).await;
    assert!(partial["events"] < events as i64, "{partial:?}");

    let console = cs::start(&stack, "durable-2", &cfg);
    let expected: BTreeMap<String, i64> = [
        ("sagas".to_string(), sagas as i64),
        ("events".to_string(), events as i64),
        ("attributes".to_string(), sagas as i64),
        ("dead_letters".to_string(), dead as i64),
        ("skipped".to_string(), 0),
    ]
    .into();
    let db2 = db.clone();
    let exp = expected.clone();
    cs::until(
        &stack,
        Some(&console),
        "the restarted console to catch up",
        WAIT,
        || {
            let db = db2.clone();
            let exp = exp.clone();
            async move { (counts(&db).await == exp).then_some(()) }
        },
    )
    .await;
    let (_, o) = cs::get(&console.url, "/api/overview", None).await;
    assert_eq!(
        o["counts"]["order-checkout"]["COMPLETED"], sagas as i64,
        "{o}"
    );
    // Nothing more arrives later (no record applied twice).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(counts(&db).await, expected);
    drop(console);

    // The file is lost: a new console rebuilds everything.
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let console = cs::start(&stack, "durable-3", &cfg);
    let db3 = db.clone();
    let exp = expected.clone();
    cs::until(
        &stack,
        Some(&console),
        "the console to rebuild its history",
        WAIT,
        || {
            let db = db3.clone();
            let exp = exp.clone();
            async move { (counts(&db).await == exp).then_some(()) }
        },
    )
    .await;
    let (_, d) = cs::get(&console.url, "/api/sagas/order-checkout:h-00007", None).await;
    assert_eq!(d["events"].as_array().unwrap().len(), 6, "{d}");
    assert_eq!(d["output"], json!({"n": 7}));
}

/// Dead letters whose source is the orders topic are redriven, with their
/// original key, value and headers, and their sagas start and complete; an
/// audit line records who did it and how many.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redriven_dead_letters_start_their_sagas() {
    let mut stack = Stack::start("console-redrive", 2).await;
    stack.start_orchestrator();
    stack.start_adapters();
    let api = stack.orchestrators[0].http_addr(WAIT);
    let db = stack.path("redrive.db");
    let cfg = cs::config(
        &stack,
        "redrive",
        &db,
        Some(&format!("http://{api}")),
        false,
    );
    let console = cs::start(&stack, "redrive", &cfg);
    let orders = stack.topic("orders.events");
    for i in 0..3 {
        let id = format!("dlq-{i}");
        let bytes = stack.order_placed(&id, "c-dlq", 1_000).await;
        cs::send_dead_letter(
            &stack,
            &orders,
            100 + i,
            &id,
            &bytes,
            "SF-ORCH-099",
            "the registry was down (test)",
        )
        .await;
    }
    let list = cs::until(
        &stack,
        Some(&console),
        "3 dead letters in the console",
        WAIT,
        || {
            let url = console.url.clone();
            async move {
                let (_, v) = cs::get(&url, "/api/dead-letters?open=true", None).await;
                let list = v["dead_letters"].as_array().cloned().unwrap_or_default();
                (list.len() == 3).then_some(list)
            }
        },
    )
    .await;
    let ids: Vec<i64> = list.iter().map(|d| d["id"].as_i64().unwrap()).collect();
    let (code, one) = cs::get(&console.url, &format!("/api/dead-letters/{}", ids[0]), None).await;
    assert_eq!(code, 200);
    assert_eq!(one["payload_format"], "avro", "{one}");
    assert!(
        one["payload"]["order_id"]
            .as_str()
            .unwrap()
            .starts_with("dlq-"),
        "{one}"
    );
    assert_eq!(one["code"], "SF-ORCH-099");
    assert_eq!(one["source_topic"], orders.as_str());
    // Redrive without the operator token: refused.
    // No read token here, so a caller without a token reads, and only reads.
    let (code, _) = cs::post(
        &console.url,
        "/api/dead-letters/redrive",
        None,
        json!({"ids": ids}),
    )
    .await;
    assert_eq!(code, 403);
    let (code, v) = cs::post(
        &console.url,
        "/api/dead-letters/redrive",
        Some(OPERATOR_TOKEN),
        json!({"ids": ids, "actor": "test"}),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["redriven"].as_array().unwrap().len(), 3, "{v}");
    for i in 0..3 {
        cs::saga_with_status(
            &stack,
            &console,
            &format!("order-checkout:dlq-{i}"),
            "COMPLETED",
        )
        .await;
    }
    let (_, open) = cs::get(&console.url, "/api/dead-letters?open=true", None).await;
    assert_eq!(open["dead_letters"].as_array().unwrap().len(), 0, "{open}");
    let (_, audit) = cs::get(&console.url, "/api/audit", None).await;
    let line = &audit["audit"][0];
    assert_eq!(
        (line["action"].as_str(), line["succeeded"].as_i64()),
        (Some("redrive"), Some(3)),
        "{audit}"
    );
    assert!(line["who"].as_str().unwrap().starts_with("test"), "{audit}");

    // The same through the CLI.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(sagaflow_test_support::process::sagaflow_bin())
            .args(args)
            .args(["--console", &console.url])
            .env("SAGAFLOW_CONSOLE_TOKEN", OPERATOR_TOKEN)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = cli(&["saga", "list", "--attr", "customer_id=c-dlq"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.matches("order-checkout:dlq-").count(), 3, "{out}");
    let (code, out, err) = cli(&["saga", "list", "--key", "dlq-1"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("order-checkout:dlq-1") && !out.contains("dlq-2"),
        "{out}"
    );
    let (code, out, err) = cli(&[
        "saga",
        "retry",
        "--filter",
        "status=COMPLETED",
        "--filter",
        "attr.customer_id=c-dlq",
        "--dry-run",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("3 sagas match; nothing changed"), "{out}");
    let (code, out, err) = cli(&["dlq", "list"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.matches("redriven").count(), 3, "{out}");
    let (code, out, err) = cli(&["dlq", "show", &ids[0].to_string()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("\"payload_format\": \"avro\""), "{out}");
    let (code, _, err) = cli(&["saga", "list", "--error", "x", "--status", "sleeping"]);
    assert_eq!(code, Some(2), "{err}");
    // The dry run changed nothing: the audit log has only the redrive.
    let (_, audit) = cs::get(&console.url, "/api/audit", None).await;
    assert_eq!(audit["audit"].as_array().unwrap().len(), 1, "{audit}");
}
