//! `sagaflow saga list|get|retry|abort` against the orchestrator of a real
//! `sagaflow dev` stack (broker, registry, orchestrator, adapters, demo
//! services), and their error paths.

use std::process::Output;
use std::time::Duration;

use sagaflow_test_support::cli::{self, stderr, stdout};
use sagaflow_test_support::process::{ChildGuard, wait_until};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(120);

fn saga(args: &[&str]) -> Output {
    cli::output(
        cli::command(&["saga"])
            .args(args)
            .env_remove("SAGAFLOW_API_URL")
            .env_remove("SAGAFLOW_API_TOKEN"),
    )
}

fn json(o: &Output) -> Value {
    assert!(o.status.success(), "{}\n{}", stdout(o), stderr(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(o)))
}

#[test]
fn saga_commands_list_show_and_abort_sagas_of_a_running_stack() {
    let data = tempfile::tempdir().unwrap();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let mut cmd = sagaflow_test_support::cli::command(&[]);
    // Customers never verify their e-mail within the test: their onboarding
    // sagas stay running (awaiting EmailVerified), ready to be aborted.
    cmd.args([
        "dev",
        "--rate",
        "6",
        "--verify-after",
        "1h",
        "--http",
        "127.0.0.1:0",
        "--root",
        root,
    ])
    .arg("--data-dir")
    .arg(data.path())
    .env("RUST_LOG", "warn");
    let mut dev = ChildGuard::command("dev", cmd, data.path().join("dev.log"));
    let api = wait_until("the dev stack's API address", WAIT, || {
        dev.output().lines().find_map(|l| {
            l.trim()
                .strip_prefix("orchestrator API  ")
                .and_then(|rest| rest.split("/v1/").next())
                .map(str::to_owned)
        })
    });

    // Wait for a completed order and a customer awaiting verification.
    let listing = |status: &str, saga_type: &str| {
        json(&saga(&[
            "list", "--api", &api, "--status", status, "--type", saga_type, "-o", "json",
        ]))["sagas"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let completed = wait_until("a completed order-checkout saga", WAIT, || {
        listing("completed", "order-checkout").into_iter().next()
    });
    let order = completed["saga_id"].as_str().unwrap().to_owned();
    let waiting = wait_until("an onboarding saga awaiting EmailVerified", WAIT, || {
        listing("running", "customer-onboarding")
            .into_iter()
            .find(|s| s["current_step"] == "email_verified")
    });
    let customer = waiting["saga_id"].as_str().unwrap().to_owned();

    // list: a table with a header and one row per saga.
    let table = saga(&["list", "--api", &api, "--type", "order-checkout"]);
    assert!(table.status.success(), "{}", stderr(&table));
    let text = stdout(&table);
    assert!(text.starts_with("SAGA ID"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with(&order) && l.contains("completed")),
        "{text}"
    );

    // get: details and history, as a table and as JSON.
    let shown = saga(&["get", "--api", &api, &order]);
    let text = stdout(&shown);
    assert!(shown.status.success(), "{}", stderr(&shown));
    assert!(text.contains("status       completed"), "{text}");
    assert!(
        text.contains("history:") && text.contains("STEP_SUCCEEDED"),
        "{text}"
    );
    let doc = json(&saga(&["get", "--api", &api, &order, "--output", "json"]));
    assert_eq!(doc["saga_id"], order.as_str());
    assert_eq!(doc["result"]["status"], "COMPLETED");

    // retry applies to failed sagas only; abort to running ones only.
    let retry = saga(&["retry", "--api", &api, &order]);
    assert_eq!(retry.status.code(), Some(1), "{}", stderr(&retry));
    assert!(
        stderr(&retry).contains("only a failed saga can be retried"),
        "{}",
        stderr(&retry)
    );
    let abort_done = saga(&["abort", "--api", &api, &order]);
    assert_eq!(abort_done.status.code(), Some(1), "{}", stderr(&abort_done));

    // abort a running saga: it compensates what it did (billing over SOAP,
    // CRM), and the reason is in its history.
    let aborted = saga(&["abort", "--api", &api, &customer, "--reason", "test abort"]);
    assert!(aborted.status.success(), "{}", stderr(&aborted));
    assert!(
        stdout(&aborted).contains("abort of"),
        "{}",
        stdout(&aborted)
    );
    let ended = wait_until("the aborted saga to compensate", WAIT, || {
        let doc = json(&saga(&["get", "--api", &api, &customer, "-o", "json"]));
        (doc["status"] == "compensated").then_some(doc)
    });
    let history = ended["history"].to_string();
    assert!(history.contains("test abort"), "{history}");
    assert!(history.contains("open_billing_account"), "{history}");

    // An unknown saga: exit 2 and the API's message.
    let unknown = saga(&["get", "--api", &api, "order-checkout:nope"]);
    assert_eq!(unknown.status.code(), Some(2), "{}", stderr(&unknown));
    assert!(
        stderr(&unknown).contains("no saga `order-checkout:nope` is known"),
        "{}",
        stderr(&unknown)
    );

    // Ctrl-C (SIGINT/SIGTERM) stops the whole stack cleanly.
    let status = dev.terminate(Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "dev did not stop cleanly: {status:?}\n{}",
        dev.output()
    );
}

#[test]
fn saga_commands_say_when_no_orchestrator_is_reachable() {
    // A port nothing listens on: bind, read it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let api = format!("http://127.0.0.1:{port}");
    for args in [
        vec!["list", "--api", &api],
        vec!["get", "--api", &api, "x:1"],
        vec!["abort", "--api", &api, "x:1"],
    ] {
        let out = saga(&args);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("cannot reach the orchestrator API")
                && stderr(&out).contains("sagaflow dev"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    let bad = saga(&["list", "--api", "127.0.0.1:8080"]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    assert!(stderr(&bad).contains("not an http:// or https:// URL"));
}
