//! A virtual clock to drive one saga through the [`Engine`] without waiting.
//!
//! The engine takes `now` as an argument, so a driver can run a saga's
//! whole life in virtual time: it keeps the inputs the world will deliver
//! (replies, awaited events, each due at a virtual instant), reads the
//! timers the engine armed from the [`SagaState`], always takes the
//! earliest of the two next and jumps the clock straight to it. Nothing
//! sleeps; a run is a pure function of its inputs.
//!
//! Two drivers share it: the engine's simulation (`tests/sim.rs`), which
//! adds a random fault schedule and checks invariants, and `sagaflow test`
//! (the CLI's `scenario.rs`), which adds a scripted scenario and compares
//! the path taken with its expectations. What an input means, and whether
//! it is applied, is theirs; when it comes is this module's.

use crate::engine::{Applied, Effect, Engine, Input, TriggerEvent};
use crate::error::EngineError;
use crate::state::{SagaState, Timestamp};

/// Which goes first when a scheduled input and an armed timer are due at
/// the same virtual instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameInstant {
    /// The input (a reply that made it just in time wins the race).
    InputsFirst,
    /// The timer (the deadline passes before the reply is read).
    TimersFirst,
}

/// An input the world will deliver at a virtual time.
#[derive(Debug)]
struct Scheduled {
    at: u64,
    /// Scheduling order: inputs due at the same instant keep it.
    seq: u64,
    input: Input,
}

/// Virtual time for one saga: the current instant and the inputs to come.
#[derive(Debug)]
pub struct VirtualClock {
    now: u64,
    seq: u64,
    scheduled: Vec<Scheduled>,
    same_instant: SameInstant,
}

impl VirtualClock {
    /// A clock at `start` with nothing scheduled.
    pub fn new(start: Timestamp, same_instant: SameInstant) -> Self {
        Self {
            now: start.0,
            seq: 0,
            scheduled: Vec::new(),
            same_instant,
        }
    }

    /// The current virtual instant.
    pub fn now(&self) -> Timestamp {
        Timestamp(self.now)
    }

    /// Delivers `input` at `at` (an instant already past is delivered
    /// next, without moving the clock back).
    pub fn schedule_at(&mut self, at: Timestamp, input: Input) {
        self.seq += 1;
        self.scheduled.push(Scheduled {
            at: at.0,
            seq: self.seq,
            input,
        });
    }

    /// Delivers `input` `after_ms` from now.
    pub fn schedule_in(&mut self, after_ms: u64, input: Input) {
        self.schedule_at(Timestamp(self.now.saturating_add(after_ms)), input);
    }

    /// Takes what comes next, without moving the clock: the earliest
    /// scheduled input (in scheduling order among equals) or the earliest
    /// timer armed in `state` (by id among equals), as
    /// [`Input::TimerFired`]; ties between the two as [`SameInstant`] says.
    /// `None` when nothing is scheduled and no timer is armed.
    pub fn next_input(&mut self, state: &SagaState) -> Option<(Timestamp, Input)> {
        let scheduled = self
            .scheduled
            .iter()
            .enumerate()
            .min_by_key(|(_, s)| (s.at, s.seq))
            .map(|(i, s)| (i, s.at));
        let timer = state.next_timer().map(|(id, at)| (id.to_string(), at.0));
        let input_first = match (&scheduled, &timer) {
            (Some((_, at)), Some((_, due))) => match self.same_instant {
                SameInstant::InputsFirst => at <= due,
                SameInstant::TimersFirst => at < due,
            },
            (Some(_), None) => true,
            (None, _) => false,
        };
        match (scheduled, timer) {
            (Some((i, _)), _) if input_first => {
                let s = self.scheduled.remove(i);
                Some((Timestamp(s.at), s.input))
            }
            (_, Some((timer_id, due))) => Some((Timestamp(due), Input::TimerFired { timer_id })),
            (_, None) => None,
        }
    }

    /// Moves the clock to `at`; it never goes back.
    pub fn advance_to(&mut self, at: Timestamp) {
        self.now = self.now.max(at.0);
    }

    /// Starts a saga of `saga_type` with `trigger` now.
    pub fn start(
        &self,
        engine: &Engine,
        saga_type: &str,
        trigger: &TriggerEvent,
    ) -> Result<(SagaState, Vec<Effect>), EngineError> {
        engine.start(saga_type, trigger, self.now())
    }

    /// Applies `input` to `state` now.
    pub fn apply(&self, engine: &Engine, state: &mut SagaState, input: Input) -> Applied {
        engine.apply(state, input, self.now())
    }

    /// Takes the next input (see [`Self::next_input`]), moves the clock to
    /// it and applies it: one tick of a driver with nothing to add between
    /// the two. The input is returned with what applying it did.
    pub fn step(&mut self, engine: &Engine, state: &mut SagaState) -> Option<(Input, Applied)> {
        let (at, input) = self.next_input(state)?;
        self.advance_to(at);
        let applied = self.apply(engine, state, input.clone());
        Some((input, applied))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::{DefinitionRegistry, SagaDefinition, ServiceCatalog};
    use crate::engine::{Outcome, Reply, ReplyOutcome};
    use crate::state::SagaStatus;
    use serde_json::json;

    const SAGA: &str = "type: clocked
version: 1
trigger:
  topic: t.events
  event-type: Go
  key: event.id
steps:
  - call: call
    service: svc
    operation: op
    timeout: 1s
result:
  id: \"{{ event.id }}\"
";

    fn engine() -> Engine {
        let def = SagaDefinition::from_yaml("clocked.yaml", SAGA, &ServiceCatalog::new(["svc"]))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut reg = DefinitionRegistry::new();
        reg.insert(def).unwrap();
        Engine::new(reg)
    }

    fn started(clock: &VirtualClock, engine: &Engine) -> (SagaState, String) {
        let trigger = TriggerEvent {
            message_id: "trigger".into(),
            topic: "t.events".into(),
            event_type: "Go".into(),
            payload: json!({"id": "k"}),
        };
        let (state, effects) = clock.start(engine, "clocked", &trigger).unwrap();
        let command_id = effects
            .iter()
            .find_map(|e| match e {
                Effect::Command(c) => Some(c.command_id.clone()),
                _ => None,
            })
            .expect("the call's command");
        (state, command_id)
    }

    fn reply(command_id: &str) -> Input {
        Input::Reply(Reply {
            message_id: "r1".into(),
            command_id: command_id.into(),
            outcome: ReplyOutcome::Success,
            data: json!({}),
            error: None,
        })
    }

    #[test]
    fn the_clock_jumps_to_the_timer_and_never_sleeps() {
        let engine = engine();
        let mut clock = VirtualClock::new(Timestamp(1_000), SameInstant::InputsFirst);
        let (mut state, _) = started(&clock, &engine);
        let (input, applied) = clock.step(&engine, &mut state).unwrap();
        assert!(matches!(input, Input::TimerFired { .. }), "{input:?}");
        assert_eq!(applied.outcome, Outcome::Applied);
        assert_eq!(clock.now(), Timestamp(2_000), "the 1s timeout fired");
    }

    #[test]
    fn same_instant_ties_go_as_configured() {
        let engine = engine();
        for (rule, reply_wins) in [
            (SameInstant::InputsFirst, true),
            (SameInstant::TimersFirst, false),
        ] {
            let mut clock = VirtualClock::new(Timestamp(0), rule);
            let (mut state, command_id) = started(&clock, &engine);
            clock.schedule_in(1_000, reply(&command_id));
            let (input, _) = clock.step(&engine, &mut state).unwrap();
            assert_eq!(matches!(input, Input::Reply(_)), reply_wins, "{rule:?}");
            assert_eq!(clock.now(), Timestamp(1_000));
        }
    }

    #[test]
    fn earlier_inputs_first_in_order_and_the_clock_never_goes_back() {
        let engine = engine();
        let mut clock = VirtualClock::new(Timestamp(500), SameInstant::InputsFirst);
        let (mut state, command_id) = started(&clock, &engine);
        clock.schedule_at(Timestamp(100), reply(&command_id));
        let (at, input) = clock.next_input(&state).unwrap();
        assert_eq!(at, Timestamp(100));
        clock.advance_to(at);
        assert_eq!(clock.now(), Timestamp(500), "not moved back");
        let applied = clock.apply(&engine, &mut state, input);
        assert_eq!(applied.outcome, Outcome::Applied);
        assert_eq!(state.status, SagaStatus::Completed);
        assert!(clock.next_input(&state).is_none(), "nothing left");
    }
}
