//! Adapter service definitions (the YAML `sagaflow adapter` reads, see
//! docs/adapters.md) for every demo service, pointed at a running
//! [`DemoServices`](crate::DemoServices) base URL. `sagaflow dev` and the end
//! to end tests run the adapters from these, so the worked sagas are wired
//! the same way everywhere.

/// REST services: (service, [(operation, response mapping lines)]). A
/// mapping line is `field: /json-pointer`; several are separated by `\n`.
const REST: [(&str, &[(&str, &str)]); 11] = [
    (
        "inventory",
        &[
            ("reserve", "reservation_id: /reservation_id"),
            ("release", ""),
        ],
    ),
    ("fraud", &[("screen", "verdict: /verdict")]),
    (
        "payment",
        &[("charge", "payment_id: /payment_id"), ("refund", "")],
    ),
    (
        "shipping",
        &[("schedule", "tracking_number: /tracking_number")],
    ),
    (
        "flights",
        &[
            ("reserve", "reservation_id: /reservation_id\nprice: /price"),
            ("cancel", ""),
        ],
    ),
    (
        "hotels",
        &[
            ("reserve", "reservation_id: /reservation_id\nprice: /price"),
            ("cancel", ""),
        ],
    ),
    (
        "cars",
        &[
            ("reserve", "reservation_id: /reservation_id\nprice: /price"),
            ("cancel", ""),
        ],
    ),
    ("notifications", &[("send", "")]),
    (
        "crm",
        &[
            ("create-account", "account_id: /crm_id"),
            ("delete-account", ""),
        ],
    ),
    ("workspaces", &[]),
    ("billing", &[]),
];

/// The legacy billing system speaks SOAP 1.1; its first `OpenAccount` for
/// some customers is a `soap:Server` fault, so it retries more.
const BILLING: &str = r#"service: billing
base-urls:
  - {url}
protection:
  request-timeout: 5s
retry:
  max-attempts: 4
  initial-backoff: 50ms
  max-backoff: 500ms
operations:
  OpenAccount:
    soap:
      version: "1.1"
      path: /billing/soap
      action: "urn:billing/OpenAccount"
      body: |
        <OpenAccount xmlns="urn:billing">
          <CustomerId>{{ input.CustomerRef }}</CustomerId>
          <CrmAccount>{{ input.CrmAccount }}</CrmAccount>
          <Plan>{{ input.Plan }}</Plan>
        </OpenAccount>
      response:
        account_number: Body/OpenAccountResponse/AccountId
  CloseAccount:
    soap:
      version: "1.1"
      path: /billing/soap
      action: "urn:billing/CloseAccount"
      body: |
        <CloseAccount xmlns="urn:billing"><AccountId>{{ input.AccountNumber }}</AccountId></CloseAccount>
"#;

/// Workspaces are provisioned through the service's GraphQL API: a quota
/// refusal is a GraphQL error inside an HTTP 200, which the `errors` rule
/// makes a business failure (the saga compensates); it would be one by
/// default too, the rule says so on purpose.
const WORKSPACES: &str = r#"service: workspaces
base-urls:
  - {url}
protection:
  request-timeout: 5s
retry:
  max-attempts: 3
  initial-backoff: 50ms
  max-backoff: 500ms
operations:
  provision:
    graphql:
      path: /workspaces/graphql
      document: |
        mutation Provision($customerId: ID!, $billingAccount: String!) {
          provisionWorkspace(customerId: $customerId, billingAccount: $billingAccount) { id }
        }
      variables:
        customerId: "{{ input.customer_id }}"
        billingAccount: "{{ input.billing_account }}"
      data:
        workspace_id: /provisionWorkspace/id
      errors:
        - code: QUOTA_EXCEEDED
          outcome: business-failure
  deprovision:
    graphql:
      path: /workspaces/graphql
      document: |
        mutation Deprovision($workspaceId: ID!) {
          deprovisionWorkspace(workspaceId: $workspaceId)
        }
      variables:
        workspaceId: "{{ input.workspace_id }}"
"#;

/// Every demo service's name, in the order of [`service_yaml`]'s table.
pub fn services() -> impl Iterator<Item = &'static str> {
    REST.iter().map(|(s, _)| *s)
}

/// The adapter service definition of `service` against the demo services at
/// `base_url`, or `None` for a service the demo does not serve.
pub fn service_yaml(service: &str, base_url: &str) -> Option<String> {
    if service == "billing" {
        return Some(BILLING.replace("{url}", base_url));
    }
    if service == "workspaces" {
        return Some(WORKSPACES.replace("{url}", base_url));
    }
    let (_, ops) = REST.iter().find(|(s, _)| *s == service)?;
    let mut y = format!(
        "service: {service}\nbase-urls:\n  - {base_url}\nprotection:\n  request-timeout: 5s\nretry:\n  max-attempts: 3\n  initial-backoff: 50ms\n  max-backoff: 500ms\noperations:\n"
    );
    for (op, response) in *ops {
        y.push_str(&format!(
            "  {op}:\n    rest:\n      method: POST\n      path: /{service}/{op}\n      body: \"{{{{ input }}}}\"\n      statuses:\n        business-failure: [402, 409, 422]\n"
        ));
        if !response.is_empty() {
            y.push_str("      response:\n");
            for line in response.lines() {
                y.push_str(&format!("        {line}\n"));
            }
        }
    }
    Some(y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_service_has_a_definition_naming_its_backend() {
        for s in services() {
            let y = service_yaml(s, "http://127.0.0.1:9").unwrap();
            assert!(y.starts_with(&format!("service: {s}\n")), "{y}");
            assert!(y.contains("http://127.0.0.1:9"), "{y}");
        }
        assert!(service_yaml("nope", "http://x").is_none());
    }

    /// deploy/compose/services/ holds these definitions for the compose
    /// stack's adapters (base URL `http://demo-services:8090`); they must not
    /// drift from the ones `sagaflow dev` and the tests run. Regenerate with
    /// `SAGAFLOW_BLESS=1 cargo test -p sagaflow-demo`.
    #[test]
    fn compose_service_definitions_match_the_generated_ones() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/compose/services");
        let bless = std::env::var_os("SAGAFLOW_BLESS").is_some();
        for s in services() {
            let path = dir.join(format!("{s}.service.yaml"));
            let want = format!(
                "# Generated from crates/demo/src/adapters.rs (SAGAFLOW_BLESS=1 cargo test -p sagaflow-demo).\n{}",
                service_yaml(s, "http://demo-services:8090").unwrap()
            );
            if bless {
                std::fs::write(&path, &want).unwrap();
            }
            let have = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(have, want, "{} is stale", path.display());
        }
    }

    #[test]
    fn response_mappings_are_indented_under_response() {
        let y = service_yaml("hotels", "http://h").unwrap();
        assert!(
            y.contains(
                "      response:\n        reservation_id: /reservation_id\n        price: /price\n"
            ),
            "{y}"
        );
    }
}
