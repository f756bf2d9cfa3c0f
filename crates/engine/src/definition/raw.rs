//! The raw shape of a definition file, as serde reads it (keys and
//! types only; [`validate`](super::validate) checks the meaning).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(super) struct RawTop {
    #[serde(rename = "type")]
    pub(super) saga_type: String,
    pub(super) version: u32,
    #[serde(default)]
    pub(super) description: Option<String>,
    pub(super) trigger: RawTrigger,
    pub(super) steps: Vec<Value>,
    #[serde(default)]
    pub(super) result: Option<Value>,
    /// Field paths redacted from every step's data in lifecycle events.
    #[serde(default)]
    pub(super) sensitive: Vec<String>,
    /// Named values computed from the trigger event, for searching sagas.
    #[serde(default)]
    pub(super) search_attributes: BTreeMap<String, String>,
    /// How long the whole saga may take, from its start.
    #[serde(default)]
    pub(super) deadline: Option<String>,
    /// What happens when the saga's deadline passes.
    #[serde(default)]
    pub(super) on_deadline: Option<RawSagaOnDeadline>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(super) enum RawSagaOnDeadline {
    Compensate,
    Fail,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(super) struct RawTrigger {
    pub(super) topic: String,
    pub(super) event_type: String,
    pub(super) key: String,
    #[serde(default)]
    pub(super) saga_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(super) struct RawRetry {
    #[serde(default)]
    pub(super) max_attempts: Option<u32>,
    #[serde(default)]
    pub(super) initial: Option<String>,
    #[serde(default)]
    pub(super) multiplier: Option<f64>,
    #[serde(default)]
    pub(super) max: Option<String>,
    #[serde(default)]
    pub(super) on: Option<Vec<RetryOn>>,
}

/// Which failed outcomes a retry policy retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RetryOn {
    /// The adapter reported a transient failure (5xx, connection error…).
    Transient,
    /// No reply before the step's timeout.
    Timeout,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(super) struct RawCompensate {
    #[serde(default)]
    pub(super) service: Option<String>,
    pub(super) operation: String,
    #[serde(default)]
    pub(super) input: Option<Value>,
    #[serde(default)]
    pub(super) timeout: Option<String>,
    #[serde(default)]
    pub(super) retry: Option<RawRetry>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(super) struct RawCall {
    pub(super) call: String,
    pub(super) service: String,
    pub(super) operation: String,
    #[serde(default)]
    pub(super) input: Option<Value>,
    #[serde(default)]
    pub(super) timeout: Option<String>,
    #[serde(default)]
    pub(super) retry: Option<RawRetry>,
    #[serde(default)]
    pub(super) bind: Option<String>,
    #[serde(default)]
    pub(super) compensate: Option<RawCompensate>,
    #[serde(default)]
    pub(super) lint: Option<RawLint>,
    /// Field paths redacted from this step's data in lifecycle events.
    #[serde(default)]
    pub(super) sensitive: Vec<String>,
}

/// `lint: {allow: [SF-DEF-W001]}`: warnings silenced on purpose for a step.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(super) struct RawLint {
    pub(super) allow: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(super) struct RawBranch {
    pub(super) name: String,
    pub(super) steps: Vec<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(super) struct RawParallel {
    pub(super) parallel: String,
    pub(super) branches: Vec<RawBranch>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(super) struct RawWhen {
    #[serde(rename = "if")]
    pub(super) condition: String,
    pub(super) steps: Vec<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(super) struct RawChoice {
    pub(super) choice: String,
    pub(super) when: Vec<RawWhen>,
    #[serde(default)]
    pub(super) default: Option<Vec<Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(super) enum RawOnDeadline {
    Fail,
    Compensate,
    Continue(Vec<Value>),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(super) struct RawAwait {
    #[serde(rename = "await")]
    pub(super) name: String,
    pub(super) topic: String,
    pub(super) event_type: String,
    pub(super) correlate: String,
    pub(super) deadline: String,
    #[serde(default)]
    pub(super) on_deadline: Option<RawOnDeadline>,
    #[serde(default)]
    pub(super) bind: Option<String>,
    /// Warnings silenced on purpose for this step.
    #[serde(default)]
    pub(super) lint: Option<RawLint>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(super) struct RawEmit {
    pub(super) emit: String,
    pub(super) topic: String,
    pub(super) event_type: String,
    pub(super) key: String,
    #[serde(default)]
    pub(super) payload: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(super) struct RawReject {
    pub(super) reject: String,
    pub(super) reason: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(super) struct RawFinish {
    pub(super) finish: String,
}
