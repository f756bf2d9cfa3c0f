//! Sagaflow adapter runtime: the backend-calling core.
//!
//! An adapter fronts one backend service. For each [`AdapterCommand`] the
//! [`Executor`] returns the [`AdapterOutcome`] to put into the reply, after
//! idempotency, caching, circuit breaking, rate and concurrency limiting,
//! retries with backoff, and the call itself, made by a [`CommandHandler`]:
//! either the declarative REST/SOAP [`DeclarativeHandler`] configured by a
//! YAML file (see `docs/adapters.md`) or a team's own implementation.
//!
//! [`AdapterRuntime`] is the process around it: it consumes
//! `sagaflow.commands.<service>`, executes, produces replies keyed by saga
//! id, dead-letters what cannot be handled and commits offsets in order
//! (`runtime`); [`ProcessConfig`] is its configuration file (`process`).
//!
//! ```no_run
//! # async fn demo(cmd: sagaflow_adapter::AdapterCommand) -> Result<(), sagaflow_adapter::AdapterError> {
//! let cfg = sagaflow_adapter::config::load_file("adapters/payments.yaml")?;
//! let registry = prometheus::Registry::new();
//! let metrics = sagaflow_adapter::AdapterMetrics::register(&registry)?;
//! let executor = sagaflow_adapter::Executor::from_config(&cfg, metrics)?;
//! let outcome = executor.execute(&cmd).await;
//! # let _ = outcome; Ok(()) }
//! ```

mod auth;
mod cache;
mod command;
pub mod config;
mod declarative;
mod durable;
mod error;
mod executor;
mod handler;
pub mod metrics;
mod offsets;
pub mod process;
pub mod protection;
pub mod runtime;
mod secret;
mod template;
pub mod urls;
pub mod xml;

pub use cache::{IdempotencyStore, InMemoryIdempotencyStore};
pub use command::{AdapterCommand, AdapterOutcome, OutcomeKind, ReplyError};
pub use config::{ServiceConfig, load_file};
pub use declarative::DeclarativeHandler;
pub use error::AdapterError;
pub use executor::{Executor, ExecutorSettings, MAX_COMMAND_TIMEOUT};
pub use handler::{CacheKey, CallContext, CommandHandler};
pub use metrics::{AdapterMetrics, RuntimeMetrics};
pub use process::ProcessConfig;
pub use runtime::{AdapterRuntime, RunningAdapter, RuntimeError};
pub use secret::{Secret, SecretSource};
pub use template::xml_escape;
