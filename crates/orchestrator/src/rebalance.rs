//! The consumer group's rebalances, as events the driver's loop handles:
//! the callbacks only commit what is stored (on revoke) and pass the
//! partition list on; restoring and releasing happen in the loop.

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, TopicPartitionList};
use tokio::sync::mpsc::UnboundedSender;
use tracing::debug;

/// A rebalance, for the driver's loop: the inputs partitions concerned.
pub(crate) enum Rebalanced {
    Revoked(Vec<i32>),
    Assigned(Vec<i32>),
}

pub(crate) struct RebalanceContext {
    pub(crate) inputs: String,
    pub(crate) tx: UnboundedSender<Rebalanced>,
    pub(crate) lag: sagaflow_bus::lag::LagGauge,
}

impl ClientContext for RebalanceContext {
    fn stats(&self, statistics: rdkafka::statistics::Statistics) {
        self.lag.record(&statistics);
    }
}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            // Hand over cleanly: commit what is stored (only inputs whose
            // effects are durable), so the next owner starts after them.
            // This waits for one broker round trip on the polling thread;
            // the driver's watchdog sees it if the broker never answers.
            if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                debug!(error = %e, "commit on revoke (nothing stored, or already committed)");
            }
            let _ = self
                .tx
                .send(Rebalanced::Revoked(partitions_of(tpl, &self.inputs)));
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let _ = self
                .tx
                .send(Rebalanced::Assigned(partitions_of(tpl, &self.inputs)));
        }
    }
}

fn partitions_of(tpl: &TopicPartitionList, topic: &str) -> Vec<i32> {
    tpl.elements()
        .iter()
        .filter(|e| e.topic() == topic)
        .map(|e| e.partition())
        .collect()
}
