//! What the driver produces, as records: changelog writes stamped with the
//! owner's epoch, effects, dead letters, re-keyed inputs; and producing
//! them, checked against the record limit first.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::Message;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use sagaflow_bus::Producer;
use sagaflow_bus::{SagaHeaders, TopicNames, TraceContext, TraceHeaders};
use sagaflow_engine::{Effect, SagaState};

use crate::changelog::{self, DeliveredMark};
use crate::wire::Envelope;

/// Type header of the delivery marks in the changelog: "every outbox
/// written at or below changelog offset N of this partition has been
/// delivered", so a restore re-sends only what may really be owed.
pub(crate) const DELIVERED_MARK: &str = "sagaflow.DeliveredMark";

/// A record of the changelog, stamped with its writer's epoch.
pub(crate) fn state_record(
    topic: &str,
    p: i32,
    epoch: i64,
    key: String,
    payload: Option<Vec<u8>>,
) -> Outgoing {
    Outgoing {
        topic: topic.to_owned(),
        partition: Some(p),
        key: Some(key),
        payload,
        headers: OwnedHeaders::new().insert(Header {
            key: changelog::EPOCH_HEADER,
            value: Some(epoch.to_string().as_bytes()),
        }),
    }
}

pub(crate) fn delivered_mark(topic: &str, p: i32, epoch: i64, through: i64) -> Outgoing {
    let mut r = state_record(
        topic,
        p,
        epoch,
        changelog::delivered_key(p),
        serde_json::to_vec(&DeliveredMark { through }).ok(),
    );
    r.headers = r.headers.insert(Header {
        key: sagaflow_bus::header_names::MESSAGE_TYPE,
        value: Some(DELIVERED_MARK.as_bytes()),
    });
    r
}

/// The writer's epoch of a changelog record read back.
pub(crate) fn epoch_of(m: &BorrowedMessage<'_>) -> Option<i64> {
    let headers = m.headers()?;
    headers
        .iter()
        .find(|h| h.key == changelog::EPOCH_HEADER)
        .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse().ok())
}

/// A record to produce.
pub(crate) struct Outgoing {
    pub(crate) topic: String,
    pub(crate) partition: Option<i32>,
    pub(crate) key: Option<String>,
    pub(crate) payload: Option<Vec<u8>>,
    pub(crate) headers: OwnedHeaders,
}

impl Outgoing {
    /// Key, value and headers, plus framing: what the broker measures
    /// against `message.max.bytes`, give or take its batch header.
    pub(crate) fn size(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len) + 8)
            .sum();
        self.key.as_ref().map_or(0, String::len)
            + self.payload.as_ref().map_or(0, Vec::len)
            + headers
            + 128
    }
}

pub(crate) use sagaflow_bus::now_ms;

/// A dead letter: the original bytes and headers, where they came from,
/// and why they could not be processed.
///
/// A value too large to dead-letter whole (it would exceed the record
/// limit with the reason headers) is left out, with a header saying so:
/// the source topic, partition and offset still point at it.
pub(crate) fn dead_letter(
    names: &TopicNames,
    m: &BorrowedMessage<'_>,
    code: &str,
    reason: &str,
    limit: usize,
) -> Outgoing {
    let headers = sagaflow_bus::dead_letter::headers(m, code, reason);
    let mut record = Outgoing {
        topic: names.dead_letter(),
        partition: None,
        key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        payload: m.payload().map(<[u8]>::to_vec),
        headers,
    };
    if record.size() > limit {
        let omitted = record.payload.take().map_or(0, |p| p.len()).to_string();
        record.key = record.key.map(|k| k.chars().take(256).collect());
        record.headers = record.headers.insert(Header {
            key: PAYLOAD_OMITTED,
            value: Some(omitted.as_bytes()),
        });
    }
    record
}

/// Dead-letter header: the value was left out (its size in bytes); read it
/// at the source topic, partition and offset.
pub const PAYLOAD_OMITTED: &str = "sagaflow-dlq-payload-omitted";

pub(crate) fn envelope_record(names: &TopicNames, env: &Envelope, trace: TraceHeaders) -> Outgoing {
    let headers = SagaHeaders {
        saga_id: Some(env.saga_id().to_owned()),
        message_id: Some(env.message_id().to_owned()),
        message_type: Some("sagaflow.Envelope".to_owned()),
        traceparent: trace.traceparent,
        tracestate: trace.tracestate,
    };
    Outgoing {
        topic: names.inputs(),
        partition: None,
        key: Some(env.saga_id().to_owned()),
        // Serialising our own enum of strings and JSON values cannot fail.
        payload: serde_json::to_vec(env).ok(),
        headers: headers.to_owned_headers(),
    }
}

/// Sends an envelope to the inputs topic (used by the HTTP API).
pub async fn send_envelope(
    producer: &Producer,
    names: &TopicNames,
    env: &Envelope,
    trace: TraceHeaders,
) -> Result<(), String> {
    let out = envelope_record(names, env, trace);
    produce(producer, out).await.map(|_| ())
}

/// Produces one record; returns its partition and offset.
pub(crate) async fn produce(producer: &Producer, out: Outgoing) -> Result<(i32, i64), String> {
    enqueue(producer, out).await.await
}

/// Produces all records and waits for every ack; returns the partition
/// and offset of each. A record over `limit` bytes is not sent (a broker
/// would refuse it for ever): it is logged and counted as SF-ORCH-022.
pub(crate) async fn produce_all(
    producer: &Producer,
    records: Vec<Outgoing>,
    limit: usize,
) -> Result<Vec<(i32, i64)>, String> {
    enqueue_all(producer, records, limit).await.await
}

/// The broker's acknowledgements of records already handed to the
/// producer: their partitions and offsets.
pub(crate) type Acks = futures::future::BoxFuture<'static, Result<Vec<(i32, i64)>, String>>;

/// The producers a batch's effects go through. Lifecycle events and
/// results (the saga-events topic), which no step of a saga waits for,
/// have a producer of their own, so the commands a saga does wait for are
/// not queued behind them on one connection (a broker serves a
/// connection's requests in order). Each topic still has one producer, so
/// a batch's records stay behind the batch before on every partition.
pub(crate) struct Outbound {
    effects: Producer,
    lifecycle: Producer,
    lifecycle_topic: String,
}

impl Outbound {
    pub(crate) fn new(effects: Producer, lifecycle: Producer, lifecycle_topic: String) -> Self {
        Self {
            effects,
            lifecycle,
            lifecycle_topic,
        }
    }

    /// The producer of everything but the lifecycle events: commands,
    /// emitted events, re-keyed inputs, dead letters, ticks, re-sends.
    pub(crate) fn producer(&self) -> &Producer {
        &self.effects
    }

    /// [`enqueue_all`] through the producer each record's topic has.
    pub(crate) async fn enqueue_all(&self, records: Vec<Outgoing>, limit: usize) -> Acks {
        let (lifecycle, effects): (Vec<_>, Vec<_>) = records
            .into_iter()
            .partition(|r| r.topic == self.lifecycle_topic);
        let effects = enqueue_all(&self.effects, effects, limit).await;
        let lifecycle = enqueue_all(&self.lifecycle, lifecycle, limit).await;
        Box::pin(async move {
            let (mut acked, lifecycle) = futures::future::try_join(effects, lifecycle).await?;
            acked.extend(lifecycle);
            Ok(acked)
        })
    }
}

/// Hands every record to the producer now, in order, and returns what
/// resolves once the broker has acknowledged them all. Enqueueing before
/// returning is what keeps a later batch's records behind this one's on
/// every partition, whenever the acknowledgements are awaited; it waits
/// only while the producer's queue is full. A record over `limit` bytes
/// is not sent (SF-ORCH-022, as [`produce_all`]).
pub(crate) async fn enqueue_all(producer: &Producer, records: Vec<Outgoing>, limit: usize) -> Acks {
    let mut acks = Vec::with_capacity(records.len());
    for r in records {
        let size = r.size();
        if size > limit {
            tracing::error!(
                code = "SF-ORCH-022",
                topic = %r.topic,
                key = r.key.as_deref().unwrap_or_default(),
                size,
                limit,
                "record over the record limit; not sent"
            );
            continue;
        }
        acks.push(enqueue(producer, r).await);
    }
    Box::pin(async move {
        let mut offsets = Vec::with_capacity(acks.len());
        for ack in futures::future::join_all(acks).await {
            offsets.push(ack?);
        }
        Ok(offsets)
    })
}

/// Hands one record to the producer, waiting while its queue is full;
/// returns what resolves to the record's partition and offset.
async fn enqueue(
    producer: &Producer,
    out: Outgoing,
) -> futures::future::BoxFuture<'static, Result<(i32, i64), String>> {
    let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&out.topic).headers(out.headers);
    if let Some(k) = out.key.as_deref() {
        record = record.key(k);
    }
    if let Some(p) = out.payload.as_deref() {
        record = record.payload(p);
    }
    if let Some(p) = out.partition {
        record = record.partition(p);
    }
    let deadline = tokio::time::Instant::now() + QUEUE_TIMEOUT;
    loop {
        match producer.send_result(record) {
            Ok(delivery) => {
                return Box::pin(async move {
                    match delivery.await {
                        Ok(Ok(d)) => Ok((d.partition, d.offset)),
                        Ok(Err((e, _))) => Err(e.to_string()),
                        Err(_) => Err("the producer was dropped before the ack".to_owned()),
                    }
                });
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                if tokio::time::Instant::now() < deadline =>
            {
                record = back;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err((e, _)) => {
                let e = e.to_string();
                return Box::pin(async move { Err(e) });
            }
        }
    }
}

/// How long a record waits for room in a full producer queue (as
/// `Producer::send` would be told).
const QUEUE_TIMEOUT: Duration = Duration::from_secs(30);

/// Exports the span of one record the saga sends (and, with its result,
/// the saga's own span, from its start to its end) over OTLP.
pub(crate) fn export_spans(
    state: &SagaState,
    saga: &TraceContext,
    trigger: Option<TraceContext>,
    hop: &TraceContext,
    e: &Effect,
    names: &TopicNames,
) {
    use sagaflow_telemetry::{Attribute, HopKind};
    let now = SystemTime::now();
    let mut attrs = vec![
        Attribute::new("saga.id", state.saga_id.clone()),
        Attribute::new("saga.type", state.saga_type.clone()),
        Attribute::new("messaging.system", "kafka"),
        Attribute::new("messaging.operation.type", "send"),
    ];
    let name = match e {
        Effect::Command(c) => {
            attrs.push(Attribute::new("saga.step", c.step.clone()));
            attrs.push(Attribute::new("sagaflow.attempt", i64::from(c.attempt)));
            attrs.push(Attribute::new(
                "messaging.destination.name",
                names.commands(&c.service),
            ));
            format!("send {}.{}", c.service, c.operation)
        }
        Effect::Lifecycle(l) => {
            if let Some(step) = &l.step {
                attrs.push(Attribute::new("saga.step", step.clone()));
            }
            attrs.push(Attribute::new(
                "messaging.destination.name",
                names.saga_events(),
            ));
            format!("{:?}", l.kind).to_lowercase()
        }
        Effect::Result(r) => {
            let ms = |t: u64| UNIX_EPOCH + std::time::Duration::from_millis(t);
            sagaflow_telemetry::hop(
                format!("saga {}", state.saga_type),
                HopKind::Internal,
                saga,
                trigger.as_ref(),
                ms(state.started_at.0),
                ms(state.updated_at.0).max(ms(state.started_at.0)),
                vec![
                    Attribute::new("saga.id", state.saga_id.clone()),
                    Attribute::new("saga.type", state.saga_type.clone()),
                    Attribute::new("saga.status", format!("{:?}", r.status).to_lowercase()),
                ],
            );
            attrs.push(Attribute::new(
                "messaging.destination.name",
                names.saga_events(),
            ));
            "send result".to_owned()
        }
        Effect::Emit(d) => {
            attrs.push(Attribute::new(
                "messaging.destination.name",
                d.topic.clone(),
            ));
            format!("send {}", d.event_type)
        }
        Effect::ArmTimer { .. } | Effect::CancelTimer { .. } => return,
    };
    sagaflow_telemetry::hop(name, HopKind::Producer, hop, Some(saga), now, now, attrs);
}

pub(crate) fn effect_kind(e: &Effect) -> &'static str {
    match e {
        Effect::Command(_) => "command",
        Effect::Lifecycle(_) => "lifecycle",
        Effect::ArmTimer { .. } => "arm-timer",
        Effect::CancelTimer { .. } => "cancel-timer",
        Effect::Emit(_) => "emit",
        Effect::Result(_) => "result",
    }
}
