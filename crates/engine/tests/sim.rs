//! Deterministic simulation of the saga engine.
//!
//! A virtual clock, scripted services (success, business failure, transient
//! failure, silence → timeout, duplicated and reordered replies), awaited
//! events that come early, late or never, and the occasional operator.
//! Definitions are generated programmatically (random call / parallel /
//! choice / await / emit trees with random compensations) and run through
//! the real YAML loader. Every run checks the engine's invariants.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use proptest::prelude::*;
use sagaflow_engine::definition::StepKind;
use sagaflow_engine::virtual_clock::{SameInstant, VirtualClock};
use sagaflow_engine::{
    AwaitedEvent, Command, CommandKind, DefinitionRegistry, Effect, Engine, Input, Outcome, Reply,
    ReplyOutcome, SagaDefinition, SagaState, SagaStatus, ServiceCatalog, TimerPurpose, Timestamp,
    TriggerEvent,
};
use serde_json::{Value, json};

/// xorshift64*: the simulation's only source of "randomness", seeded by proptest.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

// ------------------------------------------------------ definition generator

struct Gen {
    rng: Rng,
    names: usize,
    flags: usize,
}

impl Gen {
    fn name(&mut self) -> String {
        self.names += 1;
        format!("s{}", self.names)
    }

    fn list(&mut self, depth: usize, indent: usize, out: &mut String, min: u64) {
        let n = min + self.rng.below(3);
        for i in 0..n {
            let last = i + 1 == n;
            self.step(depth, indent, out, last);
        }
    }

    fn step(&mut self, depth: usize, indent: usize, out: &mut String, last: bool) {
        let pad = " ".repeat(indent);
        let roll = self.rng.below(100);
        let name = self.name();
        if roll < 55 || depth >= 2 && roll < 85 {
            let svc = ["alpha", "beta", "gamma"][self.rng.below(3) as usize];
            out.push_str(&format!(
                "{pad}- call: {name}\n{pad}  service: {svc}\n{pad}  operation: do-{name}\n{pad}  timeout: 1s\n{pad}  input: {{ id: \"{{{{ event.id }}}}\", step: {name} }}\n"
            ));
            let on = match self.rng.below(4) {
                0 => "[]",
                1 => "[transient]",
                2 => "[timeout]",
                _ => "[transient, timeout]",
            };
            out.push_str(&format!(
                "{pad}  retry: {{ max-attempts: {}, initial: 100ms, max: 1s, on: {on} }}\n",
                1 + self.rng.below(3)
            ));
            if self.rng.chance(65) {
                out.push_str(&format!(
                    "{pad}  compensate:\n{pad}    operation: undo-{name}\n{pad}    timeout: 1s\n{pad}    input: {{ v: \"{{{{ steps.{name}.v }}}}\" }}\n"
                ));
            }
        } else if roll < 70 && depth < 2 {
            out.push_str(&format!("{pad}- parallel: {name}\n{pad}  branches:\n"));
            for b in 0..2 + self.rng.below(2) {
                out.push_str(&format!("{pad}    - name: b{b}\n{pad}      steps:\n"));
                self.list(depth + 1, indent + 8, out, 1);
            }
        } else if roll < 85 && depth < 2 {
            out.push_str(&format!("{pad}- choice: {name}\n{pad}  when:\n"));
            for _ in 0..1 + self.rng.below(2) {
                self.flags += 1;
                out.push_str(&format!(
                    "{pad}    - if: event.f{}\n{pad}      steps:\n",
                    self.flags
                ));
                let mut body = String::new();
                self.list(depth + 1, indent + 8, &mut body, 0);
                if body.is_empty() {
                    out.pop();
                    out.push_str(" []\n");
                } else {
                    out.push_str(&body);
                }
            }
            if self.rng.chance(50) {
                out.push_str(&format!("{pad}  default:\n"));
                self.list(depth + 1, indent + 4, out, 1);
                if last && self.rng.chance(30) && depth > 0 {
                    let r = self.name();
                    out.push_str(&format!(
                        "{pad}    - reject: {r}\n{pad}      reason: \"rejected by {r}\"\n"
                    ));
                }
            }
        } else if roll < 93 {
            let on_deadline = match self.rng.below(3) {
                0 => "fail".to_string(),
                1 => "compensate".to_string(),
                _ => {
                    let e = self.name();
                    format!(
                        "\n{pad}    continue:\n{pad}      - emit: {e}\n{pad}        topic: sim.events\n{pad}        event-type: Late\n{pad}        key: \"{{{{ saga.key }}}}\""
                    )
                }
            };
            out.push_str(&format!(
                "{pad}- await: {name}\n{pad}  topic: sim.events\n{pad}  event-type: Ping{name}\n{pad}  correlate: event.id\n{pad}  deadline: 1h\n{pad}  on-deadline: {on_deadline}\n"
            ));
        } else {
            out.push_str(&format!(
                "{pad}- emit: {name}\n{pad}  topic: sim.events\n{pad}  event-type: Note\n{pad}  key: \"{{{{ saga.key }}}}\"\n{pad}  payload: {{ saga: \"{{{{ saga.id }}}}\" }}\n"
            ));
        }
    }
}

/// A random definition (YAML text) and the number of choice flags it reads.
fn generate(seed: u64) -> (String, usize) {
    let mut g = Gen {
        rng: Rng::new(seed),
        names: 0,
        flags: 0,
    };
    let mut out = String::from(
        "type: sim\nversion: 1\ntrigger:\n  topic: sim.events\n  event-type: Start\n  key: event.id\n",
    );
    // A saga deadline in a third of the definitions: short enough to pass
    // while steps run, retry or await (1 s timeouts, replies up to 1.5 s
    // late, awaits of an hour), long enough that some sagas end first.
    if g.rng.chance(33) {
        let on_deadline = if g.rng.chance(50) {
            "compensate"
        } else {
            "fail"
        };
        let secs = 1 + g.rng.below(8);
        out.push_str(&format!("deadline: {secs}s\non-deadline: {on_deadline}\n"));
    }
    out.push_str("steps:\n");
    g.list(0, 2, &mut out, 1);
    out.push_str("result:\n  id: \"{{ event.id }}\"\n");
    (out, g.flags)
}

fn services() -> ServiceCatalog {
    ServiceCatalog::new(["alpha", "beta", "gamma"])
}

fn engine_for(src: &str) -> Engine {
    let def = SagaDefinition::from_yaml("sim.yaml", src, &services())
        .unwrap_or_else(|e| panic!("generated definition is invalid:\n{e}\n{src}"));
    let mut reg = DefinitionRegistry::new();
    reg.insert(def).unwrap();
    Engine::new(reg)
}

// ------------------------------------------------------------------ harness

struct Sim<'a> {
    engine: &'a Engine,
    rng: Rng,
    /// Timers fire before a reply due at the same instant.
    clock: VirtualClock,
    state: SagaState,
    trace: Vec<Effect>,
    /// Every command ever issued, by id.
    issued: HashMap<String, Command>,
    /// Compensable steps whose success reply was applied, in order.
    succeeded: Vec<String>,
    /// Every step whose action succeeded (compensable or not).
    done: BTreeSet<String>,
    compensation_started: BTreeSet<String>,
    compensated: BTreeSet<String>,
    operator_retries: u32,
    aborted: bool,
    msg: u64,
}

impl<'a> Sim<'a> {
    fn new(engine: &'a Engine, rng: Rng, state: SagaState) -> Self {
        Sim {
            engine,
            rng,
            clock: VirtualClock::new(Timestamp(0), SameInstant::TimersFirst),
            state,
            trace: Vec::new(),
            issued: HashMap::new(),
            succeeded: Vec::new(),
            done: BTreeSet::new(),
            compensation_started: BTreeSet::new(),
            compensated: BTreeSet::new(),
            operator_retries: 0,
            aborted: false,
            msg: 0,
        }
    }

    fn push(&mut self, after: u64, input: Input) {
        self.clock.schedule_in(after, input);
    }

    fn compensable(&self, step: &str) -> bool {
        let def = self
            .engine
            .registry()
            .get(&self.state.saga_type, self.state.saga_version)
            .unwrap();
        let id = def.step_by_path(step).unwrap();
        matches!(&def.step(id).kind, StepKind::Call(c) if c.compensate.is_some())
    }

    fn reply_to(&mut self, c: &Command) {
        let roll = self.rng.below(100);
        let outcome = match roll {
            0..=59 => ReplyOutcome::Success,
            60..=69 => ReplyOutcome::BusinessFailure,
            70..=84 => ReplyOutcome::TransientFailure,
            _ => return, // silence: the timeout timer fires
        };
        self.msg += 1;
        let reply = Reply {
            message_id: format!("m{}", self.msg),
            command_id: c.command_id.clone(),
            outcome,
            // Enough fields for the worked examples' templates.
            data: json!({
                "v": self.msg,
                "reservation_id": format!("r{}", self.msg),
                "payment_id": format!("p{}", self.msg),
                "tracking_number": format!("t{}", self.msg),
                "verdict": if self.msg.is_multiple_of(3) { "reject" } else { "accept" },
                "price": 10,
                "account_id": format!("a{}", self.msg),
                "account_number": format!("n{}", self.msg),
                "workspace_id": format!("w{}", self.msg),
            }),
            error: (outcome != ReplyOutcome::Success).then(|| "scripted".to_string()),
        };
        let delay = 1 + self.rng.below(1500); // sometimes after the 1s timeout
        self.push(delay, Input::Reply(reply.clone()));
        if self.rng.chance(15) {
            // The broker delivers the same message twice.
            let d = self.rng.below(3000);
            self.push(d, Input::Reply(reply.clone()));
        }
        if self.rng.chance(5) {
            // The adapter answers twice, differently.
            self.msg += 1;
            let mut other = reply;
            other.message_id = format!("m{}", self.msg);
            other.outcome = ReplyOutcome::Success;
            let d = self.rng.below(3000);
            self.push(d, Input::Reply(other));
        }
    }

    /// An event for the await named `name`, correlated to `key` (or not).
    fn awaited_event(&mut self, name: &str, key: &str) -> Input {
        let def = self
            .engine
            .registry()
            .get(&self.state.saga_type, self.state.saga_version)
            .unwrap();
        let step = def.steps().iter().find(|s| s.name == name).unwrap();
        let StepKind::Await(a) = &step.kind else {
            panic!("{name} is not an await")
        };
        let (topic, event_type) = (a.topic.clone(), a.event_type.clone());
        self.msg += 1;
        Input::Event(AwaitedEvent {
            message_id: format!("m{}", self.msg),
            topic,
            event_type,
            // The generated definitions correlate on `id`, the worked
            // example on `customer_id`.
            payload: json!({ "id": key, "customer_id": key, "verified_at": "now" }),
        })
    }

    fn handle(&mut self, effects: Vec<Effect>) {
        for fx in effects {
            match &fx {
                Effect::Command(c) => {
                    if let Some(prev) = self.issued.get(&c.command_id) {
                        assert_eq!(prev, c, "two different commands share id {}", c.command_id);
                        panic!("command {} issued twice", c.command_id);
                    }
                    self.issued.insert(c.command_id.clone(), c.clone());
                    assert!(
                        c.kind == CommandKind::Compensation || !self.done.contains(&c.step),
                        "step {} runs again after it succeeded",
                        c.step
                    );
                    if c.kind == CommandKind::Compensation {
                        assert!(
                            self.succeeded.contains(&c.step),
                            "compensation for {} which never succeeded",
                            c.step
                        );
                        if c.attempt == 1 {
                            let expected = self
                                .succeeded
                                .iter()
                                .rev()
                                .find(|s| !self.compensation_started.contains(*s))
                                .cloned();
                            assert_eq!(
                                expected.as_deref(),
                                Some(c.step.as_str()),
                                "compensation out of reverse completion order; succeeded {:?}, started {:?}",
                                self.succeeded,
                                self.compensation_started
                            );
                            self.compensation_started.insert(c.step.clone());
                        }
                    }
                    let c = c.clone();
                    self.reply_to(&c);
                }
                Effect::Lifecycle(l) if l.kind == sagaflow_engine::LifecycleKind::Started => {
                    // Some awaited events come before the saga gets there.
                    let def = self
                        .engine
                        .registry()
                        .get(&self.state.saga_type, self.state.saga_version)
                        .unwrap();
                    let early: Vec<String> = def
                        .steps()
                        .iter()
                        .filter(|s| matches!(s.kind, StepKind::Await(_)))
                        .map(|s| s.name.clone())
                        .collect();
                    for name in early {
                        if self.rng.chance(20) {
                            let key = self.state.key.clone();
                            let ev = self.awaited_event(&name, &key);
                            let d = self.rng.below(500);
                            self.push(d, ev);
                        }
                    }
                }
                Effect::ArmTimer {
                    timer_id,
                    purpose,
                    fire_at,
                } if *purpose == TimerPurpose::AwaitDeadline => {
                    // The awaited event: on time, too late, or never; plus noise.
                    // `<saga id>/<step path>/deadline/<attempt>`: the await's name.
                    let parts: Vec<&str> = timer_id.split('/').collect();
                    let step = parts[parts.len() - 3].to_string();
                    let deadline = fire_at.0 - self.clock.now().0;
                    let when = match self.rng.below(4) {
                        0 => None,
                        1 => Some(deadline + 1 + self.rng.below(1000)),
                        _ => Some(self.rng.below(deadline)),
                    };
                    if let Some(after) = when {
                        let key = self.state.key.clone();
                        let ev = self.awaited_event(&step, &key);
                        self.push(after, ev);
                    }
                    let noise = self.awaited_event(&step, "someone-else");
                    let d = self.rng.below(1000);
                    self.push(d, noise);
                }
                _ => {}
            }
            self.trace.push(fx);
        }
    }

    /// Applies an input and checks that applying it again changes nothing.
    fn apply(&mut self, input: Input) {
        let before = self.state.clone();
        let a = self
            .clock
            .apply(self.engine, &mut self.state, input.clone());
        if a.outcome != Outcome::Applied {
            assert!(a.effects.is_empty(), "{:?} with effects", a.outcome);
            assert_eq!(self.state, before, "{:?} changed the state", a.outcome);
        } else if let Input::Reply(r) = &input {
            let c = &self.issued[&r.command_id];
            if r.outcome == ReplyOutcome::Success {
                if c.kind == CommandKind::Action {
                    assert!(
                        self.done.insert(c.step.clone()),
                        "a second success of step {} was applied",
                        c.step
                    );
                }
                match c.kind {
                    CommandKind::Action if self.compensable(&c.step) => {
                        self.succeeded.push(c.step.clone())
                    }
                    CommandKind::Compensation => {
                        self.compensated.insert(c.step.clone());
                    }
                    _ => {}
                }
            }
        }
        if self.rng.chance(10) {
            // A restart: the state comes back from its serialized form.
            let json = serde_json::to_vec(&self.state).unwrap();
            let back: SagaState = serde_json::from_slice(&json).unwrap();
            assert_eq!(back, self.state, "state does not survive serialization");
            self.state = back;
        }
        let once = self.state.clone();
        let again = self.clock.apply(self.engine, &mut self.state, input);
        assert!(
            again.effects.is_empty(),
            "second application produced effects"
        );
        assert_ne!(
            again.outcome,
            Outcome::Applied,
            "second application applied"
        );
        assert_eq!(self.state, once, "second application changed the state");
        // What is owed can always be re-derived and matches what was sent.
        for fx in self.engine.pending_effects(&self.state) {
            if let Effect::Command(c) = fx
                && let Some(prev) = self.issued.get(&c.command_id)
            {
                assert_eq!(prev, &c, "re-derived command differs");
            }
        }
        self.handle(a.effects);
    }

    fn run(&mut self) {
        for _ in 0..20_000 {
            if self.state.status == SagaStatus::Running && !self.aborted && self.rng.chance(1) {
                self.aborted = true;
                self.apply(Input::Abort {
                    request_id: "op-abort".into(),
                    reason: "simulated operator".into(),
                });
                continue;
            }
            match self.clock.next_input(&self.state) {
                Some((at, input)) => {
                    self.clock.advance_to(at);
                    self.apply(input);
                }
                None => {
                    if self.state.status == SagaStatus::Failed && self.operator_retries < 2 {
                        self.operator_retries += 1;
                        let id = format!("op-retry-{}", self.operator_retries);
                        self.apply(Input::Retry { request_id: id });
                        continue;
                    }
                    return;
                }
            }
        }
        panic!("simulation did not settle");
    }
}

fn simulate(engine: &Engine, flags: usize, seed: u64) -> (SagaState, Vec<Effect>) {
    let mut rng = Rng::new(seed.wrapping_mul(31).wrapping_add(7));
    let mut payload = serde_json::Map::new();
    payload.insert("id".into(), Value::String(format!("k{}", seed % 1000)));
    for f in 1..=flags {
        payload.insert(format!("f{f}"), Value::Bool(rng.chance(50)));
    }
    let trigger = TriggerEvent {
        message_id: "trigger".into(),
        topic: "sim.events".into(),
        event_type: "Start".into(),
        payload: Value::Object(payload),
    };
    let (state, effects) = engine.start("sim", &trigger, Timestamp(0)).unwrap();
    let mut sim = Sim::new(engine, rng, state);
    sim.handle(effects);
    sim.run();

    // Every saga ends once its timers have fired and its messages are in.
    let st = &sim.state;
    assert!(st.status.is_terminal(), "saga did not end: {:?}", st.status);
    assert!(st.timers.is_empty(), "timers left: {:?}", st.timers);
    match st.status {
        SagaStatus::Completed => assert!(
            sim.compensation_started.is_empty(),
            "a completed saga compensated {:?}",
            sim.compensation_started
        ),
        SagaStatus::Compensated => {
            let succeeded: BTreeSet<_> = sim.succeeded.iter().cloned().collect();
            assert_eq!(
                succeeded, sim.compensated,
                "a compensated saga must undo every compensable step that succeeded"
            );
        }
        _ => {}
    }
    let results = sim
        .trace
        .iter()
        .filter(|f| matches!(f, Effect::Result(_)))
        .count();
    assert!(results >= 1, "no result published");
    (sim.state, sim.trace)
}

fn check(def_seed: u64, run_seed: u64) {
    let (src, flags) = generate(def_seed);
    let engine = engine_for(&src);
    let (state, trace) = simulate(&engine, flags, run_seed);
    // Deterministic: the same seeds give the same run.
    let (state2, trace2) = simulate(&engine, flags, run_seed);
    assert_eq!(state, state2);
    assert_eq!(trace, trace2);
    // The final state round-trips through JSON.
    let json = serde_json::to_string(&state).unwrap();
    assert_eq!(serde_json::from_str::<SagaState>(&json).unwrap(), state);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_definitions_and_schedules_keep_the_invariants(def_seed in any::<u64>(), run_seed in any::<u64>()) {
        check(def_seed, run_seed);
    }
}

/// Many schedules over each worked example.
#[test]
fn worked_examples_under_random_schedules() {
    let services = ServiceCatalog::from_yaml(
        "services.yaml",
        include_str!("../../../topology/services.yaml"),
    )
    .unwrap();
    let examples = [
        (
            include_str!("../../../topology/sagas/order-checkout.yaml"),
            "order-checkout",
            json!({"order_id": "o1", "customer_id": "c", "items": [], "total_cents": 200000, "currency": "EUR", "shipping_address": "x"}),
            "orders.events",
            "OrderPlaced",
        ),
        (
            include_str!("../../../topology/sagas/travel-booking.yaml"),
            "travel-booking",
            json!({"booking_id": "b1", "customer_id": "c", "email": "e", "flight": "f", "hotel": "h", "car": "c"}),
            "travel.events",
            "BookingRequested",
        ),
        (
            include_str!("../../../topology/sagas/customer-onboarding.yaml"),
            "customer-onboarding",
            json!({"customer_id": "cu1", "name": "Ada", "email": "e", "plan": "pro"}),
            "customers.events",
            "CustomerSignedUp",
        ),
    ];
    let mut ends: BTreeMap<String, usize> = BTreeMap::new();
    for (src, ty, payload, topic, et) in examples {
        let mut reg = DefinitionRegistry::new();
        reg.insert(SagaDefinition::from_yaml("x.yaml", src, &services).unwrap())
            .unwrap();
        let engine = Engine::new(reg);
        for seed in 0..150u64 {
            let trigger = TriggerEvent {
                message_id: "t".into(),
                topic: topic.into(),
                event_type: et.into(),
                payload: payload.clone(),
            };
            let (state, effects) = engine.start(ty, &trigger, Timestamp(0)).unwrap();
            let mut sim = Sim::new(&engine, Rng::new(seed + 1), state);
            sim.handle(effects);
            sim.run();
            assert!(sim.state.status.is_terminal());
            assert!(sim.state.timers.is_empty());
            *ends
                .entry(format!("{ty}:{}", sim.state.status))
                .or_default() += 1;
        }
    }
    // The scripted services exercise every ending of both examples.
    for key in [
        "order-checkout:completed",
        "order-checkout:compensated",
        "travel-booking:completed",
        "travel-booking:compensated",
        "customer-onboarding:completed",
        "customer-onboarding:compensated",
    ] {
        assert!(
            ends.get(key).copied().unwrap_or(0) > 0,
            "{key} never reached: {ends:?}"
        );
    }
}

#[test]
fn generator_covers_every_step_kind() {
    let mut seen = BTreeSet::new();
    for seed in 0..200 {
        let (src, _) = generate(seed);
        for kind in [
            "call:",
            "parallel:",
            "choice:",
            "await:",
            "emit:",
            "reject:",
            "compensate:",
            "continue:",
        ] {
            if src.contains(&format!("- {kind}")) || src.contains(&format!(" {kind}")) {
                seen.insert(kind);
            }
        }
        engine_for(&src);
    }
    assert_eq!(seen.len(), 8, "{seen:?}");
}

/// The random runs reach every ending, so the invariants are checked on all.
#[test]
fn random_runs_reach_every_ending() {
    let mut ends: BTreeMap<String, usize> = BTreeMap::new();
    for seed in 0..150u64 {
        let (src, flags) = generate(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let engine = engine_for(&src);
        let (state, trace) = simulate(&engine, flags, seed);
        *ends.entry(state.status.to_string()).or_default() += 1;
        let retried = trace.iter().any(|f| {
            matches!(f, Effect::Lifecycle(l) if l.kind == sagaflow_engine::LifecycleKind::StepRetrying)
        });
        if retried {
            *ends.entry("with-retries".into()).or_default() += 1;
        }
        for f in &trace {
            if let Effect::Lifecycle(l) = f {
                match l.detail.as_deref() {
                    Some(d) if d.starts_with("event had arrived early") => {
                        *ends.entry("await-early".into()).or_default() += 1
                    }
                    Some(d) if d.starts_with("event ") => {
                        *ends.entry("await-event".into()).or_default() += 1
                    }
                    Some(d) if d.contains("saga deadline passed") => {
                        let how = if state.status == SagaStatus::Failed {
                            "deadline-failed"
                        } else {
                            "deadline-compensated"
                        };
                        *ends.entry(how.into()).or_default() += 1
                    }
                    _ => {}
                }
            }
        }
    }
    for key in [
        "completed",
        "compensated",
        "failed",
        "with-retries",
        "await-event",
        "await-early",
        "deadline-failed",
        "deadline-compensated",
    ] {
        assert!(
            ends.get(key).copied().unwrap_or(0) > 0,
            "{key} never reached: {ends:?}"
        );
    }
}
