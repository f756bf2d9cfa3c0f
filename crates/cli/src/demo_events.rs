//! Sample domain events for the worked sagas, published as an existing
//! system would (Avro, Confluent wire format, the registry's schema ids):
//! `OrderPlaced`, `BookingRequested` and `CustomerSignedUp` in turn, and each
//! customer's `EmailVerified` a moment after the sign-up. `sagaflow dev`
//! publishes them in process; `sagaflow demo-events` publishes them to any
//! cluster (the docker-compose stack runs it).

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use rdkafka::producer::FutureRecord;
use sagaflow_bus::KafkaConfig;
use sagaflow_codec::{Codec, CodecConfig};
use sagaflow_demo::samples;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::exit::{CliResult, Failure};

/// A domain event type the publisher writes: topic, Avro record, schema file
/// under `schemas/examples/`.
pub(crate) struct EventType {
    topic: &'static str,
    record: &'static str,
    schema: &'static str,
}

const ORDER_PLACED: EventType = EventType {
    topic: "orders.events",
    record: "io.sagaflow.examples.orders.OrderPlaced",
    schema: "orders/OrderPlaced.avsc",
};
const BOOKING_REQUESTED: EventType = EventType {
    topic: "travel.events",
    record: "io.sagaflow.examples.travel.BookingRequested",
    schema: "travel/BookingRequested.avsc",
};
const CUSTOMER_SIGNED_UP: EventType = EventType {
    topic: "customers.events",
    record: "io.sagaflow.examples.customers.CustomerSignedUp",
    schema: "customers/CustomerSignedUp.avsc",
};
const EMAIL_VERIFIED: EventType = EventType {
    topic: "identity.events",
    record: "io.sagaflow.examples.customers.EmailVerified",
    schema: "customers/EmailVerified.avsc",
};

/// Encodes sample events with the registry's schema ids, as an existing
/// system publishing Avro would.
pub(crate) struct Publisher {
    pub(crate) codec: Codec,
    producer: sagaflow_bus::Producer,
    schemas: HashMap<&'static str, (String, sagaflow_codec::apache_avro::Schema)>,
}

impl Publisher {
    /// `schemas` is a schemas/ directory (the examples' Avro schemas are
    /// read from `schemas/examples/`).
    pub(crate) fn new(
        kafka: &KafkaConfig,
        registry_url: &str,
        schema_dir: &Path,
    ) -> CliResult<Self> {
        let codec: CodecConfig = serde_json::from_value(json!({
            "registry": {"url": registry_url},
            "default-format": {"format": "avro"}
        }))
        .map_err(|e| Failure::Usage(e.to_string()))?;
        let mut schemas = HashMap::new();
        for t in [
            &ORDER_PLACED,
            &BOOKING_REQUESTED,
            &CUSTOMER_SIGNED_UP,
            &EMAIL_VERIFIED,
        ] {
            let path = schema_dir.join("examples").join(t.schema);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))?;
            let schema = sagaflow_codec::apache_avro::Schema::parse_str(&text)
                .map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))?;
            schemas.insert(t.record, (text, schema));
        }
        Ok(Self {
            codec: Codec::new(codec).map_err(|e| Failure::Usage(e.to_string()))?,
            producer: kafka
                .producer()
                .map_err(|e| Failure::Unreachable(e.to_string()))?,
            schemas,
        })
    }

    pub(crate) async fn publish(&self, t: &EventType, key: &str, event: &Value) -> CliResult {
        let (text, schema) = &self.schemas[t.record];
        let value = sagaflow_codec::json::json_to_avro(event, schema)
            .map_err(|e| Failure::Usage(format!("{}: {e}", t.record)))?;
        let bytes = self
            .codec
            .encode_avro_value(t.topic, t.record, text, value)
            .await
            .map_err(|e| Failure::Unreachable(e.to_string()))?;
        self.producer
            .send(
                FutureRecord::to(t.topic).key(key).payload(&bytes),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| Failure::Unreachable(format!("publishing to {}: {e}", t.topic)))?;
        Ok(())
    }
}

/// The sample stream: which trigger comes next, and the e-mail
/// verifications still to send.
pub(crate) struct Samples {
    pub(crate) publisher: Publisher,
    /// Triggers published so far, and per saga type (for the ids).
    pub(crate) published: u64,
    counters: [u64; 3],
    verifications: VecDeque<(Instant, String)>,
    verify_after: Duration,
    /// Event time of the samples (epoch ms).
    at: i64,
}

impl Samples {
    pub(crate) fn new(publisher: Publisher, verify_after: Duration) -> Self {
        Self {
            publisher,
            published: 0,
            counters: [0; 3],
            verifications: VecDeque::new(),
            verify_after,
            at: 1_700_000_000_000,
        }
    }

    /// Publishes the next trigger: an order, a booking or a sign-up, in
    /// turn, with ids `o-N`, `b-N`, `c-N` (the demo services decide each
    /// saga's outcome from N: docs/demo.md).
    pub(crate) async fn publish_next(&mut self) -> CliResult {
        let kind = (self.published % 3) as usize;
        self.counters[kind] += 1;
        let n = self.counters[kind];
        let at = self.at;
        match kind {
            0 => {
                let id = format!("o-{n}");
                let total: i64 = if n.is_multiple_of(4) { 150_000 } else { 4_990 };
                let event = samples::order_placed(&id, &format!("c-{}", n % 17), total, at);
                self.publisher.publish(&ORDER_PLACED, &id, &event).await?;
            }
            1 => {
                let id = format!("b-{n}");
                let event = samples::booking_requested(&id, &format!("traveller-{}", n % 11), at);
                self.publisher
                    .publish(&BOOKING_REQUESTED, &id, &event)
                    .await?;
            }
            _ => {
                let id = format!("c-{n}");
                let event = samples::customer_signed_up(&id, &format!("{id}@example.com"), at);
                self.publisher
                    .publish(&CUSTOMER_SIGNED_UP, &id, &event)
                    .await?;
                self.verifications
                    .push_back((Instant::now() + self.verify_after, id));
            }
        }
        self.published += 1;
        Ok(())
    }

    /// When the next e-mail verification is due, if any is pending.
    pub(crate) fn next_verification(&self) -> Option<Instant> {
        self.verifications.front().map(|(due, _)| *due)
    }

    /// How many `EmailVerified` events are still to publish.
    pub(crate) fn verifications_due(&self) -> usize {
        self.verifications.len()
    }

    /// Publishes the oldest pending `EmailVerified`.
    pub(crate) async fn publish_verification(&mut self) -> CliResult {
        if let Some((_, customer)) = self.verifications.pop_front() {
            let email = format!("{customer}@example.com");
            let event = samples::email_verified(&customer, &email, self.at);
            self.publisher
                .publish(&EMAIL_VERIFIED, &customer, &event)
                .await?;
        }
        Ok(())
    }
}

#[derive(Debug, Args)]
pub(crate) struct DemoEventsArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "SAGAFLOW_BOOTSTRAP_SERVERS")]
    bootstrap_servers: String,
    /// librdkafka producer property, repeatable (security.protocol, sasl.*, ssl.*).
    #[arg(short = 'X', long = "property", value_name = "KEY=VALUE")]
    properties: Vec<String>,
    /// Schema registry base URL.
    #[arg(long = "registry", env = "SAGAFLOW_REGISTRY_URL", value_name = "URL")]
    registry: String,
    /// The schemas/ directory (the examples' Avro schemas are read from it).
    #[arg(long, default_value = "schemas")]
    schemas: PathBuf,
    /// Trigger events per second, the three saga types in turn.
    #[arg(long, default_value_t = 5)]
    rate: u32,
    /// Stop after this many triggers (0: until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    sagas: u64,
    /// How long after signing up a customer verifies their e-mail.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    verify_after: Duration,
}

/// `sagaflow demo-events`: the sample stream to a real cluster.
pub(crate) async fn run(args: DemoEventsArgs) -> CliResult {
    if args.rate == 0 {
        return Err(Failure::Usage("--rate must be at least 1".into()));
    }
    let mut kafka = KafkaConfig::new(&args.bootstrap_servers);
    for p in &args.properties {
        let (k, v) = crate::topology::parse_property(p).map_err(Failure::Usage)?;
        kafka = kafka.with(k, v);
    }
    sagaflow_bus::check_reachable(&kafka, Duration::from_secs(10))
        .await
        .map_err(|e| Failure::Unreachable(e.to_string()))?;
    let publisher = Publisher::new(&kafka, &args.registry, &args.schemas)?;
    let mut samples = Samples::new(publisher, args.verify_after);
    let period = Duration::from_secs_f64(1.0 / f64::from(args.rate));
    let mut next = Instant::now();
    let mut report = Instant::now() + Duration::from_secs(10);
    let stop = crate::signals::terminated();
    tokio::pin!(stop);
    loop {
        let more = args.sagas == 0 || samples.published < args.sagas;
        if !more && samples.next_verification().is_none() {
            break;
        }
        let verify = samples.next_verification();
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep_until(verify.unwrap_or(next)), if verify.is_some() => {
                samples.publish_verification().await?;
            }
            _ = tokio::time::sleep_until(next), if more => {
                samples.publish_next().await?;
                next += period;
            }
        }
        if Instant::now() >= report {
            println!("demo-events: {} triggers published", samples.published);
            report += Duration::from_secs(10);
        }
    }
    println!("demo-events: {} triggers published", samples.published);
    Ok(())
}
