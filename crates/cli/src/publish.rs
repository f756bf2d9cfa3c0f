//! `sagaflow publish`: domain events from JSON lines (a file or stdin) to a
//! topic, encoded with the type's schema exactly as an existing system's
//! publisher writes them, so a published `OrderPlaced` starts a saga like any
//! other. Bad lines are reported with their line number and skipped (or stop
//! the run with `--strict`); every delivery is awaited before exiting.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureRecord, Producer as _};
use rdkafka::types::RDKafkaRespErr;
use sagaflow_bus::KafkaConfig;
use sagaflow_bus::{DeliveryFuture, Producer};
use sagaflow_codec::{Codec, CodecConfig, SubjectStrategy, TopicFormat};
use sagaflow_orchestrator::events::EventSchemas;
use sagaflow_orchestrator::ingest::{self, IngestError};
use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};

use crate::exit::{CliResult, Failure};
use crate::registry_client::RegistryArgs;
use crate::topology::parse_property;

/// Deliveries awaited at most at once; more lines wait for the oldest.
const MAX_IN_FLIGHT: usize = 10_000;

#[derive(Debug, Args)]
pub(crate) struct PublishArgs {
    /// Topic to publish to: its full name, deployment prefix included.
    #[arg(long, value_name = "TOPIC")]
    topic: String,
    /// JSON-lines file (one event per line); `-` or nothing reads stdin.
    #[arg(value_name = "FILE", default_value = "-")]
    input: String,
    /// Kafka bootstrap servers.
    #[arg(long, env = "SAGAFLOW_BOOTSTRAP_SERVERS", value_name = "HOSTS")]
    bootstrap_servers: String,
    #[command(flatten)]
    registry: RegistryArgs,
    /// A librdkafka property for the producer, e.g.
    /// `-X security.protocol=SASL_SSL` (repeatable).
    #[arg(short = 'X', long = "property", value_name = "KEY=VALUE", value_parser = parse_property)]
    property: Vec<(String, String)>,
    /// Event type of lines that are bare payloads rather than envelopes
    /// (`{"type": …, "key": …, "headers": {…}, "payload": {…}}`).
    #[arg(long = "type", value_name = "TYPE")]
    event_type: Option<String>,
    /// JSON pointer into the payload whose value is the Kafka key, e.g.
    /// `/order_id`. An envelope's `key` wins.
    #[arg(long, value_name = "POINTER", value_parser = parse_pointer)]
    key_field: Option<String>,
    /// Directory of the .avsc schemas and their subjects.json.
    #[arg(long, default_value = "schemas", value_name = "DIR")]
    schemas: PathBuf,
    /// How subjects are named; readers must use the same.
    #[arg(long, value_enum, default_value_t = Strategy::Record)]
    subject_strategy: Strategy,
    /// Stop at the first bad line; nothing after it is published.
    #[arg(long)]
    strict: bool,
    /// How long the broker has to acknowledge an event (librdkafka
    /// `message.timeout.ms`, which `-X` overrides), e.g. `30s`, `500ms`.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Strategy {
    /// The record's full name.
    #[value(name = "record-name")]
    Record,
    /// `<topic>-value`.
    #[value(name = "topic-name")]
    Topic,
    /// `<topic>-<record full name>`.
    #[value(name = "topic-record-name")]
    TopicRecord,
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn parse_pointer(s: &str) -> Result<String, String> {
    if s.starts_with('/') {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "`{s}` is not a JSON pointer; write `/{s}` (nested fields as `/a/b`)"
        ))
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("`{s}` is not a duration such as 30s or 500ms"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        _ => return Err(format!("`{s}`: use ms, s or m, e.g. 30s")),
    };
    if d.is_zero() {
        return Err("the timeout must not be zero".into());
    }
    Ok(d)
}

/// Why one line was not published.
#[derive(Debug, PartialEq)]
struct Rejection {
    line: usize,
    column: Option<usize>,
    message: String,
}

/// Reads one line into an event, or says why not.
fn read_line(
    n: usize,
    text: &str,
    event_type: Option<&str>,
    key_field: Option<&str>,
) -> Result<ingest::IngestEvent, Rejection> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        let full = e.to_string();
        // serde_json appends " at line L column C"; the place is said once, in front.
        let message = full
            .rsplit_once(" at line ")
            .map_or(full.as_str(), |(m, _)| m)
            .to_owned();
        Rejection {
            line: n,
            column: Some(e.column()),
            message: format!("invalid JSON: {message}"),
        }
    })?;
    ingest::parse_event(value, event_type, key_field).map_err(|e| Rejection {
        line: n,
        column: None,
        message: e.to_string(),
    })
}

fn transport_failure(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageTimedOut
                | RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::RequestTimedOut
        )
    ) || matches!(e, KafkaError::Canceled)
}

struct Run<'a> {
    source: String,
    args: &'a PublishArgs,
    published: usize,
    rejected: usize,
    unreachable: Option<String>,
    pending: VecDeque<(usize, DeliveryFuture)>,
}

impl Run<'_> {
    fn reject(&mut self, r: Rejection) {
        self.rejected += 1;
        let place = match r.column {
            Some(c) => format!("{}:{}:{c}", self.source, r.line),
            None => format!("{}:{}", self.source, r.line),
        };
        eprintln!("rejected {place}: {}", r.message);
    }

    async fn settle_oldest(&mut self) {
        let Some((line, delivery)) = self.pending.pop_front() else {
            return;
        };
        match delivery.await {
            Ok(Ok(_)) => self.published += 1,
            Ok(Err((e, _))) if transport_failure(&e) => {
                self.unreachable.get_or_insert_with(|| e.to_string());
                self.reject(Rejection {
                    line,
                    column: None,
                    message: format!("not acknowledged by the broker: {e}"),
                });
            }
            Ok(Err((e, _))) => self.reject(Rejection {
                line,
                column: None,
                message: format!("the broker refused the event: {e}"),
            }),
            Err(_) => {
                self.unreachable
                    .get_or_insert_with(|| "the producer stopped".into());
                self.reject(Rejection {
                    line,
                    column: None,
                    message: "the delivery report was lost".into(),
                });
            }
        }
    }
}

fn codec(args: &PublishArgs) -> CliResult<Codec> {
    let subject_strategy = match args.subject_strategy {
        Strategy::Record => SubjectStrategy::RecordName,
        Strategy::Topic => SubjectStrategy::TopicName,
        Strategy::TopicRecord => SubjectStrategy::TopicRecordName,
    };
    Codec::new(CodecConfig {
        registry: Some(args.registry.codec_registry()?),
        topics: Default::default(),
        default_format: Some(TopicFormat::Avro {
            subject_strategy,
            auto_register: true,
        }),
        limits: Default::default(),
    })
    .map_err(|e| Failure::Usage(e.to_string()))
}

fn producer(args: &PublishArgs) -> CliResult<Producer> {
    let mut kafka = KafkaConfig::new(args.bootstrap_servers.clone())
        .with("message.timeout.ms", args.timeout.as_millis().to_string());
    for (k, v) in &args.property {
        kafka = kafka.with(k.clone(), v.clone());
    }
    kafka.producer().map_err(|e| Failure::Usage(e.to_string()))
}

/// Checks, within the timeout, that the broker answers and has the topic.
async fn check_topic(args: &PublishArgs, producer: &Producer) -> CliResult {
    let producer = producer.clone();
    let topic = args.topic.clone();
    let timeout = args.timeout;
    let metadata = tokio::task::spawn_blocking(move || {
        producer
            .client()
            .fetch_metadata(Some(&topic), timeout)
            .map(|m| {
                m.topics()
                    .iter()
                    .find(|t| t.name() == topic)
                    .map(|t| (t.error(), t.partitions().len()))
            })
    })
    .await
    .map_err(|e| Failure::Unreachable(format!("broker check: {e}")))?;
    match metadata {
        Err(e) => Err(Failure::Unreachable(format!(
            "Kafka broker at {} did not answer within {:?}: {e}",
            args.bootstrap_servers, args.timeout
        ))),
        Ok(Some((None, n))) if n > 0 => Ok(()),
        Ok(Some((Some(code), _)))
            if code != RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART =>
        {
            Err(Failure::Usage(format!(
                "topic `{}`: the broker answered {:?}",
                args.topic,
                RDKafkaErrorCode::from(code)
            )))
        }
        Ok(_) => Err(Failure::Usage(format!(
            "topic `{}` does not exist on {}; create it first (e.g. `sagaflow topology apply`)",
            args.topic, args.bootstrap_servers
        ))),
    }
}

pub(crate) async fn run(args: PublishArgs) -> CliResult {
    let schemas = EventSchemas::load(&args.schemas).map_err(|e| Failure::Usage(e.to_string()))?;
    if let Some(t) = &args.event_type
        && schemas.get(t).is_none()
    {
        return Err(Failure::Usage(format!(
            "--type `{t}`: no schema for it in {}; known for `{}`: {}",
            args.schemas.display(),
            args.topic,
            schemas.types_for(&args.topic).join(", ")
        )));
    }
    let codec = codec(&args)?;
    let producer = producer(&args)?;
    let (source, input): (String, Box<dyn AsyncBufRead + Unpin + Send>) = if args.input == "-" {
        (
            "<stdin>".into(),
            Box::new(BufReader::new(tokio::io::stdin())),
        )
    } else {
        let file = tokio::fs::File::open(&args.input)
            .await
            .map_err(|e| Failure::Usage(format!("{}: {e}", args.input)))?;
        (args.input.clone(), Box::new(BufReader::new(file)))
    };
    check_topic(&args, &producer).await?;

    let mut run = Run {
        source,
        args: &args,
        published: 0,
        rejected: 0,
        unreachable: None,
        pending: VecDeque::new(),
    };
    let mut fatal = None;
    let mut lines = input.lines();
    let mut n = 0;
    loop {
        let text = match lines.next_line().await {
            Ok(Some(text)) => text,
            Ok(None) => break,
            Err(e) => {
                fatal = Some(Failure::Usage(format!("{}: {e}", run.source)));
                break;
            }
        };
        n += 1;
        if text.trim().is_empty() {
            continue;
        }
        let event = match read_line(
            n,
            &text,
            run.args.event_type.as_deref(),
            run.args.key_field.as_deref(),
        ) {
            Ok(event) => event,
            Err(r) => {
                run.reject(r);
                if run.args.strict {
                    break;
                }
                continue;
            }
        };
        let bytes = match ingest::encode(&codec, &schemas, &run.args.topic, &event).await {
            Ok(bytes) => bytes,
            Err(IngestError::RegistryUnreachable(m)) => {
                fatal = Some(Failure::Unreachable(format!(
                    "line {n}: {m}; nothing from line {n} on was published"
                )));
                break;
            }
            Err(e) => {
                run.reject(Rejection {
                    line: n,
                    column: None,
                    message: e.to_string(),
                });
                if run.args.strict {
                    break;
                }
                continue;
            }
        };
        let headers = ingest::record_headers(&event, None, None);
        let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&run.args.topic)
            .payload(bytes.as_slice())
            .headers(headers);
        if let Some(k) = event.key.as_deref() {
            record = record.key(k);
        }
        let delivery = loop {
            match producer.send_result(record) {
                Ok(d) => break Ok(d),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    if run.pending.is_empty() {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    } else {
                        run.settle_oldest().await;
                    }
                }
                Err((e, _)) => break Err(e),
            }
        };
        match delivery {
            Ok(d) => run.pending.push_back((n, d)),
            Err(e) => run.reject(Rejection {
                line: n,
                column: None,
                message: format!("the producer refused the event: {e}"),
            }),
        }
        if run.pending.len() >= MAX_IN_FLIGHT {
            run.settle_oldest().await;
        }
    }
    while !run.pending.is_empty() {
        run.settle_oldest().await;
    }
    println!(
        "published {} to {}, rejected {}",
        plural(run.published, "event"),
        args.topic,
        plural(run.rejected, "line")
    );
    if let Some(f) = fatal {
        return Err(f);
    }
    if let Some(e) = run.unreachable {
        return Err(Failure::Unreachable(format!(
            "the Kafka broker at {} did not acknowledge every event within {:?}: {e}",
            args.bootstrap_servers, args.timeout
        )));
    }
    if run.rejected > 0 {
        return Err(Failure::Found(format!(
            "{} rejected (see above); the others were published",
            plural(run.rejected, "line")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_errors_give_line_and_column_once() {
        let r = read_line(3, r#"{"type": "T", "payload": {"a": 1,}}"#, None, None).unwrap_err();
        assert_eq!(r.line, 3);
        assert_eq!(r.column, Some(34));
        assert_eq!(r.message, "invalid JSON: trailing comma");
        let r = read_line(4, r#"{"a": 1}"#, None, None).unwrap_err();
        assert!(r.message.contains("SF-INGEST-001"), "{r:?}");
        assert!(read_line(5, r#"{"a": 1}"#, Some("T"), None).is_ok());
    }

    #[test]
    fn durations_and_pointers() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5").is_err());
        assert!(parse_pointer("order_id").unwrap_err().contains("/order_id"));
        assert_eq!(parse_pointer("/a/b").as_deref(), Ok("/a/b"));
    }
}
