//! Orchestrator configuration: one YAML file, validated before anything
//! starts. Kafka settings pass through to librdkafka untouched.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sagaflow_bus::{KafkaConfig, TopicNames};
use sagaflow_codec::CodecConfig;
use sagaflow_config::apply_env_overrides;
use serde::Deserialize;

/// The configuration file as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct OrchestratorConfig {
    pub kafka: KafkaConfig,
    #[serde(default)]
    pub topics: TopicNames,
    pub codec: CodecConfig,
    pub sagas: SagasConfig,
    /// Avro schemas of emitted domain events (`schemas/`), needed when an
    /// `emit` step publishes to an Avro topic.
    #[serde(default)]
    pub schemas: Option<PathBuf>,
    /// Partitions of the internal topics (inputs, replies, state, events,
    /// commands). Inputs, replies and state must agree: they are
    /// co-partitioned by saga id.
    #[serde(default = "default_partitions")]
    pub partitions: NonZeroU32,
    #[serde(default = "default_group")]
    pub group_id: String,
    #[serde(default)]
    pub http: HttpConfig,
    /// How long a finished saga's state is kept before it is removed from
    /// the changelog with a tombstone ("1h").
    #[serde(default = "default_retention", with = "humantime_serde_compat")]
    pub completed_retention: Duration,
    /// How long an awaited event that arrived before its saga started is
    /// kept waiting for it ("1h"); then it is dropped (metric
    /// `sagaflow_inputs_total{input="event",outcome="expired"}`).
    #[serde(default = "default_retention", with = "humantime_serde_compat")]
    pub early_event_retention: Duration,
    /// Most inputs handled per persisted batch.
    #[serde(default = "default_batch")]
    pub max_batch: NonZeroU32,
    /// Batches whose effects may await the broker's acks while the next
    /// batches are processed (8); 1 waits for each batch's effects before
    /// reading on.
    #[serde(default = "default_pipeline_depth")]
    pub pipeline_depth: NonZeroU32,
    /// How long one piece of the driver's work (a restore, a batch's
    /// writes) may wait on the broker before the instance declares itself
    /// stuck: `/readyz` turns red and the process exits non-zero ("60s").
    #[serde(default = "default_stall_timeout", with = "humantime_serde_compat")]
    pub stall_timeout: Duration,
    /// The largest record the orchestrator produces, in bytes. Defaults to
    /// the producer's `message.max.bytes` (librdkafka: 1,000,000). A saga
    /// whose state would exceed it is aborted with a reason instead of
    /// stopping its partition.
    #[serde(default)]
    pub max_record_bytes: Option<NonZeroU32>,
    /// Awaited events parked for one saga that has not started yet (16);
    /// more are dead-lettered with SF-ORCH-023.
    #[serde(default = "default_parked_per_saga")]
    pub max_parked_per_saga: NonZeroU32,
    /// Awaited events parked in one partition in all (10000); more are
    /// dead-lettered with SF-ORCH-023.
    #[serde(default = "default_parked_per_partition")]
    pub max_parked_per_partition: NonZeroU32,
    /// How long a saga id is remembered after its state left the changelog
    /// (`completed-retention`), so that a replayed trigger does not start
    /// it again ("7d").
    #[serde(default = "default_dedup_window", with = "humantime_serde_compat")]
    pub dedup_window: Duration,
}

fn default_stall_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_parked_per_saga() -> NonZeroU32 {
    NonZeroU32::new(16).expect("16 is not zero")
}
fn default_parked_per_partition() -> NonZeroU32 {
    NonZeroU32::new(10_000).expect("10000 is not zero")
}
fn default_dedup_window() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

fn default_partitions() -> NonZeroU32 {
    NonZeroU32::new(6).expect("6 is not zero")
}
fn default_group() -> String {
    "sagaflow-orchestrator".to_owned()
}
fn default_retention() -> Duration {
    Duration::from_secs(3600)
}
fn default_pipeline_depth() -> NonZeroU32 {
    NonZeroU32::new(8).expect("8 is not zero")
}

fn default_batch() -> NonZeroU32 {
    NonZeroU32::new(256).expect("256 is not zero")
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SagasConfig {
    /// Directory of saga definitions (`*.yaml`).
    pub dir: PathBuf,
    /// The services catalogue (`services.yaml`).
    pub services: PathBuf,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct HttpConfig {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Name of an environment variable holding a bearer token that every
    /// request except `/healthz`, `/readyz` and `/metrics` must present.
    #[serde(default)]
    pub token_env: Option<String>,
    /// Serve `/v1` without a token on a non-loopback address, on purpose.
    /// Without a token and without this, such an address is refused.
    #[serde(default)]
    pub open: bool,
    /// Timeouts, connection cap and body limit of the HTTP server.
    #[serde(default)]
    pub limits: sagaflow_http::RawServerConfig,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            token_env: None,
            open: false,
            limits: sagaflow_http::RawServerConfig::default(),
        }
    }
}

/// Room a record needs beyond the request body: envelope fields, headers,
/// key and record overhead.
pub const BODY_HEADROOM: usize = 64 * 1024;

/// Why the HTTP settings cannot start.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, sagaflow_codes::Coded)]
pub enum HttpConfigError {
    /// `/v1` would be reachable from other hosts without a token.
    #[error(
        "SF-API-001: http.listen {listen} is not a loopback address and no token is configured: set http.token-env to a variable holding a token, or set http.open: true to serve /v1 without authentication on purpose"
    )]
    OpenApi { listen: SocketAddr },
    /// `open` and a token contradict each other.
    #[error("SF-API-002: http.open: true and http.token-env are both set; keep one")]
    OpenWithToken,
    /// A request body at the limit could not be produced to Kafka.
    #[error(
        "SF-API-003: http.limits.max-body-bytes is {limit}, not safely below the producer's message.max.bytes {message_max}: keep it at most {allowed} (the limit plus {BODY_HEADROOM} bytes of headroom), or raise message.max.bytes in kafka.properties and on the broker"
    )]
    BodyLimit {
        limit: usize,
        message_max: usize,
        allowed: usize,
    },
    /// A limit cannot work, or `message.max.bytes` is not a number.
    #[error("SF-API-004: http.limits: {0}")]
    Limits(String),
}

impl HttpConfig {
    /// Checks the HTTP settings against each other and against the Kafka
    /// producer's `message.max.bytes`; pure.
    pub fn validate(
        &self,
        kafka: &sagaflow_bus::KafkaConfig,
    ) -> Result<sagaflow_http::ServerConfig, HttpConfigError> {
        if self.open && self.token_env.is_some() {
            return Err(HttpConfigError::OpenWithToken);
        }
        if !self.listen.ip().is_loopback() && self.token_env.is_none() && !self.open {
            return Err(HttpConfigError::OpenApi {
                listen: self.listen,
            });
        }
        let server = self
            .limits
            .validate()
            .map_err(|e| HttpConfigError::Limits(e.to_string()))?;
        let message_max = match kafka.properties.get("message.max.bytes") {
            None => DEFAULT_MESSAGE_MAX_BYTES,
            Some(v) => v.trim().parse().map_err(|_| {
                HttpConfigError::Limits(format!(
                    "kafka.properties message.max.bytes `{v}` is not a number of bytes"
                ))
            })?,
        };
        let allowed = message_max.saturating_sub(BODY_HEADROOM);
        if server.max_body_bytes() > allowed {
            return Err(HttpConfigError::BodyLimit {
                limit: server.max_body_bytes(),
                message_max,
                allowed,
            });
        }
        Ok(server)
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

/// Durations as human strings ("250ms", "1h").
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "`{s}` is not a duration ({e}); write e.g. \"30s\" or \"1h\""
            ))
        })
    }
}

/// A configuration error, naming the file, line and column.
#[derive(Clone, Debug, thiserror::Error, sagaflow_codes::Coded)]
#[error("SF-ORCH-001: {file}:{line}:{column}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl OrchestratorConfig {
    /// Parses a YAML configuration; relative paths in it are resolved
    /// against the file's directory.
    pub fn from_yaml(file: &Path, source: &str) -> Result<Self, ConfigError> {
        Self::from_yaml_with_env(file, source, std::iter::empty())
    }

    /// Like [`Self::from_yaml`], with `SAGAFLOW_…` overrides from `vars`
    /// (see [`apply_env_overrides`]).
    pub fn from_yaml_with_env(
        file: &Path,
        source: &str,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let name = file.display().to_string();
        let (mut value, spans) = sagaflow_config::load(source).map_err(|e| ConfigError {
            file: name.clone(),
            line: e.position.line,
            column: e.position.column,
            message: e.message.clone(),
        })?;
        apply_env_overrides(&mut value, TOP_LEVEL_KEYS, vars);
        let mut cfg: Self = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let pos = spans.find(&path);
            ConfigError {
                file: name.clone(),
                line: pos.line,
                column: pos.column,
                message: format!("{}: {}", path, e.into_inner()),
            }
        })?;
        let base = file.parent().unwrap_or(Path::new("."));
        cfg.sagas.dir = base.join(&cfg.sagas.dir);
        cfg.sagas.services = base.join(&cfg.sagas.services);
        cfg.schemas = cfg.schemas.map(|s| base.join(s));
        Ok(cfg)
    }

    /// The record size limit in force: `max-record-bytes`, or the
    /// producer's `message.max.bytes`, whichever is smaller.
    pub fn record_limit(&self) -> usize {
        let broker = self
            .kafka
            .properties
            .get("message.max.bytes")
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(DEFAULT_MESSAGE_MAX_BYTES);
        self.max_record_bytes
            .map_or(broker, |m| (m.get() as usize).min(broker))
    }

    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        let source = std::fs::read_to_string(file).map_err(|e| ConfigError {
            file: file.display().to_string(),
            line: 0,
            column: 0,
            message: format!("cannot read: {e}"),
        })?;
        Self::from_yaml_with_env(file, &source, std::env::vars())
    }
}

/// librdkafka's default `message.max.bytes`.
pub const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;

/// The top-level keys of the file; only variables naming one override.
const TOP_LEVEL_KEYS: &[&str] = &[
    "kafka",
    "topics",
    "codec",
    "sagas",
    "schemas",
    "partitions",
    "group-id",
    "http",
    "completed-retention",
    "early-event-retention",
    "max-batch",
    "pipeline-depth",
    "stall-timeout",
    "max-record-bytes",
    "max-parked-per-saga",
    "max-parked-per-partition",
    "dedup-window",
];

#[cfg(test)]
mod env_tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn environment_overrides_values_and_passes_kafka_properties_through() {
        let mut value = serde_json::json!({
            "kafka": {"bootstrap-servers": "file:9092", "properties": {"acks": "all"}},
            "http": {"listen": "127.0.0.1:8080"},
            "partitions": 6
        });
        apply_env_overrides(
            &mut value,
            TOP_LEVEL_KEYS,
            vars(&[
                ("SAGAFLOW_KAFKA__BOOTSTRAP_SERVERS", "env:9093"),
                ("SAGAFLOW_KAFKA__PROPERTIES__SECURITY_PROTOCOL", "SASL_SSL"),
                ("SAGAFLOW_KAFKA__PROPERTIES__SASL_MECHANISM", "PLAIN"),
                ("SAGAFLOW_KAFKA__PROPERTIES__SSL_CA_LOCATION", "/ca.pem"),
                ("SAGAFLOW_HTTP__LISTEN", "0.0.0.0:9000"),
                ("SAGAFLOW_PARTITIONS", "8"),
                ("SAGAFLOW_GROUP_ID", "g"),
                ("SAGAFLOW_ORCHESTRATOR_CONFIG", "not an override"),
                ("SAGAFLOW_TOPICS__PREFIX", "staging."),
                ("SAGAFLOW_API_TOKEN", "not an override"),
                ("OTHER__THING", "ignored"),
            ]),
        );
        assert_eq!(value["kafka"]["bootstrap-servers"], "env:9093");
        let props = &value["kafka"]["properties"];
        assert_eq!(props["acks"], "all");
        assert_eq!(props["security.protocol"], "SASL_SSL");
        assert_eq!(props["sasl.mechanism"], "PLAIN");
        assert_eq!(props["ssl.ca.location"], "/ca.pem");
        assert_eq!(value["http"]["listen"], "0.0.0.0:9000");
        assert_eq!(value["topics"]["prefix"], "staging.");
        assert_eq!(value["partitions"], 8);
        assert_eq!(value["group-id"], "g");
        assert!(value.get("api-token").is_none());
        assert!(value.get("orchestrator-config").is_none());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "kafka:\n  bootstrap-servers: 127.0.0.1:9092\ncodec:\n  default-format:\n    format: json\nsagas:\n  dir: sagas\n  services: services.yaml\n";

    #[test]
    fn minimal_config_gets_defaults_and_resolves_paths() {
        let cfg = OrchestratorConfig::from_yaml(Path::new("/etc/sagaflow/o.yaml"), MIN).unwrap();
        assert_eq!(cfg.partitions.get(), 6);
        assert_eq!(cfg.http.listen, default_listen());
        assert_eq!(cfg.completed_retention, Duration::from_secs(3600));
        assert_eq!(cfg.sagas.dir, Path::new("/etc/sagaflow/sagas"));
        let server = cfg.http.validate(&cfg.kafka).unwrap();
        assert_eq!(server.max_body_bytes(), 256 * 1024);
        assert_eq!(server.header_timeout(), Duration::from_secs(10));
        assert_eq!(cfg.stall_timeout, Duration::from_secs(60));
        assert_eq!(cfg.dedup_window, Duration::from_secs(7 * 24 * 3600));
        assert_eq!(cfg.record_limit(), DEFAULT_MESSAGE_MAX_BYTES);
    }

    #[test]
    fn the_record_limit_is_the_smaller_of_ours_and_the_producers() {
        let src = format!("{MIN}max-record-bytes: 2000000\n");
        let cfg = OrchestratorConfig::from_yaml(Path::new("o.yaml"), &src).unwrap();
        assert_eq!(cfg.record_limit(), DEFAULT_MESSAGE_MAX_BYTES);
        let src = format!("{MIN}max-record-bytes: 5000\n");
        let cfg = OrchestratorConfig::from_yaml(Path::new("o.yaml"), &src).unwrap();
        assert_eq!(cfg.record_limit(), 5000);
        let src = MIN.replace(
            "bootstrap-servers: 127.0.0.1:9092",
            "bootstrap-servers: 127.0.0.1:9092\n  properties:\n    message.max.bytes: \"300000\"",
        );
        let cfg = OrchestratorConfig::from_yaml(Path::new("o.yaml"), &src).unwrap();
        assert_eq!(cfg.record_limit(), 300_000);
    }

    #[test]
    fn a_non_loopback_api_needs_a_token_or_an_explicit_open() {
        let at = |extra: &str| {
            let src = format!("{MIN}http:\n  listen: 0.0.0.0:8080\n{extra}");
            let cfg = OrchestratorConfig::from_yaml(Path::new("o.yaml"), &src).unwrap();
            cfg.http.validate(&cfg.kafka)
        };
        let e = at("").unwrap_err();
        assert!(matches!(e, HttpConfigError::OpenApi { .. }), "{e}");
        assert!(e.to_string().starts_with("SF-API-001:"), "{e}");
        assert!(at("  token-env: T\n").is_ok());
        assert!(at("  open: true\n").is_ok());
        assert_eq!(
            at("  open: true\n  token-env: T\n").unwrap_err(),
            HttpConfigError::OpenWithToken
        );
        let cfg = OrchestratorConfig::from_yaml(Path::new("o.yaml"), MIN).unwrap();
        assert!(
            cfg.http.validate(&cfg.kafka).is_ok(),
            "loopback needs no token"
        );
    }

    #[test]
    fn the_body_limit_stays_safely_below_message_max_bytes() {
        let with = |limit: usize, max: Option<&str>| {
            let mut cfg = OrchestratorConfig::from_yaml(Path::new("o.yaml"), MIN).unwrap();
            cfg.http.limits.max_body_bytes = limit;
            if let Some(m) = max {
                cfg.kafka
                    .properties
                    .insert("message.max.bytes".into(), m.into());
            }
            cfg.http.validate(&cfg.kafka)
        };
        assert!(with(256 * 1024, None).is_ok());
        let e = with(1_000_000, None).unwrap_err();
        assert_eq!(
            e,
            HttpConfigError::BodyLimit {
                limit: 1_000_000,
                message_max: 1_000_000,
                allowed: 1_000_000 - BODY_HEADROOM
            }
        );
        assert!(e.to_string().starts_with("SF-API-003:"), "{e}");
        assert!(with(256 * 1024, Some("200000")).is_err());
        assert!(with(1_000_000, Some("2000000")).is_ok());
        assert!(matches!(
            with(1000, Some("lots")),
            Err(HttpConfigError::Limits(_))
        ));
        let src = format!("{MIN}http:\n  limits:\n    header-timeout: 0s\n");
        let cfg = OrchestratorConfig::from_yaml(Path::new("o.yaml"), &src).unwrap();
        let e = cfg.http.validate(&cfg.kafka).unwrap_err();
        assert!(e.to_string().contains("header-timeout"), "{e}");
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let src = format!("{MIN}completed-retention: soon\n");
        let e = OrchestratorConfig::from_yaml(Path::new("o.yaml"), &src).unwrap_err();
        assert_eq!((e.line, e.column), (9, 1), "{e}");
        assert!(e.message.contains("not a duration"), "{e}");
        let src = format!("{MIN}partitions: 0\n");
        let e = OrchestratorConfig::from_yaml(Path::new("o.yaml"), &src).unwrap_err();
        assert_eq!(e.line, 9, "{e}");
        let src = MIN.replace("sagas:", "sagaz:");
        let e = OrchestratorConfig::from_yaml(Path::new("o.yaml"), &src).unwrap_err();
        assert!(e.to_string().contains("unknown field `sagaz`"), "{e}");
    }

    #[test]
    fn environment_overrides_reach_the_typed_config() {
        let env = [
            ("SAGAFLOW_PARTITIONS", "12"),
            ("SAGAFLOW_HTTP__LISTEN", "127.0.0.1:9999"),
            ("SAGAFLOW_KAFKA__BOOTSTRAP_SERVERS", "env:9093"),
            ("SAGAFLOW_KAFKA__PROPERTIES__SECURITY_PROTOCOL", "SASL_SSL"),
            ("SAGAFLOW_COMPLETED_RETENTION", "5m"),
            // deploy/k8s sets this one from the pod name.
            (
                "SAGAFLOW_KAFKA__PROPERTIES__GROUP_INSTANCE_ID",
                "orchestrator-2",
            ),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let cfg = OrchestratorConfig::from_yaml_with_env(Path::new("o.yaml"), MIN, env).unwrap();
        assert_eq!(cfg.partitions.get(), 12);
        assert_eq!(cfg.http.listen.port(), 9999);
        assert_eq!(cfg.kafka.bootstrap_servers, "env:9093");
        assert_eq!(
            cfg.kafka
                .properties
                .get("security.protocol")
                .map(String::as_str),
            Some("SASL_SSL")
        );
        assert_eq!(
            cfg.kafka
                .properties
                .get("group.instance.id")
                .map(String::as_str),
            Some("orchestrator-2")
        );
        assert_eq!(cfg.completed_retention, Duration::from_secs(300));
    }
}
