//! Sagaflow's Kafka producer: what rdkafka's `FutureProducer` does for us,
//! without its idle cost.
//!
//! rdkafka 0.39's `ThreadedProducer` (under `FutureProducer`) polls in a
//! loop with a 100 ms timeout, and `BaseProducer::poll` loops until its
//! deadline while librdkafka, handed the remaining time truncated to whole
//! milliseconds, returns up to 1 ms early: the thread then spins with 0 ms
//! polls for the rest of every 100 ms, ~0.5-1 % of a core per idle producer
//! (librdkafka fixed the same rounding in C, #4671). This producer polls
//! with a timeout of 5 s and a fraction of a millisecond instead, which an
//! idle producer waits out without spinning (see [`POLL_TIMEOUT`]), and
//! delivery reports are not delayed by it, since `BaseProducer::poll`
//! serves each event the moment it arrives and only returns at the deadline.
//!
//! Dropping the last handle does not wait for the polling thread: it sets
//! the stop flag and leaves. The thread holds its own reference to the
//! librdkafka client; it sees the flag within one poll timeout, and dropping
//! that last reference runs `BaseProducer`'s drop there, off the caller's
//! thread: queued and in-flight messages are purged and their delivery
//! reports served, so every pending [`DeliveryFuture`] resolves (with a
//! purge error) and none hangs.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rdkafka::client::{Client, ClientContext};
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedMessage, Timestamp, ToBytes};
use rdkafka::producer::future_producer::{Delivery, OwnedDeliveryResult};
use rdkafka::producer::{
    BaseProducer, BaseRecord, DeliveryResult, FutureRecord, Producer as _, ProducerContext,
    PurgeConfig,
};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, TopicPartitionList};
use tokio::sync::oneshot;

/// How long the polling thread waits in one `poll`. Delivery reports are
/// served as they arrive; this bounds how long the thread outlives the last
/// handle, and how often an idle producer wakes. At 1 s the end-of-poll
/// spin of an idle `sagaflow dev` stack's 14 producers was 5-11 ms of CPU a
/// second.
///
/// The 50 µs past the whole second keep an idle poll from spinning.
/// `BaseProducer::poll` hands librdkafka the time left truncated to whole
/// milliseconds; the time left is a little under the timeout by the time it
/// is first read, so a whole-second timeout waited 4,999 ms and then spun
/// with 0 ms polls for the last millisecond of every poll (the 14 polling
/// threads of an idle `dev` stack were charged 4-4.7 ms of CPU a second;
/// the whole stack used about 1 ms a second less without it). With a
/// fraction above the whole milliseconds, librdkafka waits 5,000 ms (it
/// rounds its own remainders up) and wakes at most that fraction before the
/// deadline, usually after it (a sleeping thread's timer slack is 50 µs).
pub const POLL_TIMEOUT: Duration = Duration::from_micros(5_000_050);
const _: () = assert!(
    !POLL_TIMEOUT.as_micros().is_multiple_of(1_000),
    "a whole-millisecond poll timeout spins for the last millisecond of every poll"
);

/// How long [`Producer::send`] waits between tries while librdkafka's queue
/// is full, as `FutureProducer::send` does.
const QUEUE_FULL_RETRY: Duration = Duration::from_millis(100);

/// Name of the polling thread (as `top -H` and `perf` show it).
pub const POLL_THREAD_NAME: &str = "sf-producer";

/// The delivery report of a sent record never came: the producer went
/// without reporting it (only if its polling thread died).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the producer went before reporting the delivery")]
pub struct Canceled;

/// The [`ProducerContext`] of [`Producer`]: each record carries a oneshot
/// sender that its delivery report completes.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeliveryContext;

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Box<oneshot::Sender<OwnedDeliveryResult>>;

    fn delivery(&self, result: &DeliveryResult<'_>, tx: Self::DeliveryOpaque) {
        let owned = match result {
            Ok(m) => Ok(Delivery {
                partition: m.partition(),
                offset: m.offset(),
                timestamp: m.timestamp(),
            }),
            Err((e, m)) => Err((e.clone(), m.detach())),
        };
        // The receiver may be gone (a caller that stopped waiting): fine.
        let _ = tx.send(owned);
    }
}

/// A future completed by the delivery report of one record: its partition
/// and offset, or the error and the message. Dropping it is fine (the record
/// is still sent), as with rdkafka's `DeliveryFuture`.
#[derive(Debug)]
pub struct DeliveryFuture {
    rx: oneshot::Receiver<OwnedDeliveryResult>,
}

impl Future for DeliveryFuture {
    type Output = Result<OwnedDeliveryResult, Canceled>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx).poll(cx).map_err(|_| Canceled)
    }
}

/// Sets the stop flag when the last [`Producer`] handle goes.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// A Kafka producer with one polling thread; cheap to clone (clones share
/// the client). See the module docs for why it replaces `FutureProducer`.
#[derive(Clone)]
pub struct Producer {
    base: Arc<BaseProducer<DeliveryContext>>,
    _stop: Arc<StopOnDrop>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("in_flight", &self.base.in_flight_count())
            .finish()
    }
}

impl Producer {
    /// Creates the librdkafka producer and starts its polling thread.
    pub fn from_config(config: &ClientConfig) -> KafkaResult<Self> {
        let base = Arc::new(BaseProducer::from_config_and_context(
            config,
            DeliveryContext,
        )?);
        let stop = Arc::new(AtomicBool::new(false));
        let (poller, stopped) = (Arc::clone(&base), Arc::clone(&stop));
        std::thread::Builder::new()
            .name(POLL_THREAD_NAME.to_owned())
            .spawn(move || {
                while !stopped.load(Ordering::Acquire) {
                    poller.poll(POLL_TIMEOUT);
                }
                // Dropping `poller`, the last reference once every handle
                // has gone, purges what is left and serves its delivery
                // reports here, not on the thread that dropped the handle.
            })
            .map_err(|e| {
                KafkaError::ClientCreation(format!("starting the producer polling thread: {e}"))
            })?;
        Ok(Self {
            base,
            _stop: Arc::new(StopOnDrop(stop)),
        })
    }

    /// Sends a record and waits for its delivery report. While librdkafka's
    /// queue is full it retries every 100 ms until `queue_timeout` has
    /// passed, then reports `QueueFull` with the message, as
    /// `FutureProducer::send` does.
    pub async fn send<K, P, T>(
        &self,
        record: FutureRecord<'_, K, P>,
        queue_timeout: T,
    ) -> OwnedDeliveryResult
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
        T: Into<Timeout>,
    {
        let started = Instant::now();
        let queue_timeout = queue_timeout.into();
        let can_retry = || match queue_timeout {
            Timeout::Never => true,
            Timeout::After(t) => started.elapsed() < t,
        };
        let mut record = record;
        loop {
            let (topic, partition) = (record.topic, record.partition);
            match self.send_result(record) {
                Ok(delivery) => {
                    return match delivery.await {
                        Ok(result) => result,
                        // The record went to librdkafka; only where it was
                        // going is left to report.
                        Err(Canceled) => Err((
                            KafkaError::Canceled,
                            OwnedMessage::new(
                                None,
                                None,
                                topic.to_owned(),
                                Timestamp::NotAvailable,
                                partition.unwrap_or(-1),
                                0,
                                None,
                            ),
                        )),
                    };
                }
                Err((e, back))
                    if e == KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
                        && can_retry() =>
                {
                    record = back;
                    tokio::time::sleep(QUEUE_FULL_RETRY).await;
                }
                Err((e, back)) => return Err((e, owned(back))),
            }
        }
    }

    /// Enqueues a record without waiting: the returned future completes with
    /// its delivery report. If librdkafka refuses it (full queue, unknown
    /// partition, …) the error comes back at once with the record.
    #[allow(clippy::result_large_err)]
    pub fn send_result<'a, K, P>(
        &self,
        record: FutureRecord<'a, K, P>,
    ) -> Result<DeliveryFuture, (KafkaError, FutureRecord<'a, K, P>)>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let (tx, rx) = oneshot::channel();
        let base_record = BaseRecord {
            topic: record.topic,
            partition: record.partition,
            payload: record.payload,
            key: record.key,
            timestamp: record.timestamp,
            headers: record.headers,
            delivery_opaque: Box::new(tx),
        };
        match self.base.send(base_record) {
            Ok(()) => Ok(DeliveryFuture { rx }),
            Err((e, r)) => Err((
                e,
                FutureRecord {
                    topic: r.topic,
                    partition: r.partition,
                    payload: r.payload,
                    key: r.key,
                    timestamp: r.timestamp,
                    headers: r.headers,
                },
            )),
        }
    }
}

/// An owned copy of a record librdkafka refused, as `FutureProducer::send`
/// returns it.
fn owned<K, P>(record: FutureRecord<'_, K, P>) -> OwnedMessage
where
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    OwnedMessage::new(
        record.payload.map(|p| p.to_bytes().to_vec()),
        record.key.map(|k| k.to_bytes().to_vec()),
        record.topic.to_owned(),
        record
            .timestamp
            .map_or(Timestamp::NotAvailable, Timestamp::CreateTime),
        record.partition.unwrap_or(-1),
        0,
        record.headers,
    )
}

impl rdkafka::producer::Producer<DeliveryContext> for Producer {
    fn client(&self) -> &Client<DeliveryContext> {
        self.base.client()
    }

    fn in_flight_count(&self) -> i32 {
        self.base.in_flight_count()
    }

    fn flush<T: Into<Timeout>>(&self, timeout: T) -> KafkaResult<()> {
        self.base.flush(timeout)
    }

    fn purge(&self, flags: PurgeConfig) {
        self.base.purge(flags)
    }

    fn init_transactions<T: Into<Timeout>>(&self, timeout: T) -> KafkaResult<()> {
        self.base.init_transactions(timeout)
    }

    fn begin_transaction(&self) -> KafkaResult<()> {
        self.base.begin_transaction()
    }

    fn send_offsets_to_transaction<T: Into<Timeout>>(
        &self,
        offsets: &TopicPartitionList,
        cgm: &ConsumerGroupMetadata,
        timeout: T,
    ) -> KafkaResult<()> {
        self.base.send_offsets_to_transaction(offsets, cgm, timeout)
    }

    fn commit_transaction<T: Into<Timeout>>(&self, timeout: T) -> KafkaResult<()> {
        self.base.commit_transaction(timeout)
    }

    fn abort_transaction<T: Into<Timeout>>(&self, timeout: T) -> KafkaResult<()> {
        self.base.abort_transaction(timeout)
    }
}
