//! The SDK: implement [`CommandHandler`] for a custom adapter and run it
//! through an [`crate::Executor`] to get retries, circuit breaker, rate and
//! concurrency limits, idempotency, caching and metrics for free. The
//! declarative REST/SOAP adapter ([`crate::DeclarativeHandler`]) is one
//! implementation.

use std::time::Duration;

use tokio::time::Instant;

use crate::command::{AdapterCommand, AdapterOutcome};

/// Per-attempt information the executor gives a handler.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// When the command's whole time budget runs out. The executor cancels
    /// the attempt at this instant; handlers should bound their own I/O by
    /// [`CallContext::remaining`].
    pub deadline: Instant,
    /// 1-based attempt number within this execution (retries inside the
    /// adapter); not the saga-level `AdapterCommand::attempt`.
    pub attempt: u32,
}

impl CallContext {
    /// Time left until the deadline.
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

/// A cache entry request: serve equal keys from the cache for `ttl`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKey {
    pub key: String,
    pub ttl: Duration,
}

/// What a team implements to front a backend.
///
/// Return [`AdapterOutcome::transient`] for anything worth retrying (the
/// executor retries with backoff, honouring
/// [`AdapterOutcome::with_retry_after`]), [`AdapterOutcome::business_failure`]
/// for refusals the saga must compensate, and [`AdapterOutcome::success`]
/// otherwise. The executor guarantees at most one concurrent call per command
/// id and answers redeliveries of completed commands without calling the
/// handler again.
#[async_trait::async_trait]
pub trait CommandHandler: Send + Sync + 'static {
    /// Performs one attempt of the command.
    async fn handle(&self, cmd: &AdapterCommand, ctx: &CallContext) -> AdapterOutcome;

    /// `Some` when this command's successful outcome may be cached.
    fn cache_key(&self, _cmd: &AdapterCommand) -> Option<CacheKey> {
        None
    }

    /// Whether `operation` is one this handler implements; unknown ones are
    /// labelled `unknown` in metrics so labels stay bounded.
    fn knows_operation(&self, _operation: &str) -> bool {
        true
    }
}
