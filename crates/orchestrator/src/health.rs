//! Whether the driver can work: ready once it holds and has restored its
//! partitions, never while it is stalled or gone.
//!
//! The driver marks itself busy around every piece of work that waits on
//! the broker (a restore, a batch's writes). A watchdog in the process
//! shell reads [`Health::stalled_for`]: busy for longer than the stall
//! timeout means the driver is stuck, so `/readyz` turns red and the
//! process exits non-zero, for a supervisor to restart it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Shared between the driver, the HTTP API and the watchdog.
#[derive(Clone, Debug, Default)]
pub struct Health {
    ready: Arc<AtomicBool>,
    /// Milliseconds since the epoch when the current piece of work began;
    /// 0 when idle.
    busy_since: Arc<AtomicU64>,
}

/// Clears the busy mark when the work it covers ends (or is dropped).
#[must_use = "the work is busy only while the guard lives"]
pub struct Busy<'a>(&'a Health);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.busy_since.store(0, Ordering::SeqCst);
    }
}

/// Re-marks the driver busy (from now) when a deliberate wait ends.
#[must_use = "the wait lasts only while the guard lives"]
pub struct Waiting<'a>(&'a Health, bool);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.1 {
            self.0.busy_since.store(now_ms().max(1), Ordering::SeqCst);
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

impl Health {
    /// The flag `/readyz` reads.
    pub fn ready_flag(&self) -> Arc<AtomicBool> {
        self.ready.clone()
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Marks the driver busy until the guard drops.
    pub fn busy(&self) -> Busy<'_> {
        self.busy_since.store(now_ms().max(1), Ordering::SeqCst);
        Busy(self)
    }

    /// Pauses the busy mark while the driver deliberately waits out a
    /// dependency's outage (with backoff): that is not a stall. The mark
    /// restarts from now when the guard drops.
    pub fn waiting(&self) -> Waiting<'_> {
        let was_busy = self.busy_since.swap(0, Ordering::SeqCst) != 0;
        Waiting(self, was_busy)
    }

    /// How long the current piece of work has been running, if any.
    pub fn stalled_for(&self) -> Option<Duration> {
        match self.busy_since.load(Ordering::SeqCst) {
            0 => None,
            since => Some(Duration::from_millis(now_ms().saturating_sub(since))),
        }
    }

    /// Resolves once the driver has been busy for longer than `timeout`,
    /// turning `/readyz` red first. Checks a few times per timeout.
    pub async fn watch_for_stall(&self, timeout: Duration) -> Duration {
        let tick = (timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        loop {
            tokio::time::sleep(tick).await;
            if let Some(busy) = self.stalled_for()
                && busy > timeout
            {
                self.set_ready(false);
                return busy;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_guard_marks_and_clears() {
        let h = Health::default();
        assert_eq!(h.stalled_for(), None);
        {
            let _b = h.busy();
            assert!(h.stalled_for().is_some());
        }
        assert_eq!(h.stalled_for(), None);
    }

    #[test]
    fn waiting_out_an_outage_is_not_a_stall() {
        let h = Health::default();
        let _b = h.busy();
        {
            let _w = h.waiting();
            assert_eq!(h.stalled_for(), None);
        }
        assert!(h.stalled_for().is_some());
    }

    #[tokio::test]
    async fn a_stall_turns_readiness_red_and_resolves_the_watch() {
        let h = Health::default();
        h.set_ready(true);
        let _b = h.busy();
        let busy = tokio::time::timeout(
            Duration::from_secs(5),
            h.watch_for_stall(Duration::from_millis(200)),
        )
        .await
        .expect("the watchdog sees the stall");
        assert!(busy > Duration::from_millis(200));
        assert!(!h.is_ready());
    }

    #[tokio::test]
    async fn short_work_is_no_stall() {
        let h = Health::default();
        h.set_ready(true);
        let watch = h.clone();
        let w =
            tokio::spawn(async move { watch.watch_for_stall(Duration::from_millis(300)).await });
        for _ in 0..10 {
            let _b = h.busy();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!w.is_finished());
        assert!(h.is_ready());
        w.abort();
    }
}
