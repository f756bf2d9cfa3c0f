//! When a consumer's stored offsets are committed.
//!
//! A commit is a broker request, so the runtimes commit a moment after the
//! first offset stored since the last commit rather than per record or
//! batch. A crash re-reads at most that moment's records, which idempotent
//! handling recognises; a revoke and a clean stop commit at once. While
//! nothing is stored the timer never fires, so an idle consumer is not woken
//! for commits.

use std::time::Duration;
use tokio::time::Instant;

/// Stored offsets and when they are due to be committed.
#[derive(Debug, Clone)]
pub struct CommitTimer {
    interval: Duration,
    due: Option<Instant>,
}

impl CommitTimer {
    /// Commits fall due `interval` after the first store since the last
    /// commit.
    pub const fn new(interval: Duration) -> Self {
        Self {
            interval,
            due: None,
        }
    }

    /// Offsets were stored. A later store does not postpone the commit.
    pub fn stored(&mut self) {
        self.due
            .get_or_insert_with(|| Instant::now() + self.interval);
    }

    /// Offsets are stored and not committed yet.
    pub fn pending(&self) -> bool {
        self.due.is_some()
    }

    /// Whether the commit is due now.
    pub fn is_due(&self) -> bool {
        self.due.is_some_and(|at| Instant::now() >= at)
    }

    /// Resolves when the commit is due; never while nothing is stored. The
    /// future does not borrow the timer, so a `select!` loop can await it
    /// beside branches that store offsets.
    pub fn due(&self) -> impl Future<Output = ()> + Send + 'static {
        let due = self.due;
        async move {
            match due {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        }
    }

    /// The commit is being made: true if anything was stored since the
    /// last one.
    pub fn take(&mut self) -> bool {
        self.due.take().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    fn ready(fut: &mut std::pin::Pin<&mut impl Future<Output = ()>>) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        matches!(fut.as_mut().poll(&mut cx), Poll::Ready(()))
    }

    #[tokio::test(start_paused = true)]
    async fn falls_due_an_interval_after_the_first_store_and_not_before() {
        let mut timer = CommitTimer::new(Duration::from_millis(100));
        assert!(!timer.pending());
        timer.stored();
        tokio::time::advance(Duration::from_millis(60)).await;
        // A second store does not push the commit back.
        timer.stored();
        let mut due = pin!(timer.due());
        assert!(!ready(&mut due));
        tokio::time::advance(Duration::from_millis(39)).await;
        assert!(!ready(&mut due));
        assert!(!timer.is_due());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(ready(&mut due));
        assert!(timer.is_due());
        assert!(timer.take());
        assert!(!timer.is_due(), "taken, nothing is due");
        assert!(!timer.take(), "a commit takes what was stored once");
        assert!(!timer.pending());
    }

    #[tokio::test(start_paused = true)]
    async fn never_falls_due_while_nothing_is_stored() {
        let timer = CommitTimer::new(Duration::from_millis(100));
        let mut due = pin!(timer.due());
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(!ready(&mut due));
        assert!(!timer.is_due());
    }
}
