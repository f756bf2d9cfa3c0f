//! `sagaflow demo-services` as a process of its own, and `sagaflow bench`'s
//! argument checks (the benchmark itself is run by hand: docs/orchestrator.md).

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test]
async fn demo_services_serve_rest_and_stop_on_sigterm() {
    let mut child = sagaflow_test_support::cli::tokio_command(&[])
        .args(["demo-services", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("demo-services prints its address")
        .unwrap()
        .unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .to_owned();
    let client = reqwest::Client::new();
    let reserve = |key: &'static str| {
        client
            .post(format!("{url}/inventory/reserve"))
            .header("idempotency-key", key)
            .json(&serde_json::json!({"order_id": "o-1"}))
            .send()
    };
    let first = reserve("k-1").await.unwrap();
    assert!(first.status().is_success(), "{}", first.status());
    let body: serde_json::Value = first.json().await.unwrap();
    let again: serde_json::Value = reserve("k-1").await.unwrap().json().await.unwrap();
    assert_eq!(body, again, "a repeated key gets the first answer");
    let no_key = client
        .post(format!("{url}/inventory/reserve"))
        .json(&serde_json::json!({"order_id": "o-2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(no_key.status().as_u16(), 400);

    let pid = child.id().unwrap();
    // Every sagaflow process runs without transparent huge pages (main.rs).
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    if let Some(thp) = status.lines().find(|l| l.starts_with("THP_enabled:")) {
        assert_eq!(thp.split_whitespace().nth(1), Some("0"), "{thp}");
    }
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("stops on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn demo_services_report_a_taken_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = sagaflow_test_support::cli::tokio_command(&[])
        .args(["demo-services", "--listen", &addr])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&addr));
}

#[tokio::test]
async fn bench_rejects_empty_loads_and_a_wrong_root() {
    let zero = sagaflow_test_support::cli::tokio_command(&[])
        .args(["bench", "--sagas", "0"])
        .output()
        .await
        .unwrap();
    assert_eq!(zero.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&zero.stderr).contains("--sagas"));
    let dir = tempfile::tempdir().unwrap();
    let root = sagaflow_test_support::cli::tokio_command(&[])
        .args(["bench", "--root", dir.path().to_str().unwrap()])
        .output()
        .await
        .unwrap();
    assert_eq!(root.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&root.stderr).contains("topology/sagas"),
        "{}",
        String::from_utf8_lossy(&root.stderr)
    );
}

/// A small but complete `sagaflow bench` run: every phase (broker baseline,
/// relay, throughput, offered load, metrics overhead, restore in a child
/// `sagaflow orchestrator`) runs and reports. Its figures are for
/// docs/orchestrator.md from release builds; here only that they exist and
/// every saga completed.
#[tokio::test]
async fn bench_runs_every_phase_and_reports_each_figure() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(600),
        sagaflow_test_support::cli::tokio_command(&[])
            .args([
                "bench",
                "--sagas",
                "60",
                "--rate",
                "20",
                "--seconds",
                "1",
                "--restore-sagas",
                "300",
                "--metrics-rounds",
                "1",
                "--root",
                root,
            ])
            .env("RUST_LOG", "warn")
            .output(),
    )
    .await
    .expect("bench finished within 10 minutes")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "baseline   broker: produce ",
        "baseline   relay ",
        "throughput 60 sagas in ",
        "60 completed, 0 other",
        "ratio sagas/s ÷ relay msg/s = ",
        "offered    20 sagas/s for 1s: achieved ",
        "metrics    5 endpoints scraped every 1 s",
        "in-flight sagas (300 written;",
    ] {
        assert!(stdout.contains(want), "missing `{want}`:\n{stdout}");
    }
}
