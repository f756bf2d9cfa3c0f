//! The validated, compiled form of a definition: what the engine runs.

use std::collections::HashMap;
use std::time::Duration;

use crate::data::FieldPath;
use crate::error::DefinitionErrors;
use crate::expr::{Expr, ValueTemplate};
use crate::yaml::Position;

use super::{NodeId, RawSagaDefinition, RetryOn, ServiceCatalog};

/// Retry policy: exponential backoff with deterministic jitter.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in total, including the first (≥ 1).
    pub max_attempts: u32,
    /// Delay before the second attempt.
    pub initial: Duration,
    /// Growth factor per attempt (≥ 1).
    pub multiplier: f64,
    /// Upper bound of a delay.
    pub max: Duration,
    /// Failed outcomes that are retried.
    pub on: Vec<RetryOn>,
}

impl RetryPolicy {
    pub(super) fn default_for(max_attempts: u32) -> Self {
        Self {
            max_attempts,
            initial: Duration::from_millis(200),
            multiplier: 2.0,
            max: Duration::from_secs(30),
            on: vec![RetryOn::Transient, RetryOn::Timeout],
        }
    }

    /// Backoff before attempt `next_attempt` (≥ 2), in milliseconds, with
    /// jitter derived from `seed` (the failed command's id): the delay is
    /// uniformly spread over [d/2, d] where d is the exponential delay.
    pub fn backoff_ms(&self, next_attempt: u32, seed: &str) -> u64 {
        let d = self.max_backoff_ms(next_attempt);
        let half = d / 2;
        half + crate::fnv1a(seed.as_bytes()) % (d - half + 1)
    }

    /// The longest backoff before attempt `next_attempt` (≥ 2), in
    /// milliseconds: the exponential delay, capped by `max` (jitter only
    /// shortens it).
    pub fn max_backoff_ms(&self, next_attempt: u32) -> u64 {
        let exp = next_attempt.saturating_sub(2).min(64) as i32;
        let base = self.initial.as_millis() as f64 * self.multiplier.powi(exp);
        base.min(self.max.as_millis() as f64).max(1.0) as u64
    }
}

/// A call step's compensation.
#[derive(Debug)]
pub struct Compensation {
    pub service: String,
    pub operation: String,
    pub input: ValueTemplate,
    pub timeout_ms: u64,
    pub retry: RetryPolicy,
}

/// A command to a service adapter.
#[derive(Debug)]
pub struct CallStep {
    pub service: String,
    pub operation: String,
    pub input: ValueTemplate,
    pub timeout_ms: u64,
    pub retry: RetryPolicy,
    /// Name under `steps.` that the reply data is bound to.
    pub bind: String,
    pub compensate: Option<Compensation>,
    /// Paths redacted from this step's input, output and error (on top of
    /// the saga's own `sensitive` paths).
    pub sensitive: Vec<FieldPath>,
}

/// What an await does when its deadline passes.
#[derive(Debug)]
pub enum OnDeadline {
    /// The saga becomes `Failed` (an operator decides).
    Fail,
    /// The saga compensates what succeeded and ends `Compensated`.
    Compensate,
    /// These steps run, then the saga carries on after the await.
    Continue(Vec<NodeId>),
}

/// Wait for a domain event.
#[derive(Debug)]
pub struct AwaitStep {
    pub topic: String,
    pub event_type: String,
    /// Evaluated over the awaited event (`event`); must equal the saga key.
    pub correlate: Expr,
    pub deadline_ms: u64,
    pub on_deadline: OnDeadline,
    pub bind: String,
}

/// Publish a domain event.
#[derive(Debug)]
pub struct EmitStep {
    pub topic: String,
    pub event_type: String,
    pub key: Expr,
    pub payload: ValueTemplate,
}

/// What a step does.
#[derive(Debug)]
pub enum StepKind {
    Call(Box<CallStep>),
    Parallel {
        branches: Vec<(String, Vec<NodeId>)>,
    },
    Choice {
        when: Vec<(Expr, Vec<NodeId>)>,
        default: Vec<NodeId>,
    },
    Await(AwaitStep),
    Emit(EmitStep),
    /// Ends the saga by compensating, with a reason.
    Reject {
        reason: Expr,
    },
    /// Ends the saga successfully.
    Finish,
}

/// Which step list a step belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListOwner {
    Root,
    Branch(NodeId),
    Choice(NodeId),
    Deadline(NodeId),
}

/// One step of a validated definition.
#[derive(Debug)]
pub struct Step {
    /// Unique name.
    pub name: String,
    /// Names from the root, joined by `/` (used in command ids).
    pub path: String,
    /// What it does.
    pub kind: StepKind,
    pub(crate) next: Option<NodeId>,
    pub(crate) owner: ListOwner,
    /// Where it is defined.
    pub position: Position,
    /// Lint warnings silenced for this step (`lint: {allow: […]}`).
    pub lint_allow: Vec<String>,
    /// Whether the step names its binding (`bind:`) rather than using its
    /// own name.
    pub(crate) explicit_bind: bool,
}

/// How a saga starts.
#[derive(Debug)]
pub struct Trigger {
    pub topic: String,
    pub event_type: String,
    /// Correlation key, over the trigger event (`event`).
    pub key: Expr,
    /// Saga id template over `type`, `key` and `event`.
    pub saga_id: Expr,
}

/// A validated, compiled saga definition.
#[derive(Debug)]
pub struct SagaDefinition {
    pub saga_type: String,
    pub version: u32,
    pub description: Option<String>,
    pub trigger: Trigger,
    pub(crate) steps: Vec<Step>,
    pub(crate) root: Vec<NodeId>,
    pub result: Option<ValueTemplate>,
    pub(crate) by_path: HashMap<String, NodeId>,
    /// Paths redacted from the trigger and every step's data in lifecycle
    /// events.
    pub sensitive: Vec<FieldPath>,
    /// Search attributes: a name and an expression over the trigger event
    /// (`event`), computed when the saga starts.
    pub search_attributes: Vec<(String, Expr)>,
    /// How long the saga may take from its start, and what then.
    pub deadline: Option<SagaDeadline>,
    /// File it was loaded from.
    pub file: String,
}

/// A saga-level deadline (`deadline:` at the top of a definition): a
/// durable timer armed when the saga starts and cancelled when it stops
/// going forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SagaDeadline {
    /// Milliseconds from the saga's start.
    pub ms: u64,
    /// What happens when it passes.
    pub on_deadline: SagaOnDeadline,
    /// Where `deadline:` is written.
    pub position: Position,
}

/// What a saga does when its deadline passes while it is still going
/// forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SagaOnDeadline {
    /// Stop going forward and compensate what succeeded (the default, like
    /// a step failure).
    Compensate,
    /// Stop and wait for an operator (`retry` or `abort`).
    Fail,
}

impl SagaDefinition {
    /// Parses and validates a definition file (pure: the caller reads it).
    pub fn from_yaml(
        file: &str,
        source: &str,
        services: &ServiceCatalog,
    ) -> Result<Self, DefinitionErrors> {
        RawSagaDefinition::parse(file, source)?.validate(services)
    }

    /// All steps, in definition order.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// The step at `id`.
    pub fn step(&self, id: NodeId) -> &Step {
        &self.steps[id as usize]
    }

    /// The step whose path is `path`.
    pub fn step_by_path(&self, path: &str) -> Option<NodeId> {
        self.by_path.get(path).copied()
    }

    /// The first step of the top-level list.
    pub(crate) fn first(&self) -> Option<NodeId> {
        self.root.first().copied()
    }
}
