//! What the orchestrator's test files share: the worked sagas' engine and
//! a Kafka changelog store on the real test broker.

#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::sync::Arc;

use sagaflow_engine::Engine;
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
