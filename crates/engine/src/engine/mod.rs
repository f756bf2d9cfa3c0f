//! The sans-IO saga engine: `(state, input, now) -> (state', effects)`.
//!
//! * `types`: inputs, effects and outcomes;
//! * `classify`: what an input will do, decided read-only;
//! * `run`: one transition in progress and its shared helpers;
//! * `forward`, `compensation`, `operator`: the transitions;
//! * `ids`: saga, command and timer ids.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::data;
use crate::definition::{DefinitionRegistry, NodeId, SagaDefinition, StepKind};
use crate::error::EngineError;
use crate::state::{Phase, STATE_VERSION, SagaState, SagaStatus, Timestamp};

mod attempts;
mod classify;
mod compensation;
mod forward;
mod ids;
mod operator;
mod run;
mod types;

pub use ids::{command_id, timer_awaits_input};
pub use types::{
    Applied, AwaitedEvent, Command, CommandKind, Correlation, DomainEvent, Effect, Input,
    LifecycleEvent, LifecycleKind, Outcome, Reply, ReplyOutcome, SagaResult, TriggerEvent,
};

use classify::classify;
use ids::saga_id;
use run::{Run, command_for};

/// The engine: immutable, validated definitions and pure transitions.
#[derive(Debug)]
pub struct Engine {
    registry: DefinitionRegistry,
}

impl Engine {
    /// An engine over `registry`.
    pub fn new(registry: DefinitionRegistry) -> Self {
        Self { registry }
    }

    /// The definitions.
    pub fn registry(&self) -> &DefinitionRegistry {
        &self.registry
    }

    /// The saga id and correlation key a trigger maps to (latest version of
    /// `saga_type`), so the runtime can look the saga up before starting it:
    /// a redelivered trigger maps to the same id.
    pub fn identify(
        &self,
        saga_type: &str,
        trigger: &TriggerEvent,
    ) -> Result<(String, String), EngineError> {
        let def = self.latest(saga_type)?;
        identify(def, trigger)
    }

    fn latest(&self, saga_type: &str) -> Result<&SagaDefinition, EngineError> {
        self.registry
            .latest(saga_type)
            .ok_or_else(|| EngineError::UnknownDefinition {
                saga_type: saga_type.to_string(),
                version: None,
            })
    }

    fn def_of(&self, state: &SagaState) -> Result<&SagaDefinition, EngineError> {
        if state.version != STATE_VERSION {
            return Err(EngineError::StateVersion {
                found: state.version,
                expected: STATE_VERSION,
            });
        }
        let def = self
            .registry
            .get(&state.saga_type, state.saga_version)
            .ok_or_else(|| EngineError::UnknownDefinition {
                saga_type: state.saga_type.clone(),
                version: Some(state.saga_version),
            })?;
        // A state from a different definition under the same (type,
        // version) would point at steps that do not exist.
        let n = def.steps().len();
        let fits = |id: NodeId| usize::from(id) < n;
        if !(state.steps.keys().all(|&id| fits(id))
            && state.timers.values().all(|t| t.step.is_none_or(fits))
            && state.completed.iter().all(|&id| fits(id)))
        {
            return Err(EngineError::StateMismatch {
                saga_type: state.saga_type.clone(),
                version: state.saga_version,
            });
        }
        Ok(def)
    }

    /// Starts a saga of the latest version of `saga_type`.
    pub fn start(
        &self,
        saga_type: &str,
        trigger: &TriggerEvent,
        now: Timestamp,
    ) -> Result<(SagaState, Vec<Effect>), EngineError> {
        let def = self.latest(saga_type)?;
        if trigger.event_type != def.trigger.event_type || trigger.topic != def.trigger.topic {
            return Err(EngineError::TriggerMismatch {
                saga_type: saga_type.to_string(),
                expected: format!("{} on {}", def.trigger.event_type, def.trigger.topic),
                got: format!("{} on {}", trigger.event_type, trigger.topic),
            });
        }
        let (saga_id, key) = identify(def, trigger)?;
        let mut state = SagaState {
            version: STATE_VERSION,
            saga_id,
            saga_type: def.saga_type.clone(),
            saga_version: def.version,
            key,
            status: SagaStatus::Running,
            trigger: trigger.payload.clone(),
            data: Map::new(),
            steps: Default::default(),
            completed: Vec::new(),
            early: Default::default(),
            timers: Default::default(),
            applied: Default::default(),
            failure: None,
            output: None,
            seq: 0,
            started_at: now,
            updated_at: now,
        };
        state.remember(&trigger.message_id);
        let mut run = Run {
            def,
            st: &mut state,
            now,
            fx: Vec::new(),
        };
        run.life(
            LifecycleKind::Started,
            None,
            None,
            Some(trigger.message_id.clone()),
        );
        let mut attributes = search_attributes(def, &trigger.payload);
        attributes.insert(KEY_ATTRIBUTE.to_string(), run.st.key.clone());
        let input = data::for_event(trigger.payload.clone(), &def.sensitive);
        run.with_last(|e| {
            e.input = Some(input);
            e.attributes = attributes;
        });
        match def.first() {
            Some(first) => run.enter(first),
            None => run.complete(),
        }
        // Only a saga still going forward needs its deadline.
        if let Some(deadline) = def.deadline
            && run.st.status == SagaStatus::Running
        {
            run.arm_saga_deadline(deadline.ms);
        }
        let fx = run.fx;
        Ok((state, fx))
    }

    /// Applies one input. Duplicate, stale and rejected inputs leave the
    /// state untouched and produce no effects.
    pub fn apply(&self, state: &mut SagaState, input: Input, now: Timestamp) -> Applied {
        let def = match self.def_of(state) {
            Ok(d) => d,
            Err(e) => return rejected(e),
        };
        if state.has_applied(input.id()) {
            return Applied {
                outcome: Outcome::Duplicate,
                effects: Vec::new(),
            };
        }
        // Check relevance on a read-only view first, so that nothing
        // changes for stale or rejected inputs.
        let action = match classify(def, state, &input, now) {
            Ok(a) => a,
            Err(outcome) => {
                return Applied {
                    outcome,
                    effects: Vec::new(),
                };
            }
        };
        state.remember(input.id());
        state.updated_at = now;
        let mut run = Run {
            def,
            st: state,
            now,
            fx: Vec::new(),
        };
        run.act(action, input);
        Applied {
            outcome: Outcome::Applied,
            effects: run.fx,
        }
    }

    /// The outputs a saga currently owes: the commands in flight and the
    /// armed timers (and the result, once ended). A restarted runtime
    /// re-sends these; adapters dedupe commands on their ids.
    pub fn pending_effects(&self, state: &SagaState) -> Vec<Effect> {
        let Ok(def) = self.def_of(state) else {
            return Vec::new();
        };
        let mut fx = Vec::new();
        for (&id, run) in &state.steps {
            let owed = match run.phase {
                Phase::Active => command_for(def, state, id, CommandKind::Action, run.attempt),
                Phase::Compensating => {
                    command_for(def, state, id, CommandKind::Compensation, run.comp_attempt)
                }
                _ => None,
            };
            if let Some(Ok(c)) = owed {
                fx.push(Effect::Command(c));
            }
        }
        for (timer_id, t) in &state.timers {
            fx.push(Effect::ArmTimer {
                timer_id: timer_id.clone(),
                fire_at: t.fire_at,
                purpose: t.purpose,
            });
        }
        if state.status.is_terminal()
            && let Some(output) = &state.output
        {
            fx.push(Effect::Result(SagaResult {
                saga_id: state.saga_id.clone(),
                saga_type: state.saga_type.clone(),
                saga_version: state.saga_version,
                status: state.status,
                output: result_output(def, output.clone()),
            }));
        }
        fx
    }

    /// The id of the saga of `saga_type` version `saga_version` whose
    /// correlation key is `key` (saga ids follow from type and key only).
    pub fn saga_id_for(
        &self,
        saga_type: &str,
        saga_version: u32,
        key: &str,
    ) -> Result<String, EngineError> {
        let def = self.registry.get(saga_type, saga_version).ok_or_else(|| {
            EngineError::UnknownDefinition {
                saga_type: saga_type.to_string(),
                version: Some(saga_version),
            }
        })?;
        saga_id(def, key)
    }

    /// Which running sagas an event could be awaited by: for every
    /// definition with a matching `await`, the correlation key computed
    /// from the event. The runtime maps the key to saga ids.
    pub fn correlate(&self, topic: &str, event_type: &str, payload: &Value) -> Vec<Correlation> {
        let mut out = Vec::new();
        for def in self.registry.iter() {
            for step in def.steps() {
                if let StepKind::Await(a) = &step.kind
                    && a.topic == topic
                    && a.event_type == event_type
                    && let Ok(key) = a.correlate.eval_string(&json!({ "event": payload }))
                {
                    out.push(Correlation {
                        saga_type: def.saga_type.clone(),
                        saga_version: def.version,
                        key,
                        step: step.path.clone(),
                    });
                }
            }
        }
        out
    }
}

fn rejected(e: EngineError) -> Applied {
    Applied {
        outcome: Outcome::Rejected(e),
        effects: Vec::new(),
    }
}

fn identify(def: &SagaDefinition, trigger: &TriggerEvent) -> Result<(String, String), EngineError> {
    let err = |reason: String| EngineError::TriggerExpression {
        saga_type: def.saga_type.clone(),
        reason,
    };
    let key = def
        .trigger
        .key
        .eval_string(&json!({ "event": &trigger.payload }))
        .map_err(err)?;
    let id = saga_id(def, &key)?;
    Ok((id, key))
}

/// The search attribute every `Started` event carries: the saga's
/// correlation key (the trigger's `key`). Definitions cannot declare it.
pub const KEY_ATTRIBUTE: &str = "key";

/// Longest search attribute value kept (characters).
const MAX_ATTRIBUTE_CHARS: usize = 256;

/// The definition's search attributes over the trigger event. An
/// attribute whose expression fails (a missing field) or yields null is
/// left out: a search attribute never stops a saga from starting.
fn search_attributes(def: &SagaDefinition, payload: &Value) -> BTreeMap<String, String> {
    let ctx = json!({ "event": payload });
    def.search_attributes
        .iter()
        .filter_map(|(name, expr)| {
            let text = match expr.eval(&ctx).ok()? {
                Value::Null => return None,
                Value::String(s) => s,
                other => other.to_string(),
            };
            Some((
                name.clone(),
                text.chars().take(MAX_ATTRIBUTE_CHARS).collect(),
            ))
        })
        .collect()
}

/// A saga's result as it leaves the orchestrator: the saga-level
/// `sensitive` paths redacted, like the step data of its lifecycle events
/// (the saga's state keeps the real values).
pub(super) fn result_output(def: &SagaDefinition, mut output: Value) -> Value {
    data::redact(&mut output, &def.sensitive);
    output
}

#[cfg(test)]
mod tests;
