//! The changelog topic as the store: a compacted topic co-partitioned
//! with the inputs, each record stamped with its writer's epoch
//! (`sagaflow-epoch`). Takeovers read a partition from the beginning until
//! their own marker comes back: a broker may report a high watermark below
//! records it has acknowledged (docs/broker.md), so the watermark is never
//! the end of a restore.

use std::time::Duration;

use rdkafka::{Message, Offset, TopicPartitionList};
use sagaflow_bus::KafkaConfig;
use sagaflow_bus::Producer;

use super::{Change, Lease, Restored, SagaStore, StoreError, Written, advance, skip_gap};
use crate::changelog::{self, EpochMarker, GapScan, Record, Replay};
use crate::health::Health;
use crate::outbound::{Outgoing, delivered_mark, epoch_of, produce, produce_all, state_record};

/// How long a read of the changelog waits for its next record before the
/// partition is declared unreadable.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// See the module documentation.
#[derive(Clone)]
pub struct KafkaStore {
    kafka: KafkaConfig,
    producer: Producer,
    topic: String,
    /// The instance's consumer group: names its markers and readers.
    group_id: String,
    record_limit: usize,
    /// Beaten while a long restore reads, so the watchdog sees progress.
    health: Health,
}

impl KafkaStore {
    pub fn new(
        kafka: KafkaConfig,
        producer: Producer,
        topic: String,
        group_id: String,
        record_limit: usize,
        health: Health,
    ) -> Self {
        Self {
            kafka,
            producer,
            topic,
            group_id,
            record_limit,
            health,
        }
    }

    fn write_error(&self, message: String) -> StoreError {
        StoreError::Write {
            topic: self.topic.clone(),
            message,
        }
    }

    /// Reads partition `p` from `from` until offset `through`, feeding each
    /// record to `see` until it returns true.
    async fn read(
        &self,
        p: i32,
        from: Offset,
        through: i64,
        mut see: impl FnMut(&Record<'_>) -> bool,
    ) -> Result<u64, String> {
        let reader = self
            .kafka
            .consumer(&format!("{}-store", self.group_id))
            .map_err(|e| e.to_string())?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, p, from)
            .map_err(|e| e.to_string())?;
        use rdkafka::consumer::Consumer;
        reader.assign(&tpl).map_err(|e| e.to_string())?;
        let mut read = 0u64;
        loop {
            let m = tokio::time::timeout(READ_TIMEOUT, reader.recv())
                .await
                .map_err(|_| {
                    format!(
                        "no record for {} s after {read} records, before offset {through}",
                        READ_TIMEOUT.as_secs()
                    )
                })?
                .map_err(|e| e.to_string())?;
            read += 1;
            if read.is_multiple_of(1024) {
                self.health.beat();
            }
            let key = m.key().map(String::from_utf8_lossy);
            let done = see(&Record {
                offset: m.offset(),
                key: key.as_deref(),
                payload: m.payload(),
                epoch: epoch_of(&m),
            });
            if done || m.offset() >= through {
                return Ok(read);
            }
        }
    }
}

impl SagaStore for KafkaStore {
    async fn take_over(&self, p: i32) -> Result<Restored, StoreError> {
        let failed = |message: String| StoreError::Restore {
            topic: self.topic.clone(),
            partition: p,
            message,
        };
        let marker = Outgoing {
            topic: self.topic.clone(),
            partition: Some(p),
            key: Some(format!(
                "{}{p}/{}",
                changelog::EPOCH_PREFIX,
                uuid::Uuid::new_v4()
            )),
            payload: serde_json::to_vec(&EpochMarker {
                owner: format!("{}/{}", self.group_id, uuid::Uuid::new_v4()),
                partition: p,
            })
            .ok(),
            headers: rdkafka::message::OwnedHeaders::new(),
        };
        let (_, epoch) = produce(&self.producer, marker)
            .await
            .map_err(|e| failed(format!("writing the ownership marker: {e}")))?;
        let mut replay = Replay::new();
        let records = self
            .read(p, Offset::Beginning, epoch, |r| {
                replay.apply(r);
                false
            })
            .await
            .map_err(|e| failed(format!("{e} (the marker is at offset {epoch})")))?;
        Ok(Restored {
            lease: Lease::new(p, epoch),
            replay,
            records,
        })
    }

    async fn write(&self, batch: Vec<(&mut Lease, Vec<Change>)>) -> Result<Written, StoreError> {
        let mut records = Vec::new();
        let mut had_changes = Vec::with_capacity(batch.len());
        let mut leases = Vec::with_capacity(batch.len());
        for (lease, changes) in batch {
            had_changes.push(!changes.is_empty());
            for c in changes {
                records.push(state_record(
                    &self.topic,
                    lease.partition,
                    lease.epoch,
                    c.key,
                    c.payload,
                ));
            }
            if let Some(through) = lease.take_delivered() {
                records.push(delivered_mark(
                    &self.topic,
                    lease.partition,
                    lease.epoch,
                    through,
                ));
            }
            leases.push(lease);
        }
        let acked = produce_all(&self.producer, records, self.record_limit)
            .await
            .map_err(|e| self.write_error(e))?;
        let mut written = Written::default();
        for (lease, had_changes) in leases.into_iter().zip(had_changes) {
            let mut offsets: Vec<i64> = acked
                .iter()
                .filter(|(p, _)| *p == lease.partition)
                .map(|(_, o)| *o)
                .collect();
            if offsets.is_empty() || advance(lease, &mut offsets, had_changes) {
                continue;
            }
            let through = *offsets.last().expect("not empty");
            let mut scan = GapScan::new(lease.epoch);
            self.read(
                lease.partition,
                Offset::Offset(lease.next_offset),
                through,
                |r| scan.see(r),
            )
            .await
            .map_err(|e| {
                self.write_error(format!("reading back partition {}: {e}", lease.partition))
            })?;
            written.foreign += scan.foreign;
            if scan.taken_over {
                written.lost.push(lease.partition);
            } else {
                skip_gap(lease, &offsets, had_changes);
            }
        }
        Ok(written)
    }

    async fn mark_delivered(&self, leases: Vec<&mut Lease>) -> Result<(), StoreError> {
        let marks = leases
            .into_iter()
            .filter_map(|lease| {
                let through = lease.take_delivered()?;
                Some(delivered_mark(
                    &self.topic,
                    lease.partition,
                    lease.epoch,
                    through,
                ))
            })
            .collect();
        produce_all(&self.producer, marks, self.record_limit)
            .await
            .map(|_| ())
            .map_err(|e| self.write_error(e))
    }
}
