//! Consumer lag per partition, from librdkafka's statistics (emitted every
//! `statistics.interval.ms`, 5 s by default for Sagaflow's consumers): a
//! consumer context hands each report to [`LagGauge::record`], which sets
//! `sagaflow_consumer_lag_messages{consumer, topic, partition}` for the
//! partitions the consumer is fetching and removes the series of partitions
//! it no longer owns.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus::IntGaugeVec;
use rdkafka::ClientContext;
use rdkafka::consumer::ConsumerContext;
use rdkafka::statistics::Statistics;

/// The metric name every Sagaflow process uses for consumer lag.
pub const CONSUMER_LAG: &str = "sagaflow_consumer_lag_messages";

/// How often librdkafka reports statistics to Sagaflow's consumers unless
/// `statistics.interval.ms` is set.
pub const DEFAULT_STATISTICS_INTERVAL_MS: &str = "5000";

/// A new, unregistered `sagaflow_consumer_lag_messages` gauge.
pub fn consumer_lag_gauge() -> IntGaugeVec {
    IntGaugeVec::new(
        prometheus::Opts::new(
            CONSUMER_LAG,
            "Messages between a partition's high watermark and the consumer group's committed offset, per consumer group, topic and partition",
        ),
        &["consumer", "topic", "partition"],
    )
    .expect("valid metric")
}

/// Feeds one consumer's statistics into the lag gauge.
#[derive(Clone)]
pub struct LagGauge {
    gauge: IntGaugeVec,
    consumer: String,
    shown: Arc<Mutex<BTreeSet<(String, i32)>>>,
}

impl LagGauge {
    /// `consumer` is the label value: the consumer group id.
    pub fn new(gauge: IntGaugeVec, consumer: impl Into<String>) -> Self {
        Self {
            gauge,
            consumer: consumer.into(),
            shown: Arc::default(),
        }
    }

    /// Sets the lag of every partition being fetched (librdkafka reports
    /// −1 until it knows both ends; those are left out) and drops the
    /// series of partitions no longer fetched.
    pub fn record(&self, stats: &Statistics) {
        let mut now = BTreeSet::new();
        for (topic, t) in &stats.topics {
            for p in t.partitions.values() {
                // Committed-offset lag; for consumers that commit nothing
                // (the saga view reads by assignment), position lag.
                let lag = if p.consumer_lag >= 0 {
                    p.consumer_lag
                } else if p.hi_offset >= 0 && p.app_offset >= 0 {
                    (p.hi_offset - p.app_offset).max(0)
                } else {
                    -1
                };
                if p.partition < 0 || p.fetch_state != "active" || lag < 0 {
                    continue;
                }
                let partition = p.partition.to_string();
                self.gauge
                    .with_label_values(&[&self.consumer, topic, &partition])
                    .set(lag);
                now.insert((topic.clone(), p.partition));
            }
        }
        let mut shown = self.shown.lock().unwrap_or_else(PoisonError::into_inner);
        for (topic, partition) in shown.difference(&now) {
            let _ =
                self.gauge
                    .remove_label_values(&[&self.consumer, topic, &partition.to_string()]);
        }
        *shown = now;
    }
}

/// A consumer context that only reports lag (for consumers without
/// rebalance hooks of their own).
pub struct LagContext(pub LagGauge);

impl ClientContext for LagContext {
    fn stats(&self, statistics: Statistics) {
        self.0.record(&statistics);
    }
}

impl ConsumerContext for LagContext {}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(partitions: &[(i32, &str, i64)]) -> Statistics {
        let parts: serde_json::Map<String, serde_json::Value> = partitions
            .iter()
            .map(|(p, state, lag)| {
                (
                    p.to_string(),
                    serde_json::json!({
                        "partition": p, "broker": 1, "leader": 1, "desired": true, "unknown": false,
                        "msgq_cnt": 0, "msgq_bytes": 0, "xmit_msgq_cnt": 0, "xmit_msgq_bytes": 0,
                        "fetchq_cnt": 0, "fetchq_size": 0, "fetch_state": state, "query_offset": 0,
                        "next_offset": 0, "app_offset": 4, "stored_offset": 0, "committed_offset": 0,
                        "committed_leader_epoch": -1, "eof_offset": 0, "lo_offset": 0, "hi_offset": 10,
                        "ls_offset": 0, "consumer_lag": lag, "consumer_lag_stored": lag,
                        "txmsgs": 0, "txbytes": 0, "rxmsgs": 0, "rxbytes": 0, "msgs": 0,
                        "rx_ver_drops": 0, "msgs_inflight": 0, "next_ack_seq": 0, "next_err_seq": 0,
                        "acked_msgid": 0
                    }),
                )
            })
            .collect();
        serde_json::from_value(serde_json::json!({
            "name": "c", "client_id": "c", "type": "consumer", "ts": 0, "time": 0, "age": 0,
            "replyq": 0, "msg_cnt": 0, "msg_size": 0, "msg_max": 0, "msg_size_max": 0,
            "simple_cnt": 0, "metadata_cache_cnt": 0, "brokers": {},
            "topics": {"t": {"topic": "t", "age": 0, "metadata_age": 0, "batchsize": {
                "min": 0, "max": 0, "avg": 0, "sum": 0, "stddev": 0, "p50": 0, "p75": 0, "p90": 0,
                "p95": 0, "p99": 0, "p99_99": 0, "outofrange": 0, "hdrsize": 0, "cnt": 0},
                "batchcnt": {"min": 0, "max": 0, "avg": 0, "sum": 0, "stddev": 0, "p50": 0, "p75": 0,
                "p90": 0, "p95": 0, "p99": 0, "p99_99": 0, "outofrange": 0, "hdrsize": 0, "cnt": 0},
                "partitions": parts}},
            "tx": 0, "tx_bytes": 0, "rx": 0, "rx_bytes": 0, "txmsgs": 0, "txmsg_bytes": 0,
            "rxmsgs": 0, "rxmsg_bytes": 0
        }))
        .expect("statistics JSON")
    }

    #[test]
    fn sets_active_partitions_and_drops_revoked_ones() {
        let gauge = consumer_lag_gauge();
        let lag = LagGauge::new(gauge.clone(), "g");
        lag.record(&stats(&[
            (0, "active", 7),
            (1, "active", 0),
            (2, "none", 5),
            (-1, "none", 3),
        ]));
        assert_eq!(gauge.with_label_values(&["g", "t", "0"]).get(), 7);
        let families = || {
            let r = prometheus::Registry::new();
            r.register(Box::new(gauge.clone())).unwrap();
            r.gather()[0].get_metric().len()
        };
        assert_eq!(families(), 2, "partition 2 is not fetched, -1 is internal");
        // Partition 0 was revoked; partition 3 commits nothing, so its lag
        // is the position's (high watermark 10 − position 4).
        lag.record(&stats(&[(1, "active", 4), (3, "active", -1)]));
        assert_eq!(families(), 2, "partition 0 is no longer fetched: dropped");
        assert_eq!(gauge.with_label_values(&["g", "t", "3"]).get(), 6);
        assert_eq!(gauge.with_label_values(&["g", "t", "1"]).get(), 4);
    }
}
