//! The executor: everything between "a command arrived" and "here is the
//! reply outcome", around any [`CommandHandler`].
//!
//! Order per command: idempotency store (redelivery → stored reply) →
//! single-flight per Idempotency-Key → response cache → retry loop. Per attempt:
//! circuit breaker → concurrency limit → rate limit → handler, all bounded by
//! the command's deadline.

use std::collections::HashMap;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{OnceCell, Semaphore};
use tokio::time::Instant;

use crate::cache::{CacheGauges, IdempotencyStore, InMemoryIdempotencyStore, TtlLru, outcome_size};
use crate::command::{AdapterCommand, AdapterOutcome, OutcomeKind};
use crate::config::{
    CircuitBreakerSettings, IdempotencySettings, RateLimit, RetryPolicy, ServiceConfig,
};
use crate::declarative::DeclarativeHandler;
use crate::error::AdapterError;
use crate::handler::{CallContext, CommandHandler};
use crate::metrics::{AdapterMetrics, status_class};
use crate::protection::CircuitBreaker;

/// The executor's knobs; [`ExecutorSettings::from_config`] takes them from a
/// service config, [`ExecutorSettings::new`] gives defaults for SDK users.
#[derive(Debug, Clone)]
pub struct ExecutorSettings {
    pub service: String,
    pub retry: RetryPolicy,
    pub default_command_timeout: Duration,
    pub max_concurrency: NonZeroUsize,
    pub rate_limit: Option<RateLimit>,
    pub circuit_breaker: CircuitBreakerSettings,
    pub idempotency: IdempotencySettings,
    pub cache_capacity: NonZeroUsize,
    pub cache_max_bytes: NonZeroUsize,
}

impl ExecutorSettings {
    /// Defaults (same as an empty config section).
    pub fn new(service: impl Into<String>) -> Self {
        Self {
            service: service.into(),
            retry: RetryPolicy {
                max_attempts: NonZeroU32::new(4).unwrap_or(NonZeroU32::MIN),
                initial_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(5),
                jitter: true,
            },
            default_command_timeout: Duration::from_secs(30),
            max_concurrency: NonZeroUsize::new(32).unwrap_or(NonZeroUsize::MIN),
            rate_limit: None,
            circuit_breaker: CircuitBreakerSettings {
                failure_threshold: NonZeroU32::new(5).unwrap_or(NonZeroU32::MIN),
                cool_down: Duration::from_secs(30),
            },
            idempotency: IdempotencySettings {
                capacity: NonZeroUsize::new(10_000).unwrap_or(NonZeroUsize::MIN),
                max_bytes: NonZeroUsize::new(64 * 1024 * 1024).unwrap_or(NonZeroUsize::MIN),
                ttl: Duration::from_secs(24 * 3600),
            },
            cache_capacity: NonZeroUsize::new(1000).unwrap_or(NonZeroUsize::MIN),
            cache_max_bytes: NonZeroUsize::new(16 * 1024 * 1024).unwrap_or(NonZeroUsize::MIN),
        }
    }

    /// Settings of a validated service config.
    pub fn from_config(cfg: &ServiceConfig) -> Self {
        Self {
            service: cfg.service.clone(),
            retry: cfg.retry,
            default_command_timeout: cfg.protection.default_command_timeout,
            max_concurrency: cfg.protection.max_concurrency,
            rate_limit: cfg.protection.rate_limit,
            circuit_breaker: cfg.protection.circuit_breaker,
            idempotency: cfg.idempotency,
            cache_capacity: cfg.cache_capacity,
            cache_max_bytes: cfg.cache_max_bytes,
        }
    }
}

/// The longest time budget a command may ask for (`timeout_ms` is outside
/// input); longer budgets are clamped to this.
pub const MAX_COMMAND_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

type Inflight = Mutex<HashMap<String, Arc<OnceCell<AdapterOutcome>>>>;

/// Runs commands through a handler with retries, breaker, limits,
/// idempotency, caching and metrics. Share it behind an `Arc`.
pub struct Executor {
    settings: ExecutorSettings,
    handler: Arc<dyn CommandHandler>,
    metrics: AdapterMetrics,
    store: Arc<dyn IdempotencyStore>,
    inflight: Inflight,
    cache: TtlLru<AdapterOutcome>,
    breaker: CircuitBreaker,
    semaphore: Semaphore,
    limiter: Option<DefaultDirectRateLimiter>,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("settings", &self.settings)
            .field("circuit", &self.breaker.state())
            .finish_non_exhaustive()
    }
}

/// Removes a finished single-flight cell from the in-flight map.
struct InflightGuard<'a> {
    map: &'a Inflight,
    key: &'a str,
    cell: Arc<OnceCell<AdapterOutcome>>,
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        // Only a finished execution leaves the map: a cancelled waiter must
        // not let the next duplicate start a second backend call. A handler
        // that panicked leaves too (the runtime answers it), else its entry
        // would stay for ever.
        if !self.cell.initialized() && !std::thread::panicking() {
            return;
        }
        let mut map = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map
            .get(self.key)
            .is_some_and(|c| Arc::ptr_eq(c, &self.cell))
        {
            map.remove(self.key);
        }
    }
}

impl Executor {
    /// An executor around `handler` with an in-memory idempotency store.
    pub fn new(
        settings: ExecutorSettings,
        handler: Arc<dyn CommandHandler>,
        metrics: AdapterMetrics,
    ) -> Self {
        let gauges = |cache: &str| {
            let labels = [settings.service.as_str(), cache];
            CacheGauges {
                entries: metrics.cache_entries.with_label_values(&labels),
                bytes: metrics.cache_bytes.with_label_values(&labels),
            }
        };
        let store = Arc::new(InMemoryIdempotencyStore::with_gauges(
            settings.idempotency,
            Some(gauges("idempotency")),
        ));
        let cache = TtlLru::new(
            settings.cache_capacity,
            settings.cache_max_bytes.get(),
            Some(gauges("response")),
        );
        let limiter = settings
            .rate_limit
            .map(|r| RateLimiter::direct(Quota::per_second(r.per_second).allow_burst(r.burst)));
        let breaker = CircuitBreaker::new(
            settings.service.as_str(),
            settings.circuit_breaker.failure_threshold.get(),
            settings.circuit_breaker.cool_down,
        );
        metrics
            .circuit_state
            .with_label_values(&[settings.service.as_str()])
            .set(0);
        tracing::info!(service = %settings.service, "adapter executor ready");
        Self {
            semaphore: Semaphore::new(settings.max_concurrency.get()),
            cache,
            settings,
            handler,
            metrics,
            store,
            inflight: Mutex::new(HashMap::new()),
            breaker,
            limiter,
        }
    }

    /// The declarative REST/SOAP adapter for `cfg` (resolves its secrets).
    pub fn from_config(cfg: &ServiceConfig, metrics: AdapterMetrics) -> Result<Self, AdapterError> {
        let handler = DeclarativeHandler::new(cfg)?;
        Ok(Self::new(
            ExecutorSettings::from_config(cfg),
            Arc::new(handler),
            metrics,
        ))
    }

    /// Replaces the idempotency store (e.g. with a persistent one).
    pub fn with_idempotency_store(mut self, store: Arc<dyn IdempotencyStore>) -> Self {
        self.store = store;
        self
    }

    /// The idempotency store (the runtime restores durable entries into it).
    pub(crate) fn idempotency_store(&self) -> &Arc<dyn IdempotencyStore> {
        &self.store
    }

    /// How long completed outcomes are remembered.
    pub fn idempotency_ttl(&self) -> Duration {
        self.settings.idempotency.ttl
    }

    /// Service name.
    pub fn service(&self) -> &str {
        &self.settings.service
    }

    /// Current circuit breaker state.
    pub fn circuit_state(&self) -> crate::protection::CircuitState {
        self.breaker.state()
    }

    /// Executes one command and returns the outcome for the reply.
    pub async fn execute(&self, cmd: &AdapterCommand) -> AdapterOutcome {
        use tracing::Instrument as _;
        let span = tracing::info_span!(
            "adapter.execute",
            saga.id = %cmd.saga_id,
            saga.type = %cmd.saga_type,
            saga.step = %cmd.step,
            adapter.service = %self.settings.service,
            adapter.operation = %cmd.operation,
            adapter.command_id = %cmd.command_id,
        );
        let outcome = self.execute_inner(cmd).instrument(span.clone()).await;
        span.in_scope(|| {
            tracing::debug!(
                outcome = outcome.kind.as_str(),
                error.code = outcome.error_code().unwrap_or(""),
                "command executed"
            );
        });
        outcome
    }

    async fn execute_inner(&self, cmd: &AdapterCommand) -> AdapterOutcome {
        let service = self.settings.service.as_str();
        let timeout = if cmd.timeout_ms == 0 {
            self.settings.default_command_timeout
        } else {
            Duration::from_millis(cmd.timeout_ms).min(MAX_COMMAND_TIMEOUT)
        };
        let now = Instant::now();
        let deadline = now.checked_add(timeout).unwrap_or(now);

        if let Some(stored) = self.store.get(cmd.idempotency_key()).await {
            self.metrics
                .idempotent_hits_total
                .with_label_values(&[service])
                .inc();
            tracing::debug!(
                service,
                "redelivered command answered from idempotency store"
            );
            return stored;
        }
        let cell = {
            let mut map = self
                .inflight
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            Arc::clone(map.entry(cmd.idempotency_key().to_owned()).or_default())
        };
        let _guard = InflightGuard {
            map: &self.inflight,
            key: cmd.idempotency_key(),
            cell: Arc::clone(&cell),
        };
        let ran = AtomicBool::new(false);
        let outcome = cell
            .get_or_init(|| async {
                ran.store(true, Ordering::Relaxed);
                if let Some(stored) = self.store.get(cmd.idempotency_key()).await {
                    self.metrics
                        .idempotent_hits_total
                        .with_label_values(&[service])
                        .inc();
                    return stored;
                }
                let outcome = self.execute_uncached(cmd, deadline).await;
                if outcome.is_final() {
                    self.store.put(cmd.idempotency_key(), &outcome).await;
                }
                outcome
            })
            .await
            .clone();
        if !ran.load(Ordering::Relaxed) {
            self.metrics
                .idempotent_hits_total
                .with_label_values(&[service])
                .inc();
        }
        outcome
    }

    fn operation_label<'a>(&self, cmd: &'a AdapterCommand) -> &'a str {
        if self.handler.knows_operation(&cmd.operation) {
            &cmd.operation
        } else {
            "unknown"
        }
    }

    async fn execute_uncached(&self, cmd: &AdapterCommand, deadline: Instant) -> AdapterOutcome {
        let service = self.settings.service.as_str();
        let op_label = self.operation_label(cmd);
        let cache_key = self.handler.cache_key(cmd);
        if let Some(key) = &cache_key
            && let Some(hit) = self.cache.get(&key.key)
        {
            self.metrics
                .cache_hits_total
                .with_label_values(&[service, op_label])
                .inc();
            return hit;
        }
        let retry = &self.settings.retry;
        let builder = ExponentialBuilder::default()
            .with_min_delay(retry.initial_backoff)
            .with_max_delay(retry.max_backoff)
            .with_max_times(usize::try_from(retry.max_attempts.get() - 1).unwrap_or(usize::MAX));
        let builder = if retry.jitter {
            builder.with_jitter()
        } else {
            builder
        };
        let mut delays = builder.build();
        let mut attempt = 1;
        loop {
            let outcome = self.attempt(cmd, deadline, attempt, op_label).await;
            if outcome.kind != OutcomeKind::TransientFailure || !outcome.retryable {
                if outcome.kind == OutcomeKind::Success
                    && let Some(key) = cache_key
                {
                    let size = outcome_size(&key.key, &outcome);
                    self.cache.put(key.key, outcome.clone(), size, key.ttl);
                }
                return outcome;
            }
            let Some(mut delay) = delays.next() else {
                return outcome;
            };
            if let Some(after) = outcome.retry_after {
                delay = delay.max(after);
            }
            if Instant::now()
                .checked_add(delay)
                .is_none_or(|at| at >= deadline)
            {
                tracing::debug!(
                    service,
                    operation = op_label,
                    "no time left for another retry"
                );
                return outcome;
            }
            self.metrics
                .retries_total
                .with_label_values(&[service, op_label])
                .inc();
            tracing::debug!(
                service,
                operation = op_label,
                attempt,
                delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                error.code = outcome.error_code().unwrap_or(""),
                "retrying transient failure"
            );
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    fn set_circuit_gauge(&self) {
        self.metrics
            .circuit_state
            .with_label_values(&[self.settings.service.as_str()])
            .set(self.breaker.state().gauge_value());
    }

    async fn attempt(
        &self,
        cmd: &AdapterCommand,
        deadline: Instant,
        attempt: u32,
        op_label: &str,
    ) -> AdapterOutcome {
        let service = self.settings.service.as_str();
        let timeout = || {
            AdapterError::Timeout {
                operation: cmd.operation.clone(),
                elapsed_ms: 0,
            }
            .to_outcome()
        };
        let count = |outcome: &AdapterOutcome| {
            self.metrics
                .calls_total
                .with_label_values(&[service, op_label, status_class(outcome)])
                .inc();
        };
        let Some(permit) = self.breaker.try_acquire() else {
            let outcome = AdapterError::CircuitOpen {
                service: service.to_owned(),
            }
            .to_outcome();
            count(&outcome);
            return outcome;
        };
        self.set_circuit_gauge();
        let Ok(Ok(_slot)) = tokio::time::timeout_at(deadline, self.semaphore.acquire()).await
        else {
            return timeout();
        };
        if let Some(limiter) = &self.limiter
            && limiter.check().is_err()
        {
            self.metrics
                .rate_limit_waits_total
                .with_label_values(&[service])
                .inc();
            if tokio::time::timeout_at(deadline, limiter.until_ready())
                .await
                .is_err()
            {
                let outcome = AdapterError::RateLimited {
                    service: service.to_owned(),
                }
                .to_outcome();
                count(&outcome);
                return outcome;
            }
        }
        let ctx = CallContext { deadline, attempt };
        let started = Instant::now();
        let outcome = match tokio::time::timeout_at(deadline, self.handler.handle(cmd, &ctx)).await
        {
            Ok(o) => o,
            Err(_) => AdapterError::Timeout {
                operation: cmd.operation.clone(),
                elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            }
            .to_outcome(),
        };
        self.metrics
            .call_duration
            .with_label_values(&[service, op_label])
            .observe(started.elapsed().as_secs_f64());
        count(&outcome);
        permit.record(
            (outcome.kind == OutcomeKind::TransientFailure)
                .then(|| outcome.error_code().unwrap_or("transient")),
        );
        self.set_circuit_gauge();
        outcome
    }
}
