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
///
/// Every change of state is logged with the service's name: opening and
/// re-opening at `warn` (commands fail fast with `circuit_open` from then
/// on, and the orchestrator's attempts for them are spent), closing at
/// `info`. The gauge alone says that it is open, not since when or why.
#[derive(Debug)]
pub struct CircuitBreaker {
    inner: Arc<Mutex<Inner>>,
    threshold: u32,
    cool_down: Duration,
    service: Arc<str>,
}

/// Permission for one call; report its result with [`BreakerPermit::record`].
/// A probe dropped without a result re-opens the breaker for another probe.
#[derive(Debug)]
pub struct BreakerPermit {
    inner: Arc<Mutex<Inner>>,
    threshold: u32,
    cool_down: Duration,
    service: Arc<str>,
    probe: bool,
    recorded: bool,
}

/// A change of the breaker's state that a call's result caused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Closed → open: `threshold` consecutive transient failures.
    Opened,
    /// Half-open → open: the probe failed.
    Reopened,
    /// Half-open → closed: a call succeeded.
    Closed,
}

impl CircuitBreaker {
    pub fn new(service: &str, threshold: u32, cool_down: Duration) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner::Closed { failures: 0 })),
            threshold: threshold.max(1),
            cool_down,
            service: Arc::from(service),
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
            service: Arc::clone(&self.service),
            probe,
            recorded: false,
        })
    }
}

impl BreakerPermit {
    /// Records the call's result: `failure` is the error code of a
    /// transient failure, `None` for any other outcome. Returns the change
    /// of state it caused, which is also logged.
    pub fn record(mut self, failure: Option<&str>) -> Option<Transition> {
        self.recorded = true;
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let open = || Inner::Open {
            until: Instant::now() + self.cool_down,
        };
        let (next, transition) = match (&*inner, failure) {
            (Inner::Closed { failures }, Some(_)) if failures + 1 >= self.threshold => {
                (open(), Some(Transition::Opened))
            }
            (Inner::Closed { failures }, Some(_)) => (
                Inner::Closed {
                    failures: failures + 1,
                },
                None,
            ),
            (Inner::Closed { .. }, None) => (Inner::Closed { failures: 0 }, None),
            (Inner::HalfOpen, Some(_)) => (open(), Some(Transition::Reopened)),
            (Inner::HalfOpen, None) => (Inner::Closed { failures: 0 }, Some(Transition::Closed)),
            // A call that started before the breaker opened: ignore it.
            (Inner::Open { until }, _) => (Inner::Open { until: *until }, None),
        };
        *inner = next;
        drop(inner);
        if let Some(t) = transition {
            self.log(t, failure.unwrap_or(""));
        }
        transition
    }

    /// Logs a change of state; `last_error` is the failure that caused it
    /// (empty when a success closed the breaker). Only changes are logged,
    /// so a call that changes nothing pays for no formatting.
    fn log(&self, transition: Transition, last_error: &str) {
        let service = &*self.service;
        let cool_down_ms = u64::try_from(self.cool_down.as_millis()).unwrap_or(u64::MAX);
        match transition {
            Transition::Opened => tracing::warn!(
                service,
                consecutive_failures = self.threshold,
                last_error,
                cool_down_ms,
                "circuit breaker opened: commands fail fast with circuit_open until a probe succeeds"
            ),
            Transition::Reopened => tracing::warn!(
                service,
                last_error,
                cool_down_ms,
                "circuit breaker probe failed; open again"
            ),
            Transition::Closed => tracing::info!(service, "circuit breaker closed"),
        }
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
        const FAIL: Option<&str> = Some("http_503");
        let b = CircuitBreaker::new("inventory", 3, Duration::from_secs(10));
        for _ in 0..2 {
            assert_eq!(b.try_acquire().unwrap().record(FAIL), None);
        }
        assert_eq!(b.state(), CircuitState::Closed);
        assert_eq!(b.try_acquire().unwrap().record(None), None);
        for _ in 0..2 {
            assert_eq!(b.try_acquire().unwrap().record(FAIL), None);
        }
        assert_eq!(
            b.try_acquire().unwrap().record(FAIL),
            Some(Transition::Opened)
        );
        assert_eq!(b.state(), CircuitState::Open);
        assert!(b.try_acquire().is_none());
        tokio::time::advance(Duration::from_secs(11)).await;
        let probe = b.try_acquire().unwrap();
        assert_eq!(b.state(), CircuitState::HalfOpen);
        assert!(b.try_acquire().is_none(), "only one probe");
        assert_eq!(probe.record(FAIL), Some(Transition::Reopened));
        assert_eq!(b.state(), CircuitState::Open);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(
            b.try_acquire().unwrap().record(None),
            Some(Transition::Closed)
        );
        assert_eq!(b.state(), CircuitState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_probe_allows_another() {
        let b = CircuitBreaker::new("inventory", 1, Duration::from_secs(1));
        b.try_acquire().unwrap().record(Some("timeout"));
        tokio::time::advance(Duration::from_secs(2)).await;
        drop(b.try_acquire().unwrap());
        assert!(b.try_acquire().is_some());
    }
}
