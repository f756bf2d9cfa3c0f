//! `sagaflow dev`: the local stack in one process, on loopback — the
//! embedded broker, a schema registry, the orchestrator, one adapter per
//! order-checkout service, the demo backends of `sagaflow-demo`
//! (docs/demo.md), and a publisher of sample
//! `OrderPlaced` events — with progress printed as sagas end.
//!
//! Today it runs the order-checkout saga only; the demo services for the
//! travel and onboarding sagas exist (SOAP billing, CRM, ...) but no adapters
//! or sample events for them are started here yet.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use rdkafka::Message;
use rdkafka::consumer::Consumer;
use rdkafka::producer::FutureRecord;
use sagaflow_broker::{BrokerConfig, EmbeddedBroker};
use sagaflow_bus::KafkaConfig;
use sagaflow_codec::messages::SagaStatus;
use sagaflow_codec::{Codec, CodecConfig, SagaEvent};
use serde_json::json;
use tokio::sync::watch;

use crate::exit::{CliResult, Failure};

const SERVICES: [(&str, &[(&str, &str)]); 4] = [
    (
        "inventory",
        &[("reserve", "reservation_id"), ("release", "")],
    ),
    ("fraud", &[("screen", "verdict")]),
    ("payment", &[("charge", "payment_id"), ("refund", "")]),
    ("shipping", &[("schedule", "tracking_number")]),
];

#[derive(Debug, Args)]
pub(crate) struct DevArgs {
    /// Sample orders published per second.
    #[arg(long, default_value_t = 20)]
    rate: u32,
    /// Stop after this many orders have ended (0: run until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    orders: u64,
    /// The repository root (topology/ and schemas/ are read from it).
    #[arg(long, default_value = ".")]
    root: PathBuf,
    /// Where the stack keeps its files (configs, registry data).
    #[arg(long, default_value = ".sagaflow/dev")]
    data_dir: PathBuf,
    /// The orchestrator's HTTP API (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: std::net::SocketAddr,
}

fn write(path: &Path, text: String) -> CliResult {
    std::fs::write(path, text)
        .map_err(|e| Failure::Usage(format!("writing {}: {e}", path.display())))
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

    let broker = EmbeddedBroker::start(BrokerConfig::default())
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

    // The demo backends (crates/demo) decide outcomes from the order ids.
    let backends = sagaflow_demo::DemoServices::start()
        .await
        .map_err(|e| Failure::Unreachable(format!("starting the demo services: {e}")))?;
    let backend_url = backends.url();

    let kafka = format!("kafka:\n  bootstrap-servers: {bootstrap}\n");
    let codec = format!(
        "codec:\n  registry:\n    url: {registry_url}\n  default-format:\n    format: avro\n"
    );
    write(
        &dir.join("orchestrator.yaml"),
        format!(
            "{kafka}{codec}sagas:\n  dir: {}\n  services: {}\nschemas: {}\npartitions: 4\nhttp:\n  listen: {}\n",
            root.join("topology/sagas").display(),
            root.join("topology/services.yaml").display(),
            root.join("schemas").display(),
            args.http
        ),
    )?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let cfg =
        sagaflow_orchestrator::config::OrchestratorConfig::load(&dir.join("orchestrator.yaml"))
            .map_err(|e| Failure::Usage(e.to_string()))?;
    let orchestrator = tokio::spawn(sagaflow_orchestrator::app::run(cfg, stop_rx.clone()));

    let mut adapters = Vec::new();
    for (service, ops) in SERVICES {
        let mut y = format!("service: {service}\nbase-urls:\n  - {backend_url}\noperations:\n");
        for (op, field) in ops {
            y.push_str(&format!(
                "  {op}:\n    rest:\n      method: POST\n      path: /{service}/{op}\n      body: \"{{{{ input }}}}\"\n      statuses:\n        business-failure: [402, 409]\n"
            ));
            if !field.is_empty() {
                y.push_str(&format!("      response:\n        {field}: /{field}\n"));
            }
        }
        write(&dir.join(format!("{service}.yaml")), y)?;
        let process = dir.join(format!("{service}.adapter.yaml"));
        write(
            &process,
            format!("{kafka}{codec}service: {service}.yaml\nhttp:\n  listen: 127.0.0.1:0\n"),
        )?;
        let config = sagaflow_adapter::ProcessConfig::load(&process)
            .map_err(|e| Failure::Usage(e.to_string()))?;
        let adapter = sagaflow_adapter::AdapterRuntime::new(config)
            .map_err(|e| Failure::Usage(e.to_string()))?
            .start()
            .await
            .map_err(|e| Failure::Unreachable(e.to_string()))?;
        adapters.push(adapter);
    }

    println!("sagaflow dev: broker {bootstrap}, schema registry {registry_url}");
    println!(
        "  orchestrator API http://127.0.0.1:8080/v1/sagas   metrics http://127.0.0.1:8080/metrics"
    );
    println!(
        "  publishing {} OrderPlaced events/s to orders.events; Ctrl-C stops everything",
        args.rate
    );

    let result = publish_and_watch(&bootstrap, &registry_url, &root, &args).await;
    let _ = stop_tx.send(true);
    for a in adapters {
        let _ = a.shutdown().await;
    }
    let _ = orchestrator.await;
    let _ = registry_handle.shutdown().await;
    drop(broker);
    result
}

async fn publish_and_watch(
    bootstrap: &str,
    registry_url: &str,
    root: &Path,
    args: &DevArgs,
) -> CliResult {
    let kafka = KafkaConfig::new(bootstrap).with("fetch.wait.max.ms", "5");
    let producer = kafka
        .producer()
        .map_err(|e| Failure::Unreachable(e.to_string()))?;
    let codec: CodecConfig = serde_json::from_value(json!({
        "registry": {"url": registry_url},
        "default-format": {"format": "avro"}
    }))
    .map_err(|e| Failure::Usage(e.to_string()))?;
    let codec = Codec::new(codec).map_err(|e| Failure::Usage(e.to_string()))?;
    let schema_text =
        std::fs::read_to_string(root.join("schemas/examples/orders/OrderPlaced.avsc"))
            .map_err(|e| Failure::Usage(e.to_string()))?;
    let schema = sagaflow_codec::apache_avro::Schema::parse_str(&schema_text)
        .map_err(|e| Failure::Usage(e.to_string()))?;
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
    let (mut published, mut completed, mut compensated, mut failed) = (0u64, 0u64, 0u64, 0u64);
    let stop = crate::signals::terminated();
    tokio::pin!(stop);
    loop {
        let ended = completed + compensated + failed;
        if args.orders > 0 && ended >= args.orders {
            break;
        }
        if Instant::now() >= next_print {
            let secs = started.elapsed().as_secs_f64();
            println!(
                "[{secs:>6.1}s] published {published}  completed {completed}  compensated {compensated}  failed {failed}  in flight {}  ({:.1} sagas/s)",
                published.saturating_sub(ended),
                ended as f64 / secs
            );
            next_print += Duration::from_secs(2);
        }
        let may_publish = args.orders == 0 || published < args.orders;
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep_until(next_publish), if may_publish => {
                published += 1;
                let order_id = format!("o-{published}");
                let total: i64 = if published.is_multiple_of(4) { 150_000 } else { 4_990 };
                let event = sagaflow_demo::samples::order_placed(
                    &order_id,
                    &format!("c-{}", published % 17),
                    total,
                    1_700_000_000_000i64 + published as i64,
                );
                let value = sagaflow_codec::json::json_to_avro(&event, &schema).map_err(Failure::Usage)?;
                let bytes = codec
                    .encode_avro_value("orders.events", "io.sagaflow.examples.orders.OrderPlaced", &schema_text, value)
                    .await
                    .map_err(|e| Failure::Unreachable(e.to_string()))?;
                producer
                    .send(FutureRecord::to("orders.events").key(&order_id).payload(&bytes), Duration::from_secs(10))
                    .await
                    .map_err(|(e, _)| Failure::Unreachable(e.to_string()))?;
                next_publish += period;
            }
            m = events.recv() => {
                let Ok(m) = m else { continue };
                if let Some(bytes) = m.payload()
                    && let Ok(SagaEvent::Result(r)) = codec.decode_saga_event("sagaflow.saga-events", bytes).await
                {
                    match r.status {
                        SagaStatus::Completed => completed += 1,
                        SagaStatus::Compensated => compensated += 1,
                        SagaStatus::Failed => failed += 1,
                    }
                }
            }
        }
    }
    println!(
        "sagaflow dev: {} sagas ended in {:.1}s: {completed} completed, {compensated} compensated, {failed} failed",
        completed + compensated + failed,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
