//! One contract, every `SagaStore` backend (tansu's per-backend style):
//! each promise the driver and the simulation rely on is a function run
//! against the in-memory store and against the Kafka changelog on the
//! real embedded broker. A backend that breaks one fails here by name.

mod common;

use common::kafka_store;
use sagaflow_engine::{SagaState, Timestamp};
use sagaflow_orchestrator::changelog::{self, Parked};
use sagaflow_orchestrator::core::StoredSaga;
use sagaflow_orchestrator::store::{Change, KafkaStore, Lease, MemoryStore, SagaStore};
use serde_json::json;

fn saga(id: &str, seq: u64) -> Vec<u8> {
    let mut state: SagaState = serde_json::from_value(json!({
        "version": 1, "saga_id": id, "saga_type": "t", "saga_version": 1, "key": id,
        "status": "running", "trigger": {}, "started_at": 0, "updated_at": 0, "seq": seq
    }))
    .expect("a test state");
    state.updated_at = Timestamp(seq);
    serde_json::to_vec(&StoredSaga {
        state,
        outbox: Vec::new(),
        traceparent: None,
        trigger_traceparent: None,
        tracestate: None,
    })
    .expect("serialises")
}

fn seq(r: &changelog::Replay, id: &str) -> Option<u64> {
    r.saga(id).map(|s| s.expect("readable").state.seq)
}

/// Writes `changes` under `lease` and expects the lease to keep its hold.
async fn write(store: &impl SagaStore, lease: &mut Lease, changes: Vec<Change>) {
    let w = store.write(vec![(lease, changes)]).await.expect("a write");
    assert!(w.lost.is_empty(), "the owner in charge kept its partition");
}

/// What was written is what the next owner restores: the latest value per
/// key, tombstones delete, parked events and ended markers come back.
async fn restores_what_was_written(a: impl SagaStore, b: impl SagaStore) {
    let first = a.take_over(0).await.expect("takeover");
    assert!(
        first.replay.sagas.is_empty(),
        "a fresh partition holds nothing"
    );
    let mut lease = first.lease;
    let parked = Parked {
        saga_id: "s3".into(),
        event: sagaflow_engine::AwaitedEvent {
            message_id: "m".into(),
            topic: "t".into(),
            event_type: "E".into(),
            payload: json!({}),
        },
    };
    let ended = serde_json::to_vec(&changelog::Ended { until: 42 }).unwrap();
    write(
        &a,
        &mut lease,
        vec![
            Change::put("s1", saga("s1", 1)),
            Change::put("s2", saga("s2", 1)),
        ],
    )
    .await;
    write(
        &a,
        &mut lease,
        vec![
            Change::put("s1", saga("s1", 2)),
            Change::delete("s2"),
            Change::put(
                changelog::parked_key("s3", "m"),
                serde_json::to_vec(&parked).unwrap(),
            ),
            Change::put(changelog::ended_key(7), ended),
        ],
    )
    .await;
    let next = b.take_over(0).await.expect("takeover");
    assert_eq!(seq(&next.replay, "s1"), Some(2), "the latest value wins");
    assert_eq!(seq(&next.replay, "s2"), None, "a tombstone deletes");
    assert_eq!(
        next.replay.early.get("s3").map(Vec::len),
        Some(1),
        "parked events come back"
    );
    assert_eq!(
        next.replay.ended.get(&7),
        Some(&42),
        "ended markers come back"
    );
    assert!(
        next.lease.epoch > lease.epoch,
        "a later owner has a later epoch"
    );
    assert_eq!(next.replay.fenced, 0);
}

/// A replaced owner's next write finds the newer marker: it is told the
/// partition is lost, and whatever it wrote is ignored by every restore.
async fn a_replaced_owner_is_fenced(a: impl SagaStore, b: impl SagaStore) {
    let mut old = a.take_over(1).await.expect("takeover").lease;
    write(&a, &mut old, vec![Change::put("s", saga("s", 1))]).await;
    let mut new = b.take_over(1).await.expect("takeover").lease;
    let w = a
        .write(vec![(&mut old, vec![Change::put("s", saga("s", 99))])])
        .await
        .expect("the zombie's write lands");
    assert_eq!(w.lost, vec![1], "the zombie learns it was replaced");
    // The owner in charge finds the zombie's record between its writes:
    // foreign, not a takeover.
    let w = b
        .write(vec![(&mut new, vec![Change::put("s", saga("s", 2))])])
        .await
        .expect("a write");
    assert!(
        w.lost.is_empty(),
        "late writes of a replaced owner are not a takeover"
    );
    assert_eq!(w.foreign, 1, "the zombie's record is counted");
    // A later write of the owner in charge lands after the gap.
    write(&b, &mut new, vec![Change::put("s", saga("s", 3))]).await;
    let third = a.take_over(1).await.expect("takeover");
    assert_eq!(
        seq(&third.replay, "s"),
        Some(3),
        "the zombie's value never wins"
    );
    assert_eq!(third.replay.fenced, 1);
    // And the third owner's takeover replaced the second in turn.
    let w = b
        .write(vec![(&mut new, vec![Change::put("s", saga("s", 4))])])
        .await
        .expect("a write");
    assert_eq!(w.lost, vec![1]);
}

/// Delivery marks: outboxes written before a mark are delivered; a mark is
/// written only once the lease says its effects were sent.
async fn delivery_marks_say_what_was_sent(a: impl SagaStore, b: impl SagaStore) {
    let mut lease = a.take_over(2).await.expect("takeover").lease;
    write(&a, &mut lease, vec![Change::put("s", saga("s", 1))]).await;
    a.mark_delivered(vec![&mut lease]).await.expect("marks");
    let r = b.take_over(2).await.expect("takeover").replay;
    assert_eq!(r.delivered_through, -1, "nothing was said sent: no mark");
    let mut lease = a.take_over(2).await.expect("takeover").lease;
    write(&a, &mut lease, vec![Change::put("s", saga("s", 2))]).await;
    lease.sent();
    // The mark rides on the next write (here one with no changes of its own).
    write(&a, &mut lease, vec![]).await;
    let (offset, _) = b.take_over(2).await.expect("takeover").replay.sagas["s"].clone();
    let r = a.take_over(2).await.expect("takeover").replay;
    assert!(
        r.delivered_through >= offset,
        "the saga's outbox is marked delivered"
    );
    let mut lease = b.take_over(2).await.expect("takeover").lease;
    lease.sent_before_marker();
    b.mark_delivered(vec![&mut lease]).await.expect("marks");
    let r = a.take_over(2).await.expect("takeover").replay;
    assert_eq!(
        r.delivered_through,
        lease.epoch - 1,
        "a restore that re-sent marks all before its marker"
    );
}

/// Writes to several partitions in one batch each advance their own lease.
async fn one_batch_many_partitions(a: impl SagaStore, b: impl SagaStore) {
    let mut p3 = a.take_over(3).await.expect("takeover").lease;
    let mut p4 = a.take_over(4).await.expect("takeover").lease;
    for round in 1..=3 {
        let w = a
            .write(vec![
                (
                    &mut p3,
                    vec![
                        Change::put("x", saga("x", round)),
                        Change::put("y", saga("y", round)),
                    ],
                ),
                (&mut p4, vec![Change::put("z", saga("z", round))]),
            ])
            .await
            .expect("a write");
        assert_eq!(w.lost, Vec::<i32>::new());
        assert_eq!(w.foreign, 0, "no gap between an owner's own writes");
    }
    let r3 = b.take_over(3).await.expect("takeover").replay;
    let r4 = b.take_over(4).await.expect("takeover").replay;
    assert_eq!(
        (seq(&r3, "x"), seq(&r3, "y"), seq(&r4, "z")),
        (Some(3), Some(3), Some(3))
    );
    assert!(!r3.sagas.contains_key("z"), "partitions are separate");
}

mod memory {
    use super::*;

    fn pair() -> (MemoryStore, MemoryStore) {
        let log = MemoryStore::new();
        (log.owner("a"), log.owner("b"))
    }

    #[tokio::test]
    async fn restores_what_was_written() {
        let (a, b) = pair();
        super::restores_what_was_written(a, b).await;
    }

    #[tokio::test]
    async fn a_replaced_owner_is_fenced() {
        let (a, b) = pair();
        super::a_replaced_owner_is_fenced(a, b).await;
    }

    #[tokio::test]
    async fn delivery_marks_say_what_was_sent() {
        let (a, b) = pair();
        super::delivery_marks_say_what_was_sent(a, b).await;
    }

    #[tokio::test]
    async fn one_batch_many_partitions() {
        let (a, b) = pair();
        super::one_batch_many_partitions(a, b).await;
    }
}

mod kafka {
    use super::*;

    /// Two owners (instances) on one changelog topic of the real broker.
    async fn pair() -> (KafkaStore, KafkaStore) {
        let topic = sagaflow_test_support::topic("store-contract", 5).await;
        (kafka_store(&topic, "a"), kafka_store(&topic, "b"))
    }

    #[tokio::test]
    async fn restores_what_was_written() {
        let (a, b) = pair().await;
        super::restores_what_was_written(a, b).await;
    }

    #[tokio::test]
    async fn a_replaced_owner_is_fenced() {
        let (a, b) = pair().await;
        super::a_replaced_owner_is_fenced(a, b).await;
    }

    #[tokio::test]
    async fn delivery_marks_say_what_was_sent() {
        let (a, b) = pair().await;
        super::delivery_marks_say_what_was_sent(a, b).await;
    }

    #[tokio::test]
    async fn one_batch_many_partitions() {
        let (a, b) = pair().await;
        super::one_batch_many_partitions(a, b).await;
    }
}
