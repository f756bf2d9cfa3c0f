//! The raw broker baseline on this machine: produce and consume throughput
//! and produce→consume round trips, with the client settings Sagaflow uses,
//! for each embedded storage in the same run: tansu 0.6.0's memory engine
//! (what the embedded broker used before), Sagaflow's log in memory, and
//! Sagaflow's durable log under each fsync policy.
//! Run: `cargo bench --bench broker_baseline`, or with
//! `SAGAFLOW_TEST_BOOTSTRAP=host:port` for another broker (measured alone).
//! `BASELINE_MESSAGES` and `BASELINE_ROUND_TRIPS` change the sample sizes;
//! `BASELINE_STORAGES` (comma-separated: tansu-memory, memory,
//! durable-always, durable-interval, durable-never) picks the storages.

use std::time::Duration;

use sagaflow_bus::KafkaConfig;
use sagaflow_bus::baseline::{BaselineOptions, measure};
use sagaflow_test_support::{
    self as support, BrokerConfig, Durable, EmbeddedBroker, Fsync, Storage,
};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const STORAGES: &[&str] = &[
    "tansu-memory",
    "memory",
    "durable-always",
    "durable-interval",
    "durable-never",
];

fn storage(name: &str, dir: &std::path::Path) -> Storage {
    let durable = |fsync| {
        Storage::Durable(Durable {
            fsync,
            ..Durable::new(dir.join(name))
        })
    };
    match name {
        "tansu-memory" => Storage::TansuMemory,
        "memory" => Storage::Memory,
        "durable-always" => durable(Fsync::Always),
        "durable-interval" => durable(Fsync::Interval(Duration::from_millis(100))),
        "durable-never" => durable(Fsync::Never),
        other => panic!("unknown storage {other}; known: {STORAGES:?}"),
    }
}

async fn run(kafka: &KafkaConfig, what: &str, opts: &BaselineOptions) {
    for wait in ["1", "5"] {
        let kafka = kafka.clone().with("fetch.wait.max.ms", wait);
        let baseline = measure(&kafka, &support::unique("baseline"), opts)
            .await
            .unwrap_or_else(|e| panic!("measuring the broker baseline ({what}): {e}"));
        println!("broker baseline ({what}): {baseline}");
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo test --benches` runs this with --test-ish flags; keep it small then.
    let quick = std::env::args().any(|a| a == "--test" || a == "--list");
    let opts = BaselineOptions {
        messages: env_usize("BASELINE_MESSAGES", if quick { 200 } else { 20_000 }),
        round_trips: env_usize("BASELINE_ROUND_TRIPS", if quick { 10 } else { 300 }),
        ..BaselineOptions::default()
    };
    if let Ok(external) = std::env::var(support::BOOTSTRAP_ENV)
        && !external.trim().is_empty()
    {
        run(&KafkaConfig::new(external), "external broker", &opts).await;
        return;
    }
    let names: Vec<String> = std::env::var("BASELINE_STORAGES")
        .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect())
        .unwrap_or_else(|_| STORAGES.iter().map(|s| (*s).to_owned()).collect());
    let dir = tempfile::tempdir().expect("a temporary directory");
    for name in names {
        let storage = storage(&name, dir.path());
        let what = format!("embedded, {}", storage.describe());
        let broker = EmbeddedBroker::start(BrokerConfig {
            storage,
            ..BrokerConfig::default()
        })
        .unwrap_or_else(|e| panic!("starting the {name} broker: {e}"));
        run(&KafkaConfig::new(broker.bootstrap_servers()), &what, &opts).await;
        drop(broker);
    }
}
