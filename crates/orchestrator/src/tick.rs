//! Timers that wait for what is already on its way.
//!
//! A step's timeout must not fire while the reply that answers it sits
//! unread in `sagaflow.replies`: after a takeover (the new owner restores
//! timers that fell due while nobody read the partition), a process that
//! was stopped, or a batch that waited out a registry outage, the
//! driver's clock is past the deadline but the reply the adapter produced
//! in time is still ahead of its consumer. Firing first compensates a
//! step that succeeded (a payment taken, then refunded).
//!
//! So a partition's timers that await an input
//! ([`sagaflow_engine::TimerPurpose::awaits_input`]) fire only once the
//! driver has read the partition's inputs and replies up to a moment
//! after they fell due. The driver learns that moment by writing it: a
//! tick, one record with the current time to the partition of
//! `sagaflow.inputs` and one to that of `sagaflow.replies`. Each topic's
//! partition is read in order, so when both ticks are read back,
//! everything appended before them has been applied, and timers due by
//! the tick's time may fire. No high watermark is involved: a watermark
//! can lag behind acknowledged records (docs/broker.md), a record of our
//! own cannot be read before what precedes it.
//!
//! A tick costs two small records and one broker round trip, only when
//! such a timer is due: in a healthy run none is. Ticks of an earlier
//! owner read after a takeover say the same thing (everything before them
//! was read) and count as well. A tick that never comes back is sent again
//! after [`RESEND`]; one the broker does not acknowledge stops the driver,
//! as any failed produce does (a driver without a broker must not sit
//! holding its timeouts and call itself healthy).

use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::types::RDKafkaErrorCode;
use sagaflow_bus::header_names::MESSAGE_TYPE;
use sagaflow_bus::{DeliveryFuture, Producer, TopicNames};
use tracing::warn;

/// The `sagaflow-type` of a tick record. A tick has no key and no value
/// (readers that skip records without a value skip it); its time is the
/// [`TICK_AT`] header.
pub const TICK_TYPE: &str = "Tick";

/// The header of a tick record with its time: ms since the epoch, decimal.
pub const TICK_AT: &str = "sagaflow-tick-at";

/// How long a tick may take to come back before another is sent.
pub const RESEND: Duration = Duration::from_secs(1);

/// How far one partition's inputs and replies are known to be read.
#[derive(Debug, Default)]
pub(crate) struct Ticks {
    /// The latest tick read back from the inputs' partition (ms since
    /// the epoch), 0 before the first.
    inputs: u64,
    /// The same for the replies' partition.
    replies: u64,
    /// The tick sent and not yet read back on both topics: its time, and
    /// when it was sent.
    asked: Option<(u64, Instant)>,
}

impl Ticks {
    /// Everything appended to both partitions before this moment (ms since
    /// the epoch) has been read.
    pub(crate) fn read(&self) -> u64 {
        self.inputs.min(self.replies)
    }

    /// A tick of time `at` was read back from the replies' partition
    /// (`on_replies`) or the inputs'.
    pub(crate) fn seen(&mut self, on_replies: bool, at: u64) {
        let mark = if on_replies {
            &mut self.replies
        } else {
            &mut self.inputs
        };
        *mark = (*mark).max(at);
        if self.asked.is_some_and(|(t, _)| self.read() >= t) {
            self.asked = None;
        }
    }

    /// Whether to send a tick now: none is on its way, or the last one
    /// has been out longer than [`RESEND`].
    pub(crate) fn due(&self, now: Instant) -> bool {
        self.asked
            .is_none_or(|(_, sent)| now.duration_since(sent) >= RESEND)
    }

    /// When to send again if the tick out now does not come back.
    pub(crate) fn resend_at(&self) -> Option<Instant> {
        self.asked.map(|(_, sent)| sent + RESEND)
    }

    /// Sends a tick of time `at` (ms since the epoch) to partition `p` of
    /// both topics, and returns their deliveries: the tick is known to
    /// have arrived when it is read back, but one the broker does not
    /// acknowledge is a failed produce. A send librdkafka refuses at once
    /// is logged and tried again after [`RESEND`].
    pub(crate) fn send(
        &mut self,
        producer: &Producer,
        names: &TopicNames,
        p: i32,
        at: u64,
        sent: Instant,
    ) -> Vec<DeliveryFuture> {
        self.asked = Some((at, sent));
        let time = at.to_string();
        let mut sent = Vec::new();
        for (topic, on_replies) in [(names.inputs(), false), (names.replies(), true)] {
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: MESSAGE_TYPE,
                    value: Some(TICK_TYPE),
                })
                .insert(Header {
                    key: TICK_AT,
                    value: Some(time.as_str()),
                });
            let record: FutureRecord<'_, (), ()> =
                FutureRecord::to(&topic).partition(p).headers(headers);
            match producer.send_result(record) {
                Ok(delivery) => sent.push(delivery),
                // A full queue passes: the tick goes again after `RESEND`.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    warn!(topic = %topic, messaging.kafka.partition = p, "a timer tick found the producer's queue full; trying again");
                }
                // The partition does not exist in this topic (inputs and
                // replies created with different partition counts, which
                // breaks co-partitioning anyway): nothing can arrive there
                // to wait for.
                Err((e, _)) => {
                    warn!(topic = %topic, messaging.kafka.partition = p, error = %e, "a timer tick cannot be sent; timers do not wait for this topic");
                    self.seen(on_replies, at);
                }
            }
        }
        sent
    }
}

/// The time of a tick record, or `None` when `m` is not one: a record
/// without a value whose `sagaflow-type` is `Tick`. A tick without a
/// readable time reads as time 0, which holds back nothing.
pub(crate) fn tick_of(m: &BorrowedMessage<'_>) -> Option<u64> {
    if m.payload().is_some() {
        return None;
    }
    let headers = m.headers()?;
    let value = |name: &str| headers.iter().find(|h| h.key == name).and_then(|h| h.value);
    if value(MESSAGE_TYPE) != Some(TICK_TYPE.as_bytes()) {
        return None;
    }
    let at = value(TICK_AT).and_then(|v| std::str::from_utf8(v).ok()?.parse().ok());
    Some(at.unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_partition_is_read_as_far_as_the_slower_topic() {
        let mut t = Ticks::default();
        assert_eq!(t.read(), 0);
        t.seen(true, 500);
        assert_eq!(t.read(), 0, "the inputs are not read that far yet");
        t.seen(false, 700);
        assert_eq!(t.read(), 500);
        t.seen(true, 400);
        assert_eq!(t.read(), 500, "an older tick read late moves nothing back");
        t.seen(true, 900);
        assert_eq!(t.read(), 700);
    }

    #[test]
    fn a_tick_out_is_not_sent_again_until_it_is_read_back_or_overdue() {
        let start = Instant::now();
        let mut t = Ticks::default();
        assert!(t.due(start));
        t.asked = Some((1_000, start));
        assert!(!t.due(start + RESEND / 2));
        assert!(t.due(start + RESEND), "a lost tick is sent again");
        assert_eq!(t.resend_at(), Some(start + RESEND));
        t.seen(true, 1_000);
        assert!(!t.due(start), "half read back: still out");
        t.seen(false, 1_000);
        assert!(t.due(start), "read back on both topics");
        assert_eq!(t.resend_at(), None);
    }
}
