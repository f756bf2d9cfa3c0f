//! Per-partition offset watermarks: an offset may be committed only when it
//! and every earlier offset of its partition received are done.

use std::collections::{BTreeMap, HashMap};

/// Tracks received and finished offsets per partition.
#[derive(Debug, Default)]
pub(crate) struct OffsetTracker {
    partitions: HashMap<i32, BTreeMap<i64, bool>>,
}

impl OffsetTracker {
    /// Records that `offset` of `partition` was received and is in progress.
    pub(crate) fn begin(&mut self, partition: i32, offset: i64) {
        self.partitions
            .entry(partition)
            .or_default()
            .entry(offset)
            .or_insert(false);
    }

    /// Marks `offset` done. Returns the offset to commit (the next one to
    /// read: last contiguous done offset + 1) when the watermark moved.
    /// Offsets never begun (e.g. of a revoked partition) are ignored.
    pub(crate) fn complete(&mut self, partition: i32, offset: i64) -> Option<i64> {
        let pending = self.partitions.get_mut(&partition)?;
        *pending.get_mut(&offset)? = true;
        let mut next = None;
        while let Some(entry) = pending.first_entry() {
            if !*entry.get() {
                break;
            }
            next = Some(*entry.key() + 1);
            entry.remove();
        }
        next
    }

    /// Forgets a partition (revoked): its in-flight offsets no longer count.
    pub(crate) fn forget(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }

    /// Offsets received and not yet done, over all partitions.
    pub(crate) fn pending(&self) -> usize {
        self.partitions
            .values()
            .map(|p| p.values().filter(|done| !**done).count())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_completion_advances_each_time() {
        let mut t = OffsetTracker::default();
        t.begin(0, 10);
        t.begin(0, 11);
        assert_eq!(t.complete(0, 10), Some(11));
        assert_eq!(t.complete(0, 11), Some(12));
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn a_gap_holds_the_watermark_until_it_closes() {
        let mut t = OffsetTracker::default();
        for o in [5, 6, 7] {
            t.begin(3, o);
        }
        assert_eq!(t.complete(3, 7), None);
        assert_eq!(t.complete(3, 6), None);
        assert_eq!(t.pending(), 1);
        assert_eq!(t.complete(3, 5), Some(8));
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn partitions_are_independent_and_offsets_may_skip() {
        let mut t = OffsetTracker::default();
        t.begin(0, 1);
        t.begin(1, 100);
        // Offsets need not be contiguous (compaction, transaction markers).
        t.begin(1, 104);
        assert_eq!(t.complete(1, 104), None);
        assert_eq!(t.complete(0, 1), Some(2));
        assert_eq!(t.complete(1, 100), Some(105));
    }

    #[test]
    fn unknown_repeated_and_forgotten_offsets_are_ignored() {
        let mut t = OffsetTracker::default();
        assert_eq!(t.complete(0, 1), None);
        t.begin(0, 1);
        t.begin(0, 2);
        assert_eq!(t.complete(0, 9), None);
        assert_eq!(t.complete(0, 1), Some(2));
        assert_eq!(t.complete(0, 1), None, "already committed");
        t.forget(0);
        assert_eq!(t.complete(0, 2), None);
        assert_eq!(t.pending(), 0);
        // A redelivered offset begun twice is still one offset.
        t.begin(2, 7);
        t.begin(2, 7);
        assert_eq!(t.pending(), 1);
        assert_eq!(t.complete(2, 7), Some(8));
    }
}
