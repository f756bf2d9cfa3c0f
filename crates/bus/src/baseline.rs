//! The raw broker baseline that Sagaflow's benchmarks divide by: how fast
//! this broker, on this machine, moves plain messages with the same client
//! settings Sagaflow uses. Measured in the same run as the figure it
//! normalises, so a ratio means the same on a laptop and in production.

use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::Consumer;
use rdkafka::producer::{FutureRecord, Producer as _};

use crate::{Error, KafkaConfig, Producer, TopicSpec, ensure_topics};

/// What to measure.
#[derive(Clone, Debug)]
pub struct BaselineOptions {
    /// Messages for the throughput runs.
    pub messages: usize,
    pub payload_bytes: usize,
    /// Sequential produce→consume round trips for the latency run.
    pub round_trips: usize,
    /// Upper bound on each phase.
    pub timeout: Duration,
}

impl Default for BaselineOptions {
    fn default() -> Self {
        Self {
            messages: 20_000,
            payload_bytes: 256,
            round_trips: 300,
            timeout: Duration::from_secs(120),
        }
    }
}

/// Measured figures.
#[derive(Clone, Debug)]
pub struct Baseline {
    pub produce_per_sec: f64,
    pub consume_per_sec: f64,
    pub round_trip_p50: Duration,
    pub round_trip_p99: Duration,
    pub fetch_wait_max_ms: String,
}

impl std::fmt::Display for Baseline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "produce {:.0} msg/s, consume {:.0} msg/s, round trip p50 {:.2} ms p99 {:.2} ms (fetch.wait.max.ms={})",
            self.produce_per_sec,
            self.consume_per_sec,
            self.round_trip_p50.as_secs_f64() * 1e3,
            self.round_trip_p99.as_secs_f64() * 1e3,
            self.fetch_wait_max_ms,
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    #[error(transparent)]
    Bus(#[from] Error),
    #[error("baseline {phase}: {message}")]
    Phase {
        phase: &'static str,
        message: String,
    },
}

fn phase(phase: &'static str, e: impl std::fmt::Display) -> BaselineError {
    BaselineError::Phase {
        phase,
        message: e.to_string(),
    }
}

/// Measures produce and consume throughput on a fresh one-partition topic
/// `<topic_prefix>-throughput`, then sequential round trips on
/// `<topic_prefix>-rtt`.
pub async fn measure(
    kafka: &KafkaConfig,
    topic_prefix: &str,
    opts: &BaselineOptions,
) -> Result<Baseline, BaselineError> {
    let throughput_topic = format!("{topic_prefix}-throughput");
    let rtt_topic = format!("{topic_prefix}-rtt");
    ensure_topics(
        kafka,
        &[
            TopicSpec::new(&throughput_topic, 1),
            TopicSpec::new(&rtt_topic, 1),
        ],
    )
    .await?;
    let producer = kafka.producer()?;
    let payload = vec![b'x'; opts.payload_bytes];

    // Produce throughput: keep the client's queue full, await acks.
    let started = Instant::now();
    let mut in_flight = Vec::with_capacity(opts.messages);
    for i in 0..opts.messages {
        let key = i.to_be_bytes();
        let record = FutureRecord::<[u8], [u8]>::to(&throughput_topic)
            .payload(&payload[..])
            .key(&key[..]);
        match producer.send_result(record) {
            Ok(f) => in_flight.push(f),
            Err((e, _)) => return Err(phase("produce", e)),
        }
    }
    for f in in_flight {
        match f.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => return Err(phase("produce", e)),
            Err(e) => return Err(phase("produce", e)),
        }
    }
    let produce_per_sec = opts.messages as f64 / started.elapsed().as_secs_f64();

    // Consume throughput: read the partition from the start by direct
    // assignment, so no group join is timed, only fetching.
    let consumer = kafka.consumer(&format!("{topic_prefix}-reader"))?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(&throughput_topic, 0, rdkafka::Offset::Beginning)
        .map_err(|e| phase("assign", e))?;
    consumer.assign(&tpl).map_err(|e| phase("assign", e))?;
    let started = Instant::now();
    let deadline = started + opts.timeout;
    let mut count = 0usize;
    while count < opts.messages {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, consumer.recv()).await {
            Ok(Ok(_)) => count += 1,
            Ok(Err(e)) => return Err(phase("consume", e)),
            Err(_) => {
                return Err(phase(
                    "consume",
                    format!("{count} of {} messages", opts.messages),
                ));
            }
        }
    }
    let consume_per_sec = count as f64 / started.elapsed().as_secs_f64();
    drop(consumer);

    let round_trips = round_trips(kafka, &producer, &rtt_topic, &payload, opts).await?;
    producer
        .flush(Duration::from_secs(10))
        .map_err(|e| phase("flush", e))?;
    Ok(Baseline {
        produce_per_sec,
        consume_per_sec,
        round_trip_p50: percentile(&round_trips, 0.50),
        round_trip_p99: percentile(&round_trips, 0.99),
        fetch_wait_max_ms: kafka
            .client_config(crate::ClientRole::Consumer)
            .get("fetch.wait.max.ms")
            .unwrap_or("?")
            .to_owned(),
    })
}

async fn round_trips(
    kafka: &KafkaConfig,
    producer: &Producer,
    topic: &str,
    payload: &[u8],
    opts: &BaselineOptions,
) -> Result<Vec<Duration>, BaselineError> {
    let consumer = kafka.consumer(&format!("{topic}-reader"))?;
    consumer
        .subscribe(&[topic])
        .map_err(|e| phase("subscribe", e))?;
    // Warm up: the first message also waits for the group join.
    let mut samples = Vec::with_capacity(opts.round_trips);
    for i in 0..=opts.round_trips {
        let key = i.to_be_bytes();
        let sent = Instant::now();
        producer
            .send(
                FutureRecord::<[u8], [u8]>::to(topic)
                    .payload(payload)
                    .key(&key[..]),
                opts.timeout,
            )
            .await
            .map_err(|(e, _)| phase("round trip produce", e))?;
        loop {
            let m = tokio::time::timeout(opts.timeout, consumer.recv())
                .await
                .map_err(|_| phase("round trip", "no message within the timeout"))?
                .map_err(|e| phase("round trip consume", e))?;
            if m.key() == Some(&key[..]) {
                break;
            }
        }
        if i > 0 {
            samples.push(sent.elapsed());
        }
    }
    Ok(samples)
}

fn percentile(samples: &[Duration], q: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = samples.to_vec();
    sorted.sort();
    let idx = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let ms = |n| Duration::from_millis(n);
        let s: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(percentile(&s, 0.5), ms(51));
        assert_eq!(percentile(&s, 0.99), ms(99));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
        assert_eq!(percentile(&[ms(7)], 0.99), ms(7));
    }
}
