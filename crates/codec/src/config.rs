//! Codec configuration: the schema registry and a format per topic.
//!
//! ```yaml
//! registry:
//!   url: http://127.0.0.1:8081
//!   auth: { type: basic, username: sagaflow, password: secret }   # or { type: bearer, token: … }
//!   timeout: 5s
//! topics:
//!   sagaflow.replies: { format: avro, subject-strategy: topic-name }
//!   sagaflow.commands.*: { format: avro, subject-strategy: record-name }
//!   legacy.events: { format: json }
//! default-format: { format: avro }
//! limits:                       # optional; these are the defaults
//!   schema: { max-schema-bytes: 524288, max-depth: 32, max-fields: 1024, max-symbols: 10000,
//!             max-union-branches: 128, max-fixed-bytes: 65536, max-types: 100000 }
//!   value: { max-depth: 64, max-values: 1000000 }
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::error::ConfigError;
pub use sagaflow_avro_limits::SchemaLimits;

/// Raw codec configuration, as deserialized.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CodecConfig {
    /// The schema registry; required when any topic is Avro.
    #[serde(default)]
    pub registry: Option<RegistryConfig>,
    /// Format per topic. A key ending in `*` matches every topic starting
    /// with what precedes it; the longest matching key wins.
    #[serde(default)]
    pub topics: BTreeMap<String, TopicFormat>,
    /// Format of topics not matched by `topics`; without it they are an error.
    #[serde(default)]
    pub default_format: Option<TopicFormat>,
    /// What a writer schema and a value may cost to decode.
    #[serde(default)]
    pub limits: DecodeLimits,
}

/// Limits on what the decoder accepts from a writer: every writer schema is
/// checked against `schema` before use, every Avro body against `value`
/// before `apache-avro` reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct DecodeLimits {
    /// Size and complexity of writer schemas (refused with SF-CODEC-011).
    pub schema: SchemaLimits,
    /// Work one value may cost (refused with SF-CODEC-012).
    pub value: ValueLimits,
}

/// How much work decoding one value may take. Lengths in the data (strings,
/// bytes, fixed) are always checked against the bytes that are left; these
/// bound what costs no bytes: nesting of recursive types, and values that
/// take zero bytes each (an array of a million nulls).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct ValueLimits {
    /// Nesting of values inside each other (default 64).
    pub max_depth: usize,
    /// Values in one message, every record field, array item, map entry and
    /// union branch counted (default 1,000,000).
    pub max_values: usize,
}

impl Default for ValueLimits {
    fn default() -> Self {
        Self {
            max_depth: 64,
            max_values: 1_000_000,
        }
    }
}

/// How values on a topic are encoded.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "format", rename_all = "kebab-case", deny_unknown_fields)]
pub enum TopicFormat {
    /// Avro in the Confluent wire format.
    #[serde(rename_all = "kebab-case")]
    Avro {
        /// How the subject is named.
        #[serde(default)]
        subject_strategy: SubjectStrategy,
        /// Register the compiled-in schema on first use (idempotent). When
        /// `false` the latest version of the subject is used as it is.
        #[serde(default = "yes")]
        auto_register: bool,
    },
    /// Plain JSON (UTF-8), no schema id.
    Json,
}

fn yes() -> bool {
    true
}

impl TopicFormat {
    /// Avro with the record-name strategy and auto-registration.
    pub fn avro() -> Self {
        Self::Avro {
            subject_strategy: SubjectStrategy::RecordName,
            auto_register: true,
        }
    }
}

/// Confluent subject name strategies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SubjectStrategy {
    /// `<topic>-value`: one record type per topic.
    TopicName,
    /// The record's full name: a type may appear on several topics, a topic may carry several types.
    #[default]
    RecordName,
    /// `<topic>-<record full name>`.
    TopicRecordName,
}

impl SubjectStrategy {
    /// The subject for a value of record `full_name` on `topic`.
    pub fn subject(self, topic: &str, full_name: &str) -> String {
        match self {
            Self::TopicName => format!("{topic}-value"),
            Self::RecordName => full_name.to_string(),
            Self::TopicRecordName => format!("{topic}-{full_name}"),
        }
    }
}

/// Where the schema registry is and how to authenticate.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RegistryConfig {
    /// Base URL, e.g. `http://127.0.0.1:8081`.
    pub url: String,
    /// Authentication, if the registry wants it.
    #[serde(default)]
    pub auth: Option<RegistryAuth>,
    /// HTTP timeout per request, e.g. `5s`, `500ms` (default 10s).
    #[serde(default)]
    pub timeout: Option<String>,
}

/// Registry authentication.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum RegistryAuth {
    /// HTTP basic auth (Confluent Cloud: API key and secret).
    Basic {
        /// User name / API key.
        username: String,
        /// Password / API secret.
        password: String,
    },
    /// Bearer token.
    Bearer {
        /// The token.
        token: String,
    },
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Self::Bearer { .. } => f
                .debug_struct("Bearer")
                .field("token", &"<redacted>")
                .finish(),
        }
    }
}

/// A configuration that passed [`CodecConfig::validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedCodecConfig {
    pub(crate) registry: Option<ValidatedRegistry>,
    pub(crate) topics: BTreeMap<String, TopicFormat>,
    pub(crate) default_format: Option<TopicFormat>,
    pub(crate) limits: DecodeLimits,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ValidatedRegistry {
    pub(crate) url: String,
    pub(crate) auth: Option<RegistryAuth>,
    pub(crate) timeout: Duration,
}

/// Parses `250ms`, `5s`, `2m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{text}` has no unit; use ms, s or m, e.g. \"5s\""))?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` does not start with a number, e.g. \"5s\""))?;
    match unit.trim() {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n.saturating_mul(60))),
        other => Err(format!(
            "unknown unit `{other}` in `{text}`; use ms, s or m"
        )),
    }
}

impl CodecConfig {
    /// A config sending every topic through Avro at `url` (record-name strategy, auto-register).
    pub fn avro_everywhere(url: impl Into<String>) -> Self {
        Self {
            registry: Some(RegistryConfig {
                url: url.into(),
                auth: None,
                timeout: None,
            }),
            topics: BTreeMap::new(),
            default_format: Some(TopicFormat::avro()),
            limits: DecodeLimits::default(),
        }
    }

    /// Checks the configuration; nothing starts from an unvalidated one.
    pub fn validate(self) -> Result<ValidatedCodecConfig, ConfigError> {
        let err = |message: String| ConfigError { message };
        let uses_avro = self
            .topics
            .values()
            .chain(self.default_format.iter())
            .any(|f| matches!(f, TopicFormat::Avro { .. }));
        for key in self.topics.keys() {
            if key.is_empty() || key[..key.len() - 1].contains('*') {
                return Err(err(format!(
                    "topic key `{key}`: use a topic name, or a prefix followed by a single trailing `*`"
                )));
            }
        }
        let registry = match self.registry {
            None if uses_avro => {
                return Err(err(
                    "an Avro topic is configured but `registry` is missing; add `registry: { url: http://… }`".into(),
                ));
            }
            None => None,
            Some(r) => {
                if !(r.url.starts_with("http://") || r.url.starts_with("https://")) {
                    return Err(err(format!(
                        "registry url `{}` must start with http:// or https://",
                        r.url
                    )));
                }
                let timeout = match &r.timeout {
                    None => Duration::from_secs(10),
                    Some(t) => {
                        parse_duration(t).map_err(|m| err(format!("registry timeout: {m}")))?
                    }
                };
                if timeout.is_zero() {
                    return Err(err("registry timeout must not be zero".into()));
                }
                Some(ValidatedRegistry {
                    url: r.url.trim_end_matches('/').to_string(),
                    auth: r.auth,
                    timeout,
                })
            }
        };
        let limits = self.limits;
        for (name, value) in [
            ("schema.max-schema-bytes", limits.schema.max_schema_bytes),
            ("schema.max-depth", limits.schema.max_depth),
            ("schema.max-types", limits.schema.max_types),
            ("value.max-depth", limits.value.max_depth),
            ("value.max-values", limits.value.max_values),
        ] {
            if value == 0 {
                return Err(err(format!(
                    "limits.{name} must be at least 1 (leave it out for the default)"
                )));
            }
        }
        Ok(ValidatedCodecConfig {
            registry,
            topics: self.topics,
            default_format: self.default_format,
            limits,
        })
    }
}

impl ValidatedCodecConfig {
    /// The decode limits in force.
    pub fn limits(&self) -> &DecodeLimits {
        &self.limits
    }

    /// The format of `topic`, if configured.
    pub fn format(&self, topic: &str) -> Option<&TopicFormat> {
        if let Some(exact) = self.topics.get(topic) {
            return Some(exact);
        }
        self.topics
            .iter()
            .filter_map(|(key, format)| {
                let prefix = key.strip_suffix('*')?;
                topic.starts_with(prefix).then_some((prefix.len(), format))
            })
            .max_by_key(|(len, _)| *len)
            .map(|(_, format)| format)
            .or(self.default_format.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<CodecConfig, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn parses_kebab_case_and_picks_longest_prefix() {
        let config = parse(
            r#"{"registry": {"url": "http://127.0.0.1:8081/", "auth": {"type": "bearer", "token": "t"}, "timeout": "500ms"},
                "topics": {"sagaflow.*": {"format": "json"},
                           "sagaflow.commands.*": {"format": "avro", "subject-strategy": "topic-name", "auto-register": false},
                           "sagaflow.replies": {"format": "avro"}}}"#,
        )
        .unwrap()
        .validate()
        .unwrap();
        assert_eq!(
            config.registry.as_ref().unwrap().url,
            "http://127.0.0.1:8081"
        );
        assert_eq!(
            config.registry.as_ref().unwrap().timeout,
            Duration::from_millis(500)
        );
        assert_eq!(
            config.format("sagaflow.commands.payments"),
            Some(&TopicFormat::Avro {
                subject_strategy: SubjectStrategy::TopicName,
                auto_register: false
            })
        );
        assert_eq!(
            config.format("sagaflow.replies"),
            Some(&TopicFormat::avro())
        );
        assert_eq!(
            config.format("sagaflow.saga-events"),
            Some(&TopicFormat::Json)
        );
        assert_eq!(config.format("orders.events"), None);
    }

    #[test]
    fn rejects_unknown_fields_and_missing_registry() {
        assert!(parse(r#"{"topcs": {}}"#).is_err());
        assert!(parse(r#"{"topics": {"t": {"format": "avro", "strategy": "x"}}}"#).is_err());
        let err = parse(r#"{"topics": {"t": {"format": "avro"}}}"#)
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(err.message.contains("registry"), "{err}");
        let err = parse(r#"{"registry": {"url": "localhost:8081"}}"#)
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(err.message.contains("http://"), "{err}");
    }

    #[test]
    fn limits_have_safe_defaults_and_can_be_set() {
        let config = parse(
            r#"{"limits": {"schema": {"max-fixed-bytes": 16}, "value": {"max-values": 10}}}"#,
        )
        .unwrap()
        .validate()
        .unwrap();
        assert_eq!(config.limits().schema.max_fixed_bytes, 16);
        assert_eq!(config.limits().schema.max_depth, 32);
        assert_eq!(config.limits().value.max_values, 10);
        assert_eq!(config.limits().value.max_depth, 64);
        assert_eq!(
            parse("{}").unwrap().validate().unwrap().limits(),
            &DecodeLimits::default()
        );
        assert!(parse(r#"{"limits": {"value": {"max-valus": 10}}}"#).is_err());
        let err = parse(r#"{"limits": {"value": {"max-depth": 0}}}"#)
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(err.message.contains("value.max-depth"), "{err}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("5h").is_err());
    }

    #[test]
    fn auth_is_redacted_in_debug() {
        let auth = RegistryAuth::Basic {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{auth:?}").contains("hunter2"));
    }
}
