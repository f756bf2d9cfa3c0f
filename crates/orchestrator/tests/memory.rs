//! Heap held per in-flight saga by a partition core, counted by a global
//! allocator (exact and deterministic, unlike RSS): sagas started live
//! through `handle_input`, and sagas rebuilt by a restore. The bound is
//! the orchestrator-core issue's: at most 2 KiB per in-flight saga.
//! `sagaflow bench` reports the same figure as RSS of a whole instance.

mod common;

use std::alloc::System;

use common::{engine, kafka_store, limits};
use sagaflow_demo::samples;
use sagaflow_engine::{Engine, TriggerEvent};
use sagaflow_orchestrator::core::PartitionCore;
use sagaflow_orchestrator::metrics::Metrics;
use sagaflow_orchestrator::store::{MemoryStore, SagaStore, ready};
use sagaflow_orchestrator::wire::Envelope;
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Bytes allocated and not freed so far.
fn heap() -> isize {
    let s = GLOBAL.stats();
    s.bytes_allocated as isize - s.bytes_deallocated as isize
}

/// One measurement at a time: the counter is the whole process's.
static ALONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Sagas measured; the figure is per saga.
const SAGAS: usize = 20_000;
const BOUND: f64 = 2048.0;

fn trigger(engine: &Engine, i: usize) -> Envelope {
    let event = TriggerEvent {
        message_id: format!("orders.events/{i}"),
        topic: "orders.events".into(),
        event_type: "OrderPlaced".into(),
        payload: samples::order_placed(&format!("ord-{i:08}"), "c-1", 4_200, 1_700_000_000_000),
    };
    let (saga_id, _) = engine.identify("order-checkout", &event).expect("an id");
    Envelope::Trigger {
        saga_type: "order-checkout".into(),
        saga_id,
        event,
    }
}

const TRACE: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

#[test]
fn an_in_flight_saga_holds_at_most_2_kib() {
    let _alone = ALONE.blocking_lock();
    let engine = engine();
    let triggers: Vec<Envelope> = (0..SAGAS).map(|i| trigger(&engine, i)).collect();
    let store = MemoryStore::new();
    let mut lease = ready(store.take_over(0)).expect("takeover").lease;

    // Started live: each saga's first command is issued and its state
    // written, as the driver does batch by batch.
    let before = heap();
    let mut core = PartitionCore::new(0, engine.clone(), Metrics::default(), limits());
    let now = 1_700_000_000_000;
    for chunk in triggers.chunks(100) {
        for env in chunk {
            core.handle_input(env.clone(), Some(TRACE), 300, now, |p| {
                (TRACE.to_owned(), p.map(str::to_owned))
            })
            .expect("starts");
        }
        let mut drained = core.drain();
        let changes = core.changes(&mut drained);
        drop(drained);
        ready(store.write(vec![(&mut lease, changes)])).expect("a write");
        lease.sent();
    }
    let started_live = heap() - before;
    assert_eq!(core.len(), SAGAS);

    // Restored: a new owner rebuilds the same sagas from the log.
    let before = heap();
    let restored = ready(store.owner("b").take_over(0)).expect("takeover");
    let (restored, _owed) = PartitionCore::new(0, engine, Metrics::default(), limits()).restore(
        restored.replay,
        now,
        || TRACE.to_owned(),
    );
    let after_restore = (heap() - before) as f64 / SAGAS as f64;
    assert_eq!(restored.len(), SAGAS);

    // The log is the broker's memory, not the orchestrator's: what
    // dropping it frees is taken off the live figure.
    let records = store.records(0);
    let record = records
        .iter()
        .map(|r| r.payload.as_ref().map_or(0, Vec::len))
        .sum::<usize>()
        / SAGAS;
    drop(records);
    let before = heap();
    drop(store);
    let log = before - heap();
    let live = (started_live - log) as f64 / SAGAS as f64;
    eprintln!(
        "heap per in-flight saga: {live:.0} B started live, {after_restore:.0} B restored (bound {BOUND} B); changelog record {record} B"
    );
    assert!(
        live <= BOUND,
        "{live:.0} B per saga started live, over {BOUND}"
    );
    assert!(
        after_restore <= BOUND,
        "{after_restore:.0} B per restored saga, over {BOUND}"
    );
}

/// The same restore through the Kafka changelog on the real embedded
/// broker: the heap the driver's Rust code holds afterwards (librdkafka's
/// own buffers are C allocations, not counted here; `sagaflow bench`
/// reports the whole process's resident memory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_restored_from_kafka_holds_at_most_2_kib() {
    let _alone = ALONE.lock().await;
    let engine = engine();
    let topic = sagaflow_test_support::topic("memory-restore", 1).await;
    let store = |owner: &str| kafka_store(&topic, owner);
    let writer = store("writer");
    let mut lease = writer.take_over(0).await.expect("takeover").lease;
    let mut core = PartitionCore::new(0, engine.clone(), Metrics::default(), limits());
    let now = 1_700_000_000_000;
    for (i, chunk) in (0..SAGAS).collect::<Vec<_>>().chunks(500).enumerate() {
        for &n in chunk {
            core.handle_input(trigger(&engine, n), Some(TRACE), 300, now, |p| {
                (TRACE.to_owned(), p.map(str::to_owned))
            })
            .expect("starts");
        }
        let mut drained = core.drain();
        let changes = core.changes(&mut drained);
        let w = writer
            .write(vec![(&mut lease, changes)])
            .await
            .expect("a write");
        assert!(w.lost.is_empty(), "batch {i}");
        lease.sent();
    }
    drop(core);
    let before = heap();
    let restored = store("reader").take_over(0).await.expect("takeover");
    let (restored, owed) = PartitionCore::new(0, engine, Metrics::default(), limits()).restore(
        restored.replay,
        now,
        || TRACE.to_owned(),
    );
    drop(owed);
    let per_saga = (heap() - before) as f64 / SAGAS as f64;
    assert_eq!(restored.len(), SAGAS);
    eprintln!("heap per saga restored from Kafka: {per_saga:.0} B (bound {BOUND} B)");
    assert!(
        per_saga <= BOUND,
        "{per_saga:.0} B per saga restored from Kafka"
    );
}
