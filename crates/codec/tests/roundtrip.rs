//! decode(encode(v)) == v through the Confluent wire format, against a real
//! registry served on 127.0.0.1, for every schema in `schemas/` and for the
//! typed Sagaflow messages (Avro and JSON topics).

mod common;

use std::collections::BTreeMap;

use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use sagaflow_codec::{
    AvroMessage, Codec, CodecConfig, RegistryConfig, SubjectStrategy, TopicFormat,
};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: 128,
        ..Config::default()
    })
}

#[test]
fn every_schema_in_schemas_dir_round_trips_through_the_wire_format() {
    let rt = runtime();
    let (_registry, handle) = rt.block_on(start_memory_registry());
    let codec = Codec::new(CodecConfig::avro_everywhere(handle.url())).unwrap();
    let files = sagaflow_codec::schema_set::load_dir(&schemas_dir()).unwrap();
    assert_eq!(
        files.len(),
        12,
        "a schema was added or removed: update this test's expectations"
    );
    for file in &files {
        let mut runner = runner();
        let result = runner.run(&value_strategy(&file.schema), |value| {
            let bytes = rt
                .block_on(codec.encode_avro_value(
                    "any.topic",
                    &file.full_name,
                    &file.text,
                    value.clone(),
                ))
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(bytes[0], 0u8);
            let decoded = rt
                .block_on(codec.decode_avro_value("any.topic", &bytes))
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(decoded.full_name.as_deref(), Some(file.full_name.as_str()));
            prop_assert_eq!(decoded.value, value);
            Ok(())
        });
        if let Err(e) = result {
            panic!("{}: {e}", file.path.display());
        }
    }
    // Every schema ended up registered under its record name.
    let subjects = rt.block_on(_registry.subjects(false));
    assert_eq!(subjects.len(), files.len());
}

fn mixed_config(url: String) -> CodecConfig {
    let mut topics = BTreeMap::new();
    topics.insert("sagaflow.commands.*".to_string(), TopicFormat::avro());
    topics.insert(
        "sagaflow.replies".to_string(),
        TopicFormat::Avro {
            subject_strategy: SubjectStrategy::TopicName,
            auto_register: true,
        },
    );
    topics.insert("sagaflow.saga-events".to_string(), TopicFormat::avro());
    topics.insert("json.*".to_string(), TopicFormat::Json);
    CodecConfig {
        registry: Some(RegistryConfig {
            url,
            auth: None,
            timeout: Some("5s".into()),
        }),
        topics,
        default_format: None,
        limits: Default::default(),
    }
}

fn check_message<M, S>(rt: &tokio::runtime::Runtime, codec: &Codec, topic: &str, strategy: S)
where
    M: AvroMessage + PartialEq + std::fmt::Debug + Clone,
    S: Strategy<Value = M>,
{
    let mut runner = runner();
    runner
        .run(&strategy, |message| {
            for topic in [topic, "json.messages"] {
                let bytes = rt
                    .block_on(codec.encode(topic, &message))
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let back: M = rt
                    .block_on(codec.decode(topic, &bytes))
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(&back, &message);
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{}: {e}", M::FULL_NAME));
}

#[test]
fn sagaflow_messages_round_trip_on_avro_and_json_topics() {
    let rt = runtime();
    let (registry, handle) = rt.block_on(start_memory_registry());
    let codec = Codec::new(mixed_config(handle.url())).unwrap();
    check_message(
        &rt,
        &codec,
        "sagaflow.commands.payments",
        command_strategy(),
    );
    check_message(&rt, &codec, "sagaflow.replies", reply_strategy());
    check_message(&rt, &codec, "sagaflow.saga-events", lifecycle_strategy());
    check_message(&rt, &codec, "sagaflow.saga-events", result_strategy());
    let subjects = rt.block_on(registry.subjects(false));
    assert_eq!(
        subjects,
        vec![
            "io.sagaflow.v1.Command",
            "io.sagaflow.v1.SagaLifecycleEvent",
            "io.sagaflow.v1.SagaResult",
            "sagaflow.replies-value",
        ]
    );
}

#[test]
fn saga_events_topic_carries_lifecycle_events_and_results() {
    let rt = runtime();
    let (_registry, handle) = rt.block_on(start_memory_registry());
    let codec = Codec::new(mixed_config(handle.url())).unwrap();
    let mut runner = runner();
    runner
        .run(
            &(lifecycle_strategy(), result_strategy()),
            |(event, result)| {
                for topic in ["sagaflow.saga-events", "json.saga-events"] {
                    let bytes = rt.block_on(codec.encode(topic, &event)).unwrap();
                    prop_assert_eq!(
                        rt.block_on(codec.decode_saga_event(topic, &bytes)).unwrap(),
                        sagaflow_codec::SagaEvent::Lifecycle(event.clone())
                    );
                    let bytes = rt.block_on(codec.encode(topic, &result)).unwrap();
                    prop_assert_eq!(
                        rt.block_on(codec.decode_saga_event(topic, &bytes)).unwrap(),
                        sagaflow_codec::SagaEvent::Result(result.clone())
                    );
                }
                Ok(())
            },
        )
        .unwrap();
}
