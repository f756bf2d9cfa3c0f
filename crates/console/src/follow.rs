//! The indexer: reads `sagaflow.saga-events` and the dead-letter topic
//! from the offsets the store holds (the beginning when it holds none) and
//! applies what it reads in batches, each batch and its offsets in one
//! SQLite transaction. It uses `assign`, not a consumer group: the store is
//! the only place its progress lives, so a console restarted on the same
//! file resumes exactly, and one started on an empty file rebuilds.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::{Message, Offset, TopicPartitionList};
use sagaflow_bus::KafkaConfig;
use sagaflow_codec::{Codec, SagaEvent};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::error::ConsoleError;
use crate::store::{DeadLetterIn, Item, Record, Store};

/// What the indexer has done, for `/metrics`-like reporting and tests.
#[derive(Debug, Default)]
pub struct Progress {
    pub records: AtomicU64,
    pub batches: AtomicU64,
    pub skipped: AtomicU64,
}

/// Where to read from.
#[derive(Clone, Debug)]
pub struct Sources {
    pub saga_events: String,
    pub dead_letters: Vec<String>,
}

impl Sources {
    fn all(&self) -> Vec<String> {
        let mut v = vec![self.saga_events.clone()];
        v.extend(self.dead_letters.iter().cloned());
        v
    }
}

/// Most records applied in one transaction, by default.
pub const DEFAULT_BATCH: usize = 2000;
/// How long a batch waits to fill once it has a record.
const BATCH_WAIT: Duration = Duration::from_millis(50);
/// How often topics are looked up again for new partitions.
const RESCAN: Duration = Duration::from_secs(10);

/// Decodes one record into what the store keeps.
pub async fn decode(codec: &Codec, sources: &Sources, m: &BorrowedMessage<'_>) -> Item {
    if m.topic() != sources.saga_events {
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        return Item::DeadLetter(DeadLetterIn {
            at: m.timestamp().to_millis().unwrap_or(0),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            headers,
        });
    }
    let Some(bytes) = m.payload() else {
        return Item::Skipped("the record has no value".into());
    };
    match codec.decode_saga_event(m.topic(), bytes).await {
        Ok(SagaEvent::Lifecycle(e)) => Item::Lifecycle(e),
        Ok(SagaEvent::Result(r)) => Item::Result(r),
        Err(e) => Item::Skipped(e.to_string()),
    }
}

/// Everything the indexer needs.
pub struct Indexer {
    pub kafka: KafkaConfig,
    pub group_id: String,
    pub codec: Arc<Codec>,
    pub sources: Sources,
    pub store: Arc<Store>,
    pub progress: Arc<Progress>,
    /// Most records applied in one transaction.
    pub max_batch: usize,
}

/// Follows the sources into the store until `stop` turns true.
pub async fn run(ix: Indexer, mut stop: watch::Receiver<bool>) -> Result<(), ConsoleError> {
    let Indexer {
        kafka,
        group_id,
        codec,
        sources,
        store,
        progress,
        max_batch,
    } = ix;
    let consumer: Arc<StreamConsumer> = Arc::new(
        kafka
            .consumer(&group_id)
            .map_err(|e| ConsoleError::Kafka(e.to_string()))?,
    );
    let mut assigned: HashMap<String, i32> = HashMap::new();
    let mut last_scan = tokio::time::Instant::now() - RESCAN;
    let mut batch: Vec<Record> = Vec::new();
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        if last_scan.elapsed() >= RESCAN {
            last_scan = tokio::time::Instant::now();
            // Everything read so far is applied before re-assigning, so
            // the store's offsets are where to go on from.
            store.apply(&batch).await?;
            batch.clear();
            if let Err(e) = assign(&consumer, &sources, &store, &mut assigned).await {
                warn!(error = %e, "console: cannot assign the topics yet; retrying");
            }
        }
        if assigned.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.changed() => {}
            }
            last_scan = tokio::time::Instant::now() - RESCAN;
            continue;
        }
        let first = tokio::select! {
            m = consumer.recv() => Some(m),
            _ = tokio::time::sleep(Duration::from_millis(500)) => None,
            _ = stop.changed() => None,
        };
        let Some(first) = first else { continue };
        let m = first.map_err(|e| ConsoleError::Kafka(e.to_string()))?;
        batch.push(record(&codec, &sources, &m).await);
        drop(m);
        let deadline = tokio::time::Instant::now() + BATCH_WAIT;
        while batch.len() < max_batch {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(Ok(m)) => batch.push(record(&codec, &sources, &m).await),
                Ok(Err(e)) => return Err(ConsoleError::Kafka(e.to_string())),
                Err(_) => break,
            }
        }
        let skipped = batch
            .iter()
            .filter(|r| matches!(r.item, Item::Skipped(_)))
            .count();
        store.apply(&batch).await?;
        progress
            .records
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        progress.batches.fetch_add(1, Ordering::Relaxed);
        progress
            .skipped
            .fetch_add(skipped as u64, Ordering::Relaxed);
        batch.clear();
    }
}

async fn record(codec: &Codec, sources: &Sources, m: &BorrowedMessage<'_>) -> Record {
    let item = decode(codec, sources, m).await;
    if let Item::Skipped(reason) = &item {
        warn!(
            topic = m.topic(),
            partition = m.partition(),
            offset = m.offset(),
            reason = %reason,
            "console: a record could not be read; it is listed as skipped"
        );
    }
    Record {
        topic: m.topic().to_owned(),
        partition: m.partition(),
        offset: m.offset(),
        item,
    }
}

/// Assigns every partition of the sources at the store's offsets, when the
/// set of partitions changed.
async fn assign(
    consumer: &Arc<StreamConsumer>,
    sources: &Sources,
    store: &Store,
    assigned: &mut HashMap<String, i32>,
) -> Result<(), ConsoleError> {
    let mut found: HashMap<String, i32> = HashMap::new();
    for topic in sources.all() {
        // `fetch_metadata` blocks: off the executor.
        let c = consumer.clone();
        let t = topic.clone();
        let md =
            tokio::task::spawn_blocking(move || c.fetch_metadata(Some(&t), Duration::from_secs(5)))
                .await
                .map_err(|e| ConsoleError::Kafka(e.to_string()))?
                .map_err(|e| ConsoleError::Kafka(e.to_string()))?;
        for t in md.topics() {
            if t.error().is_none() && !t.partitions().is_empty() {
                found.insert(t.name().to_owned(), t.partitions().len() as i32);
            }
        }
    }
    if found == *assigned {
        return Ok(());
    }
    let offsets = store.offsets().await?;
    let mut tpl = TopicPartitionList::new();
    for (topic, n) in &found {
        for p in 0..*n {
            let at = match offsets.get(&(topic.clone(), p)) {
                Some(o) => Offset::Offset(*o),
                None => Offset::Beginning,
            };
            tpl.add_partition_offset(topic, p, at)
                .map_err(|e| ConsoleError::Kafka(e.to_string()))?;
        }
    }
    consumer
        .assign(&tpl)
        .map_err(|e| ConsoleError::Kafka(e.to_string()))?;
    info!(topics = ?found, "console: following");
    *assigned = found;
    Ok(())
}
