//! The adapter process's configuration: where Kafka is, how the wire is
//! encoded, and which service config file to run.
//!
//! ```yaml
//! kafka:
//!   bootstrap-servers: 127.0.0.1:9092
//!   properties: { security.protocol: PLAINTEXT }   # librdkafka, passed through
//! topics: { prefix: "" }                           # optional
//! codec:
//!   registry: { url: http://127.0.0.1:8081 }
//!   default-format: { format: avro }
//! service: legacy-bank.yaml          # relative to this file
//! group-id: sagaflow-adapter-legacy-bank           # default
//! http: { listen: 127.0.0.1:9100 }   # /healthz, /readyz, /metrics
//! max-in-flight: 64                  # commands executing at once
//! shutdown-timeout: 30s              # grace for in-flight commands
//! ```

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sagaflow_bus::{KafkaConfig, TopicNames};
use sagaflow_codec::{CodecConfig, ValidatedCodecConfig};
use serde::Deserialize;

use crate::config::{ServiceConfig, from_yaml_overridden};
use crate::error::AdapterError;

/// Bytes a reply may add around the backend's body: its other fields (ids
/// echoed from the command, an error message), headers, key and Kafka's
/// per-record overhead. `max-response-bytes` plus this must fit in the
/// producer's `message.max.bytes`.
pub const REPLY_ENVELOPE_OVERHEAD: u64 = 64 * 1024;

/// librdkafka's default `message.max.bytes`.
pub const DEFAULT_MESSAGE_MAX_BYTES: u64 = 1_000_000;

/// The top-level keys of the process config file; only variables naming
/// one are overrides.
const PROCESS_KEYS: &[&str] = &[
    "kafka",
    "topics",
    "codec",
    "service",
    "group-id",
    "http",
    "max-in-flight",
    "shutdown-timeout",
];

/// The process config file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RawProcessConfig {
    pub kafka: KafkaConfig,
    #[serde(default)]
    pub topics: TopicNames,
    pub codec: CodecConfig,
    /// Path of the service config file, relative to the process config.
    pub service: PathBuf,
    #[serde(default)]
    pub group_id: Option<String>,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: NonZeroUsize,
    /// How long a shutdown waits for in-flight commands.
    #[serde(default = "default_shutdown_timeout", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
}

/// The operational HTTP endpoint (`/healthz`, `/readyz`, `/metrics`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct HttpConfig {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9100))
}

fn default_max_in_flight() -> NonZeroUsize {
    NonZeroUsize::new(64).unwrap_or(NonZeroUsize::MIN)
}

fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}

/// A validated process configuration, with its service config loaded.
#[derive(Debug, Clone)]
pub struct ProcessConfig {
    pub kafka: KafkaConfig,
    pub topics: TopicNames,
    pub codec: ValidatedCodecConfig,
    /// The service config file (resolved path) and its content.
    pub service_file: PathBuf,
    pub service: ServiceConfig,
    pub group_id: String,
    pub http_listen: SocketAddr,
    pub max_in_flight: NonZeroUsize,
    pub shutdown_timeout: Duration,
    /// The producer's `message.max.bytes` (from `kafka.properties`, else
    /// librdkafka's default).
    pub message_max_bytes: u64,
}

impl ProcessConfig {
    /// Reads the process config at `path` with `SAGAFLOW_…` environment
    /// overrides (see [`Self::load_with_env`]), then the service config it
    /// names.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, AdapterError> {
        Self::load_with_env(path, std::env::vars())
    }

    /// Reads the process config at `path`, overriding values from `vars`
    /// named `SAGAFLOW_<KEY>__<KEY>…` (`SAGAFLOW_KAFKA__BOOTSTRAP_SERVERS`,
    /// `SAGAFLOW_KAFKA__PROPERTIES__SASL_PASSWORD`, `SAGAFLOW_HTTP__LISTEN`,
    /// `SAGAFLOW_MAX_IN_FLIGHT`; rules in
    /// [`sagaflow_config::apply_env_overrides`]), then the service
    /// config it names.
    pub fn load_with_env(
        path: impl AsRef<Path>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, AdapterError> {
        let path = path.as_ref();
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| AdapterError::ConfigRead {
            file: file.clone(),
            message: e.to_string(),
        })?;
        let raw: RawProcessConfig = from_yaml_overridden(&text, &file, |value| {
            sagaflow_config::apply_env_overrides(value, PROCESS_KEYS, vars);
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let service_file = base.join(&raw.service);
        let service = crate::config::load_file(&service_file)?;
        raw.validate(&file, service_file, service)
    }

    /// The commands topic this process consumes.
    pub fn commands_topic(&self) -> String {
        self.topics.commands(&self.service.service)
    }
}

impl RawProcessConfig {
    /// Checks the values serde cannot; `service` is the loaded service config.
    pub fn validate(
        self,
        file: &str,
        service_file: PathBuf,
        service: ServiceConfig,
    ) -> Result<ProcessConfig, AdapterError> {
        let invalid = |key: &str, message: String| AdapterError::ConfigInvalid {
            file: file.to_owned(),
            key: key.to_owned(),
            message,
        };
        if self.kafka.bootstrap_servers.trim().is_empty() {
            return Err(invalid(
                "kafka.bootstrap-servers",
                "must name at least one broker, e.g. `127.0.0.1:9092`".into(),
            ));
        }
        let codec = self
            .codec
            .validate()
            .map_err(|e| invalid("codec", e.to_string()))?;
        let group_id = match self.group_id {
            Some(g) if g.trim().is_empty() => {
                return Err(invalid("group-id", "must not be empty".into()));
            }
            Some(g) => g,
            None => format!("sagaflow-adapter-{}", service.service),
        };
        if self.shutdown_timeout.is_zero() {
            return Err(invalid("shutdown-timeout", "must be longer than 0s".into()));
        }
        let message_max_bytes = match self.kafka.properties.get("message.max.bytes") {
            None => DEFAULT_MESSAGE_MAX_BYTES,
            Some(v) => v.trim().parse::<u64>().map_err(|_| {
                invalid(
                    "kafka.properties.message.max.bytes",
                    format!("`{v}` is not a number of bytes"),
                )
            })?,
        };
        let max_response_bytes = service.protection.max_response_bytes;
        if max_response_bytes.saturating_add(REPLY_ENVELOPE_OVERHEAD) > message_max_bytes {
            return Err(AdapterError::MessageLimit {
                file: service_file.display().to_string(),
                max_response_bytes,
                message_max_bytes,
                overhead: REPLY_ENVELOPE_OVERHEAD,
                fits: message_max_bytes.saturating_sub(REPLY_ENVELOPE_OVERHEAD),
            });
        }
        Ok(ProcessConfig {
            kafka: self.kafka,
            topics: self.topics,
            codec,
            service_file,
            service,
            group_id,
            http_listen: self.http.listen,
            max_in_flight: self.max_in_flight,
            shutdown_timeout: self.shutdown_timeout,
            message_max_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICE: &str = "service: payments\nbase-urls: [\"http://127.0.0.1:9/\"]\noperations:\n  charge:\n    rest: { method: POST, path: /charges }\n";
    const PROCESS: &str = "kafka:\n  bootstrap-servers: 127.0.0.1:9092\ncodec:\n  default-format: { format: json }\nservice: svc/payments.yaml\n";

    fn write(dir: &Path, process: &str) -> PathBuf {
        std::fs::create_dir_all(dir.join("svc")).unwrap();
        std::fs::write(dir.join("svc/payments.yaml"), SERVICE).unwrap();
        let p = dir.join("adapter.yaml");
        std::fs::write(&p, process).unwrap();
        p
    }

    #[test]
    fn defaults_and_relative_service_path() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ProcessConfig::load(write(dir.path(), PROCESS)).unwrap();
        assert_eq!(cfg.group_id, "sagaflow-adapter-payments");
        assert_eq!(cfg.http_listen, "127.0.0.1:9100".parse().unwrap());
        assert_eq!(cfg.max_in_flight.get(), 64);
        assert_eq!(cfg.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(cfg.service_file, dir.path().join("svc/payments.yaml"));
        assert_eq!(cfg.commands_topic(), "sagaflow.commands.payments");
    }

    #[test]
    fn environment_variables_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let vars = [
            ("SAGAFLOW_KAFKA__BOOTSTRAP_SERVERS", "kafka:9093"),
            ("SAGAFLOW_KAFKA__PROPERTIES__SECURITY_PROTOCOL", "SASL_SSL"),
            ("SAGAFLOW_KAFKA__PROPERTIES__SASL_PASSWORD", "s3cret"),
            ("SAGAFLOW_HTTP__LISTEN", "0.0.0.0:9200"),
            ("SAGAFLOW_MAX_IN_FLIGHT", "8"),
            ("SAGAFLOW_GROUP_ID", "adapters-staging"),
            ("SAGAFLOW_ADAPTER_CONFIG", "not an override"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let cfg = ProcessConfig::load_with_env(write(dir.path(), PROCESS), vars).unwrap();
        assert_eq!(cfg.kafka.bootstrap_servers, "kafka:9093");
        assert_eq!(cfg.kafka.properties["security.protocol"], "SASL_SSL");
        assert_eq!(cfg.kafka.properties["sasl.password"], "s3cret");
        assert_eq!(cfg.http_listen, "0.0.0.0:9200".parse().unwrap());
        assert_eq!(cfg.max_in_flight.get(), 8);
        assert_eq!(cfg.group_id, "adapters-staging");
        // A bad override is reported like a bad file value.
        let bad = [("SAGAFLOW_MAX_IN_FLIGHT".to_owned(), "0".to_owned())];
        let err = ProcessConfig::load_with_env(write(dir.path(), PROCESS), bad).unwrap_err();
        assert!(err.to_string().contains("max-in-flight"), "{err}");
    }

    #[test]
    fn errors_point_at_file_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!("{PROCESS}max-in-flight: 0\n");
        let err = ProcessConfig::load(write(dir.path(), &text)).unwrap_err();
        match &err {
            AdapterError::ConfigParse { line, column, .. } => {
                assert_eq!((*line, *column), (6, 1), "{err}")
            }
            other => panic!("{other:?}"),
        }
        let text = PROCESS.replace("codec:", "codecs:");
        let err = ProcessConfig::load(write(dir.path(), &text)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("adapter.yaml:3:1"), "{msg}");
        assert!(msg.contains("unknown field `codecs`"), "{msg}");
        let text = format!("{PROCESS}http:\n  listen: nowhere\n");
        let err = ProcessConfig::load(write(dir.path(), &text)).unwrap_err();
        assert!(err.to_string().contains("adapter.yaml:7:3"), "{err}");
    }

    #[test]
    fn codec_and_group_are_validated() {
        let dir = tempfile::tempdir().unwrap();
        let text = PROCESS.replace("{ format: json }", "{ format: avro }");
        let err = ProcessConfig::load(write(dir.path(), &text)).unwrap_err();
        assert_eq!(err.code(), "SF-ADAPTER-003");
        assert!(err.to_string().contains("registry"), "{err}");
        let text = format!("{PROCESS}group-id: \"\"\n");
        let err = ProcessConfig::load(write(dir.path(), &text)).unwrap_err();
        assert!(err.to_string().contains("group-id"), "{err}");
    }

    #[test]
    fn documented_example_is_valid() {
        let doc = include_str!("../../../docs/adapters.md");
        let block = |from: usize| {
            let start = doc[from..].find("```yaml\n").expect("yaml block") + from + 8;
            let len = doc[start..].find("```").expect("end of block");
            &doc[start..start + len]
        };
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("legacy-bank.yaml"), block(0)).unwrap();
        let process = block(doc.find("## Running an adapter").expect("section"));
        std::fs::write(dir.path().join("adapter.yaml"), process).unwrap();
        let cfg = ProcessConfig::load(dir.path().join("adapter.yaml")).unwrap();
        assert_eq!(cfg.group_id, "sagaflow-adapter-legacy-bank");
        assert_eq!(cfg.kafka.properties["sasl.mechanism"], "SCRAM-SHA-512");
        assert_eq!(cfg.commands_topic(), "sagaflow.commands.legacy-bank");
    }

    #[test]
    fn response_limit_must_fit_the_message_limit() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), PROCESS);
        // Defaults agree: 900,000 + 65,536 <= 1,000,000.
        let cfg = ProcessConfig::load(&p).unwrap();
        assert_eq!(cfg.message_max_bytes, 1_000_000);
        assert_eq!(
            cfg.service.protection.max_response_bytes,
            crate::config::DEFAULT_MAX_RESPONSE_BYTES
        );
        // The old default (1 MiB) does not.
        let svc = dir.path().join("svc/payments.yaml");
        std::fs::write(
            &svc,
            format!("{SERVICE}protection: {{ max-response-bytes: 1048576 }}\n"),
        )
        .unwrap();
        let err = ProcessConfig::load(&p).unwrap_err();
        assert_eq!(err.code(), "SF-ADAPTER-023");
        let msg = err.to_string();
        for part in ["1048576", "1000000", "934464", "payments.yaml"] {
            assert!(msg.contains(part), "{part} in {msg}");
        }
        // Raising message.max.bytes makes it fit.
        let vars = [(
            "SAGAFLOW_KAFKA__PROPERTIES__MESSAGE_MAX_BYTES".to_owned(),
            "2000000".to_owned(),
        )];
        let cfg = ProcessConfig::load_with_env(&p, vars).unwrap();
        assert_eq!(cfg.message_max_bytes, 2_000_000);
        let vars = [(
            "SAGAFLOW_KAFKA__PROPERTIES__MESSAGE_MAX_BYTES".to_owned(),
            "lots".to_owned(),
        )];
        let err = ProcessConfig::load_with_env(&p, vars).unwrap_err();
        assert!(err.to_string().contains("message.max.bytes"), "{err}");
    }

    #[test]
    fn a_missing_service_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), &PROCESS.replace("svc/payments", "svc/nope"));
        let err = ProcessConfig::load(p).unwrap_err();
        assert_eq!(err.code(), "SF-ADAPTER-001");
        assert!(err.to_string().contains("nope.yaml"), "{err}");
    }
}

#[cfg(test)]
mod deploy_tests {
    use super::*;

    /// The compose stack runs every adapter from deploy/compose/adapter.yaml
    /// with `SAGAFLOW_SERVICE` naming its service definition: each of them
    /// must load as the container would load it.
    #[test]
    fn compose_adapter_configs_load_for_every_service() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/compose");
        let services = std::fs::read_dir(dir.join("services")).unwrap();
        let mut n = 0;
        for entry in services {
            let file = entry.unwrap().file_name().to_string_lossy().into_owned();
            let Some(name) = file.strip_suffix(".service.yaml") else {
                continue;
            };
            let vars = [("SAGAFLOW_SERVICE".to_owned(), format!("services/{file}"))];
            let cfg = ProcessConfig::load_with_env(dir.join("adapter.yaml"), vars)
                .unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(cfg.service.service, name);
            assert_eq!(cfg.group_id, format!("sagaflow-adapter-{name}"));
            n += 1;
        }
        assert_eq!(n, 11, "one definition per demo service");
    }
}
