//! `sagaflow orchestrator --config` and `sagaflow adapter --config` error
//! paths as an operator meets them: a broken config file, a broken saga
//! definition, no broker at the configured address, an environment
//! override that does not fit. (Running sagas: tests/orchestrator_e2e.rs.)

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use sagaflow_test_support::cli::{self, stderr};
use sagaflow_test_support::free_port as dead_port;

/// Longest any of these may take: failing fast is part of the behaviour.
const WAIT: Duration = Duration::from_secs(90);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

async fn run(args: &[&str], envs: &[(&str, &str)]) -> (Output, Duration) {
    let started = Instant::now();
    let mut cmd = cli::tokio_command(args);
    cmd.kill_on_drop(true);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(WAIT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("sagaflow {args:?} still running after {WAIT:?}"))
        .unwrap();
    (out, started.elapsed())
}

fn orchestrator_yaml(dir: &Path, bootstrap: &str, sagas: &Path) -> PathBuf {
    let path = dir.join("orchestrator.yaml");
    std::fs::write(
        &path,
        format!(
            "kafka:\n  bootstrap-servers: \"{bootstrap}\"\n  properties:\n    socket.connection.setup.timeout.ms: \"2000\"\ncodec:\n  default-format: {{ format: json }}\nsagas:\n  dir: {}\n  services: {}\nhttp:\n  listen: 127.0.0.1:0\n",
            sagas.display(),
            root().join("topology/services.yaml").display()
        ),
    )
    .unwrap();
    path
}

#[tokio::test]
async fn orchestrator_config_errors_exit_2_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("orchestrator.yaml");
    std::fs::write(
        &path,
        "kafka:\n  bootstrap-servers: 127.0.0.1:9\ncodec: {}\nsagas: { dir: sagas, services: services.yaml }\npartitons: 4\n",
    )
    .unwrap();
    let (out, _) = run(&["orchestrator", "--config", path.to_str().unwrap()], &[]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("orchestrator.yaml:5:"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("partitons"), "{}", stderr(&out));

    // A missing file names itself.
    let missing = dir.path().join("nope.yaml");
    let (out, _) = run(
        &["orchestrator", "--config", missing.to_str().unwrap()],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("nope.yaml"), "{}", stderr(&out));

    // An override that does not fit is reported like a file value.
    let good = orchestrator_yaml(dir.path(), "127.0.0.1:9", &root().join("topology/sagas"));
    let (out, _) = run(
        &["orchestrator", "--config", good.to_str().unwrap()],
        &[("SAGAFLOW_PARTITIONS", "lots")],
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("partitions"), "{}", stderr(&out));
}

#[tokio::test]
async fn a_broken_saga_definition_stops_the_orchestrator_naming_the_place() {
    let dir = tempfile::tempdir().unwrap();
    let sagas = dir.path().join("sagas");
    std::fs::create_dir(&sagas).unwrap();
    let text = std::fs::read_to_string(root().join("topology/sagas/order-checkout.yaml")).unwrap();
    std::fs::write(
        sagas.join("order-checkout.yaml"),
        text.replacen("service: payment", "service: paymnt", 1),
    )
    .unwrap();
    let cfg = orchestrator_yaml(dir.path(), "127.0.0.1:9", &sagas);
    let (out, _) = run(&["orchestrator", "--config", cfg.to_str().unwrap()], &[]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("order-checkout.yaml:"), "{err}");
    assert!(err.contains("paymnt"), "{err}");
}

/// What deploy/k8s shipped before it deployed every service: a services
/// catalogue of four while the sagas call eleven. The orchestrator refuses
/// to start (before touching the broker) and names every missing service;
/// it cannot see whether adapters run, so "missing" means "no entry".
#[tokio::test]
async fn a_saga_calling_a_service_missing_from_the_catalogue_stops_the_orchestrator() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = orchestrator_yaml(dir.path(), "127.0.0.1:9", &root().join("topology/sagas"));
    let catalogue = dir.path().join("four-services.yaml");
    std::fs::write(
        &catalogue,
        "services:\n  - name: inventory\n  - name: fraud\n  - name: payment\n  - name: shipping\n",
    )
    .unwrap();
    let text = std::fs::read_to_string(&cfg).unwrap();
    let services = root().join("topology/services.yaml");
    std::fs::write(
        &cfg,
        text.replace(services.to_str().unwrap(), catalogue.to_str().unwrap()),
    )
    .unwrap();
    let (out, _) = run(&["orchestrator", "--config", cfg.to_str().unwrap()], &[]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("SF-ORCH-002") && err.contains("SF-DEF-004"),
        "{err}"
    );
    for missing in [
        "flights",
        "hotels",
        "cars",
        "notifications",
        "crm",
        "billing",
        "workspaces",
    ] {
        assert!(
            err.contains(&format!("`{missing}`")),
            "{missing} not named: {err}"
        );
    }
}

#[tokio::test]
async fn no_broker_reachable_exits_3_for_orchestrator_and_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let bootstrap = format!("127.0.0.1:{}", dead_port());
    let cfg = orchestrator_yaml(dir.path(), &bootstrap, &root().join("topology/sagas"));
    let (out, took) = run(&["orchestrator", "--config", cfg.to_str().unwrap()], &[]).await;
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&bootstrap) || stderr(&out).contains("broker"),
        "{}",
        stderr(&out)
    );
    eprintln!("orchestrator gave up after {took:?}");

    std::fs::write(
        dir.path().join("payments.yaml"),
        "service: payments\nbase-urls: [\"http://127.0.0.1:9\"]\noperations:\n  charge:\n    rest: { method: POST, path: /charges }\n",
    )
    .unwrap();
    let adapter = dir.path().join("adapter.yaml");
    std::fs::write(
        &adapter,
        format!(
            "kafka:\n  bootstrap-servers: \"{bootstrap}\"\ncodec:\n  default-format: {{ format: json }}\nservice: payments.yaml\nhttp: {{ listen: 127.0.0.1:0 }}\n"
        ),
    )
    .unwrap();
    let (out, took) = run(&["adapter", "--config", adapter.to_str().unwrap()], &[]).await;
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains(&bootstrap), "{}", stderr(&out));
    eprintln!("adapter gave up after {took:?}");
}
