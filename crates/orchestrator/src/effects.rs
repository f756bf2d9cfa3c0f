//! Effects out: each effect a saga owes becomes a record — a command to
//! its service, a lifecycle event or result on `sagaflow.saga-events`, an
//! emitted domain event — encoded with the topic's schema and carrying a
//! child span of the saga's trace.

use sagaflow_bus::{SagaHeaders, TraceContext};
use sagaflow_codec::SagaEvent;
use sagaflow_engine::{Effect, SagaState};

use crate::core::SagaTrace;
use crate::outbound::{Outgoing, effect_kind, export_spans, now_ms};
use crate::refusal::EffectDropped;
use crate::runtime::{Driver, Stopping};
use crate::wire;

impl Driver {
    /// What an effect tells this process's saga view, if anything: the
    /// driver applies it once the effect is acknowledged, so a facade
    /// waiting here for a saga this instance owns learns its end without
    /// a trip through the saga-events topic.
    pub(crate) fn view_event(&self, state: &SagaState, e: &Effect) -> Option<SagaEvent> {
        match e {
            Effect::Lifecycle(l) => Some(SagaEvent::Lifecycle(wire::lifecycle(l))),
            Effect::Result(r) => Some(SagaEvent::Result(wire::result(
                r,
                state,
                state.updated_at.0 as i64,
            ))),
            _ => None,
        }
    }

    /// The Kafka record for one effect (timers have none).
    pub(crate) async fn effect_record(
        &self,
        saga_id: &str,
        state: &SagaState,
        trace: SagaTrace<'_>,
        e: &Effect,
    ) -> Result<Option<Outgoing>, Stopping> {
        let mut attempt = 0;
        loop {
            match self.try_effect_record(saga_id, state, trace, e).await {
                Err(err) if err.is_retriable() => {
                    self.backoff(&mut attempt, "registry", &err).await?;
                }
                Err(source) => {
                    EffectDropped {
                        saga_id,
                        effect: effect_kind(e),
                        error: source,
                    }
                    .emit(&self.metrics);
                    return Ok(None);
                }
                Ok(r) => return Ok(r),
            }
        }
    }

    async fn try_effect_record(
        &self,
        saga_id: &str,
        state: &SagaState,
        trace: SagaTrace<'_>,
        e: &Effect,
    ) -> Result<Option<Outgoing>, sagaflow_codec::EncodeError> {
        // Every record is a hop of its own: a child span of the saga's,
        // with the trigger's `tracestate` alongside, unchanged.
        let saga = TraceContext::continue_or_start(trace.span);
        let hop = saga.child();
        let traceparent = Some(hop.header());
        if sagaflow_telemetry::exporting() {
            export_spans(
                state,
                &saga,
                trace.trigger_span.and_then(TraceContext::parse),
                &hop,
                e,
                &self.names,
            );
        }
        // Each effect: where it goes, its key and message id, and its bytes.
        let (topic, key, message_id, kind, encoded) = match e {
            Effect::Command(c) => {
                let topic = self.names.commands(&c.service);
                let wire = wire::command(c, now_ms() as i64, traceparent.clone());
                let encoded = self.codec.encode_command(&topic, &wire).await;
                if encoded.is_ok() {
                    let kind = format!("{:?}", c.kind).to_lowercase();
                    self.metrics
                        .commands_sent
                        .with_label_values(&[&c.service, &kind])
                        .inc();
                }
                (
                    topic,
                    saga_id.to_owned(),
                    c.command_id.clone(),
                    "Command".to_owned(),
                    encoded,
                )
            }
            Effect::Lifecycle(l) => {
                let topic = self.names.saga_events();
                let encoded = self
                    .codec
                    .encode_lifecycle_event(&topic, &wire::lifecycle(l))
                    .await;
                (
                    topic,
                    saga_id.to_owned(),
                    l.event_id.clone(),
                    "SagaLifecycleEvent".to_owned(),
                    encoded,
                )
            }
            Effect::Result(r) => {
                let topic = self.names.saga_events();
                let wire = wire::result(r, state, state.updated_at.0 as i64);
                let encoded = self.codec.encode_saga_result(&topic, &wire).await;
                (
                    topic,
                    saga_id.to_owned(),
                    format!("{saga_id}/result"),
                    "SagaResult".to_owned(),
                    encoded,
                )
            }
            Effect::Emit(d) => {
                let topic = self.prefixed(&d.topic);
                let encoded = self
                    .schemas
                    .encode(&self.codec, &topic, &d.event_type, &d.payload)
                    .await;
                (
                    topic,
                    d.key.clone(),
                    d.event_id.clone(),
                    d.event_type.clone(),
                    encoded,
                )
            }
            Effect::ArmTimer { .. } | Effect::CancelTimer { .. } => return Ok(None),
        };
        encoded.map(|bytes| {
            Some(Outgoing {
                topic,
                partition: None,
                key: Some(key),
                payload: Some(bytes),
                headers: SagaHeaders {
                    saga_id: Some(saga_id.to_owned()),
                    message_id: Some(message_id),
                    message_type: Some(kind),
                    traceparent,
                    tracestate: trace.tracestate.map(str::to_owned),
                }
                .to_owned_headers(),
            })
        })
    }
}
