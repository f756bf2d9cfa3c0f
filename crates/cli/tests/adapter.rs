//! `sagaflow adapter --config` as a child process, against the broker this
//! test process hosts and a real HTTP backend on 127.0.0.1.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::Message;
use rdkafka::consumer::Consumer;
use rdkafka::producer::FutureRecord;
use sagaflow_bus::{SagaHeaders, TopicNames, TopicSpec};
use sagaflow_test_support as ts;
use sagaflow_test_support::backend::{FakeBackend, Reply, Seen};

const WAIT: Duration = Duration::from_secs(60);

/// A backend answering every POST with 201, recording the calls.
async fn backend() -> FakeBackend {
    FakeBackend::builder()
        .route("POST", "/api/charges/{order}", |_, req| {
            Reply::json(
                201,
                serde_json::json!({"id": format!("p-{}", req.param("order"))}),
            )
        })
        .start()
        .await
}

fn write_configs(dir: &std::path::Path, backend: &str, names: &TopicNames) -> std::path::PathBuf {
    std::fs::write(
        dir.join("payments.yaml"),
        format!(
            "service: payments\nbase-urls: [\"{backend}/api\"]\noperations:\n  charge:\n    rest: {{ method: POST, path: \"/charges/{{{{ input.order_id }}}}\", response: {{ payment_id: /id }} }}\n"
        ),
    )
    .unwrap();
    let path = dir.join("adapter.yaml");
    std::fs::write(
        &path,
        format!(
            "kafka:\n  bootstrap-servers: \"{}\"\n  properties: {{ fetch.wait.max.ms: \"1\" }}\ntopics: {{ prefix: \"{}\" }}\ncodec:\n  default-format: {{ format: json }}\nservice: payments.yaml\nhttp: {{ listen: 127.0.0.1:0 }}\n",
            ts::bootstrap_servers(),
            names.prefix
        ),
    )
    .unwrap();
    path
}

/// Topic names under a fresh prefix, with the payments commands, replies
/// and dead-letter topics created (one partition each).
async fn topics(prefix: &str) -> TopicNames {
    let names = TopicNames::with_prefix(format!("{}.", ts::unique(prefix)));
    ts::create(TopicSpec::new(names.commands("payments"), 1)).await;
    ts::create(TopicSpec::new(names.replies(), 1)).await;
    ts::create(TopicSpec::new(names.dead_letter(), 1)).await;
    names
}

/// Sends SIGTERM to `child` and waits, at most `WAIT`, for it to exit.
async fn terminate(child: &mut tokio::process::Child) -> std::process::ExitStatus {
    let pid = child.id().expect("still running").to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapter_runs_replies_and_exits_zero_on_sigterm() {
    let backend = backend().await;
    let url = backend.url();
    let names = topics("cli").await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_configs(dir.path(), &url, &names);

    let mut child = sagaflow_test_support::cli::tokio_command(&[])
        .args(["adapter", "--config", config.to_str().unwrap()])
        .args(["--log-format", "json"])
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let command = serde_json::json!({
        "command_id": "order-checkout:o-1/charge/1",
        "saga_id": "order-checkout:o-1",
        "saga_type": "order-checkout",
        "saga_version": 1,
        "step": "charge",
        "service": "payments",
        "operation": "charge",
        "attempt": 1,
        "kind": "ACTION",
        "input": {"order_id": "o-1"},
        "timeout_ms": 5000,
        "issued_at": 1
    });
    let topic = names.commands("payments");
    let headers = SagaHeaders {
        saga_id: Some("order-checkout:o-1".into()),
        message_id: Some("order-checkout:o-1/charge/1".into()),
        message_type: Some("Command".into()),
        ..SagaHeaders::default()
    };
    let payload = command.to_string();
    ts::kafka()
        .producer()
        .unwrap()
        .send(
            FutureRecord::to(&topic)
                .key("order-checkout:o-1")
                .payload(&payload)
                .headers(headers.to_owned_headers()),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();

    let reader = ts::kafka().consumer(&ts::unique("cli-reader")).unwrap();
    reader.subscribe(&[names.replies().as_str()]).unwrap();
    let replies = ts::consume(&reader, 1, WAIT).await;
    assert_eq!(replies.len(), 1, "a reply within {WAIT:?}");
    assert_eq!(replies[0].key(), Some(&b"order-checkout:o-1"[..]));
    let reply: serde_json::Value = serde_json::from_str(&ts::text(&replies[0])).unwrap();
    assert_eq!(reply["outcome"], "SUCCESS", "{reply}");
    assert_eq!(reply["data"]["payment_id"], "p-o-1", "{reply}");
    assert_eq!(backend.total(), 1);

    let status = terminate(&mut child).await;
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[tokio::test]
async fn a_bad_config_exits_2_with_the_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("adapter.yaml");
    std::fs::write(
        &path,
        "kafka:\n  bootstrap-servers: 127.0.0.1:9\ncodec: {}\nservice: x.yaml\nmax-in-flite: 3\n",
    )
    .unwrap();
    let out = tokio::time::timeout(
        WAIT,
        sagaflow_test_support::cli::tokio_command(&[])
            .args(["adapter", "--config", path.to_str().unwrap()])
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("adapter.yaml:5:1"), "{stderr}");
    assert!(stderr.contains("max-in-flite"), "{stderr}");
}

/// A backend that does NOT de-duplicate: it applies every call, numbering
/// the calls per `Idempotency-Key`. Orders starting with `slow` hang for a
/// minute on their first call.
async fn counting_backend() -> FakeBackend {
    let per_key = std::sync::Mutex::new(HashMap::<String, usize>::new());
    FakeBackend::builder()
        .route("POST", "/api/charges/{order}", move |_, req| {
            let n = {
                let mut per_key = per_key.lock().unwrap();
                let n = per_key.entry(idempotency_key(req)).or_insert(0);
                *n += 1;
                *n
            };
            let order = req.param("order");
            let reply = Reply::json(201, serde_json::json!({"id": format!("p-{order}-{n}")}));
            if order.starts_with("slow") && n == 1 {
                reply.delay(Duration::from_secs(60))
            } else {
                reply
            }
        })
        .start()
        .await
}

fn idempotency_key(req: &Seen) -> String {
    req.header("idempotency-key")
        .unwrap_or_else(|| "none".to_owned())
}

/// Calls the backend saw, per `Idempotency-Key` (`none` without one).
fn calls_by_key(backend: &FakeBackend) -> HashMap<String, usize> {
    let mut calls = HashMap::new();
    for r in backend.seen() {
        *calls.entry(idempotency_key(&r)).or_insert(0) += 1;
    }
    calls
}

fn charge(i: usize, order: &str) -> (String, String) {
    let saga = format!("order-checkout:k-{i}");
    let command = serde_json::json!({
        "command_id": format!("{saga}/charge/1"),
        "saga_id": saga,
        "saga_type": "order-checkout",
        "saga_version": 1,
        "step": "charge",
        "service": "payments",
        "operation": "charge",
        "attempt": 1,
        "kind": "ACTION",
        "input": {"order_id": order},
        "timeout_ms": 120000,
        "issued_at": 1
    });
    (saga, command.to_string())
}

/// Replies read so far, by command id.
fn reply_ids(records: &[rdkafka::message::OwnedMessage]) -> Vec<String> {
    records
        .iter()
        .map(|m| {
            let v: serde_json::Value = serde_json::from_str(&ts::text(m)).unwrap();
            v["command_id"].as_str().unwrap().to_owned()
        })
        .collect()
}

/// The real `sagaflow adapter` binary is kill -9'd after it completed 20
/// commands (replied, and their outcomes logged) whose offsets could not be
/// committed yet (a slow command at the
/// head of the partition holds the commit), then restarted under the same
/// `group.instance.id`. All 21 commands are delivered again; the 20
/// completed ones are answered from the durable idempotency log, so the
/// backend — which does not de-duplicate — saw each of their keys once, and
/// every command still gets its reply. (The slow one never completed before
/// the kill, so it is called again: at-least-once, as documented.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_after_completing_commands_never_calls_the_backend_twice() {
    const WAIT_LONG: Duration = Duration::from_secs(120);
    const N: usize = 20;
    let backend = counting_backend().await;
    let url = backend.url();
    let names = topics("kill9").await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_configs(dir.path(), &url, &names);
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "properties: { fetch.wait.max.ms: \"1\" }",
        "properties: { fetch.wait.max.ms: \"1\", group.instance.id: payments-0 }",
    );
    let text = format!("{text}group-id: {}\n", ts::unique("kill9-group"));
    std::fs::write(&config, text).unwrap();
    let args = [
        "adapter",
        "--config",
        config.to_str().unwrap(),
        "--log-format",
        "json",
    ];
    let start = |n: usize| {
        let mut cmd = sagaflow_test_support::cli::command(&[]);
        cmd.args(args).env("RUST_LOG", "info");
        ts::process::ChildGuard::command(
            &format!("adapter-{n}"),
            cmd,
            dir.path().join(format!("adapter-{n}.log")),
        )
    };

    let mut first = start(1);
    let producer = ts::kafka().producer().unwrap();
    let topic = names.commands("payments");
    let mut commands = vec![charge(0, "slow-0")];
    commands.extend((1..=N).map(|i| charge(i, &format!("ok-{i}"))));
    for (saga, payload) in &commands {
        producer
            .send(
                FutureRecord::to(&topic).key(saga).payload(payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let reader = ts::kafka().consumer(&ts::unique("kill9-reader")).unwrap();
    reader.subscribe(&[names.replies().as_str()]).unwrap();
    let before = ts::consume(&reader, N, WAIT_LONG).await;
    assert_eq!(
        before.len(),
        N,
        "replies of the fast commands\n{}",
        first.output()
    );
    assert!(first.running(), "{}", first.output());
    // Their outcomes are logged too (each written alongside its reply, so
    // a reply can be read just before its log record is acknowledged).
    let addr = ts::process::wait_until("the adapter's HTTP address", WAIT_LONG, || {
        first.output().lines().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            v["fields"]["http"].as_str().map(str::to_owned)
        })
    });
    let base = format!("http://{addr}");
    ts::metrics::wait_for_sum(
        &format!("{base}/metrics"),
        "sagaflow_adapter_idempotency_writes_total",
        &[],
        N as f64,
        WAIT_LONG,
    )
    .await
    .unwrap_or_else(|e| panic!("the outcomes were never logged: {e}\n{}", first.output()));
    // Completed and replied, offsets held back by `slow-0`: kill -9 now.
    first.kill9();
    {
        let calls = calls_by_key(&backend);
        for i in 1..=N {
            assert_eq!(calls.get(&format!("order-checkout:k-{i}/charge")), Some(&1));
        }
    }

    let mut second = start(2);
    let after = ts::consume(&reader, N + 1, WAIT_LONG).await;
    let mut ids = reply_ids(&after);
    ids.sort();
    let mut expected: Vec<String> = (0..=N)
        .map(|i| format!("order-checkout:k-{i}/charge/1"))
        .collect();
    expected.sort();
    assert_eq!(
        ids,
        expected,
        "every command answered after the restart\n{}",
        second.output()
    );
    let calls = calls_by_key(&backend);
    for i in 1..=N {
        assert_eq!(
            calls.get(&format!("order-checkout:k-{i}/charge")),
            Some(&1),
            "the backend saw k-{i} twice: {calls:?}\n{}",
            second
                .output()
                .lines()
                .filter(|l| l.contains("restored") || l.contains("WARN"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    assert_eq!(
        calls.get("order-checkout:k-0/charge"),
        Some(&2),
        "{calls:?}"
    );
    // The replayed replies are the same as the first ones.
    for m in &after {
        let v: serde_json::Value = serde_json::from_str(&ts::text(m)).unwrap();
        assert_eq!(v["outcome"], "SUCCESS", "{v}");
        let id = v["data"]["payment_id"].as_str().unwrap();
        if v["command_id"] != "order-checkout:k-0/charge/1" {
            assert!(id.ends_with("-1"), "a first call's result: {v}");
        }
    }
    assert!(
        second.output().contains("idempotency log restored"),
        "{}",
        second.output()
    );
    let status = second.terminate(WAIT_LONG).expect("exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", second.output());
}

/// An adapter whose stderr nobody reads (a stopped log shipper, a full
/// pipe) keeps answering commands and stops on SIGTERM: its log lines go
/// out on a thread of their own, through a bounded buffer, and are never
/// waited for. 300 commands log about 200 KB of JSON lines (one `replied`
/// line per command at `debug`, which this test turns on for the adapter),
/// three times what a pipe holds; when stderr was
/// written from the runtime's workers, the adapter stopped replying once
/// the pipe was full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adapter_whose_stderr_nobody_reads_keeps_replying() {
    const N: usize = 300;
    let backend = backend().await;
    let names = topics("mute").await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_configs(dir.path(), &backend.url(), &names);
    let port = ts::free_port();
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    std::fs::write(&config, text).unwrap();

    // Its stderr is a pipe this test holds and never reads.
    let mut child = sagaflow_test_support::cli::tokio_command(&[])
        .args(["adapter", "--config", config.to_str().unwrap()])
        .args(["--log-format", "json"])
        .env("RUST_LOG", "info,sagaflow_adapter=debug")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let producer = ts::kafka().producer().unwrap();
    let topic = names.commands("payments");
    for i in 0..N {
        let (saga, payload) = charge(i, &format!("mute-{i}"));
        producer
            .send(
                FutureRecord::to(&topic).key(&saga).payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let reader = ts::kafka().consumer(&ts::unique("mute-reader")).unwrap();
    reader.subscribe(&[names.replies().as_str()]).unwrap();
    let replies = ts::consume(&reader, N, Duration::from_secs(120)).await;
    let mut ids = reply_ids(&replies);
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), N, "every command answered with stderr unread");

    // Still serving its metrics, which count what the logs dropped.
    let metrics = ts::metrics::scrape(&format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap();
    assert!(
        ts::metrics::value(&metrics, "sagaflow_log_lines_dropped_total", &[]).is_some(),
        "{metrics}"
    );

    // It exits on SIGTERM with its stderr still unread.
    let status = terminate(&mut child).await;
    assert_eq!(status.code(), Some(0), "{status:?}");
}
