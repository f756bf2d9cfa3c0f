//! Limits of an HTTP server: as written in a configuration file, and
//! validated.

use std::num::NonZeroUsize;
use std::time::Duration;

use serde::Deserialize;

/// Longest timeout accepted: anything longer holds a connection for no good
/// reason.
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// Largest request body accepted as a limit.
const MAX_BODY_LIMIT: usize = 64 * 1024 * 1024;
/// Most connections accepted as a cap.
const MAX_CONNECTIONS: usize = 65_536;

/// The server limits as written (`http.limits` in a YAML file). Every field
/// has a safe default.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RawServerConfig {
    /// How long a client may take to send a request head, counted from the
    /// connection's start or from the first byte of a later request ("10s").
    #[serde(default = "default_header", with = "duration")]
    pub header_timeout: Duration,
    /// How long a client may take to send a whole request body ("30s").
    #[serde(default = "default_body", with = "duration")]
    pub body_timeout: Duration,
    /// How long a keep-alive connection may sit between requests, or a
    /// response wait for the client to read it ("60s").
    #[serde(default = "default_idle", with = "duration")]
    pub idle_timeout: Duration,
    /// Most connections served at once; more wait in the listen backlog.
    #[serde(default = "default_connections")]
    pub max_connections: usize,
    /// Largest request body, in bytes; larger ones get 413.
    #[serde(default = "default_body_bytes")]
    pub max_body_bytes: usize,
    /// How long a graceful shutdown waits for requests in flight ("10s").
    #[serde(default = "default_grace", with = "duration")]
    pub shutdown_grace: Duration,
}

fn default_header() -> Duration {
    Duration::from_secs(10)
}
fn default_body() -> Duration {
    Duration::from_secs(30)
}
fn default_idle() -> Duration {
    Duration::from_secs(60)
}
fn default_connections() -> usize {
    1024
}
fn default_body_bytes() -> usize {
    256 * 1024
}
fn default_grace() -> Duration {
    Duration::from_secs(10)
}

impl Default for RawServerConfig {
    fn default() -> Self {
        Self {
            header_timeout: default_header(),
            body_timeout: default_body(),
            idle_timeout: default_idle(),
            max_connections: default_connections(),
            max_body_bytes: default_body_bytes(),
            shutdown_grace: default_grace(),
        }
    }
}

/// A limit that cannot work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, sagaflow_codes::Coded)]
#[error("SF-HTTP-001: `{field}` {message}")]
pub struct ConfigError {
    /// The offending setting, as written (`header-timeout`).
    pub field: &'static str,
    /// What is wrong and what would be valid.
    pub message: String,
}

/// Validated server limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    pub(crate) header_timeout: Duration,
    pub(crate) body_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_connections: NonZeroUsize,
    pub(crate) max_body_bytes: usize,
    pub(crate) shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        RawServerConfig::default()
            .validate()
            .expect("the defaults are valid")
    }
}

impl RawServerConfig {
    /// Checks every limit; pure.
    pub fn validate(&self) -> Result<ServerConfig, ConfigError> {
        let timeout = |field: &'static str, d: Duration| {
            if d.is_zero() || d > MAX_TIMEOUT {
                Err(ConfigError {
                    field,
                    message: format!(
                        "is {}; write a duration above 0 and at most 1h, e.g. \"10s\"",
                        humantime::format_duration(d)
                    ),
                })
            } else {
                Ok(d)
            }
        };
        let max_connections = NonZeroUsize::new(self.max_connections)
            .filter(|n| n.get() <= MAX_CONNECTIONS)
            .ok_or_else(|| ConfigError {
                field: "max-connections",
                message: format!("is {}; write 1 to {MAX_CONNECTIONS}", self.max_connections),
            })?;
        if self.max_body_bytes == 0 || self.max_body_bytes > MAX_BODY_LIMIT {
            return Err(ConfigError {
                field: "max-body-bytes",
                message: format!(
                    "is {}; write 1 to {MAX_BODY_LIMIT} bytes",
                    self.max_body_bytes
                ),
            });
        }
        Ok(ServerConfig {
            header_timeout: timeout("header-timeout", self.header_timeout)?,
            body_timeout: timeout("body-timeout", self.body_timeout)?,
            idle_timeout: timeout("idle-timeout", self.idle_timeout)?,
            max_connections,
            max_body_bytes: self.max_body_bytes,
            shutdown_grace: timeout("shutdown-grace", self.shutdown_grace)?,
        })
    }
}

impl ServerConfig {
    /// How long a request head may take.
    pub fn header_timeout(&self) -> Duration {
        self.header_timeout
    }
    /// How long a request body may take.
    pub fn body_timeout(&self) -> Duration {
        self.body_timeout
    }
    /// How long a connection may sit idle.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }
    /// Most connections served at once.
    pub fn max_connections(&self) -> usize {
        self.max_connections.get()
    }
    /// Largest request body in bytes.
    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }
    /// How long a graceful shutdown waits.
    pub fn shutdown_grace(&self) -> Duration {
        self.shutdown_grace
    }
}

/// Durations as human strings ("250ms", "30s").
mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "`{s}` is not a duration ({e}); write e.g. \"10s\" or \"1m\""
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_safe_and_valid() {
        let cfg = ServerConfig::default();
        assert_eq!(cfg.header_timeout(), Duration::from_secs(10));
        assert_eq!(cfg.body_timeout(), Duration::from_secs(30));
        assert_eq!(cfg.idle_timeout(), Duration::from_secs(60));
        assert_eq!(cfg.max_connections(), 1024);
        assert_eq!(cfg.max_body_bytes(), 256 * 1024);
    }

    #[test]
    fn parses_human_durations_and_refuses_unknown_fields() {
        let raw: RawServerConfig = serde_json::from_value(serde_json::json!({
            "header-timeout": "2s", "max-connections": 10, "max-body-bytes": 1000
        }))
        .unwrap();
        let cfg = raw.validate().unwrap();
        assert_eq!(cfg.header_timeout(), Duration::from_secs(2));
        assert_eq!(cfg.idle_timeout(), Duration::from_secs(60));
        assert_eq!(cfg.max_connections(), 10);
        let e = serde_json::from_value::<RawServerConfig>(serde_json::json!({"idle": "1s"}))
            .unwrap_err();
        assert!(e.to_string().contains("unknown field `idle`"), "{e}");
        let e =
            serde_json::from_value::<RawServerConfig>(serde_json::json!({"body-timeout": "soon"}))
                .unwrap_err();
        assert!(e.to_string().contains("not a duration"), "{e}");
    }

    #[test]
    fn validate_refuses_limits_that_cannot_work() {
        let bad = |f: fn(&mut RawServerConfig)| {
            let mut raw = RawServerConfig::default();
            f(&mut raw);
            raw.validate().unwrap_err()
        };
        assert_eq!(
            bad(|r| r.header_timeout = Duration::ZERO).field,
            "header-timeout"
        );
        assert_eq!(
            bad(|r| r.body_timeout = Duration::from_secs(7200)).field,
            "body-timeout"
        );
        assert_eq!(
            bad(|r| r.idle_timeout = Duration::ZERO).field,
            "idle-timeout"
        );
        assert_eq!(bad(|r| r.max_connections = 0).field, "max-connections");
        assert_eq!(
            bad(|r| r.max_connections = 1 << 20).field,
            "max-connections"
        );
        assert_eq!(bad(|r| r.max_body_bytes = 0).field, "max-body-bytes");
        let e = bad(|r| r.shutdown_grace = Duration::ZERO);
        assert!(
            e.to_string().starts_with("SF-HTTP-001: `shutdown-grace`"),
            "{e}"
        );
    }
}
