//! GraphQL operations against a real GraphQL server: the demo workspaces
//! service (async-graphql, `sagaflow_demo::graphql`) on 127.0.0.1.

mod common;

use common::{FAST_RETRY, cmd, executor, metric};
use sagaflow_adapter::OutcomeKind;
use sagaflow_demo::DemoServices;
use serde_json::json;

/// The workspaces service with `rules` under the operations that read.
fn config(base: &str, provision_rules: &str, lookup_rules: &str) -> String {
    format!(
        r#"
service: workspaces
base-urls: ["{base}"]
{FAST_RETRY}
protection:
  request-timeout: 2s
operations:
  provision:
    graphql:
      path: /workspaces/graphql
      document: |
        # a comment before the operation
        mutation Provision($customerId: ID!, $billingAccount: String!) {{
          provisionWorkspace(customerId: $customerId, billingAccount: $billingAccount) {{ id customerId billingAccount }}
        }}
      operation-name: Provision
      variables:
        customerId: "{{{{ input.customer_id }}}}"
        billingAccount: "acct {{{{ input.billing }}}}"
      data:
        workspace_id: /provisionWorkspace/id
        billing: /provisionWorkspace/billingAccount
{provision_rules}
  lookup:
    graphql:
      path: /workspaces/graphql
      document: "query Lookup($id: ID!) {{ workspace(id: $id) {{ id usage {{ seats }} }} }}"
      variables:
        id: "{{{{ input.workspace_id }}}}"
{lookup_rules}
"#
    )
}

fn provision(customer: &str) -> sagaflow_adapter::AdapterCommand {
    cmd(
        "provision",
        customer,
        json!({"customer_id": customer, "billing": "b-1"}),
    )
}

fn lookup(workspace: &str) -> sagaflow_adapter::AdapterCommand {
    cmd("lookup", workspace, json!({"workspace_id": workspace}))
}

#[tokio::test]
async fn a_mutation_sends_variables_and_maps_data_with_the_idempotency_key() {
    let demo = DemoServices::start().await.unwrap();
    let (exec, _) = executor(&config(&demo.url(), "", ""));
    let out = exec.execute(&provision("cust-1")).await;
    assert_eq!(out.kind, OutcomeKind::Success, "{out:?}");
    assert_eq!(out.http_status, Some(200));
    assert_eq!(
        out.data,
        json!({"workspace_id": "ws-cust-1", "billing": "acct b-1"})
    );
    let seen = demo.ledger().requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        seen[0].idempotency_key.as_deref(),
        Some("order-checkout:cust-1/provision")
    );
    assert_eq!(
        demo.ledger().effects("workspaces", "provision", "cust-1"),
        1
    );
}

/// The regression the issue names: GraphQL reports a refusal inside an
/// HTTP 200. With no rule at all it is a business failure, never a success,
/// and it is not retried.
#[tokio::test]
async fn an_error_inside_a_200_is_a_failure_by_default() {
    let demo = DemoServices::start().await.unwrap();
    let (exec, registry) = executor(&config(&demo.url(), "", ""));
    let out = exec.execute(&provision("cust-6")).await;
    assert_eq!(out.kind, OutcomeKind::BusinessFailure, "{out:?}");
    assert_eq!(out.http_status, Some(200));
    assert_eq!(out.error_code(), Some("QUOTA_EXCEEDED"));
    let message = &out.error.as_ref().unwrap().message;
    assert!(
        message.contains("provisionWorkspace") && message.contains("quota"),
        "{message}"
    );
    assert_eq!(out.data["data"], serde_json::Value::Null, "{out:?}");
    assert_eq!(demo.ledger().requests().len(), 1, "not retried");
    assert_eq!(
        demo.ledger().effects("workspaces", "provision", "cust-6"),
        0
    );
    assert_eq!(
        metric(
            &registry,
            "sagaflow_adapter_retries_total",
            &[("operation", "provision")]
        ),
        0.0
    );
}

#[tokio::test]
async fn an_error_rule_can_make_a_code_transient_and_the_adapter_retries_it() {
    let demo = DemoServices::start().await.unwrap();
    let rules = "      errors:\n        - code: NOT_FOUND\n          outcome: transient\n";
    let (exec, registry) = executor(&config(&demo.url(), "", rules));
    let out = exec.execute(&lookup("ws-cust-9")).await;
    assert_eq!(out.kind, OutcomeKind::TransientFailure, "{out:?}");
    assert_eq!(out.error_code(), Some("NOT_FOUND"));
    assert_eq!(
        metric(
            &registry,
            "sagaflow_adapter_retries_total",
            &[("operation", "lookup")]
        ),
        2.0,
        "three attempts in all (FAST_RETRY)"
    );
    // Once the workspace exists, the same lookup succeeds.
    assert_eq!(
        exec.execute(&provision("cust-9")).await.kind,
        OutcomeKind::Success
    );
    let out = exec.execute(&lookup("ws-cust-9")).await;
    assert_eq!(out.kind, OutcomeKind::BusinessFailure, "{out:?}");
    assert_eq!(
        out.error_code(),
        Some("USAGE_UNAVAILABLE"),
        "odd customers have no usage, and an unmatched error fails even with partial data"
    );
}

#[tokio::test]
async fn partial_data_is_a_success_only_where_a_rule_says_so() {
    let demo = DemoServices::start().await.unwrap();
    let rules = "      errors:\n        - path: workspace.usage\n          outcome: success\n";
    let (exec, _) = executor(&config(&demo.url(), "", rules));
    for c in ["cust-2", "cust-3"] {
        assert_eq!(exec.execute(&provision(c)).await.kind, OutcomeKind::Success);
    }
    let even = exec.execute(&lookup("ws-cust-2")).await;
    assert_eq!(even.kind, OutcomeKind::Success, "{even:?}");
    assert_eq!(
        even.data,
        json!({"workspace": {"id": "ws-cust-2", "usage": {"seats": 5}}})
    );
    let odd = exec.execute(&lookup("ws-cust-3")).await;
    assert_eq!(odd.kind, OutcomeKind::Success, "{odd:?}");
    assert_eq!(odd.data["workspace"]["id"], json!("ws-cust-3"), "{odd:?}");
    // async-graphql leaves the failed field out rather than null.
    assert!(odd.data["workspace"]["usage"].is_null(), "{odd:?}");
    // The same path rule does not cover an error elsewhere.
    let missing = exec.execute(&lookup("ws-nobody")).await;
    assert_eq!(missing.kind, OutcomeKind::BusinessFailure, "{missing:?}");
    assert_eq!(missing.error_code(), Some("NOT_FOUND"));
}

#[tokio::test]
async fn errors_allowed_as_success_without_data_are_still_a_failure() {
    let demo = DemoServices::start().await.unwrap();
    let rules = "      errors:\n        - code: QUOTA_EXCEEDED\n          outcome: success\n";
    let (exec, _) = executor(&config(&demo.url(), rules, ""));
    let out = exec.execute(&provision("cust-13")).await;
    assert_eq!(out.kind, OutcomeKind::BusinessFailure, "{out:?}");
    assert_eq!(out.error_code(), Some("QUOTA_EXCEEDED"));
}

/// Values reach the server as variables only: GraphQL syntax in the input
/// cannot change the document.
#[tokio::test]
async fn input_cannot_inject_into_the_document() {
    let demo = DemoServices::start().await.unwrap();
    let (exec, _) = executor(&config(&demo.url(), "", ""));
    let evil = "x\", billingAccount: \"y\") { id } deprovisionWorkspace(workspaceId: \"ws-a\") #";
    let out = exec.execute(&provision(evil)).await;
    assert_eq!(out.kind, OutcomeKind::Success, "{out:?}");
    assert_eq!(out.data["workspace_id"], json!(format!("ws-{evil}")));
    let seen = demo.ledger().requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].operation, "provision");
    assert_eq!(seen[0].subject, evil);
}

#[tokio::test]
async fn http_level_rules_apply_as_for_rest() {
    // A GraphQL server that is down: transient connect errors, retried.
    let (exec, registry) = executor(&config("http://127.0.0.1:9", "", ""));
    let out = exec.execute(&provision("cust-1")).await;
    assert_eq!(out.kind, OutcomeKind::TransientFailure, "{out:?}");
    assert_eq!(out.error_code(), Some("connect_error"));
    assert_eq!(
        metric(
            &registry,
            "sagaflow_adapter_retries_total",
            &[("operation", "provision")]
        ),
        2.0
    );
    // A non-GraphQL 200 body is an invalid response, not a success.
    let backend = common::Backend::start(|_, _| common::Reply::json(200, json!([1, 2]))).await;
    let (exec, _) = executor(&config(&backend.url(), "", ""));
    let out = exec.execute(&provision("cust-1")).await;
    assert_eq!(out.kind, OutcomeKind::TransientFailure, "{out:?}");
    assert_eq!(out.error_code(), Some("invalid_response"));
    let seen = backend.seen();
    assert_eq!(
        seen[0].header("accept").as_deref(),
        Some("application/graphql-response+json, application/json")
    );
    assert_eq!(
        seen[0].json()["operationName"],
        json!("Provision"),
        "{}",
        seen[0].body_text()
    );
    // An HTTP 503 is classified by status, as for REST.
    let backend = common::Backend::start(|_, _| common::Reply::status(503)).await;
    let (exec, _) = executor(&config(&backend.url(), "", ""));
    let out = exec.execute(&provision("cust-1")).await;
    assert_eq!(out.error_code(), Some("http_503"));
    assert_eq!(backend.seen().len(), 3);
}
