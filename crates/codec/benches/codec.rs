//! Encode/decode throughput of a typical Command and Reply: Avro in the
//! Confluent wire format (warm schema caches, registry in-process on
//! loopback) versus JSON. One core: a current-thread runtime.
//!
//! cargo bench -p sagaflow-codec --bench codec -- --warm-up-time 1 --measurement-time 3

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sagaflow_codec::messages::{Command, CommandKind, Reply, ReplyOutcome};
use sagaflow_codec::{Codec, CodecConfig, RegistryConfig, TopicFormat};
use sagaflow_registry::{MemoryLog, Registry};
use serde_json::json;

const AVRO_TOPIC: &str = "sagaflow.commands.payments";
const AVRO_REPLIES: &str = "sagaflow.replies";
const JSON_TOPIC: &str = "json.commands";

fn command() -> Command {
    Command {
        command_id: Command::action_id("order-checkout-7f3a9c2e", "charge-payment", 1),
        saga_id: "order-checkout-7f3a9c2e".into(),
        saga_type: "order-checkout".into(),
        saga_version: 3,
        step: "charge-payment".into(),
        service: "payments".into(),
        operation: "capture".into(),
        attempt: 1,
        kind: CommandKind::Action,
        input: json!({
            "order_id": "ord-2026-000123",
            "customer_id": "cus-88412",
            "amount_cents": 12995,
            "currency": "EUR",
            "payment_method": {"type": "card", "token": "tok_4f9a1c"}
        }),
        timeout_ms: 30_000,
        issued_at: 1_795_000_000_000,
        trace_parent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
    }
}

fn reply() -> Reply {
    Reply {
        command_id: Command::action_id("order-checkout-7f3a9c2e", "charge-payment", 1),
        saga_id: "order-checkout-7f3a9c2e".into(),
        step: "charge-payment".into(),
        attempt: 1,
        service: "payments".into(),
        operation: "capture".into(),
        outcome: ReplyOutcome::Success,
        data: json!({"payment_id": "pay-5521", "captured_cents": 12995, "status": "captured"}),
        error: None,
        completed_at: 1_795_000_000_420,
        backend_status: Some(201),
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (codec, _handle) = rt.block_on(async {
        let registry = Registry::open(MemoryLog::new()).await.expect("registry");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let handle = registry.serve(listener).expect("serve");
        let mut topics = BTreeMap::new();
        topics.insert("sagaflow.*".to_string(), TopicFormat::avro());
        topics.insert("json.*".to_string(), TopicFormat::Json);
        let config = CodecConfig {
            registry: Some(RegistryConfig {
                url: handle.url(),
                auth: None,
                timeout: None,
            }),
            topics,
            default_format: None,
            limits: Default::default(),
        };
        (Codec::new(config).expect("codec"), handle)
    });
    let (command, reply) = (command(), reply());
    let avro_command = rt
        .block_on(codec.encode_command(AVRO_TOPIC, &command))
        .expect("warm");
    let avro_reply = rt
        .block_on(codec.encode_reply(AVRO_REPLIES, &reply))
        .expect("warm");
    rt.block_on(codec.decode_command(AVRO_TOPIC, &avro_command))
        .expect("warm");
    rt.block_on(codec.decode_reply(AVRO_REPLIES, &avro_reply))
        .expect("warm");
    let json_command = rt
        .block_on(codec.encode_command(JSON_TOPIC, &command))
        .expect("json");
    let json_reply = rt
        .block_on(codec.encode_reply(JSON_TOPIC, &reply))
        .expect("json");
    eprintln!(
        "sizes: command avro {} B, json {} B; reply avro {} B, json {} B",
        avro_command.len(),
        json_command.len(),
        avro_reply.len(),
        json_reply.len()
    );

    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(1));
    group.bench_function("command/avro/encode", |b| {
        b.to_async(&rt).iter(|| async {
            codec
                .encode_command(AVRO_TOPIC, black_box(&command))
                .await
                .unwrap()
        })
    });
    group.bench_function("command/avro/decode", |b| {
        b.to_async(&rt).iter(|| async {
            codec
                .decode_command(AVRO_TOPIC, black_box(&avro_command))
                .await
                .unwrap()
        })
    });
    group.bench_function("command/json/encode", |b| {
        b.to_async(&rt).iter(|| async {
            codec
                .encode_command(JSON_TOPIC, black_box(&command))
                .await
                .unwrap()
        })
    });
    group.bench_function("command/json/decode", |b| {
        b.to_async(&rt).iter(|| async {
            codec
                .decode_command(JSON_TOPIC, black_box(&json_command))
                .await
                .unwrap()
        })
    });
    group.bench_function("reply/avro/encode", |b| {
        b.to_async(&rt).iter(|| async {
            codec
                .encode_reply(AVRO_REPLIES, black_box(&reply))
                .await
                .unwrap()
        })
    });
    group.bench_function("reply/avro/decode", |b| {
        b.to_async(&rt).iter(|| async {
            codec
                .decode_reply(AVRO_REPLIES, black_box(&avro_reply))
                .await
                .unwrap()
        })
    });
    group.bench_function("reply/json/encode", |b| {
        b.to_async(&rt).iter(|| async {
            codec
                .encode_reply(JSON_TOPIC, black_box(&reply))
                .await
                .unwrap()
        })
    });
    group.bench_function("reply/json/decode", |b| {
        b.to_async(&rt).iter(|| async {
            codec
                .decode_reply(JSON_TOPIC, black_box(&json_reply))
                .await
                .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
