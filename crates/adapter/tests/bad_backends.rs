//! Bad backend answers: every one must end in a clear reply (outcome kind,
//! error code, a message naming the operation and the problem), quickly,
//! without a crash or a hang. Real servers on 127.0.0.1 only: the axum
//! `Backend` from `common` for well-formed HTTP, raw tokio TCP listeners
//! for what no HTTP framework would send (hangs, resets, huge streams).
//!
//! Already covered elsewhere, not repeated here: invalid (non-XML) text on
//! a 2xx to a SOAP operation (`soap.rs`
//! `garbage_on_2xx_is_invalid_response_but_html_503_is_transient`) and an
//! XXE `file://` entity (`soap.rs` `xxe_response_is_rejected_and_nothing_is_read`);
//! the variants below (truncated envelope, XXE over http and to a file in
//! one document) are not.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Backend, Reply, cmd, executor};
use sagaflow_adapter::{AdapterCommand, AdapterOutcome, OutcomeKind};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LIMIT: u64 = 64 * 1024;

fn config(base: &str, request_timeout: &str) -> String {
    format!(
        r#"
service: payments
base-urls: ["{base}/api"]
retry:
  max-attempts: 3
  initial-backoff: 10ms
  max-backoff: 20ms
protection:
  request-timeout: {request_timeout}
  default-command-timeout: 10s
  max-response-bytes: {LIMIT}
operations:
  charge:
    rest:
      method: POST
      path: /charges
      body:
        amount: "{{{{ input.amount }}}}"
        reference: "{{{{ command.command_id }}}}"
      response:
        payment_id: /id
  open-account:
    soap:
      version: "1.1"
      path: /AccountService
      action: "urn:bank/OpenAccount"
      body: <b:OpenAccount xmlns:b="urn:bank"><b:Name>{{{{ input.name }}}}</b:Name></b:OpenAccount>
      response:
        account_id: Body/OpenAccountResponse/AccountId
"#
    )
}

fn charge(id: &str) -> AdapterCommand {
    cmd("charge", id, json!({"amount": 12.5}))
}

fn open(id: &str) -> AdapterCommand {
    cmd("open-account", id, json!({"name": "Ada"}))
}

/// Asserts kind and code, and that the message carries the stable error
/// code, names the operation and says what was wrong; returns the message.
fn assert_reply(
    out: &AdapterOutcome,
    kind: OutcomeKind,
    code: &str,
    sf: &str,
    operation: &str,
    problem: &str,
) -> String {
    assert_eq!(out.kind, kind, "{out:?}");
    assert_eq!(out.error_code(), Some(code), "{out:?}");
    let msg = out.error.as_ref().expect("an error").message.clone();
    assert!(msg.contains(sf), "{msg}");
    assert!(msg.contains(&format!("`{operation}`")), "{msg}");
    assert!(msg.contains(problem), "expected `{problem}` in: {msg}");
    msg
}

/// A raw TCP server: `serve(conn_no, stream)` runs for every accepted
/// connection. Counts connections; stops (with its connections) on drop.
struct RawServer {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawServer {
    async fn start<F, Fut>(serve: F) -> Self
    where
        F: Fn(usize, TcpStream) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    break;
                };
                let n = count.fetch_add(1, Ordering::SeqCst);
                conns.spawn(serve(n, stream));
            }
        });
        Self {
            addr,
            accepted,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// Reads the request head (up to the blank line), bounded to 64 KiB.
async fn read_head(stream: &mut TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 64 * 1024 {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[tokio::test]
async fn html_page_on_200_is_invalid_response_not_retried() {
    let backend = Backend::start(|_, _| {
        Reply::status(200)
            .header("content-type", "text/html; charset=utf-8")
            .body("<!DOCTYPE html>\n<html><head><title>Login</title></head><body><form action=\"/sso\"></form></body></html>")
    })
    .await;
    let (exec, _) = executor(&config(&backend.url(), "2s"));
    let out = exec.execute(&charge("o-1")).await;
    assert_reply(
        &out,
        OutcomeKind::TransientFailure,
        "invalid_response",
        "SF-ADAPTER-009",
        "charge",
        "not valid JSON",
    );
    assert_eq!(backend.total(), 1, "a garbage 2xx is not retried");
}

#[tokio::test]
async fn truncated_json_on_201_is_invalid_response() {
    let backend = Backend::start(|_, _| {
        Reply::status(201)
            .header("content-type", "application/json")
            .body(r#"{"id": "p-1", "status": {"code": "capt"#)
    })
    .await;
    let (exec, _) = executor(&config(&backend.url(), "2s"));
    let out = exec.execute(&charge("o-1")).await;
    assert_reply(
        &out,
        OutcomeKind::TransientFailure,
        "invalid_response",
        "SF-ADAPTER-009",
        "charge",
        "not valid JSON",
    );
    assert!(out.data.is_null() || out.data == json!({}), "{out:?}");
    assert_eq!(backend.total(), 1);
}

#[tokio::test]
async fn truncated_soap_envelope_is_invalid_response() {
    let backend = Backend::start(|_, _| {
        Reply::xml(
            200,
            r#"<?xml version="1.0"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><r:OpenAccountResponse xmlns:r="urn:bank"><r:AccountId>A-1</r:Acc"#,
        )
    })
    .await;
    let (exec, _) = executor(&config(&backend.url(), "2s"));
    let out = exec.execute(&open("c-1")).await;
    assert_reply(
        &out,
        OutcomeKind::TransientFailure,
        "invalid_response",
        "SF-ADAPTER-009",
        "open-account",
        "malformed XML",
    );
    assert_eq!(backend.total(), 1);
}

#[tokio::test]
async fn xxe_over_http_and_file_is_rejected_without_fetching() {
    let dir = std::env::temp_dir().join(format!("sf-bad-xxe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret_file = dir.join("secret.txt");
    std::fs::write(&secret_file, "LOCAL-FILE-XXE-MARKER").unwrap();
    // If the parser resolved external entities it would call this server.
    let leak = Backend::start(|_, _| Reply::status(200).body("HTTP-XXE-MARKER")).await;
    let doc = format!(
        r#"<?xml version="1.0"?>
<!DOCTYPE r [
  <!ENTITY file SYSTEM "file://{file}">
  <!ENTITY web SYSTEM "{leak}/steal">
  <!ENTITY % remote SYSTEM "{leak}/dtd">
  %remote;
]>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><r:OpenAccountResponse xmlns:r="urn:bank"><r:AccountId>&file;&web;</r:AccountId></r:OpenAccountResponse></soap:Body></soap:Envelope>"#,
        file = secret_file.display(),
        leak = leak.url(),
    );
    let backend = Backend::start(move |_, _| Reply::xml(200, &doc)).await;
    let (exec, _) = executor(&config(&backend.url(), "2s"));
    let out = exec.execute(&open("c-1")).await;
    std::fs::remove_dir_all(&dir).unwrap();
    assert_reply(
        &out,
        OutcomeKind::TransientFailure,
        "unsafe_xml",
        "SF-ADAPTER-014",
        "open-account",
        "DTD or entity declaration",
    );
    let everything = format!("{out:?}");
    assert!(
        !everything.contains("LOCAL-FILE-XXE-MARKER"),
        "{everything}"
    );
    assert!(!everything.contains("HTTP-XXE-MARKER"), "{everything}");
    assert_eq!(leak.total(), 0, "no external entity was fetched");
    assert_eq!(backend.total(), 1, "unsafe documents are not retried");
}

/// Serves a 50 MB body in 64 KiB writes, chunked or with a Content-Length;
/// records how many body bytes it managed to write before the client left.
async fn huge_server(content_length: bool) -> (RawServer, Arc<AtomicU64>) {
    const TOTAL: u64 = 50 * 1024 * 1024;
    let written = Arc::new(AtomicU64::new(0));
    let w = Arc::clone(&written);
    let server = RawServer::start(move |_, mut s| {
        let w = Arc::clone(&w);
        async move {
            read_head(&mut s).await;
            let head = if content_length {
                format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {TOTAL}\r\n\r\n")
            } else {
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n".to_owned()
            };
            if s.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let block = vec![b' '; 64 * 1024];
            let chunk_head = format!("{:x}\r\n", block.len());
            let mut sent = 0;
            while sent < TOTAL {
                let ok = if content_length {
                    s.write_all(&block).await.is_ok()
                } else {
                    s.write_all(chunk_head.as_bytes()).await.is_ok()
                        && s.write_all(&block).await.is_ok()
                        && s.write_all(b"\r\n").await.is_ok()
                };
                if !ok {
                    return;
                }
                sent += block.len() as u64;
                w.store(sent, Ordering::SeqCst);
            }
            let _ = s.write_all(b"0\r\n\r\n").await;
        }
    })
    .await;
    (server, written)
}

#[tokio::test]
async fn fifty_megabyte_bodies_are_cut_at_the_limit_quickly() {
    for content_length in [false, true] {
        let (server, written) = huge_server(content_length).await;
        let (exec, _) = executor(&config(&server.url(), "10s"));
        let started = Instant::now();
        let out = exec.execute(&charge("o-1")).await;
        let elapsed = started.elapsed();
        assert_reply(
            &out,
            OutcomeKind::TransientFailure,
            "response_too_large",
            "SF-ADAPTER-010",
            "charge",
            &format!("{LIMIT} bytes"),
        );
        assert!(
            elapsed < Duration::from_secs(3),
            "content-length {content_length}: {elapsed:?}"
        );
        // The adapter stopped reading: the server could not push the body
        // (only what fits in socket buffers got out), so it was never held
        // in memory.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut last = written.load(Ordering::SeqCst);
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = written.load(Ordering::SeqCst);
            if now == last || Instant::now() > deadline {
                break;
            }
            last = now;
        }
        assert!(
            last < 16 * 1024 * 1024,
            "content-length {content_length}: server wrote {last} bytes"
        );
        assert_eq!(server.accepted(), 1, "too large is not retried");
    }
}

#[tokio::test]
async fn silent_server_is_bounded_by_request_timeout_per_attempt() {
    // Accepts TCP, reads nothing, answers nothing, holds the socket.
    let server = RawServer::start(|_, s| async move {
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(s);
    })
    .await;
    let (exec, _) = executor(&config(&server.url(), "200ms"));
    let started = Instant::now();
    let out = exec.execute(&charge("o-1")).await;
    let elapsed = started.elapsed();
    assert_reply(
        &out,
        OutcomeKind::TransientFailure,
        "timeout",
        "SF-ADAPTER-008",
        "charge",
        "timed out after",
    );
    assert_eq!(server.accepted(), 3, "each of 3 attempts timed out");
    assert!(
        elapsed >= Duration::from_millis(550) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn silent_server_is_bounded_by_the_command_timeout() {
    let server = RawServer::start(|_, s| async move {
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(s);
    })
    .await;
    let (exec, _) = executor(&config(&server.url(), "30s"));
    let mut c = charge("o-1");
    c.timeout_ms = 400;
    let started = Instant::now();
    let out = exec.execute(&c).await;
    let elapsed = started.elapsed();
    assert_reply(
        &out,
        OutcomeKind::TransientFailure,
        "timeout",
        "SF-ADAPTER-008",
        "charge",
        "timed out after",
    );
    assert_eq!(server.accepted(), 1);
    assert!(
        elapsed >= Duration::from_millis(350) && elapsed < Duration::from_millis(2000),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn headers_then_silence_mid_body_is_bounded_by_request_timeout() {
    let server = RawServer::start(|_, mut s| async move {
        read_head(&mut s).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"id\": ")
            .await;
        tokio::time::sleep(Duration::from_secs(60)).await;
    })
    .await;
    let (exec, _) = executor(&config(&server.url(), "200ms"));
    let started = Instant::now();
    let out = exec.execute(&charge("o-1")).await;
    let elapsed = started.elapsed();
    assert_reply(
        &out,
        OutcomeKind::TransientFailure,
        "timeout",
        "SF-ADAPTER-008",
        "charge",
        "timed out after",
    );
    assert_eq!(server.accepted(), 3);
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
}

#[tokio::test]
async fn connection_reset_mid_body_is_a_transport_failure_and_retried() {
    let server = RawServer::start(|_, mut s| async move {
        read_head(&mut s).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"id\": \"p-1\", \"pad\": \"")
            .await;
        let _ = s.flush().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        // SO_LINGER 0: close sends RST instead of FIN.
        #[allow(deprecated)]
        s.set_linger(Some(Duration::ZERO)).unwrap();
        drop(s);
    })
    .await;
    let (exec, _) = executor(&config(&server.url(), "2s"));
    let started = Instant::now();
    let out = exec.execute(&charge("o-1")).await;
    let msg = assert_reply(
        &out,
        OutcomeKind::TransientFailure,
        "connect_error",
        "SF-ADAPTER-007",
        "charge",
        "cannot read response body",
    );
    assert!(!msg.contains("p-1"), "no partial body leaks: {msg}");
    assert_eq!(server.accepted(), 3, "transport errors are retried");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn early_eof_mid_body_is_a_transport_failure() {
    let server = RawServer::start(|_, mut s| async move {
        read_head(&mut s).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"id\": \"p-1\"")
            .await;
        let _ = s.shutdown().await;
    })
    .await;
    let (exec, _) = executor(&config(&server.url(), "2s"));
    let out = exec.execute(&charge("o-1")).await;
    assert_reply(
        &out,
        OutcomeKind::TransientFailure,
        "connect_error",
        "SF-ADAPTER-007",
        "charge",
        "cannot read response body",
    );
    assert_eq!(server.accepted(), 3);
}

/// `Retry-After: 10000000000000000000` used to overflow `Instant + Duration`
/// in the retry loop ("overflow when adding duration to instant") and panic
/// the task. Now the hint is clamped: the answer is a transient failure
/// within the command's deadline.
#[tokio::test]
async fn absurd_retry_after_and_timeout_are_clamped_not_a_panic() {
    for retry_after in [
        "10000000000000000000",
        "99999999999999999999999999",
        "Fri, 31 Dec 9999 23:59:59 GMT",
    ] {
        let backend =
            Backend::start(move |_, _| Reply::status(503).header("retry-after", retry_after)).await;
        let (exec, _) = executor(&config(&backend.url(), "2s"));
        let c = charge("o-retry-after");
        let started = Instant::now();
        let out = tokio::time::timeout(Duration::from_secs(30), exec.execute(&c))
            .await
            .expect("answers");
        assert_eq!(out.kind, OutcomeKind::TransientFailure, "{out:?}");
        assert_eq!(out.error_code(), Some("http_503"), "{out:?}");
        assert_eq!(
            backend.count("/api/charges"),
            1,
            "a retry-after past the deadline leaves no time to retry ({retry_after})"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(
            out.retry_after
                .is_some_and(|d| d <= Duration::from_secs(3600)),
            "{out:?}"
        );
    }
}
