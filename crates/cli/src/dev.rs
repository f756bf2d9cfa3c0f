//! `sagaflow dev`: the local stack in one process, on loopback — the
//! embedded broker, a schema registry, the orchestrator with the three
//! worked sagas, one adapter per demo service (REST/JSON, and SOAP 1.1 for
//! billing), the demo backends of `sagaflow-demo` (docs/demo.md), and a
//! publisher of sample domain events: `OrderPlaced`, `BookingRequested`,
//! `CustomerSignedUp` in turn, and each customer's `EmailVerified` a moment
//! after the sign-up (the choreography half). Live progress per saga type
//! is printed as sagas start and end.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use rdkafka::Message;
use rdkafka::consumer::Consumer;
use sagaflow_broker::{BrokerConfig, EmbeddedBroker};
use sagaflow_bus::KafkaConfig;
use sagaflow_codec::SagaEvent;
use sagaflow_codec::messages::{LifecycleKind, SagaStatus};
use tokio::sync::watch;

use crate::demo_events::{Publisher, Samples};
use crate::exit::{CliResult, Failure};

/// The saga types the demo runs, in the order their triggers are published.
const SAGA_TYPES: [&str; 3] = ["order-checkout", "travel-booking", "customer-onboarding"];

#[derive(Debug, Args)]
pub(crate) struct DevArgs {
    /// Trigger events published per second, taking the three saga types in
    /// turn (order, booking, sign-up).
    #[arg(long, default_value_t = 20)]
    rate: u32,
    /// Publish this many triggers and stop once their sagas have ended
    /// (0: run until Ctrl-C). Non-interactive runs and tests use it.
    #[arg(long, visible_alias = "orders", default_value_t = 0)]
    sagas: u64,
    /// How long after signing up a customer verifies their e-mail.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    verify_after: Duration,
    /// The repository root (topology/ and schemas/ are read from it).
    #[arg(long, default_value = ".")]
    root: PathBuf,
    /// Where the stack keeps its files (configs, registry data, the
    /// broker's durable log): a restart with the same directory resumes.
    #[arg(long, default_value = ".sagaflow/dev")]
    data_dir: PathBuf,
    /// The orchestrator's HTTP API and metrics (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: std::net::SocketAddr,
}

fn write(path: &Path, text: String) -> CliResult {
    std::fs::write(path, text)
        .map_err(|e| Failure::Usage(format!("writing {}: {e}", path.display())))
}

/// A concrete address for `addr`: port 0 becomes a port free right now, so
/// the URLs printed at start are the real ones.
fn concrete(addr: std::net::SocketAddr) -> CliResult<std::net::SocketAddr> {
    if addr.port() != 0 {
        return Ok(addr);
    }
    std::net::TcpListener::bind(addr)
        .and_then(|l| l.local_addr())
        .map_err(|e| Failure::Usage(format!("--http {addr}: {e}")))
}

pub(crate) async fn run(args: DevArgs) -> CliResult {
    let root = std::fs::canonicalize(&args.root)
        .map_err(|e| Failure::Usage(format!("--root {}: {e}", args.root.display())))?;
    if !root.join("topology/sagas").is_dir() {
        return Err(Failure::Usage(format!(
            "{} has no topology/sagas: run from the repository root or pass --root",
            root.display()
        )));
    }
    std::fs::create_dir_all(&args.data_dir)
        .map_err(|e| Failure::Usage(format!("{}: {e}", args.data_dir.display())))?;
    let dir = std::fs::canonicalize(&args.data_dir).map_err(|e| Failure::Usage(e.to_string()))?;
    let http = concrete(args.http)?;

    // The broker's log, topics and committed offsets live under the data
    // directory, so sagas in flight survive a restart of the whole stack.
    let broker = EmbeddedBroker::start(BrokerConfig::durable(dir.join("broker")))
        .map_err(|e| Failure::Unreachable(format!("starting the broker: {e}")))?;
    let bootstrap = broker.bootstrap_servers();
    let registry = sagaflow_registry::Registry::open_dir(&dir.join("registry"))
        .await
        .map_err(|e| Failure::Usage(e.to_string()))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| Failure::Usage(e.to_string()))?;
    let registry_handle = registry
        .serve(listener)
        .map_err(|e| Failure::Usage(e.to_string()))?;
    let registry_url = registry_handle.url().to_string();

    // The demo backends (crates/demo) decide outcomes from the ids.
    let backends = sagaflow_demo::DemoServices::start()
        .await
        .map_err(|e| Failure::Unreachable(format!("starting the demo services: {e}")))?;
    let backend_url = backends.url();

    let kafka = format!(
        "kafka:\n  bootstrap-servers: {bootstrap}\n  properties:\n    fetch.wait.max.ms: \"5\"\n"
    );
    let codec = format!(
        "codec:\n  registry:\n    url: {registry_url}\n  default-format:\n    format: avro\n"
    );
    write(
        &dir.join("orchestrator.yaml"),
        format!(
            "{kafka}{codec}sagas:\n  dir: {}\n  services: {}\nschemas: {}\npartitions: 4\nhttp:\n  listen: {http}\n",
            root.join("topology/sagas").display(),
            root.join("topology/services.yaml").display(),
            root.join("schemas").display(),
        ),
    )?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let cfg =
        sagaflow_orchestrator::config::OrchestratorConfig::load(&dir.join("orchestrator.yaml"))
            .map_err(|e| Failure::Usage(e.to_string()))?;
    let orchestrator = tokio::spawn(sagaflow_orchestrator::app::run(cfg, stop_rx.clone()));
    crate::console::dev_hook(&dir, &kafka, &codec, http, stop_rx.clone()).await?;

    let mut adapters = Vec::new();
    for service in sagaflow_demo::adapters::services() {
        let Some(definition) = sagaflow_demo::adapters::service_yaml(service, &backend_url) else {
            continue;
        };
        write(&dir.join(format!("{service}.yaml")), definition)?;
        let process = dir.join(format!("{service}.adapter.yaml"));
        write(
            &process,
            format!(
                "{kafka}{codec}service: {service}.yaml\ngroup-id: sagaflow-dev-adapter-{service}\nhttp:\n  listen: 127.0.0.1:0\n"
            ),
        )?;
        let config = sagaflow_adapter::ProcessConfig::load(&process)
            .map_err(|e| Failure::Usage(e.to_string()))?;
        let adapter = sagaflow_adapter::AdapterRuntime::new(config)
            .map_err(|e| Failure::Usage(e.to_string()))?
            .start()
            .await
            .map_err(|e| Failure::Unreachable(e.to_string()))?;
        adapters.push((service, adapter));
    }

    println!("sagaflow dev: broker {bootstrap}   schema registry {registry_url}");
    println!(
        "  orchestrator API  http://{http}/v1/sagas   (sagaflow saga list --api http://{http})"
    );
    println!("  metrics           http://{http}/metrics");
    println!("  demo services     {backend_url}");
    let adapter_list: Vec<String> = adapters
        .iter()
        .map(|(s, a)| format!("{s} http://{}/metrics", a.http_addr()))
        .collect();
    println!("  adapters          {}", adapter_list.join(", "));
    println!(
        "  publishing {} trigger events/s (OrderPlaced, BookingRequested, CustomerSignedUp; EmailVerified {} later); Ctrl-C stops everything",
        args.rate,
        humantime::format_duration(args.verify_after)
    );

    let result = publish_and_watch(&bootstrap, &registry_url, &root, &args).await;
    let _ = stop_tx.send(true);
    for (_, a) in adapters {
        let _ = a.shutdown().await;
    }
    let _ = orchestrator.await;
    let _ = registry_handle.shutdown().await;
    drop(backends);
    drop(broker);
    result
}

/// Counts and step latencies of one saga type.
#[derive(Default)]
struct TypeProgress {
    started: u64,
    completed: u64,
    compensated: u64,
    failed: u64,
    /// Step name → recent latencies (ms), at most `LATENCY_WINDOW`.
    steps: BTreeMap<String, VecDeque<u64>>,
}

const LATENCY_WINDOW: usize = 1000;

fn id_hash(id: &str) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(id)
}

impl TypeProgress {
    fn ended(&self) -> u64 {
        self.completed + self.compensated + self.failed
    }
}

/// What the terminal shows: fed with every saga event. Events are
/// delivered at least once (a restored orchestrator re-sends what it may
/// owe), so each saga is counted once by its id: started once, ended once.
/// A second result for a saga with another outcome is a saga that ended
/// twice, and is counted as such.
#[derive(Default)]
struct Progress {
    types: BTreeMap<String, TypeProgress>,
    /// Sagas seen starting (a hash of the id: compact for long sessions).
    started: HashSet<u64>,
    /// Sagas seen ending, with their outcome.
    ended: HashMap<u64, SagaStatus>,
    /// Sagas that ended twice with different outcomes: never expected.
    ended_twice: u64,
    /// (saga id, step) → when the step's command was issued (ms).
    open_steps: HashMap<(String, String), i64>,
}

impl Progress {
    fn apply(&mut self, event: SagaEvent) {
        match event {
            SagaEvent::Result(r) => {
                let id = id_hash(&r.saga_id);
                if let Some(first) = self.ended.get(&id) {
                    if *first != r.status {
                        self.ended_twice += 1;
                    }
                    return;
                }
                self.ended.insert(id, r.status);
                let t = self.types.entry(r.saga_type).or_default();
                match r.status {
                    SagaStatus::Completed => t.completed += 1,
                    SagaStatus::Compensated => t.compensated += 1,
                    SagaStatus::Failed => t.failed += 1,
                }
                self.open_steps.retain(|(id, _), _| *id != r.saga_id);
            }
            SagaEvent::Lifecycle(e) => {
                let step = e.step.clone().unwrap_or_default();
                match e.kind {
                    LifecycleKind::Started if self.started.insert(id_hash(&e.saga_id)) => {
                        self.types.entry(e.saga_type).or_default().started += 1;
                    }
                    LifecycleKind::StepStarted | LifecycleKind::AwaitingEvent => {
                        self.open_steps.entry((e.saga_id, step)).or_insert(e.at);
                    }
                    LifecycleKind::StepSucceeded
                    | LifecycleKind::StepFailed
                    | LifecycleKind::EventReceived
                    | LifecycleKind::EventDeadlineExpired => {
                        if let Some(at) = self.open_steps.remove(&(e.saga_id, step.clone())) {
                            let t = self.types.entry(e.saga_type).or_default();
                            let window = t.steps.entry(step).or_default();
                            if window.len() == LATENCY_WINDOW {
                                window.pop_front();
                            }
                            window.push_back(u64::try_from(e.at - at).unwrap_or(0));
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    fn ended(&self) -> u64 {
        self.types.values().map(TypeProgress::ended).sum()
    }

    fn render(&self, elapsed: Duration, published: u64) -> String {
        let secs = elapsed.as_secs_f64().max(0.001);
        let ended = self.ended();
        let mut out = format!(
            "[{secs:>7.1}s] published {published}  ended {ended} ({:.1} sagas/s)  in flight {}\n",
            ended as f64 / secs,
            published.saturating_sub(ended)
        );
        out.push_str(&format!(
            "  {:<22}{:>9}{:>11}{:>13}{:>8}{:>11}\n",
            "saga type", "started", "completed", "compensated", "failed", "in flight"
        ));
        for name in SAGA_TYPES {
            let t = self.types.get(name);
            let v = |f: fn(&TypeProgress) -> u64| t.map(f).unwrap_or(0);
            out.push_str(&format!(
                "  {name:<22}{:>9}{:>11}{:>13}{:>8}{:>11}\n",
                v(|t| t.started),
                v(|t| t.completed),
                v(|t| t.compensated),
                v(|t| t.failed),
                v(|t| t.started.saturating_sub(t.ended())),
            ));
        }
        for name in SAGA_TYPES {
            let Some(t) = self.types.get(name).filter(|t| !t.steps.is_empty()) else {
                continue;
            };
            let steps: Vec<String> = t
                .steps
                .iter()
                .map(|(step, w)| {
                    let (p50, p99) = percentiles(w);
                    format!("{step} {p50}/{p99}")
                })
                .collect();
            out.push_str(&format!(
                "  {name} step latency p50/p99 ms: {}\n",
                steps.join(", ")
            ));
        }
        out
    }
}

/// The 50th and 99th percentile (nearest rank) of `window`.
fn percentiles(window: &VecDeque<u64>) -> (u64, u64) {
    let mut v: Vec<u64> = window.iter().copied().collect();
    v.sort_unstable();
    let at = |q: f64| {
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len().max(1));
        v.get(rank - 1).copied().unwrap_or(0)
    };
    (at(0.5), at(0.99))
}

async fn publish_and_watch(
    bootstrap: &str,
    registry_url: &str,
    root: &Path,
    args: &DevArgs,
) -> CliResult {
    let kafka = KafkaConfig::new(bootstrap).with("fetch.wait.max.ms", "5");
    let publisher = Publisher::new(&kafka, registry_url, &root.join("schemas"))?;
    let mut samples = Samples::new(publisher, args.verify_after);
    let events = kafka
        .consumer(&format!("sagaflow-dev-{}", std::process::id()))
        .map_err(|e| Failure::Unreachable(e.to_string()))?;
    events
        .subscribe(&["sagaflow.saga-events"])
        .map_err(|e| Failure::Unreachable(e.to_string()))?;

    let started = Instant::now();
    let period = Duration::from_secs_f64(1.0 / f64::from(args.rate.max(1)));
    let mut next_publish = tokio::time::Instant::now();
    let mut next_print = Instant::now() + Duration::from_secs(2);
    let mut progress = Progress::default();
    let stop = crate::signals::terminated();
    tokio::pin!(stop);
    loop {
        if args.sagas > 0 && progress.ended() >= args.sagas {
            break;
        }
        if Instant::now() >= next_print {
            print!("{}", progress.render(started.elapsed(), samples.published));
            next_print += Duration::from_secs(2);
        }
        let may_publish = args.sagas == 0 || samples.published < args.sagas;
        let verify_due = samples.next_verification();
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep_until(verify_due.unwrap_or(next_publish)), if verify_due.is_some() => {
                samples.publish_verification().await?;
            }
            _ = tokio::time::sleep_until(next_publish), if may_publish => {
                samples.publish_next().await?;
                next_publish += period;
            }
            m = events.recv() => {
                let Ok(m) = m else { continue };
                if let Some(bytes) = m.payload()
                    && let Ok(event) = samples.publisher.codec.decode_saga_event("sagaflow.saga-events", bytes).await
                {
                    progress.apply(event);
                }
            }
        }
    }
    let published = samples.published;
    print!("{}", progress.render(started.elapsed(), published));
    let count = |f: fn(&TypeProgress) -> u64| progress.types.values().map(f).sum::<u64>();
    println!(
        "sagaflow dev: {} sagas ended in {:.1}s: {} completed, {} compensated, {} failed",
        progress.ended(),
        started.elapsed().as_secs_f64(),
        count(|t| t.completed),
        count(|t| t.compensated),
        count(|t| t.failed),
    );
    if progress.ended_twice > 0 {
        println!(
            "sagaflow dev: {} sagas ended twice with different outcomes",
            progress.ended_twice
        );
    }
    for name in SAGA_TYPES {
        if let Some(t) = progress.types.get(name) {
            println!(
                "  {name}: {} completed, {} compensated, {} failed",
                t.completed, t.compensated, t.failed
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sagaflow_codec::messages::{SagaLifecycleEvent, SagaResult};

    fn life(id: &str, kind: LifecycleKind, step: Option<&str>, at: i64) -> SagaEvent {
        SagaEvent::Lifecycle(SagaLifecycleEvent {
            event_id: format!("{id}/{kind:?}/{at}"),
            saga_id: id.into(),
            saga_type: "order-checkout".into(),
            saga_version: 1,
            kind,
            step: step.map(str::to_owned),
            attempt: Some(1),
            detail: None,
            at,
            ..Default::default()
        })
    }

    #[test]
    fn progress_counts_outcomes_and_measures_steps_per_type() {
        let mut p = Progress::default();
        p.apply(life("s1", LifecycleKind::Started, None, 0));
        p.apply(life("s1", LifecycleKind::StepStarted, Some("reserve"), 10));
        p.apply(life(
            "s1",
            LifecycleKind::StepSucceeded,
            Some("reserve"),
            35,
        ));
        p.apply(SagaEvent::Result(SagaResult {
            saga_id: "s1".into(),
            saga_type: "order-checkout".into(),
            saga_version: 1,
            status: SagaStatus::Compensated,
            output: serde_json::Value::Null,
            error: None,
            started_at: 0,
            ended_at: 40,
        }));
        let t = &p.types["order-checkout"];
        assert_eq!((t.started, t.compensated, t.ended()), (1, 1, 1));
        assert_eq!(t.steps["reserve"], VecDeque::from([25]));
        let shown = p.render(Duration::from_secs(2), 1);
        assert!(shown.contains("reserve 25/25"), "{shown}");
        assert!(shown.contains("in flight 0"), "{shown}");
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let w: VecDeque<u64> = (1..=100).collect();
        assert_eq!(percentiles(&w), (50, 99));
        assert_eq!(percentiles(&VecDeque::new()), (0, 0));
    }
}
