//! The durable idempotency log: `sagaflow.idempotency.<service>`, a
//! compacted topic with the commands topic's partition count. Each
//! completed (final) outcome is written there, keyed by the command's Idempotency-Key, to the
//! partition of the command it answers, and acknowledged before the
//! command's offset can be committed. When a partition is assigned, the
//! adapter reads that partition of the log into its in-memory idempotency
//! store before it handles any command of the partition, so a command
//! completed before a crash (even a `kill -9`) is answered from the store
//! and never reaches the backend twice.

use sagaflow_bus::now_ms;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use rdkafka::{Message, Offset, TopicPartitionList};
use sagaflow_bus::Producer;
use sagaflow_bus::{KafkaConfig, TopicNames};
use serde::{Deserialize, Serialize};

use crate::cache::IdempotencyStore;
use crate::command::AdapterOutcome;

/// The idempotency topic of `service`, under the configured prefix.
pub(crate) fn topic(names: &TopicNames, service: &str) -> String {
    format!("{}sagaflow.idempotency.{service}", names.prefix)
}

/// One record's value (JSON, whatever the codec of the other topics).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Completed {
    /// Record format version.
    pub(crate) v: u32,
    /// When the command completed, milliseconds since the Unix epoch.
    pub(crate) completed_at: i64,
    pub(crate) outcome: AdapterOutcome,
}

impl Completed {
    pub(crate) fn encode(outcome: &AdapterOutcome, completed_at: i64) -> Vec<u8> {
        serde_json::to_vec(&Completed {
            v: 1,
            completed_at,
            outcome: outcome.clone(),
        })
        .unwrap_or_default()
    }
}

/// How long one restore may take before it is retried.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(60);

/// Key of the marker records a restore writes to find the log's end.
pub(crate) const MARKER_KEY: &str = "__sagaflow.restore-marker";

/// Reads `partitions` of `topic` from the beginning into `store`; returns
/// how many outcomes were restored. Entries older than the store's TTL are
/// skipped.
///
/// The end is found without trusting the broker's high watermark (the
/// embedded test broker's lags behind acknowledged records): a marker record
/// is written to each partition first, and the partition is read until
/// that marker's acknowledged offset. Every outcome acknowledged before the
/// restore started lies before the marker.
pub(crate) async fn restore(
    kafka: &KafkaConfig,
    producer: &Producer,
    group_id: &str,
    topic: &str,
    partitions: &[i32],
    store: Arc<dyn IdempotencyStore>,
    ttl: Duration,
) -> Result<u64, String> {
    let marker = format!(
        "{{\"marker\":\"{group_id}\",\"at\":{}}}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let mut pending: HashMap<i32, i64> = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for &p in partitions {
        let record = FutureRecord::<str, str>::to(topic)
            .key(MARKER_KEY)
            .payload(&marker)
            .partition(p);
        let delivered = producer
            .send(record, Timeout::After(Duration::from_secs(10)))
            .await
            .map_err(|(e, _)| format!("writing the restore marker to `{topic}` [{p}]: {e}"))?;
        pending.insert(p, delivered.offset);
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .map_err(|e| e.to_string())?;
    }
    if pending.is_empty() {
        return Ok(0);
    }
    // A consumer outside any group (it only `assign`s and never commits).
    let consumer: StreamConsumer = kafka
        .consumer(&format!("{group_id}.idempotency-restore"))
        .map_err(|e| e.to_string())?;
    consumer.assign(&tpl).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + RESTORE_TIMEOUT;
    let now = now_ms() as i64;
    let mut restored = 0;
    while !pending.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "reading `{topic}` partitions {:?} took longer than {RESTORE_TIMEOUT:?}",
                pending.keys().collect::<Vec<_>>()
            ));
        }
        let m = match tokio::time::timeout(left, consumer.recv()).await {
            Err(_) => continue,
            Ok(Err(e)) => return Err(format!("reading `{topic}`: {e}")),
            Ok(Ok(m)) => m,
        };
        let p = m.partition();
        match (m.key(), m.payload()) {
            (Some(key), _) if key == MARKER_KEY.as_bytes() => {}
            (Some(key), Some(value)) => match serde_json::from_slice::<Completed>(value) {
                Ok(c) => {
                    let age = Duration::from_millis(
                        u64::try_from(now.saturating_sub(c.completed_at)).unwrap_or(0),
                    );
                    if age < ttl {
                        let key = String::from_utf8_lossy(key);
                        store.restore(&key, &c.outcome, age).await;
                        restored += 1;
                    }
                }
                Err(e) => tracing::warn!(
                    topic,
                    partition = p,
                    offset = m.offset(),
                    error = %e,
                    "skipping an unreadable idempotency record"
                ),
            },
            _ => {}
        }
        if pending.get(&p).is_some_and(|end| m.offset() >= *end) {
            pending.remove(&p);
        }
    }
    Ok(restored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_topic_is_prefixed() {
        let o = AdapterOutcome::success(serde_json::json!({"id": 7})).with_status(201);
        let bytes = Completed::encode(&o, 42);
        let c: Completed = serde_json::from_slice(&bytes).unwrap();
        assert_eq!((c.v, c.completed_at), (1, 42));
        assert_eq!(c.outcome, o);
        let names = TopicNames::with_prefix("t1.");
        assert_eq!(
            topic(&names, "payments"),
            "t1.sagaflow.idempotency.payments"
        );
    }
}
