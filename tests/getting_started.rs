//! docs/getting-started.md, followed step by step: every file the guide
//! shows (```` ```lang file=PATH ```` blocks) is written as shown, every
//! command (```` ```sh run ```` blocks, and the ```` ```sh background ````
//! `sagaflow dev`) is run with bash as shown, in order, and each
//! ```` ```text output ```` block's lines must appear in the output of the
//! command before it. A REST server of this test stands in for the shop's
//! API; the only change to the guide's files is its address in place of
//! `http://127.0.0.1:9000`, and `SAGAFLOW_DEV_HTTP` moves the API off
//! 127.0.0.1:8080 so parallel runs do not collide. The saga must complete,
//! the API must have seen both calls, and the registry must hold one
//! subject for the event.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::HeaderMap;
use axum::routing::post;
use sagaflow_test_support::process::{ChildGuard, http_get, sagaflow_bin, wait_until};
use serde_json::{Value, json};

const GUIDE: &str = "docs/getting-started.md";
const SHOP_URL_IN_GUIDE: &str = "http://127.0.0.1:9000";

#[derive(Debug)]
enum Block {
    File { path: String, text: String },
    Run { script: String, retry: bool },
    Background { script: String },
    Output { lines: Vec<String> },
    Other { info: String, text: String },
}

/// The fenced blocks of the guide, in order.
fn blocks(markdown: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut lines = markdown.lines();
    while let Some(line) = lines.next() {
        let Some(info) = line.strip_prefix("```") else {
            continue;
        };
        let info = info.trim().to_owned();
        let mut text = String::new();
        for l in lines.by_ref() {
            if l == "```" {
                break;
            }
            text.push_str(l);
            text.push('\n');
        }
        let words: Vec<&str> = info.split_whitespace().collect();
        let has = |w: &str| words.contains(&w);
        let block = if let Some(path) = words.iter().find_map(|w| w.strip_prefix("file=")) {
            Block::File {
                path: path.to_owned(),
                text,
            }
        } else if words.first() == Some(&"sh") && has("run") {
            Block::Run {
                script: text,
                retry: has("retry"),
            }
        } else if words.first() == Some(&"sh") && has("background") {
            Block::Background { script: text }
        } else if words.first() == Some(&"text") && has("output") {
            Block::Output {
                lines: text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect(),
            }
        } else {
            Block::Other { info, text }
        };
        out.push(block);
    }
    out
}

/// What the shop's API saw: (method, path, Idempotency-Key, body).
type Calls = Arc<Mutex<Vec<(String, String, Option<String>, Value)>>>;

fn record(calls: &Calls, path: String, headers: &HeaderMap, body: &[u8]) {
    calls.lock().unwrap().push((
        "POST".into(),
        path,
        headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        serde_json::from_slice(body).unwrap_or(Value::Null),
    ));
}

/// The stand-in for the shop's REST API of the guide.
async fn shop(calls: Calls) -> std::net::SocketAddr {
    async fn restock(
        State(calls): State<Calls>,
        UrlPath(id): UrlPath<String>,
        headers: HeaderMap,
        body: axum::body::Bytes,
    ) -> axum::Json<Value> {
        record(&calls, format!("/returns/{id}/restock"), &headers, &body);
        axum::Json(json!({"restock_id": format!("st-{id}")}))
    }
    async fn unrestock(
        State(calls): State<Calls>,
        UrlPath(id): UrlPath<String>,
        headers: HeaderMap,
        body: axum::body::Bytes,
    ) -> axum::Json<Value> {
        record(&calls, format!("/returns/{id}/unrestock"), &headers, &body);
        axum::Json(json!({}))
    }
    async fn refund(
        State(calls): State<Calls>,
        headers: HeaderMap,
        body: axum::body::Bytes,
    ) -> axum::Json<Value> {
        record(&calls, "/refunds".into(), &headers, &body);
        let n = calls.lock().unwrap().len();
        axum::Json(json!({"refund_id": format!("rf-{n}")}))
    }
    let app = Router::new()
        .route("/returns/{id}/restock", post(restock))
        .route("/returns/{id}/unrestock", post(unrestock))
        .route("/refunds", post(refund))
        .with_state(calls);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// bash running `script` as a reader of the guide would, in `work`.
fn bash(script: &str, work: &Path, home: &Path, tmp: &Path) -> Command {
    let bin_dir = sagaflow_bin().parent().unwrap().to_owned();
    let mut cmd = Command::new("bash");
    cmd.arg("-euo").arg("pipefail").arg("-c").arg(script);
    cmd.current_dir(work);
    for (k, _) in std::env::vars() {
        if k.starts_with("SAGAFLOW_") {
            cmd.env_remove(k);
        }
    }
    let path = std::env::var("PATH").unwrap_or_default();
    cmd.env("PATH", format!("{}:{path}", bin_dir.display()))
        .env("HOME", home)
        .env("TMPDIR", tmp)
        .env_remove("XDG_STATE_HOME")
        .env("SAGAFLOW_DEV_HTTP", "127.0.0.1:0");
    cmd
}

#[test]
fn the_getting_started_guide_runs_as_written_and_its_saga_completes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let guide = std::fs::read_to_string(root.join(GUIDE)).unwrap();
    let blocks = blocks(&guide);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let calls = Calls::default();
    let shop_addr = runtime.block_on(shop(calls.clone()));

    let dir = tempfile::tempdir().unwrap();
    let (work, home, tmp) = (
        dir.path().join("shop"),
        dir.path().join("home"),
        dir.path().join("tmp"),
    );
    for d in [&work, &home, &tmp] {
        std::fs::create_dir_all(d).unwrap();
    }

    // The files, as shown; the layout block lists exactly them.
    let files: BTreeSet<String> = blocks
        .iter()
        .filter_map(|b| match b {
            Block::File { path, .. } => Some(path.clone()),
            _ => None,
        })
        .collect();
    let layout = blocks
        .iter()
        .find_map(|b| match b {
            Block::Other { info, text } if info.is_empty() => Some(text),
            _ => None,
        })
        .expect("the guide shows the project's layout");
    let listed: BTreeSet<String> = layout.lines().map(str::to_owned).collect();
    assert_eq!(listed, files, "the layout block and the files shown differ");
    assert_eq!(
        guide.matches(SHOP_URL_IN_GUIDE).count(),
        3,
        "the shop's URL: in the adapter file and twice in the text"
    );
    for b in &blocks {
        if let Block::File { path, text } = b {
            let text = text.replace(SHOP_URL_IN_GUIDE, &format!("http://{shop_addr}"));
            let path = work.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        if let Block::Other { info, .. } = b {
            assert!(
                !info.starts_with("sh"),
                "a shell block that is neither `run` nor `background`: the test would not run it"
            );
        }
    }

    // The commands, in order.
    let env_file = tmp.join("sagaflow-shop.env");
    let mut dev: Option<ChildGuard> = None;
    let mut ran = 0;
    for (i, b) in blocks.iter().enumerate() {
        let expected: Vec<String> = match blocks.get(i + 1) {
            Some(Block::Output { lines }) => lines.clone(),
            _ => Vec::new(),
        };
        match b {
            Block::Run { script, retry } => {
                let deadline = Instant::now() + Duration::from_secs(if *retry { 120 } else { 0 });
                loop {
                    let out = bash(script, &work, &home, &tmp).output().unwrap();
                    let output = format!(
                        "{}{}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    );
                    let missing: Vec<&String> = expected
                        .iter()
                        .filter(|l| !output.lines().any(|o| o.contains(l.as_str())))
                        .collect();
                    if out.status.success() && missing.is_empty() {
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "guide block failed ({}):\n{script}\nmissing output {missing:?}\n{output}\ndev:\n{}",
                        out.status,
                        dev.as_ref().map(ChildGuard::output).unwrap_or_default()
                    );
                    std::thread::sleep(Duration::from_millis(500));
                }
                ran += 1;
            }
            Block::Background { script } => {
                assert!(dev.is_none(), "one background command");
                let guard = ChildGuard::command(
                    "sagaflow dev",
                    bash(script, &work, &home, &tmp),
                    dir.path().join("dev.log"),
                );
                wait_until("sagaflow dev to be ready", Duration::from_secs(180), || {
                    let out = guard.output();
                    assert!(!out.contains("error:"), "{out}");
                    (out.contains("Ctrl-C stops everything") && env_file.exists()).then_some(())
                });
                dev = Some(guard);
                ran += 1;
            }
            _ => {}
        }
    }
    assert!(ran >= 5, "only {ran} commands ran: {blocks:?}");

    // The shop's API saw the restock, then the refund, each with its key.
    let seen = calls.lock().unwrap().clone();
    let paths: Vec<&str> = seen.iter().map(|c| c.1.as_str()).collect();
    assert_eq!(paths, ["/returns/r-1001/restock", "/refunds"], "{seen:?}");
    assert_eq!(seen[0].3, json!({"sku": "SKU-7"}));
    assert_eq!(
        seen[1].3,
        json!({"return_id": "r-1001", "amount_cents": 1999})
    );
    assert!(seen.iter().all(|c| c.2.is_some()), "{seen:?}");

    // One subject for the event: the producer's, not a second one.
    let vars = std::fs::read_to_string(&env_file).unwrap();
    let registry = vars
        .lines()
        .find_map(|l| l.strip_prefix("export SAGAFLOW_REGISTRY_URL="))
        .unwrap();
    let subjects = http_get(&format!("{registry}/subjects"));
    assert!(subjects.contains("\"returns.events-value\""), "{subjects}");
    assert!(
        !subjects.contains("com.example.returns.ReturnReceived"),
        "{subjects}"
    );

    // Ctrl-C: dev stops and sums up.
    let mut dev = dev.expect("the guide runs sagaflow dev");
    let status = dev.terminate(Duration::from_secs(60));
    let out = dev.output();
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{out}");
    assert!(
        out.contains("  return-refund: 1 completed, 0 compensated, 0 failed"),
        "{out}"
    );
}
