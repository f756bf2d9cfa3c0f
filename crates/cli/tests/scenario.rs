//! `sagaflow test <SAGA_TYPE> --script FILE`: the checked-in scenarios pass,
//! and broken or failing scenarios say where and why, with the right exit code.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use sagaflow_test_support::cli::{run as sagaflow, stderr, stdout};

fn topology_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../topology")
}

/// Runs `sagaflow test` against the checked-in topology.
fn test(saga: &str, script: &Path, extra: &[&str]) -> Output {
    let dir = topology_dir();
    let mut args = vec![
        "test",
        saga,
        "--script",
        script.to_str().unwrap(),
        "--dir",
        dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    sagaflow(&args)
}

/// Writes `body` to a scenario file in a fresh temporary directory.
fn script(body: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("scenario.yaml");
    std::fs::write(&path, body).unwrap();
    (tmp, path)
}

/// The `saga:` line of a scenario file.
fn saga_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("saga: "))
        .unwrap_or_else(|| panic!("{} has no `saga:` line", path.display()))
        .trim()
        .to_string()
}

const SMALL_ORDER: &str = "trigger:
  payload:
    order_id: o-1
    customer_id: c-1
    total_cents: 1000
    currency: EUR
    items: []
    shipping_address: here
";

#[test]
fn every_checked_in_scenario_passes() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(topology_dir().join("scenarios"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut covered = std::collections::BTreeMap::<String, Vec<String>>::new();
    for file in &files {
        let saga = saga_of(file);
        let out = test(&saga, file, &[]);
        let text = stdout(&out);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {text}\n{}",
            file.display(),
            stderr(&out)
        );
        assert!(text.contains("matches its expectations"), "{text}");
        let status = text
            .lines()
            .find_map(|l| l.strip_prefix("status: "))
            .unwrap()
            .to_string();
        covered.entry(saga).or_default().push(status);
    }
    // Each worked saga has a happy path and a compensation path.
    for saga in ["order-checkout", "travel-booking", "customer-onboarding"] {
        let statuses = &covered[saga];
        assert!(
            statuses.iter().any(|s| s == "completed"),
            "{saga}: {statuses:?}"
        );
        assert!(
            statuses.iter().any(|s| s == "compensated"),
            "{saga}: {statuses:?}"
        );
    }
}

#[test]
fn the_path_is_printed_with_virtual_time_offsets() {
    let file = topology_dir().join("scenarios/order-checkout-payment-declined.yaml");
    let out = test("order-checkout", &file, &[]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    for want in [
        "+0ms       command inventory.reserve (attempt 1)",
        "+0ms       reply inventory.reserve ok",
        "+500ms     reply fraud.screen ok",
        "+1s500ms   reply payment.charge failed: card declined",
        "+1s500ms   compensate inventory.release (attempt 1)",
        "status: compensated",
    ] {
        assert!(lines.contains(&want), "missing `{want}` in\n{text}");
    }
    // The same as JSON.
    let out = test("order-checkout", &file, &["--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["status"], "compensated");
    assert_eq!(doc["ok"], true);
    assert_eq!(
        doc["trace"][1]["line"],
        "command inventory.reserve (attempt 1)"
    );
    assert_eq!(doc["trace"][1]["at_ms"], 0);
    let last = doc["trace"].as_array().unwrap().last().unwrap();
    assert_eq!(last["line"], "reply inventory.release ok");
    assert_eq!(last["at_ms"], 1500);
}

#[test]
fn a_wrong_expectation_exits_1_with_a_diff() {
    let (_tmp, file) = script(&format!(
        "{SMALL_ORDER}replies:
  inventory.reserve: {{ ok: {{ reservation_id: r-1 }} }}
  payment.charge: {{ fail: card declined }}
  inventory.release: {{ ok: {{}} }}
expect:
  status: completed
  path:
    - \"start order-checkout (OrderPlaced on orders.events, saga order-checkout:o-1)\"
    - \"command inventory.reserve (attempt 1)\"
    - \"reply inventory.reserve ok\"
    - \"choice screen_order: default\"
    - \"command payment.charge (attempt 1)\"
    - \"reply payment.charge ok\"
"
    ));
    let out = test("order-checkout", &file, &[]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = stdout(&out);
    assert!(
        text.contains("status: expected completed, got compensated"),
        "{text}"
    );
    assert!(
        text.contains("path differs (- expected, + actual):"),
        "{text}"
    );
    assert!(text.contains("\n  - reply payment.charge ok"), "{text}");
    assert!(
        text.contains("\n  + reply payment.charge failed: card declined"),
        "{text}"
    );
    assert!(
        text.contains("\n    command payment.charge (attempt 1)"),
        "{text}"
    );
    assert!(
        stderr(&out).contains("2 expectation(s) not met"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn broken_scenario_yaml_names_file_line_and_column() {
    let (_tmp, file) = script(&format!(
        "{SMALL_ORDER}replies:\n  inventory.reserve: {{ ok: [1, 2 }}\nexpect: {{ status: completed }}\n"
    ));
    let out = test("order-checkout", &file, &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = stderr(&out);
    let want = format!("{}:10:", file.display());
    assert!(err.contains(&want) && err.contains("invalid YAML"), "{err}");

    // Valid YAML, wrong shape: the unknown key is pointed at.
    let (_tmp, file) = script(&format!(
        "{SMALL_ORDER}replies:\n  inventory.reserve: {{ ok: {{}} }}\nexpect:\n  status: completed\n  staus: completed\n"
    ));
    let out = test("order-checkout", &file, &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = stderr(&out);
    let want = format!("{}:13:3: unknown field `staus`", file.display());
    assert!(err.contains(&want), "{err}");
}

#[test]
fn unknown_saga_type_exits_2_with_the_known_ones() {
    let (_tmp, file) = script(&format!("{SMALL_ORDER}expect: {{ status: completed }}\n"));
    let out = test("order-chekout", &file, &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = stderr(&out);
    assert!(err.contains("unknown saga type `order-chekout`"), "{err}");
    assert!(
        err.contains("customer-onboarding")
            && err.contains("order-checkout")
            && err.contains("travel-booking"),
        "{err}"
    );
}

#[test]
fn a_scenario_for_another_saga_exits_2() {
    let (_tmp, file) = script(&format!(
        "saga: travel-booking\n{SMALL_ORDER}expect: {{ status: completed }}\n"
    ));
    let out = test("order-checkout", &file, &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = stderr(&out);
    assert!(
        err.contains("the scenario is for saga `travel-booking`, not `order-checkout`"),
        "{err}"
    );
}

#[test]
fn a_reply_after_the_timeout_is_shown_as_ignored_and_json_reports_mismatches() {
    let (_tmp, file) = script(&format!(
        "{SMALL_ORDER}replies:
  inventory.reserve: {{ transient: busy, after: 12s }}
  inventory.release: {{ ok: {{}} }}
expect: {{ status: completed }}
"
    ));
    let out = test("order-checkout", &file, &["--output", "json"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["ok"], false);
    assert_eq!(doc["status"], "compensated");
    assert_eq!(
        doc["mismatches"][0],
        "status: expected completed, got compensated"
    );
    let late = doc["trace"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["at_ms"] == 12_000)
        .unwrap_or_else(|| panic!("no line at +12s: {doc}"));
    assert_eq!(
        late["line"],
        "reply inventory.reserve transient: busy (ignored: reply for attempt 1 of `reserve_inventory`, current attempt is 2)"
    );
}

/// An earlier attempt's success is the step's (every attempt carries one
/// idempotency key): a reservation that answers after its first attempt
/// timed out, while the second is on its way, completes the saga.
#[test]
fn a_success_after_the_timeout_of_an_earlier_attempt_counts() {
    let (_tmp, file) = script(&format!(
        "{SMALL_ORDER}replies:
  inventory.reserve: {{ ok: {{ reservation_id: r-1 }}, after: 12s }}
  payment.charge: {{ ok: {{ payment_id: p-1 }} }}
  shipping.schedule: {{ ok: {{ tracking_number: t-1 }} }}
expect: {{ status: completed }}
"
    ));
    let out = test("order-checkout", &file, &["--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["status"], "completed", "{doc}");
    let lines: Vec<&str> = doc["trace"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["line"].as_str())
        .collect();
    let first = lines
        .iter()
        .position(|l| *l == "reply inventory.reserve ok")
        .unwrap_or_else(|| panic!("no accepted reply: {lines:#?}"));
    assert!(
        lines[..first].contains(&"command inventory.reserve (attempt 2)"),
        "{lines:#?}"
    );
    assert!(lines.iter().all(|l| !l.contains("compensat")), "{lines:#?}");
}

#[test]
fn a_command_without_a_scripted_reply_exits_2_naming_it() {
    let (_tmp, file) = script(&format!(
        "{SMALL_ORDER}replies:\n  inventory.reserve: {{ ok: {{ reservation_id: r-1 }} }}\nexpect: {{ status: completed }}\n"
    ));
    let out = test("order-checkout", &file, &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = stderr(&out);
    assert!(err.contains(&file.display().to_string()), "{err}");
    assert!(
        err.contains("no reply scripted for `payment.charge`"),
        "{err}"
    );
    assert!(err.contains("no-reply"), "{err}");
}

#[test]
fn a_reply_for_an_operation_the_saga_never_calls_is_refused() {
    let (_tmp, file) = script(&format!(
        "{SMALL_ORDER}replies:\n  payment.charg: {{ ok: {{}} }}\nexpect: {{ status: completed }}\n"
    ));
    let out = test("order-checkout", &file, &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = stderr(&out);
    let want = format!(
        "{}:10:3: saga order-checkout never calls `payment.charg`",
        file.display()
    );
    assert!(err.contains(&want), "{err}");
}

#[test]
fn a_retry_sequence_runs_attempt_by_attempt() {
    let (_tmp, file) = script(&format!(
        "{SMALL_ORDER}replies:
  inventory.reserve:
    - {{ transient: busy }}
    - {{ transient: still busy }}
    - {{ ok: {{ reservation_id: r-1 }} }}
  payment.charge: {{ ok: {{ payment_id: p-1 }} }}
  shipping.schedule: {{ ok: {{ tracking_number: t-1 }} }}
expect:
  status: completed
  result: {{ order_id: o-1, payment_id: p-1, tracking_number: t-1 }}
"
    ));
    let out = test("order-checkout", &file, &[]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    let order: Vec<&str> = [
        "command inventory.reserve (attempt 1)",
        "reply inventory.reserve transient: busy",
        "backoff inventory.reserve",
        "command inventory.reserve (attempt 2)",
        "reply inventory.reserve transient: still busy",
        "command inventory.reserve (attempt 3)",
        "reply inventory.reserve ok",
        "command payment.charge (attempt 1)",
    ]
    .to_vec();
    let mut at = 0;
    for want in order {
        at += text[at..]
            .find(want)
            .unwrap_or_else(|| panic!("`{want}` not found in order in\n{text}"));
    }

    // The definition allows three attempts: a service that keeps failing
    // is not asked a fourth time; the step fails and the saga compensates.
    let (_tmp2, file) = script(&format!(
        "{SMALL_ORDER}replies:
  inventory.reserve: {{ transient: down }}
expect: {{ status: compensated }}
"
    ));
    let out = test("order-checkout", &file, &[]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    assert!(
        text.contains("command inventory.reserve (attempt 3)"),
        "{text}"
    );
    assert!(!text.contains("(attempt 4)"), "{text}");
    assert!(
        text.contains("step reserve_inventory failed: down (after 3 attempts)"),
        "{text}"
    );
}

#[test]
fn a_timeout_fires_on_the_virtual_clock_without_waiting() {
    let (_tmp, file) = script(&format!(
        "{SMALL_ORDER}replies:
  inventory.reserve: {{ ok: {{ reservation_id: r-1 }} }}
  payment.charge: no-reply
  inventory.release: {{ ok: {{}} }}
expect:
  status: compensated
"
    ));
    let started = Instant::now();
    let out = test("order-checkout", &file, &[]);
    let took = started.elapsed();
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    // The step's default retry policy retries timeouts: three attempts,
    // 30s each, then the reservation is released.
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines.contains(&"+30s       timeout payment.charge (attempt 1)"),
        "{text}"
    );
    assert!(
        text.contains("timeout payment.charge (attempt 3)"),
        "{text}"
    );
    assert!(
        text.contains("compensate inventory.release (attempt 1)"),
        "{text}"
    );
    assert!(text.contains("status: compensated"), "{text}");
    assert!(
        took < Duration::from_secs(20),
        "took {took:?}: the clock must be virtual"
    );
}
