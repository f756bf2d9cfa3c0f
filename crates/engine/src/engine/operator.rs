//! Operator actions: resuming a failed saga (abort is a compensation
//! started from `Run::act`).

use crate::definition::NodeId;
use crate::state::{Failure, FailurePhase, Phase, SagaStatus, TimerPurpose};

use super::LifecycleKind;
use super::run::Run;

impl Run<'_> {
    pub(super) fn resume(&mut self) {
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
