//! SOAP/XML operations against a real local HTTP server.

mod common;

use std::time::{Duration, Instant};

use common::{Backend, FAST_RETRY, Reply, cmd, executor};
use sagaflow_adapter::OutcomeKind;
use serde_json::json;

fn config(base: &str) -> String {
    format!(
        r#"
service: legacy-bank
base-urls: ["{base}/soap"]
{FAST_RETRY}
operations:
  open-account:
    soap:
      version: "1.1"
      path: /AccountService
      action: "urn:bank/OpenAccount"
      body: |
        <b:OpenAccount xmlns:b="urn:bank"><b:Name>{{{{ input.name }}}}</b:Name><b:Ref>{{{{ command.command_id }}}}</b:Ref></b:OpenAccount>
      response:
        account_id: Body/OpenAccountResponse/AccountId
      business-faults: [Client.DuplicateCustomer, Blocked]
  close-account:
    soap:
      version: "1.2"
      path: /AccountService12
      action: "urn:bank/CloseAccount"
      body: <CloseAccount xmlns="urn:bank"><Id>{{{{ input.id }}}}</Id></CloseAccount>
      response:
        closed: Envelope/Body/CloseAccountResponse/Closed
      business-faults: [Blocked]
"#
    )
}

fn ok11(id: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">
  <soap:Body><r:OpenAccountResponse xmlns:r="urn:bank"><r:AccountId>{id}</r:AccountId></r:OpenAccountResponse></soap:Body>
</soap:Envelope>"#
    )
}

fn fault11(code: &str) -> String {
    format!(
        r#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><soap:Fault><faultcode>soap:{code}</faultcode><faultstring>refused: {code}</faultstring></soap:Fault></soap:Body></soap:Envelope>"#
    )
}

fn open(id: &str, name: &str) -> sagaflow_adapter::AdapterCommand {
    cmd("open-account", id, json!({"name": name}))
}

#[tokio::test]
async fn soap11_success_escapes_values_and_sends_soapaction() {
    let backend = Backend::start(|_, _| Reply::xml(200, &ok11("ACC-7"))).await;
    let (exec, _) = executor(&config(&backend.url()));
    let out = exec.execute(&open("c-1", "Smith & Sons <Ltd> \"x\"")).await;
    assert_eq!(out.kind, OutcomeKind::Success, "{out:?}");
    assert_eq!(out.data, json!({"account_id": "ACC-7"}));
    let seen = backend.seen();
    assert_eq!(seen.len(), 1);
    let req = &seen[0];
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/soap/AccountService");
    assert_eq!(
        req.header("soapaction").as_deref(),
        Some("\"urn:bank/OpenAccount\"")
    );
    assert_eq!(
        req.header("content-type").as_deref(),
        Some("text/xml; charset=utf-8")
    );
    assert_eq!(
        req.header("idempotency-key").as_deref(),
        Some("order-checkout:c-1/open-account")
    );
    let body = req.body_text();
    assert!(
        body.contains("http://schemas.xmlsoap.org/soap/envelope/"),
        "{body}"
    );
    assert!(
        body.contains("<b:Name>Smith &amp; Sons &lt;Ltd&gt; &quot;x&quot;</b:Name>"),
        "{body}"
    );
    // What the backend got is well-formed and carries the original value.
    let doc = roxmltree::Document::parse(&body).unwrap();
    let name = doc
        .descendants()
        .find(|n| n.has_tag_name(("urn:bank", "Name")))
        .unwrap();
    assert_eq!(name.text(), Some("Smith & Sons <Ltd> \"x\""));
}

#[tokio::test]
async fn xml_injection_through_input_stays_text() {
    let backend = Backend::start(|_, _| Reply::xml(200, &ok11("A"))).await;
    let (exec, _) = executor(&config(&backend.url()));
    let evil = "</b:Name><b:Admin>true</b:Admin><b:Name>";
    let out = exec.execute(&open("c-1", evil)).await;
    assert_eq!(out.kind, OutcomeKind::Success, "{out:?}");
    let body = backend.seen()[0].body_text();
    let doc = roxmltree::Document::parse(&body).unwrap();
    assert!(
        doc.descendants()
            .all(|n| !n.has_tag_name(("urn:bank", "Admin")))
    );
}

#[tokio::test]
async fn soap12_uses_action_parameter_and_reads_values() {
    let backend = Backend::start(|_, _| {
        Reply::xml(
            200,
            r#"<e:Envelope xmlns:e="http://www.w3.org/2003/05/soap-envelope"><e:Body><CloseAccountResponse xmlns="urn:bank"><Closed>true</Closed></CloseAccountResponse></e:Body></e:Envelope>"#,
        )
    })
    .await;
    let (exec, _) = executor(&config(&backend.url()));
    let out = exec
        .execute(&cmd("close-account", "c-1", json!({"id": "A-1"})))
        .await;
    assert_eq!(out.kind, OutcomeKind::Success, "{out:?}");
    assert_eq!(out.data, json!({"closed": "true"}));
    let req = &backend.seen()[0];
    assert_eq!(
        req.header("content-type").as_deref(),
        Some("application/soap+xml; charset=utf-8; action=\"urn:bank/CloseAccount\"")
    );
    assert!(req.header("soapaction").is_none());
    assert!(
        req.body_text()
            .contains("http://www.w3.org/2003/05/soap-envelope")
    );
}

#[tokio::test]
async fn configured_fault_code_is_a_business_failure() {
    let backend =
        Backend::start(|_, _| Reply::xml(500, &fault11("Client.DuplicateCustomer"))).await;
    let (exec, _) = executor(&config(&backend.url()));
    let out = exec.execute(&open("c-1", "A")).await;
    assert_eq!(out.kind, OutcomeKind::BusinessFailure, "{out:?}");
    assert_eq!(out.error_code(), Some("Client.DuplicateCustomer"));
    assert!(out.error.unwrap().message.contains("refused"));
    assert_eq!(backend.total(), 1);
}

#[tokio::test]
async fn soap12_subcode_named_in_config_is_business() {
    let backend = Backend::start(|_, _| {
        Reply::xml(
            500,
            r#"<e:Envelope xmlns:e="http://www.w3.org/2003/05/soap-envelope" xmlns:m="urn:bank"><e:Body><e:Fault><e:Code><e:Value>e:Receiver</e:Value><e:Subcode><e:Value>m:Blocked</e:Value></e:Subcode></e:Code><e:Reason><e:Text xml:lang="en">account blocked</e:Text></e:Reason></e:Fault></e:Body></e:Envelope>"#,
        )
    })
    .await;
    let (exec, _) = executor(&config(&backend.url()));
    let out = exec
        .execute(&cmd("close-account", "c-1", json!({"id": "A-1"})))
        .await;
    assert_eq!(out.kind, OutcomeKind::BusinessFailure, "{out:?}");
    assert_eq!(out.error_code(), Some("Blocked"));
    assert_eq!(backend.total(), 1);
}

#[tokio::test]
async fn server_fault_is_transient_and_retried() {
    let backend = Backend::start(|n, _| {
        if n < 2 {
            Reply::xml(500, &fault11("Server"))
        } else {
            Reply::xml(200, &ok11("ACC-9"))
        }
    })
    .await;
    let (exec, _) = executor(&config(&backend.url()));
    let out = exec.execute(&open("c-1", "A")).await;
    assert_eq!(out.kind, OutcomeKind::Success, "{out:?}");
    assert_eq!(backend.total(), 3);
}

#[tokio::test]
async fn unnamed_client_fault_is_business_and_server_fault_exhausts() {
    let backend = Backend::start(|n, _| {
        if n == 0 {
            Reply::xml(500, &fault11("Client"))
        } else {
            Reply::xml(500, &fault11("Server.Busy"))
        }
    })
    .await;
    let (exec, _) = executor(&config(&backend.url()));
    let out = exec.execute(&open("c-1", "A")).await;
    assert_eq!(out.kind, OutcomeKind::BusinessFailure);
    let out = exec.execute(&open("c-2", "A")).await;
    assert_eq!(out.kind, OutcomeKind::TransientFailure);
    assert_eq!(out.error_code(), Some("Server.Busy"));
    assert_eq!(backend.total(), 4);
}

const BILLION_LAUGHS: &str = r#"<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><r:OpenAccountResponse xmlns:r="urn:bank"><r:AccountId>&lol9;</r:AccountId></r:OpenAccountResponse></soap:Body></soap:Envelope>"#;

#[tokio::test]
async fn billion_laughs_response_is_rejected_quickly() {
    let backend = Backend::start(|_, _| Reply::xml(200, BILLION_LAUGHS)).await;
    let (exec, _) = executor(&config(&backend.url()));
    let started = Instant::now();
    let out = exec.execute(&open("c-1", "A")).await;
    assert_eq!(out.kind, OutcomeKind::TransientFailure, "{out:?}");
    assert_eq!(out.error_code(), Some("unsafe_xml"));
    assert!(
        out.error
            .as_ref()
            .unwrap()
            .message
            .contains("SF-ADAPTER-014")
    );
    assert!(!out.data.to_string().contains("lollol"));
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(backend.total(), 1, "unsafe documents are not retried");
}

#[tokio::test]
async fn xxe_response_is_rejected_and_nothing_is_read() {
    let dir = std::env::temp_dir().join(format!("sf-xxe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret_file = dir.join("secret.txt");
    std::fs::write(&secret_file, "TOP-SECRET-XXE-MARKER").unwrap();
    let doc = format!(
        r#"<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY xxe SYSTEM "file://{}">]>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><r:OpenAccountResponse xmlns:r="urn:bank"><r:AccountId>&xxe;</r:AccountId></r:OpenAccountResponse></soap:Body></soap:Envelope>"#,
        secret_file.display()
    );
    let backend = Backend::start(move |_, _| Reply::xml(200, &doc)).await;
    let (exec, _) = executor(&config(&backend.url()));
    let out = exec.execute(&open("c-1", "A")).await;
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(out.kind, OutcomeKind::TransientFailure);
    assert_eq!(out.error_code(), Some("unsafe_xml"));
    let everything = format!("{out:?}");
    assert!(!everything.contains("TOP-SECRET-XXE-MARKER"));
}

#[tokio::test]
async fn garbage_on_2xx_is_invalid_response_but_html_503_is_transient() {
    let backend = Backend::start(|n, _| {
        if n == 0 {
            Reply::xml(200, "this is not xml <<<")
        } else {
            Reply::status(503).body("<html><body>maintenance</body>")
        }
    })
    .await;
    let (exec, _) = executor(&config(&backend.url()));
    let out = exec.execute(&open("c-1", "A")).await;
    assert_eq!(out.error_code(), Some("invalid_response"));
    let msg = out.error.unwrap().message;
    assert!(
        msg.contains("`open-account`") && msg.contains("malformed XML"),
        "{msg}"
    );
    assert_eq!(backend.total(), 1);
    let out = exec.execute(&open("c-2", "A")).await;
    assert_eq!(out.kind, OutcomeKind::TransientFailure);
    assert_eq!(out.error_code(), Some("http_503"));
}

#[tokio::test]
async fn missing_response_element_names_the_path() {
    let backend = Backend::start(|_, _| {
        Reply::xml(
            200,
            r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><Other/></s:Body></s:Envelope>"#,
        )
    })
    .await;
    let (exec, _) = executor(&config(&backend.url()));
    let out = exec.execute(&open("c-1", "A")).await;
    assert_eq!(out.error_code(), Some("invalid_response"));
    assert!(
        out.error
            .unwrap()
            .message
            .contains("Body/OpenAccountResponse/AccountId")
    );
}
