//! Test support: a real registry on 127.0.0.1 and value generators.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use sagaflow_codec::apache_avro::Schema;
use sagaflow_codec::apache_avro::types::Value;
use sagaflow_codec::messages::{
    Command, CommandKind, LifecycleKind, Reply, ReplyError, ReplyOutcome, SagaLifecycleEvent,
    SagaResult, SagaStatus,
};
use sagaflow_registry::{MemoryLog, Registry, SchemaLog, ServeHandle};

/// Starts a registry on an ephemeral loopback port.
pub async fn start_registry(log: impl SchemaLog) -> (Registry, ServeHandle) {
    let registry = Registry::open(log).await.expect("open registry");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let handle = registry.serve(listener).expect("serve");
    (registry, handle)
}

pub async fn start_memory_registry() -> (Registry, ServeHandle) {
    start_registry(MemoryLog::new()).await
}

pub fn schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas")
}

/// Random values of an Avro schema, as the decoder returns them.
pub fn value_strategy(schema: &Schema) -> BoxedStrategy<Value> {
    match schema {
        Schema::Null => Just(Value::Null).boxed(),
        Schema::Boolean => any::<bool>().prop_map(Value::Boolean).boxed(),
        Schema::Int => any::<i32>().prop_map(Value::Int).boxed(),
        Schema::Long => any::<i64>().prop_map(Value::Long).boxed(),
        Schema::Float => (-1.0e6f32..1.0e6).prop_map(Value::Float).boxed(),
        Schema::Double => (-1.0e12f64..1.0e12).prop_map(Value::Double).boxed(),
        Schema::String => "\\PC{0,16}".prop_map(Value::String).boxed(),
        Schema::Bytes => proptest::collection::vec(any::<u8>(), 0..16)
            .prop_map(Value::Bytes)
            .boxed(),
        Schema::Date => any::<i32>().prop_map(Value::Date).boxed(),
        Schema::TimestampMillis => any::<i64>().prop_map(Value::TimestampMillis).boxed(),
        Schema::TimestampMicros => any::<i64>().prop_map(Value::TimestampMicros).boxed(),
        Schema::Fixed(f) => proptest::collection::vec(any::<u8>(), f.size)
            .prop_map(|b| Value::Fixed(b.len(), b))
            .boxed(),
        Schema::Enum(e) => {
            let symbols = e.symbols.clone();
            (0..symbols.len())
                .prop_map(move |i| Value::Enum(i as u32, symbols[i].clone()))
                .boxed()
        }
        Schema::Array(a) => proptest::collection::vec(value_strategy(&a.items), 0..4)
            .prop_map(Value::Array)
            .boxed(),
        Schema::Map(m) => {
            proptest::collection::hash_map("[a-z]{1,6}", value_strategy(&m.types), 0..4)
                .prop_map(Value::Map)
                .boxed()
        }
        Schema::Union(u) => {
            let branches: Vec<BoxedStrategy<Value>> = u
                .variants()
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    value_strategy(v)
                        .prop_map(move |inner| Value::Union(i as u32, Box::new(inner)))
                        .boxed()
                })
                .collect();
            proptest::strategy::Union::new(branches).boxed()
        }
        Schema::Record(r) => {
            let names: Vec<String> = r.fields.iter().map(|f| f.name.clone()).collect();
            let fields: Vec<BoxedStrategy<Value>> =
                r.fields.iter().map(|f| value_strategy(&f.schema)).collect();
            fields
                .prop_map(move |values| Value::Record(names.iter().cloned().zip(values).collect()))
                .boxed()
        }
        other => panic!("no generator for schema {other:?}; extend value_strategy"),
    }
}

/// Arbitrary JSON without floats (serde_json's default float parsing is not
/// guaranteed to round-trip the last bit).
pub fn json_strategy() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        "\\PC{0,8}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            proptest::collection::btree_map("[a-z_]{1,6}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn text() -> impl Strategy<Value = String> {
    "\\PC{0,24}"
}

pub fn command_strategy() -> impl Strategy<Value = Command> {
    (
        (text(), text(), text(), any::<i32>(), text(), text(), text()),
        (
            any::<i32>(),
            any::<bool>(),
            json_strategy(),
            any::<i64>(),
            any::<i64>(),
            proptest::option::of(text()),
        ),
    )
        .prop_map(
            |(
                (command_id, saga_id, saga_type, saga_version, step, service, operation),
                (attempt, compensation, input, timeout_ms, issued_at, trace_parent),
            )| Command {
                command_id,
                saga_id,
                saga_type,
                saga_version,
                step,
                service,
                operation,
                attempt,
                kind: if compensation {
                    CommandKind::Compensation
                } else {
                    CommandKind::Action
                },
                input,
                timeout_ms,
                issued_at,
                trace_parent,
            },
        )
}

pub fn reply_strategy() -> impl Strategy<Value = Reply> {
    (
        (text(), text(), text(), any::<i32>(), text(), text()),
        (
            0..3usize,
            json_strategy(),
            proptest::option::of((text(), text())),
            any::<i64>(),
            proptest::option::of(any::<i32>()),
        ),
    )
        .prop_map(
            |(
                (command_id, saga_id, step, attempt, service, operation),
                (outcome, data, error, completed_at, backend_status),
            )| Reply {
                command_id,
                saga_id,
                step,
                attempt,
                service,
                operation,
                outcome: [
                    ReplyOutcome::Success,
                    ReplyOutcome::BusinessFailure,
                    ReplyOutcome::TransientFailure,
                ][outcome],
                data,
                error: error.map(|(code, message)| ReplyError { code, message }),
                completed_at,
                backend_status,
            },
        )
}

pub fn lifecycle_strategy() -> impl Strategy<Value = SagaLifecycleEvent> {
    (
        (
            text(),
            text(),
            text(),
            any::<i32>(),
            0..LifecycleKind::SYMBOLS.len(),
        ),
        (
            proptest::option::of(text()),
            proptest::option::of(any::<i32>()),
            proptest::option::of(text()),
            any::<i64>(),
        ),
        (
            proptest::option::of(text()),
            proptest::option::of(any::<i64>()),
            proptest::option::of(text()),
            proptest::collection::btree_map(text(), text(), 0..3),
        ),
    )
        .prop_map(
            |(
                (event_id, saga_id, saga_type, saga_version, kind),
                (step, attempt, detail, at),
                (input, output, error, attributes),
            )| {
                SagaLifecycleEvent {
                    input: input.map(|t| serde_json::json!({ "text": t, "n": [1, 2] })),
                    output: output.map(serde_json::Value::from),
                    error: error.map(|t| serde_json::json!({ "message": t, "data": null })),
                    attributes,
                    event_id,
                    saga_id,
                    saga_type,
                    saga_version,
                    kind: LifecycleKind::from_symbol(LifecycleKind::SYMBOLS[kind])
                        .expect("known symbol"),
                    step,
                    attempt,
                    detail,
                    at,
                }
            },
        )
}

pub fn result_strategy() -> impl Strategy<Value = SagaResult> {
    (
        (text(), text(), any::<i32>(), 0..3usize),
        (
            json_strategy(),
            proptest::option::of(text()),
            any::<i64>(),
            any::<i64>(),
        ),
    )
        .prop_map(
            |(
                (saga_id, saga_type, saga_version, status),
                (output, error, started_at, ended_at),
            )| SagaResult {
                saga_id,
                saga_type,
                saga_version,
                status: [
                    SagaStatus::Completed,
                    SagaStatus::Compensated,
                    SagaStatus::Failed,
                ][status],
                output,
                error,
                started_at,
                ended_at,
            },
        )
}
