//! The orchestrator end to end: OrderPlaced events published as an existing
//! system would (Avro through a real registry) start order-checkout sagas in
//! a real `sagaflow orchestrator` process; real `sagaflow adapter` processes
//! call real HTTP backends; we count what the backends actually did.
//! The crash test kills processes with SIGKILL mid-stream.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, OwnedMessage};
use sagaflow_codec::messages::SagaStatus;
use sagaflow_test_support as support;
use sagaflow_test_support::metrics;

use common::Stack;

const WAIT: Duration = Duration::from_secs(180);

/// Partitions of the stacks that kill and replace orchestrators.
const PARTITIONS: u32 = 6;

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
        // The saga's own facts come last: a CI log keeps only the tail.
        assert_eq!(
            r.status,
            expected(o).0,
            "{}\nsaga {id}: {r:?}\nits effects: {:?}",
            stack.logs(),
            stack
                .effects()
                .iter()
                .filter(|((_, order), _)| order == o)
                .collect::<Vec<_>>(),
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
    // Re-sent copies carry the same event id: one terminal event per saga.
    let terminal = stack.terminal.lock().unwrap();
    for o in orders {
        let id = format!("order-checkout:{o}");
        let n = terminal.get(&id).map_or(0, |ids| ids.len());
        assert_eq!(n, 1, "saga {id} has {n} distinct terminal lifecycle events");
    }
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

    let (results, _) = ended_exactly_once(&stack, &reader, &orders).await;
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
    let base = format!("http://{}", stack.orchestrators[0].http_addr(WAIT));
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
    let metrics = metrics::scrape(&format!("{base}/metrics")).await.unwrap();
    assert!(
        metrics.contains("sagaflow_sagas_started_total{saga_type=\"order-checkout\"}"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("order-checkout:"),
        "metrics never carry saga ids"
    );
}

/// SIGKILLs the orchestrator of a random slot, starts its replacement in
/// the same slot after a random pause (sometimes at once, sometimes later),
/// and waits until the replacement holds its partitions: a member killed
/// while still joining stalls its group on tansu (docs/broker.md), the
/// broker's gap rather than ours to test. Returns the slot.
/// Reads every saga's result (and, for a second more, any copies), then
/// checks them as [`check_exactly_once`] does; returns the results and how
/// many result records were read.
async fn ended_exactly_once(
    stack: &Stack,
    reader: &StreamConsumer,
    orders: &[String],
) -> (
    BTreeMap<String, sagaflow_codec::messages::SagaResult>,
    usize,
) {
    let mut results = BTreeMap::new();
    let mut copies = 0;
    stack
        .collect_results(reader, &mut results, &mut copies, orders.len(), WAIT)
        .await;
    stack
        .drain_saga_events(reader, &mut results, &mut copies, Duration::from_secs(1))
        .await;
    check_exactly_once(stack, orders, &results);
    (results, copies)
}

/// Waits until the instance serving `base` owns a partition.
async fn owns_partitions(stack: &Stack, base: &str) {
    metrics::wait_for_sum(
        &format!("{base}/metrics"),
        "sagaflow_owned_partitions",
        &[],
        1.0,
        WAIT,
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{base} was never assigned partitions\n{e}\n{}",
            stack.logs()
        )
    });
}

async fn replace_orchestrator(stack: &mut Stack, live: &mut [usize; 2], rng: &mut Rng) -> usize {
    let slot = rng.below(2) as usize;
    stack.orchestrators[live[slot]].kill9();
    tokio::time::sleep(Duration::from_millis(rng.below(600))).await;
    live[slot] = stack.start_orchestrator_in(slot);
    let replacement = &stack.orchestrators[live[slot]];
    let deadline = std::time::Instant::now() + WAIT;
    while !replacement.output().contains("partition restored") {
        assert!(
            std::time::Instant::now() < deadline,
            "the replacement never restored its partitions\n{}",
            stack.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    group_settles(stack, live).await;
    slot
}

/// Waits until the live orchestrators own every partition between them,
/// and have for [`SETTLED`]. tansu may revoke a newcomer's first
/// assignment at once and assign it again seconds later; an instance killed
/// in that gap left partitions owned by nobody for good (CI, 2026-12-04:
/// the replacement's first restore was revoked 20 ms later, the next kill
/// fell in the gap, and its replacement never restored). On Kafka a dead
/// member's partitions move after the session timeout (docs/broker.md).
async fn group_settles(stack: &Stack, live: &[usize; 2]) {
    const SETTLED: Duration = Duration::from_secs(4);
    let urls: Vec<String> = live
        .iter()
        .map(|&i| format!("http://{}/metrics", stack.orchestrators[i].http_addr(WAIT)))
        .collect();
    let deadline = std::time::Instant::now() + WAIT;
    let mut since: Option<std::time::Instant> = None;
    loop {
        let mut owned = 0.0;
        for url in &urls {
            if let Ok(text) = metrics::scrape(url).await {
                owned += metrics::sum(&text, "sagaflow_owned_partitions", &[]);
            }
        }
        let now = std::time::Instant::now();
        if owned == f64::from(PARTITIONS) {
            let at = *since.get_or_insert(now);
            if now.duration_since(at) >= SETTLED {
                return;
            }
        } else {
            since = None;
        }
        assert!(
            now < deadline,
            "the orchestrators' group never settled owning all {PARTITIONS} partitions (last: {owned})\n{}",
            stack.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The tests that kill or add group members run one at a time: tansu
/// stalled a forming group while another group on the same broker waited
/// for a killed member (docs/broker.md).
static GROUP_CHAOS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A small deterministic generator for the kill schedule; the seed is
/// printed so a failing schedule can be replayed with SAGAFLOW_CRASH_SEED.
struct Rng(u64);

impl Rng {
    fn from_env() -> Self {
        let seed = std::env::var("SAGAFLOW_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("kill schedule seed: SAGAFLOW_CRASH_SEED={seed}");
        Self(seed | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

async fn encoded_orders(stack: &Stack, orders: &[String]) -> Vec<(String, Vec<u8>)> {
    let mut records = Vec::with_capacity(orders.len());
    for o in orders {
        records.push((
            o.clone(),
            stack.order_placed(o, customer(o), total(o)).await,
        ));
    }
    records
}

/// 2,000 sagas in flight across two orchestrator processes; one of them is
/// killed with SIGKILL at random moments, four times, and restarted. Every
/// saga still ends exactly once and every backend effect happens once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sagas_complete_exactly_once_through_kill_9() {
    let _alone = GROUP_CHAOS.lock().await;
    let mut stack = Stack::start("crash", PARTITIONS).await;
    stack.start_adapters();
    let mut live = [
        stack.start_orchestrator_in(0),
        stack.start_orchestrator_in(1),
    ];
    let reader = stack.results_reader();
    let orders = orders(2_000);
    let records = encoded_orders(&stack, &orders).await;
    let mut rng = Rng::from_env();
    let mut results = BTreeMap::new();
    let mut copies = 0;

    let publishing = stack.publish_paced(&stack.topic("orders.events"), records, 250);
    let started = std::time::Instant::now();
    // Kills start once sagas flow: a member killed while its group is still
    // forming stalls the group on tansu (docs/broker.md).
    stack
        .collect_results(&reader, &mut results, &mut copies, 20, WAIT)
        .await;
    let mut kills = Vec::new();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(400 + rng.below(1_100))).await;
        let slot = replace_orchestrator(&mut stack, &mut live, &mut rng).await;
        kills.push(format!(
            "slot {slot} at {:.1}s",
            started.elapsed().as_secs_f64()
        ));
    }
    publishing.await.unwrap();
    stack
        .collect_all(
            &reader,
            &mut results,
            &mut copies,
            orders.len(),
            Duration::from_secs(300),
        )
        .await;
    eprintln!(
        "crash test: kill -9 {}; {} sagas in {:.1}s, {} result records ({} re-sent after restores), {} backend requests",
        kills.join(", "),
        results.len(),
        started.elapsed().as_secs_f64(),
        copies,
        copies - results.len(),
        stack.ledger.lock().unwrap().requests
    );
    check_exactly_once(&stack, &orders, &results);
}

/// A third instance joins while sagas flow: it takes partitions over from
/// the two running ones, restores their sagas and finishes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_third_instance_takes_partitions_over_mid_run() {
    let _alone = GROUP_CHAOS.lock().await;
    let mut stack = Stack::start("rebalance", 6).await;
    stack.start_adapters();
    stack.start_orchestrator_in(0);
    stack.start_orchestrator_in(1);
    let reader = stack.results_reader();
    let orders = orders(600);
    let mut records = encoded_orders(&stack, &orders).await;
    let after_join = records.split_off(400);
    let mut results = BTreeMap::new();
    let mut copies = 0;

    // Sagas flow while the third instance joins and the group rebalances...
    let publishing = stack.publish_paced(&stack.topic("orders.events"), records, 150);
    stack
        .collect_results(&reader, &mut results, &mut copies, 50, WAIT)
        .await;
    let third = stack.start_orchestrator_in(2);
    let base = format!("http://{}", stack.orchestrators[third].http_addr(WAIT));
    // ...until it owns partitions (however long tansu's rebalance takes)...
    owns_partitions(&stack, &base).await;
    publishing.await.unwrap();
    // ...and go on after it: the newcomer ends some of them.
    stack
        .publish_paced(&stack.topic("orders.events"), after_join, 150)
        .await
        .unwrap();
    stack
        .collect_results(&reader, &mut results, &mut copies, orders.len(), WAIT)
        .await;
    stack
        .drain_saga_events(&reader, &mut results, &mut copies, Duration::from_secs(1))
        .await;
    check_exactly_once(&stack, &orders, &results);

    // The newcomer owns partitions and ended sagas on them.
    let metrics = metrics::scrape(&format!("{base}/metrics")).await.unwrap();
    let value = |name: &str| -> f64 { metrics::sum(&metrics, name, &[]) };
    assert!(
        value("sagaflow_owned_partitions") >= 1.0,
        "the third instance owns partitions\n{metrics}\n{}",
        stack.logs()
    );
    assert!(
        value("sagaflow_sagas_ended_total") >= 1.0,
        "the third instance ended sagas\n{metrics}\n{}",
        stack.logs()
    );
    eprintln!(
        "rebalance: third instance owns {} partitions, ended {} sagas; {} result records for {} sagas",
        value("sagaflow_owned_partitions"),
        value("sagaflow_sagas_ended_total"),
        copies,
        results.len()
    );
}

/// The facade answered `order` with the ending its saga should have.
fn ended(stack: &Stack, order: &str, body: &serde_json::Value) {
    let want = format!("{:?}", expected(order).0).to_lowercase();
    assert_eq!(
        body["status"],
        want.as_str(),
        "order {order}: {body}\n{}",
        stack.logs()
    );
}

/// Saga starts through the HTTP facade of one of two instances: a start
/// whose partition the instance owns is applied by its own driver
/// (`direct`), the others go through `sagaflow.inputs` to the other
/// instance. Then the instance is killed with SIGKILL while starts are in
/// flight; callers retry what got no answer, with the same
/// `Idempotency-Key`, at the other instance. Every saga ends once and every
/// backend effect happens once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn facade_starts_reach_their_owner_directly_or_through_the_inputs_and_survive_kill_9() {
    let _alone = GROUP_CHAOS.lock().await;
    let mut stack = Stack::start("facade", 6).await;
    stack.start_adapters();
    let first = stack.start_orchestrator_in(0);
    let second = stack.start_orchestrator_in(1);
    let reader = stack.results_reader();
    let bases: Vec<String> = [first, second]
        .iter()
        .map(|&i| format!("http://{}", stack.orchestrators[i].http_addr(WAIT)))
        .collect();
    for base in &bases {
        owns_partitions(&stack, base).await;
    }
    let client = reqwest::Client::new();
    let start = |base: &str, order: &str| {
        let request = client
            .post(format!("{base}/v1/sagas/order-checkout?wait=120s"))
            .header("idempotency-key", format!("facade-{order}"))
            .json(&common::order_json(order, customer(order), total(order)));
        let order = order.to_owned();
        async move {
            let answer = request.send().await.map_err(|e| e.to_string())?;
            let body: serde_json::Value = answer.json().await.map_err(|e| e.to_string())?;
            Ok::<_, String>((order, body))
        }
    };

    // Both paths, from one facade.
    let calm: Vec<String> = orders(24).iter().map(|o| format!("{o}-calm")).collect();
    let answers = futures::future::join_all(calm.iter().map(|o| start(&bases[0], o))).await;
    for answer in answers {
        let (order, body) = answer.expect("the facade answers");
        ended(&stack, &order, &body);
    }
    let text = metrics::scrape(&format!("{}/metrics", bases[0]))
        .await
        .unwrap();
    let path = |p: &str| metrics::sum(&text, "sagaflow_facade_starts_total", &[("path", p)]);
    assert!(
        path("direct") >= 1.0 && path("inputs") >= 1.0 && path("direct") + path("inputs") == 24.0,
        "24 starts, some applied by the owner and some through the inputs: direct {}, inputs {}",
        path("direct"),
        path("inputs")
    );

    // SIGKILL with starts in flight; the unanswered are retried elsewhere.
    let stormy: Vec<String> = orders(40).iter().map(|o| format!("{o}-storm")).collect();
    let in_flight = futures::future::join_all(stormy.iter().map(|o| start(&bases[0], o)));
    let kill = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        stack.orchestrators[first].kill9();
    };
    let (answers, ()) = tokio::join!(in_flight, kill);
    let mut retried = Vec::new();
    for (order, answer) in stormy.iter().zip(answers) {
        match answer {
            Ok((order, body)) if body["status"] != "running" => ended(&stack, &order, &body),
            _ => retried.push(order.clone()),
        }
    }
    // The killed member comes back under its id (tansu never expires a
    // dead static member, docs/broker.md); the retries go to the survivor.
    stack.start_orchestrator_in(0);
    let answers = futures::future::join_all(retried.iter().map(|o| start(&bases[1], o))).await;
    for answer in answers {
        let (order, body) = answer.expect("the surviving facade answers");
        ended(&stack, &order, &body);
    }
    eprintln!(
        "facade: {} of {} starts answered before the kill, {} retried",
        stormy.len() - retried.len(),
        stormy.len(),
        retried.len()
    );

    let all: Vec<String> = calm.iter().chain(&stormy).cloned().collect();
    ended_exactly_once(&stack, &reader, &all).await;
}

/// A paused orchestrator is replaced while it lives (SIGSTOP, as a long GC
/// pause or a network partition would), then resumes (SIGCONT) with its
/// stale state and whatever batch it was in. The replacement's ownership
/// marker fences it: every saga still ends exactly once and every backend
/// effect happens once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_owner_resuming_after_its_replacement_changes_nothing() {
    let _alone = GROUP_CHAOS.lock().await;
    let mut stack = Stack::start("zombie", 6).await;
    stack.start_adapters();
    let zombie = stack.start_orchestrator_in(0);
    stack.start_orchestrator_in(1);
    let reader = stack.results_reader();
    let orders = orders(600);
    let records = encoded_orders(&stack, &orders).await;
    let mut results = BTreeMap::new();
    let mut copies = 0;
    let publishing = stack.publish_paced(&stack.topic("orders.events"), records, 150);
    stack
        .collect_results(&reader, &mut results, &mut copies, 20, WAIT)
        .await;
    stack.orchestrators[zombie].signal("STOP");
    let replacement = stack.start_orchestrator_in(0);
    let r = &stack.orchestrators[replacement];
    support::process::wait_until("the replacement to restore its partitions", WAIT, || {
        r.output().contains("partition restored").then_some(())
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack.orchestrators[zombie].signal("CONT");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let zombie_log = stack.orchestrators[zombie].output();
    stack.orchestrators[zombie].kill9();
    publishing.await.unwrap();
    stack
        .collect_all(
            &reader,
            &mut results,
            &mut copies,
            orders.len(),
            Duration::from_secs(300),
        )
        .await;
    eprintln!(
        "zombie test: {} sagas, {} result records; the resumed owner {}",
        results.len(),
        copies,
        if zombie_log.contains("another instance has taken this partition over") {
            "found itself replaced and let its partitions go"
        } else {
            "wrote nothing after its replacement"
        }
    );
    check_exactly_once(&stack, &orders, &results);
}

/// The order-checkout saga with a 3 s timeout on `charge_payment` (30 s
/// in `topology/sagas`) and one attempt only (a timed-out charge is not
/// tried again: the saga compensates), in a directory of its own.
fn quick_charge_sagas() -> tempfile::TempDir {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("topology/sagas/order-checkout.yaml")).unwrap();
    let quick = text.replacen(
        "    timeout: 30s\n    bind: payment",
        "    timeout: 3s\n    retry:\n      max-attempts: 1\n    bind: payment",
        1,
    );
    assert_ne!(
        quick, text,
        "order-checkout.yaml's charge_payment has a 30 s timeout"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("order-checkout.yaml"), quick).unwrap();
    dir
}

/// Waits for the charge command of `order` in the payment adapter's topic
/// and returns its timestamp (ms since the epoch).
async fn charge_sent(commands: &StreamConsumer, order: &str) -> i64 {
    let saga = format!("order-checkout:{order}");
    let m = first(commands, &format!("no charge command for {order}"), |m| {
        support::header(m, "sagaflow-saga-id").as_deref() == Some(&saga)
    })
    .await;
    m.timestamp().to_millis().unwrap()
}

/// Waits for the payment adapter's reply to the charge of `order`.
async fn charge_replied(replies: &StreamConsumer, order: &str) {
    let charge = format!("order-checkout:{order}/charge_payment/");
    first(
        replies,
        &format!("no reply to the charge of {order}"),
        |m| support::header(m, "sagaflow-message-id").is_some_and(|id| id.starts_with(&charge)),
    )
    .await;
}

/// The next record of `consumer` that `wanted` accepts, within `WAIT`.
async fn first(
    consumer: &StreamConsumer,
    missing: &str,
    wanted: impl Fn(&OwnedMessage) -> bool,
) -> OwnedMessage {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let m = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("{missing}"));
        let Ok(m) = m else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let m = m.detach();
        if wanted(&m) {
            return m;
        }
    }
}

/// Sleeps until `ms` after the epoch time `from`.
async fn sleep_past(from: i64, ms: i64) {
    let left = from + ms - sagaflow_bus::now_ms() as i64;
    tokio::time::sleep(Duration::from_millis(left.max(0) as u64)).await;
}

/// Checks how the saga of `order` ended and how often the backends did
/// each of `ops`.
fn check_order(
    stack: &Stack,
    results: &BTreeMap<String, sagaflow_codec::messages::SagaResult>,
    order: &str,
    status: SagaStatus,
    ops: &[(&str, u32)],
    why: &str,
) {
    let id = format!("order-checkout:{order}");
    let r = results
        .get(&id)
        .unwrap_or_else(|| panic!("saga {id} has no result\n{}", stack.logs()));
    let effects = stack.effects();
    assert_eq!(
        r.status,
        status,
        "{order}: {why}\n{effects:?}\n{}",
        stack.logs()
    );
    for (op, n) in ops {
        let got = effects
            .get(&((*op).to_owned(), order.to_owned()))
            .copied()
            .unwrap_or(0);
        assert_eq!(got, *n, "{order}: `{op}` happened {got} times\n{effects:?}");
    }
}

/// A reply produced in time wins over the step's timeout even when the
/// orchestrator reads it only after the deadline: the owner is stopped
/// (SIGSTOP) while the charge is answered and resumes past the deadline,
/// its clock past the timer and the reply unread. A reply that never
/// comes still times the step out. The charge step has a 3 s timeout and
/// a single attempt, so a timeout compensates the saga.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reply_in_time_beats_a_timeout_the_orchestrator_was_away_for() {
    let sagas = quick_charge_sagas();
    let mut stack = Stack::start_with_sagas("intime", 1, sagas.path()).await;
    stack.start_adapters();
    let owner = stack.start_orchestrator_in(0);
    let reader = stack.results_reader();
    let commands = stack.reader("sagaflow.commands.payment");
    let replies = stack.reader("sagaflow.replies");
    let payment = stack
        .adapters
        .iter()
        .position(|a| a.name == "payment")
        .unwrap();
    let mut results = BTreeMap::new();
    let mut copies = 0;
    let in_time = [
        ("charge", 1),
        ("refund", 0),
        ("schedule", 1),
        ("release", 0),
    ];

    // 1. The owner is stopped while the charge is answered, and resumes
    // after the deadline with the reply unread.
    stack.adapters[payment].signal("STOP");
    stack.place_order("ok-1", "c-1", 4_200).await;
    let sent = charge_sent(&commands, "ok-1").await;
    stack.orchestrators[owner].signal("STOP");
    stack.adapters[payment].signal("CONT");
    charge_replied(&replies, "ok-1").await;
    sleep_past(sent, 4_000).await;
    stack.orchestrators[owner].signal("CONT");
    stack
        .collect_results(&reader, &mut results, &mut copies, 1, WAIT)
        .await;
    check_order(
        &stack,
        &results,
        "ok-1",
        SagaStatus::Completed,
        &in_time,
        "the reply came in time",
    );

    // 2. No reply at all: the step still times out, and the saga is
    // compensated.
    stack.adapters[payment].signal("STOP");
    stack.place_order("ok-2", "c-1", 4_200).await;
    stack
        .collect_results(&reader, &mut results, &mut copies, 2, WAIT)
        .await;
    stack.adapters[payment].kill9();
    check_order(
        &stack,
        &results,
        "ok-2",
        SagaStatus::Compensated,
        &[("reserve", 1), ("release", 1), ("charge", 0)],
        "no reply, so the charge timed out",
    );
    // Both held timeouts learnt how far the partition was read from ticks.
    let url = format!(
        "http://{}/metrics",
        stack.orchestrators[owner].http_addr(WAIT)
    );
    let text = metrics::scrape(&url).await.unwrap();
    let ticks = metrics::sum(&text, "sagaflow_timer_ticks_total", &[]);
    assert!(
        ticks >= 4.0,
        "two ticks of two records each, at least: {ticks}"
    );
}

/// The chaos run: sagas flow while adapters and orchestrators are killed
/// with SIGKILL (three times each) and the schema registry is down for
/// 10 s. Every saga ends once with the expected outcome, every backend
/// effect happens once, and the backends' raw calls (what a backend that
/// does not de-duplicate would apply) repeat only for calls an adapter
/// was in the middle of when it was killed. `SAGAFLOW_CHAOS_SAGAS` sets
/// the count (5,000), `SAGAFLOW_CRASH_SEED` replays a schedule.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_kills_and_a_registry_outage_lose_nothing() {
    let _alone = GROUP_CHAOS.lock().await;
    let n: usize = std::env::var("SAGAFLOW_CHAOS_SAGAS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000);
    let mut stack = Stack::start("chaos", PARTITIONS).await;
    stack.start_adapters();
    let mut live = [
        stack.start_orchestrator_in(0),
        stack.start_orchestrator_in(1),
    ];
    let reader = stack.results_reader();
    let orders = orders(n);
    let records = encoded_orders(&stack, &orders).await;
    let mut rng = Rng::from_env();
    let mut results = BTreeMap::new();
    let mut copies = 0;
    // Paced so that triggers keep arriving through every kill (about a
    // minute for 5,000): each restart is waited for before the next kill.
    let publishing = stack.publish_paced(&stack.topic("orders.events"), records, 90);
    let started = std::time::Instant::now();
    stack
        .collect_results(&reader, &mut results, &mut copies, 20, WAIT)
        .await;
    let mut events = Vec::new();
    for round in 0..6 {
        tokio::time::sleep(Duration::from_millis(500 + rng.below(1_500))).await;
        if round % 2 == 0 {
            let service = common::SERVICES[rng.below(4) as usize];
            let i = stack
                .adapters
                .iter()
                .rposition(|a| a.name == service)
                .unwrap();
            stack.adapters[i].kill9();
            tokio::time::sleep(Duration::from_millis(rng.below(500))).await;
            let restarted = stack.start_adapter(service);
            // Killed again before its group settled, a member can leave
            // partitions to nobody on tansu (docs/broker.md).
            stack.adapter_serves(restarted, 6).await;
            events.push(format!(
                "adapter {service} at {:.1}s",
                started.elapsed().as_secs_f64()
            ));
        } else {
            let slot = replace_orchestrator(&mut stack, &mut live, &mut rng).await;
            events.push(format!(
                "orchestrator {slot} at {:.1}s",
                started.elapsed().as_secs_f64()
            ));
        }
    }
    events.push(format!(
        "registry down at {:.1}s for 10 s",
        started.elapsed().as_secs_f64()
    ));
    stack.stop_registry().await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    stack.restart_registry().await;
    publishing.await.unwrap();
    stack
        .collect_all(
            &reader,
            &mut results,
            &mut copies,
            orders.len(),
            Duration::from_secs(600),
        )
        .await;
    let (repeats, requests) = {
        let l = stack.ledger.lock().unwrap();
        let mut by_op: BTreeMap<String, usize> = BTreeMap::new();
        for (key, calls) in &l.raw_calls {
            if *calls > 1 {
                let op = key.rsplit('/').next().unwrap_or_default().to_owned();
                *by_op.entry(op).or_default() += 1;
            }
        }
        (by_op, l.requests)
    };
    eprintln!(
        "chaos run: {}; {} sagas in {:.1}s, {} result records, {} backend requests; keys a backend that does not de-duplicate would have applied more than once, by step: {repeats:?}",
        events.join(", "),
        results.len(),
        started.elapsed().as_secs_f64(),
        copies,
        requests,
    );
    // Every saga once, every effect once at backends that honour the
    // Idempotency-Key, one distinct terminal event per saga.
    check_exactly_once(&stack, &orders, &results);
}
