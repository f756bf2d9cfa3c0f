use sagaflow_engine::{DefinitionRegistry, SagaDefinition, ServiceCatalog};

use super::*;

const SAGA: &str = r#"type: shop
version: 1
trigger:
  topic: shop.events
  event-type: Ordered
  key: event.id
steps:
  - call: reserve
    service: stock
    operation: reserve
    input: { id: "{{ event.id }}" }
    timeout: 5s
    retry: { max-attempts: 3, initial: 100ms, max: 1s, on: [transient, timeout] }
    bind: stock
    compensate:
      operation: release
      input: { id: "{{ steps.stock.rid }}" }
  - await: paid
    topic: pay.events
    event-type: Paid
    correlate: event.id
    deadline: 1h
    on-deadline: compensate
result:
  rid: "{{ steps.stock.rid }}"
"#;

fn engine() -> Engine {
    let def = SagaDefinition::from_yaml("shop.yaml", SAGA, &ServiceCatalog::new(["stock"]))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut reg = DefinitionRegistry::new();
    reg.insert(def).unwrap();
    Engine::new(reg)
}

fn scenario(engine: &Engine, body: &str) -> Result<Scenario, String> {
    let def = engine.registry().latest("shop").unwrap();
    Scenario::parse("s.yaml", body, def)
}

fn run_ok(body: &str) -> Run {
    let engine = engine();
    let sc = scenario(&engine, body).unwrap_or_else(|e| panic!("{e}"));
    let def = engine.registry().latest("shop").unwrap();
    run(&engine, def, &sc).unwrap_or_else(|e| panic!("{e:?}"))
}

fn lines(run: &Run) -> Vec<String> {
    run.trace
        .iter()
        .map(|t| format!("{} {}", offset(t.at_ms), t.line))
        .collect()
}

#[test]
fn offsets_are_compact() {
    assert_eq!(offset(0), "+0ms");
    assert_eq!(offset(250), "+250ms");
    assert_eq!(offset(30_000), "+30s");
    assert_eq!(offset(90_200), "+1m30s200ms");
    assert_eq!(offset(24 * 3_600_000), "+24h");
}

#[test]
fn diff_marks_missing_and_extra_lines() {
    let e: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
    let a: Vec<String> = ["a", "x", "c"].map(String::from).to_vec();
    assert_eq!(diff(&e, &a), ["  a", "+ x", "- b", "  c"]);
    assert_eq!(diff(&e, &e), ["  a", "  b", "  c"]);
}

#[test]
fn retries_after_timeout_and_transient_failure_on_the_virtual_clock() {
    let run = run_ok(
        "trigger: { payload: { id: o1 } }
replies:
  stock.reserve: [no-reply, { transient: busy }, { ok: { rid: r1 }, after: 2s }]
events:
  - { event-type: Paid, at: 30m, payload: { id: o1 } }
expect: { status: completed }
",
    );
    let l = lines(&run);
    assert_eq!(l[1], "+0ms command stock.reserve (attempt 1)");
    assert_eq!(l[2], "+5s timeout stock.reserve (attempt 1)");
    assert!(l[3].starts_with("+5s backoff stock.reserve "), "{l:#?}");
    assert!(
        l.iter()
            .any(|x| x.ends_with("reply stock.reserve transient: busy"))
    );
    assert!(
        l.iter()
            .any(|x| x.ends_with("command stock.reserve (attempt 3)"))
    );
    assert_eq!(l.last().unwrap(), "+30m event Paid on pay.events");
    assert_eq!(run.status, SagaStatus::Completed);
    assert_eq!(run.result, Some(json!({ "rid": "r1" })));
}

#[test]
fn a_missing_event_lets_the_deadline_fire_and_compensate() {
    let run = run_ok(
        "trigger: { payload: { id: o2 } }
replies:
  stock.reserve: { ok: { rid: r2 } }
  stock.release: { ok: {} }
expect: { status: compensated }
",
    );
    let l = lines(&run);
    assert!(l.contains(&"+1h deadline paid".to_string()), "{l:#?}");
    assert!(l.contains(&"+1h compensate stock.release (attempt 1)".to_string()));
    assert_eq!(run.status, SagaStatus::Compensated);
}

#[test]
fn a_command_without_a_scripted_reply_is_a_script_error() {
    let engine = engine();
    let sc = scenario(
        &engine,
        "trigger: { payload: { id: o3 } }\nexpect: { status: completed }\n",
    )
    .unwrap();
    let def = engine.registry().latest("shop").unwrap();
    match run(&engine, def, &sc) {
        Err(RunError::Script(m)) => {
            assert!(m.contains("s.yaml") && m.contains("`stock.reserve`"), "{m}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn runaway_sagas_stop_at_the_limits() {
    let engine = engine();
    let def = engine.registry().latest("shop").unwrap();
    let sc = scenario(
        &engine,
        "trigger: { payload: { id: o4 } }
replies: { stock.reserve: no-reply }
limits: { max-inputs: 2 }
expect: { status: failed }
",
    )
    .unwrap();
    assert!(
        matches!(run(&engine, def, &sc), Err(RunError::Runaway(m)) if m.contains("max-inputs"))
    );
    let sc = scenario(
        &engine,
        "trigger: { payload: { id: o4 } }
replies: { stock.reserve: no-reply }
limits: { max-virtual-time: 3s }
expect: { status: failed }
",
    )
    .unwrap();
    assert!(
        matches!(run(&engine, def, &sc), Err(RunError::Runaway(m)) if m.contains("max-virtual-time"))
    );
}

#[test]
fn scenario_errors_point_at_the_place() {
    let engine = engine();
    let err = scenario(
        &engine,
        "trigger: { payload: { id: o5 } }\nreplies:\n  stock.reserv: { ok: {} }\nexpect: { status: completed }\n",
    )
    .unwrap_err();
    assert!(err.starts_with("s.yaml:3:3: "), "{err}");
    assert!(err.contains("stock.release, stock.reserve"), "{err}");

    let err = scenario(
        &engine,
        "trigger: { payload: {} }\nexpect:\n  status: done\n",
    )
    .unwrap_err();
    assert!(err.starts_with("s.yaml:3:"), "{err}");
    assert!(err.contains("completed"), "{err}");

    let err = scenario(
        &engine,
        "trigger: { payload: {} }\nreplies:\n  stock.reserve:\n    - { ok: {}, fail: no }\nexpect: { status: completed }\n",
    )
    .unwrap_err();
    assert!(err.starts_with("s.yaml:4:"), "{err}");
    assert!(err.contains("exactly one outcome"), "{err}");

    let err = scenario(
        &engine,
        "trigger: { payload: {} }\nreplies:\n  stock.reserve: { ok: {}, after: soon }\nexpect: { status: completed }\n",
    )
    .unwrap_err();
    assert!(err.contains("`soon` is not a duration"), "{err}");

    let err = scenario(&engine, "trigger: { payload: {}\n").unwrap_err();
    assert!(
        err.starts_with("s.yaml:") && err.contains("invalid YAML"),
        "{err}"
    );

    let err = scenario(
        &engine,
        "trigger: { payload: {} }\nevents:\n  - { event-type: Shipped, at: 1s }\nexpect: { status: completed }\n",
    )
    .unwrap_err();
    assert!(
        err.starts_with("s.yaml:3:") && err.contains("awaits no `Shipped`"),
        "{err}"
    );
}

#[test]
fn uncorrelated_events_are_ignored_and_shown() {
    let run = run_ok(
        "trigger: { payload: { id: o6 } }
replies:
  stock.reserve: { ok: { rid: r6 } }
  stock.release: { ok: {} }
events:
  - { event-type: Paid, at: 1m, payload: { id: other } }
expect: { status: compensated }
",
    );
    let l = lines(&run);
    assert!(
        l.iter()
            .any(|x| x.contains("(ignored: it correlates to key `other`, the saga's key is `o6`)")),
        "{l:#?}"
    );
}

#[test]
fn check_reports_every_mismatch() {
    let run = run_ok(
        "trigger: { payload: { id: o7 } }
replies:
  stock.reserve: { ok: { rid: r7 } }
  stock.release: { ok: {} }
expect: { status: compensated }
",
    );
    let expect = RawExpect {
        status: ExpectedStatus::Completed,
        path: Some(vec!["nothing".into()]),
        result: Some(json!({ "rid": "r7" })),
        emitted: Some(vec!["Shipped".into()]),
    };
    let m = check(&expect, &run);
    assert_eq!(m.len(), 4, "{m:#?}");
    assert_eq!(m[0], "status: expected completed, got compensated");
    assert!(
        m[1].contains("- nothing") && m[1].contains("+ start shop"),
        "{}",
        m[1]
    );
    assert!(m[2].starts_with("result differs"));
    assert!(m[3].contains("- expected [Shipped]"));
}
