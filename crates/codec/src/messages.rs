//! Sagaflow's own wire types: what the orchestrator and the adapters send
//! each other. Schemas: `schemas/sagaflow/*.avsc`.
//!
//! Field names match the Avro fields, except that JSON-valued payloads are
//! `serde_json::Value` here (`input`, `data`, `output`) and JSON text in Avro
//! (`input_json`, `data_json`, `output_json`). Times are milliseconds since
//! the Unix epoch (UTC). On JSON topics these structs are serialized as they
//! are, so JSON and Avro carry the same names and enum symbols. Unknown JSON
//! fields are ignored and optional fields may be absent, so JSON evolves
//! the way the Avro schemas do (new optional fields).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Whether a command performs a step or undoes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CommandKind {
    /// Perform the step.
    Action,
    /// Undo a step that succeeded.
    Compensation,
}

/// A command from the orchestrator to a service adapter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// Deterministic id, see [`Command::action_id`] and [`Command::compensation_id`].
    pub command_id: String,
    /// Saga instance id.
    pub saga_id: String,
    /// Saga definition name.
    pub saga_type: String,
    /// Saga definition version.
    pub saga_version: i32,
    /// Step path.
    pub step: String,
    /// Service whose adapter executes the command.
    pub service: String,
    /// Operation to call.
    pub operation: String,
    /// Attempt number, from 1.
    pub attempt: i32,
    /// Action or compensation.
    pub kind: CommandKind,
    /// Operation input (free-form JSON).
    pub input: Value,
    /// Time budget of the attempt, in milliseconds.
    pub timeout_ms: i64,
    /// When the command was issued (ms since the epoch).
    pub issued_at: i64,
    /// W3C `traceparent`, if tracing.
    #[serde(default)]
    pub trace_parent: Option<String>,
}

impl Command {
    /// `<saga id>/<step path>/<attempt>`.
    pub fn action_id(saga_id: &str, step: &str, attempt: i32) -> String {
        format!("{saga_id}/{step}/{attempt}")
    }

    /// `<saga id>/<step path>/compensate/<attempt>`.
    pub fn compensation_id(saga_id: &str, step: &str, attempt: i32) -> String {
        format!("{saga_id}/{step}/compensate/{attempt}")
    }
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReplyOutcome {
    /// The operation succeeded.
    Success,
    /// The service refused: the saga compensates.
    BusinessFailure,
    /// The adapter gave up on a transient failure: the orchestrator decides.
    TransientFailure,
}

/// Why a command failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyError {
    /// Machine-readable code.
    pub code: String,
    /// Human-readable message.
    pub message: String,
}

/// An adapter's reply to a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// Id of the command replied to.
    pub command_id: String,
    /// Saga instance id.
    pub saga_id: String,
    /// Step path.
    pub step: String,
    /// Attempt number.
    pub attempt: i32,
    /// Service that handled the command.
    pub service: String,
    /// Operation called.
    pub operation: String,
    /// How it ended.
    pub outcome: ReplyOutcome,
    /// Response data (JSON; `null` when none).
    pub data: Value,
    /// Set when `outcome` is not success.
    #[serde(default)]
    pub error: Option<ReplyError>,
    /// When the adapter finished (ms since the epoch).
    pub completed_at: i64,
    /// HTTP status of the backend response, if any.
    #[serde(default)]
    pub backend_status: Option<i32>,
}

/// What happened to a saga instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LifecycleKind {
    /// The saga started.
    Started,
    /// A step's command was issued.
    StepStarted,
    /// A step succeeded.
    StepSucceeded,
    /// A step failed for good.
    StepFailed,
    /// A step will be retried.
    StepRetrying,
    /// A step's attempt timed out.
    StepTimedOut,
    /// Reserved: never emitted (an await reports `STEP_STARTED`,
    /// `STEP_SUCCEEDED`, `STEP_FAILED` or `STEP_TIMED_OUT`). Kept because the
    /// symbol is in the registered Avro schema; see [`Self::RESERVED`].
    AwaitingEvent,
    /// Reserved: never emitted (see [`Self::AwaitingEvent`]).
    EventReceived,
    /// Reserved: never emitted (see [`Self::AwaitingEvent`]).
    EventDeadlineExpired,
    /// Compensation started.
    Compensating,
    /// A compensation command was issued.
    CompensationStepStarted,
    /// A compensation succeeded.
    CompensationStepSucceeded,
    /// A compensation failed.
    CompensationStepFailed,
    /// The saga completed.
    Completed,
    /// The saga was compensated.
    Compensated,
    /// The saga failed (compensation failed).
    Failed,
    /// A reply arrived for an attempt that had already timed out.
    LateReply,
    /// A compensation attempt failed transiently and will be retried.
    CompensationStepRetrying,
    /// An operator resumed a failed saga.
    Resumed,
    /// An operator aborted the saga.
    Aborted,
    /// A symbol this build does not know (written by a newer version).
    #[serde(other)]
    #[default]
    Unknown,
}

impl LifecycleKind {
    /// Kinds of the schema that nothing emits: the engine's own
    /// `LifecycleKind` is the source of truth for what is emitted, this enum
    /// mirrors the Avro schema. Removing symbols from the registered schema
    /// would be a compatibility change for every consumer for no gain, so
    /// they stay, reserved.
    pub const RESERVED: &'static [LifecycleKind] = &[
        LifecycleKind::AwaitingEvent,
        LifecycleKind::EventReceived,
        LifecycleKind::EventDeadlineExpired,
    ];
}

/// A saga lifecycle event.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SagaLifecycleEvent {
    /// Deterministic event id.
    pub event_id: String,
    /// Saga instance id.
    pub saga_id: String,
    /// Saga definition name.
    pub saga_type: String,
    /// Saga definition version.
    pub saga_version: i32,
    /// What happened.
    pub kind: LifecycleKind,
    /// Step path, for step events.
    #[serde(default)]
    pub step: Option<String>,
    /// Attempt, for step events.
    #[serde(default)]
    pub attempt: Option<i32>,
    /// Free-form detail.
    #[serde(default)]
    pub detail: Option<String>,
    /// When (ms since the epoch).
    pub at: i64,
    /// The step's input, or the trigger event for `STARTED` (JSON;
    /// sensitive fields redacted, large values truncated with a marker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    /// The step's output (JSON), redacted and bounded alike.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// A failed attempt's error body (JSON `{"message", "data"}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
    /// Search attributes, on `STARTED`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
}

/// How a saga ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SagaStatus {
    /// Every step succeeded.
    Completed,
    /// Failed and fully compensated.
    Compensated,
    /// A compensation failed: manual action needed.
    Failed,
}

/// The end of a saga instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaResult {
    /// Saga instance id.
    pub saga_id: String,
    /// Saga definition name.
    pub saga_type: String,
    /// Saga definition version.
    pub saga_version: i32,
    /// How it ended.
    pub status: SagaStatus,
    /// Saga output (JSON; `null` when none).
    pub output: Value,
    /// Why it did not complete.
    #[serde(default)]
    pub error: Option<String>,
    /// When it started (ms since the epoch).
    pub started_at: i64,
    /// When it ended (ms since the epoch).
    pub ended_at: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_ids_are_deterministic() {
        assert_eq!(
            Command::action_id("s-1", "pay/charge", 2),
            "s-1/pay/charge/2"
        );
        assert_eq!(
            Command::compensation_id("s-1", "pay/charge", 1),
            "s-1/pay/charge/compensate/1"
        );
    }

    #[test]
    fn json_from_a_newer_writer_with_extra_fields_is_read() {
        let json = r#"{"saga_id":"s","saga_type":"t","saga_version":1,"status":"COMPLETED",
            "output":{"ok":true},"started_at":1,"ended_at":2,"added_in_v2":"x"}"#;
        let result: SagaResult = serde_json::from_str(json).unwrap();
        assert_eq!(result.error, None);
        assert_eq!(result.status, SagaStatus::Completed);
    }

    #[test]
    fn enums_use_avro_symbols_in_json() {
        assert_eq!(
            serde_json::to_string(&ReplyOutcome::BusinessFailure).unwrap(),
            "\"BUSINESS_FAILURE\""
        );
        assert_eq!(
            serde_json::from_str::<LifecycleKind>("\"SOMETHING_NEW\"").unwrap(),
            LifecycleKind::Unknown
        );
    }
}
