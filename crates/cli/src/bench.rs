//! `sagaflow bench`: the orchestrator benchmark (`sagaflow_bench`), with
//! the stack on loopback in this process and the restore phase in a child
//! `sagaflow orchestrator` process.

use std::path::PathBuf;

use clap::Args;

use crate::exit::{CliResult, Failure};

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Sagas published at once for the throughput figure.
    #[arg(long, default_value_t = 5_000)]
    sagas: usize,
    /// Offered load (sagas/s) for the latency figure.
    #[arg(long, default_value_t = 300)]
    rate: u32,
    /// How long the offered load runs, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    /// In-flight sagas for the restore figure (0 skips it).
    #[arg(long, default_value_t = 100_000)]
    restore_sagas: usize,
    /// Partitions of the internal topics.
    #[arg(long, default_value_t = 6)]
    partitions: u32,
    /// The orchestrator's max-batch: larger batches trade latency for throughput.
    #[arg(long, default_value_t = 256)]
    max_batch: u32,
    /// The orchestrator's pipeline-depth: batches whose effects may await
    /// their acks while the next are processed (1: none).
    #[arg(long, default_value_t = 8)]
    pipeline_depth: u32,
    /// Consumers' fetch.wait.max.ms: how long a fetch on an empty partition
    /// is held (the consumers' default, 1000).
    #[arg(long, default_value = sagaflow_bus::DEFAULT_FETCH_WAIT_MS)]
    fetch_wait_ms: u32,
    /// The repository root (topology/ and schemas/ are read from it).
    #[arg(long, default_value = ".")]
    root: PathBuf,
    /// Use this broker instead of an embedded one.
    #[arg(long)]
    bootstrap_servers: Option<String>,
    /// Rounds of the metrics-overhead figure: each is one throughput run
    /// unscraped and one with every /metrics endpoint scraped every second
    /// (0 skips it).
    #[arg(long, default_value_t = 2)]
    metrics_rounds: usize,
    /// Clients of each closed-loop phase through the synchronous facade
    /// (comma-separated; `0` skips them).
    #[arg(long, value_delimiter = ',', default_values_t = [10, 100])]
    closed_loop: Vec<usize>,
    /// How long each closed-loop phase runs, in seconds.
    #[arg(long, default_value_t = 10)]
    closed_seconds: u32,
    /// How long the idle phase watches the stack with nothing to do, in
    /// seconds (0 skips it).
    #[arg(long, default_value_t = 10)]
    idle_seconds: u32,
}

pub(crate) async fn run(args: BenchArgs) -> CliResult {
    if args.sagas == 0 || args.rate == 0 || args.seconds == 0 {
        return Err(Failure::Usage(
            "--sagas, --rate and --seconds must be at least 1".into(),
        ));
    }
    if !args.root.join("topology/sagas").is_dir() {
        return Err(Failure::Usage(format!(
            "{} has no topology/sagas: run from the repository root or pass --root",
            args.root.display()
        )));
    }
    let options = sagaflow_bench::Options {
        sagas: args.sagas,
        offered_rate: args.rate,
        offered_seconds: args.seconds,
        restore_sagas: args.restore_sagas,
        partitions: args.partitions,
        max_batch: args.max_batch,
        pipeline_depth: args.pipeline_depth.max(1),
        fetch_wait_ms: args.fetch_wait_ms,
        root: args.root,
        binary: std::env::current_exe().ok(),
        bootstrap_servers: args.bootstrap_servers,
        metrics_rounds: args.metrics_rounds,
        closed_loop: args.closed_loop.into_iter().filter(|n| *n > 0).collect(),
        closed_seconds: args.closed_seconds,
        idle_seconds: args.idle_seconds,
    };
    let report = sagaflow_bench::run(options)
        .await
        .map_err(|e| Failure::Unreachable(format!("{e:#}")))?;
    print!("{report}");
    Ok(())
}
