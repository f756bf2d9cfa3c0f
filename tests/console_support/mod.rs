//! Starting `sagaflow console` next to a test stack, and reading its API.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use rdkafka::message::OwnedMessage;
use rdkafka::producer::FutureRecord;
use sagaflow_test_support::process::ChildGuard;
use sagaflow_test_support::{self as support};
use serde_json::Value;

use crate::common::Stack;

pub mod webdriver;

pub const OPERATOR_TOKEN: &str = "console-operator-test-token";
pub const READ_TOKEN: &str = "console-read-test-token";

/// Writes a console configuration for `stack` with its database at `db`.
pub fn config(
    stack: &Stack,
    name: &str,
    db: &Path,
    orchestrator: Option<&str>,
    read_token: bool,
) -> PathBuf {
    config_with(stack, name, db, orchestrator, read_token, "")
}

/// Like [`config`], with more top-level YAML appended.
pub fn config_with(
    stack: &Stack,
    name: &str,
    db: &Path,
    orchestrator: Option<&str>,
    read_token: bool,
    extra: &str,
) -> PathBuf {
    let mut y = format!(
        "kafka:\n  bootstrap-servers: {}\n  properties:\n    fetch.wait.max.ms: \"2\"\ntopics:\n  prefix: {}\ncodec:\n  registry:\n    url: {}\n  default-format:\n    format: avro\ndatabase: {}\nretention: 7d\ngroup-id: {}console\nhttp:\n  listen: 127.0.0.1:0\n  operator-token-env: SAGAFLOW_TEST_CONSOLE_OPERATOR\n",
        support::bootstrap_servers(),
        stack.prefix,
        stack.registry_url,
        db.display(),
        stack.prefix,
    );
    if read_token {
        y.push_str("  read-token-env: SAGAFLOW_TEST_CONSOLE_READ\n");
    }
    if let Some(url) = orchestrator {
        y.push_str(&format!("orchestrator:\n  url: {url}\n"));
    }
    y.push_str(extra);
    let path = stack.path(&format!("{name}.console.yaml"));
    std::fs::write(&path, y).unwrap();
    path
}

pub struct Console {
    pub child: ChildGuard,
    pub url: String,
}

/// Starts `sagaflow console --config cfg` and waits for its address.
pub fn start(stack: &Stack, name: &str, cfg: &Path) -> Console {
    let log = stack.path(&format!("{name}-{}.log", support::unique("run")));
    let child = ChildGuard::sagaflow(
        name,
        &["console", "--config", cfg.to_str().unwrap()],
        log,
        &[
            ("SAGAFLOW_TEST_CONSOLE_OPERATOR", OPERATOR_TOKEN),
            ("SAGAFLOW_TEST_CONSOLE_READ", READ_TOKEN),
        ],
    );
    let addr = child.http_addr(Duration::from_secs(60));
    Console {
        child,
        url: format!("http://{addr}"),
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// GET `path` with `token`; the status and the JSON body.
pub async fn get(url: &str, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = client().get(format!("{url}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    match req.send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

/// POST `path` with a JSON body and `token`.
pub async fn post(url: &str, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut req = client().post(format!("{url}{path}")).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Polls `check` every 200 ms until it returns `Some`, or panics with
/// `what` and the logs after `timeout`.
pub async fn until<T, F, Fut>(
    stack: &Stack,
    console: Option<&Console>,
    what: &str,
    timeout: Duration,
    mut check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            let console_log = console.map(|c| c.child.output()).unwrap_or_default();
            panic!(
                "timed out waiting for {what}\n--- console ---\n{}\n{}",
                console_log
                    .lines()
                    .rev()
                    .take(40)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n"),
                stack.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A saga's detail from the console, once it has `status`.
pub async fn saga_with_status(stack: &Stack, c: &Console, id: &str, status: &str) -> Value {
    let path = format!("/api/sagas/{}", id.replace(':', "%3A"));
    until(
        stack,
        Some(c),
        &format!("{id} to be {status} in the console"),
        Duration::from_secs(180),
        || {
            let path = path.clone();
            let url = c.url.clone();
            async move {
                let (code, v) = get(&url, &path, Some(READ_TOKEN)).await;
                (code == 200 && v["status"] == status).then_some(v)
            }
        },
    )
    .await
}

/// Sends a dead letter to the stack's dead-letter topic, with the headers
/// the orchestrator writes (`sagaflow_bus::dead_letter::headers`), for a
/// record of `source_topic` holding `key` and `value`.
pub async fn send_dead_letter(
    stack: &Stack,
    source_topic: &str,
    offset: i64,
    key: &str,
    value: &[u8],
    code: &str,
    reason: &str,
) {
    let original = OwnedMessage::new(
        Some(value.to_vec()),
        Some(key.as_bytes().to_vec()),
        source_topic.to_owned(),
        rdkafka::Timestamp::NotAvailable,
        0,
        offset,
        None,
    );
    let headers = sagaflow_bus::dead_letter::headers(&original, code, reason);
    stack
        .producer
        .send(
            FutureRecord::to(&stack.topic("sagaflow.dead-letter"))
                .key(key)
                .payload(value)
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}
