//! The language-neutral protocol (docs/protocol.md), checked end to end: the
//! example Python adapter (adapters/python, confluent-kafka + fastavro)
//! serves the order-checkout saga's `shipping` step next to the Rust
//! adapters of inventory, fraud and payment, against a real orchestrator
//! process, the embedded broker and a real schema registry. Each claim of
//! the protocol guide is asserted here: reply key and headers, the reply
//! topic, de-duplication by Idempotency-Key, dead letters, and the trace
//! context (`traceparent` with the trigger's `tracestate`) handed on to the
//! backend's request and the reply. The adapter's Python unit tests run
//! first.
//!
//! The test installs confluent-kafka and fastavro from PyPI into a venv
//! under `$HOME/.cache/sagaflow/py-adapter` when they are missing, and fails
//! (it does not skip) when they cannot be installed.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use sagaflow_codec::messages::SagaStatus;
use sagaflow_test_support::header;
use sagaflow_test_support::{self as support, process::ChildGuard};

use common::Stack;

const WAIT: Duration = Duration::from_secs(120);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The venv's python, with the adapter's requirements installed.
fn python() -> PathBuf {
    let home = std::env::var_os("HOME").expect("HOME is set");
    let venv = Path::new(&home).join(".cache/sagaflow/py-adapter");
    let py = venv.join("bin/python");
    let ready = |py: &Path| {
        Command::new(py)
            .args(["-c", "import confluent_kafka, fastavro"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if py.exists() && ready(&py) {
        return py;
    }
    let status = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .expect("python3 runs (CI installs it)");
    assert!(
        status.success(),
        "python3 -m venv {} failed",
        venv.display()
    );
    let status = Command::new(venv.join("bin/pip"))
        .args(["install", "-q", "-r"])
        .arg(repo().join("adapters/python/requirements.txt"))
        .status()
        .expect("pip runs");
    assert!(
        status.success() && ready(&py),
        "cannot install adapters/python/requirements.txt from PyPI into {}",
        venv.display()
    );
    py
}

/// Every record of `topic` until none came for `idle` (or `until` holds).
async fn read_all(
    topic: &str,
    idle: Duration,
    until: impl Fn(&[OwnedMessage]) -> bool,
) -> Vec<OwnedMessage> {
    let c: StreamConsumer = support::kafka()
        .consumer(&support::unique("reader"))
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline && !until(&out) {
        match tokio::time::timeout(idle, c.recv()).await {
            Ok(Ok(m)) => out.push(m.detach()),
            Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(_) if !out.is_empty() => break,
            Err(_) => {}
        }
    }
    out
}

/// The W3C vendor list the traced trigger carries.
const TRACESTATE: &str = "sagaflow-py=cHl0aG9u,rojo=00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_python_adapter_serves_a_step_next_to_rust_adapters() {
    let py = python();
    let unit = Command::new(&py)
        .args(["-m", "unittest", "discover", "-s"])
        .arg(repo().join("adapters/python"))
        .output()
        .expect("python runs");
    assert!(
        unit.status.success(),
        "the Python adapter's unit tests failed:\n{}",
        String::from_utf8_lossy(&unit.stderr)
    );
    let mut stack = Stack::start("pyadapter", 3).await;
    stack.start_orchestrator();
    for service in ["inventory", "fraud", "payment"] {
        stack.start_adapter(service);
    }
    let shipping = std::fs::read_to_string(stack.path("shipping.service.yaml")).unwrap();
    let backend = shipping
        .lines()
        .skip_while(|l| !l.starts_with("base-urls:"))
        .nth(1)
        .and_then(|l| l.trim().strip_prefix("- "))
        .expect("the stack's backend URL")
        .to_owned();
    let mut cmd = Command::new(&py);
    cmd.arg(repo().join("adapters/python/sagaflow_adapter.py"))
        .args(["--bootstrap-servers", support::bootstrap_servers()])
        .args(["--registry", &stack.registry_url])
        .args(["--service", "shipping"])
        .args(["--backend", &format!("{backend}/ops")])
        .args(["--prefix", &stack.prefix])
        .args([
            "--group-id",
            &format!("{}adapter-shipping-py", stack.prefix),
        ])
        .arg("--schemas")
        .arg(repo().join("schemas"))
        .args(["-X", "topic.metadata.refresh.interval.ms=1000"])
        .env("PYTHONUNBUFFERED", "1");
    let log = stack.path(&format!("adapter-python-{}.log", support::unique("run")));
    stack
        .adapters
        .push(ChildGuard::command("shipping (python)", cmd, log));

    let reader = stack.results_reader();
    // flaky-4's first `schedule` is a 503: the Python adapter replies
    // TRANSIENT_FAILURE, the saga retries the step, the backend applies it once.
    let orders = ["py-1", "py-2", "py-3", "flaky-4"];
    for o in orders {
        stack.place_order(o, "c-1", 5_000).await;
    }
    // One trigger carries trace context: its tracestate must reach the
    // shipping backend's request and the Python adapter's reply unchanged.
    let trace = "5cf92f3577b34da6a3ce929d0e0e4737";
    let traced = stack.order_placed("py-traced", "c-1", 5_000).await;
    stack
        .send_with_headers(
            &stack.topic("orders.events"),
            "py-traced",
            &traced,
            OwnedHeaders::new()
                .insert(Header {
                    key: "traceparent",
                    value: Some(format!("00-{trace}-00f067aa0ba902b7-01").as_bytes()),
                })
                .insert(Header {
                    key: "tracestate",
                    value: Some(TRACESTATE),
                }),
        )
        .await;
    let mut results = BTreeMap::new();
    let mut copies = 0;
    stack
        .collect_results(&reader, &mut results, &mut copies, orders.len() + 1, WAIT)
        .await;
    let traced_result = results
        .get("order-checkout:py-traced")
        .unwrap_or_else(|| panic!("py-traced has no result\n{}", stack.logs()));
    assert_eq!(traced_result.status, SagaStatus::Completed);
    {
        let ledger = stack.ledger.lock().unwrap();
        let schedule: Vec<&String> = ledger
            .traceparents
            .iter()
            .filter(|(op, tp)| op == "schedule" && tp.contains(trace))
            .map(|(_, tp)| tp)
            .collect();
        assert_eq!(
            schedule.len(),
            1,
            "the Python adapter sent the saga's traceparent to the backend: {:?}",
            ledger.traceparents
        );
        assert!(
            ledger
                .tracestates
                .iter()
                .any(|(tp, ts)| tp == schedule[0] && ts == TRACESTATE),
            "the Python adapter's `schedule` call carried the trigger's tracestate: {:?}",
            ledger.tracestates
        );
        assert!(
            ledger.tracestates.iter().all(|(tp, _)| tp.contains(trace)),
            "untraced sagas send no tracestate: {:?}",
            ledger.tracestates
        );
    }
    for o in orders {
        let id = format!("order-checkout:{o}");
        let r = results
            .get(&id)
            .unwrap_or_else(|| panic!("{id} has no result\n{}", stack.logs()));
        assert_eq!(
            r.status,
            SagaStatus::Completed,
            "{id}: {r:?}\n{}",
            stack.logs()
        );
        assert_eq!(
            r.output["tracking_number"],
            format!("t-{o}"),
            "{id}: the Python adapter's reply data reached the saga: {r:?}"
        );
        assert_eq!(
            stack.effects().get(&("schedule".to_owned(), o.to_owned())),
            Some(&1),
            "{o}: shipped once"
        );
    }

    // Replies: keyed by saga id, with the protocol's headers.
    let replies_topic = stack.topic("sagaflow.replies");
    let replies = read_all(&replies_topic, Duration::from_secs(3), |_| false).await;
    let mut shipping_replies = Vec::new();
    for m in &replies {
        let reply = stack
            .codec
            .decode_reply(&replies_topic, m.payload().unwrap())
            .await
            .unwrap();
        if reply.service != "shipping" {
            continue;
        }
        let key = String::from_utf8_lossy(m.key().unwrap()).into_owned();
        assert_eq!(key, reply.saga_id, "replies are keyed by saga id");
        assert_eq!(header(m, "sagaflow-saga-id").as_deref(), Some(key.as_str()));
        assert_eq!(header(m, "sagaflow-type").as_deref(), Some("Reply"));
        assert_eq!(
            header(m, "sagaflow-message-id"),
            Some(format!("{}/reply", reply.command_id))
        );
        let state = header(m, "tracestate");
        if reply.saga_id == "order-checkout:py-traced" {
            assert_eq!(
                state.as_deref(),
                Some(TRACESTATE),
                "the reply carries the command's tracestate"
            );
            assert!(header(m, "traceparent").is_some_and(|tp| tp.contains(trace)));
        } else {
            assert_eq!(state, None, "{}: an untraced saga's reply", reply.saga_id);
        }
        shipping_replies.push(reply);
    }
    assert!(
        shipping_replies
            .iter()
            .any(|r| r.saga_id == "order-checkout:py-traced"),
        "the traced saga's shipping reply was read: {shipping_replies:?}"
    );
    assert!(
        shipping_replies
            .iter()
            .any(|r| r.saga_id == "order-checkout:flaky-4"
                && r.outcome == sagaflow_codec::messages::ReplyOutcome::TransientFailure),
        "flaky-4 got a transient reply first: {shipping_replies:?}"
    );

    // De-duplication: a redelivered command (same bytes, same headers) is
    // answered again without reaching the backend.
    let commands_topic = stack.topic("sagaflow.commands.shipping");
    let commands = read_all(&commands_topic, Duration::from_secs(2), |_| false).await;
    let first = commands
        .iter()
        .find(|m| header(m, "sagaflow-saga-id").as_deref() == Some("order-checkout:py-1"))
        .expect("py-1's shipping command");
    let command = stack
        .codec
        .decode_command(&commands_topic, first.payload().unwrap())
        .await
        .unwrap();
    let key = command.command_id.rsplit_once('/').unwrap().0.to_owned();
    let calls_before = stack.ledger.lock().unwrap().raw_calls.get(&key).copied();
    assert_eq!(calls_before, Some(1), "{key}");
    let mut headers = rdkafka::message::OwnedHeaders::new();
    for h in first.headers().unwrap().iter() {
        headers = headers.insert(rdkafka::message::Header {
            key: h.key,
            value: h.value,
        });
    }
    stack
        .send_with_headers(
            &commands_topic,
            "order-checkout:py-1",
            first.payload().unwrap(),
            headers,
        )
        .await;
    let reply_id = format!("{}/reply", command.command_id);
    let again = read_all(&replies_topic, Duration::from_secs(20), |ms| {
        ms.iter()
            .filter(|m| header(m, "sagaflow-message-id").as_deref() == Some(&reply_id))
            .count()
            >= 2
    })
    .await;
    assert_eq!(
        again
            .iter()
            .filter(|m| header(m, "sagaflow-message-id").as_deref() == Some(&reply_id))
            .count(),
        2,
        "the redelivered command was answered again\n{}",
        stack.logs()
    );
    assert_eq!(
        stack.ledger.lock().unwrap().raw_calls.get(&key).copied(),
        Some(1),
        "the backend was not called again for {key}"
    );

    // Dead letters: bytes that are not a Command go to the dead-letter
    // topic with their reason; the adapter goes on.
    stack
        .send_raw(&commands_topic, "junk", b"\x7fnot avro")
        .await;
    let dead_topic = stack.topic("sagaflow.dead-letter");
    let dead = read_all(&dead_topic, Duration::from_secs(20), |ms| {
        ms.iter().any(|m| m.key() == Some(b"junk".as_slice()))
    })
    .await;
    let junk = dead
        .iter()
        .find(|m| m.key() == Some(b"junk".as_slice()))
        .unwrap_or_else(|| panic!("no dead letter for the junk record\n{}", stack.logs()));
    assert_eq!(junk.payload(), Some(b"\x7fnot avro".as_slice()));
    assert_eq!(
        header(junk, "sagaflow-dlq-code").as_deref(),
        Some("SF-CODEC-002")
    );
    assert_eq!(
        header(junk, "sagaflow-dlq-source-topic").as_deref(),
        Some(commands_topic.as_str())
    );
    assert!(header(junk, "sagaflow-dlq-source-offset").is_some());
    assert!(header(junk, "sagaflow-dlq-reason").is_some());
    // Still serving.
    stack.place_order("py-5", "c-1", 5_000).await;
    stack
        .collect_results(&reader, &mut results, &mut copies, orders.len() + 2, WAIT)
        .await;
    let r = results
        .get("order-checkout:py-5")
        .unwrap_or_else(|| panic!("py-5 has no result\n{}", stack.logs()));
    assert_eq!(r.status, SagaStatus::Completed);
}
