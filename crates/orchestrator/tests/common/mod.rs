//! What the orchestrator's test files share: the worked sagas' engine and
//! a Kafka changelog store on the real test broker.

#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sagaflow_engine::Engine;
use sagaflow_orchestrator::core::Limits;
use sagaflow_orchestrator::health::Health;
use sagaflow_orchestrator::store::KafkaStore;

/// An engine over the checked-in worked sagas (topology/).
pub fn engine() -> Arc<Engine> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../topology");
    let (_, registry) = sagaflow_orchestrator::app::load_definitions(
        &root.join("sagas"),
        &root.join("services.yaml"),
    )
    .expect("the worked sagas load");
    Arc::new(Engine::new(registry))
}

/// Generous limits: an hour of retention, a week of dedup, room to park.
pub fn limits() -> Limits {
    Limits {
        completed_retention: Duration::from_secs(3600),
        early_event_retention: Duration::from_secs(3600),
        record_limit: 1_000_000,
        max_parked_per_saga: 16,
        max_parked_per_partition: 10_000,
        dedup_window: Duration::from_secs(7 * 24 * 3600),
    }
}

/// A store on the changelog `topic` of the shared test broker, owned by a
/// uniquely named instance `owner-…`.
pub fn kafka_store(topic: &str, owner: &str) -> KafkaStore {
    let kafka = sagaflow_test_support::kafka();
    KafkaStore::new(
        kafka.clone(),
        kafka.producer().expect("a producer"),
        topic.to_owned(),
        sagaflow_test_support::unique(owner),
        1_000_000,
        Health::default(),
    )
}
