//! The `sagaflow` binary against a real registry on 127.0.0.1.

use std::path::{Path, PathBuf};
use std::process::Output;

use sagaflow_registry::{MemoryLog, Registry, ServeHandle};
use sagaflow_test_support::cli::{self, stdout};
use tokio::io::AsyncBufReadExt;

fn schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas")
}

async fn serve() -> ServeHandle {
    let registry = Registry::open(MemoryLog::new()).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    registry.serve(listener).unwrap()
}

async fn sagaflow(args: &[&str]) -> Output {
    cli::tokio_command(args)
        .env_remove("SAGAFLOW_REGISTRY_URL")
        .output()
        .await
        .unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_is_idempotent_and_check_passes_when_unchanged() {
    let handle = serve().await;
    let dir = schemas_dir();
    let args = [
        "schemas",
        "register",
        "--registry",
        &handle.url(),
        "--dir",
        dir.to_str().unwrap(),
    ];
    let first = sagaflow(&args).await;
    assert_eq!(first.status.code(), Some(0), "{first:?}");
    let out = stdout(&first);
    assert_eq!(registrations(&out).len(), 12, "{out}");
    assert!(out.contains("as sagaflow.replies-value"), "{out}");
    let second = sagaflow(&args).await;
    assert_eq!(stdout(&second), out, "registering again changes nothing");

    let check = sagaflow(&[
        "schemas",
        "check",
        "--registry",
        &handle.url(),
        "--dir",
        dir.to_str().unwrap(),
    ])
    .await;
    assert_eq!(check.status.code(), Some(0), "{check:?}");
    assert_eq!(
        stdout(&check).matches("unchanged ").count(),
        12,
        "{}",
        stdout(&check)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incompatible_change_fails_check_and_register_with_exit_1() {
    let handle = serve().await;
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&schemas_dir(), tmp.path());
    let dir = tmp.path().to_str().unwrap().to_string();
    let register = [
        "schemas",
        "register",
        "--registry",
        &handle.url(),
        "--dir",
        &dir,
    ];
    assert_eq!(sagaflow(&register).await.status.code(), Some(0));

    // Compatible change: a new optional field.
    let path = tmp.path().join("examples/orders/OrderPlaced.avsc");
    let original = std::fs::read_to_string(&path).unwrap();
    let compatible = original.replacen(
        r#""fields": ["#,
        r#""fields": [{"name": "coupon", "type": ["null", "string"], "default": null, "doc": "Coupon code."},"#,
        1,
    );
    std::fs::write(&path, &compatible).unwrap();
    let check = [
        "schemas",
        "check",
        "--registry",
        &handle.url(),
        "--dir",
        &dir,
    ];
    let ok = sagaflow(&check).await;
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
    assert!(
        stdout(&ok).contains("ok        examples/orders/OrderPlaced.avsc: compatible"),
        "{}",
        stdout(&ok)
    );

    // Incompatible change: a new field without a default.
    let incompatible = original.replacen(
        r#""fields": ["#,
        r#""fields": [{"name": "loyalty_points", "type": "long", "doc": "Points."},"#,
        1,
    );
    std::fs::write(&path, &incompatible).unwrap();
    let failed = sagaflow(&check).await;
    assert_eq!(failed.status.code(), Some(1), "{failed:?}");
    let out = stdout(&failed);
    assert!(
        out.contains("FAIL      examples/orders/OrderPlaced.avsc"),
        "{out}"
    );
    assert!(
        out.contains("field `loyalty_points` is missing on the writing side and has no default on the reading side: readers using the new schema cannot read data written with version 1"),
        "{out}"
    );
    let rejected = sagaflow(&register).await;
    assert_eq!(rejected.status.code(), Some(1), "{rejected:?}");
    assert!(
        stdout(&rejected).contains("REJECTED examples/orders/OrderPlaced.avsc"),
        "{}",
        stdout(&rejected)
    );
    assert!(
        stdout(&rejected).contains("(error 409)"),
        "{}",
        stdout(&rejected)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_for_unreachable_and_usage_errors() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let dir = schemas_dir();
    let unreachable = sagaflow(&[
        "schemas",
        "check",
        "--registry",
        &url,
        "--dir",
        dir.to_str().unwrap(),
    ])
    .await;
    assert_eq!(unreachable.status.code(), Some(3), "{unreachable:?}");
    let no_dir = sagaflow(&[
        "schemas",
        "register",
        "--registry",
        &url,
        "--dir",
        "/nonexistent/schemas",
    ])
    .await;
    assert_eq!(no_dir.status.code(), Some(2), "{no_dir:?}");
    let bad_url = sagaflow(&[
        "schemas",
        "register",
        "--registry",
        "localhost:8081",
        "--dir",
        dir.to_str().unwrap(),
    ])
    .await;
    assert_eq!(bad_url.status.code(), Some(2), "{bad_url:?}");
    assert_eq!(sagaflow(&["schemas", "check"]).await.status.code(), Some(2));
    assert_eq!(sagaflow(&["no-such-command"]).await.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subcommand_has_help() {
    // Every subcommand and its subcommands: `sagaflow --help`'s list is
    // compared with this one, so a new subcommand cannot go untested.
    // (The test kit's commands only in a build with their features.)
    let mut nested: Vec<(&str, &[&str])> = vec![
        ("schemas", &["register", "check"]),
        ("registry", &["serve"]),
        ("orchestrator", &[]),
        ("adapter", &[]),
        ("saga", &["list", "get", "retry", "abort"]),
        ("console", &["bench"]),
        ("dlq", &["list", "show", "redrive"]),
        ("publish", &[]),
        ("test", &[]),
        ("topology", &["validate", "graph", "apply"]),
        ("completions", &[]),
    ];
    if cfg!(feature = "dev") {
        nested.push(("dev", &[]));
    }
    if cfg!(feature = "bench") {
        nested.push(("bench", &[]));
    }
    if cfg!(feature = "demo") {
        nested.extend([("demo-services", &[][..]), ("demo-events", &[])]);
    }
    let top = stdout(&sagaflow(&["--help"]).await);
    let listed: Vec<&str> = top
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    let known: Vec<&str> = nested.iter().map(|(c, _)| *c).collect();
    let mut sorted_listed = listed.clone();
    sorted_listed.sort_unstable();
    let mut sorted_known = known.clone();
    sorted_known.sort_unstable();
    assert_eq!(sorted_listed, sorted_known, "{top}");
    let mut all: Vec<Vec<&str>> = vec![vec!["--help"]];
    for (command, subs) in &nested {
        all.push(vec![command, "--help"]);
        for sub in *subs {
            all.push(vec![command, sub, "--help"]);
        }
    }
    for args in all {
        let output = sagaflow(&args).await;
        assert_eq!(output.status.code(), Some(0), "{args:?}");
        assert!(stdout(&output).contains("Usage: sagaflow"), "{args:?}");
    }
    assert!(top.contains("Exit codes: 0 ok, 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_prints_a_script_for_each_shell() {
    for (shell, marker) in [
        ("bash", "complete -F _sagaflow"),
        ("zsh", "#compdef sagaflow"),
        ("fish", "complete -c sagaflow"),
    ] {
        let output = sagaflow(&["completions", shell]).await;
        assert_eq!(output.status.code(), Some(0), "{shell}");
        let script = stdout(&output);
        assert!(
            script.contains(marker),
            "{shell}: no `{marker}` in\n{script}"
        );
        // Subcommands and their options are completed.
        assert!(
            script.contains("orchestrator") && script.contains("config"),
            "{shell}"
        );
    }
    let output = sagaflow(&["completions", "tcsh"]).await;
    assert_eq!(
        output.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

async fn start_binary_registry(data_dir: &Path) -> (tokio::process::Child, String) {
    let mut child = sagaflow_test_support::cli::tokio_command(&[])
        .args([
            "registry",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data_dir.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(std::time::Duration::from_secs(20), lines.next_line())
        .await
        .expect("registry started in time")
        .unwrap()
        .expect("a first line");
    let url = line.rsplit(' ').next().unwrap().to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{line}");
    (child, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_serve_keeps_ids_across_restarts() {
    let data = tempfile::tempdir().unwrap();
    let dir = schemas_dir();
    let (mut child, url) = start_binary_registry(data.path()).await;
    let first = sagaflow(&[
        "schemas",
        "register",
        "--registry",
        &url,
        "--dir",
        dir.to_str().unwrap(),
    ])
    .await;
    assert_eq!(first.status.code(), Some(0), "{first:?}");
    child.kill().await.unwrap();

    let (mut child, url) = start_binary_registry(data.path()).await;
    let check = sagaflow(&[
        "schemas",
        "check",
        "--registry",
        &url,
        "--dir",
        dir.to_str().unwrap(),
    ])
    .await;
    assert_eq!(
        stdout(&check).matches("unchanged ").count(),
        12,
        "{}",
        stdout(&check)
    );
    let again = sagaflow(&[
        "schemas",
        "register",
        "--registry",
        &url,
        "--dir",
        dir.to_str().unwrap(),
    ])
    .await;
    assert_eq!(
        registrations(&stdout(&again)),
        registrations(&stdout(&first)),
        "same ids after restart"
    );
    child.kill().await.unwrap();
}

/// The `registered … (id N)` lines.
fn registrations(out: &str) -> Vec<&str> {
    out.lines()
        .filter(|l| l.starts_with("registered "))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_credentials_are_sent_and_refusal_is_exit_2() {
    let registry = Registry::open(MemoryLog::new()).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let auth = sagaflow_registry::Auth::Basic {
        username: "ci".into(),
        password: "pw".into(),
    };
    let handle = registry.serve_with_auth(listener, Some(auth)).unwrap();
    let dir = schemas_dir();
    let base = [
        "schemas",
        "register",
        "--registry",
        &handle.url(),
        "--dir",
        dir.to_str().unwrap(),
    ];
    let with = |extra: &[&'static str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        args
    };
    let ok = sagaflow(&with(&[
        "--registry-username",
        "ci",
        "--registry-password",
        "pw",
    ]))
    .await;
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
    let wrong = sagaflow(&with(&[
        "--registry-username",
        "ci",
        "--registry-password",
        "no",
    ]))
    .await;
    assert_eq!(wrong.status.code(), Some(2), "{wrong:?}");
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("refused the credentials"));
    assert_eq!(sagaflow(&with(&[])).await.status.code(), Some(2));
}
