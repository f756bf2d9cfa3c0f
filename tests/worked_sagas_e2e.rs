//! The travel-booking and customer-onboarding sagas end to end: events
//! published in Avro as an existing system would, a real `sagaflow
//! orchestrator` process, one real `sagaflow adapter` process per service,
//! and the demo services (`sagaflow_demo`: REST/JSON, and SOAP 1.1 for
//! billing) counting what they actually did per Idempotency-Key.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use rdkafka::Message;
use rdkafka::message::Headers;
use sagaflow_codec::messages::SagaStatus;
use sagaflow_demo::{DemoServices, samples};
use sagaflow_test_support::{self as support, metrics, process::ChildGuard};
use serde_json::Value;

use common::Stack;

const WAIT: Duration = Duration::from_secs(120);

/// The travel and onboarding services (sagaflow_demo::adapters has them all).
const SERVICES: [&str; 8] = [
    "flights",
    "hotels",
    "cars",
    "payment",
    "notifications",
    "crm",
    "workspaces",
    "billing",
];

/// Starts one adapter process per travel and onboarding service.
fn start_adapters(stack: &mut Stack, demo: &DemoServices) {
    let base = std::fs::read_to_string(stack.path("inventory.adapter.yaml")).unwrap();
    for service in SERVICES {
        let yaml = sagaflow_demo::adapters::service_yaml(service, &demo.url()).unwrap();
        std::fs::write(stack.path(&format!("{service}.service.yaml")), yaml).unwrap();
        let cfg = stack.path(&format!("{service}.adapter.yaml"));
        std::fs::write(&cfg, base.replace("inventory", service)).unwrap();
        let log = stack.path(&format!("adapter-{service}-{}.log", support::unique("run")));
        stack.adapters.push(ChildGuard::sagaflow(
            service,
            &["adapter", "--config", cfg.to_str().unwrap()],
            log,
            &[],
        ));
    }
}

async fn publish(
    stack: &Stack,
    topic: &str,
    record: &str,
    schema_file: &str,
    key: &str,
    event: Value,
) {
    let schema = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("schemas/examples")
            .join(schema_file),
    )
    .unwrap();
    let parsed = sagaflow_codec::apache_avro::Schema::parse_str(&schema).unwrap();
    let value = sagaflow_codec::json::json_to_avro(&event, &parsed)
        .unwrap_or_else(|e| panic!("{record} does not match its schema: {e}"));
    let topic = stack.topic(topic);
    let bytes = stack
        .codec
        .encode_avro_value(&topic, record, &schema, value)
        .await
        .unwrap();
    stack.send_raw(&topic, key, &bytes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn travel_and_onboarding_sagas_complete_and_compensate_end_to_end() {
    let demo = DemoServices::start().await.unwrap();
    let mut stack = Stack::start("worked", 3).await;
    start_adapters(&mut stack, &demo);
    stack.start_orchestrator();
    let reader = stack.results_reader();
    let at = 1_700_000_000_000i64;

    // b-5 and b-11: hotel full; b-12: card declined; the rest book.
    let bookings: Vec<String> = (0..13).map(|i| format!("b-{i}")).collect();
    for b in &bookings {
        publish(
            &stack,
            "travel.events",
            "io.sagaflow.examples.travel.BookingRequested",
            "travel/BookingRequested.avsc",
            b,
            samples::booking_requested(b, "traveller-1", at),
        )
        .await;
    }
    // c-3's first OpenAccount gets a SOAP Server fault; its retry succeeds.
    let customers: Vec<String> = (0..4).map(|i| format!("c-{i}")).collect();
    for c in &customers {
        publish(
            &stack,
            "customers.events",
            "io.sagaflow.examples.customers.CustomerSignedUp",
            "customers/CustomerSignedUp.avsc",
            c,
            samples::customer_signed_up(c, &format!("{c}@example.com"), at),
        )
        .await;
    }
    // q-6's workspace is over quota: the GraphQL API answers an error
    // inside an HTTP 200, the adapter's `errors` rule makes it a business
    // failure, and the saga closes the SOAP billing account and deletes
    // the CRM account. (It never verifies its e-mail.)
    let over_quota = "q-6";
    publish(
        &stack,
        "customers.events",
        "io.sagaflow.examples.customers.CustomerSignedUp",
        "customers/CustomerSignedUp.avsc",
        over_quota,
        samples::customer_signed_up(over_quota, "q-6@example.com", at),
    )
    .await;
    // Verification arrives whenever the customer clicks; early ones wait.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for c in &customers {
        publish(
            &stack,
            "identity.events",
            "io.sagaflow.examples.customers.EmailVerified",
            "customers/EmailVerified.avsc",
            c,
            samples::email_verified(c, &format!("{c}@example.com"), at + 60_000),
        )
        .await;
    }

    let mut results = BTreeMap::new();
    let mut copies = 0;
    let n = bookings.len() + customers.len() + 1;
    stack
        .collect_results(&reader, &mut results, &mut copies, n, WAIT)
        .await;
    let demo_log = || format!("{:?}\n{}", demo.ledger().requests().len(), stack.logs());
    for b in &bookings {
        let id = format!("travel-booking:{b}");
        let r = results
            .get(&id)
            .unwrap_or_else(|| panic!("{id} has no result\n{}", demo_log()));
        let full = sagaflow_demo::number(b) % 6 == 5;
        let declined = sagaflow_demo::number(b) % 13 == 12;
        let want = if full || declined {
            SagaStatus::Compensated
        } else {
            SagaStatus::Completed
        };
        assert_eq!(r.status, want, "{id}: {r:?}\n{}", demo_log());
        let l = demo.ledger();
        let reserved = |svc: &str| l.effects(svc, "reserve", b);
        let cancelled = |svc: &str| l.effects(svc, "cancel", &format!("r-{b}"));
        assert_eq!(reserved("flights"), 1, "{b}: flight reserved once");
        assert_eq!(reserved("cars"), 1, "{b}: car reserved once");
        assert_eq!(reserved("hotels"), u32::from(!full), "{b}: hotel");
        assert_eq!(
            l.effects("payment", "charge", b),
            u32::from(want == SagaStatus::Completed),
            "{b}: charge"
        );
        let undone = u32::from(want == SagaStatus::Compensated);
        assert_eq!(cancelled("flights"), undone, "{b}: flight cancelled");
        assert_eq!(cancelled("cars"), undone, "{b}: car cancelled");
        assert_eq!(
            cancelled("hotels"),
            u32::from(declined),
            "{b}: hotel cancelled"
        );
        if want == SagaStatus::Completed {
            let out = r.output.to_string();
            assert!(
                out.contains(&format!("r-{b}")) && out.contains(&format!("p-{b}")),
                "{id}: {out}"
            );
        }
    }
    let api = stack.orchestrators[0].http_addr(WAIT);
    for c in &customers {
        let id = format!("customer-onboarding:{c}");
        if !results.contains_key(&id) {
            let view = reqwest::get(format!("http://{api}/v1/sagas/{id}"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let metrics = reqwest::get(format!("http://{api}/metrics"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let inputs: Vec<&str> = metrics
                .lines()
                .filter(|l| {
                    l.starts_with("sagaflow_inputs_total")
                        || l.starts_with("sagaflow_dead_letters_total")
                })
                .collect();
            panic!(
                "{id} has no result; its view: {view}\ninputs: {inputs:#?}\n{}",
                demo_log()
            );
        }
        let r = results
            .get(&id)
            .unwrap_or_else(|| panic!("{id} has no result\n{}", demo_log()));
        assert_eq!(
            r.status,
            SagaStatus::Completed,
            "{id}: {r:?}\n{}",
            demo_log()
        );
        let l = demo.ledger();
        assert_eq!(l.effects("crm", "create-account", c), 1, "{c}: CRM account");
        assert_eq!(
            l.effects("billing", "OpenAccount", c),
            1,
            "{c}: billing account over SOAP"
        );
        assert_eq!(l.effects("workspaces", "provision", c), 1, "{c}: workspace");
    }
    let id = format!("customer-onboarding:{over_quota}");
    let r = results
        .get(&id)
        .unwrap_or_else(|| panic!("{id} has no result\n{}", demo_log()));
    assert_eq!(
        r.status,
        SagaStatus::Compensated,
        "{id}: a GraphQL error inside a 200 is not a success: {r:?}\n{}",
        demo_log()
    );
    let l = demo.ledger();
    assert_eq!(l.effects("workspaces", "provision", over_quota), 0);
    assert_eq!(
        l.effects("billing", "CloseAccount", &format!("b-{over_quota}")),
        1,
        "{over_quota}: billing account closed"
    );
    assert_eq!(
        l.effects("crm", "delete-account", &format!("crm-{over_quota}")),
        1,
        "{over_quota}: CRM account deleted"
    );
    let faulted = demo
        .ledger()
        .requests()
        .iter()
        .filter(|r| r.service == "billing" && r.subject == "c-3")
        .count();
    assert!(
        faulted >= 2,
        "c-3's OpenAccount was retried after the SOAP fault"
    );
    assert!(
        demo.ledger()
            .requests()
            .iter()
            .all(|r| r.idempotency_key.is_some()),
        "every call carries an Idempotency-Key"
    );

    // Each onboarded customer is announced on customers.events.
    let announced = stack.reader("customers.events");
    // Sign-ups (q-6's too) and announcements share the topic.
    let records = support::consume(&announced, customers.len() * 2 + 1, WAIT).await;
    let schema = sagaflow_codec::apache_avro::Schema::parse_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("schemas/examples/customers/CustomerOnboarded.avsc"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut onboarded = BTreeMap::new();
    for m in &records {
        let kind = m.headers().and_then(|h| {
            h.iter()
                .find(|x| x.key == "sagaflow-type")
                .and_then(|x| x.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        });
        if kind.as_deref() != Some("CustomerOnboarded") {
            continue;
        }
        let bytes = m.payload().unwrap();
        #[allow(deprecated)] // the reader API replacing it is not in this version's docs yet
        let value =
            sagaflow_codec::apache_avro::from_avro_datum(&schema, &mut &bytes[5..], None).unwrap();
        let json = Value::try_from(value).unwrap();
        onboarded.insert(json["customer_id"].as_str().unwrap().to_owned(), json);
    }
    for c in &customers {
        let e = onboarded
            .get(c)
            .unwrap_or_else(|| panic!("no CustomerOnboarded for {c}: {onboarded:?}"));
        assert_eq!(e["crm_id"], format!("crm-{c}"), "{e}");
        assert_eq!(e["billing_account"], format!("b-{c}"), "{e}");
        assert_eq!(e["workspace_id"], format!("ws-{c}"), "{e}");
    }
}

/// An awaited event whose saga never starts is parked only for
/// `early-event-retention` (set through its environment override here),
/// then dropped and counted, so such events do not pile up in the
/// changelog and in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn early_events_whose_saga_never_starts_expire() {
    let mut stack = Stack::start("early", 3).await;
    stack.env = vec![("SAGAFLOW_EARLY_EVENT_RETENTION".into(), "1s".into())];
    stack.start_orchestrator();
    let api = stack.orchestrators[0].http_addr(WAIT);
    publish(
        &stack,
        "identity.events",
        "io.sagaflow.examples.customers.EmailVerified",
        "customers/EmailVerified.avsc",
        "ghost-1",
        samples::email_verified("ghost-1", "ghost-1@example.com", 1_700_000_000_000),
    )
    .await;
    let metric = |text: &str, outcome: &str| -> f64 {
        metrics::sum(
            text,
            "sagaflow_inputs_total",
            &[("input", "event"), ("outcome", outcome)],
        )
    };
    let text = metrics::wait_until(&format!("http://{api}/metrics"), WAIT, |t| {
        metric(t, "expired") >= 1.0
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "the parked EmailVerified never expired\n{e}\n{}",
            stack.logs()
        )
    });
    assert_eq!(metric(&text, "parked"), 1.0, "{text}");
    assert!(
        stack
            .logs()
            .contains("awaited events expired before their saga started"),
        "{}",
        stack.logs()
    );
}

/// Awaited events for a saga that never starts are bounded: past
/// `max-parked-per-saga` they are dead-lettered (SF-ORCH-023) instead of
/// piling up in memory and in the changelog.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parked_events_are_bounded_per_saga() {
    let mut stack = Stack::start("parkcap", 1).await;
    stack.env = vec![("SAGAFLOW_MAX_PARKED_PER_SAGA".into(), "3".into())];
    stack.start_orchestrator();
    let api = stack.orchestrators[0].http_addr(WAIT);
    for i in 0..7 {
        publish(
            &stack,
            "identity.events",
            "io.sagaflow.examples.customers.EmailVerified",
            "customers/EmailVerified.avsc",
            "ghost-2",
            samples::email_verified(
                "ghost-2",
                &format!("ghost-{i}@example.com"),
                1_700_000_000_000 + i,
            ),
        )
        .await;
    }
    let refused = |text: &str| {
        metrics::sum(
            text,
            "sagaflow_dead_letters_total",
            &[("reason", "SF-ORCH-023")],
        )
    };
    // The dead-letter counter moves while the batch is handled, the parked
    // gauge once the batch is written: a scrape can fall between the two.
    let text = metrics::wait_until(&format!("http://{api}/metrics"), WAIT, |t| {
        refused(t) >= 4.0 && metrics::sum(t, "sagaflow_parked_events", &[]) >= 3.0
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "the parked events were never bounded\n{e}\n{}",
            stack.logs()
        )
    });
    assert_eq!(refused(&text), 4.0, "{text}");
    assert_eq!(
        metrics::sum(&text, "sagaflow_parked_events", &[]),
        3.0,
        "{text}"
    );
}
