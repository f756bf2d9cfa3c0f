//! `sagaflow topology validate|graph` on the checked-in topology and on
//! broken copies of it.

use std::path::{Path, PathBuf};

use sagaflow_test_support::cli::{run as sagaflow, stderr, stdout};

fn topology_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../topology")
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
    assert!(
        text.contains("3 saga definitions valid, 0 lint warning(s)"),
        "{text}"
    );
}

#[test]
fn lint_warnings_have_codes_and_places_and_can_be_silenced() {
    let tmp = copy_topology();
    let order = tmp.path().join("sagas/order-checkout.yaml");
    let text = std::fs::read_to_string(&order).unwrap();
    let unsilenced = text.replace("            lint: { allow: [SF-DEF-W001] }\n", "");
    assert_ne!(
        text, unsilenced,
        "the shipped file silences W001 on purpose"
    );
    std::fs::write(&order, &unsilenced).unwrap();
    let out = sagaflow(&[
        "topology",
        "validate",
        "--dir",
        tmp.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "warnings do not fail: {out:?}");
    // The warning points at the step's own line and column in the file.
    let (line, column) = unsilenced
        .lines()
        .enumerate()
        .find_map(|(i, l)| {
            l.find("- call: fraud_check")
                .map(|c| (i + 1, c + "- ".len() + 1))
        })
        .expect("the shipped file has the fraud_check step");
    let text = stdout(&out);
    assert!(
        text.contains(&format!(
            "order-checkout.yaml:{line}:{column}: warning[SF-DEF-W001]: step `fraud_check`"
        )),
        "{text}"
    );
    assert!(text.contains("1 lint warning(s)"), "{text}");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_creates_the_declared_topics_with_prefix_and_is_idempotent() {
    use rdkafka::consumer::{BaseConsumer, Consumer};

    let bootstrap = sagaflow_test_support::bootstrap_servers();
    let prefix = format!("{}.", sagaflow_test_support::unique("apply"));
    let file = topology_dir().join("topics.yaml");
    let args = [
        "topology",
        "apply",
        "--bootstrap-servers",
        bootstrap,
        "--prefix",
        &prefix,
        "--file",
        file.to_str().unwrap(),
        "-X",
        "client.id=sagaflow-apply-test",
    ];
    let first = tokio::task::spawn_blocking({
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        move || sagaflow(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap();
    assert_eq!(first.status.code(), Some(0), "{first:?}");
    let text = stdout(&first);
    assert!(
        text.contains(&format!(
            "topic {prefix}sagaflow.saga-state partitions 6 replication 1 cleanup.policy=compact"
        )),
        "{text}"
    );
    let again = tokio::task::spawn_blocking({
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        move || sagaflow(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap();
    assert_eq!(
        again.status.code(),
        Some(0),
        "existing topics are fine: {again:?}"
    );

    let consumer: BaseConsumer = sagaflow_test_support::kafka()
        .client_config(sagaflow_bus::ClientRole::Consumer)
        .set("group.id", sagaflow_test_support::unique("apply-check"))
        .create()
        .unwrap();
    let metadata = tokio::task::spawn_blocking(move || {
        consumer
            .fetch_metadata(None, std::time::Duration::from_secs(10))
            .unwrap()
    })
    .await
    .unwrap();
    let partitions = |name: &str| {
        metadata
            .topics()
            .iter()
            .find(|t| t.name() == format!("{prefix}{name}"))
            .map(|t| t.partitions().len())
    };
    assert_eq!(partitions("sagaflow.saga-state"), Some(6));
    assert_eq!(partitions("sagaflow.dead-letter"), Some(1));
    assert_eq!(partitions("orders.events"), Some(6));
    assert_eq!(partitions("sagaflow.commands.billing"), Some(6));
}

#[test]
fn apply_with_a_bad_topics_file_names_the_file_and_sends_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("topics.yaml");
    std::fs::write(&file, "topics:\n  - name: bad name\n").unwrap();
    // The broker address is never used: the file is checked first.
    let out = sagaflow(&[
        "topology",
        "apply",
        "--bootstrap-servers",
        "127.0.0.1:1",
        "--file",
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = stderr(&out);
    assert!(
        err.contains("topics.yaml") && err.contains("bad name"),
        "{err}"
    );
}

#[test]
fn apply_without_a_reachable_broker_exits_3() {
    // Nothing listens on port 1; `-X` passes the short admin timeout through.
    let file = topology_dir().join("topics.yaml");
    let out = sagaflow(&[
        "topology",
        "apply",
        "--bootstrap-servers",
        "127.0.0.1:1",
        "--file",
        file.to_str().unwrap(),
        "-X",
        "socket.timeout.ms=2000",
    ]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        stderr(&out).contains("is the broker at 127.0.0.1:1 reachable?"),
        "{}",
        stderr(&out)
    );
}

/// `topology validate` on a copy whose order checkout has a saga
/// `deadline`; returns the stdout and the edited file's text.
fn validate_with_deadline(deadline: &str) -> (String, String) {
    let tmp = copy_topology();
    let order = tmp.path().join("sagas/order-checkout.yaml");
    let text = std::fs::read_to_string(&order).unwrap().replacen(
        "version: 1\n",
        &format!("version: 1\ndeadline: {deadline}\n"),
        1,
    );
    std::fs::write(&order, &text).unwrap();
    let out = sagaflow(&[
        "topology",
        "validate",
        "--dir",
        tmp.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "warnings do not fail: {out:?}");
    (stdout(&out), text)
}

/// `file:line:col` of a step in `text`.
fn step_place(text: &str, step: &str) -> String {
    let (line, column) = text
        .lines()
        .enumerate()
        .find_map(|(i, l)| l.find(step).map(|c| (i + 1, c + "- ".len() + 1)))
        .unwrap_or_else(|| panic!("no `{step}` in the file"));
    format!("order-checkout.yaml:{line}:{column}")
}

#[test]
fn lint_w003_a_step_timeout_longer_than_the_saga_deadline() {
    // charge_payment waits 30s for one reply; the whole saga may take 15s.
    let (out, text) = validate_with_deadline("15s");
    let place = step_place(&text, "- call: charge_payment");
    assert!(
        out.contains(&format!(
            "{place}: warning[SF-DEF-W003]: step `charge_payment` has a timeout of 30s, longer than the saga's deadline of 15s"
        )),
        "{out}"
    );
    // A deadline longer than every step: no W003.
    let (out, _) = validate_with_deadline("10m");
    assert!(!out.contains("SF-DEF-W003"), "{out}");
}

#[test]
fn lint_w004_a_retry_schedule_longer_than_the_saga_deadline() {
    // reserve_inventory: 3 attempts of 10s plus 200ms and 400ms backoff.
    let (out, text) = validate_with_deadline("15s");
    let place = step_place(&text, "- call: reserve_inventory");
    assert!(
        out.contains(&format!(
            "{place}: warning[SF-DEF-W004]: step `reserve_inventory` can retry for up to 30s 600ms"
        )),
        "{out}"
    );
    // Just long enough for its whole schedule: not reserve_inventory.
    let (out, _) = validate_with_deadline("31s");
    assert!(
        !out.contains("warning[SF-DEF-W004]: step `reserve_inventory`"),
        "{out}"
    );
    let (out, _) = validate_with_deadline("10m");
    assert!(!out.contains("SF-DEF-W004"), "{out}");
}
