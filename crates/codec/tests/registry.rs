//! The codec against the registry over real HTTP on 127.0.0.1.

mod common;

use std::collections::BTreeMap;

use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use sagaflow_codec::messages::{Command, CommandKind, Reply, ReplyOutcome};
use sagaflow_codec::{
    AvroMessage, Codec, CodecConfig, DecodeError, EncodeError, RegistryConfig, SubjectStrategy,
    TopicFormat,
};
use sagaflow_registry::{FileLog, MemoryLog};
use serde_json::json;

const COMMANDS: &str = "sagaflow.commands.payments";
const REPLIES: &str = "sagaflow.replies";

fn config(url: String) -> CodecConfig {
    let mut topics = BTreeMap::new();
    topics.insert("sagaflow.commands.*".to_string(), TopicFormat::avro());
    topics.insert(
        REPLIES.to_string(),
        TopicFormat::Avro {
            subject_strategy: SubjectStrategy::TopicName,
            auto_register: true,
        },
    );
    topics.insert("json.*".to_string(), TopicFormat::Json);
    CodecConfig {
        registry: Some(RegistryConfig {
            url,
            auth: None,
            timeout: Some("2s".into()),
        }),
        topics,
        default_format: None,
        limits: Default::default(),
    }
}

fn command() -> Command {
    Command {
        command_id: Command::action_id("saga-1", "reserve-stock", 1),
        saga_id: "saga-1".into(),
        saga_type: "order-checkout".into(),
        saga_version: 1,
        step: "reserve-stock".into(),
        service: "inventory".into(),
        operation: "reserve".into(),
        attempt: 1,
        kind: CommandKind::Action,
        input: json!({"sku": "A-1", "quantity": 2}),
        timeout_ms: 5000,
        issued_at: 1_700_000_000_000,
        trace_parent: None,
    }
}

fn reply() -> Reply {
    Reply {
        command_id: Command::action_id("saga-1", "reserve-stock", 1),
        saga_id: "saga-1".into(),
        step: "reserve-stock".into(),
        attempt: 1,
        service: "inventory".into(),
        operation: "reserve".into(),
        outcome: ReplyOutcome::Success,
        data: json!({"reservation_id": "r-9"}),
        error: None,
        completed_at: 1_700_000_000_100,
        backend_status: Some(200),
    }
}

#[tokio::test]
async fn another_instance_with_a_cold_cache_decodes() {
    let (_registry, handle) = start_memory_registry().await;
    let writer = Codec::new(config(handle.url())).unwrap();
    let bytes = writer.encode_command(COMMANDS, &command()).await.unwrap();
    let reply_bytes = writer.encode_reply(REPLIES, &reply()).await.unwrap();

    let reader = Codec::new(config(handle.url())).unwrap();
    assert_eq!(
        reader.decode_command(COMMANDS, &bytes).await.unwrap(),
        command()
    );
    assert_eq!(
        reader.decode_reply(REPLIES, &reply_bytes).await.unwrap(),
        reply()
    );
    // Same schema id in the header as the registry assigned.
    let (id, _) = sagaflow_codec::split_header(&bytes).unwrap();
    let subject = _registry
        .version(
            "io.sagaflow.v1.Command",
            sagaflow_registry::VersionRef::Latest,
        )
        .await
        .unwrap();
    assert_eq!(id, subject.id);
}

#[tokio::test]
async fn incompatible_change_is_rejected_with_409() {
    let (registry, handle) = start_memory_registry().await;
    let codec = Codec::new(config(handle.url())).unwrap();
    codec.encode_reply(REPLIES, &reply()).await.unwrap();

    // A "v2" of Reply with a new field that has no default: readers of v2
    // cannot read v1 data, so BACKWARD rejects it.
    let v2 = Reply::SCHEMA_JSON.replacen(
        r#""fields": ["#,
        r#""fields": [{"name": "tenant", "type": "string"},"#,
        1,
    );
    let fresh = Codec::new(config(handle.url())).unwrap();
    let mut value = reply().to_avro();
    if let sagaflow_codec::apache_avro::types::Value::Record(fields) = &mut value {
        fields.insert(
            0,
            (
                "tenant".into(),
                sagaflow_codec::apache_avro::types::Value::String("t".into()),
            ),
        );
    }
    let err = fresh
        .encode_avro_value(REPLIES, Reply::FULL_NAME, &v2, value)
        .await
        .unwrap_err();
    assert!(matches!(err, EncodeError::Registry { .. }), "{err:?}");
    assert_eq!(err.code(), "SF-CODEC-007");
    let text = err.to_string();
    assert!(text.contains("409"), "{text}");
    assert!(text.contains("`tenant`"), "{text}");
    assert_eq!(
        registry.versions("sagaflow.replies-value").await.unwrap(),
        vec![1]
    );
}

#[tokio::test]
async fn unknown_schema_id_is_a_typed_error() {
    let (_registry, handle) = start_memory_registry().await;
    let codec = Codec::new(config(handle.url())).unwrap();
    let bytes = [0u8, 0, 0, 0x30, 0x39, 2, b'x'];
    let err = codec.decode_command(COMMANDS, &bytes).await.unwrap_err();
    assert_eq!(err, DecodeError::UnknownSchemaId { id: 12345 });
    assert_eq!(err.code(), "SF-CODEC-003");
    assert!(!err.is_retriable());
    // Id 1 does not exist yet either; once it does, the same codec finds
    // it: the failed lookup was not cached.
    let early = codec
        .decode_command(COMMANDS, &[0, 0, 0, 0, 1, 2, b'x'])
        .await;
    assert_eq!(early, Err(DecodeError::UnknownSchemaId { id: 1 }));
    let encoded = codec.encode_command(COMMANDS, &command()).await.unwrap();
    assert_eq!(sagaflow_codec::split_header(&encoded).unwrap().0, 1);
    assert_eq!(
        codec.decode_command(COMMANDS, &encoded).await.unwrap(),
        command()
    );
}

#[tokio::test]
async fn header_body_and_type_errors_are_typed() {
    let (_registry, handle) = start_memory_registry().await;
    let codec = Codec::new(config(handle.url())).unwrap();
    let bytes = codec.encode_command(COMMANDS, &command()).await.unwrap();

    assert_eq!(
        codec.decode_command(COMMANDS, &bytes[..3]).await,
        Err(DecodeError::TooShort { len: 3 })
    );
    let mut wrong_magic = bytes.clone();
    wrong_magic[0] = b'{';
    assert_eq!(
        codec.decode_command(COMMANDS, &wrong_magic).await,
        Err(DecodeError::WrongMagicByte { found: b'{' })
    );
    let truncated = codec
        .decode_command(COMMANDS, &bytes[..bytes.len() - 10])
        .await
        .unwrap_err();
    assert!(
        matches!(truncated, DecodeError::BodyMismatch { schema_id: 1, .. }),
        "{truncated:?}"
    );
    assert_eq!(truncated.code(), "SF-CODEC-005");

    let reply_bytes = codec.encode_reply(REPLIES, &reply()).await.unwrap();
    let wrong = codec
        .decode_command(REPLIES, &reply_bytes)
        .await
        .unwrap_err();
    assert_eq!(
        wrong,
        DecodeError::WrongRecordType {
            expected: "io.sagaflow.v1.Command",
            found: "io.sagaflow.v1.Reply".into()
        }
    );

    let json_err = codec
        .decode_command("json.commands", b"{\"command_id\": ")
        .await
        .unwrap_err();
    assert!(
        matches!(json_err, DecodeError::InvalidJson { field: None, .. }),
        "{json_err:?}"
    );
    assert_eq!(json_err.code(), "SF-CODEC-006");

    let unconfigured = codec.decode_command("elsewhere", &bytes).await.unwrap_err();
    assert_eq!(unconfigured.code(), "SF-CODEC-008");
}

#[tokio::test]
async fn unreachable_registry_is_a_retriable_typed_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let codec = Codec::new(config(url)).unwrap();
    let err = codec
        .decode_command(COMMANDS, &[0, 0, 0, 0, 1, 0])
        .await
        .unwrap_err();
    assert!(
        matches!(err, DecodeError::RegistryUnreachable { .. }),
        "{err:?}"
    );
    assert!(err.is_retriable());
    let err = codec
        .encode_command(COMMANDS, &command())
        .await
        .unwrap_err();
    assert!(
        matches!(err, EncodeError::RegistryUnreachable { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn registry_restart_keeps_schemas_and_ids() {
    let dir = tempfile::tempdir().unwrap();
    let (_registry, handle) = start_registry(FileLog::open(dir.path()).unwrap()).await;
    let codec = Codec::new(config(handle.url())).unwrap();
    let command_bytes = codec.encode_command(COMMANDS, &command()).await.unwrap();
    let reply_bytes = codec.encode_reply(REPLIES, &reply()).await.unwrap();
    handle.shutdown().await.unwrap();
    drop(_registry);

    let (registry, handle) = start_registry(FileLog::open(dir.path()).unwrap()).await;
    let reader = Codec::new(config(handle.url())).unwrap();
    assert_eq!(
        reader
            .decode_command(COMMANDS, &command_bytes)
            .await
            .unwrap(),
        command()
    );
    assert_eq!(
        reader.decode_reply(REPLIES, &reply_bytes).await.unwrap(),
        reply()
    );
    // Registering again is idempotent: same ids as before the restart.
    let again = reader.encode_command(COMMANDS, &command()).await.unwrap();
    assert_eq!(again[..5], command_bytes[..5]);
    let again = reader.encode_reply(REPLIES, &reply()).await.unwrap();
    assert_eq!(again[..5], reply_bytes[..5]);
    assert_eq!(
        registry.subjects(false).await,
        vec!["io.sagaflow.v1.Command", "sagaflow.replies-value"]
    );
}

/// Arbitrary bytes, and Confluent-looking bytes with ids the registry may
/// or may not know, never panic the decoder and always end in the error
/// the header says.
#[test]
fn decoder_never_panics_on_any_bytes() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (_registry, handle) = rt.block_on(start_registry(MemoryLog::new()));
    let codec = Codec::new(config(handle.url())).unwrap();
    // Ids 1 and 2 are known (Command, Reply); 3.. are not.
    let valid_command = rt
        .block_on(codec.encode_command(COMMANDS, &command()))
        .unwrap();
    let valid_reply = rt.block_on(codec.encode_reply(REPLIES, &reply())).unwrap();

    let arbitrary = proptest::collection::vec(any::<u8>(), 0..64);
    let confluent =
        (0u32..5, proptest::collection::vec(any::<u8>(), 0..64)).prop_map(|(id, body)| {
            let mut bytes = vec![0u8];
            bytes.extend_from_slice(&id.to_be_bytes());
            bytes.extend(body);
            bytes
        });
    let mutated = (
        any::<bool>(),
        any::<prop::sample::Index>(),
        any::<u8>(),
        any::<prop::sample::Index>(),
    )
        .prop_map(move |(is_command, at, byte, cut)| {
            let mut bytes = if is_command {
                valid_command.clone()
            } else {
                valid_reply.clone()
            };
            let at = 5 + at.index(bytes.len() - 5);
            bytes[at] = byte;
            bytes.truncate(5 + cut.index(bytes.len() - 4));
            bytes
        });
    let strategy = prop_oneof![arbitrary, confluent, mutated];
    let mut runner = TestRunner::new(Config {
        cases: 1024,
        ..Config::default()
    });
    runner
        .run(&strategy, |bytes| {
            for topic in [COMMANDS, REPLIES] {
                let generic = rt.block_on(codec.decode_avro_value(topic, &bytes));
                let typed = rt.block_on(codec.decode_command(topic, &bytes));
                for err in [generic.err(), typed.err()].into_iter().flatten() {
                    let expected = if bytes.len() < 5 {
                        "SF-CODEC-001"
                    } else if bytes[0] != 0 {
                        "SF-CODEC-002"
                    } else if !(1..=2).contains(&u32::from_be_bytes([
                        bytes[1], bytes[2], bytes[3], bytes[4],
                    ])) {
                        "SF-CODEC-003"
                    } else {
                        // Known id: the body, its JSON text or its type is wrong.
                        prop_assert!(
                            matches!(err.code(), "SF-CODEC-005" | "SF-CODEC-006" | "SF-CODEC-009"),
                            "{err}"
                        );
                        continue;
                    };
                    prop_assert_eq!(err.code(), expected, "{}", err);
                }
            }
            Ok(())
        })
        .unwrap();
}

#[tokio::test]
async fn json_decode_of_arbitrary_text_never_panics() {
    let codec = Codec::new(CodecConfig {
        registry: None,
        topics: [("json.x".to_string(), TopicFormat::Json)].into(),
        default_format: None,
        limits: Default::default(),
    })
    .unwrap();
    for bytes in [
        &b""[..],
        b"null",
        b"{}",
        b"[1,2]",
        b"\xff\xfe",
        b"{\"kind\": 3}",
    ] {
        let err = codec.decode_command("json.x", bytes).await.unwrap_err();
        assert_eq!(err.code(), "SF-CODEC-006");
    }
}

/// A newer writer (v2: extra enum symbol, extra optional field) is read by
/// this build's v1 schema: the new symbol becomes `Unknown`, the new field
/// is dropped; and v1 data is read by the v2 schema with its defaults.
#[tokio::test]
async fn newer_writer_schema_resolves_to_this_builds_schema() {
    use sagaflow_codec::apache_avro::types::Value;
    use sagaflow_codec::messages::{LifecycleKind, SagaLifecycleEvent};

    let (registry, handle) = start_memory_registry().await;
    let topic = "sagaflow.commands.events"; // any Avro topic with the record-name strategy
    let v1_codec = Codec::new(config(handle.url())).unwrap();
    let event = SagaLifecycleEvent {
        event_id: "e-1".into(),
        saga_id: "s-1".into(),
        saga_type: "order-checkout".into(),
        saga_version: 2,
        kind: LifecycleKind::StepRetrying,
        step: Some("charge".into()),
        attempt: Some(2),
        detail: None,
        at: 1_700_000_000_000,
        ..Default::default()
    };
    let v1_bytes = v1_codec.encode(topic, &event).await.unwrap();

    let v2 = SagaLifecycleEvent::SCHEMA_JSON
        .replacen(r#""FAILED""#, r#""FAILED", "PAUSED""#, 1)
        .replacen(
            r#""fields": ["#,
            r#""fields": [{"name": "region", "type": ["null", "string"], "default": null},"#,
            1,
        );
    let mut value = event.to_avro();
    if let Value::Record(fields) = &mut value {
        fields.insert(
            0,
            (
                "region".into(),
                Value::Union(1, Box::new(Value::String("eu".into()))),
            ),
        );
        for (name, v) in fields.iter_mut() {
            if name == "kind" {
                *v = Value::Enum(17, "PAUSED".into());
            }
        }
    }
    let v2_codec = Codec::new(config(handle.url())).unwrap();
    let v2_bytes = v2_codec
        .encode_avro_value(topic, SagaLifecycleEvent::FULL_NAME, &v2, value)
        .await
        .unwrap();
    assert_eq!(
        registry
            .versions(SagaLifecycleEvent::FULL_NAME)
            .await
            .unwrap(),
        vec![1, 2]
    );

    let reader = Codec::new(config(handle.url())).unwrap();
    let read = reader
        .decode::<SagaLifecycleEvent>(topic, &v2_bytes)
        .await
        .unwrap();
    assert_eq!(
        read,
        SagaLifecycleEvent {
            kind: LifecycleKind::Unknown,
            ..event.clone()
        }
    );
    assert_eq!(
        reader
            .decode::<SagaLifecycleEvent>(topic, &v1_bytes)
            .await
            .unwrap(),
        event
    );
}

/// Basic and bearer credentials from the codec configuration reach the
/// registry; wrong ones are a typed (non-retriable) registry error.
#[tokio::test]
async fn registry_auth_basic_and_bearer() {
    use sagaflow_codec::RegistryAuth;
    use sagaflow_registry::{Auth, Registry};

    let cases = [
        (
            Auth::Basic {
                username: "sagaflow".into(),
                password: "s3cret".into(),
            },
            RegistryAuth::Basic {
                username: "sagaflow".into(),
                password: "s3cret".into(),
            },
            RegistryAuth::Basic {
                username: "sagaflow".into(),
                password: "wrong".into(),
            },
        ),
        (
            Auth::Bearer {
                token: "t0ken".into(),
            },
            RegistryAuth::Bearer {
                token: "t0ken".into(),
            },
            RegistryAuth::Bearer {
                token: "nope".into(),
            },
        ),
    ];
    for (server_auth, good, bad) in cases {
        let registry = Registry::open(MemoryLog::new()).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let handle = registry
            .serve_with_auth(listener, Some(server_auth))
            .unwrap();
        let with = |auth: Option<RegistryAuth>| {
            let mut c = config(handle.url());
            c.registry.as_mut().unwrap().auth = auth;
            Codec::new(c).unwrap()
        };

        let bytes = with(Some(good.clone()))
            .encode_command(COMMANDS, &command())
            .await
            .unwrap();
        assert_eq!(
            with(Some(good))
                .decode_command(COMMANDS, &bytes)
                .await
                .unwrap(),
            command()
        );
        for auth in [Some(bad), None] {
            let codec = with(auth);
            let err = codec.decode_command(COMMANDS, &bytes).await.unwrap_err();
            assert!(matches!(err, DecodeError::Registry { .. }), "{err:?}");
            assert!(err.to_string().contains("401"), "{err}");
            let err = codec
                .encode_command(COMMANDS, &command())
                .await
                .unwrap_err();
            assert!(matches!(err, EncodeError::Registry { .. }), "{err:?}");
            assert!(!err.is_retriable());
        }
    }
}

/// The lifecycle event schema with step data (input/output/error JSON and
/// search attributes) is a compatible evolution of the one registered
/// before it: BACKWARD and FORWARD hold, the registry accepts it as the
/// next version, data of the old writer reads with the new fields absent,
/// and the new fields round-trip.
#[tokio::test]
async fn step_data_fields_evolve_the_lifecycle_schema_compatibly() {
    use sagaflow_codec::apache_avro::Schema;
    use sagaflow_codec::messages::{LifecycleKind, SagaLifecycleEvent};
    use sagaflow_registry::compat::{CompatibilityLevel, check};

    const BEFORE: &str = include_str!("fixtures/SagaLifecycleEvent.step-data-v0.avsc");
    let old = Schema::parse_str(BEFORE).unwrap();
    let new = SagaLifecycleEvent::schema();
    for level in [CompatibilityLevel::Backward, CompatibilityLevel::Forward] {
        let problems = check(level, new, &[(1, &old)]);
        assert!(problems.is_empty(), "{level:?}: {problems:?}");
    }

    let (registry, handle) = start_memory_registry().await;
    let topic = "sagaflow.commands.events"; // any Avro topic with the record-name strategy
    let codec = Codec::new(config(handle.url())).unwrap();
    let base = SagaLifecycleEvent {
        event_id: "s-1/3".into(),
        saga_id: "s-1".into(),
        saga_type: "order-checkout".into(),
        saga_version: 1,
        kind: LifecycleKind::StepFailed,
        step: Some("charge_payment".into()),
        attempt: Some(1),
        detail: Some("declined".into()),
        at: 1_700_000_000_000,
        ..Default::default()
    };
    // Written by a build that did not know the new fields.
    let mut old_value = base.to_avro();
    if let sagaflow_codec::apache_avro::types::Value::Record(fields) = &mut old_value {
        fields.retain(|(n, _)| {
            !matches!(
                n.as_str(),
                "input_json" | "output_json" | "error_json" | "attributes"
            )
        });
    }
    let old_codec = Codec::new(config(handle.url())).unwrap();
    let old_bytes = old_codec
        .encode_avro_value(topic, SagaLifecycleEvent::FULL_NAME, BEFORE, old_value)
        .await
        .unwrap();
    let full = SagaLifecycleEvent {
        input: Some(json!({"amount": 5000, "card_number": "[redacted]"})),
        error: Some(json!({"message": "declined", "data": {"code": 402}})),
        attributes: [("customer_id".to_string(), "c-7".to_string())].into(),
        ..base.clone()
    };
    let new_bytes = codec.encode(topic, &full).await.unwrap();
    assert_eq!(
        registry
            .versions(SagaLifecycleEvent::FULL_NAME)
            .await
            .unwrap(),
        vec![1, 2]
    );
    let reader = Codec::new(config(handle.url())).unwrap();
    assert_eq!(
        reader
            .decode::<SagaLifecycleEvent>(topic, &old_bytes)
            .await
            .unwrap(),
        base
    );
    assert_eq!(
        reader
            .decode::<SagaLifecycleEvent>(topic, &new_bytes)
            .await
            .unwrap(),
        full
    );
}
