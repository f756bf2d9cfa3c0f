//! Mapping between the engine's types and the wire messages, and the
//! internal envelope that carries inputs on `sagaflow.inputs`.

use sagaflow_codec::messages as wire;
use sagaflow_engine::{
    AwaitedEvent, CommandKind, LifecycleEvent, LifecycleKind, Reply, ReplyOutcome, SagaResult,
    SagaState, SagaStatus, TriggerEvent,
};
use serde::{Deserialize, Serialize};

/// An input routed to the owner of a saga, keyed by saga id on the
/// internal inputs topic (JSON). Triggers and awaited events are re-keyed
/// here because their source topics are keyed by whatever their publisher
/// chose; operator requests come from the HTTP API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Envelope {
    Trigger {
        saga_type: String,
        saga_id: String,
        event: TriggerEvent,
    },
    Event {
        saga_id: String,
        event: AwaitedEvent,
    },
    Retry {
        saga_id: String,
        request_id: String,
    },
    Abort {
        saga_id: String,
        request_id: String,
        reason: String,
    },
}

impl Envelope {
    pub fn saga_id(&self) -> &str {
        match self {
            Self::Trigger { saga_id, .. }
            | Self::Event { saga_id, .. }
            | Self::Retry { saga_id, .. }
            | Self::Abort { saga_id, .. } => saga_id,
        }
    }

    /// Stable id of the input, for the `sagaflow-message-id` header.
    pub fn message_id(&self) -> &str {
        match self {
            Self::Trigger { event, .. } => &event.message_id,
            Self::Event { event, .. } => &event.message_id,
            Self::Retry { request_id, .. } | Self::Abort { request_id, .. } => request_id,
        }
    }
}

/// The wire command for an engine command.
pub fn command(
    c: &sagaflow_engine::Command,
    issued_at: i64,
    traceparent: Option<String>,
) -> wire::Command {
    wire::Command {
        command_id: c.command_id.clone(),
        saga_id: c.saga_id.clone(),
        saga_type: c.saga_type.clone(),
        saga_version: c.saga_version as i32,
        step: c.step.clone(),
        service: c.service.clone(),
        operation: c.operation.clone(),
        attempt: c.attempt as i32,
        kind: match c.kind {
            CommandKind::Action => wire::CommandKind::Action,
            CommandKind::Compensation => wire::CommandKind::Compensation,
        },
        input: c.input.clone(),
        timeout_ms: c.timeout_ms as i64,
        issued_at,
        trace_parent: traceparent,
    }
}

/// The engine input for a wire reply. A reply's id is its command's id:
/// an adapter answers each command attempt once, so a second copy of the
/// same reply is a duplicate.
pub fn reply(r: wire::Reply) -> Reply {
    Reply {
        message_id: format!("{}/reply", r.command_id),
        command_id: r.command_id,
        outcome: match r.outcome {
            wire::ReplyOutcome::Success => ReplyOutcome::Success,
            wire::ReplyOutcome::BusinessFailure => ReplyOutcome::BusinessFailure,
            wire::ReplyOutcome::TransientFailure => ReplyOutcome::TransientFailure,
        },
        data: r.data,
        error: r.error.map(|e| format!("{}: {}", e.code, e.message)),
    }
}

pub fn lifecycle(e: &LifecycleEvent) -> wire::SagaLifecycleEvent {
    use wire::LifecycleKind as W;
    let kind = match e.kind {
        LifecycleKind::Started => W::Started,
        LifecycleKind::StepStarted => W::StepStarted,
        LifecycleKind::StepSucceeded => W::StepSucceeded,
        LifecycleKind::StepFailed => W::StepFailed,
        LifecycleKind::StepRetrying => W::StepRetrying,
        LifecycleKind::StepTimedOut => W::StepTimedOut,
        LifecycleKind::LateReply => W::LateReply,
        LifecycleKind::Compensating => W::Compensating,
        LifecycleKind::CompensationStepStarted => W::CompensationStepStarted,
        LifecycleKind::CompensationStepSucceeded => W::CompensationStepSucceeded,
        LifecycleKind::CompensationStepRetrying => W::CompensationStepRetrying,
        LifecycleKind::CompensationStepFailed => W::CompensationStepFailed,
        LifecycleKind::Completed => W::Completed,
        LifecycleKind::Compensated => W::Compensated,
        LifecycleKind::Failed => W::Failed,
        LifecycleKind::Resumed => W::Resumed,
        LifecycleKind::Aborted => W::Aborted,
    };
    wire::SagaLifecycleEvent {
        event_id: e.event_id.clone(),
        saga_id: e.saga_id.clone(),
        saga_type: e.saga_type.clone(),
        saga_version: e.saga_version as i32,
        kind,
        step: e.step.clone(),
        attempt: e.attempt.map(|a| a as i32),
        detail: e.detail.clone(),
        at: e.at.0 as i64,
        input: e.input.clone(),
        output: e.output.clone(),
        error: e.error.clone(),
        attributes: e.attributes.clone(),
    }
}

pub fn result(r: &SagaResult, state: &SagaState, ended_at: i64) -> wire::SagaResult {
    wire::SagaResult {
        saga_id: r.saga_id.clone(),
        saga_type: r.saga_type.clone(),
        saga_version: r.saga_version as i32,
        status: match r.status {
            SagaStatus::Compensated => wire::SagaStatus::Compensated,
            SagaStatus::Failed => wire::SagaStatus::Failed,
            // Only ended sagas publish a result; anything else is completed.
            _ => wire::SagaStatus::Completed,
        },
        output: r.output.clone(),
        error: state.failure.as_ref().map(|f| f.reason.clone()),
        started_at: state.started_at.0 as i64,
        ended_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_as_tagged_json() {
        let e = Envelope::Abort {
            saga_id: "s".into(),
            request_id: "r".into(),
            reason: "operator".into(),
        };
        let text = serde_json::to_string(&e).unwrap();
        assert!(text.contains("\"kind\":\"abort\""), "{text}");
        assert_eq!(serde_json::from_str::<Envelope>(&text).unwrap(), e);
        assert_eq!(e.saga_id(), "s");
        assert_eq!(e.message_id(), "r");
    }

    #[test]
    fn a_reply_is_identified_by_its_command() {
        let r = reply(wire::Reply {
            command_id: "s/charge/1".into(),
            saga_id: "s".into(),
            step: "charge".into(),
            attempt: 1,
            service: "payment".into(),
            operation: "charge".into(),
            outcome: wire::ReplyOutcome::BusinessFailure,
            data: serde_json::json!({}),
            error: Some(wire::ReplyError {
                code: "declined".into(),
                message: "card declined".into(),
            }),
            completed_at: 0,
            backend_status: Some(402),
        });
        assert_eq!(r.message_id, "s/charge/1/reply");
        assert_eq!(r.outcome, ReplyOutcome::BusinessFailure);
        assert_eq!(r.error.as_deref(), Some("declined: card declined"));
    }

    #[test]
    fn every_lifecycle_kind_the_engine_emits_has_its_own_wire_symbol() {
        let mapped: std::collections::BTreeSet<&str> = LifecycleKind::ALL
            .iter()
            .map(|&kind| {
                let e = LifecycleEvent {
                    event_id: "s/1".into(),
                    saga_id: "s".into(),
                    saga_type: "t".into(),
                    saga_version: 1,
                    seq: 1,
                    kind,
                    step: None,
                    attempt: None,
                    detail: None,
                    at: sagaflow_engine::Timestamp(0),
                    input: None,
                    output: None,
                    error: None,
                    attributes: Default::default(),
                };
                lifecycle(&e).kind.symbol()
            })
            .collect();
        assert_eq!(
            mapped.len(),
            LifecycleKind::ALL.len(),
            "two kinds share a symbol"
        );
        // The schema has exactly these, plus UNKNOWN and the reserved ones.
        let mut rest: std::collections::BTreeSet<&str> =
            wire::LifecycleKind::SYMBOLS.iter().copied().collect();
        rest.retain(|s| !mapped.contains(s));
        let reserved: std::collections::BTreeSet<&str> = wire::LifecycleKind::RESERVED
            .iter()
            .map(|k| k.symbol())
            .chain(["UNKNOWN"])
            .collect();
        assert_eq!(rest, reserved);
    }
}
