//! The orchestrator benchmark behind `sagaflow bench` and
//! `cargo bench --bench orchestrator`.
//!
//! Everything runs on this machine, on loopback: the broker (embedded tansu,
//! or `--bootstrap-servers`), a schema registry, one orchestrator and the
//! four order-checkout adapters in this process, and a local REST responder
//! standing in for the backends. It measures, in one run:
//!
//! * the **baseline**: this broker's raw produce, consume and round-trip
//!   figures and a consume→produce relay (read a batch, write it on, wait for
//!   the acks, commit) with the orchestrator's client settings — the
//!   denominator of every ratio;
//! * **throughput**: N order-checkout sagas published at once, completed
//!   sagas/s and end-to-end latency (publish → result record read back);
//! * **latency under offered load**: sagas published at a fixed rate,
//!   p50/p99 end to end;
//! * **restore** (needs the `sagaflow` binary): K in-flight sagas written to
//!   the changelog, then a fresh `sagaflow orchestrator` process restores
//!   them; wall time, and resident memory per in-flight saga against an
//!   instance restoring nothing.

pub mod closed;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use axum::extract::Path as UrlPath;
use axum::routing::post;
use axum::{Json, Router};
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::FutureRecord;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use sagaflow_bus::Producer;
use sagaflow_bus::baseline::{Baseline, BaselineOptions};
use sagaflow_bus::{KafkaConfig, TopicNames, TopicSpec, ensure_topics};
use sagaflow_codec::messages::SagaStatus;
use sagaflow_codec::{Codec, CodecConfig, SagaEvent};
use serde_json::{Value, json};
use tokio::sync::watch;

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Sagas published at once in the throughput phase.
    pub sagas: usize,
    /// Offered load of the latency phase (sagas/s) and its length.
    pub offered_rate: u32,
    pub offered_seconds: u32,
    /// In-flight sagas for the restore phase (0 skips it).
    pub restore_sagas: usize,
    /// Partitions of the internal topics.
    pub partitions: u32,
    /// The orchestrator's `max-batch`.
    pub max_batch: u32,
    /// The orchestrator's `pipeline-depth`.
    pub pipeline_depth: u32,
    /// Consumers' `fetch.wait.max.ms`: how long a fetch on an empty
    /// partition is held.
    pub fetch_wait_ms: u32,
    /// Repository root: topology/ and schemas/ are read from it.
    pub root: PathBuf,
    /// The `sagaflow` binary, for the restore phase.
    pub binary: Option<PathBuf>,
    /// An external broker; by default an embedded one is started.
    pub bootstrap_servers: Option<String>,
    /// Rounds of the metrics-overhead phase: each round is one throughput
    /// run with nobody scraping and one with every `/metrics` endpoint
    /// scraped every second (0 skips the phase).
    pub metrics_rounds: usize,
    /// Clients of the closed-loop phases through the synchronous facade,
    /// one phase per entry (empty skips them), each `closed_seconds` long.
    pub closed_loop: Vec<usize>,
    pub closed_seconds: u32,
    /// How long the idle phase watches the stack do nothing (0 skips it).
    pub idle_seconds: u32,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            sagas: 5_000,
            offered_rate: 300,
            offered_seconds: 10,
            restore_sagas: 100_000,
            partitions: 6,
            max_batch: 256,
            pipeline_depth: 8,
            fetch_wait_ms: sagaflow_bus::DEFAULT_FETCH_WAIT_MS
                .parse()
                .expect("the consumers' default fetch wait is milliseconds"),
            root: PathBuf::from("."),
            binary: None,
            bootstrap_servers: None,
            metrics_rounds: 2,
            closed_loop: vec![10, 100],
            closed_seconds: 10,
            idle_seconds: 10,
        }
    }
}

/// One load phase's figures.
#[derive(Clone, Debug)]
pub struct Phase {
    pub sagas: usize,
    pub seconds: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub completed: usize,
    pub other: usize,
}

impl Phase {
    pub fn per_sec(&self) -> f64 {
        self.sagas as f64 / self.seconds
    }
}

/// The restore phase's figures.
#[derive(Clone, Debug)]
pub struct Restore {
    /// Sagas restored (what the broker held of those written).
    pub sagas: usize,
    pub written: usize,
    /// Process start until every partition is restored.
    pub wall: Duration,
    /// Resident memory of an instance restoring nothing, and of this one.
    pub rss_empty_kib: u64,
    pub rss_full_kib: u64,
    /// Mean size of one saga's state in the changelog.
    pub state_bytes: usize,
}

impl Restore {
    pub fn bytes_per_saga(&self) -> f64 {
        (self.rss_full_kib.saturating_sub(self.rss_empty_kib) * 1024) as f64 / self.sagas as f64
    }
}

#[derive(Clone, Debug)]
pub struct Report {
    pub options: Options,
    pub baseline: Baseline,
    /// Messages/s through a consume→produce relay with acks and commits.
    pub relay_per_sec: f64,
    pub throughput: Phase,
    pub offered: Phase,
    pub metrics: Option<MetricsOverhead>,
    pub closed: Vec<closed::ClosedLoop>,
    pub idle: Option<Idle>,
    pub restore: Option<Restore>,
}

/// What the stack costs doing nothing: no saga in flight, every consumer
/// waiting, heartbeats and metadata refreshes going on.
#[derive(Clone, Debug)]
pub struct Idle {
    pub seconds: f64,
    /// CPU seconds of the bench process (broker, registry, orchestrator,
    /// adapters and the bench's own reader) over the phase.
    pub cpu_seconds: f64,
    /// Requests the embedded broker served meanwhile (`None` against an
    /// external broker).
    pub requests: Option<sagaflow_broker::RequestCounts>,
}

impl Idle {
    /// Cores used on average.
    pub fn cores(&self) -> f64 {
        self.cpu_seconds / self.seconds
    }
}

/// `counts` per unit (sagas, seconds), busiest first, as
/// `Produce 17.1, Fetch 8.0, …` (the `Request` suffix left off).
fn per(counts: &sagaflow_broker::RequestCounts, unit: f64) -> String {
    counts
        .busiest()
        .iter()
        .map(|(api, n)| {
            format!(
                "{} {:.1}",
                api.strip_suffix("Request").unwrap_or(api),
                *n as f64 / unit
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Throughput with and without Prometheus-style scraping, interleaved.
#[derive(Clone, Debug)]
pub struct MetricsOverhead {
    /// Sagas/s of the runs nobody scraped, and of the scraped ones.
    pub unscraped: Vec<f64>,
    pub scraped: Vec<f64>,
    /// Scrapes done (every endpoint counts) and the bytes of one round of
    /// scrapes (orchestrator and adapters).
    pub scrapes: u64,
    pub scrape_bytes: usize,
    pub endpoints: usize,
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

impl MetricsOverhead {
    /// Throughput lost to scraping, in % of the unscraped mean.
    pub fn overhead_pct(&self) -> f64 {
        (1.0 - mean(&self.scraped) / mean(&self.unscraped)) * 100.0
    }

    /// Throughput lost to scraping from each round's pair (scraped ÷ the
    /// unscraped run beside it), median over rounds: drift between rounds
    /// cancels out.
    pub fn paired_overhead_pct(&self) -> f64 {
        let mut r: Vec<f64> = self
            .scraped
            .iter()
            .zip(&self.unscraped)
            .map(|(s, u)| (1.0 - s / u) * 100.0)
            .collect();
        r.sort_by(f64::total_cmp);
        match r.len() {
            0 => 0.0,
            n if n % 2 == 1 => r[n / 2],
            n => (r[n / 2 - 1] + r[n / 2]) / 2.0,
        }
    }

    /// How far apart the unscraped runs were, in % of their mean: the noise
    /// the overhead figure has to be read against.
    pub fn noise_pct(&self) -> f64 {
        let max = self.unscraped.iter().copied().fold(f64::MIN, f64::max);
        let min = self.unscraped.iter().copied().fold(f64::MAX, f64::min);
        (max - min) / mean(&self.unscraped) * 100.0
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.options;
        writeln!(
            f,
            "sagaflow bench: order-checkout (3 calls per saga), {} partitions, max-batch {}, pipeline-depth {}, fetch.wait.max.ms {}",
            o.partitions, o.max_batch, o.pipeline_depth, o.fetch_wait_ms
        )?;
        writeln!(f, "baseline   broker: {}", self.baseline)?;
        writeln!(
            f,
            "baseline   relay (consume → produce → ack → commit): {:.0} msg/s",
            self.relay_per_sec
        )?;
        let t = &self.throughput;
        writeln!(
            f,
            "throughput {} sagas in {:.2}s: {:.0} sagas/s (p50 {:.1} ms, p99 {:.1} ms; {} completed, {} other)",
            t.sagas,
            t.seconds,
            t.per_sec(),
            ms(t.p50),
            ms(t.p99),
            t.completed,
            t.other
        )?;
        writeln!(
            f,
            "           ratio sagas/s ÷ relay msg/s = {:.4} (each saga is 7 orchestrator and adapter hops: trigger, 3 commands, 3 replies)",
            t.per_sec() / self.relay_per_sec
        )?;
        let l = &self.offered;
        writeln!(
            f,
            "offered    {} sagas/s for {}s: achieved {:.0}/s, p50 {:.1} ms, p99 {:.1} ms (broker round trip p50 {:.1} ms: p50 = {:.1} round trips)",
            o.offered_rate,
            o.offered_seconds,
            l.per_sec(),
            ms(l.p50),
            ms(l.p99),
            ms(self.baseline.round_trip_p50),
            l.p50.as_secs_f64() / self.baseline.round_trip_p50.as_secs_f64()
        )?;
        let rtt = self.baseline.round_trip_p50.as_secs_f64() * 1e3;
        for c in &self.closed {
            writeln!(
                f,
                "closed     {} in flight through the facade for {:.0}s: {:.0} sagas/s, p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms ({:.1} broker round trips at p50); {:.2} CPU s per 1,000 sagas (the whole stack, one process)",
                c.in_flight,
                c.seconds,
                c.per_sec(),
                ms(c.p50),
                ms(c.p95),
                ms(c.p99),
                ms(c.p50) / rtt,
                c.cpu_seconds * 1000.0 / c.sagas as f64,
            )?;
            if let Some(r) = &c.requests {
                writeln!(
                    f,
                    "           broker requests per saga: {:.1} ({})",
                    r.total() as f64 / c.sagas as f64,
                    per(r, c.sagas as f64)
                )?;
            }
            let b = &c.breakdown;
            writeln!(
                f,
                "           where a saga's {:.1} ms go (mean of {} sagas, from record timestamps):",
                b.total_ms, b.sagas
            )?;
            for (hop, mean_ms, per_saga) in &b.hops {
                writeln!(
                    f,
                    "             {:>6.1} ms × {:.1} = {:>6.1} ms ({:.1} round trips)  {hop}",
                    mean_ms,
                    per_saga,
                    mean_ms * per_saga,
                    mean_ms * per_saga / rtt
                )?;
            }
            if !b.reads.is_empty() {
                let reads: Vec<String> = b
                    .reads
                    .iter()
                    .map(|(source, ms)| {
                        format!("{source} {ms:.1} ms ({:.1} round trips)", ms / rtt)
                    })
                    .collect();
                writeln!(
                    f,
                    "           of which a record's timestamp → the orchestrator reads it: {}",
                    reads.join(", ")
                )?;
            }
        }
        if let Some(i) = &self.idle {
            writeln!(
                f,
                "idle       {:.0}s with no saga in flight: {:.3} of a core (the whole stack, one process)",
                i.seconds,
                i.cores()
            )?;
            if let Some(r) = &i.requests {
                writeln!(
                    f,
                    "           broker requests/s: {:.1} ({})",
                    r.total() as f64 / i.seconds,
                    per(r, i.seconds)
                )?;
            }
        }
        if let Some(m) = &self.metrics {
            let list = |v: &[f64]| {
                v.iter()
                    .map(|x| format!("{x:.0}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            writeln!(
                f,
                "metrics    {} endpoints scraped every 1 s ({} scrapes, {} B per round): {:.0} sagas/s [{}] vs unscraped {:.0} sagas/s [{}]; overhead {:.1}% of the means, {:.1}% median of paired rounds (unscraped run-to-run spread {:.1}%)",
                m.endpoints,
                m.scrapes,
                m.scrape_bytes,
                mean(&m.scraped),
                list(&m.scraped),
                mean(&m.unscraped),
                list(&m.unscraped),
                m.overhead_pct(),
                m.paired_overhead_pct(),
                m.noise_pct()
            )?;
        }
        match &self.restore {
            Some(r) => writeln!(
                f,
                "restore    {} in-flight sagas ({} written; {} B of state each) in {:.2}s ({:.0} sagas/s); resident memory {:.0} B per in-flight saga ({} KiB → {} KiB)",
                r.sagas,
                r.written,
                r.state_bytes,
                r.wall.as_secs_f64(),
                r.sagas as f64 / r.wall.as_secs_f64(),
                r.bytes_per_saga(),
                r.rss_empty_kib,
                r.rss_full_kib
            ),
            None => writeln!(
                f,
                "restore    skipped (no sagaflow binary given, or 0 sagas)"
            ),
        }
    }
}

/// A stand-in for the backends: answers every order-checkout operation at
/// once, as the fastest possible REST API would.
async fn responder() -> Result<String> {
    async fn op(UrlPath(op): UrlPath<String>, Json(body): Json<Value>) -> Json<Value> {
        let order = body.get("order_id").and_then(Value::as_str).unwrap_or("");
        Json(match op.as_str() {
            "reserve" => json!({"reservation_id": format!("r-{order}")}),
            "screen" => json!({"verdict": "accept"}),
            "charge" => json!({"payment_id": format!("p-{order}")}),
            "schedule" => json!({"tracking_number": format!("t-{order}")}),
            _ => json!({}),
        })
    }
    let app = Router::new().route("/ops/{op}", post(op));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

const SERVICES: [(&str, &[(&str, &str)]); 4] = [
    (
        "inventory",
        &[("reserve", "reservation_id"), ("release", "")],
    ),
    ("fraud", &[("screen", "verdict")]),
    ("payment", &[("charge", "payment_id"), ("refund", "")]),
    ("shipping", &[("schedule", "tracking_number")]),
];

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn write(&self, name: &str, text: &str) -> Result<PathBuf> {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

fn kafka_yaml(bootstrap: &str, fetch_wait_ms: u32) -> String {
    format!(
        "kafka:\n  bootstrap-servers: {bootstrap}\n  properties:\n    fetch.wait.max.ms: \"{fetch_wait_ms}\"\n"
    )
}

fn codec_yaml(registry: &str) -> String {
    format!("codec:\n  registry:\n    url: {registry}\n  default-format:\n    format: avro\n")
}

fn orchestrator_yaml(
    o: &Options,
    bootstrap: &str,
    registry: &str,
    prefix: &str,
    listen: std::net::SocketAddr,
) -> String {
    let root = &o.root;
    format!(
        "{}topics:\n  prefix: {prefix}\n{}sagas:\n  dir: {}\n  services: {}\nschemas: {}\npartitions: {}\ngroup-id: {prefix}orchestrator\nhttp:\n  listen: {listen}\nmax-batch: {}\npipeline-depth: {}\n",
        kafka_yaml(bootstrap, o.fetch_wait_ms),
        codec_yaml(registry),
        root.join("topology/sagas").display(),
        root.join("topology/services.yaml").display(),
        root.join("schemas").display(),
        o.partitions,
        o.max_batch,
        o.pipeline_depth,
    )
}

/// Publishes OrderPlaced events and reads results back.
struct Load {
    producer: Producer,
    reader: StreamConsumer,
    topic: String,
    events_topic: String,
    codec: Codec,
    schema_text: String,
    schema: sagaflow_codec::apache_avro::Schema,
    next: usize,
}

impl Load {
    async fn encode(&self, order_id: &str) -> Result<Vec<u8>> {
        let event = json!({
            "order_id": order_id, "customer_id": "c-1",
            "items": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": 4_990}],
            "total_cents": 4_990, "currency": "EUR",
            "shipping_address": {"line1": "1 Main St", "line2": null, "postal_code": "10115", "city": "Berlin", "country": "DE"},
            "placed_at": 1_700_000_000_000i64,
        });
        let value =
            sagaflow_codec::json::json_to_avro(&event, &self.schema).map_err(|e| anyhow!(e))?;
        Ok(self
            .codec
            .encode_avro_value(
                &self.topic,
                "io.sagaflow.examples.orders.OrderPlaced",
                &self.schema_text,
                value,
            )
            .await?)
    }

    /// Publishes `n` orders, all at once (`rate` 0) or at `rate`/s, and
    /// waits for their results.
    async fn run(&mut self, n: usize, rate: u32, timeout: Duration) -> Result<Phase> {
        let mut records = Vec::with_capacity(n);
        for _ in 0..n {
            self.next += 1;
            let id = format!("o-{}", self.next);
            let bytes = self.encode(&id).await?;
            records.push((id, bytes));
        }
        // Publish instants by saga id, written just before each send.
        let sent: Arc<Mutex<HashMap<String, Instant>>> =
            Arc::new(Mutex::new(HashMap::with_capacity(n)));
        let started = Instant::now();
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        let stamps = sent.clone();
        let publisher = tokio::spawn(async move {
            let mut tick = (rate > 0)
                .then(|| tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate))));
            let mut acks = Vec::with_capacity(records.len());
            for (id, bytes) in records {
                if let Some(t) = tick.as_mut() {
                    t.tick().await;
                }
                if let Ok(mut s) = stamps.lock() {
                    s.insert(format!("order-checkout:{id}"), Instant::now());
                }
                let producer = producer.clone();
                let topic = topic.clone();
                acks.push(tokio::spawn(async move {
                    producer
                        .send(
                            FutureRecord::to(&topic).key(&id).payload(&bytes),
                            Duration::from_secs(30),
                        )
                        .await
                        .map(|_| ())
                        .map_err(|(e, _)| e.to_string())
                }));
            }
            for a in acks {
                a.await.map_err(|e| e.to_string())??;
            }
            Ok::<(), String>(())
        });
        let deadline = tokio::time::Instant::now() + timeout;
        let mut latencies = Vec::with_capacity(n);
        let (mut completed, mut other) = (0, 0);
        while latencies.len() < n {
            let Ok(m) = tokio::time::timeout_at(deadline, self.reader.recv()).await else {
                bail!(
                    "timed out after {timeout:?}: {} of {n} sagas ended",
                    latencies.len()
                )
            };
            let Ok(m) = m else { continue };
            let Some(bytes) = m.payload() else { continue };
            let Ok(SagaEvent::Result(r)) = self
                .codec
                .decode_saga_event(&self.events_topic, bytes)
                .await
            else {
                continue;
            };
            // Copies re-sent after a restore find no stamp: counted once.
            let Some(at) = sent.lock().ok().and_then(|mut s| s.remove(&r.saga_id)) else {
                continue;
            };
            latencies.push(at.elapsed());
            if r.status == SagaStatus::Completed {
                completed += 1;
            } else {
                other += 1;
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        publisher
            .await
            .map_err(|e| anyhow!(e))?
            .map_err(|e| anyhow!("publishing: {e}"))?;
        latencies.sort();
        let pct =
            |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
        Ok(Phase {
            sagas: n,
            seconds,
            p50: pct(0.50),
            p99: pct(0.99),
            completed,
            other,
        })
    }
}

/// Messages/s through a relay with the orchestrator's loop shape: read what
/// has arrived (up to `max_batch`), produce it on, wait for the acks, store
/// and commit the offsets.
async fn relay(
    kafka: &KafkaConfig,
    prefix: &str,
    partitions: u32,
    max_batch: usize,
) -> Result<f64> {
    let (from, to) = (format!("{prefix}relay-in"), format!("{prefix}relay-out"));
    ensure_topics(
        kafka,
        &[
            TopicSpec::new(&from, partitions as i32),
            TopicSpec::new(&to, partitions as i32),
        ],
    )
    .await?;
    let n = 20_000;
    let producer = kafka.producer()?;
    let payload = vec![b'x'; 600];
    let sends = (0..n).map(|i| {
        let key = format!("k-{i}");
        let producer = producer.clone();
        let from = from.clone();
        let payload = payload.clone();
        async move {
            producer
                .send(
                    FutureRecord::to(&from).key(&key).payload(&payload),
                    Duration::from_secs(30),
                )
                .await
                .map(|_| ())
                .map_err(|(e, _)| anyhow!(e))
        }
    });
    for r in futures::future::join_all(sends).await {
        r?;
    }
    let consumer = kafka.consumer(&format!("{prefix}relay"))?;
    consumer.subscribe(&[&from])?;
    let mut relayed = 0;
    let mut started = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while relayed < n {
        let first = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .map_err(|_| anyhow!("relay: timed out after {relayed} of {n}"))??;
        started.get_or_insert_with(Instant::now);
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match sagaflow_bus::ready(&consumer) {
                Some(Ok(m)) => batch.push(m),
                _ => break,
            }
        }
        let sends = batch.iter().map(|m| {
            let mut r: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&to);
            if let Some(k) = m.key() {
                r = r.key(k);
            }
            if let Some(p) = m.payload() {
                r = r.payload(p);
            }
            producer.send(r, Duration::from_secs(30))
        });
        for r in futures::future::join_all(sends).await {
            r.map_err(|(e, _)| anyhow!(e))?;
        }
        let mut tpl = TopicPartitionList::new();
        for m in &batch {
            tpl.add_partition_offset(m.topic(), m.partition(), Offset::Offset(m.offset() + 1))?;
        }
        consumer.store_offsets(&tpl)?;
        let _ = consumer.commit_consumer_state(CommitMode::Async);
        relayed += batch.len();
    }
    Ok(n as f64 / started.map_or(1.0, |s| s.elapsed().as_secs_f64()))
}

/// Runs the whole benchmark.
pub async fn run(options: Options) -> Result<Report> {
    let root = std::fs::canonicalize(&options.root)
        .with_context(|| format!("--root {}", options.root.display()))?;
    if !root.join("topology/sagas").is_dir() {
        bail!(
            "{} has no topology/sagas: run from the repository root or pass --root",
            root.display()
        );
    }
    let options = Options { root, ..options };
    let (broker, bootstrap) = match &options.bootstrap_servers {
        Some(b) => (None, b.clone()),
        None => {
            let b =
                sagaflow_broker::EmbeddedBroker::start(sagaflow_broker::BrokerConfig::default())?;
            let s = b.bootstrap_servers();
            (Some(b), s)
        }
    };
    let served = || broker.as_ref().map(|b| b.requests());
    let files = Files {
        dir: tempfile::tempdir()?,
    };
    let registry =
        sagaflow_registry::Registry::open_dir(&files.dir.path().join("registry")).await?;
    let registry_handle = registry.serve(tokio::net::TcpListener::bind("127.0.0.1:0").await?)?;
    let registry_url = registry_handle.url().to_string();
    let backend = responder().await?;
    let prefix = format!("bench{}.", std::process::id());
    let kafka =
        KafkaConfig::new(&bootstrap).with("fetch.wait.max.ms", options.fetch_wait_ms.to_string());

    eprintln!("measuring the broker baseline…");
    let baseline = sagaflow_bus::baseline::measure(
        &kafka,
        &format!("{prefix}baseline"),
        &BaselineOptions::default(),
    )
    .await?;
    let relay_per_sec = relay(
        &kafka,
        &prefix,
        options.partitions,
        options.max_batch as usize,
    )
    .await?;

    // The stack: orchestrator and adapters in this process. The API port is
    // picked here so the metrics phase knows where to scrape.
    let api = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let cfg = files.write(
        "orchestrator.yaml",
        &orchestrator_yaml(&options, &bootstrap, &registry_url, &prefix, api),
    )?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let cfg = sagaflow_orchestrator::config::OrchestratorConfig::load(&cfg)?;
    let orchestrator = tokio::spawn(sagaflow_orchestrator::app::run(cfg, stop_rx));
    let mut adapters = Vec::new();
    for (service, ops) in SERVICES {
        let mut y = format!("service: {service}\nbase-urls:\n  - {backend}\noperations:\n");
        for (op, field) in ops {
            y.push_str(&format!(
                "  {op}:\n    rest:\n      method: POST\n      path: /ops/{op}\n      body: \"{{{{ input }}}}\"\n"
            ));
            if !field.is_empty() {
                y.push_str(&format!("      response:\n        {field}: /{field}\n"));
            }
        }
        files.write(&format!("{service}.yaml"), &y)?;
        let process = files.write(
            &format!("{service}.adapter.yaml"),
            &format!(
                "{}topics:\n  prefix: {prefix}\n{}service: {service}.yaml\ngroup-id: {prefix}adapter-{service}\nhttp:\n  listen: 127.0.0.1:0\n",
                kafka_yaml(&bootstrap, options.fetch_wait_ms),
                codec_yaml(&registry_url)
            ),
        )?;
        let config = sagaflow_adapter::ProcessConfig::load(&process)?;
        adapters.push(
            sagaflow_adapter::AdapterRuntime::new(config)?
                .start()
                .await?,
        );
    }

    let names = TopicNames::with_prefix(&prefix);
    let codec: CodecConfig = serde_json::from_value(json!({
        "registry": {"url": registry_url},
        "default-format": {"format": "avro"}
    }))?;
    let schema_text = std::fs::read_to_string(
        options
            .root
            .join("schemas/examples/orders/OrderPlaced.avsc"),
    )?;
    let reader = kafka.consumer(&format!("{prefix}bench-results"))?;
    reader.subscribe(&[&names.saga_events()])?;
    let mut load = Load {
        producer: kafka.producer()?,
        reader,
        topic: format!("{prefix}orders.events"),
        events_topic: names.saga_events(),
        codec: Codec::new(codec)?,
        schema: sagaflow_codec::apache_avro::Schema::parse_str(&schema_text)?,
        schema_text,
        next: 0,
    };
    eprintln!("warming up (topics, schemas, group assignment)…");
    load.run(200, 0, Duration::from_secs(120)).await?;
    eprintln!("throughput: {} sagas at once…", options.sagas);
    let throughput = load.run(options.sagas, 0, Duration::from_secs(600)).await?;
    eprintln!(
        "offered load: {}/s for {}s…",
        options.offered_rate, options.offered_seconds
    );
    let offered = load
        .run(
            (options.offered_rate * options.offered_seconds) as usize,
            options.offered_rate,
            Duration::from_secs(u64::from(options.offered_seconds) + 120),
        )
        .await?;
    let mut closed = Vec::new();
    let services: Vec<&str> = SERVICES.iter().map(|(s, _)| *s).collect();
    for (i, &n) in options.closed_loop.iter().enumerate() {
        eprintln!(
            "closed loop: {n} in flight through the facade for {}s…",
            options.closed_seconds
        );
        closed.push(
            closed::run(
                api,
                n,
                options.closed_seconds,
                &format!("closed{i}"),
                &closed::Stack {
                    kafka: &kafka,
                    names: &names,
                    services: &services,
                    broker: broker.as_ref(),
                },
            )
            .await?,
        );
    }
    let idle = if options.idle_seconds > 0 {
        eprintln!("idle: {}s with nothing to do…", options.idle_seconds);
        // The last phase's stragglers (a breakdown reader leaving its
        // group, delivery marks) settle first.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (before, cpu, started) = (served(), closed::cpu_seconds(), Instant::now());
        tokio::time::sleep(Duration::from_secs(u64::from(options.idle_seconds))).await;
        Some(Idle {
            seconds: started.elapsed().as_secs_f64(),
            cpu_seconds: closed::cpu_seconds() - cpu,
            requests: served()
                .zip(before)
                .map(|(after, before)| after.since(&before)),
        })
    } else {
        None
    };
    let metrics = if options.metrics_rounds > 0 {
        let mut endpoints = vec![format!("http://{api}/metrics")];
        endpoints.extend(
            adapters
                .iter()
                .map(|a| format!("http://{}/metrics", a.http_addr())),
        );
        Some(metrics_overhead(&mut load, &options, endpoints).await?)
    } else {
        None
    };
    let _ = stop_tx.send(true);
    for a in adapters {
        let _ = a.shutdown().await;
    }
    let _ = orchestrator.await;

    let restore = match (&options.binary, options.restore_sagas) {
        (Some(binary), n) if n > 0 => {
            eprintln!("restore: writing {n} in-flight sagas to a changelog…");
            Some(
                restore(
                    &options,
                    binary,
                    &files,
                    &bootstrap,
                    &registry_url,
                    &kafka,
                    n,
                )
                .await?,
            )
        }
        _ => None,
    };
    let _ = registry_handle.shutdown().await;
    Ok(Report {
        options,
        baseline,
        relay_per_sec,
        throughput,
        offered,
        metrics,
        closed,
        idle,
        restore,
    })
}

/// Interleaves unscraped and scraped throughput runs (A B B A A B …, so
/// drift of the machine and the broker hits both alike) of `options.sagas` sagas each; while a
/// scraped run lasts, every endpoint is fetched once a second, as a
/// Prometheus with `scrape_interval: 1s` would.
async fn metrics_overhead(
    load: &mut Load,
    options: &Options,
    endpoints: Vec<String>,
) -> Result<MetricsOverhead> {
    let mut scrape_bytes = 0;
    for e in &endpoints {
        scrape_bytes += reqwest_get(e)
            .await
            .with_context(|| format!("scraping {e}"))?
            .len();
    }
    let mut out = MetricsOverhead {
        unscraped: Vec::new(),
        scraped: Vec::new(),
        scrapes: 0,
        scrape_bytes,
        endpoints: endpoints.len(),
    };
    for round in 1..=options.metrics_rounds {
        // ABBA: the order alternates, so a broker that slows as its topics
        // grow does not always count against the second run of a pair.
        let scraped_first = round % 2 == 0;
        eprintln!(
            "metrics overhead round {round}/{}: {} sagas {}…",
            options.metrics_rounds,
            options.sagas,
            if scraped_first {
                "scraped every 1 s, then unscraped"
            } else {
                "unscraped, then scraped every 1 s"
            }
        );
        for scraped in [scraped_first, !scraped_first] {
            if !scraped {
                let phase = load.run(options.sagas, 0, Duration::from_secs(600)).await?;
                out.unscraped.push(phase.per_sec());
                continue;
            }
            let (stop_tx, mut stop_rx) = watch::channel(false);
            let targets = endpoints.clone();
            let scraper = tokio::spawn(async move {
                let mut scrapes = 0u64;
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tokio::select! {
                        _ = stop_rx.changed() => break,
                        _ = tick.tick() => {
                            for t in &targets {
                                if reqwest_get(t).await.is_ok() {
                                    scrapes += 1;
                                }
                            }
                        }
                    }
                }
                scrapes
            });
            let phase = load.run(options.sagas, 0, Duration::from_secs(600)).await;
            let _ = stop_tx.send(true);
            out.scrapes += scraper.await.unwrap_or(0);
            out.scraped.push(phase?.per_sec());
        }
    }
    Ok(out)
}

/// A `sagaflow orchestrator` child process and the address of its HTTP API.
struct Child {
    child: std::process::Child,
    url: String,
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Child {
    fn spawn(binary: &Path, config: &Path, log: &Path) -> Result<Self> {
        let err = std::fs::File::create(log)?;
        let child = std::process::Command::new(binary)
            .args(["--log-format", "json", "orchestrator", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut me = Self {
            child,
            url: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while me.url.is_empty() {
            if Instant::now() > deadline {
                bail!(
                    "the orchestrator did not log its HTTP address; see {}",
                    log.display()
                );
            }
            if let Some(status) = me.child.try_wait()? {
                bail!("the orchestrator exited ({status}); see {}", log.display());
            }
            std::thread::sleep(Duration::from_millis(20));
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if let Some(addr) = text.lines().find_map(|l| {
                let v: Value = serde_json::from_str(l).ok()?;
                v.pointer("/fields/http")?.as_str().map(str::to_owned)
            }) {
                me.url = format!("http://{addr}");
            }
        }
        Ok(me)
    }

    async fn metric(&self, name: &str) -> Result<f64> {
        let text = reqwest_get(&format!("{}/metrics", self.url)).await?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    fn rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .ok_or_else(|| anyhow!("no VmRSS in /proc/{}/status", self.child.id()))
    }
}

/// A plain HTTP GET over a TCP stream (loopback only; no client dependency).
pub(crate) async fn reqwest_get(url: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("not an http URL: {url}"))?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut stream = tokio::net::TcpStream::connect(host).await?;
    stream
        .write_all(
            format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    Ok(body
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default())
}

async fn restore(
    options: &Options,
    binary: &Path,
    files: &Files,
    bootstrap: &str,
    registry_url: &str,
    kafka: &KafkaConfig,
    n: usize,
) -> Result<Restore> {
    let (_, definitions) = sagaflow_orchestrator::app::load_definitions(
        &options.root.join("topology/sagas"),
        &options.root.join("topology/services.yaml"),
    )?;
    let engine = sagaflow_engine::Engine::new(definitions);
    let empty_prefix = format!("bench{}-empty.", std::process::id());
    let full_prefix = format!("bench{}-restore.", std::process::id());
    let names = TopicNames::with_prefix(&full_prefix);
    ensure_topics(
        kafka,
        &[TopicSpec::new(names.saga_state(), options.partitions as i32).compacted()],
    )
    .await?;
    // The sagas wait for their first reply, as in-flight sagas do: started
    // an hour ahead, so no step timeout falls due while the instance is
    // measured (a restore that then retried every saga at once would
    // measure its producer queue, not the sagas at rest).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64
        + 3_600_000;
    let producer = kafka.producer()?;
    let topic = names.saga_state();
    let mut state_bytes = 0;
    let producer = Arc::new(producer);
    for chunk in (0..n).collect::<Vec<_>>().chunks(5_000) {
        let mut sends = Vec::with_capacity(chunk.len());
        for &i in chunk {
            let order = format!("r-{i}");
            let trigger = sagaflow_engine::TriggerEvent {
                message_id: format!("bench-restore-{i}"),
                topic: "orders.events".into(),
                event_type: "OrderPlaced".into(),
                payload: json!({
                    "order_id": order, "customer_id": "c-1",
                    "items": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": 4_990}],
                    "total_cents": 4_990, "currency": "EUR",
                    "shipping_address": {"line1": "1 Main St", "line2": null, "postal_code": "10115", "city": "Berlin", "country": "DE"},
                    "placed_at": 1_700_000_000_000i64,
                }),
            };
            let (state, _effects) =
                engine.start("order-checkout", &trigger, sagaflow_engine::Timestamp(now))?;
            let key = state.saga_id.clone();
            let stored = sagaflow_orchestrator::runtime::StoredSaga {
                state,
                outbox: Vec::new(),
                // As every live saga has: its own span, no publisher's.
                traceparent: Some(sagaflow_bus::TraceContext::new_root().header()),
                trigger_traceparent: None,
                tracestate: None,
            };
            let bytes = serde_json::to_vec(&stored)?;
            state_bytes += bytes.len();
            let producer = producer.clone();
            let topic = topic.clone();
            sends.push(async move {
                producer
                    .send(
                        FutureRecord::to(&topic).key(&key).payload(&bytes),
                        Duration::from_secs(60),
                    )
                    .await
                    .map(|_| ())
                    .map_err(|(e, _)| anyhow!(e))
            });
        }
        for r in futures::future::join_all(sends).await {
            r?;
        }
    }

    // What the broker holds, to compare with what was acknowledged.
    let probe = kafka.consumer(&format!("{full_prefix}probe"))?;
    let mut held = 0;
    for p in 0..options.partitions as i32 {
        let (low, high) = probe.fetch_watermarks(&topic, p, Duration::from_secs(10))?;
        held += (high - low) as usize;
    }
    drop(probe);
    if held != n {
        // tansu 0.6 (memory storage) acknowledges large concurrent produce
        // batches but keeps fewer records: see docs/broker.md.
        eprintln!("restore: {n} records acknowledged, the broker's watermarks span {held}");
    }

    // An instance with nothing to restore, for the memory baseline.
    let empty_cfg = files.write(
        "restore-empty.yaml",
        &orchestrator_yaml(
            options,
            bootstrap,
            registry_url,
            &empty_prefix,
            ([127, 0, 0, 1], 0).into(),
        ),
    )?;
    let empty = Child::spawn(
        binary,
        &empty_cfg,
        &files.dir.path().join("restore-empty.log"),
    )?;
    wait_metric(
        &empty,
        "sagaflow_owned_partitions",
        f64::from(options.partitions),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_empty_kib = empty.rss_kib()?;
    drop(empty);

    let full_cfg = files.write(
        "restore-full.yaml",
        &orchestrator_yaml(
            options,
            bootstrap,
            registry_url,
            &full_prefix,
            ([127, 0, 0, 1], 0).into(),
        ),
    )?;
    let started = Instant::now();
    let log = files.dir.path().join("restore-full.log");
    let full = Child::spawn(binary, &full_cfg, &log)?;
    if let Err(e) = wait_metric(&full, "sagaflow_state_restored_sagas_total", held as f64).await {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(15).collect();
        bail!(
            "{e}; restored so far: {}; the instance's log ends:\n{}",
            full.metric("sagaflow_state_restored_sagas_total")
                .await
                .unwrap_or(-1.0),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    let wall = started.elapsed();
    let rss_full_kib = full.rss_kib()?;
    Ok(Restore {
        sagas: held,
        written: n,
        wall,
        rss_empty_kib,
        rss_full_kib,
        state_bytes: state_bytes / n.max(1),
    })
}

async fn wait_metric(child: &Child, name: &str, at_least: f64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if child.metric(name).await.unwrap_or(0.0) >= at_least {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{name} did not reach {at_least} within 300 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bench_waits_as_long_as_the_consumers_default() {
        assert_eq!(Options::default().fetch_wait_ms, 1000);
    }
}
