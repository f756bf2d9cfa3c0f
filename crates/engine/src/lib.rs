//! Sagaflow's saga definitions and its pure saga engine.
//!
//! * [`definition`]: YAML saga definitions, validated into
//!   [`SagaDefinition`]s with `file:line:column` errors
//!   ([`DefinitionErrors`]), kept in a [`DefinitionRegistry`] keyed by
//!   (type, version).
//! * [`engine`]: the sans-IO state machine. [`Engine::start`] and
//!   [`Engine::apply`] take the state, an input and the time, and return
//!   effects as data; nothing here touches a clock, the network or
//!   randomness, so the engine is deterministic and replayable.
//!
//! The runtime persists the [`SagaState`] before it executes the effects;
//! after a restart [`Engine::pending_effects`] says what is still owed.

pub mod data;
pub mod definition;
pub mod engine;
pub mod error;
pub mod expr;
pub mod lint;
pub mod load;
pub mod state;
pub mod virtual_clock;

// The YAML loader moved to `sagaflow-config`; the definition modules still
// name it `crate::yaml`.
use sagaflow_config as yaml;

pub use definition::{
    DefinitionRegistry, DeploymentTopics, NodeId, RawSagaDefinition, RetryOn, RetryPolicy,
    SagaDefinition, ServiceCatalog, ServiceInfo,
};
pub use engine::{
    Applied, AwaitedEvent, Command, CommandKind, Correlation, DomainEvent, Effect, Engine, Input,
    LifecycleEvent, LifecycleKind, Outcome, Reply, ReplyOutcome, SagaResult, TriggerEvent,
    command_id, timer_awaits_input,
};
pub use error::{DefCode, DefinitionError, DefinitionErrors, EngineError};
pub use lint::DefinitionWarning;
pub use load::{LoadError, load_definitions};
pub use sagaflow_config::Position;
pub use state::{Phase, SagaState, SagaStatus, StepRun, Timer, TimerPurpose, Timestamp};

/// FNV-1a (64 bit): a small, stable hash for deterministic jitter and ids
/// (std's hasher is not guaranteed stable across releases).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}
