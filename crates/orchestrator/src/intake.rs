//! Inputs and replies in: each record of `sagaflow.inputs` and
//! `sagaflow.replies` is decoded and handed to its partition's core; what
//! cannot be taken is refused into the dead-letter topic with its code.

use crate::core::PartitionCore;
use crate::outbound::now_ms;
use crate::refusal::{InputRefused, Refusal, Refused};
use crate::runtime::{Batch, Driver, Stopping};
use crate::wire::{self, Envelope};
use rdkafka::Message;
use rdkafka::message::BorrowedMessage;
use sagaflow_bus::{SagaHeaders, TraceContext};

impl Driver {
    /// Dead-letters an input with its coded reason, counted and logged once.
    pub(crate) fn refuse(
        &self,
        m: &BorrowedMessage<'_>,
        refusal: impl Into<Refusal>,
        work: &mut Batch,
    ) {
        let refused = InputRefused {
            record: m,
            refusal: refusal.into(),
        };
        work.records
            .push(refused.emit(&self.metrics, &self.names, self.record_limit));
    }

    /// A refusal from the core becomes a dead letter of the input.
    fn refused(&self, m: &BorrowedMessage<'_>, r: Result<(), Refusal>, work: &mut Batch) {
        if let Err(r) = r {
            self.refuse(m, r, work);
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
                self.refuse(m, Refused::Envelope(e.to_string()), work);
                return;
            }
            None => {
                self.refuse(m, Refused::EmptyEnvelope, work);
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
            self.refuse(m, Refused::EmptyReply, work);
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
                self.refuse(m, Refused::Reply(e), work);
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
