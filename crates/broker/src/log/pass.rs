//! One fetch request's pass over the log, and where tansu's fetch loop ends.
//!
//! tansu 0.6.0's fetch asks the storage for a partition's batches at the
//! fetch offset, then again at that offset plus the record counts it got,
//! until a call returns nothing or the byte budget is spent. When the first
//! batch began before the fetch offset (a consumer resuming inside a batch)
//! that sum runs past the end of what was returned, and the next call would
//! skip the records in between.
//!
//! The log answers a request's first call for a partition with everything
//! its budget allows (see `Partition::fetch`), so the loop's follow-up call
//! has nothing to add: within one pass it is answered with nothing, which
//! ends the loop. Only the request knows a call is a follow-up. The same
//! offset asked by a consumer in a later request is a real position, often
//! the high watermark itself; an earlier log remembered follow-up offsets
//! across requests, served a caught-up consumer at such an offset the batch
//! before it again, and librdkafka then reported `MSG_SIZE_TOO_LARGE` and
//! stayed there until another record arrived.
//!
//! So the pass is task-local: the router runs each of tansu's fetch passes
//! inside [`fetch_pass`], and what it remembers ends with the pass.

use std::cell::RefCell;
use std::future::Future;

use tansu_sans_io::record::deflated;
use tansu_storage::Topition;

tokio::task_local! {
    /// Per partition answered in this pass: the offset tansu's loop asks
    /// at next.
    static PASS: RefCell<Vec<(Topition, i64)>>;
}

/// Runs one of tansu's fetch passes (`FetchService::serve`) so that the log
/// can tell its loop's follow-up calls from first ones.
pub(crate) async fn fetch_pass<F: Future>(pass: F) -> F::Output {
    PASS.scope(RefCell::new(Vec::new()), pass).await
}

/// Whether a fetch of `topition` at `offset` is the follow-up tansu's loop
/// makes after this pass answered it: then there is nothing to add.
pub(super) fn continues(topition: &Topition, offset: i64) -> bool {
    let found = PASS.try_with(|pass| {
        pass.borrow()
            .iter()
            .any(|(t, next)| t == topition && *next == offset)
    });
    debug_assert!(
        found.is_ok(),
        "the log is fetched from outside a fetch pass: tansu's loop could skip records"
    );
    found.unwrap_or(false)
}

/// Notes what this pass answered for `topition` at `offset`: tansu's loop
/// asks next at `offset` plus the batches' record counts.
pub(super) fn answered(topition: &Topition, offset: i64, batches: &[deflated::Batch]) {
    let next = offset
        + batches
            .iter()
            .map(|b| i64::from(b.record_count))
            .sum::<i64>();
    let _ = PASS.try_with(|pass| {
        let mut pass = pass.borrow_mut();
        pass.retain(|(t, _)| t != topition);
        if !batches.is_empty() {
            pass.push((topition.clone(), next));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn batch(records: u32) -> deflated::Batch {
        deflated::Batch {
            record_count: records,
            record_data: Bytes::new(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_follow_up_is_known_only_inside_its_own_pass() {
        let orders = Topition::new("orders", 0);
        let other = Topition::new("orders", 1);
        fetch_pass(async {
            assert!(!continues(&orders, 3), "a first call");
            answered(&orders, 3, &[batch(5), batch(2)]);
            assert!(continues(&orders, 10), "3 + 5 + 2: the loop's follow-up");
            assert!(!continues(&other, 10), "another partition");
            assert!(!continues(&orders, 3), "the fetch offset itself");
            // A later run of the loop in the same pass asks at the fetch
            // offset again and replaces what was noted.
            answered(&orders, 3, &[batch(5)]);
            assert!(!continues(&orders, 10));
            assert!(continues(&orders, 8));
            answered(&orders, 3, &[]);
            assert!(!continues(&orders, 8), "nothing answered, no follow-up");
        })
        .await;
        fetch_pass(async {
            answered(&orders, 3, &[batch(7)]);
        })
        .await;
        fetch_pass(async {
            assert!(!continues(&orders, 10), "a new pass remembers nothing");
        })
        .await;
    }
}
