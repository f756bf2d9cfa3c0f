//! A consumer group's rebalances as events for a runtime's loop, the one
//! consumer context both runtimes use: the callbacks commit what is stored
//! on a revoke and pass the partitions on; restoring and releasing happen
//! in the loop. It also reports the consumer's lag.

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, TopicPartitionList};
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tracing::debug;

use crate::lag::LagGauge;

/// A change of the partitions a member holds, of the topic it watches.
#[derive(Debug, PartialEq, Eq)]
pub enum Ownership {
    Assigned(Vec<i32>),
    Revoked(Vec<i32>),
}

/// How a runtime wants its rebalances reported.
#[derive(Clone, Debug)]
pub struct RebalancePolicy {
    /// The topic whose partitions are reported (a member may read others
    /// co-partitioned with it).
    pub topic: String,
    /// How the stored offsets are committed on a revoke: `Sync` waits for
    /// the broker on the polling thread, so the next owner starts exactly
    /// after them.
    pub commit: CommitMode,
    /// Whether an assignment of none of the topic's partitions is reported
    /// too (a member that is ready once it holds what it was given, even
    /// nothing, needs it).
    pub report_empty: bool,
}

/// The consumer context: see the module documentation.
pub struct RebalanceEvents {
    policy: RebalancePolicy,
    tx: UnboundedSender<Ownership>,
    lag: LagGauge,
}

impl RebalanceEvents {
    /// The context, and the receiver its events arrive on.
    pub fn new(policy: RebalancePolicy, lag: LagGauge) -> (Self, UnboundedReceiver<Ownership>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { policy, tx, lag }, rx)
    }

    fn partitions(&self, tpl: &TopicPartitionList) -> Vec<i32> {
        tpl.elements()
            .iter()
            .filter(|e| e.topic() == self.policy.topic)
            .map(|e| e.partition())
            .collect()
    }
}

impl ClientContext for RebalanceEvents {
    fn stats(&self, statistics: rdkafka::statistics::Statistics) {
        self.lag.record(&statistics);
    }
}

impl ConsumerContext for RebalanceEvents {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            // Hand over cleanly: commit what is stored (only inputs whose
            // outputs are durable), so the next owner starts after them.
            if tpl.count() > 0
                && let Err(e) = consumer.commit_consumer_state(self.policy.commit)
            {
                debug!(error = %e, "commit on revoke (nothing stored, or already committed)");
            }
            let _ = self.tx.send(Ownership::Revoked(self.partitions(tpl)));
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let partitions = self.partitions(tpl);
            if self.policy.report_empty || !partitions.is_empty() {
                let _ = self.tx.send(Ownership::Assigned(partitions));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_watched_topics_partitions_are_reported() {
        let gauge = prometheus::IntGaugeVec::new(
            prometheus::Opts::new("lag", "lag"),
            &["consumer", "topic", "partition"],
        )
        .expect("a gauge");
        let policy = RebalancePolicy {
            topic: "sagaflow.inputs".into(),
            commit: CommitMode::Sync,
            report_empty: true,
        };
        let (events, _rx) = RebalanceEvents::new(policy, LagGauge::new(gauge, "g"));
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition("sagaflow.inputs", 2);
        tpl.add_partition("sagaflow.replies", 2);
        tpl.add_partition("sagaflow.inputs", 5);
        tpl.add_partition("orders.events", 0);
        assert_eq!(events.partitions(&tpl), vec![2, 5]);
    }
}
