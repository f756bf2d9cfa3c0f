use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::types::RDKafkaErrorCode;
use serde::Deserialize;

use crate::{Error, KafkaConfig};

/// Sagaflow's topic names, all sharing an optional prefix (for several
/// environments on one cluster).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct TopicNames {
    #[serde(default)]
    pub prefix: String,
}

impl TopicNames {
    pub fn with_prefix(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }
    /// `<domain>.events`: domain events published by existing systems.
    pub fn events(&self, domain: &str) -> String {
        format!("{}{domain}.events", self.prefix)
    }
    /// `sagaflow.commands.<service>`: commands for one service's adapter.
    pub fn commands(&self, service: &str) -> String {
        format!("{}sagaflow.commands.{service}", self.prefix)
    }
    /// Internal: triggers, awaited events and operator requests re-keyed
    /// by saga id, co-partitioned with replies and saga state.
    pub fn inputs(&self) -> String {
        format!("{}sagaflow.inputs", self.prefix)
    }
    pub fn replies(&self) -> String {
        format!("{}sagaflow.replies", self.prefix)
    }
    /// Compacted changelog of saga states.
    pub fn saga_state(&self) -> String {
        format!("{}sagaflow.saga-state", self.prefix)
    }
    pub fn saga_events(&self) -> String {
        format!("{}sagaflow.saga-events", self.prefix)
    }
    pub fn dead_letter(&self) -> String {
        format!("{}sagaflow.dead-letter", self.prefix)
    }
}

/// A topic to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication: i32,
    /// Topic configs such as `cleanup.policy=compact`.
    pub config: BTreeMap<String, String>,
}

impl TopicSpec {
    pub fn new(name: impl Into<String>, partitions: i32) -> Self {
        Self {
            name: name.into(),
            partitions,
            replication: 1,
            config: BTreeMap::new(),
        }
    }

    pub fn compacted(mut self) -> Self {
        self.config
            .insert("cleanup.policy".to_owned(), "compact".to_owned());
        self
    }

    pub fn with_config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.insert(key.into(), value.into());
        self
    }

    /// Checks the name against Kafka's rules: 1–249 characters of
    /// `[a-zA-Z0-9._-]`, not `.` or `..`, and a positive partition count.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |message: String| Error::InvalidTopic {
            topic: self.name.clone(),
            message,
        };
        if self.name.is_empty() || self.name.len() > 249 {
            return Err(invalid("a topic name has 1 to 249 characters".into()));
        }
        if self.name == "." || self.name == ".." {
            return Err(invalid("`.` and `..` are not topic names".into()));
        }
        if let Some(c) = self
            .name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(invalid(format!(
                "character {c:?} is not allowed; use letters, digits, `.`, `_` and `-`"
            )));
        }
        if self.partitions < 1 {
            return Err(invalid(format!(
                "partitions must be at least 1, got {}",
                self.partitions
            )));
        }
        if self.replication < 1 {
            return Err(invalid(format!(
                "replication must be at least 1, got {}",
                self.replication
            )));
        }
        Ok(())
    }
}

/// Checks that a broker at `kafka.bootstrap_servers` answers a metadata
/// request within `timeout`, so a process with a wrong address or a broker
/// that is down fails at start with an error that says so.
pub async fn check_reachable(kafka: &KafkaConfig, timeout: Duration) -> Result<(), Error> {
    let admin = kafka.admin()?;
    let unreachable = |message: String| Error::Unreachable {
        bootstrap: kafka.bootstrap_servers.clone(),
        seconds: timeout.as_secs(),
        message,
    };
    match tokio::task::spawn_blocking(move || {
        admin.inner().fetch_metadata(None, timeout).map(|_| ())
    })
    .await
    {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(unreachable(e.to_string())),
        Err(e) => Err(unreachable(e.to_string())),
    }
}

/// Creates the topics that do not exist yet. Existing topics are left as
/// they are (their partition count and configs are not changed).
pub async fn ensure_topics(kafka: &KafkaConfig, specs: &[TopicSpec]) -> Result<(), Error> {
    for spec in specs {
        spec.validate()?;
    }
    if specs.is_empty() {
        return Ok(());
    }
    let admin = kafka.admin()?;
    let new_topics: Vec<NewTopic<'_>> = specs
        .iter()
        .map(|s| {
            let mut t = NewTopic::new(
                &s.name,
                s.partitions,
                TopicReplication::Fixed(s.replication),
            );
            for (k, v) in &s.config {
                t = t.set(k, v);
            }
            t
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results =
        admin
            .create_topics(&new_topics, &opts)
            .await
            .map_err(|e| Error::CreateTopic {
                topic: specs
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
                message: e.to_string(),
            })?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(Error::CreateTopic {
                    topic,
                    message: code.to_string(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_wire_conventions() {
        let t = TopicNames::default();
        assert_eq!(t.events("orders"), "orders.events");
        assert_eq!(t.commands("payment"), "sagaflow.commands.payment");
        assert_eq!(t.replies(), "sagaflow.replies");
        assert_eq!(t.inputs(), "sagaflow.inputs");
        assert_eq!(t.saga_state(), "sagaflow.saga-state");
        assert_eq!(t.saga_events(), "sagaflow.saga-events");
        assert_eq!(t.dead_letter(), "sagaflow.dead-letter");
        assert_eq!(
            TopicNames::with_prefix("staging.").replies(),
            "staging.sagaflow.replies"
        );
    }

    #[test]
    fn validation_names_what_is_wrong() {
        assert!(TopicSpec::new("orders.events", 3).validate().is_ok());
        let e = TopicSpec::new("orders events", 3).validate().unwrap_err();
        assert!(e.to_string().contains("' '"), "{e}");
        assert!(
            TopicSpec::new("x", 0)
                .validate()
                .unwrap_err()
                .to_string()
                .contains("partitions")
        );
        assert!(TopicSpec::new("..", 1).validate().is_err());
        assert!(TopicSpec::new("a".repeat(250), 1).validate().is_err());
    }
}
