//! `sagaflow demo-events` against the test broker and a real registry: the
//! sample stream the docker-compose stack runs.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use rdkafka::Message;
use rdkafka::consumer::Consumer;
use sagaflow_bus::TopicSpec;
use sagaflow_registry::{MemoryLog, Registry};
use sagaflow_test_support as ts;

const TOPICS: [&str; 4] = [
    "orders.events",
    "travel.events",
    "customers.events",
    "identity.events",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_events_publishes_every_sample_type_in_turn_and_verifies_customers() {
    for t in TOPICS {
        ts::create(TopicSpec::new(t, 1)).await;
    }
    let registry = Registry::open(MemoryLog::new()).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let registry = registry.serve(listener).unwrap();
    let schemas = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas");
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        sagaflow_test_support::cli::tokio_command(&[])
            .args([
                "demo-events",
                "--bootstrap-servers",
                ts::bootstrap_servers(),
                "--registry",
                &registry.url().to_string(),
                "--schemas",
                schemas.to_str().unwrap(),
                "--sagas",
                "6",
                "--rate",
                "50",
                "--verify-after",
                "100ms",
            ])
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("6 triggers published"), "{stdout}");

    // Two of each trigger, and an EmailVerified per sign-up, all Avro in the
    // Confluent wire format (magic byte 0, then a registry schema id).
    let reader = ts::kafka().consumer(&ts::unique("demo-events")).unwrap();
    reader.subscribe(&TOPICS).unwrap();
    let got = ts::consume(&reader, 8, Duration::from_secs(60)).await;
    let mut keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in &got {
        let payload = m.payload().unwrap_or_default();
        assert_eq!(
            payload.first(),
            Some(&0u8),
            "Confluent framing on {}",
            m.topic()
        );
        keys.entry(m.topic().to_owned())
            .or_default()
            .push(String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned());
    }
    assert_eq!(keys["orders.events"], ["o-1", "o-2"], "{keys:?}");
    assert_eq!(keys["travel.events"], ["b-1", "b-2"], "{keys:?}");
    assert_eq!(keys["customers.events"], ["c-1", "c-2"], "{keys:?}");
    assert_eq!(keys["identity.events"], ["c-1", "c-2"], "{keys:?}");
}

#[tokio::test]
async fn demo_events_without_a_broker_exits_3() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = sagaflow_test_support::cli::tokio_command(&[])
        .args([
            "demo-events",
            "--bootstrap-servers",
            &format!("127.0.0.1:{port}"),
            "--registry",
            "http://127.0.0.1:9",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("SF-BUS-004"));
}
