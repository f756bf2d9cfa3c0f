//! Where a partition's sagas are kept: the [`SagaStore`] boundary.
//!
//! A store does three things for the driver, and nothing else:
//!
//! * [`take_over`](SagaStore::take_over) a partition: write this owner's
//!   epoch marker, then read the partition back until the marker (never
//!   trusting a high watermark), folded by [`Replay`];
//! * [`write`](SagaStore::write) a batch of changes, each stamped with its
//!   writer's epoch, and say which partitions a newer owner has taken over
//!   meanwhile (their changes must not be acted on);
//! * record [delivery marks](SagaStore::mark_delivered), so the next owner
//!   re-sends only the outboxes that may really be owed.
//!
//! Two backends keep the same promises, checked by one contract suite
//! (`tests/store_contract.rs`): [`KafkaStore`], the compacted changelog
//! topic, and [`MemoryStore`], a log in memory that the deterministic
//! simulation runs the protocol against. The fencing decision itself —
//! whether a gap between an owner's writes means it was replaced — is
//! one pure function, [`changelog::Fence`], that both call.

use std::future::Future;

use crate::changelog::Replay;

mod kafka;
mod memory;

pub use kafka::KafkaStore;
pub use memory::{MemoryRecord, MemoryStore, ready};

/// One owner's hold on one partition: its epoch and its place in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub partition: i32,
    /// This owner's epoch: the log offset of its ownership marker.
    pub epoch: i64,
    /// Where this owner's next write lands if nobody else writes to the
    /// partition; a gap means another writer.
    next_offset: i64,
    /// Outboxes written at or below this offset were written but their
    /// effects are not known to be sent yet.
    unsent: Option<i64>,
    /// Outboxes at or below this offset are delivered, and no mark says
    /// so yet.
    delivered: Option<i64>,
}

impl Lease {
    /// A lease on `partition` whose marker was written at `epoch`.
    pub fn new(partition: i32, epoch: i64) -> Self {
        Self {
            partition,
            epoch,
            next_offset: epoch + 1,
            unsent: None,
            delivered: None,
        }
    }

    /// The outboxes written so far (by the last write, or restored before
    /// the marker) have been sent: the next write records a delivery mark.
    pub fn sent(&mut self) {
        if let Some(through) = self.unsent {
            self.sent_through(through);
        }
    }

    /// Where the outboxes not known to be sent end: the last offset this
    /// owner wrote changes at, until [`sent_through`](Self::sent_through)
    /// covers it. A driver that sends a batch's effects while it goes on
    /// with the next batch notes this after the batch's write, and hands
    /// it back once the effects are acknowledged.
    pub fn unsent(&self) -> Option<i64> {
        self.unsent
    }

    /// The outboxes written at or below `through` have been sent (their
    /// effects acknowledged): the next write records a delivery mark. Those
    /// written later stay unsent.
    pub fn sent_through(&mut self, through: i64) {
        self.delivered = Some(self.delivered.map_or(through, |d| d.max(through)));
        if self.unsent.is_some_and(|u| u <= through) {
            self.unsent = None;
        }
    }

    /// After a restore re-sent the outboxes it found owed: everything
    /// written before the marker is delivered.
    pub fn sent_before_marker(&mut self) {
        self.delivered = Some(self.epoch - 1);
    }

    /// Whether a delivery mark waits to be written.
    pub fn delivery_pending(&self) -> bool {
        self.delivered.is_some()
    }

    /// The delivery mark still to write, if any (taken).
    fn take_delivered(&mut self) -> Option<i64> {
        self.delivered.take()
    }
}

/// A write to one key of a partition's log: a value, or a tombstone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub key: String,
    pub payload: Option<Vec<u8>>,
}

impl Change {
    pub fn put(key: impl Into<String>, payload: Vec<u8>) -> Self {
        Self {
            key: key.into(),
            payload: Some(payload),
        }
    }

    pub fn delete(key: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            payload: None,
        }
    }
}

/// What a takeover found.
#[derive(Debug)]
pub struct Restored {
    pub lease: Lease,
    pub replay: Replay,
    /// Records read, the marker included.
    pub records: u64,
}

/// What a write found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// Partitions a newer owner has taken over: their changes were written
    /// but every restore ignores them; their effects must not be sent and
    /// their inputs not committed.
    pub lost: Vec<i32>,
    /// Records of replaced owners found between this owner's writes (late
    /// writes every restore ignores).
    pub foreign: u64,
}

#[derive(Debug, thiserror::Error, sagaflow_codes::Coded)]
pub enum StoreError {
    #[error("SF-ORCH-024: restoring {topic}/{partition}: {message}")]
    Restore {
        topic: String,
        partition: i32,
        message: String,
    },
    #[error("SF-ORCH-020: writing {topic}: {message}")]
    Write { topic: String, message: String },
}

/// The store of saga state: see the module documentation. Every method
/// may be cancelled at any await point (a crash): what it wrote stays
/// written, and the protocol must hold anyway.
pub trait SagaStore {
    /// Takes partition `p` over.
    fn take_over(&self, p: i32) -> impl Future<Output = Result<Restored, StoreError>> + Send;

    /// Writes every lease's changes, stamped with its epoch, together with
    /// the delivery marks pending on any of the leases (a lease with no
    /// changes only contributes its mark). The changes of a lease become
    /// its unsent outboxes until [`Lease::sent`].
    fn write(
        &self,
        batch: Vec<(&mut Lease, Vec<Change>)>,
    ) -> impl Future<Output = Result<Written, StoreError>> + Send;

    /// Writes the delivery marks pending on these leases (a clean stop, a
    /// revoke).
    fn mark_delivered(
        &self,
        leases: Vec<&mut Lease>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Which offsets a write's records got, per lease in the batch; checks
/// them against where each lease expected them, and returns the leases
/// whose writes were not contiguous (someone else wrote in between).
pub(crate) fn advance(lease: &mut Lease, offsets: &mut [i64], had_changes: bool) -> bool {
    offsets.sort_unstable();
    let Some(&last) = offsets.last() else {
        return true;
    };
    let contiguous = offsets
        .iter()
        .enumerate()
        .all(|(i, o)| *o == lease.next_offset + i as i64);
    if contiguous {
        lease.next_offset = last + 1;
        if had_changes {
            lease.unsent = Some(last);
        }
    }
    contiguous
}

/// After a gap was found and judged a replaced owner's late writes (not a
/// takeover): the lease moves past them.
pub(crate) fn skip_gap(lease: &mut Lease, offsets: &[i64], had_changes: bool) {
    if let Some(&last) = offsets.iter().max() {
        lease.next_offset = last + 1;
        if had_changes {
            lease.unsent = Some(last);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_settled_marks_only_what_it_wrote() {
        let mut lease = Lease::new(0, 10);
        // Batch 1 writes offsets 11..=12, batch 2 writes 13..=14.
        assert!(advance(&mut lease, &mut [11, 12], true));
        let first = lease.unsent().expect("batch 1 unsent");
        assert!(advance(&mut lease, &mut [13, 14], true));
        let second = lease.unsent().expect("batch 2 unsent");
        assert_eq!((first, second), (12, 14));
        // Batch 1's effects are acknowledged: only its outboxes are marked.
        lease.sent_through(first);
        assert_eq!(lease.unsent(), Some(14), "batch 2's outboxes stay unsent");
        assert_eq!(lease.take_delivered(), Some(12));
        lease.sent_through(second);
        assert_eq!(lease.unsent(), None);
        assert_eq!(lease.take_delivered(), Some(14));
        // Of two marks pending at once, the further one is written.
        lease.sent_through(20);
        lease.sent_through(18);
        assert_eq!(lease.take_delivered(), Some(20));
    }
}
