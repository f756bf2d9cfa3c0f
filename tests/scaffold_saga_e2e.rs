//! A saga through each scaffolded adapter (issue #18): `sagaflow adapter
//! scaffold` (the real binary) writes the adapter definition and the
//! services.yaml entry from a contract, exactly as a user runs it; a small
//! saga commands the scaffolded service; `sagaflow orchestrator` and
//! `sagaflow adapter` run as processes on the embedded broker (the stack of
//! tests/common); the trigger is an Avro event as an existing system
//! publishes it; the backend counts what it saw.
//!
//! * The Swagger Petstore OpenAPI 3.0 document (crates/cli/tests/data),
//!   against the petstore of `sagaflow_test_support::petstore`: add a pet,
//!   read it back by the id the store gave it, look up its companion; a
//!   companion the store does not have is a declared 404, a business
//!   failure, and the new pet is deleted again (`delete-pet`).
//! * The demo billing service's WSDL, fetched from the running demo
//!   services (`GET /billing/soap?wsdl`): open a new account, close the old
//!   one; the demo's `soap:Server` fault is retried by the adapter, its
//!   `soap:Client` fault is a business failure and the new account is
//!   closed again.
//!
//! The only edits to the generated files are the ones docs/adapters.md
//! tells a user to make, and the test checks that it does.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sagaflow_codec::messages::{SagaResult, SagaStatus};
use sagaflow_demo::DemoServices;
use sagaflow_test_support::cli::{all_output, run as sagaflow};
use sagaflow_test_support::petstore::{self, Petstore};
use serde_json::{Value, json};

use common::Stack;

const WAIT: Duration = Duration::from_secs(45);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The user's project next to the stack's files: a services.yaml to which
/// the scaffold adds its entry, and a sagas directory; the orchestrator is
/// pointed at both.
fn project(stack: &Stack, saga_file: &str, saga: &str) -> PathBuf {
    let services = stack.path("services.yaml");
    std::fs::write(
        &services,
        "# Services that saga steps may call.\nservices:\n",
    )
    .unwrap();
    let sagas = stack.path("sagas");
    std::fs::create_dir_all(&sagas).unwrap();
    std::fs::write(sagas.join(saga_file), saga).unwrap();
    let cfg = std::fs::read_to_string(stack.path("orchestrator.yaml")).unwrap();
    let ours = cfg
        .replace(
            &repo().join("topology/sagas").display().to_string(),
            &sagas.display().to_string(),
        )
        .replace(
            &repo().join("topology/services.yaml").display().to_string(),
            &services.display().to_string(),
        );
    assert_eq!(
        ours.matches(stack.dir.path().to_str().unwrap()).count(),
        2,
        "the orchestrator reads our sagas and services:\n{ours}"
    );
    std::fs::write(stack.path("orchestrator.yaml"), ours).unwrap();
    services
}

/// `sagaflow adapter scaffold <args> --service <service> --out <stack dir>
/// --services <services>`; returns the generated definition.
fn scaffold(stack: &Stack, services: &Path, service: &str, args: &[&str]) -> String {
    let dir = stack.dir.path().to_str().unwrap();
    let mut all = vec!["adapter", "scaffold"];
    all.extend_from_slice(args);
    all.extend_from_slice(&[
        "--service",
        service,
        "--out",
        dir,
        "--services",
        services.to_str().unwrap(),
    ]);
    let out = sagaflow(&all);
    assert!(out.status.success(), "{}", all_output(&out));
    assert!(
        all_output(&out).contains(&format!("added `{service}` to")),
        "{}",
        all_output(&out)
    );
    let listed = std::fs::read_to_string(services).unwrap();
    assert!(
        listed.contains(&format!("  - name: {service}\n    description: ")),
        "{listed}"
    );
    std::fs::read_to_string(stack.path(&format!("{service}.service.yaml"))).unwrap()
}

/// Starts the generated adapter as a `sagaflow adapter` process, with the
/// stack's Kafka, topics and codec settings.
fn start_adapter(stack: &mut Stack, service: &str) {
    let base = std::fs::read_to_string(stack.path("inventory.adapter.yaml")).unwrap();
    let cfg = base.replace("inventory", service);
    assert!(cfg.contains(&format!("service: {service}.service.yaml\n")));
    std::fs::write(stack.path(&format!("{service}.adapter.yaml")), cfg).unwrap();
    stack.start_adapter(service);
}

/// Publishes `event` as Avro (Confluent wire format, record-name subject)
/// to `topic`, keyed `key`.
async fn publish(stack: &Stack, topic: &str, schema: &str, key: &str, event: Value) {
    let parsed = sagaflow_codec::apache_avro::Schema::parse_str(schema).unwrap();
    let full_name = match &parsed {
        sagaflow_codec::apache_avro::Schema::Record(r) => r.name.fullname(None),
        other => panic!("not a record schema: {other:?}"),
    };
    let value = sagaflow_codec::json::json_to_avro(&event, &parsed)
        .unwrap_or_else(|e| panic!("{event} does not match its schema: {e}"));
    let topic = stack.topic(topic);
    let bytes = stack
        .codec
        .encode_avro_value(&topic, &full_name, schema, value)
        .await
        .unwrap();
    stack.send_raw(&topic, key, &bytes).await;
}

/// Waits for the result of `saga_id` and checks it ended `status` (the
/// stack's logs on a mismatch).
async fn ended(
    stack: &Stack,
    reader: &rdkafka::consumer::StreamConsumer,
    results: &mut BTreeMap<String, SagaResult>,
    saga_id: &str,
    status: SagaStatus,
) -> SagaResult {
    let mut copies = 0;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !results.contains_key(saga_id) && tokio::time::Instant::now() < deadline {
        let n = results.len() + 1;
        stack
            .collect_results(reader, results, &mut copies, n, Duration::from_secs(1))
            .await;
    }
    let result = results
        .get(saga_id)
        .cloned()
        .unwrap_or_else(|| panic!("{saga_id} has no result\n{}", stack.logs()));
    assert_eq!(result.status, status, "{result:?}\n{}", stack.logs());
    result
}

const PET_ARRIVED: &str = r#"{
  "type": "record", "name": "PetArrived", "namespace": "com.example.pets",
  "fields": [
    {"name": "ref", "type": "string"},
    {"name": "name", "type": "string"},
    {"name": "photo_url", "type": "string"},
    {"name": "companion_id", "type": "long"}
  ]
}"#;

const PET_INTAKE: &str = r#"# A pet arrives at the shop: add it to the petstore, read it back by the
# id the store gave it, and look up the companion it arrived with. Without
# that companion in the store, the new pet is taken out again.
type: pet-intake
version: 1
trigger:
  topic: pets.events
  event-type: PetArrived
  key: event.ref
steps:
  - call: add_pet
    service: petstore
    operation: add-pet
    input:
      name: "{{ event.name }}"
      photoUrls: ["{{ event.photo_url }}"]
    bind: pet
    compensate:
      operation: delete-pet
      input:
        petId: "{{ steps.pet.id }}"
  - call: read_back
    service: petstore
    operation: get-pet-by-id
    input:
      petId: "{{ steps.pet.id }}"
    bind: stored
    # A read: nothing to undo.
    lint: { allow: [SF-DEF-W001] }
  - call: find_companion
    service: petstore
    operation: get-pet-by-id
    input:
      petId: "{{ event.companion_id }}"
    bind: companion
result:
  id: "{{ steps.pet.id }}"
  name: "{{ steps.stored.name }}"
  companion: "{{ steps.companion.name }}"
"#;

/// The block of operation `op` in a generated definition: its name line
/// and the more deeply indented lines after it.
fn operation_block<'a>(yaml: &'a str, op: &str) -> &'a str {
    let head = format!("\n  {op}:\n");
    let start = yaml
        .find(&head)
        .unwrap_or_else(|| panic!("no operation {op} in\n{yaml}"))
        + 1;
    let mut end = start + head.len() - 1;
    for line in yaml[end..].split_inclusive('\n') {
        if !line.starts_with("    ") {
            break;
        }
        end += line.len();
    }
    &yaml[start..end]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_saga_runs_through_the_adapter_scaffolded_from_the_petstore_openapi_document() {
    let store = Petstore::start().await;
    let mut stack = Stack::start("scaffold-pet", 1).await;
    let services = project(&stack, "pet-intake.yaml", PET_INTAKE);
    let doc = repo().join("crates/cli/tests/data/petstore-openapi3.yaml");
    let yaml = scaffold(
        &stack,
        &services,
        "petstore",
        &[
            "--openapi",
            doc.to_str().unwrap(),
            "--base-url",
            &store.api_url(),
        ],
    );
    // What the saga relies on, as generated.
    let add = operation_block(&yaml, "add-pet");
    let get = operation_block(&yaml, "get-pet-by-id");
    let delete = operation_block(&yaml, "delete-pet");
    for (block, want) in [
        (add, "        \"photoUrls\": \"{{ input.photoUrls }}\"\n"),
        (add, "        # \"id\": \"/id\"\n"),
        (get, "      path: \"/pet/{{ input.petId }}\"\n"),
        (get, "        business-failure: [400, 404]\n"),
        (get, "        \"name\": \"/name\"\n"),
        (delete, "      method: DELETE\n"),
        (delete, "      path: \"/pet/{{ input.petId }}\"\n"),
    ] {
        assert!(block.contains(want), "missing {want:?} in\n{block}");
    }
    assert!(
        yaml.contains(
            "  type: api-key\n  header: \"api_key\"\n  secret: { env: PETSTORE_API_KEY }\n"
        ),
        "{yaml}"
    );
    // The one edit a user makes, as docs/adapters.md says: the saga reads
    // the new pet's `id`, which the Pet schema does not require, so the
    // scaffold offers it commented out under `add-pet`'s `response:`.
    let docs = std::fs::read_to_string(repo().join("docs/adapters.md")).unwrap();
    let docs = docs.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        docs.contains("uncomment those a saga reads"),
        "docs/adapters.md tells users to uncomment the optional response fields a saga reads"
    );
    let edited_add = add.replacen(
        "        # \"id\": \"/id\"\n",
        "        \"id\": \"/id\"\n",
        1,
    );
    std::fs::write(
        stack.path("petstore.service.yaml"),
        yaml.replacen(add, &edited_add, 1),
    )
    .unwrap();
    // The secret: the environment variable the generated `auth` names.
    assert!(
        docs.contains("the secret is an environment variable `<SERVICE>_API_KEY`"),
        "docs/adapters.md names the secret's environment variable"
    );
    stack
        .env
        .push(("PETSTORE_API_KEY".into(), petstore::API_KEY.into()));
    start_adapter(&mut stack, "petstore");
    stack.start_orchestrator();

    // A pet the store has already.
    let bella = reqwest::Client::new()
        .post(format!("{}/pet", store.api_url()))
        .header("Idempotency-Key", "seed-bella")
        .json(&json!({"name": "Bella", "photoUrls": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(bella.status(), 200);
    let seeded = store.seen().len();

    let reader = stack.results_reader();
    let mut results = BTreeMap::new();
    publish(
        &stack,
        "pets.events",
        PET_ARRIVED,
        "p-1",
        json!({"ref": "p-1", "name": "Rex", "photo_url": "https://img.example/rex.png", "companion_id": 1}),
    )
    .await;
    let done = ended(
        &stack,
        &reader,
        &mut results,
        "pet-intake:p-1",
        SagaStatus::Completed,
    )
    .await;
    assert_eq!(
        done.output,
        json!({"id": 2, "name": "Rex", "companion": "Bella"})
    );
    // The failure path: companion 99 is not in the store (a declared 404).
    publish(
        &stack,
        "pets.events",
        PET_ARRIVED,
        "p-2",
        json!({"ref": "p-2", "name": "Max", "photo_url": "https://img.example/max.png", "companion_id": 99}),
    )
    .await;
    let undone = ended(
        &stack,
        &reader,
        &mut results,
        "pet-intake:p-2",
        SagaStatus::Compensated,
    )
    .await;
    assert!(
        undone
            .error
            .as_deref()
            .is_some_and(|e| e.contains("http_404")),
        "{undone:?}"
    );

    // What the petstore saw: the calls in order, with their bodies, the
    // api_key from the environment and one Idempotency-Key per step.
    let seen: Vec<_> = store.seen().into_iter().skip(seeded).collect();
    let calls: Vec<(String, String, Option<String>)> = seen
        .iter()
        .map(|s| {
            (
                s.method.clone(),
                s.path.clone(),
                s.header("idempotency-key"),
            )
        })
        .collect();
    let call = |m: &str, p: &str, k: &str| (m.to_owned(), p.to_owned(), Some(k.to_owned()));
    assert_eq!(
        calls,
        [
            call("POST", "/api/v3/pet", "pet-intake:p-1/add_pet"),
            call("GET", "/api/v3/pet/2", "pet-intake:p-1/read_back"),
            call("GET", "/api/v3/pet/1", "pet-intake:p-1/find_companion"),
            call("POST", "/api/v3/pet", "pet-intake:p-2/add_pet"),
            call("GET", "/api/v3/pet/3", "pet-intake:p-2/read_back"),
            call("GET", "/api/v3/pet/99", "pet-intake:p-2/find_companion"),
            call(
                "DELETE",
                "/api/v3/pet/3",
                "pet-intake:p-2/add_pet/compensate"
            ),
        ],
        "{seen:#?}"
    );
    assert!(
        seen.iter()
            .all(|s| s.header("api_key").as_deref() == Some(petstore::API_KEY)),
        "{seen:#?}"
    );
    assert_eq!(
        seen[0].json(),
        json!({"name": "Rex", "photoUrls": ["https://img.example/rex.png"]})
    );
    assert_eq!(
        seen[3].json(),
        json!({"name": "Max", "photoUrls": ["https://img.example/max.png"]})
    );
    let names: Vec<Value> = store.pets().iter().map(|p| p["name"].clone()).collect();
    assert_eq!(names, [json!("Bella"), json!("Rex")], "Max was taken out");
}

const SWITCH_REQUESTED: &str = r#"{
  "type": "record", "name": "AccountSwitchRequested", "namespace": "com.example.billing",
  "fields": [
    {"name": "customer_id", "type": "string"},
    {"name": "crm_account", "type": "string"},
    {"name": "plan", "type": "string"},
    {"name": "old_account", "type": "string"}
  ]
}"#;

const BILLING_SWITCH: &str = r#"# A customer moves to a new billing account in the legacy SOAP billing
# system: open the new account, then close the old one. If the old one
# cannot be closed, the new one is closed again.
type: billing-switch
version: 1
trigger:
  topic: billing.events
  event-type: AccountSwitchRequested
  key: event.customer_id
steps:
  - call: open_account
    service: billing
    operation: OpenAccount
    input:
      CustomerId: "{{ event.customer_id }}"
      CrmAccount: "{{ event.crm_account }}"
      Plan: "{{ event.plan }}"
    bind: account
    compensate:
      operation: CloseAccount
      input:
        AccountId: "{{ steps.account.AccountId }}"
  - call: close_old_account
    service: billing
    operation: CloseAccount
    input:
      AccountId: "{{ event.old_account }}"
    bind: old
result:
  account: "{{ steps.account.AccountId }}"
  old_closed: "{{ steps.old.Closed }}"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_saga_runs_through_the_adapter_scaffolded_from_the_demo_billing_wsdl() {
    let demo = DemoServices::start().await.unwrap();
    let mut stack = Stack::start("scaffold-soap", 1).await;
    let services = project(&stack, "billing-switch.yaml", BILLING_SWITCH);
    // The contract as a user gets it: from the running service.
    let wsdl = reqwest::get(format!("{}/billing/soap?wsdl", demo.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let file = stack.path("billing.wsdl");
    std::fs::write(&file, wsdl).unwrap();
    let yaml = scaffold(
        &stack,
        &services,
        "billing",
        &["--wsdl", file.to_str().unwrap()],
    );
    // Used as generated: the base URL is the WSDL's SOAP address, and
    // without `business-faults` a `Client` fault is a business failure.
    for want in [
        format!("base-urls:\n  - \"{}\"\n", demo.url()),
        "      action: \"urn:billing/OpenAccount\"\n".into(),
        "      action: \"urn:billing/CloseAccount\"\n".into(),
        "        \"AccountId\": \"Body/OpenAccountResponse/AccountId\"\n".into(),
        "        \"Closed\": \"Body/CloseAccountResponse/Closed\"\n".into(),
    ] {
        assert!(yaml.contains(&want), "missing {want:?} in\n{yaml}");
    }
    assert!(!yaml.contains("business-faults"), "{yaml}");
    start_adapter(&mut stack, "billing");
    stack.start_orchestrator();

    let reader = stack.results_reader();
    let mut results = BTreeMap::new();
    // sw-3: the demo answers its first OpenAccount with a `soap:Server`
    // fault (transient: the adapter retries it) and opens on the next.
    publish(
        &stack,
        "billing.events",
        SWITCH_REQUESTED,
        "sw-3",
        json!({"customer_id": "sw-3", "crm_account": "crm-sw-3", "plan": "PRO", "old_account": "b-old-3"}),
    )
    .await;
    let done = ended(
        &stack,
        &reader,
        &mut results,
        "billing-switch:sw-3",
        SagaStatus::Completed,
    )
    .await;
    assert_eq!(
        done.output,
        json!({"account": "b-sw-3", "old_closed": "true"})
    );
    // sw-4 names no old account: the demo cannot read the CloseAccount
    // request and answers a `soap:Client` fault, a business failure; the
    // new account is closed again.
    publish(
        &stack,
        "billing.events",
        SWITCH_REQUESTED,
        "sw-4",
        json!({"customer_id": "sw-4", "crm_account": "crm-sw-4", "plan": "BASIC", "old_account": ""}),
    )
    .await;
    let undone = ended(
        &stack,
        &reader,
        &mut results,
        "billing-switch:sw-4",
        SagaStatus::Compensated,
    )
    .await;
    assert!(
        undone
            .error
            .as_deref()
            .is_some_and(|e| e.contains("Client")),
        "{undone:?}"
    );

    // What billing did: each effect once, the failed one not at all.
    let ledger = demo.ledger();
    for (op, subject, n) in [
        ("OpenAccount", "sw-3", 1),
        ("CloseAccount", "b-old-3", 1),
        ("CloseAccount", "b-sw-3", 0),
        ("OpenAccount", "sw-4", 1),
        ("CloseAccount", "b-sw-4", 1),
    ] {
        assert_eq!(
            ledger.effects("billing", op, subject),
            n,
            "{op} {subject}: {:#?}",
            ledger.requests()
        );
    }
    let requests: Vec<(String, String, Option<String>)> = ledger
        .requests()
        .into_iter()
        .map(|r| (r.operation, r.subject, r.idempotency_key))
        .collect();
    let req = |op: &str, s: &str, k: &str| (op.to_owned(), s.to_owned(), Some(k.to_owned()));
    assert_eq!(
        requests,
        [
            // The Server fault and the adapter's retry: one key.
            req("OpenAccount", "sw-3", "billing-switch:sw-3/open_account"),
            req("OpenAccount", "sw-3", "billing-switch:sw-3/open_account"),
            req(
                "CloseAccount",
                "b-old-3",
                "billing-switch:sw-3/close_old_account"
            ),
            req("OpenAccount", "sw-4", "billing-switch:sw-4/open_account"),
            req(
                "CloseAccount",
                "b-sw-4",
                "billing-switch:sw-4/open_account/compensate"
            ),
        ]
    );
    // Every request it could read carried its operation's SOAPAction.
    let actions = ledger.soap_actions();
    assert_eq!(actions.len(), 5, "{actions:?}");
    for (op, action) in &actions {
        assert_eq!(
            action.as_deref(),
            Some(format!("\"urn:billing/{op}\"").as_str()),
            "{actions:?}"
        );
    }
}
