//! `sagaflow registry …`: the local schema registry.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use sagaflow_registry::Registry;

use crate::exit::{CliResult, Failure};

#[derive(Debug, Subcommand)]
pub(crate) enum RegistryCommand {
    /// Serve a Confluent-compatible schema registry (Avro) until Ctrl-C.
    ///
    /// Schemas are kept in <DATA_DIR>/schemas.jsonl, fsynced on every
    /// change and replayed on start, so ids survive restarts.
    Serve(ServeArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on. Loopback by default; anything else exposes an
    /// unauthenticated registry.
    #[arg(long, default_value = sagaflow_registry::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Directory for the schema log (created if missing).
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
}

pub(crate) async fn run(command: RegistryCommand) -> CliResult {
    match command {
        RegistryCommand::Serve(args) => serve(args).await,
    }
}

async fn serve(args: ServeArgs) -> CliResult {
    if !args.listen.ip().is_loopback() {
        tracing::warn!(listen = %args.listen, "the registry has no authentication and is not bound to loopback");
    }
    let registry = Registry::open_dir(&args.data_dir)
        .await
        .map_err(|e| Failure::Usage(e.to_string()))?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| Failure::Usage(format!("cannot listen on {}: {e}", args.listen)))?;
    let handle = registry
        .serve(listener)
        .map_err(|e| Failure::Usage(format!("cannot serve: {e}")))?;
    // Scripts and tests read the URL from the first line of stdout.
    println!("schema registry listening on {}", handle.url());
    tokio::signal::ctrl_c()
        .await
        .map_err(|e| Failure::Usage(format!("cannot wait for Ctrl-C: {e}")))?;
    handle
        .shutdown()
        .await
        .map_err(|e| Failure::Usage(format!("shutdown: {e}")))
}
