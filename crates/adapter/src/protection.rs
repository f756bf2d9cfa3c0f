//! Circuit breaker. (Rate limiting is `governor`, concurrency a tokio
//! semaphore; both are wired in the executor.)

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// Breaker states, with the gauge value each is exported as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    HalfOpen,
    Open,
}

impl CircuitState {
    /// 0 closed, 1 half-open, 2 open.
    pub fn gauge_value(self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::HalfOpen => 1,
            Self::Open => 2,
        }
    }
}

#[derive(Debug)]
enum Inner {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen,
}

/// Opens after `threshold` consecutive transient failures; after `cool_down`
/// lets exactly one probe through (half-open); the probe's result closes or
/// re-opens it.
#[derive(Debug)]
pub struct CircuitBreaker {
    inner: Arc<Mutex<Inner>>,
    threshold: u32,
    cool_down: Duration,
}

/// Permission for one call; report its result with [`BreakerPermit::record`].
/// A probe dropped without a result re-opens the breaker for another probe.
#[derive(Debug)]
pub struct BreakerPermit {
    inner: Arc<Mutex<Inner>>,
    threshold: u32,
    cool_down: Duration,
    probe: bool,
    recorded: bool,
}

impl CircuitBreaker {
    pub fn new(threshold: u32, cool_down: Duration) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner::Closed { failures: 0 })),
            threshold: threshold.max(1),
            cool_down,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Current state.
    pub fn state(&self) -> CircuitState {
        match &*self.lock() {
            Inner::Closed { .. } => CircuitState::Closed,
            Inner::HalfOpen => CircuitState::HalfOpen,
            Inner::Open { .. } => CircuitState::Open,
        }
    }

    /// Asks to make a call; `None` means fail fast.
    pub fn try_acquire(&self) -> Option<BreakerPermit> {
        let mut inner = self.lock();
        let probe = match &*inner {
            Inner::Closed { .. } => false,
            Inner::HalfOpen => return None,
            Inner::Open { until } if Instant::now() < *until => return None,
            Inner::Open { .. } => {
                *inner = Inner::HalfOpen;
                true
            }
        };
        Some(BreakerPermit {
            inner: Arc::clone(&self.inner),
            threshold: self.threshold,
            cool_down: self.cool_down,
            probe,
            recorded: false,
        })
    }
}

impl BreakerPermit {
    /// Records the call's result: `failed` for a transient failure.
    pub fn record(mut self, failed: bool) {
        self.recorded = true;
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let next = match (&*inner, failed) {
            (Inner::Closed { failures }, true) if failures + 1 >= self.threshold => Inner::Open {
                until: Instant::now() + self.cool_down,
            },
            (Inner::Closed { failures }, true) => Inner::Closed {
                failures: failures + 1,
            },
            (Inner::Closed { .. }, false) => Inner::Closed { failures: 0 },
            (Inner::HalfOpen, true) => Inner::Open {
                until: Instant::now() + self.cool_down,
            },
            (Inner::HalfOpen, false) => Inner::Closed { failures: 0 },
            // A call that started before the breaker opened: ignore it.
            (Inner::Open { until }, _) => Inner::Open { until: *until },
        };
        *inner = next;
    }
}

impl Drop for BreakerPermit {
    fn drop(&mut self) {
        if self.probe && !self.recorded {
            let mut inner = self
                .inner
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if matches!(*inner, Inner::HalfOpen) {
                *inner = Inner::Open {
                    until: Instant::now(),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_half_opens_and_closes() {
        let b = CircuitBreaker::new(3, Duration::from_secs(10));
        for _ in 0..2 {
            b.try_acquire().unwrap().record(true);
        }
        assert_eq!(b.state(), CircuitState::Closed);
        b.try_acquire().unwrap().record(false);
        for _ in 0..3 {
            b.try_acquire().unwrap().record(true);
        }
        assert_eq!(b.state(), CircuitState::Open);
        assert!(b.try_acquire().is_none());
        tokio::time::advance(Duration::from_secs(11)).await;
        let probe = b.try_acquire().unwrap();
        assert_eq!(b.state(), CircuitState::HalfOpen);
        assert!(b.try_acquire().is_none(), "only one probe");
        probe.record(true);
        assert_eq!(b.state(), CircuitState::Open);
        tokio::time::advance(Duration::from_secs(11)).await;
        b.try_acquire().unwrap().record(false);
        assert_eq!(b.state(), CircuitState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_probe_allows_another() {
        let b = CircuitBreaker::new(1, Duration::from_secs(1));
        b.try_acquire().unwrap().record(true);
        tokio::time::advance(Duration::from_secs(2)).await;
        drop(b.try_acquire().unwrap());
        assert!(b.try_acquire().is_some());
    }
}
