//! `sagaflow topology validate|graph` on the checked-in topology and on
//! broken copies of it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn topology_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../topology")
}

fn sagaflow(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sagaflow"))
        .args(args)
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A copy of topology/ (services.yaml and sagas/) to break.
fn copy_topology() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("sagas")).unwrap();
    let from = topology_dir();
    std::fs::copy(from.join("services.yaml"), tmp.path().join("services.yaml")).unwrap();
    for entry in std::fs::read_dir(from.join("sagas")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(
            &path,
            tmp.path().join("sagas").join(path.file_name().unwrap()),
        )
        .unwrap();
    }
    tmp
}

#[test]
fn checked_in_topology_is_valid() {
    let dir = topology_dir();
    let out = sagaflow(&["topology", "validate", "--dir", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = stdout(&out);
    for saga in ["order-checkout", "travel-booking", "customer-onboarding"] {
        assert!(text.contains(&format!("ok {saga} version 1")), "{text}");
    }
    assert!(text.contains("3 saga definitions valid"), "{text}");
}

#[test]
fn every_problem_of_every_file_is_reported_with_its_place() {
    let tmp = copy_topology();
    let sagas = tmp.path().join("sagas");
    // An unknown service in one file, broken YAML in another.
    let order = sagas.join("order-checkout.yaml");
    let text = std::fs::read_to_string(&order).unwrap();
    std::fs::write(
        &order,
        text.replacen("service: payment", "service: paymnt", 1),
    )
    .unwrap();
    std::fs::write(
        sagas.join("broken.yaml"),
        "type: broken\nsteps: [\n  - call: x\n",
    )
    .unwrap();

    let out = sagaflow(&[
        "topology",
        "validate",
        "--dir",
        tmp.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = stdout(&out);
    let unknown = text
        .lines()
        .find(|l| l.contains("SF-DEF-004"))
        .unwrap_or_else(|| panic!("no unknown-service error in {text}"));
    let line = std::fs::read_to_string(&order)
        .unwrap()
        .lines()
        .position(|l| l.contains("paymnt"))
        .unwrap()
        + 1;
    assert!(
        unknown.contains(&format!("order-checkout.yaml:{line}:")),
        "{unknown} should point at line {line}"
    );
    assert!(unknown.contains("paymnt"), "{unknown}");
    assert!(
        text.lines()
            .any(|l| l.contains("broken.yaml:") && l.contains("SF-DEF-001")),
        "{text}"
    );
    assert!(stderr(&out).contains("2 problem(s)"), "{}", stderr(&out));
}

#[test]
fn broken_services_file_is_reported_and_sagas_still_parsed() {
    let tmp = copy_topology();
    std::fs::write(
        tmp.path().join("services.yaml"),
        "services:\n  - name: inventory\n  - name: inventory\n",
    )
    .unwrap();
    std::fs::write(tmp.path().join("sagas/broken.yaml"), "type: [\n").unwrap();
    let out = sagaflow(&[
        "topology",
        "validate",
        "--dir",
        tmp.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = stdout(&out);
    assert!(text.contains("services.yaml:3:"), "{text}");
    assert!(text.contains("broken.yaml:"), "{text}");
}

#[test]
fn missing_directory_is_a_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = sagaflow(&[
        "topology",
        "validate",
        "--dir",
        tmp.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(stderr(&out).contains("services.yaml"), "{}", stderr(&out));
}

#[test]
fn graph_draws_branches_awaits_emits_and_dashed_compensations() {
    let dir = topology_dir();
    let dir = dir.to_str().unwrap();
    let travel = sagaflow(&["topology", "graph", "travel-booking", "--dir", dir]);
    assert_eq!(travel.status.code(), Some(0), "{travel:?}");
    let text = stdout(&travel);
    assert!(text.contains("flowchart TD"), "{text}");
    for branch in ["flight", "hotel", "car"] {
        assert!(text.contains(&format!("-->|\"{branch}\"|")), "{text}");
    }
    // Each of the four compensable calls has a dashed edge to its undo.
    assert_eq!(text.matches("-.->|compensate|").count(), 4, "{text}");
    assert!(text.contains("notifications.send"), "{text}");

    let onboarding = sagaflow(&["topology", "graph", "customer-onboarding", "--dir", dir]);
    let text = stdout(&onboarding);
    assert!(text.contains("await email_verified"), "{text}");
    assert!(text.contains("-->|\"deadline\"| compensated"), "{text}");
    assert!(
        text.contains("emit announce<br/>CustomerOnboarded"),
        "{text}"
    );

    let order = sagaflow(&["topology", "graph", "order-checkout", "--dir", dir]);
    let text = stdout(&order);
    assert!(text.contains("reject fraud_rejected"), "{text}");
    assert!(
        text.contains("#quot;reject#quot;"),
        "quotes are escaped: {text}"
    );
}

#[test]
fn graph_of_an_unknown_saga_names_the_known_ones() {
    let dir = topology_dir();
    let out = sagaflow(&["topology", "graph", "nope", "--dir", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = stderr(&out);
    assert!(err.contains("unknown saga type `nope`"), "{err}");
    assert!(err.contains("order-checkout"), "{err}");
}
