use std::collections::BTreeMap;

use rdkafka::ClientConfig;
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{ConsumerContext, StreamConsumer};
use serde::Deserialize;

use crate::Error;

/// Kafka connection settings. `properties` are librdkafka properties passed
/// through untouched (`security.protocol`, `sasl.*`, `ssl.*`, …), so users
/// configure Sagaflow with the names they already know; they override the
/// defaults Sagaflow sets for each client role.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct KafkaConfig {
    pub bootstrap_servers: String,
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// What a client is for; each role gets the defaults its correctness needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientRole {
    /// Idempotent producer: `acks=all`, no duplicates from internal retries.
    Producer,
    /// Consumer that commits only what the caller stored after its effects
    /// are durable (`enable.auto.commit=false`, `enable.auto.offset.store=false`).
    Consumer,
    Admin,
}

impl ClientRole {
    fn name(self) -> &'static str {
        match self {
            Self::Producer => "producer",
            Self::Consumer => "consumer",
            Self::Admin => "admin",
        }
    }

    fn defaults(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Self::Producer => &[
                ("enable.idempotence", "true"),
                ("acks", "all"),
                // Send at once: a saga waits on each of its records (a
                // changelog write, a command, a reply), so a linger is paid
                // on every hop. `sagaflow bench`, same binary, alternated:
                // at 10 sagas in flight 0 ms gave p50 46-49 ms against
                // 60 ms at 1 ms; sagas published 3,000 at once complete
                // ~20 % slower (fewer records per request). Set
                // `linger.ms` in `kafka.properties` to trade back.
                ("linger.ms", "0"),
                // Java clients' partitioner: records keyed by saga id land on
                // the same partition whichever client (or language) sent them,
                // which co-partitioning of inputs, replies and state needs.
                ("partitioner", "murmur2_random"),
                ("message.timeout.ms", "30000"),
            ],
            Self::Consumer => &[
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("auto.offset.reset", "earliest"),
                // A broker answers a fetch as soon as records are there
                // (the embedded one too, docs/broker.md), so the wait only
                // bounds how long an idle consumer's fetch is held: each
                // idle consumer fetches once a wait. 1 s instead of
                // librdkafka's 500 ms took an idle `sagaflow dev` stack from
                // 0.022-0.029 to 0.019-0.020 of a core
                // (docs/orchestrator.md). Not much longer: a broker serves
                // one request of a connection at a time, so the consumer's
                // other requests there (ListOffsets, Metadata), and the
                // first fetch of a newly assigned partition, wait behind a
                // held fetch.
                ("fetch.wait.max.ms", DEFAULT_FETCH_WAIT_MS),
                // A member gone silent for 10 s loses its partitions. A
                // heartbeat every third of that (Kafka's advice, and
                // librdkafka's ratio) is also how soon a member learns of
                // a rebalance; at 1 s, heartbeats were a third of an idle
                // stack's broker requests.
                ("session.timeout.ms", "10000"),
                ("heartbeat.interval.ms", "3000"),
                ("partition.assignment.strategy", "range,roundrobin"),
                // Notice subscribed topics created after start within seconds
                // (librdkafka's default is 5 minutes).
                ("topic.metadata.refresh.interval.ms", "5000"),
            ],
            Self::Admin => &[],
        }
    }
}

/// Consumers' `fetch.wait.max.ms` unless `kafka.properties` sets it (see
/// the consumer defaults for why 1 s); `sagaflow bench` starts from it too.
pub const DEFAULT_FETCH_WAIT_MS: &str = "1000";

/// Defaults of every client, whatever its role.
const EVERY_CLIENT: &[(&str, &str)] = &[
    // KIP-714 client metrics: librdkafka asks the broker for its
    // subscription (GetTelemetrySubscriptions) every few seconds per
    // client, and Sagaflow exports its own metrics. Counted on an idle
    // `sagaflow dev` stack: 5.8 of its 51 broker requests a second.
    ("enable.metrics.push", "false"),
];

/// librdkafka properties that only consumers read. One `properties` map
/// serves every client of a process; passing these to a producer or admin
/// client only earns a CONFWARN log line, so they are left out there.
const CONSUMER_ONLY: &[&str] = &[
    "group.id",
    "group.instance.id",
    "group.protocol",
    "group.remote.assignor",
    "partition.assignment.strategy",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "max.poll.interval.ms",
    "enable.auto.commit",
    "auto.commit.interval.ms",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "isolation.level",
    "check.crcs",
    "enable.partition.eof",
    "offset.store.method",
];
const CONSUMER_ONLY_PREFIXES: &[&str] = &["fetch.", "queued.", "coordinator.query."];

/// Properties that only producers read.
const PRODUCER_ONLY: &[&str] = &[
    "acks",
    "request.required.acks",
    "enable.idempotence",
    "enable.gapless.guarantee",
    "transactional.id",
    "transaction.timeout.ms",
    "linger.ms",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "partitioner",
    "compression.type",
    "compression.codec",
    "compression.level",
    "retries",
    "message.send.max.retries",
    "sticky.partitioning.linger.ms",
];
const PRODUCER_ONLY_PREFIXES: &[&str] = &["queue.buffering.", "batch."];

impl ClientRole {
    /// Whether a user property is meant for this kind of client. Unknown
    /// keys pass, so librdkafka still rejects misspelt ones.
    fn accepts(self, key: &str) -> bool {
        let consumer_only = CONSUMER_ONLY.contains(&key)
            || CONSUMER_ONLY_PREFIXES.iter().any(|p| key.starts_with(p));
        let producer_only = PRODUCER_ONLY.contains(&key)
            || PRODUCER_ONLY_PREFIXES.iter().any(|p| key.starts_with(p));
        match self {
            Self::Producer => !consumer_only,
            Self::Consumer => !producer_only,
            Self::Admin => !consumer_only && !producer_only,
        }
    }
}

impl KafkaConfig {
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.into(),
            properties: BTreeMap::new(),
        }
    }

    /// Adds or replaces one librdkafka property.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(key.into(), value.into());
        self
    }

    /// The librdkafka configuration for `role`: every client's defaults,
    /// the role's, then the user's properties on top.
    pub fn client_config(&self, role: ClientRole) -> ClientConfig {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &self.bootstrap_servers);
        for (k, v) in EVERY_CLIENT {
            cfg.set(*k, *v);
        }
        for (k, v) in role.defaults() {
            cfg.set(*k, *v);
        }
        for (k, v) in &self.properties {
            if role.accepts(k) {
                cfg.set(k, v);
            }
        }
        cfg
    }

    /// Sagaflow's [`Producer`](crate::Producer): one polling thread that
    /// does not spin while idle (see `crate::producer`).
    pub fn producer(&self) -> Result<crate::Producer, Error> {
        crate::Producer::from_config(&self.client_config(ClientRole::Producer))
            .map_err(|e| self.client_error(ClientRole::Producer, &e))
    }

    /// A consumer in `group_id`, with a custom context (rebalance hooks).
    pub fn consumer_with_context<C: ConsumerContext + 'static>(
        &self,
        group_id: &str,
        context: C,
    ) -> Result<StreamConsumer<C>, Error> {
        let mut cfg = self.client_config(ClientRole::Consumer);
        cfg.set("group.id", group_id);
        // Contexts receive librdkafka's statistics (consumer lag).
        if !self.properties.contains_key("statistics.interval.ms") {
            cfg.set(
                "statistics.interval.ms",
                crate::lag::DEFAULT_STATISTICS_INTERVAL_MS,
            );
        }
        cfg.create_with_context(context)
            .map_err(|e| self.client_error(ClientRole::Consumer, &e))
    }

    pub fn consumer(&self, group_id: &str) -> Result<StreamConsumer, Error> {
        let mut cfg = self.client_config(ClientRole::Consumer);
        cfg.set("group.id", group_id);
        cfg.create()
            .map_err(|e| self.client_error(ClientRole::Consumer, &e))
    }

    pub fn admin(&self) -> Result<AdminClient<DefaultClientContext>, Error> {
        self.client_config(ClientRole::Admin)
            .create()
            .map_err(|e| self.client_error(ClientRole::Admin, &e))
    }
}

impl KafkaConfig {
    fn client_error(&self, role: ClientRole, e: &rdkafka::error::KafkaError) -> Error {
        let message = match e {
            // Name the property, never its value: it may be a password.
            rdkafka::error::KafkaError::ClientConfig(_, description, key, _) => {
                format!("invalid client property `{key}`: {description}")
            }
            other => other.to_string(),
        };
        Error::Client {
            role: role.name(),
            message: self.redact(message),
        }
    }

    /// Replaces the values of secret-looking properties wherever they
    /// appear in `text` (librdkafka descriptions may quote a bad value).
    fn redact(&self, mut text: String) -> String {
        const SECRET_HINTS: [&str; 5] = ["password", "secret", "jaas", "token", "key"];
        for (key, value) in &self.properties {
            if !value.is_empty() && SECRET_HINTS.iter().any(|h| key.contains(h)) {
                text = text.replace(value.as_str(), "***");
            }
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_properties_override_role_defaults() {
        let cfg = KafkaConfig::new("127.0.0.1:9092").with("fetch.wait.max.ms", "1");
        let consumer = cfg.client_config(ClientRole::Consumer);
        assert_eq!(consumer.get("fetch.wait.max.ms"), Some("1"));
        assert_eq!(consumer.get("enable.auto.commit"), Some("false"));
        assert_eq!(consumer.get("bootstrap.servers"), Some("127.0.0.1:9092"));
        let default = KafkaConfig::new("127.0.0.1:9092").client_config(ClientRole::Consumer);
        assert_eq!(default.get("fetch.wait.max.ms"), Some("1000"));
        let producer = cfg.client_config(ClientRole::Producer);
        assert_eq!(producer.get("enable.idempotence"), Some("true"));
        assert_eq!(producer.get("enable.auto.commit"), None);
    }

    #[test]
    fn role_specific_properties_reach_only_their_role() {
        let cfg = KafkaConfig::new("k:9092")
            .with("group.instance.id", "orchestrator-0")
            .with("fetch.wait.max.ms", "2")
            .with("linger.ms", "3")
            .with("security.protocol", "SASL_SSL");
        let producer = cfg.client_config(ClientRole::Producer);
        assert_eq!(producer.get("group.instance.id"), None);
        assert_eq!(producer.get("fetch.wait.max.ms"), None);
        assert_eq!(producer.get("linger.ms"), Some("3"));
        assert_eq!(producer.get("security.protocol"), Some("SASL_SSL"));
        let consumer = cfg.client_config(ClientRole::Consumer);
        assert_eq!(consumer.get("group.instance.id"), Some("orchestrator-0"));
        assert_eq!(consumer.get("fetch.wait.max.ms"), Some("2"));
        assert_eq!(consumer.get("linger.ms"), None);
        let admin = cfg.client_config(ClientRole::Admin);
        for c in [&producer, &consumer, &admin] {
            assert_eq!(c.get("enable.metrics.push"), Some("false"));
        }
        assert_eq!(admin.get("fetch.wait.max.ms"), None);
        assert_eq!(admin.get("linger.ms"), None);
        assert_eq!(admin.get("security.protocol"), Some("SASL_SSL"));
    }

    #[test]
    fn config_rejects_unknown_keys_and_reads_kebab_case() {
        let ok: KafkaConfig = serde_json::from_str(
            r#"{"bootstrap-servers":"k:9092","properties":{"security.protocol":"SASL_SSL"}}"#,
        )
        .unwrap();
        assert_eq!(ok.properties["security.protocol"], "SASL_SSL");
        let err = serde_json::from_str::<KafkaConfig>(r#"{"bootstrap-servers":"k","brokers":"x"}"#)
            .unwrap_err();
        assert!(err.to_string().contains("unknown field `brokers`"), "{err}");
    }

    #[test]
    fn bad_property_is_a_client_error_without_the_value() {
        let cfg = KafkaConfig::new("127.0.0.1:1")
            .with("sasl.password", "hunter2-secret")
            .with("no.such.property", "hunter2-secret");
        let err = cfg.producer().expect_err("unknown property rejected");
        let text = err.to_string();
        assert!(text.contains("SF-BUS-001"), "{text}");
        assert!(!text.contains("hunter2-secret"), "secret leaked: {text}");
        assert!(
            text.contains("no.such.property"),
            "names the property: {text}"
        );
    }

    #[test]
    fn secret_values_are_redacted_from_client_errors() {
        let cfg = KafkaConfig::new("127.0.0.1:1")
            .with("sasl.password", "p4ss")
            .with("acks", "p4ss");
        let err = cfg.producer().expect_err("acks=p4ss is invalid");
        let text = err.to_string();
        assert!(!text.contains("p4ss"), "secret leaked: {text}");
        assert!(text.contains("acks"), "names the property: {text}");
    }
}
