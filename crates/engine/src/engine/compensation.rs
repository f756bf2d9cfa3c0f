//! Compensation: undoing the completed steps in reverse order.

use serde_json::{Value, json};

use crate::definition::NodeId;
use crate::state::{Failure, FailurePhase, Phase, SagaStatus, TimerPurpose};

use super::run::{Run, command_for};
use super::{CommandKind, Effect, LifecycleKind};

impl Run<'_> {
    pub(super) fn begin_compensation(&mut self, step: Option<NodeId>, reason: String) {
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

    pub(super) fn comp_next(&mut self) {
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
        // A call whose last attempt timed out was the latest step: if it
        // happened after all, it is undone first, so the rest waits for
        // its window to close.
        if self
            .st
            .timers
            .values()
            .any(|t| t.purpose == TimerPurpose::LateReply)
        {
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

    pub(super) fn comp_attempt(&mut self, id: NodeId, attempt: u32) {
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

    /// A compensation succeeded: on to the next one.
    pub(super) fn compensated(&mut self, id: NodeId, attempt: u32, data: Value) {
        self.set_phase(id, Phase::Compensated);
        let output = self.step_data(id, data);
        self.life(
            LifecycleKind::CompensationStepSucceeded,
            Some(id),
            Some(attempt),
            None,
        );
        self.with_last(|e| e.output = Some(output));
        self.comp_next();
    }
}
