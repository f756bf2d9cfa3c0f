//! `sagaflow adapter --config <file>`: run one service's adapter process;
//! `sagaflow adapter scaffold …`: write an adapter definition from a contract.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use sagaflow_adapter::{AdapterRuntime, ProcessConfig, RuntimeError};

use crate::exit::{CliResult, Failure};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub(crate) struct AdapterArgs {
    #[command(subcommand)]
    command: Option<AdapterCommand>,
    /// The adapter process config (Kafka, codec, service config file …);
    /// see docs/adapters.md, "Running an adapter".
    #[arg(long, value_name = "FILE", required = true)]
    config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum AdapterCommand {
    /// Write a service's adapter definition (<SERVICE>.service.yaml) and its
    /// services.yaml entry from an OpenAPI 3 document or a WSDL 1.1 file.
    Scaffold(crate::scaffold::ScaffoldArgs),
}

/// Runs until SIGINT or SIGTERM, then stops gracefully: no new commands
/// are read, in-flight ones finish, offsets are committed.
pub(crate) async fn run(args: AdapterArgs) -> CliResult {
    let path = match (args.command, args.config) {
        (Some(AdapterCommand::Scaffold(a)), _) => return crate::scaffold::run(&a),
        (None, Some(path)) => path,
        (None, None) => return Err(Failure::Usage("--config FILE is required".into())),
    };
    let config = ProcessConfig::load(&path).map_err(|e| Failure::Usage(e.to_string()))?;
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
