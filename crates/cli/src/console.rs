//! `sagaflow console --config FILE`: the saga history and web console;
//! `sagaflow console bench`: index and search figures of its store.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use sagaflow_console::{ConsoleConfig, ConsoleError};
use tokio::sync::watch;

use crate::exit::{CliResult, Failure};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct ConsoleArgs {
    /// The console's configuration file (YAML).
    #[arg(long, value_name = "FILE", env = "SAGAFLOW_CONSOLE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<ConsoleCommand>,
}

#[derive(Debug, Subcommand)]
enum ConsoleCommand {
    /// Fill a fresh history file with synthetic sagas and time filtered
    /// searches (the store only, no Kafka). Prints JSON.
    Bench {
        /// Sagas to index.
        #[arg(long, default_value_t = 100_000)]
        sagas: u64,
        /// The file to (re)create.
        #[arg(long, default_value = "target/console-bench.db")]
        db: PathBuf,
        /// Records per transaction.
        #[arg(long, default_value_t = 2000)]
        batch: usize,
        /// Runs of each search.
        #[arg(long, default_value_t = 200)]
        runs: usize,
        /// Keep the file afterwards (it is removed by default).
        #[arg(long)]
        keep: bool,
    },
}

fn failure(e: ConsoleError) -> Failure {
    match e {
        ConsoleError::Config(_) | ConsoleError::Listen { .. } | ConsoleError::Database { .. } => {
            Failure::Usage(e.to_string())
        }
        _ => Failure::Unreachable(e.to_string()),
    }
}

pub(crate) async fn run(args: ConsoleArgs) -> CliResult {
    if let Some(ConsoleCommand::Bench {
        sagas,
        db,
        batch,
        runs,
        keep,
    }) = args.command
    {
        let report = sagaflow_console::bench::run(&db, sagas, batch.max(1), runs.max(1))
            .await
            .map_err(failure)?;
        if !keep {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
            }
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
        return Ok(());
    }
    let Some(file) = args.config else {
        return Err(Failure::Usage(
            "`sagaflow console` needs `--config FILE` (or `sagaflow console bench`)".into(),
        ));
    };
    let source = std::fs::read_to_string(&file)
        .map_err(|e| Failure::Usage(format!("{}: cannot read: {e}", file.display())))?;
    let cfg = ConsoleConfig::from_yaml(&file, &source).map_err(failure)?;
    let validated = cfg.validate().map_err(failure)?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        crate::signals::terminated().await;
        tracing::info!("console: stopping");
        let _ = tx.send(true);
    });
    sagaflow_console::run(validated, rx).await.map_err(failure)
}

/// `sagaflow dev`'s console: writes `console.yaml` into the data
/// directory (history in `console.db` there), starts the console in this
/// process on a free loopback port next to the orchestrator's, and prints
/// its URL. Operator actions need `SAGAFLOW_CONSOLE_OPERATOR_TOKEN` set
/// when `dev` starts; without it the console is read-only.
#[cfg(feature = "dev")]
pub(crate) async fn dev_hook(
    dir: &std::path::Path,
    kafka: &str,
    codec: &str,
    orchestrator: std::net::SocketAddr,
    stop: watch::Receiver<bool>,
) -> CliResult {
    const TOKEN_ENV: &str = "SAGAFLOW_CONSOLE_OPERATOR_TOKEN";
    let port = std::net::TcpListener::bind((orchestrator.ip(), 0))
        .and_then(|l| l.local_addr())
        .map_err(|e| Failure::Usage(format!("console: no free port: {e}")))?
        .port();
    let listen = std::net::SocketAddr::new(orchestrator.ip(), port);
    let operator = std::env::var(TOKEN_ENV).is_ok_and(|t| !t.is_empty());
    let path = dir.join("console.yaml");
    let yaml = format!(
        "{kafka}{codec}database: console.db\nretention: 7d\ngroup-id: sagaflow-dev-console\nhttp:\n  listen: {listen}\n{}orchestrator:\n  url: http://{orchestrator}\n",
        if operator {
            format!("  operator-token-env: {TOKEN_ENV}\n")
        } else {
            String::new()
        }
    );
    std::fs::write(&path, &yaml).map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))?;
    let validated = ConsoleConfig::from_yaml(&path, &yaml)
        .and_then(ConsoleConfig::validate)
        .map_err(failure)?;
    tokio::spawn(async move {
        if let Err(e) = sagaflow_console::run(validated, stop).await {
            tracing::warn!(error = %e, "the dev console stopped");
        }
    });
    println!(
        "  console           http://{listen}/   ({})",
        if operator {
            "operator token from SAGAFLOW_CONSOLE_OPERATOR_TOKEN"
        } else {
            "read-only: set SAGAFLOW_CONSOLE_OPERATOR_TOKEN to retry, abort and redrive"
        }
    );
    Ok(())
}
