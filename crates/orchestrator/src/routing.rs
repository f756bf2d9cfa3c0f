//! Domain events in: each event that triggers or correlates with a saga
//! is re-keyed by saga id onto `sagaflow.inputs`, so every input of a saga
//! reaches the one partition that owns it.

use std::collections::BTreeSet;

use rdkafka::Message;
use rdkafka::message::BorrowedMessage;
use sagaflow_bus::TraceHeaders;
use tracing::warn;

use crate::events;
use crate::outbound::envelope_record;
use crate::refusal::Refused;
use crate::runtime::{Batch, Driver, Stopping};
use crate::wire::Envelope;

impl Driver {
    /// The domain topics to read, with the topic prefix applied.
    pub(crate) fn source_topics(&self) -> BTreeSet<String> {
        let topics = self.engine.registry().topics();
        topics
            .sources()
            .into_iter()
            .map(|t| self.prefixed(t))
            .collect()
    }

    pub(crate) fn prefixed(&self, topic: &str) -> String {
        format!("{}{topic}", self.names.prefix)
    }

    pub(crate) async fn on_source(
        &self,
        m: &BorrowedMessage<'_>,
        work: &mut Batch,
    ) -> Result<(), Stopping> {
        let mut attempt = 0;
        let event = match loop {
            match events::decode(&self.codec, m).await {
                Err(events::EventError::Decode(e)) if e.is_retriable() => {
                    self.backoff(&mut attempt, "registry", &e).await?;
                }
                decoded => break decoded,
            }
        } {
            Ok(e) => e,
            Err(e) => {
                self.refuse(m, Refused::Event(e), work);
                return Ok(());
            }
        };
        // Definitions name topics without the deployment's prefix.
        let topic = m
            .topic()
            .strip_prefix(self.names.prefix.as_str())
            .unwrap_or(m.topic());
        let mut routed = 0;
        for def in self
            .engine
            .registry()
            .triggered_by(topic, &event.event_type)
        {
            // Triggers start the latest version; ids follow from the key.
            if self
                .engine
                .registry()
                .latest(&def.saga_type)
                .map(|d| d.version)
                != Some(def.version)
            {
                continue;
            }
            let trigger = sagaflow_engine::TriggerEvent {
                message_id: event.message_id.clone(),
                topic: topic.to_owned(),
                event_type: event.event_type.clone(),
                payload: event.payload.clone(),
            };
            match self.engine.identify(&def.saga_type, &trigger) {
                Ok((saga_id, _key)) => {
                    let env = Envelope::Trigger {
                        saga_type: def.saga_type.clone(),
                        saga_id,
                        event: trigger,
                    };
                    if !self.route(m, &env, event.trace(), work) {
                        return Ok(());
                    }
                    routed += 1;
                }
                Err(source) => {
                    let refused = Refused::Identify {
                        saga_type: def.saga_type.clone(),
                        source,
                    };
                    self.refuse(m, refused, work);
                }
            }
        }
        for c in self
            .engine
            .correlate(topic, &event.event_type, &event.payload)
        {
            match self
                .engine
                .saga_id_for(&c.saga_type, c.saga_version, &c.key)
            {
                Ok(saga_id) => {
                    let env = Envelope::Event {
                        saga_id,
                        event: sagaflow_engine::AwaitedEvent {
                            message_id: event.message_id.clone(),
                            topic: topic.to_owned(),
                            event_type: event.event_type.clone(),
                            payload: event.payload.clone(),
                        },
                    };
                    if !self.route(m, &env, event.trace(), work) {
                        return Ok(());
                    }
                    routed += 1;
                }
                Err(e) => warn!(error = %e, "awaited event cannot be mapped to a saga id"),
            }
        }
        if routed == 0 {
            self.metrics
                .inputs
                .with_label_values(&["domain-event", "unmatched"])
                .inc();
        }
        Ok(())
    }

    /// Re-keys a domain event's envelope to `sagaflow.inputs`, or refuses
    /// the event (SF-ORCH-022) when the envelope would exceed the record
    /// limit. False when refused.
    fn route(
        &self,
        m: &BorrowedMessage<'_>,
        env: &Envelope,
        trace: TraceHeaders,
        work: &mut Batch,
    ) -> bool {
        let record = envelope_record(&self.names, env, trace);
        if record.size() > self.record_limit {
            let refused = Refused::TooLarge(format!(
                "the event makes a saga input of {} bytes, over the record limit of {} bytes",
                record.size(),
                self.record_limit
            ));
            self.refuse(m, refused, work);
            return false;
        }
        work.records.push(record);
        true
    }
}
