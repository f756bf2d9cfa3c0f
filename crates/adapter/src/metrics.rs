//! All adapter metric names, in one place. Labels are bounded: service,
//! operation (configured names only) and a status class; never ids.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::command::AdapterOutcome;
use crate::error::AdapterError;

pub const CALLS_TOTAL: &str = "sagaflow_adapter_calls_total";
pub const CALL_DURATION_SECONDS: &str = "sagaflow_adapter_call_duration_seconds";
pub const RETRIES_TOTAL: &str = "sagaflow_adapter_retries_total";
pub const CIRCUIT_STATE: &str = "sagaflow_adapter_circuit_state";
pub const RATE_LIMIT_WAITS_TOTAL: &str = "sagaflow_adapter_rate_limit_waits_total";
pub const IDEMPOTENT_HITS_TOTAL: &str = "sagaflow_adapter_idempotent_hits_total";
pub const CACHE_HITS_TOTAL: &str = "sagaflow_adapter_cache_hits_total";
pub const CACHE_ENTRIES: &str = "sagaflow_adapter_cache_entries";
pub const CACHE_BYTES: &str = "sagaflow_adapter_cache_bytes";
// The Kafka loop (`runtime`).
pub const COMMANDS_TOTAL: &str = "sagaflow_adapter_commands_total";
pub const DEAD_LETTERS_TOTAL: &str = "sagaflow_adapter_dead_letters_total";
pub const COMMANDS_IN_FLIGHT: &str = "sagaflow_adapter_commands_in_flight";
pub const COMMAND_DURATION_SECONDS: &str = "sagaflow_adapter_command_duration_seconds";
pub const PRODUCE_RETRIES_TOTAL: &str = "sagaflow_adapter_produce_retries_total";
pub const PRODUCE_FAILURES_TOTAL: &str = "sagaflow_adapter_produce_failures_total";
pub const HANDLER_PANICS_TOTAL: &str = "sagaflow_adapter_handler_panics_total";
pub const IDEMPOTENCY_RESTORED_TOTAL: &str = "sagaflow_adapter_idempotency_restored_total";
pub const IDEMPOTENCY_WRITES_TOTAL: &str = "sagaflow_adapter_idempotency_writes_total";
pub const SERVED_PARTITIONS: &str = "sagaflow_adapter_served_partitions";

/// Metric handles; cheap to clone, register once per registry.
#[derive(Clone, Debug)]
pub struct AdapterMetrics {
    pub(crate) calls_total: IntCounterVec,
    pub(crate) call_duration: HistogramVec,
    pub(crate) retries_total: IntCounterVec,
    pub(crate) circuit_state: IntGaugeVec,
    pub(crate) rate_limit_waits_total: IntCounterVec,
    pub(crate) idempotent_hits_total: IntCounterVec,
    pub(crate) cache_hits_total: IntCounterVec,
    /// Entries of the `cache` (`response`, `idempotency`).
    pub(crate) cache_entries: IntGaugeVec,
    /// Bytes the entries of the `cache` are counted for.
    pub(crate) cache_bytes: IntGaugeVec,
}

fn reg_err(e: prometheus::Error) -> AdapterError {
    AdapterError::Metrics {
        message: e.to_string(),
    }
}

impl AdapterMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, AdapterError> {
        let calls_total = IntCounterVec::new(
            Opts::new(CALLS_TOTAL, "Backend call attempts by outcome status class"),
            &["service", "operation", "status_class"],
        )
        .map_err(reg_err)?;
        let call_duration = HistogramVec::new(
            HistogramOpts::new(CALL_DURATION_SECONDS, "Duration of backend call attempts"),
            &["service", "operation"],
        )
        .map_err(reg_err)?;
        let retries_total = IntCounterVec::new(
            Opts::new(
                RETRIES_TOTAL,
                "Retries of transient failures inside the adapter",
            ),
            &["service", "operation"],
        )
        .map_err(reg_err)?;
        let circuit_state = IntGaugeVec::new(
            Opts::new(
                CIRCUIT_STATE,
                "Circuit breaker state: 0 closed, 1 half-open, 2 open",
            ),
            &["service"],
        )
        .map_err(reg_err)?;
        let rate_limit_waits_total = IntCounterVec::new(
            Opts::new(
                RATE_LIMIT_WAITS_TOTAL,
                "Calls that had to wait for the rate limiter",
            ),
            &["service"],
        )
        .map_err(reg_err)?;
        let idempotent_hits_total = IntCounterVec::new(
            Opts::new(
                IDEMPOTENT_HITS_TOTAL,
                "Commands answered from the idempotency store or a concurrent duplicate",
            ),
            &["service"],
        )
        .map_err(reg_err)?;
        let cache_hits_total = IntCounterVec::new(
            Opts::new(
                CACHE_HITS_TOTAL,
                "Commands answered from the response cache",
            ),
            &["service", "operation"],
        )
        .map_err(reg_err)?;
        registry
            .register(Box::new(calls_total.clone()))
            .map_err(reg_err)?;
        registry
            .register(Box::new(call_duration.clone()))
            .map_err(reg_err)?;
        registry
            .register(Box::new(retries_total.clone()))
            .map_err(reg_err)?;
        registry
            .register(Box::new(circuit_state.clone()))
            .map_err(reg_err)?;
        registry
            .register(Box::new(rate_limit_waits_total.clone()))
            .map_err(reg_err)?;
        registry
            .register(Box::new(idempotent_hits_total.clone()))
            .map_err(reg_err)?;
        registry
            .register(Box::new(cache_hits_total.clone()))
            .map_err(reg_err)?;
        let cache_entries = IntGaugeVec::new(
            Opts::new(
                CACHE_ENTRIES,
                "Entries held by the adapter's in-memory caches",
            ),
            &["service", "cache"],
        )
        .map_err(reg_err)?;
        let cache_bytes = IntGaugeVec::new(
            Opts::new(
                CACHE_BYTES,
                "Bytes held by the adapter's in-memory caches (keys and serialized outcomes)",
            ),
            &["service", "cache"],
        )
        .map_err(reg_err)?;
        registry
            .register(Box::new(cache_entries.clone()))
            .map_err(reg_err)?;
        registry
            .register(Box::new(cache_bytes.clone()))
            .map_err(reg_err)?;
        Ok(Self {
            calls_total,
            call_duration,
            retries_total,
            circuit_state,
            rate_limit_waits_total,
            idempotent_hits_total,
            cache_hits_total,
            cache_entries,
            cache_bytes,
        })
    }
}

/// Metrics of the Kafka loop. Labels: `service`, the reply `outcome`
/// (`success`, `business_failure`, `transient_failure`) and the dead-letter
/// `reason` (`undecodable`, `wrong_service`, `unencodable_reply`,
/// `handler_panic`, `unproducible_reply`).
#[derive(Clone, Debug)]
pub struct RuntimeMetrics {
    pub(crate) commands_total: IntCounterVec,
    pub(crate) dead_letters_total: IntCounterVec,
    pub(crate) in_flight: IntGaugeVec,
    pub(crate) duration: HistogramVec,
    pub(crate) produce_retries_total: IntCounterVec,
    /// Permanent produce failures by `destination` and `reason`.
    pub(crate) produce_failures_total: IntCounterVec,
    pub(crate) handler_panics_total: IntCounterVec,
    pub(crate) idempotency_restored_total: IntCounterVec,
    pub(crate) idempotency_writes_total: IntCounterVec,
    /// Partitions of the commands topic held and restored: served.
    pub(crate) served_partitions: IntGaugeVec,
    /// `sagaflow_consumer_lag_messages` of the commands consumer.
    pub(crate) consumer_lag: prometheus::IntGaugeVec,
}

impl RuntimeMetrics {
    /// Creates the loop's metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, AdapterError> {
        let commands_total = IntCounterVec::new(
            Opts::new(COMMANDS_TOTAL, "Commands answered with a reply, by outcome"),
            &["service", "outcome"],
        )
        .map_err(reg_err)?;
        let dead_letters_total = IntCounterVec::new(
            Opts::new(
                DEAD_LETTERS_TOTAL,
                "Command records sent to the dead-letter topic, by reason",
            ),
            &["service", "reason"],
        )
        .map_err(reg_err)?;
        let in_flight = IntGaugeVec::new(
            Opts::new(
                COMMANDS_IN_FLIGHT,
                "Command records received and not yet answered",
            ),
            &["service"],
        )
        .map_err(reg_err)?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                COMMAND_DURATION_SECONDS,
                "From receiving a command to the broker acknowledging its reply",
            ),
            &["service"],
        )
        .map_err(reg_err)?;
        let produce_retries_total = IntCounterVec::new(
            Opts::new(
                PRODUCE_RETRIES_TOTAL,
                "Failed attempts to produce a reply or dead letter (retried)",
            ),
            &["service"],
        )
        .map_err(reg_err)?;
        let produce_failures_total = IntCounterVec::new(
            Opts::new(
                PRODUCE_FAILURES_TOTAL,
                "Records that can never be produced (permanent error, not retried), by destination and reason",
            ),
            &["service", "destination", "reason"],
        )
        .map_err(reg_err)?;
        let handler_panics_total = IntCounterVec::new(
            Opts::new(
                HANDLER_PANICS_TOTAL,
                "Commands whose handling panicked (answered with a failure reply and dead-lettered)",
            ),
            &["service"],
        )
        .map_err(reg_err)?;
        let idempotency_restored_total = IntCounterVec::new(
            Opts::new(
                IDEMPOTENCY_RESTORED_TOTAL,
                "Completed outcomes restored from the idempotency topic on partition assignment",
            ),
            &["service"],
        )
        .map_err(reg_err)?;
        let idempotency_writes_total = IntCounterVec::new(
            Opts::new(
                IDEMPOTENCY_WRITES_TOTAL,
                "Completed outcomes written to the idempotency topic",
            ),
            &["service"],
        )
        .map_err(reg_err)?;
        let served_partitions = IntGaugeVec::new(
            Opts::new(
                SERVED_PARTITIONS,
                "Partitions of the commands topic this adapter holds and has restored the idempotency log of",
            ),
            &["service"],
        )
        .map_err(reg_err)?;
        let consumer_lag = sagaflow_bus::lag::consumer_lag_gauge();
        for c in [
            Box::new(commands_total.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(dead_letters_total.clone()),
            Box::new(in_flight.clone()),
            Box::new(duration.clone()),
            Box::new(produce_retries_total.clone()),
            Box::new(produce_failures_total.clone()),
            Box::new(handler_panics_total.clone()),
            Box::new(idempotency_restored_total.clone()),
            Box::new(idempotency_writes_total.clone()),
            Box::new(served_partitions.clone()),
            Box::new(consumer_lag.clone()),
        ] {
            registry.register(c).map_err(reg_err)?;
        }
        Ok(Self {
            commands_total,
            dead_letters_total,
            in_flight,
            duration,
            produce_retries_total,
            produce_failures_total,
            handler_panics_total,
            idempotency_restored_total,
            idempotency_writes_total,
            served_partitions,
            consumer_lag,
        })
    }
}

/// Bounded status class of one attempt: the HTTP class (`2xx`…`5xx`) when
/// the backend answered, else the adapter's error code, else the outcome.
pub(crate) fn status_class(outcome: &AdapterOutcome) -> &'static str {
    if let Some(s) = outcome.http_status {
        return match s / 100 {
            1 => "1xx",
            2 => "2xx",
            3 => "3xx",
            4 => "4xx",
            _ => "5xx",
        };
    }
    match outcome.error_code() {
        Some("timeout") => "timeout",
        Some("connect_error") => "connect_error",
        Some("circuit_open") => "circuit_open",
        Some("invalid_response") => "invalid_response",
        Some("response_too_large") => "response_too_large",
        Some("unsafe_xml") => "unsafe_xml",
        Some("rate_limited") => "rate_limited",
        Some("auth_failed") => "auth_failed",
        Some("invalid_command") => "invalid_command",
        Some("base_url_escape") => "base_url_escape",
        Some("unknown_operation") => "unknown_operation",
        _ => outcome.kind.as_str(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_all_names_once() {
        let r = Registry::new();
        let m = AdapterMetrics::register(&r).unwrap();
        m.calls_total.with_label_values(&["s", "op", "2xx"]).inc();
        m.call_duration.with_label_values(&["s", "op"]).observe(0.1);
        m.retries_total.with_label_values(&["s", "op"]).inc();
        m.circuit_state.with_label_values(&["s"]).set(2);
        m.rate_limit_waits_total.with_label_values(&["s"]).inc();
        m.idempotent_hits_total.with_label_values(&["s"]).inc();
        m.cache_hits_total.with_label_values(&["s", "op"]).inc();
        m.cache_entries.with_label_values(&["s", "response"]).set(1);
        m.cache_bytes.with_label_values(&["s", "response"]).set(1);
        let names: Vec<String> = r.gather().iter().map(|f| f.name().to_owned()).collect();
        for n in [
            CALLS_TOTAL,
            CALL_DURATION_SECONDS,
            RETRIES_TOTAL,
            CIRCUIT_STATE,
            RATE_LIMIT_WAITS_TOTAL,
            IDEMPOTENT_HITS_TOTAL,
            CACHE_HITS_TOTAL,
            CACHE_ENTRIES,
            CACHE_BYTES,
        ] {
            assert!(names.iter().any(|x| x == n), "{n} missing in {names:?}");
        }
        assert!(
            AdapterMetrics::register(&r).is_err(),
            "double registration is refused"
        );
    }

    #[test]
    fn status_class_is_bounded() {
        let o = AdapterOutcome::transient("http_503", "x").with_status(503);
        assert_eq!(status_class(&o), "5xx");
        let o = AdapterOutcome::transient("circuit_open", "x");
        assert_eq!(status_class(&o), "circuit_open");
        let o = AdapterOutcome::business_failure("some-custom-code-123", "x");
        assert_eq!(status_class(&o), "business_failure");
    }
}
