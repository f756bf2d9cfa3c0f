//! `sagaflow dev`'s modes besides the demo with traffic: the demo without
//! sample events (`--rate 0`), and `--broker-only`, whose addresses land in
//! a file a shell can source, under a data directory that defaults to the
//! user's state directory rather than the current one. (`--topology` with
//! adapters of one's own: tests/getting_started.rs at the workspace root
//! follows docs/getting-started.md.)

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use sagaflow_test_support::cli::clean_command;
use sagaflow_test_support::process::{ChildGuard, http_get, wait_until};

/// `export NAME=VALUE` lines of an env file.
fn exports(path: &Path) -> Option<HashMap<String, String>> {
    let text = std::fs::read_to_string(path).ok()?;
    let vars: HashMap<String, String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    (!vars.is_empty()).then_some(vars)
}

/// The body of `GET url` (plain HTTP on loopback).
#[test]
fn rate_zero_runs_the_demo_stack_without_publishing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let env_file = dir.path().join("dev.env");
    let mut cmd = clean_command(&[]);
    cmd.args([
        "dev",
        "--rate",
        "0",
        "--http",
        "127.0.0.1:0",
        "--root",
        root,
    ])
    .arg("--data-dir")
    .arg(dir.path().join("data"))
    .arg("--env-file")
    .arg(&env_file);
    let mut dev = ChildGuard::command("dev", cmd, dir.path().join("dev.log"));
    wait_until("the stack to start", Duration::from_secs(120), || {
        dev.output()
            .contains("no sample events (--rate 0)")
            .then_some(())
    });
    let vars = exports(&env_file).expect("the env file");
    // Long enough for several sagas at the old `--rate 0` (one a second),
    // and for the 2 s progress lines to show.
    std::thread::sleep(Duration::from_secs(6));
    let sagas = http_get(&format!("{}/v1/sagas", vars["SAGAFLOW_API_URL"]));
    let status = dev.terminate(Duration::from_secs(60));
    let out = dev.output();
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{out}");
    assert!(sagas.starts_with("HTTP/1.1 200"), "{sagas}");
    assert!(out.contains("started 0  ended 0"), "{out}");
    assert!(out.contains("sagaflow dev: 0 sagas ended"), "{out}");
    assert!(!out.contains("published"), "{out}");
    // The addresses are printed as the env file has them.
    for (k, v) in &vars {
        assert!(out.contains(&format!("    export {k}={v}")), "{k}\n{out}");
    }
}

#[test]
fn broker_only_serves_a_broker_and_a_registry_and_writes_their_addresses_under_the_state_dir() {
    let home = tempfile::tempdir().unwrap();
    let cwd = home.path().join("project");
    std::fs::create_dir(&cwd).unwrap();
    let mut cmd = clean_command(&[]);
    cmd.args(["dev", "--broker-only"])
        .env("HOME", home.path())
        .current_dir(&cwd);
    let mut dev = ChildGuard::command("dev", cmd, home.path().join("dev.log"));
    // The default data directory: ~/.local/state/sagaflow/dev/broker.
    let env_file = home.path().join(".local/state/sagaflow/dev/broker/dev.env");
    let vars = wait_until("the env file", Duration::from_secs(120), || {
        exports(&env_file)
    });
    wait_until("the stack to print it", Duration::from_secs(30), || {
        dev.output()
            .contains("broker and schema registry only")
            .then_some(())
    });
    assert_eq!(
        vars.keys()
            .map(String::as_str)
            .collect::<std::collections::BTreeSet<_>>(),
        ["SAGAFLOW_BOOTSTRAP_SERVERS", "SAGAFLOW_REGISTRY_URL"].into(),
        "no orchestrator, so no API address"
    );
    // A real registry and a real broker behind the addresses, reachable by
    // the CLI through the variables alone (as after `. dev.env`).
    let subjects = http_get(&format!("{}/subjects", vars["SAGAFLOW_REGISTRY_URL"]));
    assert!(
        subjects.starts_with("HTTP/1.1 200") && subjects.ends_with("[]"),
        "{subjects}"
    );
    let topics = home.path().join("topics.yaml");
    std::fs::write(
        &topics,
        "topics:\n  - name: shop.events\n    partitions: 2\n",
    )
    .unwrap();
    let apply = clean_command(&[])
        .args(["topology", "apply", "--file"])
        .arg(&topics)
        .envs(&vars)
        .output()
        .unwrap();
    assert!(apply.status.success(), "{apply:?}");
    let status = dev.terminate(Duration::from_secs(60));
    let out = dev.output();
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{out}");
    assert!(!out.contains("orchestrator API"), "{out}");
    // Nothing was written to the current directory.
    assert_eq!(std::fs::read_dir(&cwd).unwrap().count(), 0);
}

#[test]
fn a_topology_the_orchestrator_refuses_stops_dev_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let topology = dir.path().join("topology");
    std::fs::create_dir_all(topology.join("sagas")).unwrap();
    std::fs::write(
        topology.join("services.yaml"),
        "services:\n  - name: shop\n",
    )
    .unwrap();
    // A step naming a service that is not listed: SF-DEF-004.
    std::fs::write(
        topology.join("sagas/refund.yaml"),
        "type: refund\nversion: 1\ntrigger:\n  topic: returns.events\n  event-type: ReturnReceived\n  key: event.return_id\nsteps:\n  - call: refund\n    service: payments\n    operation: refund\n",
    )
    .unwrap();
    let out = clean_command(&[])
        .args(["dev", "--http", "127.0.0.1:0", "--topology"])
        .arg(&topology)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        err.contains("SF-DEF-004") && err.contains("payments"),
        "{err}"
    );
}

#[test]
fn sample_traffic_is_the_demos_and_a_topology_needs_its_files() {
    let dir = tempfile::tempdir().unwrap();
    // --rate publishes demo events: not with your own topology.
    let out = clean_command(&[])
        .args(["dev", "--rate", "5", "--topology"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--topology"),
        "{out:?}"
    );
    // A directory without services.yaml and sagas/ says what it needs.
    let out = clean_command(&[])
        .args(["dev", "--topology"])
        .arg(dir.path())
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no services.yaml there"), "{err}");
}
