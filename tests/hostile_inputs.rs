//! Hostile input at every Kafka entry point, against the real stack: the
//! embedded broker, the bundled registry, `sagaflow orchestrator` and the
//! four `sagaflow adapter`s as child processes, real HTTP backends.
//!
//! Each row of the table is one input class at one entry point (a domain
//! topic, `sagaflow.inputs`, `sagaflow.replies`, `sagaflow.commands.<svc>`)
//! and says what it must get: a dead letter whose `sagaflow-dlq-code` is one
//! of the row's codes (with reason, source topic, partition and offset), or
//! "ignored" for a documented reason, or normal processing. Every topic has
//! one partition, so a row that stalled its partition would stop the good
//! saga sent after each entry point's rows. At the end every process must
//! still run and answer `/readyz` with 200.
//!
//! The HTTP entry points (facade, ingest, saga API, registry server) are
//! tested elsewhere; only the registry's schema limits, which decide which
//! writer schemas can reach the decoders, are checked here.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use common::Stack;
use rdkafka::Message;
use rdkafka::consumer::Consumer;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use sagaflow_codec::messages::{Command, CommandKind, Reply, ReplyOutcome, SagaResult};
use sagaflow_test_support as support;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(180);

/// What a row must get.
#[derive(Debug, Clone)]
enum Expect {
    /// A dead letter with one of these codes.
    DeadLetter(&'static [&'static str]),
    /// No dead letter, and no effect; the reason is documented.
    Ignored(&'static str),
    /// Processed as a normal input: the saga of this order completes.
    Completes(String),
}

struct Row {
    class: &'static str,
    topic: String,
    key: Option<String>,
    value: Option<Vec<u8>>,
    headers: Vec<(&'static str, Vec<u8>)>,
    expect: Expect,
    /// Set when the row is known to fail because a runtime mishandles it:
    /// what happens instead. Reported, not failed on.
    known: Option<&'static str>,
}

impl Row {
    fn new(class: &'static str, topic: &str, value: Option<Vec<u8>>, expect: Expect) -> Self {
        Self {
            class,
            topic: topic.to_owned(),
            key: Some(format!("hostile-{}", class.replace(' ', "-"))),
            value,
            headers: Vec::new(),
            expect,
            known: None,
        }
    }

    fn key(mut self, key: Option<&str>) -> Self {
        self.key = key.map(str::to_owned);
        self
    }

    fn header(mut self, name: &'static str, value: &[u8]) -> Self {
        self.headers.push((name, value.to_vec()));
        self
    }
}

/// Where a dead letter came from: topic, partition, offset.
type Source = (String, i32, i64);
/// A dead letter's code, reason and payload length.
type Letter = (String, String, usize);

fn wire(id: u32, body: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0u8];
    bytes.extend_from_slice(&id.to_be_bytes());
    bytes.extend_from_slice(body);
    bytes
}

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

/// Registers `schema` under `subject` over the registry's HTTP API: the id,
/// or the registry's error body.
async fn register(stack: &Stack, subject: &str, schema: &str) -> Result<u32, serde_json::Value> {
    let response = reqwest::Client::new()
        .post(format!(
            "{}/subjects/{subject}/versions",
            stack.registry_url
        ))
        .header("content-type", "application/vnd.schemaregistry.v1+json")
        .json(&json!({ "schema": schema }))
        .send()
        .await
        .unwrap();
    let ok = response.status().is_success();
    let body: serde_json::Value = response.json().await.unwrap();
    if ok {
        Ok(body["id"].as_u64().unwrap() as u32)
    } else {
        Err(body)
    }
}

async fn produce(stack: &Stack, row: &Row) -> (i32, i64) {
    let mut headers = OwnedHeaders::new();
    for (name, value) in &row.headers {
        headers = headers.insert(Header {
            key: name,
            value: Some(value),
        });
    }
    let mut record = FutureRecord::<str, [u8]>::to(&row.topic).headers(headers);
    if let Some(key) = &row.key {
        record = record.key(key);
    }
    if let Some(value) = &row.value {
        record = record.payload(value);
    }
    let delivery = stack
        .producer
        .send(record, Duration::from_secs(30))
        .await
        .map_err(|(e, _)| e)
        .unwrap_or_else(|e| panic!("{}: produce failed: {e}", row.class));
    (delivery.partition, delivery.offset)
}

fn command(saga_id: &str, service: &str) -> Command {
    Command {
        command_id: Command::action_id(saga_id, "reservation", 1),
        saga_id: saga_id.into(),
        saga_type: "order-checkout".into(),
        saga_version: 1,
        step: "reservation".into(),
        service: service.into(),
        operation: "reserve".into(),
        attempt: 1,
        kind: CommandKind::Action,
        input: json!({"order_id": "ghost", "sku": "SKU-1", "quantity": 1}),
        timeout_ms: 5000,
        issued_at: 1_700_000_000_000,
        trace_parent: None,
    }
}

fn reply(saga_id: &str) -> Reply {
    Reply {
        command_id: Command::action_id(saga_id, "reservation", 1),
        saga_id: saga_id.into(),
        step: "reservation".into(),
        attempt: 1,
        service: "inventory".into(),
        operation: "reserve".into(),
        outcome: ReplyOutcome::Success,
        data: json!({"reservation_id": "r-ghost"}),
        error: None,
        completed_at: 1_700_000_000_100,
        backend_status: Some(201),
    }
}

/// Waits until the saga of each of `orders` has a result.
async fn await_results(
    stack: &Stack,
    reader: &rdkafka::consumer::StreamConsumer,
    results: &mut BTreeMap<String, SagaResult>,
    orders: &[&str],
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut copies = 0;
    loop {
        let missing: Vec<&&str> = orders
            .iter()
            .filter(|o| !results.contains_key(&format!("order-checkout:{o}")))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Err(format!("no result for {missing:?} within {WAIT:?}"));
        }
        let want = results.len() + 1;
        stack
            .collect_results(reader, results, &mut copies, want, left)
            .await;
    }
}

async fn readyz(addr: &str) -> Result<u16, String> {
    reqwest::Client::new()
        .get(format!("http://{addr}/readyz"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_kafka_inputs_are_dead_lettered_or_ignored_and_the_next_saga_completes() {
    let mut stack = Stack::start("hostile", 1).await;
    stack.start_adapters();
    stack.start_orchestrator();
    let reader = stack.results_reader();
    let mut results = BTreeMap::new();

    // A first good saga: topics exist, the standard schemas are registered.
    stack.place_order("warm-1", "c-1", 1000).await;
    await_results(&stack, &reader, &mut results, &["warm-1"])
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", stack.logs()));

    // The registry refuses writer schemas over its limits (42201, naming
    // the limit), so they never reach a decoder through it.
    for (schema, limit) in [
        (
            r#"{"type":"record","name":"Evil","namespace":"h","fields":[{"name":"blob","type":{"type":"fixed","name":"Huge","size":18446744073709551615}}]}"#.to_string(),
            "max-fixed-bytes",
        ),
        (
            format!(
                "{}\"int\"{}",
                r#"{"type":"array","items":"#.repeat(40),
                "}".repeat(40)
            ),
            "max-depth",
        ),
    ] {
        let err = register(&stack, "h.Evil", &schema).await.unwrap_err();
        assert_eq!(err["error_code"], 42201, "{err}");
        assert!(
            err["message"].as_str().unwrap().contains(limit),
            "{limit}: {err}"
        );
    }
    // Schemas within the limits whose values can still be hostile.
    let mut ids = HashMap::new();
    for (name, schema) in [
        (
            "BigFixed",
            r#"{"type":"record","name":"BigFixed","namespace":"h","fields":[{"name":"f","type":{"type":"fixed","name":"F64k","size":65536}}]}"#,
        ),
        (
            "Str",
            r#"{"type":"record","name":"Str","namespace":"h","fields":[{"name":"s","type":"string"}]}"#,
        ),
        (
            "Nulls",
            r#"{"type":"record","name":"Nulls","namespace":"h","fields":[{"name":"a","type":{"type":"array","items":"null"}}]}"#,
        ),
        (
            "EmptyMap",
            r#"{"type":"record","name":"EmptyMap","namespace":"h","fields":[{"name":"m","type":{"type":"map","values":{"type":"record","name":"E","fields":[]}}}]}"#,
        ),
        (
            "Node",
            r#"{"type":"record","name":"Node","namespace":"h","fields":[{"name":"next","type":["null","Node"]}]}"#,
        ),
        (
            "Unrelated",
            r#"{"type":"record","name":"Unrelated","namespace":"h","fields":[{"name":"n","type":"long"}]}"#,
        ),
    ] {
        let id = register(&stack, &format!("h.{name}"), schema)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        ids.insert(name, id);
    }
    let huge_string = wire(ids["Str"], &zigzag(1 << 40));
    let nulls = wire(ids["Nulls"], &[zigzag(1 << 50), vec![0]].concat());
    let big_fixed = wire(ids["BigFixed"], &[0u8; 8]);
    let deep = wire(ids["Node"], &[vec![2u8; 5000], vec![0]].concat());
    let map = wire(ids["EmptyMap"], &[zigzag(1 << 40), vec![0; 100]].concat());
    let unrelated = wire(ids["Unrelated"], &zigzag(5));

    let order = stack.order_placed("x-1", "c-1", 1000).await;
    let order_id = u32::from_be_bytes([order[1], order[2], order[3], order[4]]);
    let oversized = wire(order_id, &vec![0xAB; 950_000 - sagaflow_codec::HEADER_LEN]);
    let truncated = |b: &[u8]| b[..b.len() - 3].to_vec();
    let garbage = |b: &[u8]| [b, b"\xde\xad\xbe\xef"].concat();
    let unknown_id = wire(0x7fff_fff0, &[2, 4, 6]);

    let domain = stack.topic("orders.events");
    let inputs = stack.topic("sagaflow.inputs");
    let replies = stack.topic("sagaflow.replies");
    let commands = stack.topic("sagaflow.commands.inventory");
    let good_command = stack
        .codec
        .encode_command(&commands, &command("order-checkout:ghost", "inventory"))
        .await
        .unwrap();
    let good_reply = stack
        .codec
        .encode_reply(&replies, &reply("order-checkout:ghost"))
        .await
        .unwrap();
    use Expect::*;
    const TOO_SHORT: &[&str] = &["SF-CODEC-001"];
    const NO_VALUE: &[&str] = &["SF-CODEC-001", "SF-ORCH-012"];
    const MAGIC: &[&str] = &["SF-CODEC-002"];
    const UNKNOWN_ID: &[&str] = &["SF-CODEC-003"];
    const BODY: &[&str] = &["SF-CODEC-005"];
    const LIMIT: &[&str] = &["SF-CODEC-012"];
    const WRONG_TYPE: &[&str] = &["SF-CODEC-009"];

    let phases: Vec<(&str, Vec<Row>)> = vec![
        (
            "domain",
            vec![
                Row::new("domain empty value", &domain, Some(vec![]), DeadLetter(NO_VALUE)),
                Row::new("domain null value", &domain, None, DeadLetter(&["SF-ORCH-012"])),
                Row::new("domain too short", &domain, Some(vec![0, 0, 1]), DeadLetter(TOO_SHORT)),
                Row::new("domain wrong magic byte", &domain, Some(vec![1, 0, 0, 0, 1, 2]), DeadLetter(MAGIC)),
                Row::new("domain unknown schema id", &domain, Some(unknown_id.clone()), DeadLetter(UNKNOWN_ID)),
                Row::new("domain 64 KiB fixed in 8 bytes", &domain, Some(big_fixed.clone()), DeadLetter(BODY)),
                Row::new("domain string length 2^40", &domain, Some(huge_string.clone()), DeadLetter(BODY)),
                Row::new("domain 2^50 nulls", &domain, Some(nulls.clone()), DeadLetter(LIMIT)),
                Row::new("domain map count 2^40", &domain, Some(map.clone()), DeadLetter(BODY)),
                Row::new("domain nesting 5000 deep", &domain, Some(deep.clone()), DeadLetter(LIMIT)),
                Row::new("domain truncated Avro", &domain, Some(truncated(&order)), DeadLetter(BODY)),
                Row::new("domain trailing garbage", &domain, Some(garbage(&order)), DeadLetter(BODY)),
                Row::new("domain JSON on an Avro topic", &domain, Some(br#"{"order_id":"x-1"}"#.to_vec()), DeadLetter(MAGIC)),
                Row::new("domain oversized value (950 kB)", &domain, Some(oversized.clone()), DeadLetter(BODY)),
                Row::new(
                    "domain unrelated record type",
                    &domain,
                    Some(unrelated.clone()),
                    Ignored("no saga is triggered by or awaits `Unrelated`: counted in sagaflow_inputs_total{input=\"domain-event\",outcome=\"unmatched\"}"),
                ),
                Row::new(
                    "domain forged sagaflow-type header",
                    &domain,
                    Some(order.clone()),
                    Ignored("the header names the type (`Bogus`), which no saga uses: unmatched, like any event of another type"),
                )
                .header("sagaflow-type", b"Bogus"),
                Row::new(
                    "domain missing key",
                    &domain,
                    Some(stack.order_placed("nokey-1", "c-1", 1000).await),
                    Completes("nokey-1".into()),
                )
                .key(None),
                Row::new(
                    "domain invalid UTF-8 in headers",
                    &domain,
                    Some(stack.order_placed("utf8-1", "c-1", 1000).await),
                    Completes("utf8-1".into()),
                )
                .header("sagaflow-type", b"\xff\xfe")
                .header("traceparent", b"\xc3\x28")
                .header("sagaflow-message-id", b"\x80"),
                Row::new(
                    "domain forged duplicate message id",
                    &domain,
                    Some(stack.order_placed("dupid-1", "c-1", 1000).await),
                    Completes("dupid-1".into()),
                )
                .header("sagaflow-message-id", b"forged-1"),
                Row::new(
                    "domain forged duplicate message id, second order",
                    &domain,
                    Some(stack.order_placed("dupid-2", "c-1", 1000).await),
                    Completes("dupid-2".into()),
                )
                .header("sagaflow-message-id", b"forged-1"),
            ],
        ),
        (
            "inputs",
            vec![
                Row::new("inputs empty value", &inputs, Some(vec![]), DeadLetter(&["SF-ORCH-014"])),
                Row::new("inputs null value", &inputs, None, DeadLetter(&["SF-ORCH-014"])),
                Row::new("inputs not JSON", &inputs, Some(b"\x00\x00\x00\x00\x01\x02".to_vec()), DeadLetter(&["SF-ORCH-014"])),
                Row::new("inputs JSON of another shape", &inputs, Some(br#"{"kind":"launch","x":1}"#.to_vec()), DeadLetter(&["SF-ORCH-014"])),
                Row::new(
                    "inputs trigger for an unknown saga type",
                    &inputs,
                    Some(serde_json::to_vec(&json!({"kind": "trigger", "saga_type": "no-such-saga", "saga_id": "no-such-saga:1",
                        "event": {"message_id": "m-1", "topic": "orders.events", "event_type": "OrderPlaced", "payload": {}}})).unwrap()),
                    DeadLetter(&["SF-ORCH-015"]),
                ),
                Row::new(
                    "inputs event for an unknown saga",
                    &inputs,
                    Some(serde_json::to_vec(&json!({"kind": "event", "saga_id": "order-checkout:ghost",
                        "event": {"message_id": "m-2", "topic": "orders.events", "event_type": "Whatever", "payload": {}}})).unwrap()),
                    Ignored("an event for a saga that has not started is parked for early-event-retention (default 1h), then dropped"),
                ),
            ],
        ),
        (
            "replies",
            vec![
                Row::new("replies empty value", &replies, Some(vec![]), DeadLetter(NO_VALUE)),
                Row::new("replies null value", &replies, None, DeadLetter(&["SF-ORCH-012"])),
                Row::new("replies too short", &replies, Some(vec![0, 1]), DeadLetter(TOO_SHORT)),
                Row::new("replies wrong magic byte", &replies, Some(vec![9, 0, 0, 0, 1]), DeadLetter(MAGIC)),
                Row::new("replies JSON on an Avro topic", &replies, Some(br#"{"saga_id":"x"}"#.to_vec()), DeadLetter(MAGIC)),
                Row::new("replies unknown schema id", &replies, Some(unknown_id.clone()), DeadLetter(UNKNOWN_ID)),
                Row::new("replies 64 KiB fixed in 8 bytes", &replies, Some(big_fixed.clone()), DeadLetter(BODY)),
                Row::new("replies 2^50 nulls", &replies, Some(nulls.clone()), DeadLetter(LIMIT)),
                Row::new("replies nesting 5000 deep", &replies, Some(deep.clone()), DeadLetter(LIMIT)),
                Row::new("replies string length 2^40", &replies, Some(huge_string.clone()), DeadLetter(BODY)),
                Row::new("replies truncated Avro", &replies, Some(truncated(&good_reply)), DeadLetter(BODY)),
                Row::new("replies trailing garbage", &replies, Some(garbage(&good_reply)), DeadLetter(BODY)),
                Row::new("replies a Command", &replies, Some(good_command.clone()), DeadLetter(WRONG_TYPE)),
                Row::new("replies oversized value (950 kB)", &replies, Some(oversized.clone()), DeadLetter(BODY)),
                Row::new(
                    "replies reply for an unknown saga",
                    &replies,
                    Some(good_reply.clone()),
                    Ignored("no saga holds it: counted in sagaflow_inputs_total{input=\"reply\",outcome=\"unmatched\"}"),
                ),
                Row::new(
                    "replies reply for a finished saga",
                    &replies,
                    Some(
                        stack
                            .codec
                            .encode_reply(&replies, &reply("order-checkout:warm-1"))
                            .await
                            .unwrap(),
                    ),
                    Ignored("the saga has ended: the engine calls the reply stale or a duplicate and changes nothing"),
                ),
            ],
        ),
        (
            "commands",
            vec![
                Row::new("commands empty value", &commands, Some(vec![]), DeadLetter(TOO_SHORT)),
                Row::new("commands null value", &commands, None, DeadLetter(TOO_SHORT)),
                Row::new("commands wrong magic byte", &commands, Some(vec![7, 0, 0, 0, 1, 0]), DeadLetter(MAGIC)),
                Row::new("commands JSON on an Avro topic", &commands, Some(br#"{"command_id":"c"}"#.to_vec()), DeadLetter(MAGIC)),
                Row::new("commands unknown schema id", &commands, Some(unknown_id.clone()), DeadLetter(UNKNOWN_ID)),
                Row::new("commands 64 KiB fixed in 8 bytes", &commands, Some(big_fixed.clone()), DeadLetter(BODY)),
                Row::new("commands 2^50 nulls", &commands, Some(nulls.clone()), DeadLetter(LIMIT)),
                Row::new("commands nesting 5000 deep", &commands, Some(deep.clone()), DeadLetter(LIMIT)),
                Row::new("commands map count 2^40", &commands, Some(map.clone()), DeadLetter(BODY)),
                Row::new("commands truncated Avro", &commands, Some(truncated(&good_command)), DeadLetter(BODY)),
                Row::new("commands trailing garbage", &commands, Some(garbage(&good_command)), DeadLetter(BODY)),
                Row::new("commands a Reply", &commands, Some(good_reply.clone()), DeadLetter(WRONG_TYPE)),
                Row::new(
                    "commands for another service",
                    &commands,
                    Some(
                        stack
                            .codec
                            .encode_command(&commands, &command("order-checkout:ghost", "payment"))
                            .await
                            .unwrap(),
                    ),
                    DeadLetter(&["SF-ADAPTER-020"]),
                ),
                Row::new("commands oversized value (950 kB)", &commands, Some(oversized.clone()), DeadLetter(BODY)),
            ],
        ),
    ];

    // Each entry point's rows, then a good saga behind them on the same
    // (only) partition of every topic.
    let mut sent: Vec<(&Row, i32, i64)> = Vec::new();
    let mut stalled = Vec::new();
    for (phase, rows) in &phases {
        for row in rows {
            let (p, o) = produce(&stack, row).await;
            sent.push((row, p, o));
        }
        let next = format!("next-{phase}");
        stack.place_order(&next, "c-1", 1000).await;
        let mut wanted: Vec<String> = rows
            .iter()
            .filter_map(|r| match &r.expect {
                Completes(o) => Some(o.clone()),
                _ => None,
            })
            .collect();
        wanted.push(next);
        let wanted: Vec<&str> = wanted.iter().map(String::as_str).collect();
        if let Err(e) = await_results(&stack, &reader, &mut results, &wanted).await {
            stalled.push(format!("after the {phase} rows: {e}"));
        }
    }

    // The dead letters, by where they came from.
    let expected_dead = sent
        .iter()
        .filter(|(r, _, _)| matches!(r.expect, DeadLetter(_)))
        .count();
    let dlq = support::kafka().consumer(&support::unique("dlq")).unwrap();
    dlq.subscribe(&[&stack.topic("sagaflow.dead-letter")])
        .unwrap();
    let dead = support::consume(&dlq, expected_dead + 50, Duration::from_secs(20)).await;
    let mut by_source: HashMap<Source, Vec<Letter>> = HashMap::new();
    for m in &dead {
        let h = m.headers().expect("dead letters carry headers");
        let get = |k: &str| {
            h.iter()
                .find(|x| x.key == k)
                .and_then(|x| x.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        by_source
            .entry((
                get("sagaflow-dlq-source-topic"),
                get("sagaflow-dlq-source-partition").parse().unwrap_or(-1),
                get("sagaflow-dlq-source-offset").parse().unwrap_or(-1),
            ))
            .or_default()
            .push((
                get("sagaflow-dlq-code"),
                get("sagaflow-dlq-reason"),
                m.payload().map_or(0, <[u8]>::len),
            ));
    }

    let mut table = String::new();
    let mut failures = Vec::new();
    let mut known = Vec::new();
    for (row, p, o) in &sent {
        let letters = by_source
            .get(&(row.topic.clone(), *p, *o))
            .cloned()
            .unwrap_or_default();
        let observed = match letters.as_slice() {
            [] => "no dead letter".to_string(),
            [(code, reason, len)] => format!("dead letter {code} ({len} bytes): {reason}"),
            many => format!("{} dead letters: {many:?}", many.len()),
        };
        let verdict = match &row.expect {
            DeadLetter(codes) => match letters.as_slice() {
                [(code, reason, len)]
                    if codes.contains(&code.as_str())
                        && !reason.is_empty()
                        && *len == row.value.as_ref().map_or(0, Vec::len) =>
                {
                    Ok(())
                }
                _ => Err(format!("expected one dead letter with {codes:?}")),
            },
            Ignored(_) if letters.is_empty() => Ok(()),
            Ignored(_) => Err("expected no dead letter".to_string()),
            Completes(order) => {
                if !letters.is_empty() {
                    Err("expected no dead letter".to_string())
                } else if results.contains_key(&format!("order-checkout:{order}")) {
                    Ok(())
                } else {
                    Err(format!("saga of {order} did not complete"))
                }
            }
        };
        let expect = match &row.expect {
            DeadLetter(codes) => format!("dead letter {}", codes.join("|")),
            Ignored(why) => format!("ignored: {why}"),
            Completes(order) => format!("processed: saga of {order} completes"),
        };
        table.push_str(&format!(
            "{:<48} | {expect}\n{:<48} |   observed: {observed}\n",
            row.class, ""
        ));
        match (verdict, row.known) {
            (Ok(()), None) => {}
            (Ok(()), Some(_)) => known.push(format!("{} now passes; drop its `known`", row.class)),
            (Err(e), None) => failures.push(format!("{}: {e}; observed {observed}", row.class)),
            (Err(e), Some(why)) => known.push(format!("{}: {e} (known: {why})", row.class)),
        }
    }
    eprintln!("hostile input table:\n{table}");
    for k in &known {
        eprintln!("known: {k}");
    }

    // The finished saga stayed finished: still exactly one terminal event.
    let terminal = stack
        .terminal
        .lock()
        .unwrap()
        .get("order-checkout:warm-1")
        .map_or(0, |s| s.len());
    if terminal != 1 {
        failures.push(format!(
            "warm-1 has {terminal} terminal lifecycle events after a late reply"
        ));
    }
    // Every process is up and ready.
    let mut processes = Vec::new();
    for c in stack
        .orchestrators
        .iter_mut()
        .chain(stack.adapters.iter_mut())
    {
        if !c.running() {
            failures.push(format!("{} is not running", c.name));
            continue;
        }
        let addr = c.http_addr(WAIT);
        match readyz(&addr).await {
            Ok(200) => processes.push(c.name.clone()),
            other => failures.push(format!("{}: /readyz answered {other:?}", c.name)),
        }
    }
    failures.extend(stalled);
    assert!(
        failures.is_empty(),
        "{} of {} rows or checks failed:\n{}\n\nTable:\n{table}\n{}",
        failures.len(),
        sent.len(),
        failures.join("\n"),
        stack.logs()
    );
    assert_eq!(processes.len(), 5, "{processes:?}");
}
