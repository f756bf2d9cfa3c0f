//! Every metric the orchestrator exports, in one place. Labels are bounded:
//! saga type, step, service, outcome, reason — never a saga id.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Sagas started, by saga type.
    pub sagas_started: IntCounterVec,
    /// Sagas ended, by saga type and outcome (completed, compensated, failed).
    pub sagas_ended: IntCounterVec,
    /// Saga duration from start to end, by type and outcome.
    pub saga_duration: HistogramVec,
    /// Sagas held in memory and not ended, per saga type.
    pub sagas_in_flight: IntGaugeVec,
    /// Commands sent, by service and kind (action, compensation).
    pub commands_sent: IntCounterVec,
    /// Replies received, by service and outcome.
    pub replies_received: IntCounterVec,
    /// Inputs applied, by input kind and engine outcome (applied,
    /// duplicate, stale, rejected, unmatched).
    pub inputs: IntCounterVec,
    /// Step latency from command to reply, by saga type, step, outcome.
    pub step_latency: HistogramVec,
    /// Timers fired, by purpose.
    pub timers_fired: IntCounterVec,
    /// Tick records sent to learn how far a partition's inputs and replies
    /// are read before a timer awaiting them fires (`tick`).
    pub timer_ticks: IntCounter,
    /// Records sent to the dead-letter topic, by reason code.
    pub dead_letters: IntCounterVec,
    /// Outbox effects re-sent after a restore.
    pub outbox_resent: IntCounterVec,
    /// Time to restore a partition's sagas from the changelog.
    pub restore_seconds: HistogramVec,
    /// Sagas restored, total.
    pub restored_sagas: IntCounterVec,
    /// Partitions of the inputs topic this instance owns.
    pub owned_partitions: IntGauge,
    /// Consumer lag (high watermark − committed offset) per consumer group,
    /// topic and partition, from librdkafka's statistics.
    pub consumer_lag: IntGaugeVec,
    /// Input batches persisted, and their size.
    pub batch_size: HistogramVec,
    /// How long a record waited between its producer's timestamp and the
    /// driver reading it, by source (`inputs`, `replies`, `events`): the
    /// broker hop and the consumer, before any work of the orchestrator.
    pub input_delay: HistogramVec,
    /// Events posted to `POST /v1/events/{topic}`, by topic (only topics of
    /// the loaded sagas; `other` for the rest) and outcome (accepted,
    /// invalid, unknown_type, unknown_topic, unavailable).
    pub ingest_events: IntCounterVec,
    /// Ownership fencing: changelog records of replaced owners ignored on
    /// restore (`stale-record`), partitions this instance found taken over
    /// (`partition-lost`), foreign writes seen between its own
    /// (`foreign-write`).
    pub fencing: IntCounterVec,
    /// Work retried because a dependency failed transiently, by cause
    /// (`registry`: the schema registry could not be reached).
    pub retries: IntCounterVec,
    /// Awaited events parked for sagas that have not started, on this
    /// instance.
    pub parked_events: IntGauge,
    /// Ended saga ids remembered to refuse replayed triggers, on this
    /// instance.
    pub ended_markers: IntGauge,
    /// Saga starts of `POST /v1/sagas/{type}`, by path: `direct` (applied
    /// by this instance, which owns the saga's partition) or `inputs`
    /// (through `sagaflow.inputs`).
    pub facade_starts: IntCounterVec,
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn registered<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    registered(r, IntGauge::new(name, help).expect("valid metric"))
}

fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("valid metric");
    r.register(Box::new(h.clone()))
        .expect("metric registered once");
    h
}

impl Metrics {
    pub fn new(registry: Registry) -> Self {
        let r = &registry;
        let secs = vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
        ];
        let in_flight = IntGaugeVec::new(
            Opts::new(
                "sagaflow_sagas_in_flight",
                "Sagas running or compensating, by saga type",
            ),
            &["saga_type"],
        )
        .expect("valid metric");
        r.register(Box::new(in_flight.clone()))
            .expect("metric registered once");
        let owned = gauge(
            r,
            "sagaflow_owned_partitions",
            "Partitions of the inputs topic this instance owns",
        );
        let lag = sagaflow_bus::lag::consumer_lag_gauge();
        r.register(Box::new(lag.clone()))
            .expect("metric registered once");
        Self {
            sagas_started: counter(
                r,
                "sagaflow_sagas_started_total",
                "Sagas started",
                &["saga_type"],
            ),
            sagas_ended: counter(
                r,
                "sagaflow_sagas_ended_total",
                "Sagas ended, by outcome",
                &["saga_type", "outcome"],
            ),
            saga_duration: histogram(
                r,
                "sagaflow_saga_duration_seconds",
                "Saga duration from start to end",
                &["saga_type", "outcome"],
                secs.clone(),
            ),
            sagas_in_flight: in_flight,
            commands_sent: counter(
                r,
                "sagaflow_commands_sent_total",
                "Commands sent to adapters",
                &["service", "kind"],
            ),
            replies_received: counter(
                r,
                "sagaflow_replies_received_total",
                "Replies received from adapters",
                &["service", "outcome"],
            ),
            inputs: counter(
                r,
                "sagaflow_inputs_total",
                "Inputs handled, by kind and engine outcome",
                &["input", "outcome"],
            ),
            step_latency: histogram(
                r,
                "sagaflow_step_latency_seconds",
                "Step latency from command to reply",
                &["saga_type", "step", "outcome"],
                secs.clone(),
            ),
            timers_fired: counter(
                r,
                "sagaflow_timers_fired_total",
                "Durable timers fired",
                &["purpose"],
            ),
            timer_ticks: registered(
                r,
                IntCounter::new(
                    "sagaflow_timer_ticks_total",
                    "Tick records sent so that timers awaiting a reply or event fire only after what arrived before them is read",
                )
                .expect("valid metric"),
            ),
            dead_letters: counter(
                r,
                "sagaflow_dead_letters_total",
                "Records sent to the dead-letter topic, by reason code",
                &["reason"],
            ),
            outbox_resent: counter(
                r,
                "sagaflow_outbox_resent_total",
                "Effects re-sent from the outbox after a restore",
                &["effect"],
            ),
            restore_seconds: histogram(
                r,
                "sagaflow_state_restore_seconds",
                "Time to restore one partition's sagas from the changelog",
                &["partition"],
                secs,
            ),
            restored_sagas: counter(
                r,
                "sagaflow_state_restored_sagas_total",
                "Saga states restored from the changelog",
                &["partition"],
            ),
            owned_partitions: owned,
            consumer_lag: lag,
            batch_size: histogram(
                r,
                "sagaflow_batch_inputs",
                "Inputs persisted per batch",
                &["consumer"],
                vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0],
            ),
            input_delay: histogram(
                r,
                "sagaflow_input_delay_seconds",
                "Time from a record's producer timestamp to the orchestrator reading it, by source",
                &["source"],
                vec![
                    0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
                    30.0,
                ],
            ),
            ingest_events: counter(
                r,
                "sagaflow_ingest_events_total",
                "Events posted to the HTTP ingest, by topic and outcome",
                &["topic", "outcome"],
            ),
            facade_starts: {
                let c = counter(
                    r,
                    "sagaflow_facade_starts_total",
                    "Saga starts of the HTTP facade, by path (direct to this instance's driver, or through the inputs topic)",
                    &["path"],
                );
                // Both series exist from the start, so a dashboard's ratio
                // of the two has data before the first start.
                for path in ["direct", "inputs"] {
                    c.with_label_values(&[path]);
                }
                c
            },
            fencing: counter(
                r,
                "sagaflow_fencing_total",
                "Ownership fencing events, by kind",
                &["event"],
            ),
            retries: counter(
                r,
                "sagaflow_orchestrator_retries_total",
                "Work retried after a transient failure, by cause",
                &["cause"],
            ),
            parked_events: gauge(
                r,
                "sagaflow_parked_events",
                "Awaited events parked for sagas that have not started",
            ),
            ended_markers: gauge(
                r,
                "sagaflow_ended_markers",
                "Ended saga ids remembered to refuse replayed triggers",
            ),
            registry,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut out = Vec::new();
        let encoder = prometheus::TextEncoder::new();
        // Encoding our own registered families cannot fail.
        let _ = encoder.encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(Registry::new())
    }
}
