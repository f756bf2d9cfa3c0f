//! `sagaflow dev` non-interactively: the whole local stack in one process
//! runs a fixed number of sample sagas of all three worked types to their
//! end, and the demo services decide which complete and which compensate.

use std::time::Duration;

#[test]
fn dev_stack_runs_all_three_sagas_to_completion_and_compensation() {
    let data = tempfile::tempdir().unwrap();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let mut child = sagaflow_test_support::cli::command(&[])
        .args([
            "dev",
            "--sagas",
            "27",
            "--rate",
            "60",
            "--verify-after",
            "300ms",
            "--http",
            "127.0.0.1:0",
            "--root",
            root,
        ])
        .arg("--data-dir")
        .arg(data.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("sagaflow dev did not finish 27 sagas within 240 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = std::io::read_to_string(child.stdout.take().unwrap()).unwrap();
    assert!(status.success(), "exit {status}\n{out}");
    let summary = out
        .lines()
        .find(|l| l.starts_with("sagaflow dev: 27 sagas ended"))
        .unwrap_or_else(|| panic!("no summary line\n{out}"));
    assert!(summary.ends_with(" 0 failed"), "{out}");
    // Nine of each type (ids 1..=9). The demo services dictate: order o-8 is
    // out of stock; booking b-5 finds the hotel full; customer c-6 exceeds
    // the workspace quota (its SOAP billing account is closed again); c-3's
    // first SOAP OpenAccount is a server fault and the retry succeeds.
    for want in [
        "  order-checkout: 8 completed, 1 compensated, 0 failed",
        "  travel-booking: 8 completed, 1 compensated, 0 failed",
        "  customer-onboarding: 8 completed, 1 compensated, 0 failed",
    ] {
        assert!(out.lines().any(|l| l == want), "missing `{want}`\n{out}");
    }
    // The live view showed per-step latencies and the real API address.
    assert!(out.contains("step latency p50/p99 ms:"), "{out}");
    assert!(out.contains("orchestrator API  http://127.0.0.1:"), "{out}");
    assert!(!out.contains("127.0.0.1:0/"), "{out}");
}

#[test]
fn dev_outside_a_checkout_says_where_to_run_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = sagaflow_test_support::cli::command(&[])
        .args(["dev", "--sagas", "1", "--root"])
        .arg(dir.path())
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("has no topology/sagas") && err.contains("--root"),
        "{err}"
    );
}
