//! Classification: what an input will do, decided on a read-only view of
//! the state so that stale and rejected inputs change nothing.

use serde_json::json;

use crate::definition::{NodeId, SagaDefinition, StepKind};
use crate::error::EngineError;
use crate::state::{FailurePhase, Phase, SagaState, SagaStatus, Timer, Timestamp};

use super::ids::parse_command_id;
use super::{AwaitedEvent, CommandKind, Input, Outcome, Reply, ReplyOutcome};

/// What a relevant input will do (decided without mutating).
pub(super) enum Action {
    Reply {
        step: NodeId,
        kind: CommandKind,
    },
    Event {
        step: NodeId,
    },
    /// The event is for an await this saga has not reached yet.
    EarlyEvent {
        step: NodeId,
    },
    Timer {
        id: String,
        timer: Timer,
    },
    Retry,
    Abort,
}

pub(super) fn classify(
    def: &SagaDefinition,
    st: &SagaState,
    input: &Input,
    now: Timestamp,
) -> Result<Action, Outcome> {
    let stale = |s: String| Err(Outcome::Stale(s));
    match input {
        Input::Reply(r) => classify_reply(def, st, r),
        Input::Event(e) => classify_event(def, st, e),
        Input::TimerFired { timer_id } => match st.timers.get(timer_id) {
            None => stale(format!(
                "timer `{timer_id}` is not armed (cancelled or already fired)"
            )),
            Some(t) if t.fire_at > now => stale(format!(
                "timer `{timer_id}` is due at {}, now is {}",
                t.fire_at.0, now.0
            )),
            Some(t) => Ok(Action::Timer {
                id: timer_id.clone(),
                timer: t.clone(),
            }),
        },
        Input::Retry { .. } => match (st.status, &st.failure) {
            (SagaStatus::Failed, Some(_)) => Ok(Action::Retry),
            (status, _) => Err(Outcome::Rejected(EngineError::NotAllowed {
                status: status.to_string(),
                reason: "only a failed saga can be retried".into(),
            })),
        },
        Input::Abort { .. } => {
            let forward_failure = st
                .failure
                .as_ref()
                .is_some_and(|f| f.phase != FailurePhase::Compensation);
            match st.status {
                SagaStatus::Running => Ok(Action::Abort),
                SagaStatus::Failed if forward_failure => Ok(Action::Abort),
                status => Err(Outcome::Rejected(EngineError::NotAllowed {
                    status: status.to_string(),
                    reason: "abort compensates a running saga or one that failed going forward"
                        .into(),
                })),
            }
        }
    }
}

/// A reply: relevant when it answers the attempt the step is waiting for.
fn classify_reply(def: &SagaDefinition, st: &SagaState, r: &Reply) -> Result<Action, Outcome> {
    let stale = |s: String| Err(Outcome::Stale(s));
    let Some((path, kind, attempt)) = parse_command_id(&st.saga_id, &r.command_id) else {
        return stale(format!("`{}` is not a command of this saga", r.command_id));
    };
    let Some(step) = def.step_by_path(path) else {
        return stale(format!(
            "no step `{path}` in {} v{}",
            st.saga_type, st.saga_version
        ));
    };
    let Some(run) = st.steps.get(&step) else {
        return stale(format!("step `{path}` has not started"));
    };
    match kind {
        CommandKind::Action => {
            // Every attempt of a step carries one idempotency key: an
            // earlier attempt's success is the step's, whichever attempt
            // the step waits for now (or backs off before, the attempt
            // that timed out included). Left stale, it would be lost
            // whenever the current attempt's own reply came too late, and
            // the step's work never undone.
            let earlier_success = attempt <= run.attempt
                && r.outcome == ReplyOutcome::Success
                && matches!(run.phase, Phase::Active | Phase::Backoff | Phase::Abandoned);
            if earlier_success {
                return Ok(Action::Reply { step, kind });
            }
            if attempt != run.attempt {
                return stale(format!(
                    "reply for attempt {attempt} of `{path}`, current attempt is {}",
                    run.attempt
                ));
            }
            if !matches!(run.phase, Phase::Active | Phase::Abandoned) {
                return stale(format!(
                    "step `{path}` is no longer waiting for a reply ({:?})",
                    run.phase
                ));
            }
        }
        CommandKind::Compensation => {
            if attempt != run.comp_attempt || run.phase != Phase::Compensating {
                return stale(format!(
                    "compensation reply for attempt {attempt} of `{path}` is not awaited"
                ));
            }
        }
    }
    Ok(Action::Reply { step, kind })
}

/// An awaited event: for an active await with the saga's key, or kept
/// for an await the saga has not reached yet.
fn classify_event(
    def: &SagaDefinition,
    st: &SagaState,
    e: &AwaitedEvent,
) -> Result<Action, Outcome> {
    let stale = |s: String| Err(Outcome::Stale(s));
    if st.status != SagaStatus::Running {
        return stale(format!("saga is {}", st.status));
    }
    let event_ctx = json!({ "event": &e.payload });
    for (&id, run) in &st.steps {
        if run.phase != Phase::Active || run.branch.is_some() {
            continue;
        }
        if let StepKind::Await(a) = &def.step(id).kind
            && a.topic == e.topic
            && a.event_type == e.event_type
            && a.correlate.eval_string(&event_ctx).ok().as_deref() == Some(st.key.as_str())
        {
            return Ok(Action::Event { step: id });
        }
    }
    // Choreography races: the event may come before the saga
    // reaches its await. Keep the first one per await step.
    for (i, step) in def.steps().iter().enumerate() {
        let id = i as NodeId;
        if let StepKind::Await(a) = &step.kind
            && !st.steps.contains_key(&id)
            && !st.early.contains_key(&id)
            && a.topic == e.topic
            && a.event_type == e.event_type
            && a.correlate.eval_string(&event_ctx).ok().as_deref() == Some(st.key.as_str())
        {
            return Ok(Action::EarlyEvent { step: id });
        }
    }
    stale(format!(
        "no active await for {} on {} with key `{}`",
        e.event_type, e.topic, st.key
    ))
}
