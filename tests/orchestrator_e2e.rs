//! The orchestrator end to end: OrderPlaced events published as an existing
//! system would (Avro through a real registry) start order-checkout sagas in
//! a real `sagaflow orchestrator` process; real `sagaflow adapter` processes
//! call real HTTP backends; we count what the backends actually did.
//! The crash test kills processes with SIGKILL mid-stream.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::Message;
use rdkafka::consumer::Consumer;
use rdkafka::message::Headers;
use sagaflow_codec::messages::SagaStatus;
use sagaflow_test_support as support;

use common::Stack;

const WAIT: Duration = Duration::from_secs(180);

/// What each order should end as, and what the backends should have done.
fn expected(order: &str) -> (SagaStatus, &'static [&'static str]) {
    if order.starts_with("oos-") {
        (SagaStatus::Compensated, &[])
    } else if order.starts_with("broke-") {
        (SagaStatus::Compensated, &["reserve", "release"])
    } else if order.starts_with("fraud-") {
        (SagaStatus::Compensated, &["reserve", "screen", "release"])
    } else if order.starts_with("big-") {
        (
            SagaStatus::Completed,
            &["reserve", "screen", "charge", "schedule"],
        )
    } else {
        (SagaStatus::Completed, &["reserve", "charge", "schedule"])
    }
}

fn customer(order: &str) -> &'static str {
    if order.starts_with("broke-") {
        "broke"
    } else if order.starts_with("fraud-") {
        "fraudster"
    } else {
        "c-1"
    }
}

fn total(order: &str) -> i64 {
    if order.starts_with("big-") || order.starts_with("fraud-") {
        250_000
    } else {
        4_200
    }
}

fn orders(n: usize) -> Vec<String> {
    let kinds = ["ok", "ok", "ok", "oos", "broke", "fraud", "big", "ok"];
    (0..n)
        .map(|i| format!("{}-{i}", kinds[i % kinds.len()]))
        .collect()
}

/// Every saga ended once, as expected, and every backend effect happened
/// exactly once: nothing lost, nothing doubled.
fn check_exactly_once(
    stack: &Stack,
    orders: &[String],
    results: &BTreeMap<String, sagaflow_codec::messages::SagaResult>,
) {
    for o in orders {
        let id = format!("order-checkout:{o}");
        let r = results
            .get(&id)
            .unwrap_or_else(|| panic!("saga {id} has no result\n{}", stack.logs()));
        assert_eq!(
            r.status,
            expected(o).0,
            "saga {id}: {r:?}\n{:?}\n{}",
            stack.effects(),
            stack.logs()
        );
    }
    let effects = stack.effects();
    for o in orders {
        for op in [
            "reserve", "release", "screen", "charge", "refund", "schedule",
        ] {
            let want = u32::from(expected(o).1.contains(&op));
            let got = effects
                .get(&(op.to_owned(), o.clone()))
                .copied()
                .unwrap_or(0);
            assert_eq!(
                got, want,
                "order {o}: `{op}` happened {got} times, expected {want}\n{effects:?}"
            );
        }
    }
    let ledger = stack.ledger.lock().unwrap();
    assert_eq!(
        ledger.missing_keys, 0,
        "every backend call carries an Idempotency-Key"
    );
}

fn http_addr(stack: &Stack) -> String {
    support::process::wait_until("the orchestrator's HTTP address in its log", WAIT, || {
        stack.orchestrators[0].output().lines().find_map(|l| {
            l.split("http=")
                .nth(1)
                .map(|a| a.split_whitespace().next().unwrap_or("").to_owned())
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn order_checkout_sagas_complete_and_compensate_end_to_end() {
    let mut stack = Stack::start("e2e", 3).await;
    stack.start_adapters();
    stack.start_orchestrator();
    let reader = stack.results_reader();

    let orders = orders(16);
    for o in &orders {
        stack.place_order(o, customer(o), total(o)).await;
    }
    // A redelivered trigger never starts a second saga.
    stack
        .place_order(&orders[0], customer(&orders[0]), total(&orders[0]))
        .await;
    // Garbage on a domain topic is dead-lettered, and the stream goes on.
    stack
        .send_raw(
            &stack.topic("orders.events"),
            "junk",
            b"\x00\x00\x00\x00\x07not avro",
        )
        .await;
    stack
        .send_raw(&stack.topic("orders.events"), "junk2", b"{not even json")
        .await;

    let mut results = BTreeMap::new();
    let mut copies = 0;
    stack
        .collect_results(&reader, &mut results, &mut copies, orders.len(), WAIT)
        .await;
    check_exactly_once(&stack, &orders, &results);
    assert_eq!(results.len(), orders.len(), "one saga per distinct order");

    // The dead letters carry the original bytes, the source and the reason.
    let dlq = support::kafka().consumer(&support::unique("dlq")).unwrap();
    dlq.subscribe(&[&stack.topic("sagaflow.dead-letter")])
        .unwrap();
    let dead = support::consume(&dlq, 2, WAIT).await;
    assert_eq!(
        dead.len(),
        2,
        "both garbage records are dead-lettered\n{}",
        stack.logs()
    );
    for m in &dead {
        let h = m.headers().expect("dead letters carry headers");
        let get = |k: &str| {
            h.iter()
                .find(|x| x.key == k)
                .and_then(|x| x.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        assert_eq!(
            get("sagaflow-dlq-source-topic"),
            Some(stack.topic("orders.events"))
        );
        assert!(get("sagaflow-dlq-reason").is_some_and(|r| !r.is_empty()));
        assert!(get("sagaflow-dlq-code").is_some_and(|c| c.starts_with("SF-")));
        assert!(get("sagaflow-dlq-source-offset").is_some());
    }
    assert!(
        stack.orchestrators[0].running(),
        "the orchestrator keeps running"
    );

    // The HTTP API: a saga's state and history, lists, the synchronous facade.
    let base = format!("http://{}", http_addr(&stack));
    let client = reqwest::Client::new();
    let saga: serde_json::Value = client
        .get(format!("{base}/v1/sagas/order-checkout:{}", orders[4]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(saga["status"], "compensated", "{saga}");
    let kinds: Vec<&str> = saga["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(
        kinds.contains(&"COMPENSATING") && kinds.first() == Some(&"STARTED"),
        "{kinds:?}"
    );
    let failed: serde_json::Value = client
        .get(format!(
            "{base}/v1/sagas?type=order-checkout&status=completed"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let completed = orders
        .iter()
        .filter(|o| expected(o).0 == SagaStatus::Completed)
        .count();
    assert_eq!(failed["sagas"].as_array().unwrap().len(), completed);

    let sync: serde_json::Value = client
        .post(format!("{base}/v1/sagas/order-checkout?wait=60s"))
        .json(&serde_json::json!({
            "order_id": "sync-1", "customer_id": "c-9",
            "items": [{"sku": "SKU-1", "quantity": 2, "unit_price_cents": 1000}],
            "total_cents": 2000, "currency": "EUR",
            "shipping_address": {"line1": "2 Side St", "postal_code": "1", "city": "X", "country": "DE"},
            "placed_at": 1_700_000_000_000i64
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(sync["status"], "completed", "{sync}");
    assert_eq!(sync["output"]["tracking_number"], "t-sync-1", "{sync}");
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("sagaflow_sagas_started_total{saga_type=\"order-checkout\"}"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("order-checkout:"),
        "metrics never carry saga ids"
    );
}

/// Orchestrators are killed with SIGKILL three times while sagas are in
/// flight; every saga still ends exactly once and no backend effect happens
/// twice or goes missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sagas_complete_exactly_once_through_kill_9() {
    let mut stack = Stack::start("crash", 4).await;
    stack.start_adapters();
    stack.start_orchestrator();
    stack.start_orchestrator();
    let reader = stack.results_reader();
    let orders = orders(48);
    let mut results = BTreeMap::new();
    let mut copies = 0;

    for o in &orders[..24] {
        stack.place_order(o, customer(o), total(o)).await;
    }
    stack
        .collect_results(&reader, &mut results, &mut copies, 6, WAIT)
        .await;
    assert!(
        results.len() >= 6,
        "sagas flow before the crash\n{}",
        stack.logs()
    );

    // Kill -9 orchestrators at three moments while sagas are in flight,
    // restarting each right away.
    stack.orchestrators[0].kill9();
    stack.start_orchestrator_in(0);
    for o in &orders[24..36] {
        stack.place_order(o, customer(o), total(o)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stack.orchestrators[1].kill9();
    stack.start_orchestrator_in(1);
    for o in &orders[36..] {
        stack.place_order(o, customer(o), total(o)).await;
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    stack.orchestrators[2].kill9();
    stack.start_orchestrator_in(0);

    stack
        .collect_results(&reader, &mut results, &mut copies, orders.len(), WAIT)
        .await;
    check_exactly_once(&stack, &orders, &results);
    eprintln!(
        "crash test: {} sagas, {} result records ({} re-sent after restores), {} backend requests",
        results.len(),
        copies,
        copies - results.len(),
        stack.ledger.lock().unwrap().requests
    );
}
