//! `sagaflow dev` non-interactively: the whole local stack in one process
//! runs a fixed number of sample orders to their end.

use std::process::Command;
use std::time::Duration;

#[test]
fn dev_stack_runs_sample_orders_to_completion_and_compensation() {
    let data = tempfile::tempdir().unwrap();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sagaflow"))
        .args([
            "dev",
            "--orders",
            "27",
            "--rate",
            "100",
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
            panic!("sagaflow dev did not finish 27 orders within 240 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = std::io::read_to_string(child.stdout.take().unwrap()).unwrap();
    assert!(status.success(), "exit {status}\n{out}");
    let last = out.lines().last().unwrap_or_default();
    assert!(last.starts_with("sagaflow dev: 27 sagas ended"), "{out}");
    // Orders 9, 18, 27 are out of stock, 13 is declined, 20 rejected by fraud
    // screening: the demo services dictate compensations.
    assert!(
        last.contains("compensated") && !last.contains(" 0 compensated"),
        "{out}"
    );
    assert!(last.contains(" 0 failed"), "{out}");
}
