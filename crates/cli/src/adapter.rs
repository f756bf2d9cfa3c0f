//! `sagaflow adapter --config <file>`: run one service's adapter process.

use std::path::PathBuf;

use clap::Args;
use sagaflow_adapter::{AdapterRuntime, ProcessConfig, RuntimeError};

use crate::exit::{CliResult, Failure};

#[derive(Debug, Args)]
pub(crate) struct AdapterArgs {
    /// The adapter process config (Kafka, codec, service config file …);
    /// see docs/adapters.md, "Running an adapter".
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
}

/// Runs until SIGINT or SIGTERM, then stops gracefully: no new commands
/// are read, in-flight ones finish, offsets are committed.
pub(crate) async fn run(args: AdapterArgs) -> CliResult {
    let config = ProcessConfig::load(&args.config).map_err(|e| Failure::Usage(e.to_string()))?;
    let runtime = AdapterRuntime::new(config).map_err(failure)?;
    let mut running = runtime.start().await.map_err(failure)?;
    tracing::info!(http = %running.http_addr(), "serving /healthz, /readyz and /metrics");
    tokio::select! {
        result = running.wait() => result.map_err(failure),
        signal = terminated() => {
            if let Err(e) = signal {
                running.stop();
                let _ = running.wait().await;
                return Err(Failure::Usage(format!("cannot wait for signals: {e}")));
            }
            tracing::info!("signal received; stopping");
            running.shutdown().await.map_err(failure)
        }
    }
}

fn failure(e: RuntimeError) -> Failure {
    match e {
        RuntimeError::Kafka { .. } | RuntimeError::Unreachable { .. } => {
            Failure::Unreachable(e.to_string())
        }
        RuntimeError::Adapter(_) | RuntimeError::Listen { .. } => Failure::Usage(e.to_string()),
    }
}

/// Resolves on SIGINT (Ctrl-C) or, on Unix, SIGTERM.
async fn terminated() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}
