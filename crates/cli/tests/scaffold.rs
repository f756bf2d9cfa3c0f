//! `sagaflow adapter scaffold` on real contracts, and a saga step's command
//! run through each generated adapter against a real backend:
//!
//! * the Swagger Petstore OpenAPI 3.0 document (tests/data), against the
//!   small petstore server of `sagaflow_test_support::petstore`;
//! * the demo billing service's WSDL, fetched from the running demo
//!   services (`GET /billing/soap?wsdl`), against those services.

use std::path::{Path, PathBuf};

use sagaflow_adapter::{AdapterCommand, AdapterMetrics, Executor, OutcomeKind};
use sagaflow_test_support::cli::{all_output as text, run as sagaflow};
use sagaflow_test_support::petstore::Petstore;
use serde_json::{Value, json};

fn petstore_doc() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/petstore-openapi3.yaml")
}

fn command(service: &str, operation: &str, saga: &str, input: Value) -> AdapterCommand {
    AdapterCommand {
        command_id: format!("scaffold:{saga}/{operation}/1"),
        saga_id: format!("scaffold:{saga}"),
        saga_type: "scaffold".into(),
        step: operation.into(),
        service: service.into(),
        operation: operation.into(),
        attempt: 1,
        input,
        timeout_ms: 10_000,
        traceparent: None,
        tracestate: None,
    }
}

fn executor(path: &Path) -> Executor {
    let cfg = sagaflow_adapter::load_file(path).unwrap();
    let metrics = AdapterMetrics::register(&prometheus::Registry::new()).unwrap();
    Executor::from_config(&cfg, metrics).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_petstore_document_scaffolds_an_adapter_that_runs() {
    let pets = Petstore::start().await;
    let url = pets.url();
    let tmp = tempfile::tempdir().unwrap();
    let services = tmp.path().join("services.yaml");
    std::fs::write(
        &services,
        "services:\n  - name: inventory\n    description: x\n",
    )
    .unwrap();
    let out = sagaflow(&[
        "adapter",
        "scaffold",
        "--openapi",
        petstore_doc().to_str().unwrap(),
        "--service",
        "petstore",
        "--base-url",
        &format!("{url}/api/v3"),
        "--out",
        tmp.path().to_str().unwrap(),
        "--services",
        services.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let path = tmp.path().join("petstore.service.yaml");
    let yaml = std::fs::read_to_string(&path).unwrap();
    eprintln!("{yaml}");
    // Operations from paths and methods, bodies from request schemas,
    // outcome rules from declared responses, auth from security schemes.
    for want in [
        "  add-pet:\n    rest:\n      method: POST\n      path: \"/pet\"\n      body:\n        \"name\": \"{{ input.name }}\"\n        \"photoUrls\": \"{{ input.photoUrls }}\"\n",
        "  get-pet-by-id:\n",
        "      path: \"/pet/{{ input.petId }}\"\n",
        "  find-pets-by-status:\n",
        "      query:\n        \"status\": \"{{ input.status }}\"\n",
        "        success: [200]\n        business-failure: [400, 404]\n",
        "        business-failure: [400, 422]\n",
        "      response:\n        \"name\": \"/name\"\n        \"photoUrls\": \"/photoUrls\"\n",
        "auth:\n  type: api-key\n  header: \"api_key\"\n  secret: { env: PETSTORE_API_KEY }\n",
        "security scheme `petstore_auth`: OAuth2 without a clientCredentials flow",
        "# optional, not sent: body `category` body `id` body `status` body `tags`",
    ] {
        assert!(yaml.contains(want), "missing {want:?} in\n{yaml}");
    }
    let listed = std::fs::read_to_string(&services).unwrap();
    assert!(listed.contains("  - name: petstore\n    description: \"Swagger Petstore - OpenAPI 3.0 (REST/JSON, scaffolded from petstore-openapi3.yaml)\"\n"), "{listed}");
    // Twice: the entry is not added again.
    let again = sagaflow(&[
        "adapter",
        "scaffold",
        "--openapi",
        petstore_doc().to_str().unwrap(),
        "--service",
        "petstore",
        "--base-url",
        &format!("{url}/api/v3"),
        "--out",
        tmp.path().to_str().unwrap(),
        "--services",
        services.to_str().unwrap(),
    ]);
    assert!(
        text(&again).contains("lists `petstore` already"),
        "{}",
        text(&again)
    );
    assert_eq!(std::fs::read_to_string(&services).unwrap(), listed);

    // The generated adapter runs: the secret comes from a file here (the
    // test cannot set its own environment), as an operator may choose.
    let secret = tmp.path().join("api-key");
    std::fs::write(&secret, "special-key").unwrap();
    std::fs::write(
        &path,
        yaml.replace(
            "{ env: PETSTORE_API_KEY }",
            &format!("{{ file: {} }}", secret.display()),
        ),
    )
    .unwrap();
    let exec = executor(&path);
    let added = exec
        .execute(&command(
            "petstore",
            "add-pet",
            "p-1",
            json!({"name": "Rex", "photoUrls": ["u"], "tags": "ignored"}),
        ))
        .await;
    assert_eq!(added.kind, OutcomeKind::Success, "{added:?}");
    assert_eq!(added.data, json!({"name": "Rex", "photoUrls": ["u"]}));
    let found = exec
        .execute(&command(
            "petstore",
            "get-pet-by-id",
            "p-1",
            json!({"petId": 1}),
        ))
        .await;
    assert_eq!(found.kind, OutcomeKind::Success, "{found:?}");
    let missing = exec
        .execute(&command(
            "petstore",
            "get-pet-by-id",
            "p-2",
            json!({"petId": 99}),
        ))
        .await;
    assert_eq!(missing.kind, OutcomeKind::BusinessFailure, "{missing:?}");
    assert_eq!(missing.error_code(), Some("http_404"));
    let seen = pets.seen();
    assert_eq!(
        seen[0].header("api_key").as_deref(),
        Some("special-key"),
        "{seen:?}"
    );
    assert_eq!(
        seen[0].header("idempotency-key").as_deref(),
        Some("scaffold:p-1/add-pet"),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .all(|s| s.header("api_key").as_deref() == Some("special-key")),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_wsdl_scaffolds_a_soap_adapter_that_runs() {
    let demo = sagaflow_demo::DemoServices::start().await.unwrap();
    let wsdl = reqwest::get(format!("{}/billing/soap?wsdl", demo.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("billing.wsdl");
    std::fs::write(&file, wsdl).unwrap();
    let out = sagaflow(&[
        "adapter",
        "scaffold",
        "--wsdl",
        file.to_str().unwrap(),
        "--service",
        "billing",
        "--out",
        tmp.path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("services.yaml entry:\n  - name: billing\n"),
        "{}",
        text(&out)
    );
    let path = tmp.path().join("billing.service.yaml");
    let yaml = std::fs::read_to_string(&path).unwrap();
    eprintln!("{yaml}");
    let base = format!("base-urls:\n  - \"{}\"\n", demo.url());
    for want in [
        base.as_str(),
        "  OpenAccount:\n    soap:\n      version: \"1.1\"\n      path: \"/billing/soap\"\n      action: \"urn:billing/OpenAccount\"\n",
        "          <t:CustomerId>{{ input.CustomerId }}</t:CustomerId>\n",
        "      response:\n        \"AccountId\": \"Body/OpenAccountResponse/AccountId\"\n",
        "  CloseAccount:\n",
    ] {
        assert!(yaml.contains(want), "missing {want:?} in\n{yaml}");
    }
    let exec = executor(&path);
    let input = json!({"CustomerId": "cust-1", "CrmAccount": "crm-cust-1", "Plan": "PRO"});
    let opened = exec
        .execute(&command("billing", "OpenAccount", "c-1", input))
        .await;
    assert_eq!(opened.kind, OutcomeKind::Success, "{opened:?}");
    assert_eq!(opened.data, json!({"AccountId": "b-cust-1"}));
    assert_eq!(demo.ledger().effects("billing", "OpenAccount", "cust-1"), 1);
    // A customer whose first OpenAccount is a soap:Server fault: retried.
    let input = json!({"CustomerId": "cust-3", "CrmAccount": "crm-cust-3", "Plan": "PRO"});
    let opened = exec
        .execute(&command("billing", "OpenAccount", "c-3", input))
        .await;
    assert_eq!(opened.kind, OutcomeKind::Success, "{opened:?}");
    let closed = exec
        .execute(&command(
            "billing",
            "CloseAccount",
            "c-1",
            json!({"AccountId": "b-cust-1"}),
        ))
        .await;
    assert_eq!(closed.kind, OutcomeKind::Success, "{closed:?}");
    assert_eq!(closed.data, json!({"Closed": "true"}));
}

#[test]
fn bad_contracts_are_usage_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("x.yaml");
    std::fs::write(&f, "swagger: \"2.0\"\n").unwrap();
    let out = sagaflow(&[
        "adapter",
        "scaffold",
        "--openapi",
        f.to_str().unwrap(),
        "--service",
        "x",
        "--out",
        tmp.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("not an OpenAPI 3"), "{}", text(&out));
    let out = sagaflow(&["adapter", "scaffold", "--service", "x"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = sagaflow(&[
        "adapter",
        "scaffold",
        "--openapi",
        petstore_doc().to_str().unwrap(),
        "--service",
        "../x",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}
