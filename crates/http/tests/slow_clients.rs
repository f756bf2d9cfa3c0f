//! Slow and hostile clients against a real server on loopback: each is cut
//! off within its timeout while a normal client keeps being served.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::routing::{get, post};
use sagaflow_http::{BearerToken, RawServerConfig, Server, ServerStats, render_json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Slack for a loaded machine on top of a timeout.
const SLACK: Duration = Duration::from_secs(5);

struct Running {
    addr: SocketAddr,
    stats: ServerStats,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the server stops within its grace")
            .unwrap()
            .unwrap();
    }
}

fn app() -> Router {
    Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route("/echo", post(|b: Bytes| async move { b }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                "done"
            }),
        )
}

async fn start(raw: RawServerConfig, router: Router) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::new(raw.validate().unwrap());
    let stats = server.stats();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(listener, router, async {
        let _ = stopped.await;
    }));
    Running {
        addr,
        stats,
        stop: Some(stop),
        task,
    }
}

/// One request on its own connection; returns status and body once the
/// server closed the connection (within 30 s, else the test fails).
async fn request(addr: SocketAddr, raw: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
        .await
        .expect("the server answered and closed the connection within 30 s")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

async fn hello(addr: SocketAddr) -> (u16, String) {
    request(
        addr,
        "GET /hello HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n",
    )
    .await
}

/// Waits until the server closes `s` (EOF or reset); returns what it sent.
async fn closed_by_server(s: &mut TcpStream, within: Duration) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the server did not close the connection within {within:?}"
    );
    String::from_utf8_lossy(&out).into_owned()
}

fn limits(header_ms: u64, body_ms: u64, idle_ms: u64, conns: usize) -> RawServerConfig {
    RawServerConfig {
        header_timeout: Duration::from_millis(header_ms),
        body_timeout: Duration::from_millis(body_ms),
        idle_timeout: Duration::from_millis(idle_ms),
        max_connections: conns,
        max_body_bytes: 1024,
        shutdown_grace: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn half_sent_requests_are_cut_at_the_header_timeout_while_others_are_served() {
    let server = start(limits(1000, 30_000, 30_000, 64), app()).await;
    let began = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(b"GET /hello HTTP/1.1\r\nhost: t\r\nx-half: ")
            .await
            .unwrap();
        slow.push(s);
    }
    assert_eq!(hello(server.addr).await, (200, "hello".into()));
    assert!(
        began.elapsed() < Duration::from_millis(1000),
        "the normal client did not wait for the slow ones"
    );
    for s in &mut slow {
        closed_by_server(s, Duration::from_secs(1) + SLACK).await;
    }
    assert!(
        began.elapsed() >= Duration::from_millis(1000),
        "cut by the timeout, not at once"
    );
    assert!(server.stats.timed_out_connections() >= 20);
    assert_eq!(hello(server.addr).await, (200, "hello".into()));
    server.stop().await;
}

#[tokio::test]
async fn a_trickled_body_gets_408_at_the_body_timeout() {
    let server = start(limits(30_000, 1000, 30_000, 64), app()).await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 500\r\n\r\n")
        .await
        .unwrap();
    let began = Instant::now();
    let trickle = async {
        for _ in 0..500 {
            if s.write_all(b"x").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut peek = [0u8; 1];
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(1), s.peek(&mut peek)).await
                && n > 0
            {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(1) + SLACK, trickle)
        .await
        .expect("the server answers within the body timeout");
    let answer = closed_by_server(&mut s, SLACK).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("SF-HTTP-408"), "{answer}");
    assert!(began.elapsed() >= Duration::from_millis(1000));
    assert_eq!(hello(server.addr).await, (200, "hello".into()));
    server.stop().await;
}

#[tokio::test]
async fn twice_the_connection_cap_of_silent_sockets_is_held_to_the_cap_and_freed() {
    let cap = 8;
    let server = start(limits(1000, 30_000, 30_000, cap), app()).await;
    let mut idle = Vec::new();
    for _ in 0..2 * cap {
        idle.push(TcpStream::connect(server.addr).await.unwrap());
    }
    let began = Instant::now();
    let watcher = {
        let stats = server.stats.clone();
        tokio::spawn(async move {
            let mut most = 0;
            let until = Instant::now() + Duration::from_secs(4);
            while Instant::now() < until {
                most = most.max(stats.open_connections());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            most
        })
    };
    // Behind 2x the cap of silent sockets, a normal client waits for at
    // most two rounds of the header timeout.
    assert_eq!(hello(server.addr).await, (200, "hello".into()));
    assert!(
        began.elapsed() < Duration::from_secs(2) + SLACK,
        "{:?}",
        began.elapsed()
    );
    for s in &mut idle {
        closed_by_server(s, Duration::from_secs(2) + SLACK).await;
    }
    let most = watcher.await.unwrap();
    assert!(most <= cap, "{most} connections open at once, cap {cap}");
    assert!(most >= cap / 2, "the cap was reached ({most})");
    assert!(server.stats.accepted_connections() >= (2 * cap) as u64);
    server.stop().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_at_the_idle_timeout() {
    let server = start(limits(30_000, 30_000, 1000, 64), app()).await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"GET /hello HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let began = Instant::now();
    closed_by_server(&mut s, Duration::from_secs(1) + SLACK).await;
    assert!(began.elapsed() >= Duration::from_millis(900));
    server.stop().await;
}

#[tokio::test]
async fn bodies_above_the_limit_get_413_declared_or_chunked() {
    let server = start(limits(30_000, 30_000, 30_000, 64), app()).await;
    let (status, body) = request(
        server.addr,
        "POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 5000\r\n\r\n",
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("SF-HTTP-413"), "{body}");
    let chunk = "x".repeat(800);
    let chunked = format!(
        "POST /echo HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n320\r\n{chunk}\r\n320\r\n{chunk}\r\n0\r\n\r\n"
    );
    let (status, body) = request(server.addr, &chunked).await;
    assert_eq!(status, 413, "{body}");
    let (status, body) = request(
        server.addr,
        "POST /echo HTTP/1.1\r\nhost: t\r\nconnection: close\r\ncontent-length: 5\r\n\r\nhello",
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "hello"));
    server.stop().await;
}

#[tokio::test]
async fn shutdown_lets_a_request_in_flight_finish() {
    let server = start(limits(30_000, 30_000, 30_000, 64), app()).await;
    let addr = server.addr;
    let in_flight = tokio::spawn(async move {
        request(
            addr,
            "GET /slow HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n",
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.stop().await;
    assert_eq!(in_flight.await.unwrap(), (200, "done".into()));
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no longer listening"
    );
}

#[tokio::test]
async fn bearer_token_is_required_and_never_echoed() {
    let token = BearerToken::new("t0ken-xyz").unwrap();
    let router = sagaflow_http::require_bearer(app(), token, render_json)
        .route("/healthz", get(|| async { "ok" }));
    let server = start(limits(30_000, 30_000, 30_000, 64), router).await;
    let (status, body) = hello(server.addr).await;
    assert_eq!(status, 401);
    assert!(body.contains("SF-HTTP-401"), "{body}");
    let (status, body) = request(
        server.addr,
        "GET /hello HTTP/1.1\r\nhost: t\r\nconnection: close\r\nauthorization: Bearer t0ken-xyZ\r\n\r\n",
    )
    .await;
    assert_eq!(status, 401);
    assert!(!body.contains("t0ken"), "{body}");
    let (status, body) = request(
        server.addr,
        "GET /hello HTTP/1.1\r\nhost: t\r\nconnection: close\r\nauthorization: Bearer t0ken-xyz\r\n\r\n",
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "hello"));
    let (status, _) = request(
        server.addr,
        "GET /healthz HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "routes added after the check stay open");
    server.stop().await;
}
