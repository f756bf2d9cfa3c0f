//! Hostile writer schemas and hostile bodies, through the codec's real
//! decode path: a real registry on 127.0.0.1 serves the schema, the codec
//! fetches it by id and decodes. Every case ends in a value or a coded,
//! non-retriable error, in bounded time, never a panic.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use sagaflow_codec::apache_avro::Schema;
use sagaflow_codec::{Codec, CodecConfig, DecodeError, SchemaLimits};
use sagaflow_registry::{CompatibilityLevel, MemoryLog, Registry, ServeHandle, Submitted};
use serde_json::{Value as Json, json};

const TOPIC: &str = "sagaflow.commands.inventory";
/// Every decode here must end well within this, on a loaded 2-core machine.
const BOUND: Duration = Duration::from_secs(5);

/// A registry that stores whatever it is given, like a foreign registry
/// the codec cannot vouch for.
fn anything_goes() -> SchemaLimits {
    SchemaLimits {
        max_schema_bytes: usize::MAX,
        max_depth: usize::MAX,
        max_fields: usize::MAX,
        max_symbols: usize::MAX,
        max_union_branches: usize::MAX,
        max_fixed_bytes: usize::MAX,
        max_types: usize::MAX,
    }
}

async fn permissive_registry() -> (Registry, ServeHandle) {
    let registry = Registry::open_with_limits(MemoryLog::new(), anything_goes())
        .await
        .unwrap();
    registry
        .set_compatibility(None, Some(CompatibilityLevel::None))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let handle = registry.serve(listener).unwrap();
    (registry, handle)
}

static SUBJECTS: AtomicUsize = AtomicUsize::new(0);

async fn register(registry: &Registry, text: &str) -> Result<u32, String> {
    let subject = format!("hostile-{}", SUBJECTS.fetch_add(1, Ordering::Relaxed));
    registry
        .register(&subject, Submitted::avro(text))
        .await
        .map_err(|e| e.to_string())
}

fn wire(id: u32, body: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0u8];
    bytes.extend_from_slice(&id.to_be_bytes());
    bytes.extend_from_slice(body);
    bytes
}

/// Avro's zig-zag varint.
fn zigzag(n: i64) -> Vec<u8> {
    let mut v = ((n << 1) ^ (n >> 63)) as u64;
    let mut out = Vec::new();
    loop {
        if v < 0x80 {
            out.push(v as u8);
            return out;
        }
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
}

/// Decodes with a deadline, both generically and as a `Command`.
async fn decode_both(codec: &Codec, bytes: &[u8]) -> [Result<(), DecodeError>; 2] {
    let start = Instant::now();
    let generic = codec.decode_avro_value(TOPIC, bytes).await.map(drop);
    let typed = codec.decode_command(TOPIC, bytes).await.map(drop);
    assert!(start.elapsed() < BOUND, "took {:?}", start.elapsed());
    [generic, typed]
}

const HUGE_FIXED: &str = r#"{"type":"record","name":"Evil","namespace":"x","fields":[{"name":"blob","type":{"type":"fixed","name":"Huge","size":18446744073709551615}}]}"#;

/// The attack from issue 14, first against apache-avro alone: it panics.
/// (If a future apache-avro stops panicking here, this test says so; the
/// codec's checks stay, as defence in depth.)
#[test]
fn apache_avro_alone_panics_on_a_huge_fixed() {
    let schema = Schema::parse_str(HUGE_FIXED).expect("apache-avro accepts the schema");
    let reader = sagaflow_codec::apache_avro::reader::datum::GenericDatumReader::builder(&schema)
        .build()
        .unwrap();
    let body = [0u8; 8];
    let outcome = std::panic::catch_unwind(|| reader.read_value(&mut &body[..]));
    assert!(
        outcome.is_err(),
        "apache-avro no longer panics: {outcome:?}"
    );
}

/// The same attack through the codec: a coded, non-retriable error (so the
/// record is dead-lettered, never retried), and the codec keeps working.
#[tokio::test]
async fn huge_fixed_writer_schema_is_refused_before_any_allocation() {
    let (registry, handle) = permissive_registry().await;
    let id = register(&registry, HUGE_FIXED).await.unwrap();
    let codec = Codec::new(CodecConfig::avro_everywhere(handle.url())).unwrap();
    for result in decode_both(&codec, &wire(id, &[0u8; 8])).await {
        let err = result.unwrap_err();
        assert_eq!(err.code(), "SF-CODEC-011", "{err}");
        assert!(!err.is_retriable());
        assert!(err.to_string().contains("max-fixed-bytes"), "{err}");
        assert!(err.to_string().contains("x.Evil.blob<x.Huge>"), "{err}");
    }
    // With the schema limit lifted, the body walk still refuses it: a fixed
    // must fit in the bytes that are left.
    let mut config = CodecConfig::avro_everywhere(handle.url());
    config.limits.schema = anything_goes();
    let lax = Codec::new(config).unwrap();
    for result in decode_both(&lax, &wire(id, &[0u8; 8])).await {
        let err = result.unwrap_err();
        assert_eq!(err.code(), "SF-CODEC-005", "{err}");
        assert!(err.to_string().contains("only 8 bytes are left"), "{err}");
    }
    // A good value still decodes afterwards.
    let good = codec
        .encode_avro_value(
            TOPIC,
            "x.Ok",
            r#"{"type":"record","name":"Ok","namespace":"x","fields":[{"name":"n","type":"long"}]}"#,
            sagaflow_codec::apache_avro::types::Value::Record(vec![(
                "n".into(),
                sagaflow_codec::apache_avro::types::Value::Long(7),
            )]),
        )
        .await
        .unwrap();
    codec.decode_avro_value(TOPIC, &good).await.unwrap();
}

fn nested_arrays(depth: usize) -> String {
    format!(
        "{}\"int\"{}",
        r#"{"type":"array","items":"#.repeat(depth),
        "}".repeat(depth)
    )
}

fn record(fields: &str) -> String {
    format!(r#"{{"type":"record","name":"R","namespace":"h","fields":[{fields}]}}"#)
}

/// A record type whose value holds 2^levels nulls in zero bytes.
fn doubling(levels: usize) -> String {
    let mut t = r#"{"type":"record","name":"L0","fields":[]}"#.to_string();
    for i in 1..=levels {
        t = format!(
            r#"{{"type":"record","name":"L{i}","fields":[{{"name":"a","type":{t}}},{{"name":"b","type":"L{}"}}]}}"#,
            i - 1
        );
    }
    t
}

/// Hostile schemas and bodies, each with the code it must end in.
#[tokio::test]
async fn hostile_schemas_and_bodies_end_in_coded_errors_in_bounded_time() {
    let (registry, handle) = permissive_registry().await;
    let codec = Codec::new(CodecConfig::avro_everywhere(handle.url())).unwrap();
    let mut huge_count_of_nulls = zigzag(1_000_000_000_000_000);
    huge_count_of_nulls.push(0);
    // 1,000 entries of key "" (one length byte) and an empty record, then
    // the body ends.
    let huge_map_of_empty_records = [zigzag(1 << 40), vec![0; 1000]].concat();
    let cases: Vec<(&str, String, Vec<u8>, &str, &str)> = vec![
        (
            "schema nested 40 deep",
            nested_arrays(40),
            vec![0],
            "SF-CODEC-011",
            "max-depth",
        ),
        (
            "enum of 20,000 symbols",
            format!(
                r#"{{"type":"enum","name":"E","symbols":[{}]}}"#,
                (0..20_000)
                    .map(|i| format!("\"S{i}\""))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            vec![0],
            "SF-CODEC-011",
            "max-symbols",
        ),
        (
            "fixed within limits, longer than the body",
            record(r#"{"name":"f","type":{"type":"fixed","name":"F","size":1000}}"#),
            vec![0; 8],
            "SF-CODEC-005",
            "only 8 bytes are left",
        ),
        (
            "string length 2^40 in the data",
            record(r#"{"name":"s","type":"string"}"#),
            zigzag(1 << 40),
            "SF-CODEC-005",
            "a string of 1099511627776 bytes",
        ),
        (
            "bytes with a negative length",
            record(r#"{"name":"b","type":"bytes"}"#),
            zigzag(-5),
            "SF-CODEC-005",
            "negative length",
        ),
        (
            "array of 10^15 nulls in 9 bytes",
            record(r#"{"name":"a","type":{"type":"array","items":"null"}}"#),
            huge_count_of_nulls,
            "SF-CODEC-012",
            "max-values",
        ),
        (
            "array of 2^40 empty records in 7 bytes",
            record(
                r#"{"name":"a","type":{"type":"array","items":{"type":"record","name":"E","fields":[]}}}"#,
            ),
            [zigzag(1 << 40), vec![0]].concat(),
            "SF-CODEC-012",
            "max-values",
        ),
        (
            // Each entry costs its key's length byte, so the body runs out.
            "map of 2^40 empty records in 1,006 bytes",
            record(
                r#"{"name":"m","type":{"type":"map","values":{"type":"record","name":"E","fields":[]}}}"#,
            ),
            huge_map_of_empty_records,
            "SF-CODEC-005",
            "ends inside a number",
        ),
        (
            "array block count i64::MIN",
            record(r#"{"name":"a","type":{"type":"array","items":"int"}}"#),
            [zigzag(i64::MIN), zigzag(0)].concat(),
            "SF-CODEC-005",
            "overflows",
        ),
        (
            "recursive list 1,000 deep",
            r#"{"type":"record","name":"Node","fields":[{"name":"next","type":["null","Node"]}]}"#
                .to_string(),
            [vec![2u8; 1000], vec![0]].concat(),
            "SF-CODEC-012",
            "max-depth",
        ),
        (
            "2^24 nulls in zero bytes through doubling records",
            doubling(24),
            vec![],
            "SF-CODEC-012",
            "max-values",
        ),
        (
            "union branch out of range",
            record(r#"{"name":"u","type":["null","long"]}"#),
            zigzag(7),
            "SF-CODEC-005",
            "union branch 7",
        ),
        (
            "trailing garbage",
            record(r#"{"name":"n","type":"long"}"#),
            vec![2, 0xde, 0xad],
            "SF-CODEC-005",
            "2 bytes after the end",
        ),
        (
            "body ends inside a number",
            record(r#"{"name":"n","type":"long"}"#),
            vec![0x80, 0x80],
            "SF-CODEC-005",
            "ends inside a number",
        ),
    ];
    for (name, schema, body, code, says) in cases {
        let id = register(&registry, &schema)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let [generic, typed] = decode_both(&codec, &wire(id, &body)).await;
        let err = generic.unwrap_err();
        assert_eq!(err.code(), code, "{name}: {err}");
        assert!(!err.is_retriable(), "{name}");
        assert!(err.to_string().contains(says), "{name}: {err}");
        // Typed decoding fails the same way (or, for a schema that passed
        // and a body that is fine, on the record type).
        let typed = typed.unwrap_err();
        assert_eq!(typed.code(), code, "{name} (typed): {typed}");
    }
}

// ---- property tests over generated writer schemas ----

/// A writer schema as JSON; names are placeholders until [`name_types`].
fn schema_json() -> impl Strategy<Value = Json> {
    let fixed_size = prop_oneof![
        4 => 0u64..24,
        1 => Just(u64::MAX),
        1 => (1u64 << 16)..(1u64 << 40),
    ];
    let leaf = prop_oneof![
        Just(json!("null")),
        Just(json!("boolean")),
        Just(json!("int")),
        Just(json!("long")),
        Just(json!("float")),
        Just(json!("double")),
        Just(json!("bytes")),
        Just(json!("string")),
        fixed_size.prop_map(|size| json!({"type": "fixed", "name": "?", "size": size})),
        (1usize..12).prop_map(|n| json!({
            "type": "enum", "name": "?",
            "symbols": (0..n).map(|i| format!("S{i}")).collect::<Vec<_>>()
        })),
    ];
    leaf.prop_recursive(6, 48, 5, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(|fields| json!({
                "type": "record", "name": "?",
                "fields": fields.into_iter().map(|t| json!({"name": "?", "type": t})).collect::<Vec<_>>()
            })),
            inner.clone().prop_map(|t| json!({"type": "array", "items": t})),
            inner.clone().prop_map(|t| json!({"type": "map", "values": t})),
            // Unions of distinct kinds are valid; the rest are refused by
            // the registry, which is fine (the case is then skipped).
            proptest::collection::vec(inner, 1..4).prop_map(Json::Array),
        ]
    })
}

/// Gives every named type and field a unique name.
fn name_types(json: &mut Json, next: &mut usize) {
    match json {
        Json::Object(map) => {
            if map.get("name").is_some_and(|n| n == "?") {
                map.insert("name".into(), json!(format!("N{next}")));
                *next += 1;
            }
            for (_, v) in map.iter_mut() {
                name_types(v, next);
            }
        }
        Json::Array(items) => items.iter_mut().for_each(|v| name_types(v, next)),
        _ => {}
    }
}

static TOP: AtomicUsize = AtomicUsize::new(0);

/// A record `TopN` (unique per call) with one field of the generated type.
fn top_level(inner: Json) -> (String, String) {
    let n = TOP.fetch_add(1, Ordering::Relaxed);
    let mut schema = json!({
        "type": "record", "name": format!("Top{n}"), "namespace": "gen",
        "fields": [{"name": "v", "type": inner}]
    });
    let mut next = 0;
    name_types(&mut schema, &mut next);
    (format!("gen.Top{n}"), schema.to_string())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Generated writer schemas (some with huge fixed sizes, deep nesting,
/// wide records) with random and crafted bodies: every decode ends in a
/// value or a coded error of the body or the schema, in bounded time,
/// never a panic (SF-CODEC-013 would mean one was caught).
#[test]
fn generated_writer_schemas_and_bodies_never_panic() {
    let rt = runtime();
    let (registry, handle) = rt.block_on(permissive_registry());
    let codec = Codec::new(CodecConfig::avro_everywhere(handle.url())).unwrap();
    let bodies = proptest::collection::vec(
        prop_oneof![
            3 => proptest::collection::vec(any::<u8>(), 0..48),
            1 => any::<i64>().prop_map(zigzag),
            1 => (any::<i64>(), proptest::collection::vec(any::<u8>(), 0..8))
                .prop_map(|(n, rest)| [zigzag(n), rest].concat()),
        ],
        1..8,
    );
    let mut runner = TestRunner::new(Config {
        cases: 192,
        ..Config::default()
    });
    // [registered schemas, Ok, SF-CODEC-005, SF-CODEC-011, SF-CODEC-012]
    let stats = std::sync::Mutex::new([0usize; 5]);
    runner
        .run(&(schema_json(), bodies), |(inner, bodies)| {
            let (_, text) = top_level(inner);
            let Ok(id) = rt.block_on(register(&registry, &text)) else {
                return Ok(()); // not valid Avro (e.g. a union of two records of one kind)
            };
            stats.lock().unwrap()[0] += 1;
            // Runs of zero bytes are a valid value of many schemas (empty
            // strings, arrays and maps, zeros, first branches and symbols),
            // so some decodes succeed whatever the random bodies do.
            let zeros = (0..=8).map(|n| vec![0u8; n]);
            for body in bodies.into_iter().chain(zeros) {
                let start = Instant::now();
                let result = rt.block_on(codec.decode_avro_value(TOPIC, &wire(id, &body)));
                prop_assert!(start.elapsed() < BOUND, "took {:?}", start.elapsed());
                let mut s = stats.lock().unwrap();
                match result {
                    Ok(_) => s[1] += 1,
                    Err(err) => {
                        match err.code() {
                            "SF-CODEC-005" => s[2] += 1,
                            "SF-CODEC-011" => s[3] += 1,
                            _ => s[4] += 1,
                        }
                        prop_assert!(
                            matches!(err.code(), "SF-CODEC-005" | "SF-CODEC-011" | "SF-CODEC-012"),
                            "{err} for {text}"
                        );
                        prop_assert!(!err.is_retriable());
                    }
                }
            }
            Ok(())
        })
        .unwrap();
    let [registered, ok, body, refused, over] = *stats.lock().unwrap();
    eprintln!(
        "{registered} schemas registered; decodes: {ok} ok, {body} SF-CODEC-005, {refused} SF-CODEC-011, {over} SF-CODEC-012"
    );
    assert!(
        ok > 0 && body > 0 && refused > 0,
        "{registered} schemas, ok {ok}, 005 {body}, 011 {refused}: the generator is too narrow"
    );
}

/// Generated schemas within the limits round-trip generated values through
/// the real encoder and decoder.
#[test]
fn generated_schemas_round_trip_generated_values() {
    let rt = runtime();
    let (_registry, handle) = rt.block_on(permissive_registry());
    let codec = Codec::new(CodecConfig::avro_everywhere(handle.url())).unwrap();
    let cases = schema_json()
        .prop_map(top_level)
        .prop_filter_map("valid Avro with small fixed sizes", |(name, text)| {
            let schema = Schema::parse_str(&text).ok()?;
            small_fixed(&schema).then_some((name, text, schema))
        })
        .prop_flat_map(|(name, text, schema)| {
            let values = value_strategy(&schema);
            (Just(name), Just(text), values)
        });
    let mut runner = TestRunner::new(Config {
        cases: 96,
        ..Config::default()
    });
    runner
        .run(&cases, |(name, text, value)| {
            let bytes = rt
                .block_on(codec.encode_avro_value(TOPIC, &name, &text, value.clone()))
                .map_err(|e| TestCaseError::fail(format!("{e} for {text}")))?;
            let decoded = rt
                .block_on(codec.decode_avro_value(TOPIC, &bytes))
                .map_err(|e| TestCaseError::fail(format!("{e} for {text}")))?;
            prop_assert_eq!(decoded.value, value, "{}", text);
            prop_assert_eq!(decoded.full_name.as_deref(), Some(name.as_str()));
            Ok(())
        })
        .unwrap();
}

/// Whether every `fixed` of `schema` is small enough to generate values of
/// (the one rule of the limits the generator can break).
fn small_fixed(schema: &Schema) -> bool {
    match schema {
        Schema::Fixed(f) => f.size <= 64,
        Schema::Array(a) => small_fixed(&a.items),
        Schema::Map(m) => small_fixed(&m.types),
        Schema::Union(u) => u.variants().iter().all(small_fixed),
        Schema::Record(r) => r.fields.iter().all(|f| small_fixed(&f.schema)),
        _ => true,
    }
}
