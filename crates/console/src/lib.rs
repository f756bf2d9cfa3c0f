//! Sagaflow's console: a read model for people.
//!
//! * [`store`]: the durable history, one SQLite file: sagas, their
//!   lifecycle events with step data, search attributes, dead letters, the
//!   audit log, and the Kafka offsets applied (in the same transactions).
//! * [`follow`]: the indexer, which follows `sagaflow.saga-events` and the
//!   dead-letter topic into the store.
//! * [`api`]: the HTTP API and the web UI (assets compiled in).
//! * [`app`]: configuration and the process that runs them together.

pub mod api;
pub mod app;
pub mod bench;
pub mod definitions;
pub mod error;
pub mod follow;
pub mod store;

pub use app::{ConsoleConfig, run};
pub use error::ConsoleError;
pub use store::{Filter, Page, Store};
