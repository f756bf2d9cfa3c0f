//! `sagaflow orchestrator --config FILE`: the production orchestrator process.

use std::path::PathBuf;

use clap::Args;
use sagaflow_orchestrator::app::{self, AppError};
use sagaflow_orchestrator::config::OrchestratorConfig;
use tokio::sync::watch;

use crate::exit::{CliResult, Failure};

#[derive(Debug, Args)]
pub(crate) struct OrchestratorArgs {
    /// The orchestrator's configuration file (YAML).
    #[arg(long, value_name = "FILE", env = "SAGAFLOW_ORCHESTRATOR_CONFIG")]
    config: PathBuf,
}

pub(crate) async fn run(args: OrchestratorArgs) -> CliResult {
    let cfg = OrchestratorConfig::load(&args.config).map_err(|e| Failure::Usage(e.to_string()))?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        crate::signals::terminated().await;
        tracing::info!("stopping: finishing the current batch");
        let _ = tx.send(true);
    });
    app::run(cfg, rx).await.map_err(|e| match e {
        AppError::Definitions(_)
        | AppError::Codec(_)
        | AppError::Schemas(_)
        | AppError::Token { .. }
        | AppError::Http { .. }
        | AppError::HttpConfig(_) => Failure::Usage(e.to_string()),
        AppError::Topics(_)
        | AppError::Run(_)
        | AppError::Producer(_)
        | AppError::DriverTask(_)
        | AppError::Stalled { .. } => Failure::Unreachable(e.to_string()),
    })
}
