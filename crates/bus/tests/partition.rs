//! `partition_for` against the producer's own partitioner: a process that
//! computes where a saga's records go (the orchestrator's facade) must
//! agree with where librdkafka puts them.

use std::time::Duration;

use rdkafka::producer::FutureRecord;
use sagaflow_bus::partition_for;
use sagaflow_test_support as ts;

#[tokio::test]
async fn computed_partitions_are_where_the_producer_puts_keyed_records() {
    let partitions = 7;
    let topic = ts::topic("partition-for", partitions).await;
    let producer = ts::kafka().producer().unwrap();
    // Saga ids of the shapes Sagaflow makes, plus empty-ish and long keys:
    // every tail length of murmur2's 4-byte loop.
    let mut keys: Vec<String> = (0..300).map(|i| format!("order-checkout:o-{i}")).collect();
    keys.extend((1..=12).map(|n| "x".repeat(n)));
    keys.push("ü-ä-ö-ß".to_owned());
    keys.push("k".repeat(1000));
    let mut pending = Vec::new();
    for key in &keys {
        let record = FutureRecord::<str, str>::to(&topic).key(key).payload("p");
        pending.push((key, producer.send_result(record).expect("enqueued")));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (key, f) in pending {
        let delivery = tokio::time::timeout(Duration::from_secs(30), f)
            .await
            .expect("delivered within 30 s")
            .expect("not canceled")
            .unwrap_or_else(|(e, _)| panic!("delivery failed: {e}"));
        assert_eq!(
            Some(delivery.partition),
            partition_for(key.as_bytes(), partitions),
            "key {key:?}"
        );
        seen.insert(delivery.partition);
    }
    assert_eq!(
        seen.len(),
        partitions as usize,
        "the keys reach every partition"
    );
}
