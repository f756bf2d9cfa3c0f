//! Inputs and replies in: each record of `sagaflow.inputs` and
//! `sagaflow.replies` is decoded and handed to its partition's core; what
//! cannot be taken is refused into the dead-letter topic with its code.

use rdkafka::Message;
use rdkafka::message::BorrowedMessage;
use sagaflow_bus::{SagaHeaders, TraceContext};
use tracing::warn;

use crate::core::{PartitionCore, Refusal};
use crate::outbound::{dead_letter, now_ms};
use crate::runtime::{Batch, Driver, Stopping};
use crate::wire::{self, Envelope};

impl Driver {
    /// Dead-letters an input with a coded reason, counted and logged once.
    pub(crate) fn refuse(
        &self,
        m: &BorrowedMessage<'_>,
        code: &str,
        reason: &str,
        work: &mut Batch,
    ) {
        warn!(
            topic = m.topic(),
            messaging.kafka.partition = m.partition(),
            offset = m.offset(),
            code,
            reason,
            "input refused; dead-lettered"
        );
        self.metrics.dead_letters.with_label_values(&[code]).inc();
        work.records
            .push(dead_letter(&self.names, m, code, reason, self.record_limit));
    }

    /// A refusal from the core becomes a dead letter of the input.
    fn refused(&self, m: &BorrowedMessage<'_>, r: Result<(), Refusal>, work: &mut Batch) {
        if let Err(r) = r {
            self.refuse(m, r.code, &r.reason, work);
        }
    }

    pub(crate) fn on_input(
        &self,
        core: &mut PartitionCore,
        m: &BorrowedMessage<'_>,
        work: &mut Batch,
    ) {
        let env: Envelope = match m.payload().map(serde_json::from_slice) {
            Some(Ok(env)) => env,
            Some(Err(e)) => {
                let reason = format!("not a Sagaflow input envelope: {e}");
                self.refuse(m, "SF-ORCH-014", &reason, work);
                return;
            }
            None => {
                self.refuse(m, "SF-ORCH-014", "empty input envelope", work);
                return;
            }
        };
        let headers = m
            .headers()
            .map(SagaHeaders::from_headers)
            .unwrap_or_default();
        let input_bytes = m.payload().map_or(0, <[u8]>::len);
        // The saga is a span of its own: a child of the trigger's, or the
        // root of a new trace.
        let new_trace = |parent: Option<&str>| {
            let parent = parent.and_then(TraceContext::parse);
            let trace = parent.map_or_else(TraceContext::new_root, |p| p.child());
            (trace.header(), parent.map(|p| p.header()))
        };
        let r = core.handle_traced_input(
            env,
            headers.traceparent.as_deref(),
            headers.tracestate.as_deref(),
            input_bytes,
            now_ms(),
            new_trace,
        );
        self.refused(m, r, work);
    }

    pub(crate) async fn on_reply(
        &self,
        core: &mut PartitionCore,
        m: &BorrowedMessage<'_>,
        work: &mut Batch,
    ) -> Result<(), Stopping> {
        let Some(bytes) = m.payload() else {
            self.refuse(m, "SF-ORCH-012", "empty reply", work);
            return Ok(());
        };
        let mut attempt = 0;
        let reply = match loop {
            match self.codec.decode_reply(m.topic(), bytes).await {
                Err(e) if e.is_retriable() => {
                    self.backoff(&mut attempt, "registry", &e).await?;
                }
                decoded => break decoded,
            }
        } {
            Ok(r) => r,
            Err(e) => {
                self.refuse(m, e.code(), &e.to_string(), work);
                return Ok(());
            }
        };
        let outcome = format!("{:?}", reply.outcome).to_lowercase();
        self.metrics
            .replies_received
            .with_label_values(&[&reply.service, &outcome])
            .inc();
        let saga_id = reply.saga_id.clone();
        let step = reply.step.clone();
        let r = core.handle_reply(&saga_id, &step, wire::reply(reply), bytes.len(), now_ms());
        self.refused(m, r, work);
        Ok(())
    }
}
