//! Loading Sagaflow's YAML files: saga definitions, service catalogues and
//! each process's config.
//!
//! * [`load`] parses one YAML document into a `serde_json::Value` tree and
//!   the [`Spans`] that map every node's path (`steps[2].call`) to its
//!   [`Position`], so a serde error can name a file, line and column.
//! * [`apply_env_overrides`] lets `SAGAFLOW_<KEY>__<KEY>…` variables
//!   override values of a loaded tree before it is deserialized.
//!
//! The crate is small on purpose (serde_json and yaml-rust2 only): the
//! engine, both runtimes, the console and the CLI share it without
//! depending on each other.

mod env;
mod yaml;

pub use env::apply_env_overrides;
pub use yaml::{Position, Spans, YamlError, load};
