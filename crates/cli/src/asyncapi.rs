//! `sagaflow topology asyncapi`: an AsyncAPI 3.0 document of the topics a
//! deployment uses, seen from the orchestrator (it receives triggers,
//! awaited events and replies; it sends commands, saga events, emitted
//! events and dead letters; an adapter does the opposite on its commands
//! and replies topics). Payloads are the Avro schemas of `schemas/`
//! (Confluent wire format: magic byte 0, 4-byte schema id, Avro body), and
//! headers are the ones `sagaflow-bus` writes. See docs/protocol.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Args;
use sagaflow_bus::header_names as h;
use sagaflow_engine::DefinitionRegistry;
use serde_json::{Map, Value, json};

use crate::exit::{CliResult, Failure};

#[derive(Debug, Args)]
pub(crate) struct AsyncapiArgs {
    /// Topology directory holding services.yaml and sagas/.
    #[arg(long, default_value = "topology", value_name = "DIR")]
    dir: PathBuf,
    /// Schemas directory holding subjects.json and the .avsc files.
    #[arg(long, default_value = "schemas", value_name = "DIR")]
    schemas: PathBuf,
    /// Prefix of every topic name (e.g. `staging.`).
    #[arg(long, default_value = "")]
    prefix: String,
    /// The Kafka server named in the document's `servers`.
    #[arg(long, default_value = "localhost:9092", value_name = "HOST:PORT")]
    bootstrap_servers: String,
    /// Write the document here instead of stdout.
    #[arg(long, short, value_name = "FILE")]
    out: Option<PathBuf>,
}

/// The Avro binding version the document uses.
const KAFKA_BINDING: &str = "0.5.0";
const AVRO_FORMAT: &str = "application/vnd.apache.avro;version=1.9.0";

pub(crate) fn run(args: &AsyncapiArgs) -> CliResult {
    let registry = crate::topology::load_valid(&args.dir)?;
    let schemas = SchemaIndex::load(&args.schemas)?;
    let doc = document(&registry, &schemas, &args.prefix, &args.bootstrap_servers);
    let text = serde_json::to_string_pretty(&doc)
        .map_err(|e| Failure::Usage(format!("cannot write the document: {e}")))?;
    match &args.out {
        None => println!("{text}"),
        Some(path) => std::fs::write(path, format!("{text}\n"))
            .map_err(|e| Failure::Usage(format!("cannot write {}: {e}", path.display())))?,
    }
    Ok(())
}

/// One `.avsc` of subjects.json.
#[derive(Debug, Clone)]
pub(crate) struct SchemaEntry {
    /// The record's short name (`OrderPlaced`).
    name: String,
    full_name: String,
    subject: String,
    topics: Vec<String>,
    strategy: String,
    schema: Value,
}

/// The schemas of a schemas/ directory, by record.
#[derive(Debug, Default)]
pub(crate) struct SchemaIndex(Vec<SchemaEntry>);

#[derive(serde::Deserialize)]
struct SubjectsFile {
    subjects: Vec<SubjectEntry>,
}

#[derive(serde::Deserialize)]
struct SubjectEntry {
    schema: String,
    subject: String,
    topics: Vec<String>,
    strategy: String,
}

impl SchemaIndex {
    pub(crate) fn load(dir: &Path) -> CliResult<Self> {
        let path = dir.join("subjects.json");
        let read = |p: &Path| {
            std::fs::read_to_string(p)
                .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", p.display())))
        };
        let file: SubjectsFile = serde_json::from_str(&read(&path)?)
            .map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))?;
        let mut entries = Vec::new();
        for s in file.subjects {
            let p = dir.join(&s.schema);
            let schema: Value = serde_json::from_str(&read(&p)?)
                .map_err(|e| Failure::Usage(format!("{}: not JSON: {e}", p.display())))?;
            let name = schema["name"].as_str().unwrap_or_default().to_owned();
            let full_name = match schema["namespace"].as_str() {
                Some(ns) if !name.contains('.') => format!("{ns}.{name}"),
                _ => name.clone(),
            };
            let name = name.rsplit('.').next().unwrap_or_default().to_owned();
            entries.push(SchemaEntry {
                name,
                full_name,
                subject: s.subject,
                topics: s.topics,
                strategy: s.strategy,
                schema,
            });
        }
        Ok(Self(entries))
    }

    /// The schema of records named `name` on `topic` (unprefixed; a
    /// `<service>` placeholder matches any service).
    fn find(&self, topic: &str, name: &str) -> Option<&SchemaEntry> {
        self.0.iter().find(|e| {
            e.name == name
                && e.topics.iter().any(|t| {
                    t == topic
                        || t.strip_suffix("<service>")
                            .is_some_and(|p| topic.starts_with(p))
                })
        })
    }
}

/// A channel id: letters, digits, `-`, `_` only.
fn id(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

fn header(description: &str) -> Value {
    json!({"type": "string", "description": description})
}

/// The headers Sagaflow writes on its own messages.
fn sagaflow_headers(type_value: &str, message_id: &str) -> Value {
    json!({
        "type": "object",
        "properties": {
            h::SAGA_ID: header("The saga id (also the record key)."),
            h::MESSAGE_ID: header(message_id),
            h::MESSAGE_TYPE: {"type": "string", "const": type_value,
                "description": "The message type."},
            h::TRACEPARENT: header("W3C trace context of the saga's trace, when tracing is on."),
            h::TRACESTATE: header("W3C trace state, when present."),
        },
        "required": [h::SAGA_ID, h::MESSAGE_ID, h::MESSAGE_TYPE],
    })
}

/// Headers a producer of domain events may set (all optional).
fn domain_headers() -> Value {
    json!({
        "type": "object",
        "properties": {
            h::MESSAGE_ID: header("A stable id of the event; without it the orchestrator uses `<topic>/<partition>/<offset>`. Used to recognise a redelivered event."),
            h::MESSAGE_TYPE: header("The event type, for JSON topics (Avro records are typed by their record name)."),
            h::TRACEPARENT: header("W3C trace context; the saga's trace continues it."),
        },
    })
}

fn avro_message(entry: &SchemaEntry, key: &str, headers: Value, summary: &str) -> Value {
    let strategy = if entry.strategy == "topic-name" {
        "TopicNameStrategy"
    } else {
        "RecordNameStrategy"
    };
    let mut m = json!({
        "name": entry.name,
        "title": entry.full_name,
        "summary": summary,
        "contentType": "avro/binary",
        "payload": {"schemaFormat": AVRO_FORMAT, "schema": entry.schema},
        "headers": headers,
        "bindings": {"kafka": {
            "key": {"type": "string", "description": key},
            "schemaIdLocation": "payload",
            "schemaIdPayloadEncoding": "confluent",
            "schemaLookupStrategy": strategy,
            "bindingVersion": KAFKA_BINDING,
        }},
    });
    if let Some(doc) = entry.schema["doc"].as_str() {
        m["description"] = json!(format!(
            "{doc}\n\nSchema registry subject: `{}`.",
            entry.subject
        ));
    }
    m
}

/// A message without a schema in schemas/ (JSON, typed by header).
fn untyped_message(name: &str, key: &str) -> Value {
    json!({
        "name": name,
        "summary": format!("`{name}`: no schema for it in schemas/ (a JSON topic, or add its .avsc to subjects.json)."),
        "contentType": "application/json",
        "payload": {"type": "object"},
        "headers": domain_headers(),
        "bindings": {"kafka": {"key": {"type": "string", "description": key}, "bindingVersion": KAFKA_BINDING}},
    })
}

#[derive(Default)]
struct Builder {
    channels: Map<String, Value>,
    operations: Map<String, Value>,
    messages: Map<String, Value>,
}

impl Builder {
    /// Adds `message` (by component name) to the channel of `topic`.
    fn channel(&mut self, topic: &str, description: &str, message: &str, body: Value) -> String {
        let cid = id(topic);
        self.messages.entry(message.to_owned()).or_insert(body);
        let ch = self.channels.entry(cid.clone()).or_insert_with(|| {
            json!({
                "address": topic,
                "description": description,
                "messages": {},
                "bindings": {"kafka": {"topic": topic, "bindingVersion": KAFKA_BINDING}},
            })
        });
        let short = message.rsplit('.').next().unwrap_or(message).to_owned();
        ch["messages"][short] = json!({"$ref": format!("#/components/messages/{message}")});
        cid
    }

    /// Adds a message of `channel` to operation `op_id` (created on first use).
    fn operation(&mut self, action: &str, channel: &str, message: &str, summary: &str) {
        let op_id = format!("{action}-{channel}");
        let short = message.rsplit('.').next().unwrap_or(message);
        let op = self.operations.entry(op_id).or_insert_with(|| {
            json!({
                "action": action,
                "channel": {"$ref": format!("#/channels/{channel}")},
                "summary": summary,
                "messages": [],
            })
        });
        let r = json!({"$ref": format!("#/channels/{channel}/messages/{short}")});
        let list = op["messages"].as_array_mut().expect("messages is a list");
        if !list.contains(&r) {
            list.push(r);
        }
    }
}

/// The AsyncAPI 3.0 document of `registry`'s topics.
pub(crate) fn document(
    registry: &DefinitionRegistry,
    schemas: &SchemaIndex,
    prefix: &str,
    server: &str,
) -> Value {
    let names = sagaflow_bus::TopicNames::with_prefix(prefix);
    let mut b = Builder::default();
    let topics = registry.topics();
    let services = &topics.services;
    // (topic, event type) -> (received?, sent?)
    let mut domain: BTreeMap<(String, String), (bool, bool)> = BTreeMap::new();
    for (sent, map) in [
        (false, &topics.triggers),
        (false, &topics.awaited),
        (true, &topics.emitted),
    ] {
        for (topic, types) in map {
            for event_type in types {
                let e = domain
                    .entry((topic.clone(), event_type.clone()))
                    .or_default();
                if sent {
                    e.1 = true;
                } else {
                    e.0 = true;
                }
            }
        }
    }
    for ((topic, event_type), (received, sent)) in &domain {
        let address = format!("{prefix}{topic}");
        let (component, body) = match schemas.find(topic, event_type) {
            Some(e) => (
                id(&e.full_name).replace('-', "."),
                avro_message(
                    e,
                    "The event's correlation key (e.g. the order id).",
                    domain_headers(),
                    &format!("`{event_type}` on `{topic}`."),
                ),
            ),
            None => (
                id(event_type),
                untyped_message(event_type, "The event's key."),
            ),
        };
        let ch = b.channel(
            &address,
            &format!("Domain events on `{topic}`."),
            &component,
            body,
        );
        if *received {
            b.operation("receive", &ch, &component, "Domain events that start a saga (trigger) or that a waiting saga correlates (await).");
        }
        if *sent {
            b.operation(
                "send",
                &ch,
                &component,
                "Domain events a saga publishes (emit steps).",
            );
        }
    }
    let command = schemas.find("sagaflow.commands.<service>", "Command");
    for service in services {
        let topic = names.commands(service);
        let body = command.map_or_else(
            || untyped_message("Command", "The saga id."),
            |e| {
                avro_message(
                    e,
                    "The saga id.",
                    sagaflow_headers("Command", "The command id: `<saga id>/<step path>/<attempt>`, or `<saga id>/<step path>/compensate/<attempt>`. Without the attempt it is the Idempotency-Key."),
                    "A command to the service's adapter.",
                )
            },
        );
        let ch = b.channel(
            &topic,
            &format!("Commands for the `{service}` adapter (one consumer group per service)."),
            "Command",
            body,
        );
        b.operation(
            "send",
            &ch,
            "Command",
            &format!("Commands to the `{service}` adapter."),
        );
    }
    if let Some(e) = schemas.find("sagaflow.replies", "Reply") {
        let body = avro_message(
            e,
            "The saga id (the same key as the command's, so a reply lands on the partition of its saga).",
            sagaflow_headers("Reply", "`<command id>/reply`."),
            "An adapter's reply to one command.",
        );
        let ch = b.channel(
            &names.replies(),
            "Replies of every adapter, keyed by saga id.",
            "Reply",
            body,
        );
        b.operation("receive", &ch, "Reply", "Adapters' replies.");
    }
    for (name, type_id, summary) in [
        (
            "SagaLifecycleEvent",
            "The event id (`<saga id>/…`).",
            "A saga started, a step ran, failed or compensated, the saga ended.",
        ),
        (
            "SagaResult",
            "`<saga id>/result`.",
            "The final result of a saga, once.",
        ),
    ] {
        if let Some(e) = schemas.find("sagaflow.saga-events", name) {
            let body = avro_message(e, "The saga id.", sagaflow_headers(name, type_id), summary);
            let ch = b.channel(
                &names.saga_events(),
                "Saga lifecycle events and results, keyed by saga id.",
                name,
                body,
            );
            b.operation(
                "send",
                &ch,
                name,
                "Lifecycle events and results of every saga.",
            );
        }
    }
    let dlq_headers = json!({
        "type": "object",
        "description": "The original record's headers, plus these.",
        "properties": {
            sagaflow_bus::dead_letter::REASON: header("Why the record was refused (a message)."),
            sagaflow_bus::dead_letter::CODE: header("The stable error code, e.g. `SF-CODEC-005` or `SF-ADAPTER-020`."),
            sagaflow_bus::dead_letter::SOURCE_TOPIC: header("The topic the record came from."),
            sagaflow_bus::dead_letter::SOURCE_PARTITION: header("Its partition (decimal)."),
            sagaflow_bus::dead_letter::SOURCE_OFFSET: header("Its offset (decimal)."),
        },
        "required": [
            sagaflow_bus::dead_letter::REASON,
            sagaflow_bus::dead_letter::CODE,
            sagaflow_bus::dead_letter::SOURCE_TOPIC,
            sagaflow_bus::dead_letter::SOURCE_PARTITION,
            sagaflow_bus::dead_letter::SOURCE_OFFSET,
        ],
    });
    let dead = json!({
        "name": "DeadLetter",
        "summary": "A record that can never be handled, with its original key and bytes.",
        "contentType": "application/octet-stream",
        "payload": {"type": "string", "format": "binary", "description": "The original record's value, unchanged."},
        "headers": dlq_headers,
        "bindings": {"kafka": {"key": {"type": "string", "description": "The original record's key."}, "bindingVersion": KAFKA_BINDING}},
    });
    let ch = b.channel(
        &names.dead_letter(),
        "Records the orchestrator or an adapter refused for good, with the reason.",
        "DeadLetter",
        dead,
    );
    b.operation(
        "send",
        &ch,
        "DeadLetter",
        "Refused records (orchestrator and adapters).",
    );
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "Sagaflow deployment",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The topics a Sagaflow deployment uses, seen from the orchestrator. An adapter receives its `sagaflow.commands.<service>` channel and sends to the replies channel. Values are Avro in the Confluent wire format (magic byte 0, 4-byte big-endian schema id, Avro binary body). See docs/protocol.md. Generated by `sagaflow topology asyncapi`.",
        },
        "defaultContentType": "avro/binary",
        "servers": {"kafka": {"host": server, "protocol": "kafka", "description": "The Kafka cluster."}},
        "channels": b.channels,
        "operations": b.operations,
        "components": {"messages": b.messages},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    fn shipped() -> Value {
        let registry = crate::topology::load_valid(&repo().join("topology")).unwrap();
        let schemas = SchemaIndex::load(&repo().join("schemas")).unwrap();
        document(&registry, &schemas, "", "localhost:9092")
    }

    #[test]
    fn the_shipped_topology_has_every_kind_of_channel() {
        let doc = shipped();
        let channels = doc["channels"].as_object().unwrap();
        for topic in [
            "sagaflow.commands.workspaces",
            "sagaflow.commands.billing",
            "sagaflow.replies",
            "sagaflow.saga-events",
            "sagaflow.dead-letter",
            "orders.events",
            "identity.events",
        ] {
            assert!(
                channels.contains_key(&id(topic)),
                "{topic}: {:?}",
                channels.keys()
            );
        }
        let ops = doc["operations"].as_object().unwrap();
        assert_eq!(ops["receive-orders-events"]["action"], "receive");
        assert_eq!(ops["send-sagaflow-commands-crm"]["action"], "send");
        assert_eq!(
            ops["send-customers-events"]["action"], "send",
            "the CustomerOnboarded emit"
        );
        let command = &doc["components"]["messages"]["Command"];
        assert_eq!(command["payload"]["schema"]["name"], "Command");
        assert_eq!(
            command["bindings"]["kafka"]["schemaIdPayloadEncoding"],
            "confluent"
        );
        assert_eq!(
            command["headers"]["properties"]["sagaflow-type"]["const"],
            "Command"
        );
        assert_eq!(
            doc["components"]["messages"]["Reply"]["bindings"]["kafka"]["schemaLookupStrategy"],
            "TopicNameStrategy"
        );
    }

    #[test]
    fn a_prefix_applies_to_every_address() {
        let registry = crate::topology::load_valid(&repo().join("topology")).unwrap();
        let schemas = SchemaIndex::load(&repo().join("schemas")).unwrap();
        let doc = document(&registry, &schemas, "staging.", "k:9092");
        for (_, ch) in doc["channels"].as_object().unwrap() {
            assert!(
                ch["address"].as_str().unwrap().starts_with("staging."),
                "{ch}"
            );
        }
    }
}
