//! The registry server against slow and oversized clients and without its
//! token, over real HTTP on 127.0.0.1.

use std::time::{Duration, Instant};

use sagaflow_registry::{Auth, MemoryLog, Registry, ServeHandle};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn serve(auth: Option<Auth>) -> ServeHandle {
    let registry = Registry::open(MemoryLog::new()).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let limits = sagaflow_http::RawServerConfig {
        header_timeout: Duration::from_secs(1),
        max_body_bytes: 4096,
        ..sagaflow_http::RawServerConfig::default()
    }
    .validate()
    .unwrap();
    registry.serve_with(listener, auth, limits).unwrap()
}

#[tokio::test]
async fn slow_clients_are_cut_off_while_others_are_served() {
    let handle = serve(None).await;
    let began = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect(handle.local_addr()).await.unwrap();
        s.write_all(b"POST /subjects/x/versions HTTP/1.1\r\nhost: r\r\n")
            .await
            .unwrap();
        slow.push(s);
    }
    let subjects = reqwest::get(format!("{}/subjects", handle.url()))
        .await
        .unwrap();
    assert_eq!(subjects.status(), 200);
    assert!(began.elapsed() < Duration::from_secs(1), "served meanwhile");
    for s in &mut slow {
        let mut buf = [0u8; 64];
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "a half-sent request was still held");
    }
    assert!(began.elapsed() >= Duration::from_secs(1));
    handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_oversized_schema_body_gets_413_in_confluent_shape() {
    let handle = serve(None).await;
    let big =
        json!({"schema": format!("{{\"type\":\"string\",\"doc\":\"{}\"}}", "x".repeat(10_000))});
    let r = reqwest::Client::new()
        .post(format!("{}/subjects/x/versions", handle.url()))
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error_code"], 413, "{body}");
    assert!(body["message"].as_str().unwrap().contains("4096"), "{body}");
    handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_bearer_token_is_required_when_configured() {
    let handle = serve(Some(Auth::Bearer {
        token: "reg-t0ken".into(),
    }))
    .await;
    let client = reqwest::Client::new();
    let url = format!("{}/subjects", handle.url());
    let r = client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let text = client
        .get(&url)
        .bearer_auth("reg-t0keN")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!text.contains("reg-t0ken"), "{text}");
    let r = client
        .get(&url)
        .bearer_auth("reg-t0ken")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    handle.shutdown().await.unwrap();
}
