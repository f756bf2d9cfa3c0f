//! Going forward: entering steps, call attempts and their replies,
//! timers, completion and failure.

use serde_json::{Map, Value, json};

use crate::definition::{
    AwaitStep, EmitStep, ListOwner, NodeId, OnDeadline, RetryOn, SagaOnDeadline, StepKind,
};
use crate::expr::Expr;
use crate::state::{Failure, FailurePhase, Phase, SagaStatus, Timer, TimerPurpose};

use super::result_output;
use super::run::{Run, command_for, ctx, needs_of};
use super::{CommandKind, DomainEvent, Effect, LifecycleKind, Reply, ReplyOutcome, SagaResult};

impl Run<'_> {
    pub(super) fn enter(&mut self, id: NodeId) {
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
            StepKind::Parallel { branches } => self.enter_parallel(id, branches),
            StepKind::Choice { when, default } => self.enter_choice(id, when, default),
            StepKind::Await(a) => self.enter_await(id, a),
            StepKind::Emit(e) => self.enter_emit(id, &step.path, e),
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

    /// A `parallel` step: every branch starts at once.
    fn enter_parallel(&mut self, id: NodeId, branches: &[(String, Vec<NodeId>)]) {
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

    /// A `choice` step: the first `when` whose condition holds, else the
    /// default.
    fn enter_choice(&mut self, id: NodeId, when: &[(Expr, Vec<NodeId>)], default: &[NodeId]) {
        let mut chosen = None;
        for (i, (cond, list)) in when.iter().enumerate() {
            match cond.eval_bool(&ctx(self.st, &needs_of(cond))) {
                Ok(true) => {
                    chosen = Some((i, list.as_slice()));
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

    /// An `await` step: done at once if its event came early, otherwise
    /// its deadline is armed.
    fn enter_await(&mut self, id: NodeId, a: &AwaitStep) {
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

    /// An `emit` step: publishes its event and goes on.
    fn enter_emit(&mut self, id: NodeId, path: &str, e: &EmitStep) {
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
                    event_id: format!("{}/{path}", self.st.saga_id),
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

    pub(super) fn call_attempt(&mut self, id: NodeId, attempt: u32) {
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

    /// A reply to a forward call: to the awaited attempt, or a late one
    /// to a command abandoned when the saga stopped going forward.
    pub(super) fn on_reply(&mut self, id: NodeId, r: Reply) {
        let run = self.st.steps[&id].clone();
        if run.phase != Phase::Abandoned {
            return self.on_attempt_reply(id, CommandKind::Action, r);
        }
        self.disarm(id, TimerPurpose::StepTimeout, run.attempt);
        self.disarm(id, TimerPurpose::LateReply, run.attempt);
        if r.outcome == ReplyOutcome::Success {
            self.succeed_call(id, r.data, true);
        } else {
            self.set_phase(id, Phase::Failed);
            let reason = r
                .error
                .clone()
                .unwrap_or_else(|| format!("{:?}", r.outcome));
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
    }

    pub(super) fn succeed_call(&mut self, id: NodeId, data: Value, late: bool) {
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

    pub(super) fn on_timer(&mut self, t: Timer) {
        // Only the saga's own deadline has no step.
        let Some(id) = t.step else {
            return self.on_saga_deadline();
        };
        let phase = self.phase(id);
        match t.purpose {
            TimerPurpose::StepTimeout => {
                let timeout = match &self.def.step(id).kind {
                    StepKind::Call(c) => c.timeout_ms,
                    _ => 0,
                };
                if phase == Some(Phase::Abandoned) {
                    return self.abandoned_command_timed_out(id, t.attempt, timeout);
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
            TimerPurpose::SagaDeadline => self.on_saga_deadline(),
            TimerPurpose::AwaitDeadline => self.on_await_deadline(id),
            TimerPurpose::LateReply if phase == Some(Phase::Abandoned) => self.abandoned_timed_out(
                id,
                t.attempt,
                "no late reply after the last attempt timed out",
            ),
            TimerPurpose::LateReply => {}
        }
    }

    /// A command abandoned when the saga stopped going forward timed out.
    /// As after a last attempt's timeout (`give_up_timed_out`), a slow
    /// backend may still have carried it out: a step with a compensation
    /// waits one more timeout, under a `LateReply` timer, so that a success
    /// within it is undone too (the step's `StepTimedOut` comes when that
    /// window closes); a step without one has nothing to undo.
    fn abandoned_command_timed_out(&mut self, id: NodeId, attempt: u32, timeout: u64) {
        let undoable =
            matches!(&self.def.step(id).kind, StepKind::Call(c) if c.compensate.is_some());
        if !undoable {
            return self.abandoned_timed_out(id, attempt, "abandoned command timed out");
        }
        self.arm(id, TimerPurpose::LateReply, attempt, timeout);
    }

    /// An abandoned command's wait is over: the step failed, and the
    /// compensation goes on without it.
    fn abandoned_timed_out(&mut self, id: NodeId, attempt: u32, why: &str) {
        self.set_phase(id, Phase::Failed);
        self.life(
            LifecycleKind::StepTimedOut,
            Some(id),
            Some(attempt),
            Some(why.into()),
        );
        if self.st.status == SagaStatus::Compensating {
            self.comp_next();
        }
    }

    /// An await's deadline passed: fail, compensate, or take its
    /// `continue` path, as the step says.
    fn on_await_deadline(&mut self, id: NodeId) {
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
                self.begin_compensation(Some(id), format!("step `{}`: {reason}", self.path(id)));
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

    /// The saga's own deadline passed while it was still going forward
    /// (it is cancelled as soon as the saga stops going forward).
    fn on_saga_deadline(&mut self) {
        let Some(deadline) = self.def.deadline else {
            return;
        };
        if self.st.status != SagaStatus::Running {
            return;
        }
        let reason = format!(
            "saga deadline passed: not done within {}",
            humantime::format_duration(std::time::Duration::from_millis(deadline.ms))
        );
        match deadline.on_deadline {
            SagaOnDeadline::Compensate => self.begin_compensation(None, reason),
            SagaOnDeadline::Fail => self.fail(None, FailurePhase::Forward, reason),
        }
    }

    pub(super) fn step_done(&mut self, id: NodeId, detail: Option<String>) {
        self.set_phase(id, Phase::Succeeded);
        self.life(LifecycleKind::StepSucceeded, Some(id), None, detail);
        self.continue_after(id);
    }

    pub(super) fn continue_after(&mut self, id: NodeId) {
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

    pub(super) fn branches_done(&self, p: NodeId) -> bool {
        let StepKind::Parallel { branches } = &self.def.step(p).kind else {
            return false;
        };
        branches.iter().all(|(_, list)| match list.last() {
            None => true,
            Some(last) => self.phase(*last) == Some(Phase::Succeeded),
        })
    }

    pub(super) fn complete(&mut self) {
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

    pub(super) fn finish(
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
    pub(super) fn stop_forward(&mut self) {
        self.disarm_saga_deadline();
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

    pub(super) fn fail(&mut self, step: Option<NodeId>, phase: FailurePhase, reason: String) {
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
}
