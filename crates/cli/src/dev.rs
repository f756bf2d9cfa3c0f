//! `sagaflow dev`: a local stack in one process, on loopback, in one of
//! three modes.
//!
//! * The demo (no `--topology`): the embedded broker, a schema registry, the
//!   orchestrator with the three worked sagas, one adapter per demo service
//!   (REST/JSON, and SOAP 1.1 for billing), the demo backends of
//!   `sagaflow-demo` (docs/demo.md), and a publisher of sample domain
//!   events: `OrderPlaced`, `BookingRequested`, `CustomerSignedUp` in turn,
//!   and each customer's `EmailVerified` a moment after the sign-up (the
//!   choreography half).
//! * Your own system (`--topology DIR`): the broker, the registry, the
//!   orchestrator with your sagas and services, and an adapter for each of
//!   your adapter files; no demo services and no sample traffic.
//! * `--broker-only`: the broker and the registry, for your own processes.
//!
//! The addresses are printed as `export SAGAFLOW_…=…` lines and written to a
//! file a shell can source. Live progress per saga type is printed as sagas
//! start and end.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use sagaflow_broker::{BrokerConfig, EmbeddedBroker};
use sagaflow_bus::KafkaConfig;
use sagaflow_codec::messages::{LifecycleKind, SagaStatus};
use sagaflow_codec::{Codec, CodecConfig, SagaEvent};
use tokio::sync::watch;

use crate::demo_events::{Publisher, Samples};
use crate::exit::{CliResult, Failure};

/// The saga types the demo runs, in the order their triggers are published.
const SAGA_TYPES: [&str; 3] = ["order-checkout", "travel-booking", "customer-onboarding"];

/// The demo's sample events per second when `--rate` is not given.
const DEMO_RATE: u32 = 20;

#[derive(Debug, Args)]
pub(crate) struct DevArgs {
    /// Run your own sagas instead of the demo: a directory with
    /// `services.yaml` and `sagas/*.yaml` (docs/saga-definitions.md). No
    /// demo services and no sample events are started.
    #[arg(long, value_name = "DIR")]
    topology: Option<PathBuf>,
    /// With --topology: a directory of adapter service files
    /// (docs/adapters.md), one `*.yaml` per service; an adapter runs for
    /// each. Default: `<topology>/adapters` when it exists.
    #[arg(long, value_name = "DIR", requires = "topology")]
    adapters: Option<PathBuf>,
    /// With --topology: the Avro schemas of the events your sagas emit
    /// (the orchestrator's `schemas:`).
    #[arg(long, value_name = "DIR", requires = "topology")]
    schemas: Option<PathBuf>,
    /// Only the broker and the schema registry, to point your own
    /// processes at (their addresses are printed and written to the env
    /// file). Runs until Ctrl-C.
    #[arg(long, conflicts_with_all = ["topology", "rate", "sagas"])]
    broker_only: bool,
    /// The demo's sample trigger events per second, taking the three saga
    /// types in turn (order, booking, sign-up); 0 publishes none. Default
    /// 20. Not with --topology: publish your own events (`sagaflow
    /// publish`).
    #[arg(long, conflicts_with = "topology")]
    rate: Option<u32>,
    /// Stop once this many sagas have ended (0: run until Ctrl-C). The
    /// demo publishes this many triggers; with --topology it counts the
    /// sagas your events start. Non-interactive runs and tests use it.
    #[arg(long, visible_alias = "orders", default_value_t = 0)]
    sagas: u64,
    /// How long after signing up a demo customer verifies their e-mail.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    verify_after: Duration,
    /// The demo: the repository root (its topology/ and schemas/ are read,
    /// never written).
    #[arg(long, default_value = ".", conflicts_with = "topology")]
    root: PathBuf,
    /// Where the stack keeps its files (generated configs, registry data,
    /// the broker's durable log): a restart with the same directory
    /// resumes. Default: `$XDG_STATE_HOME/sagaflow/dev/<mode>` (or
    /// `~/.local/state/…`), where the mode is `demo`, `broker`, or the
    /// topology directory's name and a hash of its path — never the
    /// current directory.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// The file the addresses are written to as `export` lines, for
    /// `. FILE` in another shell. Default: `<data-dir>/dev.env`.
    #[arg(long, value_name = "FILE")]
    env_file: Option<PathBuf>,
    /// The orchestrator's HTTP API and metrics (port 0 picks a free port).
    #[arg(long, env = "SAGAFLOW_DEV_HTTP", default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// The broker's address (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    broker: SocketAddr,
    /// The schema registry's address (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    registry: SocketAddr,
}

/// What `dev` runs, from its flags.
enum Mode {
    Demo { root: PathBuf, rate: u32 },
    Own(Own),
    BrokerOnly,
}

/// A user's own topology, adapters and schemas (canonical paths).
struct Own {
    topology: PathBuf,
    adapters: Option<PathBuf>,
    schemas: Option<PathBuf>,
}

fn canonical(flag: &str, path: &Path) -> CliResult<PathBuf> {
    std::fs::canonicalize(path)
        .map_err(|e| Failure::Usage(format!("{flag} {}: {e}", path.display())))
}

impl Mode {
    fn from_args(args: &DevArgs) -> CliResult<Self> {
        if args.broker_only {
            return Ok(Self::BrokerOnly);
        }
        let Some(topology) = &args.topology else {
            let root = canonical("--root", &args.root)?;
            if !root.join("topology/sagas").is_dir() {
                return Err(Failure::Usage(format!(
                    "{} has no topology/sagas: run from the repository root or pass --root (or --topology DIR for your own sagas)",
                    root.display()
                )));
            }
            return Ok(Self::Demo {
                root,
                rate: args.rate.unwrap_or(DEMO_RATE),
            });
        };
        let topology = canonical("--topology", topology)?;
        for needed in ["services.yaml", "sagas"] {
            if !topology.join(needed).exists() {
                return Err(Failure::Usage(format!(
                    "--topology {}: no {needed} there (a topology directory has services.yaml and sagas/*.yaml)",
                    topology.display()
                )));
            }
        }
        let adapters = match &args.adapters {
            Some(dir) => Some(canonical("--adapters", dir)?),
            None => Some(topology.join("adapters")).filter(|d| d.is_dir()),
        };
        let schemas = match &args.schemas {
            Some(dir) => Some(canonical("--schemas", dir)?),
            None => None,
        };
        Ok(Self::Own(Own {
            topology,
            adapters,
            schemas,
        }))
    }

    /// The data directory's name under the state directory.
    fn label(&self) -> String {
        match self {
            Self::Demo { .. } => "demo".to_owned(),
            Self::BrokerOnly => "broker".to_owned(),
            Self::Own(own) => {
                let name = own
                    .topology
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "topology".to_owned());
                let path = own.topology.to_string_lossy();
                format!("{name}-{:08x}", fnv1a(path.as_bytes()) as u32)
            }
        }
    }
}

/// FNV-1a: a hash that stays the same across Rust releases, so a data
/// directory named by it is found again after an upgrade.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `$XDG_STATE_HOME/sagaflow/dev`, else `$HOME/.local/state/sagaflow/dev`.
fn state_home(var: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let base = match var("XDG_STATE_HOME").filter(|v| v.starts_with('/')) {
        Some(state) => PathBuf::from(state),
        None => PathBuf::from(var("HOME").filter(|h| !h.is_empty())?).join(".local/state"),
    };
    Some(base.join("sagaflow/dev"))
}

fn write(path: &Path, text: String) -> CliResult {
    std::fs::write(path, text)
        .map_err(|e| Failure::Usage(format!("writing {}: {e}", path.display())))
}

/// A concrete address for `addr`: port 0 becomes a port free right now, so
/// the URLs printed at start are the real ones.
fn concrete(flag: &str, addr: SocketAddr) -> CliResult<SocketAddr> {
    if addr.port() != 0 {
        return Ok(addr);
    }
    std::net::TcpListener::bind(addr)
        .and_then(|l| l.local_addr())
        .map_err(|e| Failure::Usage(format!("{flag} {addr}: {e}")))
}

/// The addresses of the running stack, as `export` lines a shell can source.
fn env_lines(bootstrap: &str, registry_url: &str, http: Option<SocketAddr>) -> String {
    let mut out = format!(
        "export SAGAFLOW_BOOTSTRAP_SERVERS={bootstrap}\nexport SAGAFLOW_REGISTRY_URL={registry_url}\n"
    );
    if let Some(http) = http {
        out.push_str(&format!(
            "export SAGAFLOW_API_URL=http://{http}\nexport SAGAFLOW_METRICS_URL=http://{http}/metrics\n"
        ));
    }
    out
}

pub(crate) async fn run(args: DevArgs) -> CliResult {
    let mode = Mode::from_args(&args)?;
    let data_dir = match &args.data_dir {
        Some(dir) => dir.clone(),
        None => state_home(|k| std::env::var(k).ok())
            .ok_or_else(|| {
                Failure::Usage("neither XDG_STATE_HOME nor HOME is set: pass --data-dir".into())
            })?
            .join(mode.label()),
    };
    std::fs::create_dir_all(&data_dir)
        .map_err(|e| Failure::Usage(format!("--data-dir {}: {e}", data_dir.display())))?;
    let dir = canonical("--data-dir", &data_dir)?;
    let env_file = args.env_file.clone().unwrap_or_else(|| dir.join("dev.env"));
    let http = match mode {
        Mode::BrokerOnly => None,
        _ => Some(concrete("--http", args.http)?),
    };

    // The broker's log, topics and committed offsets live under the data
    // directory, so sagas in flight survive a restart of the whole stack.
    let broker = EmbeddedBroker::start(
        BrokerConfig::durable(dir.join("broker")).with_listen(concrete("--broker", args.broker)?),
    )
    .map_err(|e| Failure::Unreachable(format!("starting the broker: {e}")))?;
    let bootstrap = broker.bootstrap_servers();
    let registry = sagaflow_registry::Registry::open_dir(&dir.join("registry"))
        .await
        .map_err(|e| Failure::Usage(e.to_string()))?;
    let listener = tokio::net::TcpListener::bind(args.registry)
        .await
        .map_err(|e| Failure::Usage(format!("--registry {}: {e}", args.registry)))?;
    let registry_handle = registry
        .serve(listener)
        .map_err(|e| Failure::Usage(e.to_string()))?;
    let registry_url = registry_handle.url().to_string();

    let exports = env_lines(&bootstrap, &registry_url, http);
    write(&env_file, exports.clone())?;
    println!("sagaflow dev: broker {bootstrap}   schema registry {registry_url}");
    println!("  data              {}", dir.display());

    let result = match (&mode, http) {
        (Mode::Demo { root, rate }, Some(http)) => {
            let stack = Stack {
                dir: &dir,
                bootstrap: &bootstrap,
                registry_url: &registry_url,
                http,
            };
            run_demo(stack, root, *rate, &args, &exports, &env_file).await
        }
        (Mode::Own(own), Some(http)) => {
            let stack = Stack {
                dir: &dir,
                bootstrap: &bootstrap,
                registry_url: &registry_url,
                http,
            };
            run_own(stack, own, &args, &exports, &env_file).await
        }
        _ => {
            print_exports(&exports, &env_file);
            println!("  broker and schema registry only; Ctrl-C stops them");
            crate::signals::terminated().await;
            Ok(())
        }
    };
    let _ = registry_handle.shutdown().await;
    drop(broker);
    result
}

fn print_exports(exports: &str, env_file: &Path) {
    println!("  addresses (also in {}: `. {0}`):", env_file.display());
    for line in exports.lines() {
        println!("    {line}");
    }
}

/// The parts every mode but `--broker-only` shares.
struct Stack<'a> {
    dir: &'a Path,
    bootstrap: &'a str,
    registry_url: &'a str,
    http: SocketAddr,
}

impl Stack<'_> {
    fn kafka_yaml(&self) -> String {
        format!("kafka:\n  bootstrap-servers: {}\n", self.bootstrap)
    }

    fn codec_yaml(&self) -> String {
        format!(
            "codec:\n  registry:\n    url: {}\n  default-format:\n    format: avro\n",
            self.registry_url
        )
    }

    /// Starts the orchestrator on `sagas`, `services` and `schemas`.
    async fn orchestrator(
        &self,
        sagas: &Path,
        services: &Path,
        schemas: Option<&Path>,
        stop: watch::Receiver<bool>,
    ) -> CliResult<OrchestratorTask> {
        let path = self.dir.join("orchestrator.yaml");
        let schemas = schemas
            .map(|s| format!("schemas: {}\n", s.display()))
            .unwrap_or_default();
        write(
            &path,
            format!(
                "{}{}sagas:\n  dir: {}\n  services: {}\n{schemas}partitions: 4\nhttp:\n  listen: {}\n",
                self.kafka_yaml(),
                self.codec_yaml(),
                sagas.display(),
                services.display(),
                self.http,
            ),
        )?;
        let cfg = sagaflow_orchestrator::config::OrchestratorConfig::load(&path)
            .map_err(|e| Failure::Usage(e.to_string()))?;
        let task = tokio::spawn(sagaflow_orchestrator::app::run(cfg, stop.clone()));
        // The console follows the same topics (docs/console.md).
        crate::console::dev_hook(
            self.dir,
            &self.kafka_yaml(),
            &self.codec_yaml(),
            self.http,
            stop,
        )
        .await?;
        Ok(task)
    }

    /// Starts an adapter for the service file `service` (docs/adapters.md).
    async fn adapter(
        &self,
        name: &str,
        service: &Path,
    ) -> CliResult<sagaflow_adapter::RunningAdapter> {
        let process = self.dir.join(format!("{name}.adapter.yaml"));
        write(
            &process,
            format!(
                "{}{}service: {}\ngroup-id: sagaflow-dev-adapter-{name}\nhttp:\n  listen: 127.0.0.1:0\n",
                self.kafka_yaml(),
                self.codec_yaml(),
                service.display(),
            ),
        )?;
        let config = sagaflow_adapter::ProcessConfig::load(&process)
            .map_err(|e| Failure::Usage(format!("{}: {e}", service.display())))?;
        sagaflow_adapter::AdapterRuntime::new(config)
            .map_err(|e| Failure::Usage(format!("{}: {e}", service.display())))?
            .start()
            .await
            .map_err(|e| Failure::Unreachable(e.to_string()))
    }

    fn print_urls(&self, adapters: &[(String, sagaflow_adapter::RunningAdapter)]) {
        let http = self.http;
        println!(
            "  orchestrator API  http://{http}/v1/sagas   (sagaflow saga list --api http://{http})"
        );
        println!("  metrics           http://{http}/metrics");
        let adapter_list: Vec<String> = adapters
            .iter()
            .map(|(s, a)| format!("{s} http://{}/metrics", a.http_addr()))
            .collect();
        if adapter_list.is_empty() {
            println!("  adapters          none");
        } else {
            println!("  adapters          {}", adapter_list.join(", "));
        }
    }
}

type OrchestratorTask = tokio::task::JoinHandle<Result<(), sagaflow_orchestrator::app::AppError>>;

/// Waits until the orchestrator's `/readyz` is green (its topics exist and
/// it owns its partitions), so that what `dev` prints next is usable; or
/// returns its error if it stopped (e.g. invalid saga definitions).
async fn wait_ready(http: SocketAddr, orchestrator: &mut OrchestratorTask) -> CliResult {
    let url = format!("http://{http}/readyz");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if orchestrator.is_finished() {
            return Err(match orchestrator.await {
                Ok(Err(e)) => Failure::Usage(format!("the orchestrator stopped: {e}")),
                Ok(Ok(())) => Failure::Usage("the orchestrator stopped at start".into()),
                Err(e) => Failure::Usage(format!("the orchestrator failed: {e}")),
            });
        }
        if let Ok(r) = client
            .get(&url)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            && r.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Failure::Unreachable(format!(
                "the orchestrator was not ready at {url} within 120 s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn stop_all(
    stop_tx: watch::Sender<bool>,
    adapters: Vec<(String, sagaflow_adapter::RunningAdapter)>,
    orchestrator: OrchestratorTask,
) {
    let _ = stop_tx.send(true);
    for (_, a) in adapters {
        let _ = a.shutdown().await;
    }
    let _ = orchestrator.await;
}

async fn run_demo(
    stack: Stack<'_>,
    root: &Path,
    rate: u32,
    args: &DevArgs,
    exports: &str,
    env_file: &Path,
) -> CliResult {
    // The demo backends (crates/demo) decide outcomes from the ids.
    let backends = sagaflow_demo::DemoServices::start()
        .await
        .map_err(|e| Failure::Unreachable(format!("starting the demo services: {e}")))?;
    let backend_url = backends.url();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut orchestrator = stack
        .orchestrator(
            &root.join("topology/sagas"),
            &root.join("topology/services.yaml"),
            Some(&root.join("schemas")),
            stop_rx,
        )
        .await?;
    let mut adapters = Vec::new();
    for service in sagaflow_demo::adapters::services() {
        let Some(definition) = sagaflow_demo::adapters::service_yaml(service, &backend_url) else {
            continue;
        };
        let file = stack.dir.join(format!("{service}.yaml"));
        write(&file, definition)?;
        adapters.push((service.to_owned(), stack.adapter(service, &file).await?));
    }
    if let Err(e) = wait_ready(stack.http, &mut orchestrator).await {
        let _ = stop_tx.send(true);
        for (_, a) in adapters {
            let _ = a.shutdown().await;
        }
        return Err(e);
    }
    stack.print_urls(&adapters);
    println!("  demo services     {backend_url}");
    print_exports(exports, env_file);
    if rate > 0 {
        println!(
            "  publishing {rate} trigger events/s (OrderPlaced, BookingRequested, CustomerSignedUp; EmailVerified {} later); Ctrl-C stops everything",
            humantime::format_duration(args.verify_after)
        );
    } else {
        println!("  no sample events (--rate 0); Ctrl-C stops everything");
    }
    let kafka = KafkaConfig::new(stack.bootstrap);
    let samples = if rate > 0 {
        let publisher = Publisher::new(&kafka, stack.registry_url, &root.join("schemas"))?;
        Some((Samples::new(publisher, args.verify_after), rate))
    } else {
        None
    };
    let result = watch_progress(&kafka, stack.registry_url, samples, &SAGA_TYPES, args.sagas).await;
    stop_all(stop_tx, adapters, orchestrator).await;
    drop(backends);
    result
}

async fn run_own(
    stack: Stack<'_>,
    own: &Own,
    args: &DevArgs,
    exports: &str,
    env_file: &Path,
) -> CliResult {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut orchestrator = stack
        .orchestrator(
            &own.topology.join("sagas"),
            &own.topology.join("services.yaml"),
            own.schemas.as_deref(),
            stop_rx,
        )
        .await?;
    let mut adapters = Vec::new();
    if let Some(dir) = &own.adapters {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Failure::Usage(format!("--adapters {}: {e}", dir.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
            .collect();
        files.sort();
        for file in files {
            let name = file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            match stack.adapter(&name, &file).await {
                Ok(adapter) => adapters.push((name, adapter)),
                Err(e) => {
                    stop_all(stop_tx, adapters, orchestrator).await;
                    return Err(e);
                }
            }
        }
    }
    if let Err(e) = wait_ready(stack.http, &mut orchestrator).await {
        let _ = stop_tx.send(true);
        for (_, a) in adapters {
            let _ = a.shutdown().await;
        }
        return Err(e);
    }
    stack.print_urls(&adapters);
    println!("  topology          {}", own.topology.display());
    print_exports(exports, env_file);
    println!(
        "  no sample events: publish your own (e.g. `sagaflow publish --topic T events.jsonl` after `. {}`); Ctrl-C stops everything",
        env_file.display()
    );
    let kafka = KafkaConfig::new(stack.bootstrap);
    let result = watch_progress(&kafka, stack.registry_url, None, &[], args.sagas).await;
    stop_all(stop_tx, adapters, orchestrator).await;
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
                    LifecycleKind::StepStarted => {
                        self.open_steps.entry((e.saga_id, step)).or_insert(e.at);
                    }
                    LifecycleKind::StepSucceeded | LifecycleKind::StepFailed => {
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

    /// The saga types to show: `order` when given (the demo), else every
    /// type seen so far, by name.
    fn names<'a>(&'a self, order: &'a [&'a str]) -> Vec<&'a str> {
        if order.is_empty() {
            self.types.keys().map(String::as_str).collect()
        } else {
            order.to_vec()
        }
    }

    /// The live view. `published` is the number of sample triggers sent,
    /// when `dev` publishes them.
    /// `published`: the demo's triggers published, and its e-mail
    /// verifications still due (shown while any are).
    fn render(&self, elapsed: Duration, published: Option<(u64, usize)>, order: &[&str]) -> String {
        let secs = elapsed.as_secs_f64().max(0.001);
        let ended = self.ended();
        let started: u64 = self.types.values().map(|t| t.started).sum();
        let mut out = match published {
            Some((published, due)) => format!(
                "[{secs:>7.1}s] published {published}  ended {ended} ({:.1} sagas/s)  in flight {}{}\n",
                ended as f64 / secs,
                published.saturating_sub(ended),
                if due > 0 {
                    format!("  verifications due {due}")
                } else {
                    String::new()
                }
            ),
            None => format!(
                "[{secs:>7.1}s] started {started}  ended {ended} ({:.1} sagas/s)  in flight {}\n",
                ended as f64 / secs,
                started.saturating_sub(ended)
            ),
        };
        out.push_str(&format!(
            "  {:<22}{:>9}{:>11}{:>13}{:>8}{:>11}\n",
            "saga type", "started", "completed", "compensated", "failed", "in flight"
        ));
        let names = self.names(order);
        for name in &names {
            let t = self.types.get(*name);
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
        for name in &names {
            let Some(t) = self.types.get(*name).filter(|t| !t.steps.is_empty()) else {
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

/// Follows the saga events and prints progress every 2 s, publishing the
/// demo's sample events at `rate` per second when `samples` is given;
/// until Ctrl-C, or until `sagas` sagas have ended (when not 0).
async fn watch_progress(
    kafka: &KafkaConfig,
    registry_url: &str,
    mut samples: Option<(Samples, u32)>,
    order: &[&str],
    sagas: u64,
) -> CliResult {
    let codec: CodecConfig = serde_json::from_value(serde_json::json!({
        "registry": {"url": registry_url},
        "default-format": {"format": "avro"}
    }))
    .map_err(|e| Failure::Usage(e.to_string()))?;
    let codec = Codec::new(codec).map_err(|e| Failure::Usage(e.to_string()))?;
    let events = kafka
        .consumer(&format!("sagaflow-dev-{}", std::process::id()))
        .map_err(|e| Failure::Unreachable(e.to_string()))?;
    // Every partition from its start, by assignment: no group to join
    // before the first event is read, and the view counts both runs of a
    // restarted stack.
    let partitions = saga_event_partitions(&events)?;
    let mut from_start = TopicPartitionList::new();
    for &p in &partitions {
        from_start
            .add_partition_offset(SAGA_EVENTS, p, Offset::Beginning)
            .map_err(|e| Failure::Unreachable(e.to_string()))?;
    }
    events
        .assign(&from_start)
        .map_err(|e| Failure::Unreachable(e.to_string()))?;
    // Where each partition has been read to.
    let mut read_to: HashMap<i32, i64> = HashMap::new();

    let started = Instant::now();
    let period = Duration::from_secs_f64(1.0 / f64::from(samples.as_ref().map_or(1, |s| s.1)));
    let mut next_publish = tokio::time::Instant::now();
    let mut next_print = Instant::now() + Duration::from_secs(2);
    let mut progress = Progress::default();
    let stop = crate::signals::terminated();
    tokio::pin!(stop);
    let published = |samples: &Option<(Samples, u32)>| {
        samples
            .as_ref()
            .map(|s| (s.0.published, s.0.verifications_due()))
    };
    let mut stopped = false;
    loop {
        if sagas > 0 && progress.ended() >= sagas {
            break;
        }
        if Instant::now() >= next_print {
            print!(
                "{}",
                progress.render(started.elapsed(), published(&samples), order)
            );
            next_print += Duration::from_secs(2);
        }
        let may_publish = samples
            .as_ref()
            .is_some_and(|s| sagas == 0 || s.0.published < sagas);
        let verify_due = samples.as_ref().and_then(|s| s.0.next_verification());
        tokio::select! {
            _ = &mut stop => {
                stopped = true;
                break;
            }
            _ = tokio::time::sleep_until(verify_due.unwrap_or(next_publish)), if verify_due.is_some() => {
                if let Some((s, _)) = &mut samples {
                    s.publish_verification().await?;
                }
            }
            _ = tokio::time::sleep_until(next_publish), if may_publish => {
                if let Some((s, _)) = &mut samples {
                    s.publish_next().await?;
                }
                next_publish += period;
            }
            _ = tokio::time::sleep_until(next_print.into()) => {}
            m = events.recv() => {
                if let Ok(m) = m {
                    count(&m, &codec, &mut progress, &mut read_to).await;
                }
            }
        }
    }
    if stopped {
        // Stopped: the summary counts every saga that ended before the
        // stop, so read each partition to the end it had then (a bounded
        // wait: a broker gone quiet does not hold the stop up).
        let ends: Vec<(i32, i64)> = partitions
            .iter()
            .filter_map(|&p| {
                events
                    .fetch_watermarks(SAGA_EVENTS, p, Duration::from_secs(2))
                    .ok()
                    .map(|(_, high)| (p, high))
            })
            .collect();
        let behind = |read_to: &HashMap<i32, i64>| {
            ends.iter()
                .any(|(p, high)| read_to.get(p).copied().unwrap_or(0) < *high)
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while behind(&read_to) {
            let Ok(m) = tokio::time::timeout_at(deadline, events.recv()).await else {
                break;
            };
            if let Ok(m) = m {
                count(&m, &codec, &mut progress, &mut read_to).await;
            }
        }
    }
    print!(
        "{}",
        progress.render(started.elapsed(), published(&samples), order)
    );
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
    for name in progress.names(order) {
        if let Some(t) = progress.types.get(name) {
            println!(
                "  {name}: {} completed, {} compensated, {} failed",
                t.completed, t.compensated, t.failed
            );
        }
    }
    Ok(())
}

/// The topic whose lifecycle events and results `dev` counts.
const SAGA_EVENTS: &str = "sagaflow.saga-events";

/// Counts one record of [`SAGA_EVENTS`] and notes how far its partition
/// has been read.
async fn count(
    m: &rdkafka::message::BorrowedMessage<'_>,
    codec: &Codec,
    progress: &mut Progress,
    read_to: &mut HashMap<i32, i64>,
) {
    read_to.insert(m.partition(), m.offset() + 1);
    if let Some(bytes) = m.payload()
        && let Ok(event) = codec.decode_saga_event(SAGA_EVENTS, bytes).await
    {
        progress.apply(event);
    }
}

/// The partitions of [`SAGA_EVENTS`] (the orchestrator, ready, created it).
fn saga_event_partitions(events: &StreamConsumer) -> CliResult<Vec<i32>> {
    let metadata = events
        .fetch_metadata(Some(SAGA_EVENTS), Duration::from_secs(10))
        .map_err(|e| Failure::Unreachable(format!("{SAGA_EVENTS}: {e}")))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == SAGA_EVENTS)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(Failure::Unreachable(format!(
            "{SAGA_EVENTS} has no partitions on the broker"
        )));
    }
    Ok(partitions)
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
        let shown = p.render(Duration::from_secs(2), Some((1, 0)), &SAGA_TYPES);
        assert!(shown.contains("reserve 25/25"), "{shown}");
        assert!(shown.contains("in flight 0"), "{shown}");
        assert!(!shown.contains("verifications due"), "{shown}");
        let due = p.render(Duration::from_secs(2), Some((1, 2)), &SAGA_TYPES);
        assert!(due.contains("in flight 0  verifications due 2\n"), "{due}");
    }

    #[test]
    fn the_data_dir_defaults_to_the_state_home_never_the_current_directory() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(name, _)| *name == k)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert_eq!(
            state_home(env(&[("HOME", "/home/ann")])),
            Some(PathBuf::from("/home/ann/.local/state/sagaflow/dev"))
        );
        assert_eq!(
            state_home(env(&[("HOME", "/home/ann"), ("XDG_STATE_HOME", "/s")])),
            Some(PathBuf::from("/s/sagaflow/dev"))
        );
        // A relative XDG_STATE_HOME is invalid by the spec: ignored.
        assert_eq!(
            state_home(env(&[("HOME", "/h"), ("XDG_STATE_HOME", "rel")])),
            Some(PathBuf::from("/h/.local/state/sagaflow/dev"))
        );
        assert_eq!(state_home(env(&[])), None);
        // One directory per topology, stable across runs and releases.
        let own = |p: &str| {
            Mode::Own(Own {
                topology: PathBuf::from(p),
                adapters: None,
                schemas: None,
            })
            .label()
        };
        assert_eq!(own("/src/shop/topology"), own("/src/shop/topology"));
        assert_ne!(own("/src/shop/topology"), own("/src/other/topology"));
        assert!(own("/src/shop/topology").starts_with("topology-"));
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn the_env_file_exports_what_the_cli_reads() {
        let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let lines = env_lines("127.0.0.1:9092", "http://127.0.0.1:8081", Some(addr));
        assert_eq!(
            lines,
            "export SAGAFLOW_BOOTSTRAP_SERVERS=127.0.0.1:9092\n\
             export SAGAFLOW_REGISTRY_URL=http://127.0.0.1:8081\n\
             export SAGAFLOW_API_URL=http://127.0.0.1:8080\n\
             export SAGAFLOW_METRICS_URL=http://127.0.0.1:8080/metrics\n"
        );
        assert!(!env_lines("b:1", "http://r", None).contains("API_URL"));
    }

    #[test]
    fn without_a_publisher_the_view_counts_started_sagas_of_every_type_seen() {
        let mut p = Progress::default();
        let mut e = life("s1", LifecycleKind::Started, None, 0);
        if let SagaEvent::Lifecycle(l) = &mut e {
            l.saga_type = "refund".into();
        }
        p.apply(e);
        let shown = p.render(Duration::from_secs(2), None, &[]);
        assert!(shown.contains("started 1  ended 0"), "{shown}");
        assert!(shown.contains("in flight 1"), "{shown}");
        assert!(shown.contains("  refund "), "{shown}");
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let w: VecDeque<u64> = (1..=100).collect();
        assert_eq!(percentiles(&w), (50, 99));
        assert_eq!(percentiles(&VecDeque::new()), (0, 0));
    }
}
