//! Whether the driver can work: ready once it holds and has restored its
//! partitions, never while it is stuck or gone.
//!
//! The driver's loop beats at every turn (at least once a second when
//! idle), and so do its deliberate waits (a dependency's outage waited out
//! with backoff). A watchdog task of its own reads [`Health::stalled_for`]:
//! no beat for longer than the stall timeout means the driver is stuck —
//! blocked in a call that never returns, waiting on a broker that never
//! answers — so `/readyz` turns red and the process exits non-zero, for a
//! supervisor to restart it. The watchdog runs as its own task, so a
//! driver that blocks its thread cannot hide from it.

use sagaflow_bus::now_ms;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Shared between the driver, the HTTP API and the watchdog.
#[derive(Clone, Debug, Default)]
pub struct Health {
    ready: Arc<AtomicBool>,
    /// Milliseconds since the epoch of the driver's last beat; 0 before
    /// the first.
    alive_at: Arc<AtomicU64>,
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

    /// The driver is alive and making progress.
    pub fn beat(&self) {
        self.alive_at.store(now_ms().max(1), Ordering::SeqCst);
    }

    /// How long since the driver's last beat, once it has beaten.
    pub fn stalled_for(&self) -> Option<Duration> {
        match self.alive_at.load(Ordering::SeqCst) {
            0 => None,
            at => Some(Duration::from_millis(now_ms().saturating_sub(at))),
        }
    }

    /// Resolves once the driver has not beaten for longer than `timeout`,
    /// turning `/readyz` red first. Checks a few times per timeout.
    pub async fn watch_for_stall(&self, timeout: Duration) -> Duration {
        let tick = (timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        loop {
            tokio::time::sleep(tick).await;
            if let Some(quiet) = self.stalled_for()
                && quiet > timeout
            {
                self.set_ready(false);
                return quiet;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_stall_before_the_first_beat() {
        let h = Health::default();
        assert_eq!(h.stalled_for(), None);
        h.beat();
        assert!(h.stalled_for().is_some_and(|d| d < Duration::from_secs(1)));
    }

    #[tokio::test]
    async fn silence_turns_readiness_red_and_resolves_the_watch() {
        let h = Health::default();
        h.set_ready(true);
        h.beat();
        let quiet = tokio::time::timeout(
            Duration::from_secs(5),
            h.watch_for_stall(Duration::from_millis(200)),
        )
        .await
        .expect("the watchdog sees the stall");
        assert!(quiet > Duration::from_millis(200));
        assert!(!h.is_ready());
    }

    #[tokio::test]
    async fn a_beating_driver_is_no_stall() {
        let h = Health::default();
        h.set_ready(true);
        h.beat();
        let watch = h.clone();
        let w =
            tokio::spawn(async move { watch.watch_for_stall(Duration::from_millis(300)).await });
        for _ in 0..10 {
            h.beat();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!w.is_finished());
        assert!(h.is_ready());
        w.abort();
    }

    /// A driver that blocks its thread (a synchronous call that never
    /// returns) is still seen: the watchdog is a task of its own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_driver_blocking_its_thread_is_seen() {
        let h = Health::default();
        h.set_ready(true);
        h.beat();
        let watch = h.clone();
        let w =
            tokio::spawn(async move { watch.watch_for_stall(Duration::from_millis(200)).await });
        let blocked = tokio::spawn(async { std::thread::sleep(Duration::from_millis(1500)) });
        let quiet = tokio::time::timeout(Duration::from_secs(5), w)
            .await
            .expect("seen while the driver's thread is blocked")
            .unwrap();
        assert!(quiet > Duration::from_millis(200));
        blocked.await.unwrap();
    }
}
