use super::*;
use crate::definition::ServiceCatalog;
use crate::state::{Phase, Timer, TimerPurpose};

const SERVICES: &str = include_str!("../../../../topology/services.yaml");
const ORDER: &str = include_str!("../../../../topology/sagas/order-checkout.yaml");
const TRAVEL: &str = include_str!("../../../../topology/sagas/travel-booking.yaml");
const ONBOARDING: &str = include_str!("../../../../topology/sagas/customer-onboarding.yaml");

fn engine(srcs: &[&str]) -> Engine {
    let services = ServiceCatalog::from_yaml("services.yaml", SERVICES).unwrap();
    let mut reg = DefinitionRegistry::new();
    for (i, src) in srcs.iter().enumerate() {
        let def = SagaDefinition::from_yaml(&format!("def{i}.yaml"), src, &services)
            .unwrap_or_else(|e| panic!("{e}"));
        reg.insert(def).unwrap();
    }
    Engine::new(reg)
}

fn trigger(topic: &str, event_type: &str, payload: Value) -> TriggerEvent {
    TriggerEvent {
        message_id: "m-trigger".into(),
        topic: topic.into(),
        event_type: event_type.into(),
        payload,
    }
}

fn order(total: f64) -> TriggerEvent {
    trigger(
        "orders.events",
        "OrderPlaced",
        json!({"order_id": "o1", "customer_id": "c1", "items": [{"sku": "a", "qty": 1}],
               "total_cents": total, "currency": "EUR", "shipping_address": "1 Main St"}),
    )
}

fn commands(fx: &[Effect]) -> Vec<Command> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Command(c) => Some(c.clone()),
            _ => None,
        })
        .collect()
}

fn one_command(fx: &[Effect]) -> Command {
    let c = commands(fx);
    assert_eq!(c.len(), 1, "expected one command in {fx:#?}");
    c.into_iter().next().unwrap()
}

fn lifecycle(fx: &[Effect]) -> Vec<LifecycleKind> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Lifecycle(l) => Some(l.kind),
            _ => None,
        })
        .collect()
}

fn result(fx: &[Effect]) -> Option<SagaResult> {
    fx.iter().find_map(|e| match e {
        Effect::Result(r) => Some(r.clone()),
        _ => None,
    })
}

static MSG: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn reply(c: &Command, outcome: ReplyOutcome, data: Value) -> Input {
    let n = MSG.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Input::Reply(Reply {
        message_id: format!("reply-{n}"),
        command_id: c.command_id.clone(),
        outcome,
        data,
        error: (outcome != ReplyOutcome::Success).then(|| "nope".to_string()),
    })
}

fn ok(c: &Command, data: Value) -> Input {
    reply(c, ReplyOutcome::Success, data)
}

fn applied(a: &Applied) -> &[Effect] {
    assert_eq!(a.outcome, Outcome::Applied, "{a:#?}");
    &a.effects
}

fn fire(e: &Engine, st: &mut SagaState, timer_id: &str) -> Applied {
    let at = st.timers[timer_id].fire_at;
    e.apply(
        st,
        Input::TimerFired {
            timer_id: timer_id.into(),
        },
        at,
    )
}

const T0: Timestamp = Timestamp(1_000_000);

#[test]
fn order_checkout_happy_path() {
    let e = engine(&[ORDER]);
    let (mut st, fx) = e.start("order-checkout", &order(5000.0), T0).unwrap();
    assert_eq!(st.saga_id, "order-checkout:o1");
    assert_eq!(
        lifecycle(&fx),
        [LifecycleKind::Started, LifecycleKind::StepStarted]
    );
    let reserve = one_command(&fx);
    assert_eq!(reserve.command_id, "order-checkout:o1/reserve_inventory/1");
    assert_eq!(
        reserve.idempotency_key,
        "order-checkout:o1/reserve_inventory"
    );
    assert_eq!(reserve.service, "inventory");
    assert_eq!(
        reserve.input,
        json!({"order_id": "o1", "items": [{"sku": "a", "qty": 1}]})
    );
    assert_eq!(reserve.timeout_ms, 10_000);
    assert_eq!(
        st.timers().collect::<Vec<_>>(),
        [(
            "order-checkout:o1/reserve_inventory/timeout/1",
            Timestamp(T0.0 + 10_000)
        )]
    );

    // Small order: the choice takes its (empty) default, then payment.
    let a = e.apply(&mut st, ok(&reserve, json!({"reservation_id": "r1"})), T0);
    let charge = one_command(applied(&a));
    assert_eq!(charge.command_id, "order-checkout:o1/charge_payment/1");
    assert_eq!(charge.input["amount"], json!(5000.0));
    assert!(a.effects.contains(&Effect::CancelTimer {
        timer_id: "order-checkout:o1/reserve_inventory/timeout/1".into()
    }));

    let a = e.apply(&mut st, ok(&charge, json!({"payment_id": "p1"})), T0);
    let ship = one_command(applied(&a));
    assert_eq!(ship.input["reservation_id"], json!("r1"));
    let a = e.apply(&mut st, ok(&ship, json!({"tracking_number": "T1"})), T0);
    let fx = applied(&a);
    assert_eq!(st.status, SagaStatus::Completed);
    assert!(lifecycle(fx).contains(&LifecycleKind::Completed));
    let r = result(fx).unwrap();
    assert_eq!(r.status, SagaStatus::Completed);
    assert_eq!(
        r.output,
        json!({"order_id": "o1", "payment_id": "p1", "tracking_number": "T1"})
    );
    assert!(st.timers.is_empty());
    // Nothing is owed but the result.
    assert_eq!(e.pending_effects(&st), vec![Effect::Result(r)]);
}

#[test]
fn large_order_rejected_by_fraud_releases_inventory_only() {
    let e = engine(&[ORDER]);
    let (mut st, fx) = e.start("order-checkout", &order(500000.0), T0).unwrap();
    let reserve = one_command(&fx);
    let a = e.apply(&mut st, ok(&reserve, json!({"reservation_id": "r1"})), T0);
    let fraud = one_command(applied(&a));
    assert_eq!(fraud.service, "fraud");
    assert_eq!(
        fraud.command_id,
        "order-checkout:o1/screen_order/fraud_check/1"
    );
    let a = e.apply(&mut st, ok(&fraud, json!({"verdict": "reject"})), T0);
    let fx = applied(&a);
    assert_eq!(st.status, SagaStatus::Compensating);
    let release = one_command(fx);
    assert_eq!(release.kind, CommandKind::Compensation);
    assert_eq!(
        release.command_id,
        "order-checkout:o1/reserve_inventory/compensate/1"
    );
    assert_eq!(release.operation, "release");
    assert_eq!(release.input, json!({"reservation_id": "r1"}));
    let a = e.apply(&mut st, ok(&release, json!({})), T0);
    let r = result(applied(&a)).unwrap();
    assert_eq!(st.status, SagaStatus::Compensated);
    assert_eq!(
        r.output["error"],
        json!("order o1 rejected by fraud screening")
    );
    assert_eq!(
        r.output["step"],
        json!("screen_order/fraud_verdict/fraud_rejected")
    );
}

#[test]
fn large_order_accepted_by_fraud_goes_on_to_payment() {
    let e = engine(&[ORDER]);
    let (mut st, fx) = e.start("order-checkout", &order(500000.0), T0).unwrap();
    let a = e.apply(
        &mut st,
        ok(&one_command(&fx), json!({"reservation_id": "r1"})),
        T0,
    );
    let a = e.apply(
        &mut st,
        ok(&one_command(applied(&a)), json!({"verdict": "accept"})),
        T0,
    );
    assert_eq!(one_command(applied(&a)).operation, "charge");
}

#[test]
fn payment_refusal_compensates_in_reverse_order() {
    let e = engine(&[ORDER]);
    let (mut st, fx) = e.start("order-checkout", &order(5000.0), T0).unwrap();
    let a = e.apply(
        &mut st,
        ok(&one_command(&fx), json!({"reservation_id": "r1"})),
        T0,
    );
    let charge = one_command(applied(&a));
    let a = e.apply(
        &mut st,
        reply(&charge, ReplyOutcome::BusinessFailure, Value::Null),
        T0,
    );
    let fx = applied(&a);
    assert!(lifecycle(fx).starts_with(&[LifecycleKind::StepFailed, LifecycleKind::Compensating]));
    // Payment failed, so there is nothing to refund: only the release.
    assert_eq!(one_command(fx).operation, "release");
}

#[test]
fn shipping_failure_refunds_then_releases() {
    let e = engine(&[ORDER]);
    let (mut st, fx) = e.start("order-checkout", &order(5000.0), T0).unwrap();
    let a = e.apply(
        &mut st,
        ok(&one_command(&fx), json!({"reservation_id": "r1"})),
        T0,
    );
    let a = e.apply(
        &mut st,
        ok(&one_command(applied(&a)), json!({"payment_id": "p1"})),
        T0,
    );
    let ship = one_command(applied(&a));
    let a = e.apply(
        &mut st,
        reply(&ship, ReplyOutcome::BusinessFailure, Value::Null),
        T0,
    );
    let refund = one_command(applied(&a));
    assert_eq!(
        (
            refund.operation.as_str(),
            refund.input["payment_id"].clone()
        ),
        ("refund", json!("p1"))
    );
    let a = e.apply(&mut st, ok(&refund, json!({})), T0);
    let release = one_command(applied(&a));
    assert_eq!(release.operation, "release");
    let a = e.apply(&mut st, ok(&release, json!({})), T0);
    assert_eq!(result(applied(&a)).unwrap().status, SagaStatus::Compensated);
}

#[test]
fn transient_failures_retry_with_backoff_then_give_up() {
    let e = engine(&[ORDER]);
    let (mut st, fx) = e.start("order-checkout", &order(5000.0), T0).unwrap();
    let first = one_command(&fx);
    let a = e.apply(
        &mut st,
        reply(&first, ReplyOutcome::TransientFailure, Value::Null),
        T0,
    );
    let fx = applied(&a);
    assert_eq!(lifecycle(fx), [LifecycleKind::StepRetrying]);
    let backoff = "order-checkout:o1/reserve_inventory/backoff/1";
    let Some(Effect::ArmTimer {
        fire_at, purpose, ..
    }) = fx.iter().find(|f| matches!(f, Effect::ArmTimer { .. }))
    else {
        panic!("{fx:#?}")
    };
    assert_eq!(*purpose, TimerPurpose::RetryBackoff);
    // initial 200ms with jitter in [100, 200].
    assert!(
        (T0.0 + 100..=T0.0 + 200).contains(&fire_at.0),
        "{fire_at:?}"
    );
    assert!(st.timers.contains_key(backoff));
    // Firing early changes nothing.
    let early = e.apply(
        &mut st,
        Input::TimerFired {
            timer_id: backoff.into(),
        },
        T0,
    );
    assert!(matches!(early.outcome, Outcome::Stale(_)));
    let a = fire(&e, &mut st, backoff);
    let second = one_command(applied(&a));
    assert_eq!(second.command_id, "order-checkout:o1/reserve_inventory/2");
    assert_eq!(second.attempt, 2);
    // A late failure of attempt 1 is stale (its success would be the
    // step's: an_earlier_attempts_success_is_the_steps_success).
    let before = st.clone();
    let late = e.apply(
        &mut st,
        reply(&first, ReplyOutcome::TransientFailure, Value::Null),
        T0,
    );
    assert!(
        matches!(late.outcome, Outcome::Stale(ref s) if s.contains("attempt 1")),
        "{late:?}"
    );
    assert!(late.effects.is_empty());
    assert_eq!(st, before);
    // Timeout on attempt 2 → retry 3; transient on 3 → out of attempts.
    let a = fire(&e, &mut st, "order-checkout:o1/reserve_inventory/timeout/2");
    assert_eq!(
        lifecycle(applied(&a)),
        [LifecycleKind::StepTimedOut, LifecycleKind::StepRetrying]
    );
    let a = fire(&e, &mut st, "order-checkout:o1/reserve_inventory/backoff/2");
    let third = one_command(applied(&a));
    let a = e.apply(
        &mut st,
        reply(&third, ReplyOutcome::TransientFailure, Value::Null),
        T0,
    );
    let fx = applied(&a);
    // Nothing succeeded, so compensation ends at once.
    assert_eq!(st.status, SagaStatus::Compensated);
    let r = result(fx).unwrap();
    assert!(
        r.output["error"]
            .as_str()
            .unwrap()
            .contains("after 3 attempts"),
        "{r:?}"
    );
}

#[test]
fn duplicate_inputs_change_nothing() {
    let e = engine(&[ORDER]);
    let (mut st, fx) = e.start("order-checkout", &order(5000.0), T0).unwrap();
    let input = ok(&one_command(&fx), json!({"reservation_id": "r1"}));
    assert_eq!(
        e.apply(&mut st, input.clone(), T0).outcome,
        Outcome::Applied
    );
    let before = st.clone();
    let again = e.apply(&mut st, input.clone(), T0);
    assert_eq!(again.outcome, Outcome::Duplicate);
    assert!(again.effects.is_empty());
    assert_eq!(st, before);
    // The same reply under another message id is stale, not re-applied.
    let Input::Reply(mut r) = input else {
        unreachable!()
    };
    r.message_id = "other".into();
    let copy = e.apply(&mut st, Input::Reply(r), T0);
    assert!(matches!(copy.outcome, Outcome::Stale(_)), "{copy:?}");
    assert_eq!(st, before);
    // Replies for other sagas or unknown steps are stale.
    let mut foreign = one_command(
        &e.pending_effects(&st)
            .iter()
            .filter(|f| matches!(f, Effect::Command(_)))
            .cloned()
            .collect::<Vec<_>>(),
    );
    foreign.command_id = "other-saga/charge_payment/1".into();
    assert!(matches!(
        e.apply(&mut st, ok(&foreign, json!({})), T0).outcome,
        Outcome::Stale(_)
    ));
    foreign.command_id = "order-checkout:o1/nope/1".into();
    assert!(matches!(
        e.apply(&mut st, ok(&foreign, json!({})), T0).outcome,
        Outcome::Stale(_)
    ));
    assert_eq!(st, before);
}

#[test]
fn pending_effects_re_derive_commands_and_timers() {
    let e = engine(&[ORDER]);
    let (mut st, fx) = e.start("order-checkout", &order(5000.0), T0).unwrap();
    let a = e.apply(
        &mut st,
        ok(&one_command(&fx), json!({"reservation_id": "r1"})),
        T0,
    );
    let charge = one_command(applied(&a));
    let owed = e.pending_effects(&st);
    assert_eq!(
        owed,
        vec![
            Effect::Command(charge),
            Effect::ArmTimer {
                timer_id: "order-checkout:o1/charge_payment/timeout/1".into(),
                fire_at: Timestamp(T0.0 + 30_000),
                purpose: TimerPurpose::StepTimeout,
            }
        ]
    );
    // The state survives a JSON round trip and keeps working.
    let json = serde_json::to_string(&st).unwrap();
    let back: SagaState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, st);
    assert_eq!(e.pending_effects(&back), owed);
}

#[test]
fn start_checks_the_trigger_and_ids_are_deterministic() {
    let e = engine(&[ORDER]);
    let mut t = order(1.0);
    assert_eq!(
        e.identify("order-checkout", &t).unwrap(),
        ("order-checkout:o1".to_string(), "o1".to_string())
    );
    let (a, _) = e.start("order-checkout", &t, T0).unwrap();
    let (b, _) = e.start("order-checkout", &t, Timestamp(T0.0 + 5)).unwrap();
    assert_eq!(
        a.saga_id, b.saga_id,
        "a redelivered trigger maps to the same saga"
    );
    t.event_type = "OrderCancelled".into();
    assert_eq!(
        e.start("order-checkout", &t, T0).unwrap_err().code(),
        "SF-ENG-002"
    );
    assert_eq!(
        e.start("nope", &order(1.0), T0).unwrap_err().code(),
        "SF-ENG-001"
    );
    let missing_key = trigger("orders.events", "OrderPlaced", json!({"total": 1}));
    assert_eq!(
        e.start("order-checkout", &missing_key, T0)
            .unwrap_err()
            .code(),
        "SF-ENG-003"
    );
}

fn travel() -> TriggerEvent {
    trigger(
        "travel.events",
        "BookingRequested",
        json!({"booking_id": "b1", "customer_id": "c1", "email": "a@b.c", "flight": "LH1", "hotel": "H", "car": "C"}),
    )
}

#[test]
fn travel_booking_parallel_happy_path() {
    let e = engine(&[TRAVEL]);
    let (mut st, fx) = e.start("travel-booking", &travel(), T0).unwrap();
    let cmds = commands(&fx);
    assert_eq!(
        cmds.iter().map(|c| c.service.as_str()).collect::<Vec<_>>(),
        ["flights", "hotels", "cars"]
    );
    assert_eq!(
        cmds[0].command_id,
        "travel-booking:b1/reserve_trip/reserve_flight/1"
    );
    // Replies in any order; the join waits for all three.
    let a = e.apply(
        &mut st,
        ok(&cmds[2], json!({"reservation_id": "car1", "price": 30})),
        T0,
    );
    assert!(commands(applied(&a)).is_empty());
    let a = e.apply(
        &mut st,
        ok(&cmds[0], json!({"reservation_id": "fl1", "price": 300})),
        T0,
    );
    assert!(commands(applied(&a)).is_empty());
    let a = e.apply(
        &mut st,
        ok(&cmds[1], json!({"reservation_id": "ho1", "price": 100})),
        T0,
    );
    let pay = one_command(applied(&a));
    assert_eq!(pay.input["amount"], json!(430));
    let a = e.apply(&mut st, ok(&pay, json!({"payment_id": "p1"})), T0);
    let confirm = one_command(applied(&a));
    assert_eq!(
        confirm.input["booking"],
        json!("Flight fl1, hotel ho1, car car1")
    );
    let a = e.apply(&mut st, ok(&confirm, json!({})), T0);
    assert_eq!(result(applied(&a)).unwrap().output["car"], json!("car1"));
    assert_eq!(st.status, SagaStatus::Completed);
}

#[test]
fn travel_branch_failure_cancels_in_flight_and_compensates_late_success() {
    let e = engine(&[TRAVEL]);
    let (mut st, fx) = e.start("travel-booking", &travel(), T0).unwrap();
    let cmds = commands(&fx);
    let a = e.apply(
        &mut st,
        ok(&cmds[0], json!({"reservation_id": "fl1", "price": 1})),
        T0,
    );
    assert!(commands(applied(&a)).is_empty());
    // Hotel is full: flight gets cancelled; car is still in flight.
    let a = e.apply(
        &mut st,
        reply(&cmds[1], ReplyOutcome::BusinessFailure, Value::Null),
        T0,
    );
    let cancel_flight = one_command(applied(&a));
    assert_eq!(
        (
            cancel_flight.service.as_str(),
            cancel_flight.operation.as_str()
        ),
        ("flights", "cancel")
    );
    assert_eq!(
        st.steps[&e
            .registry()
            .latest("travel-booking")
            .unwrap()
            .step_by_path("reserve_trip/reserve_car")
            .unwrap()]
            .phase,
        Phase::Abandoned
    );
    let a = e.apply(&mut st, ok(&cancel_flight, json!({})), T0);
    // Still waiting for the car's fate.
    assert!(applied(&a).iter().all(|f| !matches!(f, Effect::Result(_))));
    assert_eq!(st.status, SagaStatus::Compensating);
    // The car reservation succeeds late: it is cancelled too.
    let a = e.apply(&mut st, ok(&cmds[2], json!({"reservation_id": "car1"})), T0);
    let cancel_car = one_command(applied(&a));
    assert_eq!(cancel_car.input, json!({"reservation_id": "car1"}));
    let a = e.apply(&mut st, ok(&cancel_car, json!({})), T0);
    assert_eq!(result(applied(&a)).unwrap().status, SagaStatus::Compensated);
    assert!(st.timers.is_empty(), "{:?}", st.timers);
}

/// A command abandoned in flight whose timeout passes may still have been
/// carried out by a slow backend: as after a last attempt's timeout, a
/// success within one more timeout is undone, and the saga ends only once
/// that window is over. (Before 2026-12-04 the saga ended at the timeout,
/// and a success a moment later was left in place: the simulation's
/// "nothing that succeeded is left behind" found it.)
#[test]
fn an_abandoned_command_that_times_out_waits_one_more_timeout_for_a_late_success() {
    let e = engine(&[TRAVEL]);
    let (mut st, fx) = e.start("travel-booking", &travel(), T0).unwrap();
    let cmds = commands(&fx);
    // The hotel is full: the flight and the car are abandoned in flight.
    let a = e.apply(
        &mut st,
        reply(&cmds[1], ReplyOutcome::BusinessFailure, Value::Null),
        T0,
    );
    assert!(commands(applied(&a)).is_empty());
    for step in ["reserve_flight", "reserve_car"] {
        let timer = format!("travel-booking:b1/reserve_trip/{step}/timeout/1");
        let a = fire(&e, &mut st, &timer);
        assert!(result(applied(&a)).is_none(), "{step}: {a:?}");
        let late = format!("travel-booking:b1/reserve_trip/{step}/late/1");
        assert_eq!(
            st.timers[&late].fire_at,
            Timestamp(T0.0 + 2 * 15_000),
            "one more step timeout"
        );
    }
    // The car was reserved after all, within its window: it is cancelled,
    // once the flight's window is over too (a late success is undone
    // before the rest, so the rest waits for every open window).
    let a = e.apply(&mut st, ok(&cmds[2], json!({"reservation_id": "car1"})), T0);
    assert!(commands(applied(&a)).is_empty(), "{a:?}");
    let a = fire(
        &e,
        &mut st,
        "travel-booking:b1/reserve_trip/reserve_flight/late/1",
    );
    let cancel_car = one_command(applied(&a));
    assert_eq!(cancel_car.kind, CommandKind::Compensation);
    assert_eq!(cancel_car.input, json!({"reservation_id": "car1"}));
    let a = e.apply(&mut st, ok(&cancel_car, json!({})), T0);
    assert_eq!(result(applied(&a)).unwrap().status, SagaStatus::Compensated);
    assert!(st.timers.is_empty(), "{:?}", st.timers);
    // A success after the window changes nothing.
    let after = e.apply(&mut st, ok(&cmds[0], json!({"reservation_id": "fl1"})), T0);
    assert!(matches!(after.outcome, Outcome::Stale(_)), "{after:?}");
}

fn signup() -> TriggerEvent {
    trigger(
        "customers.events",
        "CustomerSignedUp",
        json!({"customer_id": "cu1", "name": "Ada", "email": "ada@x", "plan": "pro"}),
    )
}

fn onboard_to_await(e: &Engine) -> SagaState {
    let (mut st, fx) = e.start("customer-onboarding", &signup(), T0).unwrap();
    let a = e.apply(
        &mut st,
        ok(&one_command(&fx), json!({"account_id": "crm1"})),
        T0,
    );
    let billing = one_command(applied(&a));
    assert_eq!(
        billing.input,
        json!({"CustomerRef": "cu1", "CrmAccount": "crm1", "Plan": "pro"})
    );
    let a = e.apply(&mut st, ok(&billing, json!({"account_number": "B-1"})), T0);
    let a = e.apply(
        &mut st,
        ok(&one_command(applied(&a)), json!({"workspace_id": "w1"})),
        T0,
    );
    let fx = applied(&a);
    assert!(commands(fx).is_empty());
    assert!(fx.contains(&Effect::ArmTimer {
        timer_id: "customer-onboarding:cu1/email_verified/deadline/1".into(),
        fire_at: Timestamp(T0.0 + 24 * 3600 * 1000),
        purpose: TimerPurpose::AwaitDeadline,
    }));
    st
}

fn verified(id: &str, customer: &str) -> Input {
    Input::Event(AwaitedEvent {
        message_id: id.into(),
        topic: "identity.events".into(),
        event_type: "EmailVerified".into(),
        payload: json!({"customer_id": customer, "verified_at": "2026-01-01T00:00:00Z"}),
    })
}

#[test]
fn onboarding_await_then_emit() {
    let e = engine(&[ONBOARDING]);
    let mut st = onboard_to_await(&e);
    let corr = e.correlate(
        "identity.events",
        "EmailVerified",
        &json!({"customer_id": "cu1"}),
    );
    assert_eq!(corr.len(), 1);
    assert_eq!(
        (corr[0].key.as_str(), corr[0].step.as_str()),
        ("cu1", "email_verified")
    );
    let other = e.apply(&mut st, verified("e0", "someone-else"), T0);
    assert!(matches!(other.outcome, Outcome::Stale(_)));
    let a = e.apply(&mut st, verified("e1", "cu1"), T0);
    let fx = applied(&a);
    let emitted = fx
        .iter()
        .find_map(|f| match f {
            Effect::Emit(d) => Some(d.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(emitted.event_id, "customer-onboarding:cu1/announce");
    assert_eq!(
        (
            emitted.topic.as_str(),
            emitted.event_type.as_str(),
            emitted.key.as_str()
        ),
        ("customers.events", "CustomerOnboarded", "cu1")
    );
    assert_eq!(
        emitted.payload["onboarded_at"],
        json!("2026-01-01T00:00:00Z")
    );
    assert_eq!(emitted.payload["billing_account"], json!("B-1"));
    assert!(fx.contains(&Effect::CancelTimer {
        timer_id: "customer-onboarding:cu1/email_verified/deadline/1".into()
    }));
    assert_eq!(st.status, SagaStatus::Completed);
}

#[test]
fn onboarding_deadline_compensates_everything_in_reverse() {
    let e = engine(&[ONBOARDING]);
    let mut st = onboard_to_await(&e);
    let a = fire(
        &e,
        &mut st,
        "customer-onboarding:cu1/email_verified/deadline/1",
    );
    let mut ops = vec![];
    let mut cmd = one_command(applied(&a));
    loop {
        ops.push(format!("{}.{}", cmd.service, cmd.operation));
        let a = e.apply(&mut st, ok(&cmd, json!({})), T0);
        match commands(applied(&a)).pop() {
            Some(c) => cmd = c,
            None => break,
        }
    }
    assert_eq!(
        ops,
        [
            "workspaces.deprovision",
            "billing.CloseAccount",
            "crm.delete-account"
        ]
    );
    assert_eq!(st.status, SagaStatus::Compensated);
    // The event arriving after the deadline is stale.
    let late = e.apply(&mut st, verified("e-late", "cu1"), T0);
    assert!(matches!(late.outcome, Outcome::Stale(_)));
}

const AWAIT_FAIL: &str = "type: wait\nversion: 1\ntrigger:\n  topic: t\n  event-type: Go\n  key: event.id\nsteps:\n  - await: ack\n    topic: t\n    event-type: Ack\n    correlate: event.id\n    deadline: 1m\n    on-deadline: fail\n  - emit: done\n    topic: t\n    event-type: Done\n    key: \"{{ saga.key }}\"\n    payload: { ack: \"{{ steps.ack.n }}\" }\n";

#[test]
fn await_deadline_fail_then_operator_retry_rearms() {
    let e = engine(&[AWAIT_FAIL]);
    let (mut st, _) = e
        .start("wait", &trigger("t", "Go", json!({"id": "k"})), T0)
        .unwrap();
    let a = fire(&e, &mut st, "wait:k/ack/deadline/1");
    let fx = applied(&a);
    assert_eq!(st.status, SagaStatus::Failed);
    assert_eq!(result(fx).unwrap().status, SagaStatus::Failed);
    // Abort of a saga that failed going forward compensates (nothing here).
    let a = e.apply(
        &mut st,
        Input::Abort {
            request_id: "x".into(),
            reason: "r".into(),
        },
        T0,
    );
    assert_eq!(result(applied(&a)).unwrap().status, SagaStatus::Compensated);
    let e2 = engine(&[AWAIT_FAIL]);
    let (mut st, _) = e2
        .start("wait", &trigger("t", "Go", json!({"id": "k"})), T0)
        .unwrap();
    fire(&e2, &mut st, "wait:k/ack/deadline/1");
    let a = e2.apply(
        &mut st,
        Input::Retry {
            request_id: "op-1".into(),
        },
        Timestamp(T0.0 + 120_000),
    );
    let fx = applied(&a);
    assert_eq!(st.status, SagaStatus::Running);
    assert!(lifecycle(fx).contains(&LifecycleKind::Resumed));
    assert!(st.timers.contains_key("wait:k/ack/deadline/2"));
    let a = e2.apply(
        &mut st,
        Input::Event(AwaitedEvent {
            message_id: "ev".into(),
            topic: "t".into(),
            event_type: "Ack".into(),
            payload: json!({"id": "k", "n": 7}),
        }),
        T0,
    );
    let fx = applied(&a);
    assert!(
        fx.iter()
            .any(|f| matches!(f, Effect::Emit(d) if d.payload == json!({"ack": 7})))
    );
    assert_eq!(st.status, SagaStatus::Completed);
}

#[test]
fn await_deadline_continue_path() {
    let src = AWAIT_FAIL
        .replace("    on-deadline: fail\n", "    on-deadline:\n      continue:\n        - emit: nudge\n          topic: t\n          event-type: Nudge\n          key: k\n          payload: {}\n")
        .replace("payload: { ack: \"{{ steps.ack.n }}\" }", "payload: {}");
    let e = engine(&[&src]);
    let (mut st, _) = e
        .start("wait", &trigger("t", "Go", json!({"id": "k"})), T0)
        .unwrap();
    let a = fire(&e, &mut st, "wait:k/ack/deadline/1");
    let emitted: Vec<_> = applied(&a)
        .iter()
        .filter_map(|f| match f {
            Effect::Emit(d) => Some(d.event_type.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(emitted, ["Nudge", "Done"]);
    assert_eq!(st.status, SagaStatus::Completed);
}

#[test]
fn operator_requests_are_checked() {
    let e = engine(&[ORDER]);
    let (mut st, fx) = e.start("order-checkout", &order(5000.0), T0).unwrap();
    let before = st.clone();
    let r = e.apply(
        &mut st,
        Input::Retry {
            request_id: "op".into(),
        },
        T0,
    );
    assert!(
        matches!(r.outcome, Outcome::Rejected(ref err) if err.code() == "SF-ENG-004"),
        "{r:?}"
    );
    assert_eq!(st, before);
    // Abort a running saga: the reservation in flight is awaited, then released.
    let a = e.apply(
        &mut st,
        Input::Abort {
            request_id: "op-abort".into(),
            reason: "customer called".into(),
        },
        T0,
    );
    assert!(lifecycle(applied(&a)).contains(&LifecycleKind::Aborted));
    assert_eq!(st.status, SagaStatus::Compensating);
    let a = e.apply(
        &mut st,
        ok(&one_command(&fx), json!({"reservation_id": "r1"})),
        T0,
    );
    let release = one_command(applied(&a));
    assert_eq!(release.operation, "release");
    let a = e.apply(&mut st, ok(&release, json!({})), T0);
    let r = result(applied(&a)).unwrap();
    assert!(
        r.output["error"]
            .as_str()
            .unwrap()
            .contains("customer called")
    );
    let again = e.apply(
        &mut st,
        Input::Abort {
            request_id: "op-abort-2".into(),
            reason: "x".into(),
        },
        T0,
    );
    assert!(matches!(again.outcome, Outcome::Rejected(_)));
    assert_eq!(
        e.apply(
            &mut st,
            Input::Abort {
                request_id: "op-abort".into(),
                reason: "x".into()
            },
            T0
        )
        .outcome,
        Outcome::Duplicate
    );
}

const EXPR_FAIL: &str = "type: x\nversion: 1\ntrigger:\n  topic: t\n  event-type: Go\n  key: event.id\nsteps:\n  - call: a\n    service: payment\n    operation: charge\n    compensate: { operation: refund }\n  - call: b\n    service: shipping\n    operation: ship\n    input: { to: \"{{ event.address.street }}\" }\n";

#[test]
fn runtime_expression_errors_fail_the_saga_and_abort_compensates() {
    let e = engine(&[EXPR_FAIL]);
    let (mut st, fx) = e
        .start("x", &trigger("t", "Go", json!({"id": "k"})), T0)
        .unwrap();
    let a = e.apply(&mut st, ok(&one_command(&fx), json!({})), T0);
    let fx = applied(&a);
    assert_eq!(st.status, SagaStatus::Failed);
    let reason = &st.failure.as_ref().unwrap().reason;
    assert!(reason.contains("event.address.street"), "{reason}");
    assert!(lifecycle(fx).ends_with(&[LifecycleKind::StepFailed, LifecycleKind::Failed]));
    // Retry re-evaluates and fails again (same data), with a new attempt.
    let a = e.apply(
        &mut st,
        Input::Retry {
            request_id: "r1".into(),
        },
        T0,
    );
    assert!(lifecycle(applied(&a)).contains(&LifecycleKind::Failed));
    assert_eq!(st.steps[&1].attempt, 2);
    // Abort compensates what succeeded.
    let a = e.apply(
        &mut st,
        Input::Abort {
            request_id: "a1".into(),
            reason: "bad data".into(),
        },
        T0,
    );
    let refund = one_command(applied(&a));
    assert_eq!(refund.operation, "refund");
    let a = e.apply(&mut st, ok(&refund, json!({})), T0);
    assert_eq!(result(applied(&a)).unwrap().status, SagaStatus::Compensated);
}

#[test]
fn failed_compensation_fails_the_saga_and_retry_resumes_it() {
    let e = engine(&[EXPR_FAIL]);
    let (mut st, fx) = e
        .start(
            "x",
            &trigger("t", "Go", json!({"id": "k", "address": {"street": "s"}})),
            T0,
        )
        .unwrap();
    let a = e.apply(&mut st, ok(&one_command(&fx), json!({})), T0);
    let ship = one_command(applied(&a));
    let a = e.apply(
        &mut st,
        reply(&ship, ReplyOutcome::BusinessFailure, Value::Null),
        T0,
    );
    let refund = one_command(applied(&a));
    let a = e.apply(
        &mut st,
        reply(&refund, ReplyOutcome::BusinessFailure, Value::Null),
        T0,
    );
    let fx = applied(&a);
    assert_eq!(st.status, SagaStatus::Failed);
    assert!(lifecycle(fx).contains(&LifecycleKind::CompensationStepFailed));
    // Abort is not allowed while a compensation has failed; retry is.
    assert!(matches!(
        e.apply(
            &mut st,
            Input::Abort {
                request_id: "a".into(),
                reason: "x".into()
            },
            T0
        )
        .outcome,
        Outcome::Rejected(_)
    ));
    let a = e.apply(
        &mut st,
        Input::Retry {
            request_id: "r".into(),
        },
        T0,
    );
    let refund2 = one_command(applied(&a));
    assert_eq!(refund2.command_id, "x:k/a/compensate/2");
    assert_eq!(refund2.idempotency_key, refund.idempotency_key);
    let a = e.apply(&mut st, ok(&refund2, json!({})), T0);
    assert_eq!(result(applied(&a)).unwrap().status, SagaStatus::Compensated);
}

#[test]
fn compensation_retries_transient_failures_and_timeouts() {
    let e = engine(&[EXPR_FAIL]);
    let (mut st, fx) = e
        .start(
            "x",
            &trigger("t", "Go", json!({"id": "k", "address": {"street": "s"}})),
            T0,
        )
        .unwrap();
    let a = e.apply(&mut st, ok(&one_command(&fx), json!({})), T0);
    let ship = one_command(applied(&a));
    let a = e.apply(
        &mut st,
        reply(&ship, ReplyOutcome::BusinessFailure, Value::Null),
        T0,
    );
    let refund = one_command(applied(&a));
    let a = e.apply(
        &mut st,
        reply(&refund, ReplyOutcome::TransientFailure, Value::Null),
        T0,
    );
    assert!(lifecycle(applied(&a)).contains(&LifecycleKind::CompensationStepRetrying));
    let a = fire(&e, &mut st, "x:k/a/compensate/backoff/1");
    let refund2 = one_command(applied(&a));
    assert_eq!(refund2.attempt, 2);
    let a = fire(&e, &mut st, "x:k/a/compensate/timeout/2");
    assert!(lifecycle(applied(&a)).contains(&LifecycleKind::CompensationStepRetrying));
    let a = fire(&e, &mut st, "x:k/a/compensate/backoff/2");
    let refund3 = one_command(applied(&a));
    let a = e.apply(&mut st, ok(&refund3, json!({})), T0);
    assert_eq!(result(applied(&a)).unwrap().status, SagaStatus::Compensated);
}

#[test]
fn a_running_saga_stays_on_its_definition_version() {
    let v1 = EXPR_FAIL;
    let v2 = EXPR_FAIL
        .replace("version: 1", "version: 2")
        .replace("operation: ship", "operation: ship-v2");
    let old = engine(&[v1]);
    let (mut st, fx) = old
        .start(
            "x",
            &trigger("t", "Go", json!({"id": "k", "address": {"street": "s"}})),
            T0,
        )
        .unwrap();
    let both = engine(&[v1, &v2]);
    let a = both.apply(&mut st, ok(&one_command(&fx), json!({})), T0);
    let ship = one_command(applied(&a));
    assert_eq!((ship.operation.as_str(), ship.saga_version), ("ship", 1));
    let (fresh, fx) = both
        .start(
            "x",
            &trigger("t", "Go", json!({"id": "k2", "address": {"street": "s"}})),
            T0,
        )
        .unwrap();
    assert_eq!(fresh.saga_version, 2);
    assert_eq!(one_command(&fx).saga_version, 2);
    // Without its version the state cannot move.
    let only_v2 = engine(&[&v2]);
    let r = only_v2.apply(&mut st, ok(&ship, json!({})), T0);
    assert!(matches!(r.outcome, Outcome::Rejected(ref e) if e.code() == "SF-ENG-001"));
}

#[test]
fn finish_ends_early_and_cancelled_timers_are_stale() {
    let src = "type: f\nversion: 1\ntrigger:\n  topic: t\n  event-type: Go\n  key: event.id\nsteps:\n  - call: a\n    service: payment\n    operation: charge\n  - choice: c\n    when:\n      - if: steps.a.done\n        steps:\n          - finish: early\n  - emit: e\n    topic: t\n    event-type: E\n    key: k\nresult:\n  early: true\n";
    let e = engine(&[src]);
    let (mut st, fx) = e
        .start("f", &trigger("t", "Go", json!({"id": "k"})), T0)
        .unwrap();
    let a = e.apply(&mut st, ok(&one_command(&fx), json!({"done": true})), T0);
    let fx = applied(&a);
    assert!(fx.iter().all(|f| !matches!(f, Effect::Emit(_))));
    assert_eq!(result(fx).unwrap().output, json!({"early": true}));
    let stale = e.apply(
        &mut st,
        Input::TimerFired {
            timer_id: "f:k/a/timeout/1".into(),
        },
        Timestamp(u64::MAX),
    );
    assert!(matches!(stale.outcome, Outcome::Stale(ref s) if s.contains("not armed")));
}

#[test]
fn state_rejects_unknown_schema_versions() {
    let e = engine(&[ORDER]);
    let (mut st, _) = e.start("order-checkout", &order(1.0), T0).unwrap();
    st.version = 99;
    let r = e.apply(
        &mut st,
        Input::Retry {
            request_id: "x".into(),
        },
        T0,
    );
    assert!(matches!(r.outcome, Outcome::Rejected(ref e) if e.code() == "SF-ENG-005"));
}

#[test]
fn state_that_does_not_fit_its_definition_is_rejected() {
    let e = engine(&[ORDER]);
    let (mut st, _) = e.start("order-checkout", &order(1.0), T0).unwrap();
    st.steps.insert(999, st.steps[&0].clone());
    let r = e.apply(
        &mut st,
        Input::Retry {
            request_id: "x".into(),
        },
        T0,
    );
    assert!(
        matches!(r.outcome, Outcome::Rejected(ref e) if e.code() == "SF-ENG-006"),
        "{r:?}"
    );
    assert!(e.pending_effects(&st).is_empty());
}

#[test]
fn registry_from_sources_collects_errors_of_all_files() {
    let services = ServiceCatalog::from_yaml("services.yaml", SERVICES).unwrap();
    let reg = DefinitionRegistry::from_sources([("a.yaml", ORDER), ("b.yaml", TRAVEL)], &services)
        .unwrap();
    assert_eq!(reg.iter().count(), 2);
    let bad = ORDER.replace("service: payment", "service: paypal");
    let errs = DefinitionRegistry::from_sources(
        [
            ("a.yaml", bad.as_str()),
            ("b.yaml", ORDER),
            ("c.yaml", ORDER),
        ],
        &services,
    )
    .unwrap_err();
    assert!(errs.has(crate::DefCode::UnknownService));
    assert!(errs.has(crate::DefCode::DuplicateDefinition));
    assert_eq!(
        errs.find(crate::DefCode::UnknownService).unwrap().file,
        "a.yaml"
    );
}

#[test]
fn saga_ids_can_be_hashed() {
    let src = ORDER.replace(
        "saga-id: \"order-checkout:{{ key }}\"",
        "saga-id: \"{{ type }}-{{ key | hash }}\"",
    );
    let e = engine(&[&src]);
    let (id, key) = e.identify("order-checkout", &order(1.0)).unwrap();
    assert_eq!(key, "o1");
    assert_eq!(id, format!("order-checkout-{:016x}", crate::fnv1a(b"o1")));
}

#[test]
fn an_event_that_comes_before_its_await_is_kept_for_it() {
    let e = engine(&[ONBOARDING]);
    let (mut st, fx) = e.start("customer-onboarding", &signup(), T0).unwrap();
    // The customer verifies the e-mail while the CRM call is still running.
    let a = e.apply(&mut st, verified("early", "cu1"), T0);
    assert!(applied(&a).is_empty());
    assert_eq!(
        e.apply(&mut st, verified("early", "cu1"), T0).outcome,
        Outcome::Duplicate
    );
    // Another copy under a new id is not kept twice.
    assert!(matches!(
        e.apply(&mut st, verified("early-2", "cu1"), T0).outcome,
        Outcome::Stale(_)
    ));
    let a = e.apply(
        &mut st,
        ok(&one_command(&fx), json!({"account_id": "crm1"})),
        T0,
    );
    let a = e.apply(
        &mut st,
        ok(&one_command(applied(&a)), json!({"account_number": "B-1"})),
        T0,
    );
    let a = e.apply(
        &mut st,
        ok(&one_command(applied(&a)), json!({"workspace_id": "w1"})),
        T0,
    );
    let fx = applied(&a);
    // No deadline is armed: the await completes at once and the saga ends.
    assert!(!fx.iter().any(|f| matches!(f, Effect::ArmTimer { .. })));
    assert!(fx.iter().any(|f| matches!(f, Effect::Emit(_))));
    assert_eq!(st.status, SagaStatus::Completed);
    assert!(st.early.is_empty());
}

#[test]
fn slashes_in_saga_ids_are_escaped() {
    let e = engine(&[ORDER]);
    let mut t = order(1.0);
    t.payload["order_id"] = json!("a/b%c");
    let (id, key) = e.identify("order-checkout", &t).unwrap();
    assert_eq!(
        (id.as_str(), key.as_str()),
        ("order-checkout:a%2Fb%25c", "a/b%c")
    );
    assert_eq!(e.saga_id_for("order-checkout", 1, "a/b%c").unwrap(), id);
    let (mut st, fx) = e.start("order-checkout", &t, T0).unwrap();
    let c = one_command(&fx);
    assert_eq!(c.command_id, "order-checkout:a%2Fb%25c/reserve_inventory/1");
    assert_eq!(
        e.apply(&mut st, ok(&c, json!({"reservation_id": "r"})), T0)
            .outcome,
        Outcome::Applied
    );
}

#[test]
fn engine_and_state_can_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Engine>();
    send_sync::<SagaState>();
    send_sync::<Effect>();
    let e = std::sync::Arc::new(engine(&[ORDER]));
    let handle = {
        let e = e.clone();
        std::thread::spawn(move || e.start("order-checkout", &order(1.0), T0).unwrap().0)
    };
    let st = handle.join().unwrap();
    assert_eq!(st.saga_id, "order-checkout:o1");
}

// ------------------------------------------------------ step data in events

fn events(fx: &[Effect]) -> Vec<LifecycleEvent> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Lifecycle(l) => Some(l.clone()),
            _ => None,
        })
        .collect()
}

/// The order checkout with sensitive paths and search attributes.
fn order_with_data_keys() -> String {
    ORDER
        .replacen(
            "sensitive: [shipping_address]\n",
            "sensitive: [shipping_address, customer.email]\n",
            1,
        )
        .replacen(
            "search-attributes:\n",
            "search-attributes:\n  missing: event.nothing.here\n",
            1,
        )
}

#[test]
fn events_carry_step_input_output_and_error_with_sensitive_fields_redacted() {
    let src = order_with_data_keys().replacen(
        "    operation: charge\n",
        "    operation: charge\n    sensitive: [card_number]\n",
        1,
    );
    let e = engine(&[&src]);
    let mut t = order(5000.0);
    t.payload["customer"] = json!({"email": "ada@example.com"});
    let (mut st, fx) = e.start("order-checkout", &t, T0).unwrap();
    let ev = events(&fx);
    // Started: the trigger, redacted, and the search attributes.
    assert_eq!(ev[0].kind, LifecycleKind::Started);
    let input = ev[0].input.as_ref().unwrap();
    assert_eq!(input["shipping_address"], json!(crate::data::REDACTED));
    assert_eq!(input["customer"]["email"], json!(crate::data::REDACTED));
    assert_eq!(input["order_id"], json!("o1"));
    assert_eq!(ev[0].attributes.get("customer_id").unwrap(), "c1");
    assert_eq!(ev[0].attributes.get("key").unwrap(), "o1");
    assert_eq!(ev[0].attributes.get("total_cents").unwrap(), "5000.0");
    assert!(!ev[0].attributes.contains_key("missing"));
    // StepStarted: the command's input.
    assert_eq!(ev[1].kind, LifecycleKind::StepStarted);
    let reserve = one_command(&fx);
    assert_eq!(ev[1].input.as_ref(), Some(&reserve.input));

    // StepSucceeded: the reply's data.
    let a = e.apply(&mut st, ok(&reserve, json!({"reservation_id": "r1"})), T0);
    let ev = events(applied(&a));
    assert_eq!(ev[0].kind, LifecycleKind::StepSucceeded);
    assert_eq!(ev[0].output, Some(json!({"reservation_id": "r1"})));
    let charge = one_command(&a.effects);
    // The charge fails for good: the error body is on StepFailed, with the
    // step's own sensitive path redacted; its input is on StepStarted.
    let a = e.apply(
        &mut st,
        reply(
            &charge,
            ReplyOutcome::BusinessFailure,
            json!({"card_number": "4111111111111111", "why": "declined"}),
        ),
        T0,
    );
    let ev = events(applied(&a));
    let failed = ev
        .iter()
        .find(|l| l.kind == LifecycleKind::StepFailed)
        .unwrap();
    let error = failed.error.as_ref().unwrap();
    assert_eq!(error["message"], json!("nope"));
    assert_eq!(error["data"]["why"], json!("declined"));
    assert_eq!(error["data"]["card_number"], json!(crate::data::REDACTED));
    // The compensation of the reservation carries its input.
    let comp = ev
        .iter()
        .find(|l| l.kind == LifecycleKind::CompensationStepStarted)
        .unwrap();
    assert_eq!(comp.input, Some(json!({"reservation_id": "r1"})));
    let text = serde_json::to_string(&a.effects).unwrap();
    assert!(!text.contains("4111111111111111"), "{text}");
}

#[test]
fn a_large_output_is_truncated_with_a_marker() {
    let e = engine(&[ORDER]);
    let (mut st, fx) = e.start("order-checkout", &order(5000.0), T0).unwrap();
    let reserve = one_command(&fx);
    let big = json!({"reservation_id": "r1", "blob": "z".repeat(200_000)});
    let a = e.apply(&mut st, ok(&reserve, big.clone()), T0);
    let ev = events(applied(&a));
    let out = ev[0].output.as_ref().unwrap();
    assert_eq!(out["$truncated"], json!(true));
    assert!(out.to_string().len() <= crate::data::MAX_DATA_BYTES);
    // The saga itself keeps the whole reply.
    assert_eq!(st.data["reservation"], big);
}

#[test]
fn bad_sensitive_paths_and_attribute_names_are_definition_errors() {
    let services = ServiceCatalog::from_yaml("services.yaml", SERVICES).unwrap();
    let src = ORDER
        .replacen("sensitive: [shipping_address]", "sensitive: [\"a..b\"]", 1)
        .replacen(
            "search-attributes:\n",
            "search-attributes:\n  Bad-Name: event.order_id\n  key: event.order_id\n",
            1,
        );
    let err = SagaDefinition::from_yaml("o.yaml", &src, &services)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`a..b` is not a field path"), "{err}");
    assert!(err.contains("search attribute `Bad-Name`"), "{err}");
    assert!(err.contains("search attribute `key` is reserved"), "{err}");
}

#[test]
fn a_result_leaves_with_the_saga_level_sensitive_paths_redacted() {
    let e = engine(&[&order_with_data_keys()]);
    let def = e.registry().latest("order-checkout").unwrap();
    let out = super::result_output(
        def,
        json!({"order_id": "o1", "customer": {"email": "ada@example.com"}, "shipping_address": {"city": "B"}}),
    );
    assert_eq!(out["order_id"], json!("o1"));
    assert_eq!(out["customer"]["email"], json!(crate::data::REDACTED));
    assert_eq!(out["shipping_address"], json!(crate::data::REDACTED));
}

/// The order checkout with a saga-level deadline (and `on-deadline`).
fn order_with_deadline(extra: &str) -> String {
    ORDER.replacen(
        "version: 1\n",
        &format!("version: 1\ndeadline: 1m\n{extra}"),
        1,
    )
}

const SAGA_DEADLINE: &str = "order-checkout:o1/saga-deadline";

#[test]
fn saga_deadline_fires_and_compensates() {
    let e = engine(&[&order_with_deadline("")]);
    let (mut st, fx) = e.start("order-checkout", &order(5000.0), T0).unwrap();
    assert!(fx.contains(&Effect::ArmTimer {
        timer_id: SAGA_DEADLINE.into(),
        fire_at: Timestamp(T0.0 + 60_000),
        purpose: TimerPurpose::SagaDeadline,
    }));
    let a = e.apply(
        &mut st,
        ok(&one_command(&fx), json!({"reservation_id": "r1"})),
        T0,
    );
    let charge = one_command(applied(&a));
    // Too early: the deadline is not due yet.
    let early = e.apply(
        &mut st,
        Input::TimerFired {
            timer_id: SAGA_DEADLINE.into(),
        },
        T0,
    );
    assert!(matches!(early.outcome, Outcome::Stale(_)), "{early:?}");

    let a = fire(&e, &mut st, SAGA_DEADLINE);
    let fx = applied(&a);
    assert_eq!(st.status, SagaStatus::Compensating);
    assert_eq!(lifecycle(fx)[0], LifecycleKind::Compensating);
    let Effect::Lifecycle(comp) = &fx[0] else {
        panic!("{fx:#?}")
    };
    assert_eq!(comp.step, None);
    assert!(
        comp.detail.as_deref().unwrap().contains("saga deadline"),
        "{comp:?}"
    );
    // The reservation is released; the payment in flight is abandoned
    // (its timeout stays armed so a late success is undone too).
    assert_eq!(one_command(fx).operation, "release");
    let def = e.registry().latest("order-checkout").unwrap();
    let charge_id = def.step_by_path(&charge.step).unwrap();
    assert_eq!(st.steps[&charge_id].phase, Phase::Abandoned);
    assert!(
        st.timers
            .contains_key("order-checkout:o1/charge_payment/timeout/1")
    );
    assert!(!st.timers.contains_key(SAGA_DEADLINE));
}

#[test]
fn saga_deadline_fail_stops_for_an_operator() {
    let e = engine(&[&order_with_deadline("on-deadline: fail\n")]);
    let (mut st, _) = e.start("order-checkout", &order(5000.0), T0).unwrap();
    let a = fire(&e, &mut st, SAGA_DEADLINE);
    let fx = applied(&a);
    assert_eq!(st.status, SagaStatus::Failed);
    assert_eq!(lifecycle(fx).last(), Some(&LifecycleKind::Failed));
    assert!(
        st.failure
            .as_ref()
            .unwrap()
            .reason
            .contains("saga deadline")
    );
    assert_eq!(result(fx).unwrap().status, SagaStatus::Failed);
}

#[test]
fn saga_deadline_is_cancelled_when_the_saga_ends_first() {
    let e = engine(&[&order_with_deadline("")]);
    let (mut st, fx) = e.start("order-checkout", &order(5000.0), T0).unwrap();
    let a = e.apply(
        &mut st,
        ok(&one_command(&fx), json!({"reservation_id": "r1"})),
        T0,
    );
    let a = e.apply(
        &mut st,
        ok(&one_command(applied(&a)), json!({"payment_id": "p1"})),
        T0,
    );
    let a = e.apply(
        &mut st,
        ok(&one_command(applied(&a)), json!({"tracking_number": "T1"})),
        T0,
    );
    let fx = applied(&a);
    assert_eq!(st.status, SagaStatus::Completed);
    assert!(fx.contains(&Effect::CancelTimer {
        timer_id: SAGA_DEADLINE.into()
    }));
    assert!(st.timers.is_empty(), "{:?}", st.timers);
    // A deadline that fires anyway (a runtime that missed the cancel)
    // changes nothing.
    let late = e.apply(
        &mut st,
        Input::TimerFired {
            timer_id: SAGA_DEADLINE.into(),
        },
        Timestamp(T0.0 + 60_000),
    );
    assert!(matches!(late.outcome, Outcome::Stale(_)), "{late:?}");
    assert_eq!(st.status, SagaStatus::Completed);
}

#[test]
fn saga_deadline_survives_a_state_round_trip() {
    let e = engine(&[&order_with_deadline("")]);
    let (st, _) = e.start("order-checkout", &order(5000.0), T0).unwrap();
    let json = serde_json::to_string(&st).unwrap();
    let mut back: SagaState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, st);
    assert_eq!(
        back.timers[SAGA_DEADLINE],
        Timer {
            fire_at: Timestamp(T0.0 + 60_000),
            purpose: TimerPurpose::SagaDeadline,
            step: None,
            attempt: 0,
        }
    );
    // A restarted runtime re-arms it from the restored state ...
    assert!(e.pending_effects(&back).contains(&Effect::ArmTimer {
        timer_id: SAGA_DEADLINE.into(),
        fire_at: Timestamp(T0.0 + 60_000),
        purpose: TimerPurpose::SagaDeadline,
    }));
    // ... and it still compensates when it fires.
    let a = fire(&e, &mut back, SAGA_DEADLINE);
    assert_eq!(lifecycle(applied(&a))[0], LifecycleKind::Compensating);
    assert_eq!(back.status, SagaStatus::Compensating);
}

#[test]
fn saga_deadline_must_be_a_duration_and_on_deadline_needs_it() {
    let services = ServiceCatalog::from_yaml("services.yaml", SERVICES).unwrap();
    let bad = ORDER.replacen("version: 1\n", "version: 1\ndeadline: soon\n", 1);
    let err = SagaDefinition::from_yaml("o.yaml", &bad, &services)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("SF-DEF-") && err.contains("o.yaml:6:"),
        "{err}"
    );
    let orphan = ORDER.replacen("version: 1\n", "version: 1\non-deadline: fail\n", 1);
    let err = SagaDefinition::from_yaml("o.yaml", &orphan, &services)
        .unwrap_err()
        .to_string();
    assert!(err.contains("without a saga `deadline`"), "{err}");
}

/// Two charges; the second has a 1 s timeout and a single attempt.
const LATE: &str = "type: late\nversion: 1\ntrigger:\n  topic: t\n  event-type: Go\n  key: event.id\nsteps:\n  - call: a\n    service: payment\n    operation: charge\n    compensate:\n      operation: refund\n  - call: b\n    service: payment\n    operation: charge\n    timeout: 1s\n    retry:\n      max-attempts: 1\n    compensate:\n      operation: refund\n";

/// Starts a `LATE` saga (of `e`'s version of it) and answers `a`: returns
/// the state and `b`'s first command.
fn late_saga_at_b(e: &Engine) -> (SagaState, Command) {
    let (mut st, fx) = e
        .start("late", &trigger("t", "Go", json!({"id": "k"})), T0)
        .unwrap();
    let a = e.apply(&mut st, ok(&one_command(&fx), json!({})), T0);
    let b = one_command(applied(&a));
    (st, b)
}

/// Starts a `LATE` saga, answers `a`, and times out `b`'s only attempt.
/// Returns the state and `b`'s command.
fn late_saga_timed_out(e: &Engine) -> (SagaState, Command) {
    let (mut st, b) = late_saga_at_b(e);
    let a = fire(e, &mut st, "late:k/b/timeout/1");
    let fx = applied(&a);
    assert_eq!(st.status, SagaStatus::Compensating);
    // `b` may still have happened: it is undone first if it did, so `a`
    // waits for `b`'s window.
    assert!(
        fx.iter().all(|f| !matches!(f, Effect::Command(_))),
        "{fx:#?}"
    );
    let def = e.registry().latest("late").unwrap();
    assert_eq!(
        st.steps[&def.step_by_path("b").unwrap()].phase,
        Phase::Abandoned
    );
    assert_eq!(
        st.timers["late:k/b/late/1"].fire_at,
        Timestamp(T0.0 + 2_000),
        "one more step timeout"
    );
    (st, b)
}

/// Answers the compensations `fx` owes, one at a time, and returns the
/// steps compensated in order and the saga's result.
fn compensate_all(e: &Engine, st: &mut SagaState, fx: &[Effect]) -> Vec<String> {
    let mut done = Vec::new();
    let mut fx = fx.to_vec();
    while let Some(refund) = fx.iter().find_map(|f| match f {
        Effect::Command(c) => Some(c.clone()),
        _ => None,
    }) {
        assert_eq!(refund.kind, CommandKind::Compensation, "{refund:?}");
        done.push(refund.step.clone());
        fx = applied(&e.apply(st, ok(&refund, json!({})), T0)).to_vec();
    }
    assert_eq!(st.status, SagaStatus::Compensated);
    assert_eq!(result(&fx).unwrap().status, SagaStatus::Compensated);
    done
}

#[test]
fn a_success_after_the_last_timeout_is_compensated_first() {
    let e = engine(&[LATE]);
    let (mut st, b) = late_saga_timed_out(&e);
    let a = e.apply(&mut st, ok(&b, json!({})), T0);
    assert!(!st.timers.contains_key("late:k/b/late/1"));
    let fx = applied(&a).to_vec();
    assert_eq!(compensate_all(&e, &mut st, &fx), ["b", "a"]);
}

#[test]
fn a_timed_out_step_with_nothing_to_undo_does_not_hold_the_rest_up() {
    let src = LATE.replace("    compensate:\n      operation: refund\n", "");
    let src = src.replacen(
        "operation: charge\n",
        "operation: charge\n    compensate:\n      operation: refund\n",
        1,
    );
    let e = engine(&[&src]);
    let (mut st, _) = late_saga_at_b(&e);
    let a = fire(&e, &mut st, "late:k/b/timeout/1");
    assert!(!st.timers.contains_key("late:k/b/late/1"));
    let fx = applied(&a).to_vec();
    assert_eq!(compensate_all(&e, &mut st, &fx), ["a"]);
}

#[test]
fn without_a_late_reply_the_rest_is_compensated_once_the_window_is_over() {
    let e = engine(&[LATE]);
    let (mut st, b) = late_saga_timed_out(&e);
    let a = fire(&e, &mut st, "late:k/b/late/1");
    let fx = applied(&a).to_vec();
    assert_eq!(compensate_all(&e, &mut st, &fx), ["a"]);
    // A success after the window changes nothing.
    let after = e.apply(&mut st, ok(&b, json!({})), T0);
    assert!(matches!(after.outcome, Outcome::Stale(_)), "{after:?}");
}

/// Every attempt of a step carries one idempotency key, so an earlier
/// attempt's success is the step's: the backend did the work once.
/// Before 2026-12-04 it was stale unless it answered the attempt the step
/// waited for; when the current attempt's own reply then came too late,
/// the saga compensated without undoing the step (the simulation's
/// "nothing that succeeded is left behind" found it).
#[test]
fn an_earlier_attempts_success_is_the_steps_success() {
    let e = engine(&[ORDER]);
    let timeout = "order-checkout:o1/reserve_inventory/timeout/1";
    // While the next attempt is in flight.
    let (mut st, fx) = e.start("order-checkout", &order(5000.0), T0).unwrap();
    let first = one_command(&fx);
    fire(&e, &mut st, timeout);
    let a = fire(&e, &mut st, "order-checkout:o1/reserve_inventory/backoff/1");
    let second = one_command(applied(&a));
    assert_eq!(second.attempt, 2);
    let a = e.apply(&mut st, ok(&first, json!({"reservation_id": "r1"})), T0);
    assert_eq!(one_command(applied(&a)).operation, "charge");
    assert!(
        !st.timers
            .contains_key("order-checkout:o1/reserve_inventory/timeout/2"),
        "{:?}",
        st.timers
    );
    let again = e.apply(&mut st, ok(&second, json!({"reservation_id": "r1"})), T0);
    assert!(matches!(again.outcome, Outcome::Stale(_)), "{again:?}");

    // While the step backs off before its next attempt.
    let (mut st, fx) = e.start("order-checkout", &order(5000.0), T0).unwrap();
    let first = one_command(&fx);
    fire(&e, &mut st, timeout);
    let a = e.apply(&mut st, ok(&first, json!({"reservation_id": "r1"})), T0);
    assert_eq!(one_command(applied(&a)).operation, "charge");
    assert!(
        st.timers.keys().all(|t| !t.contains("reserve_inventory")),
        "the backoff is disarmed: {:?}",
        st.timers
    );

    // An earlier attempt's failure stays stale: a later one may succeed.
    let (mut st, fx) = e.start("order-checkout", &order(5000.0), T0).unwrap();
    let first = one_command(&fx);
    fire(&e, &mut st, timeout);
    let failed = reply(&first, ReplyOutcome::BusinessFailure, Value::Null);
    let a = e.apply(&mut st, failed, T0);
    assert!(matches!(a.outcome, Outcome::Stale(_)), "{a:?}");
}

/// An earlier attempt's success within the last attempt's late window is
/// compensated like the last attempt's own.
#[test]
fn an_earlier_attempts_success_in_the_late_window_is_compensated_first() {
    let src = LATE.replace(
        "max-attempts: 1",
        "max-attempts: 2\n      on: [timeout]\n      initial: 100ms",
    );
    let e = engine(&[&src]);
    let (mut st, b1) = late_saga_at_b(&e);
    fire(&e, &mut st, "late:k/b/timeout/1");
    let a = fire(&e, &mut st, "late:k/b/backoff/1");
    assert_eq!(one_command(applied(&a)).attempt, 2);
    fire(&e, &mut st, "late:k/b/timeout/2");
    assert!(st.timers.contains_key("late:k/b/late/2"), "{:?}", st.timers);
    let a = e.apply(&mut st, ok(&b1, json!({})), T0);
    assert!(!st.timers.contains_key("late:k/b/late/2"));
    let fx = applied(&a).to_vec();
    assert_eq!(compensate_all(&e, &mut st, &fx), ["b", "a"]);
}
