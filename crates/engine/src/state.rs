//! Durable saga state (serde-serializable, compact).

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::definition::NodeId;

/// Schema version of [`SagaState`]; bumped on incompatible changes.
pub const STATE_VERSION: u32 = 1;

/// How many applied input ids a state remembers (replies are also
/// recognised through step state, so this only has to cover recent inputs).
pub const APPLIED_WINDOW: usize = 64;

/// Milliseconds since the Unix epoch, supplied by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// `self + ms`, saturating.
    pub fn plus_ms(self, ms: u64) -> Timestamp {
        Timestamp(self.0.saturating_add(ms))
    }
}

/// Where a saga is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SagaStatus {
    /// Moving forward.
    Running,
    /// Undoing what succeeded.
    Compensating,
    /// Ended: every step ran.
    Completed,
    /// Ended: what succeeded was undone.
    Compensated,
    /// Stopped and needs an operator (`Retry` or `Abort`).
    Failed,
}

impl SagaStatus {
    /// Whether the saga has ended (an operator may still resume `Failed`).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            SagaStatus::Completed | SagaStatus::Compensated | SagaStatus::Failed
        )
    }
}

impl std::fmt::Display for SagaStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SagaStatus::Running => "running",
            SagaStatus::Compensating => "compensating",
            SagaStatus::Completed => "completed",
            SagaStatus::Compensated => "compensated",
            SagaStatus::Failed => "failed",
        })
    }
}

/// Phase of one step run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Command in flight, event awaited, or (parallel/choice) children running.
    Active,
    /// Waiting for the backoff timer before the next attempt.
    Backoff,
    /// Done.
    Succeeded,
    /// Failed for good.
    Failed,
    /// In flight when the saga stopped going forward; a late success is compensated.
    Abandoned,
    /// Stopped before it could finish (await or backoff cancelled).
    Cancelled,
    /// Compensation command in flight.
    Compensating,
    /// Waiting for the backoff timer before the next compensation attempt.
    CompensationBackoff,
    /// Undone.
    Compensated,
    /// Its compensation failed for good.
    CompensationFailed,
}

/// Runtime state of one step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRun {
    /// Phase.
    #[serde(rename = "p")]
    pub phase: Phase,
    /// Current action attempt (from 1; 0 for steps without commands).
    #[serde(rename = "a", default, skip_serializing_if = "is_zero")]
    pub attempt: u32,
    /// Current compensation attempt (0: not compensated yet).
    #[serde(rename = "c", default, skip_serializing_if = "is_zero")]
    pub comp_attempt: u32,
    /// Choice: chosen branch (`when` index; the default is `when.len()`).
    /// Await: 1 once the deadline path runs.
    #[serde(rename = "b", default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<u16>,
    /// Succeeded after the saga stopped going forward.
    #[serde(rename = "l", default, skip_serializing_if = "std::ops::Not::not")]
    pub late: bool,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// What a durable timer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TimerPurpose {
    /// A call attempt's reply timeout.
    StepTimeout,
    /// Backoff before the next call attempt.
    RetryBackoff,
    /// An await's deadline.
    AwaitDeadline,
    /// A compensation attempt's reply timeout.
    CompensationTimeout,
    /// Backoff before the next compensation attempt.
    CompensationBackoff,
    /// The saga's own deadline (`deadline:` of the definition).
    SagaDeadline,
    /// How long a call whose last attempt timed out may still answer: a
    /// success within it is compensated with the rest of the saga.
    LateReply,
}

impl TimerPurpose {
    /// Whether firing the timer decides against an input that may already
    /// be on its way: a reply (step and compensation timeouts), an awaited
    /// event, or any input at all (the saga's deadline). A runtime fires
    /// these only once it has read what arrived before they were due.
    /// Backoffs decide nothing against an input: they only wait.
    pub fn awaits_input(self) -> bool {
        matches!(
            self,
            Self::StepTimeout
                | Self::CompensationTimeout
                | Self::AwaitDeadline
                | Self::SagaDeadline
                | Self::LateReply
        )
    }
}

/// A durable timer held in the state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timer {
    /// When it is due.
    #[serde(rename = "at")]
    pub fire_at: Timestamp,
    /// What it is for.
    #[serde(rename = "for")]
    pub purpose: TimerPurpose,
    /// The step; none for the saga's own deadline.
    #[serde(rename = "s", default, skip_serializing_if = "Option::is_none")]
    pub step: Option<NodeId>,
    /// The attempt it belongs to.
    #[serde(rename = "a", default)]
    pub attempt: u32,
}

/// Which part of the saga failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailurePhase {
    /// A forward step.
    Forward,
    /// A compensation.
    Compensation,
    /// Building the result at completion.
    Completion,
}

/// Why a saga is `Failed` (or compensating).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// Phase.
    pub phase: FailurePhase,
    /// The step, by index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<NodeId>,
    /// Human-readable reason.
    pub reason: String,
}

/// The durable state of one saga instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaState {
    /// State schema version ([`STATE_VERSION`]).
    pub version: u32,
    /// Saga id (deterministic from the trigger).
    pub saga_id: String,
    /// Saga type.
    pub saga_type: String,
    /// Definition version this saga runs on, always.
    pub saga_version: u32,
    /// Correlation key.
    pub key: String,
    /// Status.
    pub status: SagaStatus,
    /// The trigger event's payload (`event` in expressions).
    pub trigger: Value,
    /// Bound step data (`steps` in expressions).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub data: Map<String, Value>,
    /// Step runs by step index; steps that never started are absent.
    #[serde(default)]
    pub steps: BTreeMap<NodeId, StepRun>,
    /// Compensable steps that succeeded and are not compensated yet, in
    /// completion order (compensation pops from the end).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub completed: Vec<NodeId>,
    /// Awaited events that arrived before their await step started, by step.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub early: BTreeMap<NodeId, Value>,
    /// Armed timers by id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub timers: BTreeMap<String, Timer>,
    /// Recently applied input ids (bounded by [`APPLIED_WINDOW`]).
    #[serde(default)]
    pub applied: VecDeque<String>,
    /// Why the saga is failed or compensating.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// The result once ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// Lifecycle event sequence number (last used).
    pub seq: u64,
    /// When the saga started.
    pub started_at: Timestamp,
    /// When an input was last applied.
    pub updated_at: Timestamp,
}

impl SagaState {
    /// Armed timers: (timer id, due time).
    pub fn timers(&self) -> impl Iterator<Item = (&str, Timestamp)> {
        self.timers.iter().map(|(id, t)| (id.as_str(), t.fire_at))
    }

    /// The earliest armed timer.
    pub fn next_timer(&self) -> Option<(&str, Timestamp)> {
        self.timers().min_by_key(|(_, at)| *at)
    }

    /// Timers due at `now`, earliest first.
    pub fn due_timers(&self, now: Timestamp) -> Vec<String> {
        let mut due: Vec<_> = self.timers().filter(|(_, at)| *at <= now).collect();
        due.sort_by_key(|(id, at)| (*at, id.to_string()));
        due.into_iter().map(|(id, _)| id.to_string()).collect()
    }

    pub(crate) fn remember(&mut self, id: &str) {
        if self.applied.len() >= APPLIED_WINDOW {
            self.applied.pop_front();
        }
        self.applied.push_back(id.to_string());
    }

    pub(crate) fn has_applied(&self, id: &str) -> bool {
        self.applied.iter().any(|a| a == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> SagaState {
        SagaState {
            version: STATE_VERSION,
            saga_id: "s".into(),
            saga_type: "t".into(),
            saga_version: 1,
            key: "k".into(),
            status: SagaStatus::Running,
            trigger: Value::Null,
            data: Map::new(),
            steps: BTreeMap::new(),
            completed: Vec::new(),
            early: BTreeMap::new(),
            timers: BTreeMap::new(),
            applied: VecDeque::new(),
            failure: None,
            output: None,
            seq: 0,
            started_at: Timestamp(0),
            updated_at: Timestamp(0),
        }
    }

    #[test]
    fn applied_ids_are_bounded() {
        let mut st = state();
        for i in 0..APPLIED_WINDOW + 10 {
            st.remember(&format!("m{i}"));
        }
        assert_eq!(st.applied.len(), APPLIED_WINDOW);
        assert!(!st.has_applied("m0"));
        assert!(!st.has_applied("m9"));
        assert!(st.has_applied("m10"));
        assert!(st.has_applied(&format!("m{}", APPLIED_WINDOW + 9)));
    }

    #[test]
    fn timers_are_listed_by_due_time() {
        let mut st = state();
        for (id, at) in [("b", 30), ("a", 10), ("c", 20)] {
            st.timers.insert(
                id.into(),
                Timer {
                    fire_at: Timestamp(at),
                    purpose: TimerPurpose::StepTimeout,
                    step: Some(0),
                    attempt: 1,
                },
            );
        }
        assert_eq!(st.next_timer(), Some(("a", Timestamp(10))));
        assert_eq!(st.due_timers(Timestamp(20)), ["a", "c"]);
        assert!(st.due_timers(Timestamp(5)).is_empty());
        assert_eq!(st.timers().count(), 3);
    }

    #[test]
    fn serialized_state_is_compact() {
        let st = state();
        let json = serde_json::to_string(&st).unwrap();
        // Empty collections and absent options are left out.
        assert!(!json.contains("timers"), "{json}");
        assert!(!json.contains("failure"), "{json}");
        let back: SagaState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, st);
    }
}
