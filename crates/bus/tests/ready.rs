//! `ready` against the real broker: it takes what the consumer holds, and
//! an empty queue gives `None` without taking anything a later record
//! needs.

use std::time::Duration;

use rdkafka::Message;
use rdkafka::consumer::Consumer;
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};
use sagaflow_bus::ready;
use sagaflow_test_support as ts;

async fn produce(producer: &sagaflow_bus::Producer, topic: &str, range: std::ops::Range<u32>) {
    let mut pending = Vec::new();
    for i in range {
        let payload = i.to_string();
        let record = FutureRecord::<str, str>::to(topic)
            .key("k")
            .payload(&payload);
        pending.push(producer.send_result(record).expect("enqueued"));
    }
    for f in pending {
        tokio::time::timeout(Duration::from_secs(30), f)
            .await
            .expect("delivered within 30 s")
            .expect("not canceled")
            .unwrap_or_else(|(e, _)| panic!("delivery failed: {e}"));
    }
}

#[tokio::test]
async fn ready_takes_what_is_held_and_an_empty_queue_loses_nothing() {
    let topic = ts::topic("ready", 1).await;
    let kafka = ts::kafka();
    let producer = kafka.producer().unwrap();
    let consumer = kafka.consumer(&ts::unique("ready")).unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    // Nothing is held before anything is produced.
    assert!(ready(&consumer).is_none());

    let mut seen = Vec::new();
    for (round, range) in [0..3, 3..6].into_iter().enumerate() {
        let end = range.end;
        produce(&producer, &topic, range).await;
        while seen.len() < end as usize {
            let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
                .await
                .unwrap_or_else(|_| panic!("round {round}: no record within 30 s"))
                .expect("a record");
            seen.push(m.payload_view::<str>().unwrap().unwrap().to_owned());
            // The rest of what arrived with it, without waiting.
            while let Some(m) = ready(&consumer) {
                seen.push(
                    m.expect("a record")
                        .payload_view::<str>()
                        .unwrap()
                        .unwrap()
                        .to_owned(),
                );
            }
        }
        assert!(
            ready(&consumer).is_none(),
            "round {round}: the queue is empty"
        );
    }
    let expected: Vec<String> = (0..6).map(|i: u32| i.to_string()).collect();
    assert_eq!(seen, expected, "every record once, in order");
}
