//! One transition in progress ([`Run`]): the shared helpers every step
//! kind uses (lifecycle events, timers, step data) and the dispatch of a
//! classified input to the forward, compensation or operator handlers.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::data::{self, FieldPath};
use crate::definition::{NodeId, SagaDefinition, StepKind};
use crate::expr::Root;
use crate::state::{Phase, SagaState, StepRun, Timer, TimerPurpose, Timestamp};

use super::classify::Action;
use super::ids::{command_id, saga_deadline_id, timer_id};
use super::{Command, CommandKind, Effect, Input, LifecycleEvent, LifecycleKind};

/// The evaluation context (`event`, `saga`, `steps`), reduced to what
/// the expressions read.
pub(super) fn ctx(st: &SagaState, needs: &[&[String]]) -> Value {
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

pub(super) fn needs_of(e: &crate::expr::Expr) -> Vec<&[String]> {
    e.needs().iter().map(Vec::as_slice).collect()
}

pub(super) fn command_for(
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

/// One transition in progress.
pub(super) struct Run<'a> {
    pub(super) def: &'a SagaDefinition,
    pub(super) st: &'a mut SagaState,
    pub(super) now: Timestamp,
    pub(super) fx: Vec<Effect>,
}

impl Run<'_> {
    pub(super) fn path(&self, id: NodeId) -> &str {
        &self.def.step(id).path
    }

    pub(super) fn run(&mut self, id: NodeId) -> &mut StepRun {
        self.st.steps.entry(id).or_insert(StepRun {
            phase: Phase::Active,
            attempt: 0,
            comp_attempt: 0,
            branch: None,
            late: false,
        })
    }

    pub(super) fn phase(&self, id: NodeId) -> Option<Phase> {
        self.st.steps.get(&id).map(|r| r.phase)
    }

    pub(super) fn set_phase(&mut self, id: NodeId, phase: Phase) {
        self.run(id).phase = phase;
    }

    pub(super) fn life(
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
    pub(super) fn with_last(&mut self, f: impl FnOnce(&mut LifecycleEvent)) {
        if let Some(Effect::Lifecycle(e)) = self.fx.last_mut() {
            f(e);
        }
    }

    /// The paths redacted from a step's data: the saga's and the step's.
    pub(super) fn sensitive(&self, id: NodeId) -> Vec<FieldPath> {
        let mut paths = self.def.sensitive.clone();
        if let StepKind::Call(c) = &self.def.step(id).kind {
            paths.extend(c.sensitive.iter().cloned());
        }
        paths
    }

    /// A step's data as a lifecycle event carries it.
    pub(super) fn step_data(&self, id: NodeId, value: Value) -> Value {
        data::for_event(value, &self.sensitive(id))
    }

    /// A failed attempt's error body as a lifecycle event carries it.
    pub(super) fn error_body(&self, id: NodeId, message: &str, mut body: Value) -> Value {
        data::redact(&mut body, &self.sensitive(id));
        data::bound(
            json!({ "message": message, "data": body }),
            data::MAX_DATA_BYTES,
        )
    }

    /// Attaches a command's input to the `*Started` event just pushed for
    /// the same step and attempt.
    pub(super) fn attach_input(&mut self, id: NodeId, attempt: u32, input: &Value) {
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

    pub(super) fn arm(&mut self, id: NodeId, purpose: TimerPurpose, attempt: u32, after_ms: u64) {
        let timer_id = timer_id(&self.st.saga_id, self.path(id), purpose, attempt);
        self.arm_timer(timer_id, Some(id), purpose, attempt, after_ms);
    }

    pub(super) fn disarm(&mut self, id: NodeId, purpose: TimerPurpose, attempt: u32) {
        let timer_id = timer_id(&self.st.saga_id, self.path(id), purpose, attempt);
        self.disarm_timer(timer_id);
    }

    /// Arms the saga's own deadline, `after_ms` from now.
    pub(super) fn arm_saga_deadline(&mut self, after_ms: u64) {
        let timer_id = saga_deadline_id(&self.st.saga_id);
        self.arm_timer(timer_id, None, TimerPurpose::SagaDeadline, 0, after_ms);
    }

    /// Cancels the saga's own deadline if it is armed.
    pub(super) fn disarm_saga_deadline(&mut self) {
        let timer_id = saga_deadline_id(&self.st.saga_id);
        self.disarm_timer(timer_id);
    }

    fn arm_timer(
        &mut self,
        timer_id: String,
        step: Option<NodeId>,
        purpose: TimerPurpose,
        attempt: u32,
        after_ms: u64,
    ) {
        let fire_at = self.now.plus_ms(after_ms);
        self.st.timers.insert(
            timer_id.clone(),
            Timer {
                fire_at,
                purpose,
                step,
                attempt,
            },
        );
        self.fx.push(Effect::ArmTimer {
            timer_id,
            fire_at,
            purpose,
        });
    }

    fn disarm_timer(&mut self, timer_id: String) {
        if self.st.timers.remove(&timer_id).is_some() {
            self.fx.push(Effect::CancelTimer { timer_id });
        }
    }

    pub(super) fn act(&mut self, action: Action, input: Input) {
        match (action, input) {
            (Action::Reply { step, kind }, Input::Reply(r)) => match kind {
                CommandKind::Action => self.on_reply(step, r),
                CommandKind::Compensation => self.on_attempt_reply(step, kind, r),
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
}
