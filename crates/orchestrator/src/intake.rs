//! Inputs and replies in: each record of `sagaflow.inputs` and
//! `sagaflow.replies` is decoded and handed to its partition's core; what
//! cannot be taken is refused into the dead-letter topic with its code.

use crate::core::PartitionCore;
use crate::handoff::Start;
use crate::outbound::now_ms;
use crate::refusal::{InputRefused, Refusal, Refused};
use crate::runtime::{Batch, Driver, Owned, Stopping};
use crate::wire::{self, Envelope};
use rdkafka::Message;
use rdkafka::message::BorrowedMessage;
use sagaflow_bus::{SagaHeaders, TraceContext, partition_for};

/// The saga is a span of its own: a child of the trigger's (returned too,
/// when valid), or the root of a new trace.
fn saga_span(parent: Option<&str>) -> (String, Option<String>) {
    let parent = parent.and_then(TraceContext::parse);
    let trace = parent.map_or_else(TraceContext::new_root, |p| p.child());
    (trace.header(), parent.map(|p| p.header()))
}

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
        let r = core.handle_traced_input(
            env,
            headers.traceparent.as_deref(),
            headers.tracestate.as_deref(),
            input_bytes,
            now_ms(),
            saga_span,
        );
        self.refused(m, r, work);
    }

    /// A saga start handed over by this instance's facade: applied to its
    /// partition's core when this instance owns that partition, and
    /// returns the partition. `None` leaves it to `sagaflow.inputs`: the
    /// partition is not (or no longer) ours, or the core refuses the start
    /// (the inputs path dead-letters it with its reason, as for any
    /// input).
    pub(crate) fn on_start(
        &self,
        owned: &mut Owned,
        start: &Start,
        inputs_partitions: Option<i32>,
    ) -> Option<i32> {
        let p = partition_for(start.env.saga_id().as_bytes(), inputs_partitions?)?;
        if owned.foreign(p) {
            return None;
        }
        let core = &mut owned.parts.get_mut(&p)?.core;
        // Counted as the record it would have been.
        let input_bytes = serde_json::to_vec(&start.env).map_or(0, |b| b.len());
        core.handle_traced_input(
            start.env.clone(),
            start.trace.traceparent.as_deref(),
            start.trace.tracestate.as_deref(),
            input_bytes,
            now_ms(),
            saga_span,
        )
        .ok()
        .map(|()| p)
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
