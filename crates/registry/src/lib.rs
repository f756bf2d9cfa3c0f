//! A schema registry speaking enough of the Confluent REST API for
//! `schema_registry_converter` and other Confluent clients, for Sagaflow's
//! local stack and tests. Avro only; state in memory, every change appended
//! to a durable [`SchemaLog`] and replayed on start.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let registry = sagaflow_registry::Registry::open_dir("data/registry".as_ref()).await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8081").await?;
//! let handle = registry.serve(listener)?;
//! println!("registry at {}", handle.url());
//! handle.wait().await?;
//! # Ok(()) }
//! ```

pub mod compat;
mod registry;
mod server;
pub mod storage;

pub use compat::CompatibilityLevel;
pub use registry::{ApiError, CompatibilityResult, Registry, SubjectSchema, Submitted, VersionRef};
pub use sagaflow_avro_limits::SchemaLimits;
pub use server::{Auth, CONTENT_TYPE, ServeHandle, router};
pub use storage::{FileLog, LogRecord, MemoryLog, SchemaLog, StorageError};

/// Default listen address of the local registry (loopback only).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8081";
