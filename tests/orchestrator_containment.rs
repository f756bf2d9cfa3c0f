//! Containment end to end: nothing from outside stops a partition, and an
//! instance that cannot work never says it is ready. Each test is one of
//! the failures the orchestrator-core issue listed, against a real broker,
//! registry, `sagaflow orchestrator` process and adapters.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::producer::FutureRecord;
use sagaflow_test_support as support;
use sagaflow_test_support::metrics::{self, sum as metric};

use common::Stack;

const WAIT: Duration = Duration::from_secs(120);

fn metrics_url(api: &str) -> String {
    format!("http://{api}/metrics")
}

/// `/metrics` now (empty if it does not answer).
async fn scrape(api: &str) -> String {
    metrics::scrape(&metrics_url(api)).await.unwrap_or_default()
}

/// Polls `/metrics` until `ok` holds, or fails with the stack's logs.
async fn until(stack: &Stack, api: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
    metrics::wait_until(&metrics_url(api), WAIT, ok)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}\n{}", stack.logs()))
}

/// Dead letters with their code, read from the beginning of the topic.
fn dead_letter_reader(stack: &Stack) -> StreamConsumer {
    let c = support::kafka().consumer(&support::unique("dlq")).unwrap();
    c.subscribe(&[&stack.topic("sagaflow.dead-letter")])
        .unwrap();
    c
}

async fn dead_letter_codes(reader: &StreamConsumer, n: usize) -> Vec<(String, Option<usize>)> {
    let mut codes = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while codes.len() < n {
        let Ok(m) = tokio::time::timeout_at(deadline, reader.recv()).await else {
            break;
        };
        let Ok(m) = m else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let header = |name: &str| {
            m.headers().and_then(|h| {
                h.iter()
                    .find(|x| x.key == name)
                    .and_then(|x| x.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            })
        };
        codes.push((
            header("sagaflow-dlq-code").unwrap_or_default(),
            m.payload().map(<[u8]>::len),
        ));
    }
    codes
}

async fn ready(api: &str) -> Option<u16> {
    reqwest::get(format!("http://{api}/readyz"))
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

/// Failure 8: `/readyz` said ready right after subscribing, seconds before
/// the group assigned any partition. Now the first green answer comes
/// from an instance that holds (and has restored) its partitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ready_means_partitions_held_and_restored() {
    let mut stack = Stack::start("ready", 3).await;
    stack.start_orchestrator();
    let api = stack.orchestrators[0].http_addr(WAIT);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        // Metrics first, then readiness: the partitions counted are held
        // no later than the green answer.
        let before = scrape(&api).await;
        if ready(&api).await == Some(200) {
            let after = scrape(&api).await;
            assert!(
                metric(&after, "sagaflow_owned_partitions", &[]) >= 1.0,
                "ready without holding a partition\n{before}\n{after}"
            );
            assert!(
                stack.output().contains("partition restored"),
                "ready before any restore\n{}",
                stack.logs()
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never ready\n{}",
            stack.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Failure 1: a driver that fails (here: its broker goes away while a
/// step timeout needs a write) left the process up with a green
/// `/readyz`. Now the process stops serving and exits non-zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_driver_stops_the_process() {
    let mut stack = Stack::start("fail", 1).await;
    let mut broker = sagaflow_broker::EmbeddedBroker::start(Default::default()).unwrap();
    let private = broker.bootstrap_servers();
    // This orchestrator alone talks to a broker of its own, which the test
    // stops; produce attempts give up after 3 s, and its group session
    // outlives the step timeout, so it still holds the partition when the
    // timeout needs a write.
    let cfg = std::fs::read_to_string(stack.path("orchestrator.yaml"))
        .unwrap()
        .replace(support::bootstrap_servers(), &private)
        .replacen(
            "  properties:\n",
            "  properties:\n    message.timeout.ms: \"3000\"\n    session.timeout.ms: \"45000\"\n",
            1,
        );
    std::fs::write(stack.path("orchestrator.yaml"), cfg).unwrap();
    stack.start_orchestrator();
    let api = stack.orchestrators[0].http_addr(WAIT);
    let deadline = tokio::time::Instant::now() + WAIT;
    while ready(&api).await != Some(200) {
        assert!(tokio::time::Instant::now() < deadline, "{}", stack.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // One saga that waits for an adapter that is not there: its step
    // timeout (10 s) will need the broker.
    let bytes = stack.order_placed("stuck-1", "c-1", 100).await;
    let producer = sagaflow_bus::KafkaConfig {
        bootstrap_servers: private.clone(),
        properties: Default::default(),
    }
    .producer()
    .unwrap();
    producer
        .send(
            FutureRecord::to(&stack.topic("orders.events"))
                .key("stuck-1")
                .payload(&bytes),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    until(&stack, &api, "the saga started", |t| {
        metric(t, "sagaflow_sagas_started_total", &[]) >= 1.0
    })
    .await;
    broker.stop();
    let status = stack.orchestrators[0]
        .wait_exit(Duration::from_secs(90))
        .unwrap_or_else(|| {
            panic!(
                "the orchestrator kept running without its broker\n{}",
                stack.logs()
            )
        });
    assert!(!status.success(), "exit status {status}\n{}", stack.logs());
    assert_ne!(ready(&api).await, Some(200), "{}", stack.logs());
    assert!(
        stack.output().contains("SF-ORCH-02"),
        "the failure is named\n{}",
        stack.logs()
    );
}

/// Failure 2: one input too large for the broker once it became saga
/// state stopped the partition on every instance that took it over. Now
/// it is dead-lettered (SF-ORCH-022, the value left out when it cannot
/// fit either) and the next saga completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_oversized_input_is_refused_and_the_partition_goes_on() {
    let mut stack = Stack::start("oversize", 1).await;
    stack
        .env
        .push(("SAGAFLOW_MAX_RECORD_BYTES".into(), "60000".into()));
    stack.start_orchestrator();
    stack.start_adapters();
    let api = stack.orchestrators[0].http_addr(WAIT);
    let dlq = dead_letter_reader(&stack);
    let results = stack.results_reader();
    let huge = "x".repeat(80_000);
    stack.place_order("huge-1", &huge, 4_200).await;
    stack.place_order("fine-1", "c-1", 4_200).await;
    let mut got = BTreeMap::new();
    let mut copies = 0;
    stack
        .collect_results(&results, &mut got, &mut copies, 1, WAIT)
        .await;
    assert!(
        got.contains_key("order-checkout:fine-1"),
        "the saga after the oversized one completes: {got:?}\n{}",
        stack.logs()
    );
    let codes = dead_letter_codes(&dlq, 1).await;
    assert_eq!(
        codes.first().map(|c| c.0.as_str()),
        Some("SF-ORCH-022"),
        "{codes:?}\n{}",
        stack.logs()
    );
    // The dead letter fits under the limit: the 80 kB value is left out
    // and the source offset points at it.
    assert_eq!(codes[0].1, None, "{codes:?}");
    assert_eq!(ready(&api).await, Some(200));
    assert!(!got.contains_key("order-checkout:huge-1"));
}

/// Failure 5: a trigger replayed after its saga left the changelog
/// (`completed-retention`) started the saga again. Now the saga id is
/// remembered for `dedup-window`, across a restart too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replayed_trigger_after_retention_starts_nothing() {
    let mut stack = Stack::start("replay", 1).await;
    stack
        .env
        .push(("SAGAFLOW_COMPLETED_RETENTION".into(), "1s".into()));
    stack.start_orchestrator_in(0);
    stack.start_adapters();
    let api = stack.orchestrators[0].http_addr(WAIT);
    let results = stack.results_reader();
    stack.place_order("once-1", "c-1", 4_200).await;
    let mut got = BTreeMap::new();
    let mut copies = 0;
    stack
        .collect_results(&results, &mut got, &mut copies, 1, WAIT)
        .await;
    assert!(
        got.contains_key("order-checkout:once-1"),
        "{}",
        stack.logs()
    );
    until(&stack, &api, "the saga's state expired", |t| {
        metric(t, "sagaflow_ended_markers", &[]) >= 1.0
    })
    .await;
    // The same order, published again (a replay of the source topic).
    stack.place_order("once-1", "c-1", 4_200).await;
    until(&stack, &api, "the replay is refused", |t| {
        metric(
            t,
            "sagaflow_inputs_total",
            &[("input", "trigger"), ("outcome", "replayed")],
        ) >= 1.0
    })
    .await;
    // And after a restart, from the changelog.
    stack.orchestrators[0].kill9();
    stack.start_orchestrator_in(0);
    let api = stack.orchestrators[1].http_addr(WAIT);
    stack.place_order("once-1", "c-1", 4_200).await;
    let text = until(&stack, &api, "the replay is refused after a restart", |t| {
        metric(
            t,
            "sagaflow_inputs_total",
            &[("input", "trigger"), ("outcome", "replayed")],
        ) >= 1.0
    })
    .await;
    assert_eq!(
        metric(&text, "sagaflow_sagas_started_total", &[]),
        0.0,
        "{text}"
    );
    // Whatever the replays might have caused would be on the topic by now.
    stack
        .collect_results(&results, &mut got, &mut copies, 2, Duration::from_secs(3))
        .await;
    assert_eq!(got.len(), 1, "{got:?}");
    let terminal = stack.terminal.lock().unwrap().clone();
    assert_eq!(
        terminal.get("order-checkout:once-1").map(|s| s.len()),
        Some(1),
        "{terminal:?}"
    );
    // One reservation only, for one Idempotency-Key.
    let effects = stack.effects();
    assert!(
        effects.values().all(|n| *n == 1),
        "backend effects doubled: {effects:?}"
    );
}

/// Failure 4: with the schema registry unreachable, domain events were
/// dead-lettered and committed, so their sagas never started. Now the
/// orchestrator waits with backoff and every saga completes once the
/// registry is back; nothing is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_registry_outage_delays_sagas_and_loses_none() {
    let mut stack = Stack::start("regblip", 2).await;
    stack.start_orchestrator();
    let api = stack.orchestrators[0].http_addr(WAIT);
    let deadline = tokio::time::Instant::now() + WAIT;
    while ready(&api).await != Some(200) {
        assert!(tokio::time::Instant::now() < deadline, "{}", stack.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The events are encoded (their schema registered) first; the
    // orchestrator has seen none, so it must ask the registry.
    let orders: Vec<String> = (0..6).map(|i| format!("ok-{i}")).collect();
    let mut encoded = Vec::new();
    for o in &orders {
        encoded.push((o.clone(), stack.order_placed(o, "c-1", 4_200).await));
    }
    stack.stop_registry().await;
    for (o, bytes) in &encoded {
        stack
            .send_raw(&stack.topic("orders.events"), o, bytes)
            .await;
    }
    until(&stack, &api, "the orchestrator retries", |t| {
        metric(
            t,
            "sagaflow_orchestrator_retries_total",
            &[("cause", "registry")],
        ) >= 2.0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stack.restart_registry().await;
    stack.start_adapters();
    let results = stack.results_reader();
    let mut got = BTreeMap::new();
    let mut copies = 0;
    stack
        .collect_results(&results, &mut got, &mut copies, orders.len(), WAIT)
        .await;
    assert_eq!(got.len(), orders.len(), "{got:?}\n{}", stack.logs());
    let text = scrape(&api).await;
    assert_eq!(
        metric(&text, "sagaflow_dead_letters_total", &[]),
        0.0,
        "{text}"
    );
}

/// Failure 6: a new owner restored "up to the high watermark", which the
/// embedded broker can report below acknowledged records. Now it restores
/// until it reads back its own ownership marker: every saga in flight
/// when the first owner died is restored by the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restore_finds_every_saga_in_flight() {
    let mut stack = Stack::start("restore", 2).await;
    stack.start_orchestrator_in(0);
    // No adapters: every saga waits at its first step.
    let n = 60;
    let orders: Vec<String> = (0..n).map(|i| format!("ok-{i}")).collect();
    for o in &orders {
        stack.place_order(o, "c-1", 4_200).await;
    }
    // Started is not yet persisted: wait until every saga's first
    // lifecycle event is out, which is sent after its state is written.
    let events = stack.reader("sagaflow.saga-events");
    let mut seen = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen.len() < n {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(m)) => {
                if let Some(k) = m.key() {
                    seen.insert(k.to_vec());
                }
            }
            Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(_) => panic!(
                "{} of {n} sagas persisted within {WAIT:?}\n{}",
                seen.len(),
                stack.logs()
            ),
        }
    }
    stack.orchestrators[0].kill9();
    stack.start_orchestrator_in(0);
    let api = stack.orchestrators[1].http_addr(WAIT);
    let text = until(&stack, &api, "the partitions restored", |t| {
        metric(t, "sagaflow_owned_partitions", &[]) >= 2.0
            && metric(t, "sagaflow_state_restored_sagas_total", &[]) >= n as f64
    })
    .await;
    assert_eq!(
        metric(&text, "sagaflow_state_restored_sagas_total", &[]),
        n as f64,
        "{text}"
    );
    stack.start_adapters();
    let results = stack.results_reader();
    let mut got = BTreeMap::new();
    let mut copies = 0;
    stack
        .collect_results(&results, &mut got, &mut copies, n, WAIT)
        .await;
    assert_eq!(got.len(), n, "{}", stack.logs());
}
