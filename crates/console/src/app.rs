//! The console process: configuration, the indexer, retention, and the
//! HTTP server, run together until a shutdown signal.

use sagaflow_bus::now_ms;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sagaflow_bus::{KafkaConfig, TopicNames};
use sagaflow_codec::{Codec, CodecConfig};
use sagaflow_http::BearerToken;
use serde::Deserialize;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::api::{self, ApiState, Orchestrator};
use crate::error::ConsoleError;
use crate::follow::{self, Progress, Sources};
use crate::store::Store;

/// The console's configuration file.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ConsoleConfig {
    pub kafka: KafkaConfig,
    #[serde(default)]
    pub topics: TopicNames,
    pub codec: CodecConfig,
    /// The history's SQLite file (created when missing; rebuilt from the
    /// topics when lost).
    pub database: PathBuf,
    /// How long an ended saga (and a dead letter) stays in the history.
    #[serde(default = "default_retention")]
    pub retention: String,
    /// Dead-letter topics to follow besides `sagaflow.dead-letter`
    /// (full names, prefix included).
    #[serde(default)]
    pub dead_letter_topics: Vec<String>,
    /// `group.id` librdkafka is given. The console never joins the group
    /// nor commits: its offsets live in the database.
    #[serde(default = "default_group")]
    pub group_id: String,
    /// Most records applied in one transaction (2000). Smaller batches
    /// show new events sooner under load; larger ones index faster.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    #[serde(default)]
    pub http: HttpConfig,
    /// The orchestrator API that retry and abort go through.
    #[serde(default)]
    pub orchestrator: Option<OrchestratorApi>,
    /// Saga definitions to draw on the definitions page (optional).
    #[serde(default)]
    pub sagas: Option<SagasDir>,
}

/// Where the saga definitions are (as in the orchestrator's config).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SagasDir {
    pub dir: PathBuf,
    pub services: PathBuf,
}

fn default_retention() -> String {
    "7d".into()
}

fn default_batch() -> usize {
    follow::DEFAULT_BATCH
}

fn default_group() -> String {
    "sagaflow-console".into()
}

/// Where the console listens and who may use it.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct HttpConfig {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Environment variable holding the read-only token. Unset: reading
    /// needs no token (allowed on a loopback address, or with `open`).
    #[serde(default)]
    pub read_token_env: Option<String>,
    /// Environment variable holding the operator token (retry, abort,
    /// bulk operations, redrive; it also reads). Unset: the console is
    /// read-only.
    #[serde(default)]
    pub operator_token_env: Option<String>,
    /// Serve reads without a token on a non-loopback address, on purpose.
    #[serde(default)]
    pub open: bool,
    #[serde(default)]
    pub limits: sagaflow_http::RawServerConfig,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8090))
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            read_token_env: None,
            operator_token_env: None,
            open: false,
            limits: Default::default(),
        }
    }
}

/// The orchestrator's `/v1` API.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct OrchestratorApi {
    /// e.g. `http://127.0.0.1:8080`.
    pub url: String,
    /// Environment variable holding its bearer token, if it wants one.
    #[serde(default)]
    pub token_env: Option<String>,
}

/// The configuration, checked.
pub struct Validated {
    pub cfg: ConsoleConfig,
    pub retention: Duration,
    pub read_token: Option<BearerToken>,
    pub operator_token: Option<BearerToken>,
    pub orchestrator_token: Option<String>,
    pub limits: sagaflow_http::ServerConfig,
}

impl ConsoleConfig {
    /// Parses a YAML configuration (errors point at `file:line:column`);
    /// a relative `database` path is resolved against the file's directory.
    pub fn from_yaml(file: &std::path::Path, source: &str) -> Result<Self, ConsoleError> {
        let name = file.display().to_string();
        let (value, spans) = sagaflow_config::load(source).map_err(|e| {
            ConsoleError::Config(format!(
                "{name}:{}:{}: {}",
                e.position.line, e.position.column, e.message
            ))
        })?;
        let mut cfg: Self = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let pos = spans.find(&path);
            ConsoleError::Config(format!(
                "{name}:{}:{}: {path}: {}",
                pos.line,
                pos.column,
                e.into_inner()
            ))
        })?;
        let base = file.parent().unwrap_or(std::path::Path::new("."));
        cfg.database = base.join(&cfg.database);
        if let Some(s) = &mut cfg.sagas {
            s.dir = base.join(&s.dir);
            s.services = base.join(&s.services);
        }
        Ok(cfg)
    }

    /// Checks the configuration and reads the tokens.
    pub fn validate(self) -> Result<Validated, ConsoleError> {
        let retention = humantime::parse_duration(&self.retention)
            .map_err(|e| ConsoleError::Config(format!("`retention: {}`: {e}", self.retention)))?;
        let token = |var: &Option<String>| -> Result<Option<BearerToken>, ConsoleError> {
            var.as_deref()
                .map(BearerToken::from_env)
                .transpose()
                .map_err(|e| ConsoleError::Config(e.to_string()))
        };
        let read_token = token(&self.http.read_token_env)?;
        let operator_token = token(&self.http.operator_token_env)?;
        let orchestrator_token = self
            .orchestrator
            .as_ref()
            .and_then(|o| o.token_env.as_deref())
            .map(|var| {
                BearerToken::from_env(var)
                    .map(|_| std::env::var(var).unwrap_or_default())
                    .map_err(|e| ConsoleError::Config(e.to_string()))
            })
            .transpose()?;
        if read_token.is_none() && !self.http.listen.ip().is_loopback() && !self.http.open {
            return Err(ConsoleError::Config(format!(
                "`http.listen: {}` is not a loopback address: set `http.read-token-env` (and `http.operator-token-env`), or `http.open: true` to serve reads without a token on purpose",
                self.http.listen
            )));
        }
        let limits = self
            .http
            .limits
            .validate()
            .map_err(|e| ConsoleError::Config(e.to_string()))?;
        Ok(Validated {
            retention,
            read_token,
            operator_token,
            orchestrator_token,
            limits,
            cfg: self,
        })
    }
}

/// Runs the console until `shutdown` turns true.
pub async fn run(v: Validated, shutdown: watch::Receiver<bool>) -> Result<(), ConsoleError> {
    let cfg = v.cfg;
    let codec =
        Arc::new(Codec::new(cfg.codec.clone()).map_err(|e| ConsoleError::Config(e.to_string()))?);
    let definitions = match &cfg.sagas {
        Some(s) => crate::definitions::load(&s.dir, &s.services)?,
        None => Vec::new(),
    };
    let store = Arc::new(Store::open(&cfg.database).await?);
    info!(database = %store.path(), "console: history opened");
    let names = cfg.topics.clone();
    let mut dead_letters = vec![names.dead_letter()];
    dead_letters.extend(cfg.dead_letter_topics.iter().cloned());
    let sources = Sources {
        saga_events: names.saga_events(),
        dead_letters,
    };
    let progress = Arc::new(Progress::default());
    let indexer = tokio::spawn(follow::run(
        follow::Indexer {
            kafka: cfg.kafka.clone(),
            group_id: cfg.group_id.clone(),
            codec: codec.clone(),
            sources,
            store: store.clone(),
            progress: progress.clone(),
            max_batch: cfg.batch_size.max(1),
        },
        shutdown.clone(),
    ));
    let pruner = {
        let store = store.clone();
        let retention = v.retention.as_millis() as i64;
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                match store.prune(now_ms() as i64 - retention, 10_000).await {
                    Ok(n) if n > 0 => info!(removed = n, "console: retention removed ended sagas"),
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "console: retention failed; will retry"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                    _ = stop.changed() => return,
                }
            }
        })
    };
    let producer = cfg
        .kafka
        .producer()
        .map_err(|e| ConsoleError::Kafka(e.to_string()))?;
    let state = ApiState {
        store: store.clone(),
        codec,
        producer,
        read_token: v.read_token,
        operator_token: v.operator_token,
        orchestrator: cfg.orchestrator.as_ref().map(|o| Orchestrator {
            url: o.url.trim_end_matches('/').to_owned(),
            token: v.orchestrator_token.clone(),
            client: reqwest::Client::new(),
        }),
        progress,
        definitions: Arc::new(definitions),
    };
    let listener = tokio::net::TcpListener::bind(cfg.http.listen)
        .await
        .map_err(|e| ConsoleError::Listen {
            addr: cfg.http.listen.to_string(),
            message: e.to_string(),
        })?;
    let local = listener.local_addr().map_err(|e| ConsoleError::Listen {
        addr: cfg.http.listen.to_string(),
        message: e.to_string(),
    })?;
    info!(http = %local, url = %format!("http://{local}/"), "console listening");
    let server = sagaflow_http::Server::new(v.limits).render_refusals(api::render_refusal);
    let mut http_stop = shutdown.clone();
    let http = tokio::spawn(server.serve(listener, api::router(state), async move {
        while !*http_stop.borrow() {
            if http_stop.changed().await.is_err() {
                break;
            }
        }
    }));
    let result = match indexer.await {
        Ok(r) => r,
        Err(e) => Err(ConsoleError::Kafka(format!("the indexer task ended: {e}"))),
    };
    pruner.abort();
    if result.is_err() {
        http.abort();
    } else {
        let _ = http.await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const MINIMAL: &str = "kafka:\n  bootstrap-servers: localhost:9092\ncodec:\n  default-format:\n    format: json\ndatabase: h.db\n";

    #[test]
    fn the_compose_config_parses() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/compose/console.yaml");
        let text = std::fs::read_to_string(&file).unwrap();
        let cfg = ConsoleConfig::from_yaml(&file, &text).unwrap();
        assert_eq!(cfg.http.listen.port(), 8090);
        assert!(cfg.http.read_token_env.is_some() && cfg.http.operator_token_env.is_some());
        assert_eq!(cfg.database, Path::new("/var/lib/sagaflow/console.db"));
    }

    #[test]
    fn an_open_address_needs_a_read_token_or_open_true() {
        let file = Path::new("/etc/sagaflow/console.yaml");
        let yaml = format!("{MINIMAL}http:\n  listen: 0.0.0.0:8090\n");
        let e = ConsoleConfig::from_yaml(file, &yaml)
            .unwrap()
            .validate()
            .err()
            .unwrap();
        assert_eq!(e.code(), "SF-CON-001");
        assert!(e.to_string().contains("read-token-env"), "{e}");
        let open = format!("{MINIMAL}http:\n  listen: 0.0.0.0:8090\n  open: true\n");
        let v = ConsoleConfig::from_yaml(file, &open)
            .unwrap()
            .validate()
            .unwrap();
        assert!(v.read_token.is_none() && v.operator_token.is_none());
        // Relative database paths follow the file.
        assert_eq!(v.cfg.database, Path::new("/etc/sagaflow/h.db"));
    }

    #[test]
    fn unknown_keys_are_refused_with_their_place() {
        let yaml = format!("{MINIMAL}retension: 7d\n");
        let e = ConsoleConfig::from_yaml(Path::new("c.yaml"), &yaml)
            .err()
            .unwrap();
        assert!(
            e.to_string().contains("c.yaml:") && e.to_string().contains("retension"),
            "{e}"
        );
    }
}
