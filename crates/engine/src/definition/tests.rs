use super::*;
use std::collections::BTreeSet;
use std::time::Duration;

use crate::error::{DefCode, DefinitionError, DefinitionErrors};

const SERVICES: &str = include_str!("../../../../topology/services.yaml");

fn services() -> ServiceCatalog {
    ServiceCatalog::from_yaml("services.yaml", SERVICES).unwrap()
}

#[test]
fn worked_examples_validate() {
    for (file, src) in [
        (
            "order-checkout.yaml",
            include_str!("../../../../topology/sagas/order-checkout.yaml"),
        ),
        (
            "travel-booking.yaml",
            include_str!("../../../../topology/sagas/travel-booking.yaml"),
        ),
        (
            "customer-onboarding.yaml",
            include_str!("../../../../topology/sagas/customer-onboarding.yaml"),
        ),
    ] {
        let def =
            SagaDefinition::from_yaml(file, src, &services()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(def.version, 1);
        assert!(!def.steps().is_empty());
    }
}

fn check(src: &str) -> Result<SagaDefinition, DefinitionErrors> {
    SagaDefinition::from_yaml("t.yaml", src, &services())
}

/// Asserts that `src` fails with `code` at `line:col`, and returns the error.
fn expect(src: &str, code: DefCode, line: usize, column: usize) -> DefinitionError {
    let errs = check(src).expect_err("definition should be rejected");
    let e = errs
        .find(code)
        .unwrap_or_else(|| panic!("no {code} in:\n{errs}"))
        .clone();
    assert_eq!(
        (e.position.line, e.position.column),
        (line, column),
        "wrong position for {e}"
    );
    e
}

const HEAD: &str = "type: t\nversion: 1\ntrigger:\n  topic: orders.events\n  event-type: OrderPlaced\n  key: event.order_id\nsteps:\n";
// HEAD has 7 lines; the first step is on line 8.

fn def(steps: &str) -> String {
    format!("{HEAD}{steps}")
}

#[test]
fn sf_def_001_yaml_syntax() {
    let e = expect("type: t\nversion: [1\n", DefCode::YamlSyntax, 3, 1);
    assert!(
        e.to_string().starts_with("t.yaml:3:1: error[SF-DEF-001]"),
        "{e}"
    );
}

#[test]
fn sf_def_002_unknown_field_points_at_key() {
    let e = expect(
        &def("  - call: a\n    service: payment\n    operation: charge\n    timeuot: 3s\n"),
        DefCode::Schema,
        11,
        5,
    );
    assert!(e.message.contains("timeuot"), "{e}");
    assert!(e.message.contains("timeout"), "lists valid keys: {e}");
}

#[test]
fn sf_def_002_missing_field() {
    let e = expect(
        &def("  - call: a\n    service: payment\n"),
        DefCode::Schema,
        8,
        5,
    );
    assert!(e.message.contains("operation"), "{e}");
}

#[test]
fn sf_def_003_unknown_step_kind() {
    let e = expect(
        &def("  - invoke: a\n    service: payment\n"),
        DefCode::UnknownStepKind,
        8,
        5,
    );
    assert!(
        e.help
            .as_deref()
            .unwrap()
            .contains("call, parallel, choice, await, emit"),
        "{e}"
    );
    let e = expect(
        &def("  - call: a\n    emit: b\n"),
        DefCode::UnknownStepKind,
        8,
        5,
    );
    assert!(e.message.contains("call and emit"), "{e}");
}

#[test]
fn sf_def_004_unknown_service() {
    let e = expect(
        &def("  - call: a\n    service: paymnet\n    operation: charge\n"),
        DefCode::UnknownService,
        9,
        5,
    );
    assert!(e.help.as_deref().unwrap().contains("payment"), "{e}");
    // Compensation services are checked too.
    expect(
        &def(
            "  - call: a\n    service: payment\n    operation: charge\n    compensate:\n      service: nope\n      operation: refund\n",
        ),
        DefCode::UnknownService,
        12,
        7,
    );
}

#[test]
fn sf_def_005_reference_before_binding() {
    let e = expect(
        &def(concat!(
            "  - call: a\n    service: payment\n    operation: charge\n",
            "    input:\n      id: \"{{ steps.charge.data }}\"\n",
            "  - call: charge\n    service: payment\n    operation: charge\n",
        )),
        DefCode::UnboundReference,
        12,
        7,
    );
    assert!(e.message.contains("steps.charge"), "{e}");
    assert!(e.message.contains("has not run yet"), "{e}");
}

#[test]
fn sf_def_005_reference_from_one_choice_branch() {
    // `fraud` only runs in one branch, so it is not bound after the choice.
    let src = def(concat!(
        "  - choice: c\n    when:\n      - if: event.total > 10\n        steps:\n",
        "          - call: fraud\n            service: fraud\n            operation: screen\n",
        "  - call: pay\n    service: payment\n    operation: charge\n",
        "    input: { verdict: \"{{ steps.fraud.verdict }}\" }\n",
    ));
    let e = expect(&src, DefCode::UnboundReference, 18, 14);
    assert!(e.help.as_deref().unwrap().contains("nothing yet"), "{e}");
}

#[test]
fn choice_branches_that_all_bind_a_name_make_it_available() {
    let src = def(concat!(
        "  - choice: c\n    when:\n      - if: event.total > 10\n        steps:\n",
        "          - call: big\n            service: fraud\n            operation: screen\n            bind: verdict\n",
        "    default:\n      - call: small\n        service: fraud\n        operation: quick\n        bind: verdict2\n",
        "  - call: pay\n    service: payment\n    operation: charge\n",
        "    input: { verdict: \"{{ steps.verdict }}\" }\n",
    ));
    // `verdict` is only bound in one branch …
    expect(&src, DefCode::UnboundReference, 24, 14);
    // … but a rejecting branch does not fall through, so this is fine:
    let ok = def(concat!(
        "  - choice: c\n    when:\n      - if: event.total > 10\n        steps:\n",
        "          - reject: no\n            reason: too big\n",
        "    default:\n      - call: small\n        service: fraud\n        operation: quick\n",
        "  - call: pay\n    service: payment\n    operation: charge\n",
        "    input: { verdict: \"{{ steps.small }}\" }\n",
    ));
    check(&ok).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn parallel_branches_see_only_their_own_bindings() {
    let src = def(concat!(
        "  - parallel: p\n    branches:\n",
        "      - name: x\n        steps:\n          - call: a\n            service: flights\n            operation: reserve\n",
        "      - name: y\n        steps:\n          - call: b\n            service: hotels\n            operation: reserve\n",
        "            input: { a: \"{{ steps.a }}\" }\n",
        "  - call: c\n    service: payment\n    operation: charge\n    input: { a: \"{{ steps.a }}\", b: \"{{ steps.b }}\" }\n",
    ));
    let errs = check(&src).unwrap_err();
    assert_eq!(
        errs.0.len(),
        1,
        "only the in-branch reference is wrong:\n{errs}"
    );
    assert_eq!(errs.0[0].code, DefCode::UnboundReference);
    assert_eq!(errs.0[0].position.line, 20);
}

#[test]
fn sf_def_006_unreachable_step() {
    let e = expect(
        &def(concat!(
            "  - reject: stop\n    reason: no\n",
            "  - call: a\n    service: payment\n    operation: charge\n",
        )),
        DefCode::UnreachableStep,
        10,
        5,
    );
    assert!(e.message.contains("`stop`"), "{e}");
    // A choice whose every branch ends the saga is terminal too.
    expect(
        &def(concat!(
            "  - choice: c\n    when:\n      - if: event.x\n        steps:\n          - finish: done\n",
            "    default:\n      - reject: no\n        reason: no\n",
            "  - emit: e\n    topic: t\n    event-type: E\n    key: k\n",
        )),
        DefCode::UnreachableStep,
        16,
        5,
    );
}

#[test]
fn sf_def_007_duplicate_names() {
    let e = expect(
        &def(concat!(
            "  - call: a\n    service: payment\n    operation: charge\n",
            "  - emit: a\n    topic: t\n    event-type: E\n    key: k\n",
        )),
        DefCode::DuplicateName,
        11,
        5,
    );
    assert!(e.message.contains("line 8"), "{e}");
}

#[test]
fn sf_def_008_compensation_reads_later_data() {
    let src = def(concat!(
        "  - call: a\n    service: payment\n    operation: charge\n",
        "    compensate:\n      operation: refund\n      input:\n",
        "        own: \"{{ steps.a.id }}\"\n        later: \"{{ steps.b.id }}\"\n",
        "  - call: b\n    service: shipping\n    operation: schedule\n",
    ));
    let e = expect(&src, DefCode::CompensationReference, 15, 9);
    assert!(e.message.contains("steps.b"), "{e}");
    assert_eq!(check(&src).unwrap_err().0.len(), 1, "its own reply is fine");
}

#[test]
fn sf_def_009_bad_durations() {
    let e = expect(
        &def(
            "  - call: a\n    service: payment\n    operation: charge\n    timeout: 30 seconds please\n",
        ),
        DefCode::BadDuration,
        11,
        5,
    );
    assert!(e.help.as_deref().unwrap().contains("250ms"), "{e}");
    expect(
        &def(
            "  - await: w\n    topic: t\n    event-type: E\n    correlate: event.id\n    deadline: 0s\n",
        ),
        DefCode::BadDuration,
        12,
        5,
    );
    expect(
        &def(
            "  - call: a\n    service: payment\n    operation: charge\n    retry:\n      initial: soon\n",
        ),
        DefCode::BadDuration,
        12,
        7,
    );
}

#[test]
fn sf_def_010_expressions_that_do_not_compile() {
    expect(
        &def("  - choice: c\n    when:\n      - if: event.total >\n        steps: []\n"),
        DefCode::BadExpression,
        10,
        9,
    );
    expect(
        &def(
            "  - call: a\n    service: payment\n    operation: charge\n    input:\n      x:\n        - \"{{ event.( }}\"\n",
        ),
        DefCode::BadExpression,
        13,
        11,
    );
    let bad_key =
        "type: t\nversion: 1\ntrigger:\n  topic: o\n  event-type: E\n  key: event.(\nsteps: []\n";
    expect(bad_key, DefCode::BadExpression, 6, 3);
}

#[test]
fn sf_def_011_reserved_name() {
    let e = expect(
        &def("  - call: compensate\n    service: payment\n    operation: charge\n"),
        DefCode::BadName,
        8,
        5,
    );
    assert!(e.message.contains("reserved"), "{e}");
}

#[test]
fn sf_def_011_bad_names() {
    expect(
        &def("  - call: Charge-Payment\n    service: payment\n    operation: charge\n"),
        DefCode::BadName,
        8,
        5,
    );
}

#[test]
fn sf_def_012_bad_retry() {
    expect(
        &def(
            "  - call: a\n    service: payment\n    operation: charge\n    retry:\n      max-attempts: 0\n",
        ),
        DefCode::BadRetry,
        12,
        7,
    );
    expect(
        &def(
            "  - call: a\n    service: payment\n    operation: charge\n    retry:\n      initial: 10s\n      max: 1s\n",
        ),
        DefCode::BadRetry,
        11,
        5,
    );
}

#[test]
fn sf_def_013_duplicate_definition_in_registry() {
    let mut reg = DefinitionRegistry::new();
    let src = def("  - finish: done\n");
    reg.insert(check(&src).unwrap()).unwrap();
    let e = reg.insert(check(&src).unwrap()).unwrap_err();
    assert_eq!(e.code, DefCode::DuplicateDefinition);
    let v2 = src.replace("version: 1", "version: 2");
    reg.insert(check(&v2).unwrap()).unwrap();
    assert_eq!(reg.latest("t").unwrap().version, 2);
    assert_eq!(reg.get("t", 1).unwrap().version, 1);
    assert_eq!(reg.triggered_by("orders.events", "OrderPlaced").len(), 1);
}

#[test]
fn sf_def_014_unknown_variables() {
    let e = expect(
        &def("  - emit: e\n    topic: t\n    event-type: E\n    key: \"{{ evnt.id }}\"\n"),
        DefCode::UnknownVariable,
        11,
        5,
    );
    assert!(
        e.help.as_deref().unwrap().contains("event, saga, steps"),
        "{e}"
    );
    // An await's correlation sees only the awaited event.
    expect(
        &def(
            "  - await: w\n    topic: t\n    event-type: E\n    correlate: steps.x\n    deadline: 1h\n",
        ),
        DefCode::UnknownVariable,
        11,
        5,
    );
}

#[test]
fn all_errors_of_a_file_are_reported() {
    let errs = check(&def(concat!(
        "  - call: a\n    service: nope\n    operation: charge\n    timeout: forever\n",
        "  - call: a\n    service: payment\n    operation: charge\n",
    )))
    .unwrap_err();
    assert!(errs.has(DefCode::UnknownService));
    assert!(errs.has(DefCode::BadDuration));
    assert!(errs.has(DefCode::DuplicateName));
}

#[test]
fn services_file_rejects_duplicates() {
    let e =
        ServiceCatalog::from_yaml("s.yaml", "services:\n  - name: a\n  - name: a\n").unwrap_err();
    assert_eq!(e.0[0].code, DefCode::DuplicateName);
    assert_eq!(e.0[0].position.line, 3);
}

#[test]
fn defaults_and_compiled_shape() {
    let d = check(&def(concat!(
        "  - call: a\n    service: payment\n    operation: charge\n",
        "    compensate: { operation: refund }\n",
        "  - await: w\n    topic: t\n    event-type: E\n    correlate: event.id\n    deadline: 24h\n",
        "    on-deadline:\n      continue:\n        - emit: late\n          topic: t\n          event-type: Late\n          key: k\n",
    )))
    .unwrap_or_else(|e| panic!("{e}"));
    let StepKind::Call(c) = &d.step(0).kind else {
        panic!()
    };
    assert_eq!(c.timeout_ms, 30_000);
    assert_eq!(c.retry.max_attempts, 3);
    assert_eq!(c.bind, "a");
    let comp = c.compensate.as_ref().unwrap();
    assert_eq!(
        (comp.service.as_str(), comp.retry.max_attempts),
        ("payment", 5)
    );
    let StepKind::Await(a) = &d.step(1).kind else {
        panic!()
    };
    assert_eq!(a.deadline_ms, 24 * 3600 * 1000);
    assert!(matches!(a.on_deadline, OnDeadline::Continue(ref v) if v.len() == 1));
    assert_eq!(d.step(2).path, "w/late");
    assert_eq!(d.step_by_path("w/late"), Some(2));
}

#[test]
fn backoff_is_exponential_bounded_and_jittered_deterministically() {
    let p = RetryPolicy {
        max_attempts: 10,
        initial: Duration::from_millis(100),
        multiplier: 2.0,
        max: Duration::from_millis(1000),
        on: vec![RetryOn::Transient],
    };
    for (attempt, full) in [
        (2u32, 100u64),
        (3, 200),
        (4, 400),
        (5, 800),
        (6, 1000),
        (9, 1000),
    ] {
        let d = p.backoff_ms(attempt, "s/x/1");
        assert!(
            (full / 2..=full).contains(&d),
            "attempt {attempt}: {d} not in [{}, {full}]",
            full / 2
        );
        assert_eq!(d, p.backoff_ms(attempt, "s/x/1"), "deterministic");
    }
    let spread: BTreeSet<u64> = (0..20)
        .map(|i| p.backoff_ms(5, &format!("saga-{i}/x/1")))
        .collect();
    assert!(spread.len() > 5, "jitter spreads sagas apart: {spread:?}");
}

#[test]
fn guarded_reads_of_steps_that_may_not_have_run_are_allowed() {
    let src = def(concat!(
        "  - choice: c\n    when:\n      - if: event.total > 10\n        steps:\n",
        "          - call: fraud\n            service: fraud\n            operation: screen\n",
        "  - call: pay\n    service: payment\n    operation: charge\n",
        "    input:\n",
        "      screened: \"{{ steps.fraud is defined }}\"\n",
        "      verdict: \"{{ steps.fraud.verdict if steps.fraud is defined else 'none' }}\"\n",
        "      other: \"{{ steps.fraud | default('none') }}\"\n",
    ));
    let d = check(&src).unwrap_or_else(|e| panic!("{e}"));
    let StepKind::Call(pay) = &d.step(2).kind else {
        panic!()
    };
    let ctx = serde_json::json!({"event": {"total": 1}, "steps": {}});
    assert_eq!(
        pay.input.eval(&ctx).unwrap(),
        serde_json::json!({"screened": false, "verdict": "none", "other": "none"})
    );
    let ctx = serde_json::json!({"event": {"total": 99}, "steps": {"fraud": {"verdict": "ok"}}});
    assert_eq!(
        pay.input.eval(&ctx).unwrap()["verdict"],
        serde_json::json!("ok")
    );
    // A guard on another step does not excuse an unguarded read.
    let bad = src.replace("steps.fraud | default('none')", "steps.fraud.verdict");
    expect(&bad, DefCode::UnboundReference, 21, 7);
}

#[test]
fn saga_id_follows_from_type_and_key_only() {
    // `event` in saga-id would make awaited events unroutable by key.
    let src = "type: t\nversion: 1\ntrigger:\n  topic: orders.events\n  event-type: OrderPlaced\n  key: event.order_id\n  saga-id: \"{{ event.customer }}-{{ key }}\"\nsteps:\n  - emit: e\n    topic: t\n    event-type: E\n    key: k\n";
    let errs = check(src).expect_err("event in saga-id is rejected");
    assert!(
        errs.0.iter().any(|e| e.position.line == 7),
        "error points at trigger.saga-id:\n{errs}"
    );

    let ok = src.replace(
        "{{ event.customer }}-{{ key }}",
        "shop-{{ type }}-{{ key | hash }}",
    );
    let def = check(&ok).unwrap_or_else(|e| panic!("{e}"));
    let mut registry = DefinitionRegistry::new();
    registry.insert(def).unwrap();
    let engine = crate::Engine::new(registry);
    let trigger = crate::TriggerEvent {
        message_id: "m1".into(),
        topic: "orders.events".into(),
        event_type: "OrderPlaced".into(),
        payload: serde_json::json!({ "order_id": "o-7" }),
    };
    let (id, key) = engine.identify("t", &trigger).unwrap();
    assert_eq!(key, "o-7");
    assert_eq!(engine.saga_id_for("t", 1, "o-7").unwrap(), id);
    assert!(
        engine.saga_id_for("t", 2, "o-7").is_err(),
        "unknown version"
    );
}

#[test]
fn the_registry_says_which_topics_a_deployment_uses() {
    let reg = DefinitionRegistry::from_sources(
        [
            (
                "order-checkout.yaml",
                include_str!("../../../../topology/sagas/order-checkout.yaml"),
            ),
            (
                "customer-onboarding.yaml",
                include_str!("../../../../topology/sagas/customer-onboarding.yaml"),
            ),
        ],
        &services(),
    )
    .unwrap();
    let t = reg.topics();
    let set = |xs: &[&str]| xs.iter().map(|x| x.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(t.triggers["orders.events"], set(&["OrderPlaced"]));
    assert_eq!(t.triggers["customers.events"], set(&["CustomerSignedUp"]));
    assert_eq!(t.awaited.keys().collect::<Vec<_>>(), ["identity.events"]);
    assert_eq!(t.emitted["customers.events"], set(&["CustomerOnboarded"]));
    assert!(
        [
            "inventory",
            "fraud",
            "payment",
            "shipping",
            "crm",
            "billing",
            "workspaces"
        ]
        .iter()
        .all(|s| t.services.contains(*s)),
        "{:?}",
        t.services
    );
    assert_eq!(
        t.sources().into_iter().collect::<Vec<_>>(),
        ["customers.events", "identity.events", "orders.events"]
    );
    assert_eq!(t.domain(), t.sources(), "emits go to a topic already read");
    assert_eq!(
        t.events()["customers.events"],
        set(&["CustomerOnboarded", "CustomerSignedUp"])
    );
    assert_eq!(
        DefinitionRegistry::new().topics(),
        DeploymentTopics::default()
    );
}
