//! What goes in and out of the engine: inputs (trigger, reply, awaited
//! event, timer, operator), effects (commands, lifecycle events, timers,
//! emitted events, results) and the outcome of applying an input.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::EngineError;
use crate::state::{SagaStatus, TimerPurpose, Timestamp};

// Inputs.

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

// Effects.

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

/// Kinds of saga lifecycle events: every kind the engine emits, and only
/// those. This is the source of truth for what happens to a saga; the wire
/// enum (`sagaflow_codec::messages::LifecycleKind`) mirrors the Avro schema,
/// which has these plus `UNKNOWN` and three reserved symbols nothing emits.
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

impl LifecycleKind {
    /// Every kind, in declaration order.
    pub const ALL: [LifecycleKind; 17] = [
        LifecycleKind::Started,
        LifecycleKind::StepStarted,
        LifecycleKind::StepSucceeded,
        LifecycleKind::StepFailed,
        LifecycleKind::StepRetrying,
        LifecycleKind::StepTimedOut,
        LifecycleKind::LateReply,
        LifecycleKind::Compensating,
        LifecycleKind::CompensationStepStarted,
        LifecycleKind::CompensationStepSucceeded,
        LifecycleKind::CompensationStepRetrying,
        LifecycleKind::CompensationStepFailed,
        LifecycleKind::Completed,
        LifecycleKind::Compensated,
        LifecycleKind::Failed,
        LifecycleKind::Resumed,
        LifecycleKind::Aborted,
    ];
}

/// A new kind breaks this match: add it to [`LifecycleKind::ALL`] too.
const _: fn(LifecycleKind) = |kind| match kind {
    LifecycleKind::Started
    | LifecycleKind::StepStarted
    | LifecycleKind::StepSucceeded
    | LifecycleKind::StepFailed
    | LifecycleKind::StepRetrying
    | LifecycleKind::StepTimedOut
    | LifecycleKind::LateReply
    | LifecycleKind::Compensating
    | LifecycleKind::CompensationStepStarted
    | LifecycleKind::CompensationStepSucceeded
    | LifecycleKind::CompensationStepRetrying
    | LifecycleKind::CompensationStepFailed
    | LifecycleKind::Completed
    | LifecycleKind::Compensated
    | LifecycleKind::Failed
    | LifecycleKind::Resumed
    | LifecycleKind::Aborted => {}
};

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
