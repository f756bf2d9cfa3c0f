//! Engine transitions per second on full happy-path runs of the worked
//! examples, and the serialized size of a saga state mid-flight.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sagaflow_engine::{
    AwaitedEvent, DefinitionRegistry, Effect, Engine, Input, Reply, ReplyOutcome, SagaDefinition,
    SagaState, SagaStatus, ServiceCatalog, TimerPurpose, Timestamp, TriggerEvent,
};
use serde_json::{Value, json};

struct Example {
    saga_type: &'static str,
    trigger: TriggerEvent,
}

fn engine() -> Engine {
    let services = ServiceCatalog::from_yaml(
        "services.yaml",
        include_str!("../../../topology/services.yaml"),
    )
    .unwrap();
    let mut reg = DefinitionRegistry::new();
    for (file, src) in [
        (
            "order-checkout.yaml",
            include_str!("../../../topology/sagas/order-checkout.yaml"),
        ),
        (
            "travel-booking.yaml",
            include_str!("../../../topology/sagas/travel-booking.yaml"),
        ),
        (
            "customer-onboarding.yaml",
            include_str!("../../../topology/sagas/customer-onboarding.yaml"),
        ),
    ] {
        reg.insert(SagaDefinition::from_yaml(file, src, &services).unwrap())
            .unwrap();
    }
    Engine::new(reg)
}

fn examples() -> Vec<Example> {
    let t = |topic: &str, et: &str, payload: Value| TriggerEvent {
        message_id: "m0".into(),
        topic: topic.into(),
        event_type: et.into(),
        payload,
    };
    vec![
        Example {
            saga_type: "order-checkout",
            trigger: t(
                "orders.events",
                "OrderPlaced",
                json!({"order_id": "o-1001", "customer_id": "c-7", "items": [{"sku": "A-1", "qty": 2}, {"sku": "B-9", "qty": 1}], "total_cents": 125000, "currency": "EUR", "shipping_address": "1 Main Street, Springfield"}),
            ),
        },
        Example {
            saga_type: "travel-booking",
            trigger: t(
                "travel.events",
                "BookingRequested",
                json!({"booking_id": "b-42", "customer_id": "c-7", "email": "ada@example.com", "flight": "LH400", "hotel": "H-Berlin-1", "car": "VW-Golf"}),
            ),
        },
        Example {
            saga_type: "customer-onboarding",
            trigger: t(
                "customers.events",
                "CustomerSignedUp",
                json!({"customer_id": "c-7", "name": "Ada Lovelace", "email": "ada@example.com", "plan": "pro"}),
            ),
        },
    ]
}

fn reply_data() -> Value {
    json!({"reservation_id": "r-1", "payment_id": "p-1", "tracking_number": "T-1", "verdict": "accept",
           "price": 100, "account_id": "crm-1", "account_number": "B-1", "workspace_id": "w-1"})
}

/// Runs one saga to completion, every service answering at once; returns
/// the number of transitions (start + applied inputs) and the largest
/// serialized state seen.
fn happy_path(engine: &Engine, ex: &Example, measure: bool) -> (usize, usize) {
    let now = Timestamp(1_700_000_000_000);
    let (mut state, effects) = engine.start(ex.saga_type, &ex.trigger, now).unwrap();
    let mut inbox: Vec<Input> = Vec::new();
    let mut transitions = 1;
    let mut biggest = 0;
    let mut n = 0u32;
    let mut absorb = |effects: Vec<Effect>, inbox: &mut Vec<Input>, state: &SagaState| {
        for fx in effects {
            n += 1;
            match fx {
                Effect::Command(c) => inbox.push(Input::Reply(Reply {
                    message_id: format!("r{n}"),
                    command_id: c.command_id,
                    outcome: ReplyOutcome::Success,
                    data: reply_data(),
                    error: None,
                })),
                Effect::ArmTimer { purpose: TimerPurpose::AwaitDeadline, .. } => {
                    inbox.push(Input::Event(AwaitedEvent {
                        message_id: format!("e{n}"),
                        topic: "identity.events".into(),
                        event_type: "EmailVerified".into(),
                        payload: json!({"customer_id": state.key, "verified_at": "2026-11-23T20:00:00Z"}),
                    }))
                }
                _ => {}
            }
        }
    };
    absorb(effects, &mut inbox, &state);
    while let Some(input) = inbox.pop() {
        if measure {
            biggest = biggest.max(serde_json::to_vec(&state).unwrap().len());
        }
        let applied = engine.apply(&mut state, input, now);
        transitions += 1;
        absorb(applied.effects, &mut inbox, &state);
    }
    assert_eq!(state.status, SagaStatus::Completed);
    (transitions, biggest)
}

fn bench(c: &mut Criterion) {
    let engine = engine();
    let mut group = c.benchmark_group("happy_path");
    for ex in examples() {
        let (transitions, biggest) = happy_path(&engine, &ex, true);
        println!(
            "{}: {transitions} transitions per saga; largest mid-flight state {biggest} bytes (serde_json)",
            ex.saga_type
        );
        group.throughput(Throughput::Elements(transitions as u64));
        group.bench_function(ex.saga_type, |b| {
            b.iter(|| black_box(happy_path(&engine, black_box(&ex), false)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
