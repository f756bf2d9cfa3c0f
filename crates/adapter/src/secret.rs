//! Secrets: read from the environment or a file, never printed.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

use crate::error::AdapterError;

/// A secret value. `Debug` and `Display` print `***`; the only way to the
/// value is [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value, for putting on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Where a secret comes from: `{ env: NAME }` or `{ file: /path }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum SecretSource {
    /// An environment variable's value.
    Env(String),
    /// A file's content, trailing newline trimmed.
    File(PathBuf),
}

impl SecretSource {
    /// Reads the secret. Errors name the variable or file, never the value.
    pub fn resolve(&self) -> Result<Secret, AdapterError> {
        match self {
            Self::Env(name) => {
                std::env::var(name)
                    .map(Secret)
                    .map_err(|_| AdapterError::SecretUnavailable {
                        source_desc: format!(
                            "environment variable `{name}` is not set or not UTF-8"
                        ),
                    })
            }
            Self::File(path) => std::fs::read_to_string(path)
                .map(|s| Secret(s.trim_end_matches(['\r', '\n']).to_owned()))
                .map_err(|e| AdapterError::SecretUnavailable {
                    source_desc: format!("file `{}` cannot be read: {e}", path.display()),
                }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_redact() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn file_secret_is_trimmed_and_missing_file_named() {
        let dir = std::env::temp_dir().join(format!("sf-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "s3cr3t-value\n").unwrap();
        let s = SecretSource::File(path.clone()).resolve().unwrap();
        assert_eq!(s.expose(), "s3cr3t-value");
        let err = SecretSource::File(dir.join("nope")).resolve().unwrap_err();
        assert!(err.to_string().contains("nope"));
        assert!(err.to_string().contains("SF-ADAPTER-004"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_env_is_named() {
        let err = SecretSource::Env("SF_TEST_DEFINITELY_UNSET_VAR".into())
            .resolve()
            .unwrap_err();
        assert!(err.to_string().contains("SF_TEST_DEFINITELY_UNSET_VAR"));
    }
}
