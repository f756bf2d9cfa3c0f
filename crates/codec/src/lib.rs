//! Sagaflow's wire types and their codecs.
//!
//! * [`messages`]: the four Sagaflow messages (`Command`, `Reply`,
//!   `SagaLifecycleEvent`, `SagaResult`) — the types the orchestrator and the
//!   adapters exchange.
//! * [`Codec`]: encodes/decodes them per topic, as Avro in the Confluent wire
//!   format (magic byte 0, 4-byte big-endian schema id, Avro binary) through
//!   `schema_registry_converter`'s cached async encoder and decoder, or as
//!   JSON, as [`CodecConfig`] says.
//! * [`schema_set`]: the `schemas/` directory and its subject mapping.
//!
//! Decoding never panics and never trusts the writer: each writer schema is
//! checked against [`SchemaLimits`] before use (SF-CODEC-011), each Avro body
//! is walked before `apache-avro` reads it so lengths must fit the bytes left
//! and [`ValueLimits`] bound the work (SF-CODEC-005/012), and a panic inside
//! the decode call becomes SF-CODEC-013.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use sagaflow_codec::{Codec, CodecConfig};
//! let codec = Codec::new(CodecConfig::avro_everywhere("http://127.0.0.1:8081"))?;
//! # let command: sagaflow_codec::messages::Command = todo!();
//! let bytes = codec.encode_command("sagaflow.commands.payments", &command).await?;
//! let back = codec.decode_command("sagaflow.commands.payments", &bytes).await?;
//! assert_eq!(back, command);
//! # Ok(()) }
//! ```

mod avro;
mod codec;
pub mod config;
pub mod error;
mod guard;
pub mod json;
pub mod messages;
mod scan;
pub mod schema_set;

pub use avro::{AvroMessage, FieldError};
pub use codec::{
    Codec, DecodedValue, HEADER_LEN, MAGIC_BYTE, SagaEvent, SharedCodec, split_header,
};
pub use config::{
    CodecConfig, DecodeLimits, RegistryAuth, RegistryConfig, SchemaLimits, SubjectStrategy,
    TopicFormat, ValidatedCodecConfig, ValueLimits,
};
pub use error::{ConfigError, DecodeError, EncodeError};

/// Re-exported so callers can build and inspect generic Avro values.
pub use apache_avro;
