//! The closed loop: N clients, each starting an order-checkout saga through
//! the synchronous facade (`POST /v1/sagas/order-checkout?wait=…`) and
//! starting the next as soon as the answer comes, for a fixed time. Its
//! throughput is N ÷ latency, so it shows what latency costs; and the
//! per-hop breakdown says where each millisecond of a saga went, read back
//! from the timestamps of the records the saga left on every topic.

use sagaflow_bus::now_ms;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{Message, Timestamp};
use sagaflow_bus::{KafkaConfig, SagaHeaders, TopicNames};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One closed-loop run's figures.
#[derive(Clone, Debug)]
pub struct ClosedLoop {
    pub in_flight: usize,
    pub sagas: usize,
    pub seconds: f64,
    pub p50: Duration,
    pub p95: Duration,
    pub p99: Duration,
    /// CPU seconds of the bench process (broker, registry, orchestrator,
    /// adapters, backend and clients all run in it) over the run.
    pub cpu_seconds: f64,
    pub breakdown: Breakdown,
    /// The requests the embedded broker served during the run, per API
    /// (`None` against an external broker).
    pub requests: Option<sagaflow_broker::RequestCounts>,
}

impl ClosedLoop {
    pub fn per_sec(&self) -> f64 {
        self.sagas as f64 / self.seconds
    }
}

/// Mean milliseconds per hop of a saga, from the record timestamps.
#[derive(Clone, Debug, Default)]
pub struct Breakdown {
    /// Sagas whose every record was found.
    pub sagas: usize,
    /// Per hop: name, mean ms, how many times it happened per saga.
    pub hops: Vec<(&'static str, f64, f64)>,
    /// Mean end-to-end latency of those sagas (request to answer), ms.
    pub total_ms: f64,
    /// Per source the orchestrator reads (`inputs`, `replies`): the mean
    /// ms from a record's timestamp to the driver reading it, over the
    /// loop (its `sagaflow_input_delay_seconds`).
    pub reads: Vec<(String, f64)>,
}

/// `sagaflow_input_delay_seconds`' sum and count per source, from a
/// `/metrics` page.
fn input_delays(page: &str) -> HashMap<String, (f64, f64)> {
    let mut out: HashMap<String, (f64, f64)> = HashMap::new();
    for line in page.lines() {
        let (is_sum, rest) = if let Some(r) = line.strip_prefix("sagaflow_input_delay_seconds_sum{")
        {
            (true, r)
        } else if let Some(r) = line.strip_prefix("sagaflow_input_delay_seconds_count{") {
            (false, r)
        } else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let Some(source) = labels
            .split(',')
            .find_map(|l| l.strip_prefix("source=\"")?.strip_suffix('"'))
        else {
            continue;
        };
        let Ok(v) = value.trim().parse::<f64>() else {
            continue;
        };
        let e = out.entry(source.to_owned()).or_default();
        if is_sum {
            e.0 = v;
        } else {
            e.1 = v;
        }
    }
    out
}

/// The mean read delay per source between two `/metrics` pages, in ms.
fn reads_between(before: &str, after: &str) -> Vec<(String, f64)> {
    let before = input_delays(before);
    let mut reads: Vec<(String, f64)> = input_delays(after)
        .into_iter()
        .filter_map(|(source, (sum, count))| {
            let (s0, c0) = before.get(&source).copied().unwrap_or_default();
            let n = count - c0;
            (n > 0.0).then(|| (source, (sum - s0) / n * 1000.0))
        })
        .collect();
    reads.sort_by(|a, b| a.0.cmp(&b.0));
    reads
}

/// The hops of a saga, in the order they happen.
const FACADE_IN: &str = "facade: request → trigger produced";
const FACADE_DIRECT: &str = "facade: request → first state write (start handed to the owner)";
const TO_ORCHESTRATOR: &str = "trigger/reply produced → orchestrator batch writes state";
const STATE_ACK: &str = "state write → effects produced (changelog ack)";
const TO_ADAPTER: &str = "command produced → reply produced (adapter fetch, HTTP, reply)";
const FACADE_OUT: &str = "result produced → answer received (view, HTTP)";

pub(crate) fn cpu_seconds() -> f64 {
    // utime and stime, fields 14 and 15 of /proc/self/stat, in clock ticks
    // (100 per second on Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (tick(11) + tick(12)) / 100.0
}

/// A keep-alive HTTP/1.1 client for one connection: enough for the facade.
struct Client {
    stream: BufReader<TcpStream>,
    host: String,
}

impl Client {
    async fn connect(addr: &str) -> Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream: BufReader::new(stream),
            host: addr.to_owned(),
        })
    }

    async fn post(&mut self, path: &str, body: &[u8]) -> Result<(u16, Vec<u8>)> {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.host,
            body.len()
        );
        let s = self.stream.get_mut();
        s.write_all(head.as_bytes()).await?;
        s.write_all(body).await?;
        let mut line = String::new();
        self.stream.read_line(&mut line).await?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| anyhow!("not an HTTP status line: {line:?}"))?;
        let mut length = 0usize;
        loop {
            line.clear();
            if self.stream.read_line(&mut line).await? == 0 {
                bail!("connection closed in the headers");
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse()?;
            }
        }
        let mut out = vec![0; length];
        self.stream.read_exact(&mut out).await?;
        Ok((status, out))
    }
}

fn order(id: &str) -> Value {
    json!({
        "order_id": id, "customer_id": "c-1",
        "items": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": 4_990}],
        "total_cents": 4_990, "currency": "EUR",
        "shipping_address": {"line1": "1 Main St", "line2": null, "postal_code": "10115", "city": "Berlin", "country": "DE"},
        "placed_at": 1_700_000_000_000i64,
    })
}

/// One saga as the client saw it: sent and answered (ms since the epoch).
struct Seen {
    saga_id: String,
    sent: i64,
    answered: i64,
}

/// The stack a closed loop runs against: where its records are read back
/// from, and the embedded broker whose requests are counted (if any).
pub struct Stack<'a> {
    pub kafka: &'a KafkaConfig,
    pub names: &'a TopicNames,
    pub services: &'a [&'a str],
    pub broker: Option<&'a sagaflow_broker::EmbeddedBroker>,
}

/// Runs `in_flight` clients against the facade at `api` for `seconds`.
pub async fn run(
    api: std::net::SocketAddr,
    in_flight: usize,
    seconds: u32,
    tag: &str,
    stack: &Stack<'_>,
) -> Result<ClosedLoop> {
    let Stack {
        kafka,
        names,
        services,
        broker,
    } = *stack;
    let addr = api.to_string();
    let served_before = broker.map(|b| b.requests());
    let metrics_url = format!("http://{addr}/metrics");
    let page_before = crate::reqwest_get(&metrics_url).await.unwrap_or_default();
    let until = Instant::now() + Duration::from_secs(u64::from(seconds));
    let cpu = cpu_seconds();
    let started = Instant::now();
    let mut clients = Vec::with_capacity(in_flight);
    for c in 0..in_flight {
        let addr = addr.clone();
        let tag = tag.to_owned();
        clients.push(tokio::spawn(async move {
            let mut client = Client::connect(&addr).await?;
            let mut seen = Vec::new();
            let mut latencies = Vec::new();
            let mut n = 0usize;
            while Instant::now() < until {
                n += 1;
                let body = serde_json::to_vec(&order(&format!("{tag}-{c}-{n}")))?;
                let (t0, sent) = (Instant::now(), now_ms() as i64);
                let (status, out) = client
                    .post("/v1/sagas/order-checkout?wait=30s", &body)
                    .await?;
                latencies.push(t0.elapsed());
                if status != 200 {
                    bail!(
                        "the facade answered {status}: {}",
                        String::from_utf8_lossy(&out)
                    );
                }
                let v: Value = serde_json::from_slice(&out)?;
                seen.push(Seen {
                    saga_id: v["saga_id"].as_str().unwrap_or_default().to_owned(),
                    sent,
                    answered: now_ms() as i64,
                });
            }
            Ok::<_, anyhow::Error>((latencies, seen))
        }));
    }
    let mut latencies = Vec::new();
    let mut seen = Vec::new();
    for c in clients {
        let (l, s) = c.await??;
        latencies.extend(l);
        seen.extend(s);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_seconds = cpu_seconds() - cpu;
    if latencies.is_empty() {
        bail!("no saga completed in {seconds} s");
    }
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    // Counted before the breakdown reads the topics back.
    let requests = broker
        .zip(served_before)
        .map(|(b, before)| b.requests().since(&before));
    let page_after = crate::reqwest_get(&metrics_url).await.unwrap_or_default();
    let mut breakdown = breakdown(kafka, names, services, &seen).await?;
    breakdown.reads = reads_between(&page_before, &page_after);
    Ok(ClosedLoop {
        in_flight,
        sagas: latencies.len(),
        seconds: elapsed,
        p50: pct(0.50),
        p95: pct(0.95),
        p99: pct(0.99),
        cpu_seconds,
        breakdown,
        requests,
    })
}

/// What a record says about a saga: where it was, and when it was made.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Kind {
    // Declared in causal order: records of one saga stamped in the same
    // millisecond sort as they must have happened.
    Trigger,
    Reply,
    State,
    Command,
    Result,
}

/// Reads back every record of the run's sagas from the topics they
/// crossed, and averages the time between consecutive records of each
/// saga by the kind of hop. Reads until the topics have been quiet for
/// two seconds (not up to a high watermark, which the embedded broker may
/// report below acknowledged records).
async fn breakdown(
    kafka: &KafkaConfig,
    names: &TopicNames,
    services: &[&str],
    seen: &[Seen],
) -> Result<Breakdown> {
    let wanted: HashMap<&str, &Seen> = seen.iter().map(|s| (s.saga_id.as_str(), s)).collect();
    let mut topics: Vec<(String, Kind)> = vec![
        (names.inputs(), Kind::Trigger),
        (names.saga_state(), Kind::State),
        (names.replies(), Kind::Reply),
        (names.saga_events(), Kind::Result),
    ];
    topics.extend(services.iter().map(|s| (names.commands(s), Kind::Command)));
    let reader: StreamConsumer = kafka.consumer(&format!("bench-breakdown-{}", now_ms() as i64))?;
    let mut tpl = TopicPartitionList::new();
    for (topic, _) in &topics {
        let meta = reader.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        for t in meta.topics() {
            for p in t.partitions() {
                tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
            }
        }
    }
    reader.assign(&tpl)?;
    let kinds: HashMap<&str, Kind> = topics.iter().map(|(t, k)| (t.as_str(), *k)).collect();
    let mut events: HashMap<&str, Vec<(i64, Kind)>> = HashMap::new();
    while let Ok(m) = tokio::time::timeout(Duration::from_secs(2), reader.recv()).await {
        let m = m?;
        let Some(&kind) = kinds.get(m.topic()) else {
            continue;
        };
        let headers = m
            .headers()
            .map(SagaHeaders::from_headers)
            .unwrap_or_default();
        if kind == Kind::Result && headers.message_type.as_deref() != Some("SagaResult") {
            continue;
        }
        let id = headers
            .saga_id
            .or_else(|| m.key().map(|k| String::from_utf8_lossy(k).into_owned()));
        let Some((&id, _)) = id.as_deref().and_then(|id| wanted.get_key_value(id)) else {
            continue;
        };
        let ts = match m.timestamp() {
            Timestamp::CreateTime(t) | Timestamp::LogAppendTime(t) => t,
            Timestamp::NotAvailable => continue,
        };
        events.entry(id).or_default().push((ts, kind));
    }
    let mut sums: HashMap<&'static str, (f64, usize)> = HashMap::new();
    let mut add = |hop: &'static str, ms: i64| {
        let e = sums.entry(hop).or_default();
        e.0 += ms as f64;
        e.1 += 1;
    };
    let (mut sagas, mut total) = (0usize, 0f64);
    for (id, mut evs) in events {
        // Exact copies (re-sent after a restore in the same millisecond)
        // count once; other repeats make pairs no hop matches.
        evs.sort();
        evs.dedup();
        let s = wanted[id];
        let Some(result) = evs.iter().find(|e| e.1 == Kind::Result) else {
            continue;
        };
        // A start the facade handed to the partition's owner has no
        // trigger record: its first record is the saga's state.
        let (hop, first) = match evs.iter().find(|e| e.1 == Kind::Trigger) {
            Some(trigger) => (FACADE_IN, trigger),
            None => match evs.iter().find(|e| e.1 == Kind::State) {
                Some(state) => (FACADE_DIRECT, state),
                None => continue,
            },
        };
        sagas += 1;
        total += (s.answered - s.sent) as f64;
        add(hop, first.0 - s.sent);
        add(FACADE_OUT, s.answered - result.0);
        for w in evs.windows(2) {
            let (a, b) = (w[0], w[1]);
            let hop = match (a.1, b.1) {
                (Kind::Trigger | Kind::Reply, Kind::State) => TO_ORCHESTRATOR,
                (Kind::State, Kind::Command | Kind::Result) => STATE_ACK,
                (Kind::Command, Kind::Reply) => TO_ADAPTER,
                _ => continue,
            };
            add(hop, b.0 - a.0);
        }
    }
    let order = [
        FACADE_IN,
        FACADE_DIRECT,
        TO_ORCHESTRATOR,
        STATE_ACK,
        TO_ADAPTER,
        FACADE_OUT,
    ];
    let hops = order
        .iter()
        .filter_map(|h| {
            let (sum, n) = sums.get(h)?;
            Some((*h, sum / *n as f64, *n as f64 / sagas.max(1) as f64))
        })
        .collect();
    Ok(Breakdown {
        sagas,
        hops,
        total_ms: total / sagas.max(1) as f64,
        reads: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_delays_are_the_mean_of_what_the_loop_added_per_source() {
        let before = "# HELP sagaflow_input_delay_seconds x\n\
            sagaflow_input_delay_seconds_bucket{source=\"replies\",le=\"0.001\"} 1\n\
            sagaflow_input_delay_seconds_sum{source=\"replies\"} 0.5\n\
            sagaflow_input_delay_seconds_count{source=\"replies\"} 100\n";
        let after = "sagaflow_input_delay_seconds_sum{source=\"replies\"} 0.8\n\
            sagaflow_input_delay_seconds_count{source=\"replies\"} 200\n\
            sagaflow_input_delay_seconds_sum{source=\"inputs\"} 0.02\n\
            sagaflow_input_delay_seconds_count{source=\"inputs\"} 4\n\
            sagaflow_input_delay_seconds_sum{source=\"events\"} 1\n\
            sagaflow_input_delay_seconds_count{source=\"events\"} 0\n";
        let reads = reads_between(before, after);
        assert_eq!(
            reads.len(),
            2,
            "a source that read nothing is left out: {reads:?}"
        );
        assert_eq!(reads[0].0, "inputs");
        assert!((reads[0].1 - 5.0).abs() < 1e-9, "{reads:?}");
        assert_eq!(reads[1].0, "replies");
        assert!((reads[1].1 - 3.0).abs() < 1e-9, "{reads:?}");
        assert!(reads_between("", "garbage{ 1\n").is_empty());
    }
}
