//! The sans-IO saga engine: `(state, input, now) -> (state', effects)`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::data::{self, FieldPath};

use crate::definition::{
    DefinitionRegistry, ListOwner, NodeId, OnDeadline, RetryOn, RetryPolicy, SagaDefinition,
    StepKind,
};
use crate::error::EngineError;
use crate::expr::Root;
use crate::state::{
    Failure, FailurePhase, Phase, STATE_VERSION, SagaState, SagaStatus, StepRun, Timer,
    TimerPurpose, Timestamp,
};

// ------------------------------------------------------------------ inputs

/// The event that starts a saga.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TriggerEvent {
    /// Stable id of the message (`sagaflow-message-id`).
    pub message_id: String,
    /// Topic it was read from.
    pub topic: String,
    /// Event type.
    pub event_type: String,
    /// Payload (`event` in expressions).
    pub payload: Value,
}

/// How a service adapter's reply turned out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplyOutcome {
    /// Done; `data` is the reply.
    Success,
    /// The service refused (4xx, SOAP fault…): not retried.
    BusinessFailure,
    /// Might work later (5xx, connection error…): retried per policy.
    TransientFailure,
}

/// A reply to a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// Stable id of the reply message.
    pub message_id: String,
    /// The command it answers.
    pub command_id: String,
    /// Outcome.
    pub outcome: ReplyOutcome,
    /// Reply data (bound under `steps.<bind>` on success).
    #[serde(default)]
    pub data: Value,
    /// Error text for failures.
    #[serde(default)]
    pub error: Option<String>,
}

/// A domain event for an `await` step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AwaitedEvent {
    /// Stable id of the message.
    pub message_id: String,
    /// Topic.
    pub topic: String,
    /// Event type.
    pub event_type: String,
    /// Payload.
    pub payload: Value,
}

/// Anything that moves a saga.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Input {
    /// A service replied.
    Reply(Reply),
    /// A domain event arrived.
    Event(AwaitedEvent),
    /// A durable timer is due.
    TimerFired { timer_id: String },
    /// Operator: resume a failed saga from the failed step.
    Retry { request_id: String },
    /// Operator: compensate what succeeded and stop.
    Abort { request_id: String, reason: String },
}

impl Input {
    /// The stable id used for deduplication.
    pub fn id(&self) -> &str {
        match self {
            Input::Reply(r) => &r.message_id,
            Input::Event(e) => &e.message_id,
            Input::TimerFired { timer_id } => timer_id,
            Input::Retry { request_id } | Input::Abort { request_id, .. } => request_id,
        }
    }
}

// ----------------------------------------------------------------- effects

/// Whether a command does a step or undoes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CommandKind {
    Action,
    Compensation,
}

/// A command for a service adapter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// `<saga id>/<step path>/<attempt>` or `<saga id>/<step path>/compensate/<attempt>`.
    pub command_id: String,
    /// Same for every attempt of one action (or one compensation): what the
    /// adapter sends as `Idempotency-Key`.
    pub idempotency_key: String,
    pub saga_id: String,
    pub saga_type: String,
    pub saga_version: u32,
    /// Step path.
    pub step: String,
    pub service: String,
    pub operation: String,
    pub attempt: u32,
    pub kind: CommandKind,
    pub input: Value,
    pub timeout_ms: u64,
}

/// Kinds of saga lifecycle events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LifecycleKind {
    Started,
    StepStarted,
    StepSucceeded,
    StepFailed,
    StepRetrying,
    StepTimedOut,
    LateReply,
    Compensating,
    CompensationStepStarted,
    CompensationStepSucceeded,
    CompensationStepRetrying,
    CompensationStepFailed,
    Completed,
    Compensated,
    Failed,
    Resumed,
    Aborted,
}

/// A saga lifecycle event (for `sagaflow.saga-events`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LifecycleEvent {
    /// `<saga id>/<seq>`.
    pub event_id: String,
    pub saga_id: String,
    pub saga_type: String,
    pub saga_version: u32,
    /// Per-saga sequence number, from 1.
    pub seq: u64,
    pub kind: LifecycleKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub at: Timestamp,
    /// The step's input (the command sent), or the trigger event for
    /// `Started`; `sensitive` fields redacted, bounded by
    /// [`crate::data::MAX_DATA_BYTES`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    /// The step's output (the reply's data), redacted and bounded alike.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// A failed attempt's error body: `{"message", "data"}` (the reply's
    /// error and data), redacted and bounded alike.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
    /// Search attributes (on `Started`): the definition's
    /// `search-attributes` computed from the trigger event.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
}

/// A domain event published by an `emit` step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainEvent {
    /// `<saga id>/<step path>`: stable, for consumers to dedupe.
    pub event_id: String,
    pub topic: String,
    pub event_type: String,
    pub key: String,
    pub payload: Value,
}

/// The saga's result, published when it ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaResult {
    pub saga_id: String,
    pub saga_type: String,
    pub saga_version: u32,
    pub status: SagaStatus,
    pub output: Value,
}

/// Something the runtime must do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Effect {
    /// Send a command to `sagaflow.commands.<service>`.
    Command(Command),
    /// Publish a lifecycle event.
    Lifecycle(LifecycleEvent),
    /// Fire `Input::TimerFired { timer_id }` at `fire_at` (the timer is
    /// also recorded in the state, so it survives restarts).
    ArmTimer {
        timer_id: String,
        fire_at: Timestamp,
        purpose: TimerPurpose,
    },
    /// The timer is no longer needed.
    CancelTimer { timer_id: String },
    /// Publish a domain event.
    Emit(DomainEvent),
    /// Publish the saga result.
    Result(SagaResult),
}

/// What applying an input did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The state changed; effects follow.
    Applied,
    /// This input id was applied before: nothing changed.
    Duplicate,
    /// The input is no longer relevant (old attempt, timer cancelled, event
    /// after the deadline…): nothing changed.
    Stale(String),
    /// The input is not allowed now (e.g. `Retry` on a running saga):
    /// nothing changed.
    Rejected(EngineError),
}

/// Result of [`Engine::apply`].
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub outcome: Outcome,
    pub effects: Vec<Effect>,
}

/// A saga that routing says an awaited event belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Correlation {
    pub saga_type: String,
    pub saga_version: u32,
    /// Correlation key computed from the event.
    pub key: String,
    /// Await step path.
    pub step: String,
}

// ------------------------------------------------------------------ engine

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
            && state.timers.values().all(|t| fits(t.step))
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

/// The saga id for a correlation key: it follows from type and key only.
fn saga_id(def: &SagaDefinition, key: &str) -> Result<String, EngineError> {
    let err = |reason: String| EngineError::TriggerExpression {
        saga_type: def.saga_type.clone(),
        reason,
    };
    let id = def
        .trigger
        .saga_id
        .eval_string(&json!({ "key": key, "type": &def.saga_type }))
        .map_err(err)?;
    if id.is_empty() {
        return Err(err("the saga id is empty".into()));
    }
    // `/` separates the parts of command and timer ids: escape it (and
    // the escape character) so ids stay unambiguous.
    Ok(id.replace('%', "%25").replace('/', "%2F"))
}

/// The command id of an action or compensation attempt.
pub fn command_id(saga_id: &str, step_path: &str, kind: CommandKind, attempt: u32) -> String {
    match kind {
        CommandKind::Action => format!("{saga_id}/{step_path}/{attempt}"),
        CommandKind::Compensation => format!("{saga_id}/{step_path}/compensate/{attempt}"),
    }
}

fn timer_id(saga_id: &str, step_path: &str, purpose: TimerPurpose, attempt: u32) -> String {
    match purpose {
        TimerPurpose::StepTimeout => format!("{saga_id}/{step_path}/timeout/{attempt}"),
        TimerPurpose::RetryBackoff => format!("{saga_id}/{step_path}/backoff/{attempt}"),
        TimerPurpose::AwaitDeadline => format!("{saga_id}/{step_path}/deadline/{attempt}"),
        TimerPurpose::CompensationTimeout => {
            format!("{saga_id}/{step_path}/compensate/timeout/{attempt}")
        }
        TimerPurpose::CompensationBackoff => {
            format!("{saga_id}/{step_path}/compensate/backoff/{attempt}")
        }
    }
}

/// The evaluation context (`event`, `saga`, `steps`), reduced to what
/// the expressions read.
fn ctx(st: &SagaState, needs: &[&[String]]) -> Value {
    let saga = json!({
        "id": st.saga_id,
        "type": st.saga_type,
        "version": st.saga_version,
        "key": st.key,
    });
    crate::expr::project(
        |top| match top {
            "event" => Some(Root::Value(&st.trigger)),
            "saga" => Some(Root::Value(&saga)),
            // Only the bindings that are read get cloned (see `project`).
            "steps" => Some(Root::Map(&st.data)),
            _ => None,
        },
        needs,
    )
}

fn needs_of(e: &crate::expr::Expr) -> Vec<&[String]> {
    e.needs().iter().map(Vec::as_slice).collect()
}

fn command_for(
    def: &SagaDefinition,
    st: &SagaState,
    id: NodeId,
    kind: CommandKind,
    attempt: u32,
) -> Option<Result<Command, String>> {
    let step = def.step(id);
    let StepKind::Call(call) = &step.kind else {
        return None;
    };
    let (service, operation, template, timeout_ms) = match kind {
        CommandKind::Action => (&call.service, &call.operation, &call.input, call.timeout_ms),
        CommandKind::Compensation => {
            let c = call.compensate.as_ref()?;
            (&c.service, &c.operation, &c.input, c.timeout_ms)
        }
    };
    Some(
        template
            .eval(&ctx(st, &template.needs()))
            .map(|input| Command {
                command_id: command_id(&st.saga_id, &step.path, kind, attempt),
                idempotency_key: match kind {
                    CommandKind::Action => format!("{}/{}", st.saga_id, step.path),
                    CommandKind::Compensation => format!("{}/{}/compensate", st.saga_id, step.path),
                },
                saga_id: st.saga_id.clone(),
                saga_type: st.saga_type.clone(),
                saga_version: st.saga_version,
                step: step.path.clone(),
                service: service.clone(),
                operation: operation.clone(),
                attempt,
                kind,
                input,
                timeout_ms,
            }),
    )
}

/// What a relevant input will do (decided without mutating).
enum Action {
    Reply {
        step: NodeId,
        kind: CommandKind,
    },
    Event {
        step: NodeId,
    },
    /// The event is for an await this saga has not reached yet.
    EarlyEvent {
        step: NodeId,
    },
    Timer {
        id: String,
        timer: Timer,
    },
    Retry,
    Abort,
}

fn parse_command_id<'a>(saga_id: &str, command_id: &'a str) -> Option<(&'a str, CommandKind, u32)> {
    let rest = command_id.strip_prefix(saga_id)?.strip_prefix('/')?;
    let (head, attempt) = rest.rsplit_once('/')?;
    let attempt = attempt.parse().ok()?;
    match head.strip_suffix("/compensate") {
        Some(path) => Some((path, CommandKind::Compensation, attempt)),
        None => Some((head, CommandKind::Action, attempt)),
    }
}

fn classify(
    def: &SagaDefinition,
    st: &SagaState,
    input: &Input,
    now: Timestamp,
) -> Result<Action, Outcome> {
    let stale = |s: String| Err(Outcome::Stale(s));
    match input {
        Input::Reply(r) => {
            let Some((path, kind, attempt)) = parse_command_id(&st.saga_id, &r.command_id) else {
                return stale(format!("`{}` is not a command of this saga", r.command_id));
            };
            let Some(step) = def.step_by_path(path) else {
                return stale(format!(
                    "no step `{path}` in {} v{}",
                    st.saga_type, st.saga_version
                ));
            };
            let Some(run) = st.steps.get(&step) else {
                return stale(format!("step `{path}` has not started"));
            };
            match kind {
                CommandKind::Action => {
                    if attempt != run.attempt {
                        return stale(format!(
                            "reply for attempt {attempt} of `{path}`, current attempt is {}",
                            run.attempt
                        ));
                    }
                    if !matches!(run.phase, Phase::Active | Phase::Abandoned) {
                        return stale(format!(
                            "step `{path}` is no longer waiting for a reply ({:?})",
                            run.phase
                        ));
                    }
                }
                CommandKind::Compensation => {
                    if attempt != run.comp_attempt || run.phase != Phase::Compensating {
                        return stale(format!(
                            "compensation reply for attempt {attempt} of `{path}` is not awaited"
                        ));
                    }
                }
            }
            Ok(Action::Reply { step, kind })
        }
        Input::Event(e) => {
            if st.status != SagaStatus::Running {
                return stale(format!("saga is {}", st.status));
            }
            let event_ctx = json!({ "event": &e.payload });
            for (&id, run) in &st.steps {
                if run.phase != Phase::Active || run.branch.is_some() {
                    continue;
                }
                if let StepKind::Await(a) = &def.step(id).kind
                    && a.topic == e.topic
                    && a.event_type == e.event_type
                    && a.correlate.eval_string(&event_ctx).ok().as_deref() == Some(st.key.as_str())
                {
                    return Ok(Action::Event { step: id });
                }
            }
            // Choreography races: the event may come before the saga
            // reaches its await. Keep the first one per await step.
            for (i, step) in def.steps().iter().enumerate() {
                let id = i as NodeId;
                if let StepKind::Await(a) = &step.kind
                    && !st.steps.contains_key(&id)
                    && !st.early.contains_key(&id)
                    && a.topic == e.topic
                    && a.event_type == e.event_type
                    && a.correlate.eval_string(&event_ctx).ok().as_deref() == Some(st.key.as_str())
                {
                    return Ok(Action::EarlyEvent { step: id });
                }
            }
            stale(format!(
                "no active await for {} on {} with key `{}`",
                e.event_type, e.topic, st.key
            ))
        }
        Input::TimerFired { timer_id } => match st.timers.get(timer_id) {
            None => stale(format!(
                "timer `{timer_id}` is not armed (cancelled or already fired)"
            )),
            Some(t) if t.fire_at > now => stale(format!(
                "timer `{timer_id}` is due at {}, now is {}",
                t.fire_at.0, now.0
            )),
            Some(t) => Ok(Action::Timer {
                id: timer_id.clone(),
                timer: t.clone(),
            }),
        },
        Input::Retry { .. } => match (st.status, &st.failure) {
            (SagaStatus::Failed, Some(_)) => Ok(Action::Retry),
            (status, _) => Err(Outcome::Rejected(EngineError::NotAllowed {
                status: status.to_string(),
                reason: "only a failed saga can be retried".into(),
            })),
        },
        Input::Abort { .. } => {
            let forward_failure = st
                .failure
                .as_ref()
                .is_some_and(|f| f.phase != FailurePhase::Compensation);
            match st.status {
                SagaStatus::Running => Ok(Action::Abort),
                SagaStatus::Failed if forward_failure => Ok(Action::Abort),
                status => Err(Outcome::Rejected(EngineError::NotAllowed {
                    status: status.to_string(),
                    reason: "abort compensates a running saga or one that failed going forward"
                        .into(),
                })),
            }
        }
    }
}

/// One transition in progress.
struct Run<'a> {
    def: &'a SagaDefinition,
    st: &'a mut SagaState,
    now: Timestamp,
    fx: Vec<Effect>,
}

impl Run<'_> {
    fn path(&self, id: NodeId) -> &str {
        &self.def.step(id).path
    }

    fn run(&mut self, id: NodeId) -> &mut StepRun {
        self.st.steps.entry(id).or_insert(StepRun {
            phase: Phase::Active,
            attempt: 0,
            comp_attempt: 0,
            branch: None,
            late: false,
        })
    }

    fn phase(&self, id: NodeId) -> Option<Phase> {
        self.st.steps.get(&id).map(|r| r.phase)
    }

    fn set_phase(&mut self, id: NodeId, phase: Phase) {
        self.run(id).phase = phase;
    }

    fn life(
        &mut self,
        kind: LifecycleKind,
        step: Option<NodeId>,
        attempt: Option<u32>,
        detail: Option<String>,
    ) {
        self.st.seq += 1;
        let seq = self.st.seq;
        self.fx.push(Effect::Lifecycle(LifecycleEvent {
            event_id: format!("{}/{seq}", self.st.saga_id),
            saga_id: self.st.saga_id.clone(),
            saga_type: self.st.saga_type.clone(),
            saga_version: self.st.saga_version,
            seq,
            kind,
            step: step.map(|s| self.path(s).to_string()),
            attempt,
            detail,
            at: self.now,
            input: None,
            output: None,
            error: None,
            attributes: BTreeMap::new(),
        }));
    }

    /// Changes the lifecycle event just pushed (if the last effect is one).
    fn with_last(&mut self, f: impl FnOnce(&mut LifecycleEvent)) {
        if let Some(Effect::Lifecycle(e)) = self.fx.last_mut() {
            f(e);
        }
    }

    /// The paths redacted from a step's data: the saga's and the step's.
    fn sensitive(&self, id: NodeId) -> Vec<FieldPath> {
        let mut paths = self.def.sensitive.clone();
        if let StepKind::Call(c) = &self.def.step(id).kind {
            paths.extend(c.sensitive.iter().cloned());
        }
        paths
    }

    /// A step's data as a lifecycle event carries it.
    fn step_data(&self, id: NodeId, value: Value) -> Value {
        data::for_event(value, &self.sensitive(id))
    }

    /// A failed attempt's error body as a lifecycle event carries it.
    fn error_body(&self, id: NodeId, message: &str, mut body: Value) -> Value {
        data::redact(&mut body, &self.sensitive(id));
        data::bound(
            json!({ "message": message, "data": body }),
            data::MAX_DATA_BYTES,
        )
    }

    /// Attaches a command's input to the `*Started` event just pushed for
    /// the same step and attempt.
    fn attach_input(&mut self, id: NodeId, attempt: u32, input: &Value) {
        let path = self.path(id).to_string();
        let value = self.step_data(id, input.clone());
        self.with_last(|e| {
            let started = matches!(
                e.kind,
                LifecycleKind::StepStarted | LifecycleKind::CompensationStepStarted
            );
            if started && e.step.as_deref() == Some(&path) && e.attempt == Some(attempt) {
                e.input = Some(value);
            }
        });
    }

    fn arm(&mut self, id: NodeId, purpose: TimerPurpose, attempt: u32, after_ms: u64) {
        let timer_id = timer_id(&self.st.saga_id, self.path(id), purpose, attempt);
        let fire_at = self.now.plus_ms(after_ms);
        self.st.timers.insert(
            timer_id.clone(),
            Timer {
                fire_at,
                purpose,
                step: id,
                attempt,
            },
        );
        self.fx.push(Effect::ArmTimer {
            timer_id,
            fire_at,
            purpose,
        });
    }

    fn disarm(&mut self, id: NodeId, purpose: TimerPurpose, attempt: u32) {
        let timer_id = timer_id(&self.st.saga_id, self.path(id), purpose, attempt);
        if self.st.timers.remove(&timer_id).is_some() {
            self.fx.push(Effect::CancelTimer { timer_id });
        }
    }

    fn act(&mut self, action: Action, input: Input) {
        match (action, input) {
            (Action::Reply { step, kind }, Input::Reply(r)) => match kind {
                CommandKind::Action => self.on_reply(step, r),
                CommandKind::Compensation => self.on_comp_reply(step, r),
            },
            (Action::Event { step }, Input::Event(e)) => {
                let StepKind::Await(a) = &self.def.step(step).kind else {
                    return;
                };
                self.disarm(
                    step,
                    TimerPurpose::AwaitDeadline,
                    self.st.steps[&step].attempt,
                );
                let output = self.step_data(step, e.payload.clone());
                self.st.data.insert(a.bind.clone(), e.payload);
                self.set_phase(step, Phase::Succeeded);
                self.life(
                    LifecycleKind::StepSucceeded,
                    Some(step),
                    None,
                    Some(format!("event {}", e.message_id)),
                );
                self.with_last(|l| l.output = Some(output));
                self.continue_after(step);
            }
            (Action::EarlyEvent { step }, Input::Event(e)) => {
                self.st.early.insert(step, e.payload);
            }
            (Action::Timer { id, timer }, _) => {
                self.st.timers.remove(&id);
                self.on_timer(timer);
            }
            (Action::Retry, _) => self.resume(),
            (Action::Abort, Input::Abort { reason, .. }) => {
                self.life(LifecycleKind::Aborted, None, None, Some(reason.clone()));
                let step = self.st.failure.as_ref().and_then(|f| f.step);
                self.begin_compensation(step, format!("aborted by operator: {reason}"));
            }
            _ => {}
        }
    }

    // ---------------------------------------------------------- forward

    fn enter(&mut self, id: NodeId) {
        if self.st.status != SagaStatus::Running {
            return;
        }
        let def = self.def;
        let step = def.step(id);
        match &step.kind {
            StepKind::Call(_) => {
                let attempt = self.st.steps.get(&id).map_or(0, |r| r.attempt) + 1;
                self.life(LifecycleKind::StepStarted, Some(id), Some(attempt), None);
                self.call_attempt(id, attempt);
            }
            StepKind::Parallel { branches } => {
                self.run(id).phase = Phase::Active;
                self.life(LifecycleKind::StepStarted, Some(id), None, None);
                for (_, list) in branches {
                    if let Some(&first) = list.first() {
                        self.enter(first);
                    }
                    if self.st.status != SagaStatus::Running {
                        return;
                    }
                }
                if self.phase(id) == Some(Phase::Active) && self.branches_done(id) {
                    self.step_done(id, None);
                }
            }
            StepKind::Choice { when, default } => {
                let mut chosen = None;
                for (i, (cond, list)) in when.iter().enumerate() {
                    match cond.eval_bool(&ctx(self.st, &needs_of(cond))) {
                        Ok(true) => {
                            chosen = Some((i, list));
                            break;
                        }
                        Ok(false) => {}
                        Err(e) => return self.fail(Some(id), FailurePhase::Forward, e),
                    }
                }
                let (index, list) = chosen.unwrap_or((when.len(), default));
                let r = self.run(id);
                r.phase = Phase::Active;
                r.branch = Some(index as u16);
                let detail = if index < when.len() {
                    format!("when[{index}]: {}", when[index].0.source())
                } else {
                    "default".to_string()
                };
                self.life(LifecycleKind::StepStarted, Some(id), None, Some(detail));
                match list.first() {
                    Some(&first) => self.enter(first),
                    None => self.step_done(id, None),
                }
            }
            StepKind::Await(a) => {
                let r = self.run(id);
                r.phase = Phase::Active;
                r.branch = None;
                r.attempt += 1;
                let attempt = r.attempt;
                if let Some(payload) = self.st.early.remove(&id) {
                    self.life(LifecycleKind::StepStarted, Some(id), None, None);
                    self.st.data.insert(a.bind.clone(), payload);
                    return self.step_done(id, Some("event had arrived early".into()));
                }
                self.life(
                    LifecycleKind::StepStarted,
                    Some(id),
                    None,
                    Some(format!("awaiting {} on {}", a.event_type, a.topic)),
                );
                self.arm(id, TimerPurpose::AwaitDeadline, attempt, a.deadline_ms);
            }
            StepKind::Emit(e) => {
                let mut needs = needs_of(&e.key);
                needs.extend(e.payload.needs());
                let c = ctx(self.st, &needs);
                let built = e
                    .key
                    .eval_string(&c)
                    .and_then(|k| Ok((k, e.payload.eval(&c)?)));
                match built {
                    Ok((key, payload)) => {
                        self.run(id).phase = Phase::Active;
                        self.fx.push(Effect::Emit(DomainEvent {
                            event_id: format!("{}/{}", self.st.saga_id, step.path),
                            topic: e.topic.clone(),
                            event_type: e.event_type.clone(),
                            key,
                            payload,
                        }));
                        self.step_done(id, None);
                    }
                    Err(err) => self.fail(Some(id), FailurePhase::Forward, err),
                }
            }
            StepKind::Reject { reason } => {
                let reason = reason
                    .eval_string(&ctx(self.st, &needs_of(reason)))
                    .unwrap_or_else(|e| format!("{} ({e})", reason.source()));
                self.set_phase(id, Phase::Failed);
                self.life(
                    LifecycleKind::StepFailed,
                    Some(id),
                    None,
                    Some(reason.clone()),
                );
                self.begin_compensation(Some(id), reason);
            }
            StepKind::Finish => {
                self.set_phase(id, Phase::Succeeded);
                self.life(LifecycleKind::StepSucceeded, Some(id), None, None);
                self.complete();
            }
        }
    }

    fn call_attempt(&mut self, id: NodeId, attempt: u32) {
        let r = self.run(id);
        r.phase = Phase::Active;
        r.attempt = attempt;
        match command_for(self.def, self.st, id, CommandKind::Action, attempt) {
            Some(Ok(cmd)) => {
                self.attach_input(id, attempt, &cmd.input);
                let timeout = cmd.timeout_ms;
                self.fx.push(Effect::Command(cmd));
                self.arm(id, TimerPurpose::StepTimeout, attempt, timeout);
            }
            Some(Err(e)) => self.fail(Some(id), FailurePhase::Forward, e),
            None => {}
        }
    }

    fn policy(&self, id: NodeId, kind: CommandKind) -> Option<&RetryPolicy> {
        match &self.def.step(id).kind {
            StepKind::Call(c) => match kind {
                CommandKind::Action => Some(&c.retry),
                CommandKind::Compensation => c.compensate.as_ref().map(|c| &c.retry),
            },
            _ => None,
        }
    }

    fn on_reply(&mut self, id: NodeId, r: Reply) {
        let run = self.st.steps[&id].clone();
        self.disarm(id, TimerPurpose::StepTimeout, run.attempt);
        let reason = || {
            r.error
                .clone()
                .unwrap_or_else(|| format!("{:?}", r.outcome))
        };
        if run.phase == Phase::Abandoned {
            // Late reply after the saga stopped going forward.
            if r.outcome == ReplyOutcome::Success {
                self.succeed_call(id, r.data, true);
            } else {
                self.set_phase(id, Phase::Failed);
                let reason = reason();
                let body = self.error_body(id, &reason, r.data.clone());
                self.life(
                    LifecycleKind::LateReply,
                    Some(id),
                    Some(run.attempt),
                    Some(reason),
                );
                self.with_last(|e| e.error = Some(body));
            }
            if self.st.status == SagaStatus::Compensating {
                self.comp_next();
            }
            return;
        }
        match r.outcome {
            ReplyOutcome::Success => {
                self.succeed_call(id, r.data, false);
                self.continue_after(id);
            }
            ReplyOutcome::BusinessFailure => {
                self.set_phase(id, Phase::Failed);
                let reason = reason();
                let body = self.error_body(id, &reason, r.data.clone());
                self.life(
                    LifecycleKind::StepFailed,
                    Some(id),
                    Some(run.attempt),
                    Some(reason.clone()),
                );
                self.with_last(|e| e.error = Some(body));
                self.begin_compensation(
                    Some(id),
                    format!("step `{}` failed: {reason}", self.path(id)),
                );
            }
            ReplyOutcome::TransientFailure => {
                let reason = reason();
                let body = self.error_body(id, &reason, r.data.clone());
                self.retry_or_fail(
                    id,
                    CommandKind::Action,
                    RetryOn::Transient,
                    reason,
                    Some(body),
                );
            }
        }
    }

    fn succeed_call(&mut self, id: NodeId, data: Value, late: bool) {
        let StepKind::Call(call) = &self.def.step(id).kind else {
            return;
        };
        let r = self.run(id);
        r.phase = Phase::Succeeded;
        r.late = late;
        let attempt = r.attempt;
        let output = self.step_data(id, data.clone());
        self.st.data.insert(call.bind.clone(), data);
        if call.compensate.is_some() {
            self.st.completed.push(id);
        }
        let kind = if late {
            LifecycleKind::LateReply
        } else {
            LifecycleKind::StepSucceeded
        };
        self.life(
            kind,
            Some(id),
            Some(attempt),
            late.then(|| "succeeded after the saga stopped going forward".to_string()),
        );
        self.with_last(|e| e.output = Some(output));
    }

    fn retry_or_fail(
        &mut self,
        id: NodeId,
        kind: CommandKind,
        why: RetryOn,
        reason: String,
        body: Option<Value>,
    ) {
        let policy = self
            .policy(id, kind)
            .cloned()
            .unwrap_or_else(|| RetryPolicy {
                max_attempts: 1,
                initial: Default::default(),
                multiplier: 1.0,
                max: Default::default(),
                on: Vec::new(),
            });
        let run = self.st.steps[&id].clone();
        let attempt = match kind {
            CommandKind::Action => run.attempt,
            CommandKind::Compensation => run.comp_attempt,
        };
        if policy.on.contains(&why) && attempt < policy.max_attempts {
            let seed = command_id(&self.st.saga_id, self.path(id), kind, attempt);
            let delay = policy.backoff_ms(attempt + 1, &seed);
            let detail = Some(format!("{reason}; attempt {} in {delay}ms", attempt + 1));
            match kind {
                CommandKind::Action => {
                    self.set_phase(id, Phase::Backoff);
                    self.life(LifecycleKind::StepRetrying, Some(id), Some(attempt), detail);
                    self.with_last(|e| e.error = body);
                    self.arm(id, TimerPurpose::RetryBackoff, attempt, delay);
                }
                CommandKind::Compensation => {
                    self.set_phase(id, Phase::CompensationBackoff);
                    self.life(
                        LifecycleKind::CompensationStepRetrying,
                        Some(id),
                        Some(attempt),
                        detail,
                    );
                    self.with_last(|e| e.error = body);
                    self.arm(id, TimerPurpose::CompensationBackoff, attempt, delay);
                }
            }
            return;
        }
        let reason = if attempt >= policy.max_attempts && policy.on.contains(&why) {
            format!("{reason} (after {attempt} attempts)")
        } else {
            reason
        };
        match kind {
            CommandKind::Action => {
                self.set_phase(id, Phase::Failed);
                self.life(
                    LifecycleKind::StepFailed,
                    Some(id),
                    Some(attempt),
                    Some(reason.clone()),
                );
                self.with_last(|e| e.error = body);
                self.begin_compensation(
                    Some(id),
                    format!("step `{}` failed: {reason}", self.path(id)),
                );
            }
            CommandKind::Compensation => {
                self.set_phase(id, Phase::CompensationFailed);
                self.life(
                    LifecycleKind::CompensationStepFailed,
                    Some(id),
                    Some(attempt),
                    Some(reason.clone()),
                );
                self.with_last(|e| e.error = body);
                self.fail(
                    Some(id),
                    FailurePhase::Compensation,
                    format!("compensation of `{}` failed: {reason}", self.path(id)),
                );
            }
        }
    }

    fn on_timer(&mut self, t: Timer) {
        let id = t.step;
        let phase = self.phase(id);
        match t.purpose {
            TimerPurpose::StepTimeout => {
                let timeout = match &self.def.step(id).kind {
                    StepKind::Call(c) => c.timeout_ms,
                    _ => 0,
                };
                if phase == Some(Phase::Abandoned) {
                    self.set_phase(id, Phase::Failed);
                    self.life(
                        LifecycleKind::StepTimedOut,
                        Some(id),
                        Some(t.attempt),
                        Some("abandoned command timed out".into()),
                    );
                    if self.st.status == SagaStatus::Compensating {
                        self.comp_next();
                    }
                    return;
                }
                self.life(LifecycleKind::StepTimedOut, Some(id), Some(t.attempt), None);
                self.retry_or_fail(
                    id,
                    CommandKind::Action,
                    RetryOn::Timeout,
                    format!("no reply within {timeout}ms"),
                    None,
                );
            }
            TimerPurpose::RetryBackoff => self.call_attempt(id, t.attempt + 1),
            TimerPurpose::CompensationTimeout => {
                self.retry_or_fail(
                    id,
                    CommandKind::Compensation,
                    RetryOn::Timeout,
                    "no compensation reply in time".into(),
                    None,
                );
            }
            TimerPurpose::CompensationBackoff => self.comp_attempt(id, t.attempt + 1),
            TimerPurpose::AwaitDeadline => {
                let StepKind::Await(a) = &self.def.step(id).kind else {
                    return;
                };
                let reason = format!("no {} on {} before the deadline", a.event_type, a.topic);
                match &a.on_deadline {
                    OnDeadline::Fail => {
                        self.set_phase(id, Phase::Failed);
                        self.life(
                            LifecycleKind::StepFailed,
                            Some(id),
                            None,
                            Some(reason.clone()),
                        );
                        self.fail(
                            Some(id),
                            FailurePhase::Forward,
                            format!("step `{}`: {reason}", self.path(id)),
                        );
                    }
                    OnDeadline::Compensate => {
                        self.set_phase(id, Phase::Failed);
                        self.life(
                            LifecycleKind::StepFailed,
                            Some(id),
                            None,
                            Some(reason.clone()),
                        );
                        self.begin_compensation(
                            Some(id),
                            format!("step `{}`: {reason}", self.path(id)),
                        );
                    }
                    OnDeadline::Continue(list) => {
                        self.run(id).branch = Some(1);
                        self.life(
                            LifecycleKind::StepTimedOut,
                            Some(id),
                            None,
                            Some(format!("{reason}; taking the deadline path")),
                        );
                        match list.first() {
                            Some(&first) => self.enter(first),
                            None => self.step_done(id, None),
                        }
                    }
                }
            }
        }
    }

    fn step_done(&mut self, id: NodeId, detail: Option<String>) {
        self.set_phase(id, Phase::Succeeded);
        self.life(LifecycleKind::StepSucceeded, Some(id), None, detail);
        self.continue_after(id);
    }

    fn continue_after(&mut self, id: NodeId) {
        if self.st.status != SagaStatus::Running {
            return;
        }
        let step = self.def.step(id);
        if let Some(next) = step.next {
            return self.enter(next);
        }
        match step.owner {
            ListOwner::Root => self.complete(),
            ListOwner::Branch(p) => {
                if self.phase(p) == Some(Phase::Active) && self.branches_done(p) {
                    self.step_done(p, None);
                }
            }
            ListOwner::Choice(c) => self.step_done(c, None),
            ListOwner::Deadline(a) => self.step_done(a, Some("deadline path done".into())),
        }
    }

    fn branches_done(&self, p: NodeId) -> bool {
        let StepKind::Parallel { branches } = &self.def.step(p).kind else {
            return false;
        };
        branches.iter().all(|(_, list)| match list.last() {
            None => true,
            Some(last) => self.phase(*last) == Some(Phase::Succeeded),
        })
    }

    fn complete(&mut self) {
        let output = match &self.def.result {
            Some(t) => match t.eval(&ctx(self.st, &t.needs())) {
                Ok(v) => v,
                Err(e) => return self.fail(None, FailurePhase::Completion, format!("result: {e}")),
            },
            None => Value::Object(Map::new()),
        };
        self.stop_forward();
        self.finish(
            SagaStatus::Completed,
            output,
            LifecycleKind::Completed,
            None,
        );
    }

    fn finish(
        &mut self,
        status: SagaStatus,
        output: Value,
        kind: LifecycleKind,
        detail: Option<String>,
    ) {
        self.st.status = status;
        self.st.output = Some(output.clone());
        self.life(kind, None, None, detail);
        self.fx.push(Effect::Result(SagaResult {
            saga_id: self.st.saga_id.clone(),
            saga_type: self.st.saga_type.clone(),
            saga_version: self.st.saga_version,
            status,
            output: result_output(self.def, output),
        }));
    }

    /// Stops everything going forward: commands in flight are abandoned
    /// (their timeout timers stay armed so they resolve), awaits and
    /// backoffs are cancelled.
    fn stop_forward(&mut self) {
        let ids: Vec<NodeId> = self.st.steps.keys().copied().collect();
        for id in ids {
            let run = self.st.steps[&id].clone();
            match (&self.def.step(id).kind, run.phase) {
                (StepKind::Call(_), Phase::Active) => self.set_phase(id, Phase::Abandoned),
                (StepKind::Call(_), Phase::Backoff) => {
                    self.disarm(id, TimerPurpose::RetryBackoff, run.attempt);
                    self.set_phase(id, Phase::Cancelled);
                }
                (StepKind::Await(_), Phase::Active) if run.branch.is_none() => {
                    self.disarm(id, TimerPurpose::AwaitDeadline, run.attempt);
                    self.set_phase(id, Phase::Cancelled);
                }
                _ => {}
            }
        }
    }

    fn fail(&mut self, step: Option<NodeId>, phase: FailurePhase, reason: String) {
        let mut was_active = false;
        if phase == FailurePhase::Forward
            && let Some(id) = step
            && matches!(self.phase(id), Some(Phase::Active))
        {
            let attempt = self.st.steps[&id].attempt;
            self.disarm(id, TimerPurpose::StepTimeout, attempt);
            self.disarm(id, TimerPurpose::AwaitDeadline, attempt);
            self.set_phase(id, Phase::Failed);
            was_active = true;
        }
        if phase != FailurePhase::Compensation {
            self.stop_forward();
        }
        self.st.failure = Some(Failure {
            phase,
            step,
            reason: reason.clone(),
        });
        let output = json!({ "error": &reason, "step": step.map(|s| self.path(s).to_string()) });
        self.st.status = SagaStatus::Failed;
        self.st.output = Some(output.clone());
        if was_active
            || (phase == FailurePhase::Forward && step.is_some_and(|s| self.phase(s).is_none()))
        {
            self.life(LifecycleKind::StepFailed, step, None, Some(reason.clone()));
        }
        self.finish(
            SagaStatus::Failed,
            output,
            LifecycleKind::Failed,
            Some(reason),
        );
    }

    // ----------------------------------------------------- compensation

    fn begin_compensation(&mut self, step: Option<NodeId>, reason: String) {
        self.stop_forward();
        self.st.status = SagaStatus::Compensating;
        self.st.failure = Some(Failure {
            phase: FailurePhase::Forward,
            step,
            reason: reason.clone(),
        });
        self.life(LifecycleKind::Compensating, step, None, Some(reason));
        self.comp_next();
    }

    fn comp_next(&mut self) {
        if self.st.status != SagaStatus::Compensating {
            return;
        }
        let busy = self
            .st
            .steps
            .values()
            .any(|r| matches!(r.phase, Phase::Compensating | Phase::CompensationBackoff));
        if busy {
            return;
        }
        if let Some(id) = self.st.completed.pop() {
            let attempt = self.st.steps[&id].comp_attempt + 1;
            self.life(
                LifecycleKind::CompensationStepStarted,
                Some(id),
                Some(attempt),
                None,
            );
            return self.comp_attempt(id, attempt);
        }
        if self.st.steps.values().any(|r| r.phase == Phase::Abandoned) {
            // Wait: an abandoned command may still succeed and need undoing.
            return;
        }
        let failure = self.st.failure.clone();
        let reason = failure.as_ref().map(|f| f.reason.clone());
        let output = json!({
            "error": reason,
            "step": failure.and_then(|f| f.step).map(|s| self.path(s).to_string()),
        });
        self.finish(
            SagaStatus::Compensated,
            output,
            LifecycleKind::Compensated,
            reason,
        );
    }

    fn comp_attempt(&mut self, id: NodeId, attempt: u32) {
        let r = self.run(id);
        r.phase = Phase::Compensating;
        r.comp_attempt = attempt;
        match command_for(self.def, self.st, id, CommandKind::Compensation, attempt) {
            Some(Ok(cmd)) => {
                self.attach_input(id, attempt, &cmd.input);
                let timeout = cmd.timeout_ms;
                self.fx.push(Effect::Command(cmd));
                self.arm(id, TimerPurpose::CompensationTimeout, attempt, timeout);
            }
            Some(Err(e)) => {
                self.set_phase(id, Phase::CompensationFailed);
                self.fail(
                    Some(id),
                    FailurePhase::Compensation,
                    format!("compensation of `{}`: {e}", self.path(id)),
                );
            }
            None => {}
        }
    }

    fn on_comp_reply(&mut self, id: NodeId, r: Reply) {
        let attempt = self.st.steps[&id].comp_attempt;
        self.disarm(id, TimerPurpose::CompensationTimeout, attempt);
        let reason = r
            .error
            .clone()
            .unwrap_or_else(|| format!("{:?}", r.outcome));
        match r.outcome {
            ReplyOutcome::Success => {
                self.set_phase(id, Phase::Compensated);
                let output = self.step_data(id, r.data);
                self.life(
                    LifecycleKind::CompensationStepSucceeded,
                    Some(id),
                    Some(attempt),
                    None,
                );
                self.with_last(|e| e.output = Some(output));
                self.comp_next();
            }
            ReplyOutcome::BusinessFailure => {
                self.set_phase(id, Phase::CompensationFailed);
                let body = self.error_body(id, &reason, r.data);
                self.life(
                    LifecycleKind::CompensationStepFailed,
                    Some(id),
                    Some(attempt),
                    Some(reason.clone()),
                );
                self.with_last(|e| e.error = Some(body));
                self.fail(
                    Some(id),
                    FailurePhase::Compensation,
                    format!("compensation of `{}` failed: {reason}", self.path(id)),
                );
            }
            ReplyOutcome::TransientFailure => {
                let body = self.error_body(id, &reason, r.data);
                self.retry_or_fail(
                    id,
                    CommandKind::Compensation,
                    RetryOn::Transient,
                    reason,
                    Some(body),
                );
            }
        }
    }

    // --------------------------------------------------------- operator

    fn resume(&mut self) {
        let Some(failure) = self.st.failure.take() else {
            return;
        };
        self.st.output = None;
        self.life(
            LifecycleKind::Resumed,
            failure.step,
            None,
            Some(failure.reason.clone()),
        );
        match failure.phase {
            FailurePhase::Compensation => {
                self.st.status = SagaStatus::Compensating;
                // Keep the original forward failure as the reason.
                self.st.failure = Some(Failure {
                    phase: FailurePhase::Forward,
                    step: None,
                    reason: failure.reason,
                });
                match failure.step {
                    Some(id) => {
                        let attempt = self.st.steps[&id].comp_attempt + 1;
                        self.comp_attempt(id, attempt);
                    }
                    None => self.comp_next(),
                }
            }
            FailurePhase::Completion => {
                self.st.status = SagaStatus::Running;
                self.complete();
            }
            FailurePhase::Forward => {
                self.st.status = SagaStatus::Running;
                let mut again: Vec<NodeId> = failure.step.into_iter().collect();
                let mut late = Vec::new();
                for (&id, run) in &self.st.steps {
                    match run.phase {
                        Phase::Abandoned | Phase::Cancelled | Phase::Failed
                            if Some(id) != failure.step =>
                        {
                            again.push(id)
                        }
                        Phase::Succeeded if run.late => late.push(id),
                        _ => {}
                    }
                }
                for id in again {
                    if self.st.status != SagaStatus::Running {
                        return;
                    }
                    // An abandoned command's old attempt is superseded.
                    if let Some(attempt) = self.st.steps.get(&id).map(|r| r.attempt) {
                        self.disarm(id, TimerPurpose::StepTimeout, attempt);
                    }
                    self.enter(id);
                }
                for id in late {
                    if self.st.status != SagaStatus::Running {
                        return;
                    }
                    self.run(id).late = false;
                    self.continue_after(id);
                }
            }
        }
    }
}

/// A saga's result as it leaves the orchestrator: the saga-level
/// `sensitive` paths redacted, like the step data of its lifecycle events
/// (the saga's state keeps the real values).
fn result_output(def: &SagaDefinition, mut output: Value) -> Value {
    data::redact(&mut output, &def.sensitive);
    output
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
