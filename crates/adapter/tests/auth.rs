//! Authentication and secret hygiene against a real server.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Backend, Reply, cmd, executor};
use sagaflow_adapter::OutcomeKind;
use serde_json::json;

const SECRET: &str = "s3cr3t-Value-Never-Print";

fn secret_file(tag: &str, content: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sf-auth-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("secret");
    std::fs::write(&path, format!("{content}\n")).unwrap();
    path
}

fn config(base: &str, auth: &str) -> String {
    format!(
        r#"
service: crm
base-urls: ["{base}/v1"]
retry:
  max-attempts: 2
  initial-backoff: 10ms
  max-backoff: 20ms
auth:
{auth}
operations:
  get-customer:
    rest:
      method: GET
      path: /customers/{{{{ input.id }}}}
"#
    )
}

fn get(id: &str) -> sagaflow_adapter::AdapterCommand {
    cmd("get-customer", id, json!({"id": "c-1"}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_token_is_fetched_once_cached_and_refreshed_before_expiry() {
    let client_secret = secret_file("oauth", SECRET);
    let issued = Arc::new(AtomicUsize::new(0));
    let backend = Backend::start(move |_, seen| {
        if seen.path == "/oauth/token" {
            // Slow token endpoint: concurrent callers must share one fetch.
            let k = issued.fetch_add(1, Ordering::SeqCst) + 1;
            Reply::json(
                200,
                json!({"access_token": format!("tok-{k}"), "token_type": "Bearer", "expires_in": 3}),
            )
            .delay(Duration::from_millis(200))
        } else {
            Reply::json(200, json!({"ok": true}))
        }
    })
    .await;
    let auth = format!(
        "  type: oauth2-client-credentials\n  token-url: {}/oauth/token\n  client-id: sagaflow\n  client-secret: {{ file: {} }}\n  scope: crm.read\n  refresh-margin: 2s",
        backend.url(),
        client_secret.display()
    );
    let (exec, _) = executor(&config(&backend.url(), &auth));
    let exec = Arc::new(exec);
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let exec = Arc::clone(&exec);
            tokio::spawn(async move { exec.execute(&get(&format!("o-{i}"))).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().kind, OutcomeKind::Success);
    }
    assert_eq!(
        backend.count("/oauth/token"),
        1,
        "single-flight token fetch"
    );
    assert_eq!(backend.count("/v1/customers/c-1"), 6);

    let token_req = backend
        .seen()
        .into_iter()
        .find(|s| s.path == "/oauth/token")
        .unwrap();
    assert_eq!(token_req.method, "POST");
    let form = token_req.body_text();
    assert!(form.contains("grant_type=client_credentials"), "{form}");
    assert!(form.contains("scope=crm.read"), "{form}");
    let basic = token_req.header("authorization").unwrap();
    let expected = format!(
        "Basic {}",
        base64_encode(format!("sagaflow:{SECRET}").as_bytes())
    );
    assert_eq!(basic, expected);
    for s in backend.seen().iter().filter(|s| s.path.starts_with("/v1/")) {
        assert_eq!(s.header("authorization").as_deref(), Some("Bearer tok-1"));
    }

    // expires_in 3 s, margin 2 s: after ~1 s the token is refreshed, before it expires.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(exec.execute(&get("later")).await.kind, OutcomeKind::Success);
    assert_eq!(backend.count("/oauth/token"), 2, "refreshed before expiry");
    let last = backend
        .seen()
        .into_iter()
        .filter(|s| s.path.starts_with("/v1/"))
        .last()
        .unwrap();
    assert_eq!(
        last.header("authorization").as_deref(),
        Some("Bearer tok-2")
    );
    std::fs::remove_dir_all(client_secret.parent().unwrap()).unwrap();
}

#[tokio::test]
async fn oauth2_401_from_backend_drops_the_token_and_retries() {
    let client_secret = secret_file("oauth401", SECRET);
    let calls = Arc::new(AtomicUsize::new(0));
    let backend = Backend::start(move |_, seen| {
        if seen.path == "/oauth/token" {
            Reply::json(200, json!({"access_token": "tok", "expires_in": 3600}))
        } else if calls.fetch_add(1, Ordering::SeqCst) == 0 {
            Reply::status(401)
        } else {
            Reply::json(200, json!({}))
        }
    })
    .await;
    let auth = format!(
        "  type: oauth2-client-credentials\n  token-url: {}/oauth/token\n  client-id: sagaflow\n  client-secret: {{ file: {} }}",
        backend.url(),
        client_secret.display()
    );
    let (exec, _) = executor(&config(&backend.url(), &auth));
    let out = exec.execute(&get("o-1")).await;
    assert_eq!(out.kind, OutcomeKind::Success, "{out:?}");
    assert_eq!(
        backend.count("/oauth/token"),
        2,
        "token re-fetched after 401"
    );
    assert_eq!(backend.count("/v1/customers/c-1"), 2);
    std::fs::remove_dir_all(client_secret.parent().unwrap()).unwrap();
}

#[tokio::test]
async fn token_endpoint_failure_is_transient_and_does_not_leak() {
    let client_secret = secret_file("oauthfail", SECRET);
    let backend =
        Backend::start(|_, _| Reply::status(401).body(format!("bad secret {SECRET}"))).await;
    let auth = format!(
        "  type: oauth2-client-credentials\n  token-url: {}/oauth/token\n  client-id: sagaflow\n  client-secret: {{ file: {} }}",
        backend.url(),
        client_secret.display()
    );
    let (exec, _) = executor(&config(&backend.url(), &auth));
    let out = exec.execute(&get("o-1")).await;
    assert_eq!(out.kind, OutcomeKind::TransientFailure);
    assert_eq!(out.error_code(), Some("auth_failed"));
    assert!(!format!("{out:?}").contains(SECRET));
    assert_eq!(backend.count("/v1/customers/c-1"), 0);
    std::fs::remove_dir_all(client_secret.parent().unwrap()).unwrap();
}

#[tokio::test]
async fn api_key_header_from_env_basic_and_bearer_from_file() {
    let backend = Backend::start(|_, _| Reply::json(200, json!({}))).await;
    // Cargo sets CARGO_PKG_NAME for test processes; it stands in for a
    // secret environment variable (tests cannot set variables: no unsafe).
    let (exec, _) = executor(&config(
        &backend.url(),
        "  type: api-key\n  header: X-Api-Key\n  secret: { env: CARGO_PKG_NAME }",
    ));
    exec.execute(&get("a")).await;
    assert_eq!(
        backend.seen()[0].header("x-api-key").as_deref(),
        Some(env!("CARGO_PKG_NAME"))
    );

    let pw = secret_file("basic", SECRET);
    let (exec, _) = executor(&config(
        &backend.url(),
        &format!(
            "  type: basic\n  username: svc\n  password: {{ file: {} }}",
            pw.display()
        ),
    ));
    exec.execute(&get("b")).await;
    assert_eq!(
        backend.seen()[1].header("authorization"),
        Some(format!(
            "Basic {}",
            base64_encode(format!("svc:{SECRET}").as_bytes())
        ))
    );

    let (exec, _) = executor(&config(
        &backend.url(),
        &format!("  type: bearer\n  token: {{ file: {} }}", pw.display()),
    ));
    exec.execute(&get("c")).await;
    assert_eq!(
        backend.seen()[2].header("authorization"),
        Some(format!("Bearer {SECRET}"))
    );
    std::fs::remove_dir_all(pw.parent().unwrap()).unwrap();
}

#[tokio::test]
async fn secrets_never_appear_in_errors_debug_or_logs() {
    let (logs, _guard) = common::capture_logs();

    let key = secret_file("query", SECRET);
    // API key in the query string, backend port closed: the transport error
    // must not echo the URL (which holds the key).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let yaml = config(
        &closed,
        &format!(
            "  type: api-key\n  query: api_key\n  secret: {{ file: {} }}",
            key.display()
        ),
    );
    let cfg = sagaflow_adapter::config::parse_str(&yaml, "crm.yaml")
        .unwrap()
        .validate("crm.yaml")
        .unwrap();
    let handler = sagaflow_adapter::DeclarativeHandler::new(&cfg).unwrap();
    let (exec, _) = executor(&yaml);
    let out = exec.execute(&get("o-1")).await;
    assert_eq!(out.error_code(), Some("connect_error"));

    // And against a live backend answering 500 / 400.
    let backend = Backend::start(|n, _| Reply::status(if n == 0 { 500 } else { 400 })).await;
    let yaml_live = config(
        &backend.url(),
        &format!(
            "  type: api-key\n  query: api_key\n  secret: {{ file: {} }}",
            key.display()
        ),
    );
    let (exec_live, _) = executor(&yaml_live);
    let live = exec_live.execute(&get("o-2")).await;
    assert_eq!(live.kind, OutcomeKind::BusinessFailure);
    assert!(
        backend.seen()[0].query.as_deref().unwrap().contains(SECRET),
        "the key does reach the backend"
    );

    let everything = format!(
        "{out:?}\n{}\n{live:?}\n{cfg:?}\n{handler:?}\n{exec:?}\n{}",
        serde_json::to_string(&out).unwrap(),
        logs.text(),
    );
    assert!(
        everything.contains("backend call failed"),
        "logs were captured"
    );
    assert!(!everything.contains(SECRET), "secret leaked:\n{everything}");
    std::fs::remove_dir_all(key.parent().unwrap()).unwrap();
}

#[test]
fn missing_secret_fails_at_startup_naming_only_the_source() {
    let yaml = config(
        "http://127.0.0.1:9",
        "  type: bearer\n  token: { env: SF_ADAPTER_TEST_UNSET_TOKEN }",
    );
    let cfg = sagaflow_adapter::config::parse_str(&yaml, "crm.yaml")
        .unwrap()
        .validate("crm.yaml")
        .unwrap();
    let registry = prometheus::Registry::new();
    let metrics = sagaflow_adapter::AdapterMetrics::register(&registry).unwrap();
    let err = sagaflow_adapter::Executor::from_config(&cfg, metrics).unwrap_err();
    assert_eq!(err.code(), "SF-ADAPTER-004");
    assert!(err.to_string().contains("SF_ADAPTER_TEST_UNSET_TOKEN"));
}

fn base64_encode(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(T[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A token server answering `expires_in: 10000000000000000000` used to
/// overflow `Instant + Duration` and panic the task. The lifetime is clamped
/// (to 24 h): the call succeeds and the token is cached.
#[tokio::test]
async fn oauth2_absurd_expires_in_is_clamped_not_a_panic() {
    let client_secret = secret_file("oauthhuge", SECRET);
    let backend = Backend::start(move |_, seen| {
        if seen.path == "/oauth/token" {
            Reply::status(200)
                .header("content-type", "application/json")
                .body(r#"{"access_token":"tok","expires_in":10000000000000000000}"#)
        } else {
            Reply::json(200, json!({"ok": true}))
        }
    })
    .await;
    let auth = format!(
        "  type: oauth2-client-credentials\n  token-url: {}/oauth/token\n  client-id: sagaflow\n  client-secret: {{ file: {} }}",
        backend.url(),
        client_secret.display()
    );
    let (exec, _) = executor(&config(&backend.url(), &auth));
    for id in ["o-1", "o-2"] {
        let out = exec.execute(&get(id)).await;
        assert_eq!(out.kind, OutcomeKind::Success, "{out:?}");
    }
    assert_eq!(backend.count("/oauth/token"), 1, "the token is cached");
    std::fs::remove_dir_all(client_secret.parent().unwrap()).unwrap();
}

/// A token server streaming an endless body used to be read whole into
/// memory; it is cut at 64 KiB and reported as `auth_failed`.
#[tokio::test]
async fn oauth2_huge_token_response_is_refused_not_buffered() {
    let client_secret = secret_file("oauthbig", SECRET);
    let backend = Backend::start(move |_, seen| {
        if seen.path == "/oauth/token" {
            let token = "a".repeat(4 * 1024 * 1024);
            Reply::status(200)
                .header("content-type", "application/json")
                .body(format!(r#"{{"access_token":"{token}","expires_in":60}}"#))
                .chunked()
        } else {
            Reply::json(200, json!({"ok": true}))
        }
    })
    .await;
    let auth = format!(
        "  type: oauth2-client-credentials\n  token-url: {}/oauth/token\n  client-id: sagaflow\n  client-secret: {{ file: {} }}",
        backend.url(),
        client_secret.display()
    );
    let (exec, _) = executor(&config(&backend.url(), &auth));
    let out = exec.execute(&get("o-1")).await;
    assert_eq!(out.kind, OutcomeKind::TransientFailure, "{out:?}");
    assert_eq!(out.error_code(), Some("auth_failed"));
    let msg = out.error.unwrap().message;
    assert!(msg.contains("larger than 65536 bytes"), "{msg}");
    assert_eq!(backend.count("/v1/customers/c-1"), 0);
    std::fs::remove_dir_all(client_secret.parent().unwrap()).unwrap();
}
