//! `sagaflow publish` against a real broker (embedded, on loopback) and a
//! real schema registry: what lands on the topic, and every error path.
//! That published events start sagas is `tests/publish_e2e.rs`.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::Consumer;
use sagaflow_codec::{Codec, CodecConfig};
use sagaflow_registry::{MemoryLog, Registry, ServeHandle};
use sagaflow_test_support as support;
use sagaflow_test_support::free_port as closed_port;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

fn schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas")
}

async fn registry() -> ServeHandle {
    let registry = Registry::open(MemoryLog::new()).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    registry.serve(listener).unwrap()
}

/// A fresh topic named as a deployment's `orders.events` (prefixed).
async fn orders_topic() -> String {
    let name = format!("{}.orders.events", support::unique("publish"));
    support::create(sagaflow_bus::TopicSpec::new(name.clone(), 1)).await;
    name
}

fn order(id: &str, total: i64) -> Value {
    sagaflow_demo::samples::order_placed(id, "c-1", total, 1_700_000_000_000)
}

async fn publish(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = sagaflow_test_support::cli::tokio_command(&[])
        .arg("publish")
        .args(args)
        .env_remove("SAGAFLOW_REGISTRY_URL")
        .env_remove("SAGAFLOW_BOOTSTRAP_SERVERS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).await.unwrap();
    }
    drop(input);
    tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("sagaflow publish finished within 60s")
        .unwrap()
}

fn out(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Reads up to `n` records of `topic` within `wait` and decodes them:
/// (key, type header, event).
async fn read(
    topic: &str,
    registry_url: &str,
    n: usize,
    wait: Duration,
) -> Vec<(String, String, Value)> {
    let consumer = support::kafka().consumer(&support::unique("read")).unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let messages = support::consume(&consumer, n, wait).await;
    let codec = Codec::new(
        serde_json::from_value::<CodecConfig>(json!({
            "registry": {"url": registry_url}, "default-format": {"format": "avro"}
        }))
        .unwrap(),
    )
    .unwrap();
    let mut events = Vec::new();
    for m in &messages {
        let decoded = codec
            .decode_avro_value(topic, m.payload().unwrap())
            .await
            .unwrap();
        assert_eq!(
            decoded.full_name.as_deref(),
            Some("io.sagaflow.examples.orders.OrderPlaced"),
            "written with the OrderPlaced schema, as the orchestrator reads it"
        );
        let kind = sagaflow_bus::SagaHeaders::from_headers(m.headers().unwrap())
            .message_type
            .unwrap_or_default();
        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
        events.push((key, kind, Value::try_from(decoded.value).unwrap()));
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_lines_are_published_and_bad_ones_reported_by_line() {
    let handle = registry().await;
    let topic = orders_topic().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("orders.jsonl");
    let mut lots = order("o-5", 1);
    lots["total_cents"] = json!("lots");
    let lines = [
        json!({"type": "OrderPlaced", "key": "o-1", "headers": {"x-source": "crm"}, "payload": order("o-1", 100)}).to_string(),
        r#"{"type": "OrderPlaced", "payload": {"order_id": "o-2",}}"#.to_owned(),
        String::new(),
        json!({"type": "OrderPlaced", "payload": order("o-3", 300)}).to_string(),
        json!({"type": "OrderPlaced", "payload": {"order_id": "o-4"}}).to_string(),
        json!({"type": "OrderPlaced", "payload": lots}).to_string(),
        json!({"type": "NoSuchEvent", "payload": {"order_id": "o-6"}}).to_string(),
        json!({"type": "OrderPlaced", "payload": order("o-7", 700)}).to_string(),
    ];
    std::fs::write(&file, lines.join("\n")).unwrap();
    let url = handle.url();
    let output = publish(
        &[
            "--topic",
            &topic,
            "--bootstrap-servers",
            support::bootstrap_servers(),
            "--registry",
            &url,
            "--schemas",
            schemas_dir().to_str().unwrap(),
            "--key-field",
            "/order_id",
            file.to_str().unwrap(),
        ],
        None,
    )
    .await;
    let (stdout, stderr) = out(&output);
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("published 3 events") && stdout.contains("rejected 4 lines"),
        "{stdout}"
    );
    let f = file.display();
    for expected in [
        format!("rejected {f}:2:55: invalid JSON: trailing comma"),
        format!(
            "rejected {f}:5: SF-INGEST-003: `OrderPlaced` payload does not match its schema at /customer_id: required field `customer_id` is missing"
        ),
        format!(
            "rejected {f}:6: SF-INGEST-003: `OrderPlaced` payload does not match its schema at /total_cents: expected an integer, found \"lots\""
        ),
        format!(
            "rejected {f}:7: SF-INGEST-002: unknown event type `NoSuchEvent` for topic `{topic}`"
        ),
    ] {
        assert!(
            stderr.contains(&expected),
            "missing `{expected}` in:\n{stderr}"
        );
    }

    let events = read(&topic, &url, 3, Duration::from_secs(30)).await;
    let summary: Vec<(String, String, Value)> = events
        .iter()
        .map(|(k, t, e)| (k.clone(), t.clone(), e["total_cents"].clone()))
        .collect();
    assert_eq!(
        summary,
        [
            ("o-1".into(), "OrderPlaced".into(), json!(100)),
            ("o-3".into(), "OrderPlaced".into(), json!(300)),
            ("o-7".into(), "OrderPlaced".into(), json!(700)),
        ]
    );
    assert_eq!(events[0].2, {
        let mut o = order("o-1", 100);
        // Avro's JSON for a null union branch.
        o["shipping_address"]["line2"] = Value::Null;
        o
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_bare_payloads_and_strict_stops_at_the_first_bad_line() {
    let handle = registry().await;
    let topic = orders_topic().await;
    let url = handle.url();
    let schemas = schemas_dir();
    let base = [
        "--topic",
        &topic,
        "--bootstrap-servers",
        support::bootstrap_servers(),
        "--registry",
        &url,
        "--schemas",
        schemas.to_str().unwrap(),
        "--type",
        "OrderPlaced",
        "--key-field",
        "/order_id",
    ];
    let input = format!(
        "{}\n{}\n",
        order("s-1", 10),
        json!({"type": "OrderPlaced", "payload": order("s-2", 20)})
    );
    let ok = publish(&base, Some(&input)).await;
    let (stdout, stderr) = out(&ok);
    assert_eq!(ok.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("published 2 events"), "{stdout}");

    let strict_input = format!("{}\nnot json\n{}\n", order("s-3", 30), order("s-4", 40));
    let mut args = base.to_vec();
    args.extend(["--strict", "-"]);
    let strict = publish(&args, Some(&strict_input)).await;
    let (stdout, stderr) = out(&strict);
    assert_eq!(strict.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("rejected <stdin>:2:2: invalid JSON: expected ident"),
        "{stderr}"
    );
    assert!(stdout.contains("published 1 event to"), "{stdout}");

    // Asks for one more than expected: nothing may come after the bad line.
    let keys: Vec<String> = read(&topic, &url, 4, Duration::from_secs(5))
        .await
        .into_iter()
        .map(|(k, _, _)| k)
        .collect();
    assert_eq!(keys, ["s-1", "s-2", "s-3"], "s-4 came after the bad line");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_broker_or_registry_exit_3_and_a_missing_topic_exits_2() {
    let handle = registry().await;
    let url = handle.url();
    let schemas = schemas_dir();
    let line = json!({"type": "OrderPlaced", "payload": order("u-1", 1)}).to_string();
    let no_broker = format!("127.0.0.1:{}", closed_port());

    let started = Instant::now();
    let o = publish(
        &[
            "--topic",
            "orders.events",
            "--bootstrap-servers",
            &no_broker,
            "--registry",
            &url,
            "--schemas",
            schemas.to_str().unwrap(),
            "--timeout",
            "2s",
        ],
        Some(&line),
    )
    .await;
    let (stdout, stderr) = out(&o);
    assert_eq!(o.status.code(), Some(3), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(&format!("Kafka broker at {no_broker} did not answer")),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(20), "bounded wait");

    let topic = orders_topic().await;
    let no_registry = format!("http://127.0.0.1:{}", closed_port());
    let o = publish(
        &[
            "--topic",
            &topic,
            "--bootstrap-servers",
            support::bootstrap_servers(),
            "--registry",
            &no_registry,
            "--schemas",
            schemas.to_str().unwrap(),
        ],
        Some(&line),
    )
    .await;
    let (stdout, stderr) = out(&o);
    assert_eq!(o.status.code(), Some(3), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("line 1:") && stderr.contains("schema registry unreachable"),
        "{stderr}"
    );

    let o = publish(
        &[
            "--topic",
            &support::unique("missing"),
            "--bootstrap-servers",
            support::bootstrap_servers(),
            "--registry",
            &url,
            "--schemas",
            schemas.to_str().unwrap(),
        ],
        Some(&line),
    )
    .await;
    let (stdout, stderr) = out(&o);
    assert_eq!(o.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");

    let o = publish(
        &[
            "--topic",
            &topic,
            "--bootstrap-servers",
            support::bootstrap_servers(),
            "--registry",
            &url,
            "--schemas",
            schemas.to_str().unwrap(),
            "--type",
            "OrderPlacd",
        ],
        Some(&line),
    )
    .await;
    let (_, stderr) = out(&o);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--type `OrderPlacd`") && stderr.contains("OrderPlaced"),
        "{stderr}"
    );
}
