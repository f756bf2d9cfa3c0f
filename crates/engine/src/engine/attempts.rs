//! One table per command kind: what a failed attempt of a forward call and
//! of a compensation leads to. The decision (retry per the policy, or give
//! up) is taken once, in [`Run::retry_or_fail`]; the table says which
//! phases, lifecycle events and timers each kind uses and what giving up
//! means.

use serde_json::Value;

use crate::definition::{NodeId, RetryOn, RetryPolicy, StepKind};
use crate::state::{FailurePhase, Phase, StepRun, TimerPurpose};

use super::ids::command_id;
use super::run::Run;
use super::{CommandKind, LifecycleKind, Reply, ReplyOutcome};

/// What differs between a forward call and its compensation.
pub(super) struct KindTable {
    /// The reply timeout of an attempt.
    pub(super) timeout: TimerPurpose,
    /// The wait before the next attempt.
    pub(super) backoff: TimerPurpose,
    /// The step's phase while it waits for the next attempt.
    pub(super) backoff_phase: Phase,
    /// Emitted when an attempt is retried.
    pub(super) retrying: LifecycleKind,
    /// The step's phase once it failed for good.
    pub(super) failed_phase: Phase,
    /// Emitted when it failed for good.
    pub(super) failed: LifecycleKind,
    /// The current attempt of the kind.
    attempt: fn(&StepRun) -> u32,
    /// What failing for good does to the saga (the reason is the step's).
    give_up: fn(&mut Run<'_>, NodeId, String),
}

const FORWARD: KindTable = KindTable {
    timeout: TimerPurpose::StepTimeout,
    backoff: TimerPurpose::RetryBackoff,
    backoff_phase: Phase::Backoff,
    retrying: LifecycleKind::StepRetrying,
    failed_phase: Phase::Failed,
    failed: LifecycleKind::StepFailed,
    attempt: |r| r.attempt,
    give_up: compensate_saga,
};

const COMPENSATION: KindTable = KindTable {
    timeout: TimerPurpose::CompensationTimeout,
    backoff: TimerPurpose::CompensationBackoff,
    backoff_phase: Phase::CompensationBackoff,
    retrying: LifecycleKind::CompensationStepRetrying,
    failed_phase: Phase::CompensationFailed,
    failed: LifecycleKind::CompensationStepFailed,
    attempt: |r| r.comp_attempt,
    give_up: fail_saga,
};

/// The table of a command kind.
pub(super) fn table(kind: CommandKind) -> &'static KindTable {
    match kind {
        CommandKind::Action => &FORWARD,
        CommandKind::Compensation => &COMPENSATION,
    }
}

/// A forward step failed for good: the saga compensates.
fn compensate_saga(run: &mut Run<'_>, id: NodeId, reason: String) {
    let reason = format!("step `{}` failed: {reason}", run.path(id));
    run.begin_compensation(Some(id), reason);
}

/// A compensation failed for good: the saga fails, for an operator.
fn fail_saga(run: &mut Run<'_>, id: NodeId, reason: String) {
    let reason = format!("compensation of `{}` failed: {reason}", run.path(id));
    run.fail(Some(id), FailurePhase::Compensation, reason);
}

impl Run<'_> {
    /// The retry policy of a command kind of a step.
    fn policy(&self, id: NodeId, kind: CommandKind) -> Option<&RetryPolicy> {
        match &self.def.step(id).kind {
            StepKind::Call(c) => match kind {
                CommandKind::Action => Some(&c.retry),
                CommandKind::Compensation => c.compensate.as_ref().map(|c| &c.retry),
            },
            _ => None,
        }
    }

    /// The reply to the current attempt of a command (a forward call that
    /// is still awaited, or a compensation). Success is the kind's own.
    pub(super) fn on_attempt_reply(&mut self, id: NodeId, kind: CommandKind, r: Reply) {
        let t = table(kind);
        let attempt = (t.attempt)(&self.st.steps[&id]);
        self.disarm(id, t.timeout, attempt);
        if kind == CommandKind::Action {
            // An earlier attempt's success, while the step backs off.
            self.disarm(id, TimerPurpose::RetryBackoff, attempt);
        }
        let reason = r
            .error
            .clone()
            .unwrap_or_else(|| format!("{:?}", r.outcome));
        match r.outcome {
            ReplyOutcome::Success => match kind {
                CommandKind::Action => {
                    self.succeed_call(id, r.data, false);
                    self.continue_after(id);
                }
                CommandKind::Compensation => self.compensated(id, attempt, r.data),
            },
            ReplyOutcome::BusinessFailure => {
                let body = self.error_body(id, &reason, r.data);
                self.give_up(id, kind, attempt, reason, Some(body));
            }
            ReplyOutcome::TransientFailure => {
                let body = self.error_body(id, &reason, r.data);
                self.retry_or_fail(id, kind, RetryOn::Transient, reason, Some(body));
            }
        }
    }

    /// A failed attempt (`why`): retried when the kind's policy retries
    /// `why` and attempts are left, otherwise the step fails for good.
    pub(super) fn retry_or_fail(
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
        let t = table(kind);
        let attempt = (t.attempt)(&self.st.steps[&id]);
        if policy.on.contains(&why) && attempt < policy.max_attempts {
            let seed = command_id(&self.st.saga_id, self.path(id), kind, attempt);
            let delay = policy.backoff_ms(attempt + 1, &seed);
            let detail = Some(format!("{reason}; attempt {} in {delay}ms", attempt + 1));
            self.set_phase(id, t.backoff_phase);
            self.life(t.retrying, Some(id), Some(attempt), detail);
            self.with_last(|e| e.error = body);
            self.arm(id, t.backoff, attempt, delay);
            return;
        }
        let reason = if attempt >= policy.max_attempts && policy.on.contains(&why) {
            format!("{reason} (after {attempt} attempts)")
        } else {
            reason
        };
        if kind == CommandKind::Action && why == RetryOn::Timeout {
            return self.give_up_timed_out(id, attempt, reason);
        }
        self.give_up(id, kind, attempt, reason, body);
    }

    /// A call's last attempt timed out: the step fails and the saga
    /// compensates, but the command may still have been carried out (a
    /// slow backend, not a lost one). A step with a compensation waits as
    /// a command in flight at the start of a compensation does, abandoned,
    /// for one more timeout: a success within it is compensated first, and
    /// the saga ends only once it is over. A step without one has nothing
    /// to undo and fails at once.
    fn give_up_timed_out(&mut self, id: NodeId, attempt: u32, reason: String) {
        let StepKind::Call(call) = &self.def.step(id).kind else {
            return self.give_up(id, CommandKind::Action, attempt, reason, None);
        };
        if call.compensate.is_none() {
            return self.give_up(id, CommandKind::Action, attempt, reason, None);
        }
        let timeout = call.timeout_ms;
        let t = table(CommandKind::Action);
        self.set_phase(id, Phase::Abandoned);
        self.life(t.failed, Some(id), Some(attempt), Some(reason.clone()));
        self.arm(id, TimerPurpose::LateReply, attempt, timeout);
        (t.give_up)(self, id, reason);
    }

    /// The step's command of `kind` failed for good.
    fn give_up(
        &mut self,
        id: NodeId,
        kind: CommandKind,
        attempt: u32,
        reason: String,
        body: Option<Value>,
    ) {
        let t = table(kind);
        self.set_phase(id, t.failed_phase);
        self.life(t.failed, Some(id), Some(attempt), Some(reason.clone()));
        self.with_last(|e| e.error = body);
        (t.give_up)(self, id, reason);
    }
}
