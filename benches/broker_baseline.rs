//! The raw broker baseline on this machine: produce and consume throughput
//! and produce→consume round trips, with the client settings Sagaflow uses.
//! Run: `cargo bench --bench broker_baseline` (embedded broker, memory
//! storage) or with `SAGAFLOW_TEST_BOOTSTRAP=host:port` for another broker.
//! `BASELINE_MESSAGES` and `BASELINE_ROUND_TRIPS` change the sample sizes.

use sagaflow_bus::baseline::{BaselineOptions, measure};
use sagaflow_test_support as support;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
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
    for wait in ["1", "5"] {
        let kafka = support::kafka().with("fetch.wait.max.ms", wait);
        let baseline = measure(&kafka, &support::unique("baseline"), &opts)
            .await
            .unwrap_or_else(|e| panic!("measuring the broker baseline: {e}"));
        println!("broker baseline ({} broker): {baseline}", broker_kind());
    }
}

fn broker_kind() -> &'static str {
    if std::env::var(support::BOOTSTRAP_ENV).is_ok_and(|v| !v.trim().is_empty()) {
        "external"
    } else {
        "embedded tansu 0.6.0, memory storage"
    }
}
