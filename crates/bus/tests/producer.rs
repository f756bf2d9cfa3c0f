//! `sagaflow_bus::Producer` against a real broker (the embedded one, or
//! `SAGAFLOW_TEST_BOOTSTRAP`), and against no broker at all where a record
//! must stay queued.

use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureRecord, Producer as _};
use sagaflow_bus::{KafkaConfig, Producer};
use sagaflow_test_support as ts;

/// A producer whose records can never leave: nothing listens on port 1.
fn unconnected(extra: &[(&str, &str)]) -> Producer {
    let mut kafka = KafkaConfig::new("127.0.0.1:1");
    for (k, v) in extra {
        kafka = kafka.with(*k, *v);
    }
    kafka.producer().expect("producer")
}

fn payload(m: &rdkafka::message::OwnedMessage) -> &[u8] {
    m.payload().unwrap_or_default()
}

#[tokio::test]
async fn records_are_delivered_in_order_with_their_partition_and_offset() {
    let topic = ts::topic("producer-order", 1).await;
    let producer = ts::kafka().producer().unwrap();
    let mut pending = Vec::new();
    for i in 0..20 {
        let body = format!("m{i}");
        let record = FutureRecord::<str, str>::to(&topic).key("k").payload(&body);
        pending.push(producer.send_result(record).expect("enqueued"));
    }
    let mut offsets = Vec::new();
    for f in pending {
        let delivery = tokio::time::timeout(Duration::from_secs(30), f)
            .await
            .expect("delivered within 30 s")
            .expect("not canceled")
            .unwrap_or_else(|(e, _)| panic!("delivery failed: {e}"));
        assert_eq!(delivery.partition, 0);
        offsets.push(delivery.offset);
    }
    let expected: Vec<i64> = (0..20).collect();
    assert_eq!(offsets, expected, "a fresh topic gets offsets 0.. in order");

    let consumer = ts::kafka().consumer(&ts::unique("producer-order")).unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let got = ts::consume(&consumer, 20, Duration::from_secs(30)).await;
    let bodies: Vec<String> = got.iter().map(ts::text).collect();
    let sent: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    assert_eq!(bodies, sent);
    let read_at: Vec<i64> = got.iter().map(|m| m.offset()).collect();
    assert_eq!(read_at, offsets, "read back where the reports said");
}

#[tokio::test]
async fn send_waits_for_the_delivery_report() {
    let topic = ts::topic("producer-send", 3).await;
    let producer = ts::kafka().producer().unwrap();
    let delivery = producer
        .send(
            FutureRecord::<str, str>::to(&topic)
                .partition(2)
                .key("k")
                .payload("v"),
            Duration::from_secs(5),
        )
        .await
        .unwrap_or_else(|(e, _)| panic!("send failed: {e}"));
    assert_eq!((delivery.partition, delivery.offset), (2, 0));
    // librdkafka counts a message until it frees it, just after the
    // delivery callback that resolved `send` returns: the count reaches
    // zero right after the report, not necessarily before the caller looks.
    let deadline = Instant::now() + Duration::from_secs(2);
    while producer.in_flight_count() != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(producer.in_flight_count(), 0, "nothing left in flight");
    producer.flush(Duration::from_secs(5)).unwrap();
}

/// The polling thread waits 1 s per poll, but a delivery report is served
/// the moment it arrives: sequential sends do not wait for the poll to end.
#[tokio::test]
async fn deliveries_are_not_delayed_by_the_long_poll() {
    let topic = ts::topic("producer-latency", 1).await;
    let producer = ts::kafka().producer().unwrap();
    let send = |i: usize| {
        let body = i.to_string();
        let producer = producer.clone();
        let topic = topic.clone();
        async move {
            producer
                .send(
                    FutureRecord::<str, str>::to(&topic).payload(&body),
                    Duration::from_secs(5),
                )
                .await
                .unwrap_or_else(|(e, _)| panic!("send failed: {e}"));
        }
    };
    send(0).await; // connection and metadata
    let started = Instant::now();
    for i in 1..=10 {
        send(i).await;
    }
    let took = started.elapsed();
    // Reports held until the end of each 1 s poll would take ~10 s.
    assert!(
        took < Duration::from_secs(4),
        "10 sequential sends took {took:?}"
    );
}

#[tokio::test]
async fn a_send_to_a_missing_topic_returns_the_error_and_the_message() {
    let topic = ts::unique("producer-missing");
    let producer = ts::kafka()
        .with("message.timeout.ms", "2000")
        .producer()
        .unwrap();
    let (e, message) = tokio::time::timeout(
        Duration::from_secs(30),
        producer.send(
            FutureRecord::<str, str>::to(&topic)
                .key("k")
                .payload("lost"),
            Duration::from_secs(1),
        ),
    )
    .await
    .expect("reported within 30 s")
    .expect_err("no such topic");
    assert!(
        matches!(e, KafkaError::MessageProduction(_)),
        "a production error: {e:?}"
    );
    assert_eq!(message.topic(), topic);
    assert_eq!(payload(&message), b"lost");
    assert_eq!(message.key(), Some(&b"k"[..]));
}

#[tokio::test]
async fn a_full_queue_returns_the_error_and_the_message() {
    let producer = unconnected(&[("queue.buffering.max.messages", "1")]);
    let first = producer
        .send_result(FutureRecord::<str, str>::to("t").payload("first"))
        .expect("room for one");

    let (e, back) = producer
        .send_result(FutureRecord::<str, str>::to("t").payload("second"))
        .expect_err("queue full");
    assert_eq!(
        e,
        KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
    );
    assert_eq!(back.payload, Some("second"));

    let started = Instant::now();
    let (e, message) = producer
        .send(
            FutureRecord::<str, str>::to("t").payload("third"),
            Duration::from_millis(300),
        )
        .await
        .expect_err("still full");
    assert_eq!(
        e,
        KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
    );
    assert_eq!(payload(&message), b"third");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "send retried for its queue timeout"
    );

    drop(producer);
    let (_, message) = tokio::time::timeout(Duration::from_secs(10), first)
        .await
        .expect("resolved when the producer went")
        .expect("not canceled")
        .expect_err("never delivered");
    assert_eq!(payload(&message), b"first");
}

#[tokio::test]
async fn dropping_the_producer_resolves_every_pending_future_without_blocking() {
    let producer = unconnected(&[]);
    let bodies: Vec<String> = (0..50).map(|i| format!("p{i}")).collect();
    let pending: Vec<_> = bodies
        .iter()
        .map(|b| {
            producer
                .send_result(FutureRecord::<str, str>::to("t").payload(b))
                .expect("enqueued")
        })
        .collect();
    let clone = producer.clone();
    drop(producer);
    assert!(clone.in_flight_count() >= 50, "a clone keeps the client");

    let started = Instant::now();
    drop(clone);
    let drop_took = started.elapsed();
    assert!(
        drop_took < Duration::from_millis(200),
        "dropping the last handle took {drop_took:?}"
    );

    for (f, body) in pending.into_iter().zip(&bodies) {
        let (e, message) = tokio::time::timeout(Duration::from_secs(10), f)
            .await
            .expect("resolved within 10 s of the drop")
            .expect("reported, not canceled")
            .expect_err("never delivered");
        assert!(
            matches!(e, KafkaError::MessageProduction(_)),
            "a production error: {e:?}"
        );
        assert_eq!(payload(&message), body.as_bytes());
    }
}

#[tokio::test]
async fn dropping_a_connected_producer_mid_flight_resolves_every_future() {
    let topic = ts::topic("producer-drop", 2).await;
    let producer = ts::kafka().producer().unwrap();
    let pending: Vec<_> = (0..200)
        .map(|i| {
            let body = i.to_string();
            producer
                .send_result(FutureRecord::<str, str>::to(&topic).payload(&body))
                .expect("enqueued")
        })
        .collect();
    drop(producer);
    for f in pending {
        // Delivered or purged: either way, reported.
        tokio::time::timeout(Duration::from_secs(10), f)
            .await
            .expect("resolved within 10 s of the drop")
            .expect("reported, not canceled")
            .ok();
    }
}

#[tokio::test]
async fn many_concurrent_sends_all_complete() {
    const N: usize = 1000;
    let topic = ts::topic("producer-many", 4).await;
    let producer = ts::kafka().producer().unwrap();
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let producer = producer.clone();
            let topic = topic.clone();
            tokio::spawn(async move {
                let key = i.to_string();
                producer
                    .send(
                        FutureRecord::<str, str>::to(&topic).key(&key).payload(&key),
                        Duration::from_secs(10),
                    )
                    .await
                    .map(|d| (d.partition, d.offset))
                    .map_err(|(e, _)| e.to_string())
            })
        })
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    for t in tasks {
        let at = tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("completed within 60 s")
            .unwrap()
            .unwrap_or_else(|e| panic!("send failed: {e}"));
        assert!((0..4).contains(&at.0), "partition {}", at.0);
        assert!(seen.insert(at), "{at:?} reported twice");
    }
    assert_eq!(seen.len(), N);
    // Each partition's offsets are 0..count, no gaps.
    for p in 0..4 {
        let offsets: Vec<i64> = seen
            .iter()
            .filter(|(q, _)| *q == p)
            .map(|(_, o)| *o)
            .collect();
        let expected: Vec<i64> = (0..offsets.len() as i64).collect();
        assert_eq!(offsets, expected, "partition {p}");
    }
}
