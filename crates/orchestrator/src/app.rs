//! Starting an orchestrator instance: load and validate everything, create
//! the topics it owns, then run the driver, the saga view and the HTTP API
//! until shutdown.

use std::path::Path;
use std::sync::Arc;

use sagaflow_bus::{TopicSpec, ensure_topics};
use sagaflow_codec::Codec;
use sagaflow_engine::{DefinitionRegistry, Engine, ServiceCatalog};
use tokio::sync::watch;
use tracing::{error, info};

use crate::config::OrchestratorConfig;
use crate::events::EventSchemas;
use crate::health::Health;
use crate::http::{ApiState, router};
use crate::metrics::Metrics;
use crate::runtime::Driver;
use crate::view::SagaView;

/// Why an orchestrator instance could not start or stopped. Each variant
/// keeps the error it wraps as its `source()`.
#[derive(Debug, thiserror::Error, sagaflow_codes::Coded)]
pub enum AppError {
    #[error("SF-ORCH-002: saga definitions:\n{0}")]
    Definitions(#[source] sagaflow_engine::LoadError),
    #[error("SF-ORCH-003: {0}")]
    Codec(#[source] sagaflow_codec::ConfigError),
    #[error("SF-ORCH-003: {0}")]
    Schemas(#[source] sagaflow_codec::schema_set::SchemaSetError),
    #[error("SF-ORCH-004: {0}")]
    Topics(#[source] sagaflow_bus::Error),
    #[error("SF-ORCH-005: HTTP listener on {addr}: {source}")]
    Http {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("SF-ORCH-006: {0}")]
    Run(#[from] crate::runtime::RunError),
    #[error("SF-ORCH-006: {0}")]
    Producer(#[source] sagaflow_bus::Error),
    #[error("SF-ORCH-006: the driver task ended: {0}")]
    DriverTask(#[source] tokio::task::JoinError),
    #[error(
        "SF-ORCH-007: bearer token: environment variable `{var}` is not set, empty, or not a token of visible ASCII characters"
    )]
    Token {
        var: String,
        #[source]
        source: sagaflow_http::TokenError,
    },
    #[error(
        "SF-ORCH-021: the driver has made no progress for {quiet:?} \
         (stall-timeout {limit:?}); stopping so that a supervisor restarts the instance"
    )]
    Stalled {
        quiet: std::time::Duration,
        limit: std::time::Duration,
    },
    #[error(transparent)]
    HttpConfig(#[from] crate::config::HttpConfigError),
}

/// Reads the services catalogue and every `*.yaml` definition in `dir`,
/// reporting all definition errors at once.
pub fn load_definitions(
    dir: &Path,
    services: &Path,
) -> Result<(ServiceCatalog, DefinitionRegistry), AppError> {
    sagaflow_engine::load_definitions(dir, services).map_err(AppError::Definitions)
}

/// Runs one orchestrator instance until `shutdown` becomes true.
pub async fn run(cfg: OrchestratorConfig, shutdown: watch::Receiver<bool>) -> Result<(), AppError> {
    let (catalog, registry) = load_definitions(&cfg.sagas.dir, &cfg.sagas.services)?;
    let engine = Arc::new(Engine::new(registry));
    let codec = Arc::new(Codec::new(cfg.codec.clone()).map_err(AppError::Codec)?);
    let schemas = match &cfg.schemas {
        Some(dir) => EventSchemas::load(dir).map_err(AppError::Schemas)?,
        None => EventSchemas::default(),
    };
    let server_limits = cfg.http.validate(&cfg.kafka)?;
    let token =
        match &cfg.http.token_env {
            Some(var) => Some(sagaflow_http::BearerToken::from_env(var).map_err(|source| {
                AppError::Token {
                    var: var.clone(),
                    source,
                }
            })?),
            None => None,
        };
    let names = cfg.topics.clone();
    let n = cfg.partitions.get() as i32;

    // The topics this instance reads and writes. Existing topics are kept
    // as they are; `sagaflow topology apply` is the place to shape them.
    let mut specs = vec![
        TopicSpec::new(names.inputs(), n),
        TopicSpec::new(names.replies(), n),
        TopicSpec::new(names.saga_state(), n).compacted(),
        TopicSpec::new(names.saga_events(), n),
        TopicSpec::new(names.dead_letter(), 1),
    ];
    for s in catalog.iter() {
        specs.push(TopicSpec::new(names.commands(&s.name), n));
    }
    for t in engine.registry().topics().domain() {
        specs.push(TopicSpec::new(format!("{}{t}", names.prefix), n));
    }
    sagaflow_bus::check_reachable(&cfg.kafka, std::time::Duration::from_secs(10))
        .await
        .map_err(AppError::Topics)?;
    ensure_topics(&cfg.kafka, &specs)
        .await
        .map_err(AppError::Topics)?;

    let metrics = Metrics::default();
    sagaflow_telemetry::register_process_metrics(&metrics.registry);
    let health = Health::default();
    let view = SagaView::new(
        crate::view::MAX_SAGAS,
        crate::view::ViewMetrics::new(&metrics.registry),
    );
    let view_task = tokio::spawn(view.clone().follow(
        cfg.kafka.clone(),
        names.saga_events(),
        n,
        codec.clone(),
        metrics.consumer_lag.clone(),
        shutdown.clone(),
    ));
    let producer = cfg.kafka.producer().map_err(AppError::Producer)?;
    let (starts, handed) = crate::handoff::channel(metrics.clone());
    let api = router(ApiState {
        starts,
        ingest: Arc::new(crate::ingest::known_events(engine.registry())),
        codec: codec.clone(),
        schemas: Arc::new(schemas.clone()),
        engine: engine.clone(),
        view: view.clone(),
        metrics: metrics.clone(),
        producer,
        names: names.clone(),
        ready: health.ready_flag(),
        token,
    });
    let listener = tokio::net::TcpListener::bind(cfg.http.listen)
        .await
        .map_err(|source| AppError::Http {
            addr: cfg.http.listen.to_string(),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| AppError::Http {
        addr: cfg.http.listen.to_string(),
        source,
    })?;
    info!(http = %local, "orchestrator HTTP API listening");
    // The HTTP API and the saga view stop with the process, or as soon as
    // the driver fails: a failed driver must not leave a green /readyz up.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut outer = shutdown.clone();
    let forward = tokio::spawn(async move {
        while !*outer.borrow() {
            if outer.changed().await.is_err() {
                return;
            }
        }
        let _ = stop_tx.send(true);
    });
    let mut http_shutdown = stop_rx.clone();
    let server =
        sagaflow_http::Server::new(server_limits).render_refusals(crate::http::render_refusal);
    let http_task = tokio::spawn(server.serve(listener, api, async move {
        while !*http_shutdown.borrow() {
            if http_shutdown.changed().await.is_err() {
                break;
            }
        }
    }));

    let driver = Driver {
        engine,
        codec,
        schemas,
        metrics,
        kafka: cfg.kafka.clone(),
        names,
        group_id: cfg.group_id.clone(),
        completed_retention: cfg.completed_retention,
        early_event_retention: cfg.early_event_retention,
        max_batch: cfg.max_batch.get() as usize,
        pipeline_depth: cfg.pipeline_depth.get() as usize,
        record_limit: cfg.record_limit(),
        max_parked_per_saga: cfg.max_parked_per_saga.get() as usize,
        max_parked_per_partition: cfg.max_parked_per_partition.get() as usize,
        dedup_window: cfg.dedup_window,
        health: health.clone(),
        view: Some(view),
        stop: shutdown.clone(),
        starts: Some(handed),
    };
    // The driver and its watchdog are tasks of their own: a driver that
    // blocks its thread cannot keep the watchdog from seeing it.
    let mut driver_task = tokio::spawn(driver.run(shutdown));
    let watchdog = health.clone();
    let stall_timeout = cfg.stall_timeout;
    let mut watchdog_task =
        tokio::spawn(async move { watchdog.watch_for_stall(stall_timeout).await });
    let result = tokio::select! {
        r = &mut driver_task => match r {
            Ok(r) => r.map_err(AppError::Run),
            Err(e) => Err(AppError::DriverTask(e)),
        },
        quiet = &mut watchdog_task => Err(AppError::Stalled {
            quiet: quiet.unwrap_or(stall_timeout),
            limit: stall_timeout,
        }),
    };
    watchdog_task.abort();
    driver_task.abort();
    health.set_ready(false);
    match &result {
        Ok(()) => {
            let _ = http_task.await;
            let _ = view_task.await;
        }
        Err(e) => {
            error!(error = %e, "orchestrator driver failed; stopping the process");
            // Stop serving at once; the view and HTTP tasks get a moment
            // to finish, no more.
            forward.abort();
            view_task.abort();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), http_task).await;
        }
    }
    result
}
