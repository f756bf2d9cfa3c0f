//! Saga starts from the HTTP facade, handed straight to this instance's
//! driver.
//!
//! A start through `sagaflow.inputs` costs a produce and a consume before
//! the saga's first state write: one broker round trip of the few a whole
//! saga takes. When this instance owns the saga's partition of the inputs,
//! the facade gives the start to its driver instead. The driver applies it
//! with its next batch and answers once that batch's state write is
//! acknowledged: the start is then as durable as a consumed one, and the
//! facade answers its caller as before.
//!
//! Anything else goes the old way, through `sagaflow.inputs`: a partition
//! owned by another instance (or by none yet), one taken over during the
//! write, a start the core refuses (the inputs path dead-letters it with
//! its reason, as it always has), a driver that is stopping, or one that
//! does not answer within [`TAKE_WITHIN`]. A start that reaches the core
//! twice (taken late, after the facade already sent it) is a duplicate
//! trigger of the same saga id, which the core ignores.

use std::time::Duration;

use sagaflow_bus::{Producer, TopicNames, TraceHeaders};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;
use crate::outbound::send_envelope;
use crate::wire::Envelope;

/// Starts waiting for the driver; a full queue sends through the inputs.
const QUEUE: usize = 1024;

/// How long the facade waits for its driver to take a start before it
/// sends it through `sagaflow.inputs` instead.
pub(crate) const TAKE_WITHIN: Duration = Duration::from_secs(2);

/// A saga start on its way from the facade to the driver.
#[derive(Debug)]
pub struct Start {
    pub(crate) env: Envelope,
    pub(crate) trace: TraceHeaders,
    pub(crate) taken: oneshot::Sender<Taken>,
}

/// The driver's answer to a [`Start`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Taken {
    /// Applied to the saga's partition, and its state write acknowledged.
    Applied,
    /// Not applied here: the facade sends it through `sagaflow.inputs`.
    Elsewhere,
}

impl Start {
    /// Answers the facade (which may have stopped waiting).
    pub(crate) fn answer(self, taken: Taken) {
        let _ = self.taken.send(taken);
    }
}

/// The facade's side: where it hands saga starts.
#[derive(Clone)]
pub struct Starts {
    to_driver: mpsc::Sender<Start>,
    metrics: Metrics,
}

/// The two ends: the facade's [`Starts`] and the driver's receiver.
pub fn channel(metrics: Metrics) -> (Starts, mpsc::Receiver<Start>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let starts = Starts {
        to_driver: tx,
        metrics,
    };
    (starts, rx)
}

impl Starts {
    /// Starts the saga of `env`: applied by this instance's driver when it
    /// owns the saga's partition, otherwise produced to `sagaflow.inputs`.
    /// `Ok` once the start is durable either way.
    pub async fn start(
        &self,
        producer: &Producer,
        names: &TopicNames,
        env: Envelope,
        trace: TraceHeaders,
    ) -> Result<(), String> {
        if self.hand_over(&env, &trace).await == Taken::Applied {
            self.count("direct");
            return Ok(());
        }
        self.count("inputs");
        send_envelope(producer, names, &env, trace).await
    }

    async fn hand_over(&self, env: &Envelope, trace: &TraceHeaders) -> Taken {
        let (taken, answer) = oneshot::channel();
        let start = Start {
            env: env.clone(),
            trace: trace.clone(),
            taken,
        };
        if self.to_driver.try_send(start).is_err() {
            return Taken::Elsewhere;
        }
        match tokio::time::timeout(TAKE_WITHIN, answer).await {
            Ok(Ok(taken)) => taken,
            // The driver stopped (the start was dropped) or is slow.
            Ok(Err(_)) | Err(_) => Taken::Elsewhere,
        }
    }

    fn count(&self, path: &str) {
        self.metrics.facade_starts.with_label_values(&[path]).inc();
    }
}
