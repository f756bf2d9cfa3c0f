//! `sagaflow registry …`: the local schema registry.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use sagaflow_registry::{Auth, Registry};

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
    /// Address to listen on. Loopback by default; any other address needs
    /// --token-env, or --open to serve without authentication on purpose.
    #[arg(long, default_value = sagaflow_registry::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Directory for the schema log (created if missing).
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// Environment variable holding a bearer token every request must
    /// present (`Authorization: Bearer <token>`).
    #[arg(long, value_name = "VAR")]
    token_env: Option<String>,
    /// Serve a non-loopback address without a token, on purpose.
    #[arg(long, conflicts_with = "token_env")]
    open: bool,
    /// Largest request body in bytes; larger ones get 413.
    #[arg(long, default_value_t = 1024 * 1024, value_name = "BYTES")]
    max_body_bytes: usize,
}

pub(crate) async fn run(command: RegistryCommand) -> CliResult {
    match command {
        RegistryCommand::Serve(args) => serve(args).await,
    }
}

/// The registry's credentials and server limits, refusing an open
/// registry on a non-loopback address unless `--open` says so.
fn settings(args: &ServeArgs) -> Result<(Option<Auth>, sagaflow_http::ServerConfig), Failure> {
    let auth = match &args.token_env {
        Some(var) => {
            sagaflow_http::BearerToken::from_env(var).map_err(|e| Failure::Usage(e.to_string()))?;
            let token = std::env::var(var).unwrap_or_default();
            Some(Auth::Bearer { token })
        }
        None => None,
    };
    if auth.is_none() && !args.open && !args.listen.ip().is_loopback() {
        return Err(Failure::Usage(format!(
            "SF-REGISTRY-001: --listen {} is not a loopback address and no token is configured: pass --token-env VAR (a variable holding the token), or --open to serve without authentication on purpose",
            args.listen
        )));
    }
    let limits = sagaflow_http::RawServerConfig {
        max_body_bytes: args.max_body_bytes,
        ..sagaflow_http::RawServerConfig::default()
    }
    .validate()
    .map_err(|e| Failure::Usage(e.to_string()))?;
    Ok((auth, limits))
}

async fn serve(args: ServeArgs) -> CliResult {
    let (auth, limits) = settings(&args)?;
    if auth.is_none() && !args.listen.ip().is_loopback() {
        tracing::warn!(listen = %args.listen, "the registry has no authentication (--open) and is not bound to loopback");
    }
    let registry = Registry::open_dir(&args.data_dir)
        .await
        .map_err(|e| Failure::Usage(e.to_string()))?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| Failure::Usage(format!("cannot listen on {}: {e}", args.listen)))?;
    let handle = registry
        .serve_with(listener, auth, limits)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(listen: &str, token_env: Option<&str>, open: bool) -> ServeArgs {
        ServeArgs {
            listen: listen.parse().unwrap(),
            data_dir: PathBuf::from("unused"),
            token_env: token_env.map(str::to_owned),
            open,
            max_body_bytes: 1024 * 1024,
        }
    }

    #[test]
    fn a_non_loopback_registry_needs_a_token_or_open() {
        let e = settings(&args("0.0.0.0:8081", None, false)).unwrap_err();
        assert!(format!("{e:?}").contains("SF-REGISTRY-001"), "{e:?}");
        assert!(settings(&args("0.0.0.0:8081", None, true)).is_ok());
        let (auth, _) = settings(&args("127.0.0.1:8081", None, false)).unwrap();
        assert!(auth.is_none(), "loopback needs no token");
        // PATH is set in any test environment.
        let (auth, _) = settings(&args("0.0.0.0:8081", Some("PATH"), false)).unwrap();
        assert!(matches!(auth, Some(Auth::Bearer { .. })));
        let e = settings(&args(
            "0.0.0.0:8081",
            Some("SAGAFLOW_SURELY_UNSET_VAR"),
            false,
        ))
        .unwrap_err();
        assert!(
            format!("{e:?}").contains("SAGAFLOW_SURELY_UNSET_VAR"),
            "{e:?}"
        );
    }
}
