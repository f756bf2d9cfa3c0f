//! The codec: Avro in the Confluent wire format through
//! `schema_registry_converter`'s cached async encoder/decoder, or JSON.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use apache_avro::Schema;
use apache_avro::types::Value;
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::avro_common::AvroSchema;
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{
    RawError, SchemaType, SubjectNameStrategy, SuppliedSchema,
};

use crate::avro::{AvroMessage, FieldError};
use crate::config::{
    CodecConfig, RegistryAuth, SubjectStrategy, TopicFormat, ValidatedCodecConfig,
};
use crate::error::{ConfigError, DecodeError, EncodeError};
use crate::guard::no_panic;
use crate::messages::{Command, Reply, SagaLifecycleEvent, SagaResult};
use crate::scan::{ScanError, Writer, scan};

/// Writer schemas whose check result is kept; past this the cache starts
/// over (ids are few in practice; this only bounds a hostile registry).
const CHECKED_SCHEMAS_CAP: usize = 4096;

/// Magic byte of the Confluent wire format.
pub const MAGIC_BYTE: u8 = 0;
/// Length of the Confluent header: magic byte + 4-byte big-endian schema id.
pub const HEADER_LEN: usize = 5;

/// Splits a Confluent wire-format payload into `(schema id, Avro body)`.
pub fn split_header(bytes: &[u8]) -> Result<(u32, &[u8]), DecodeError> {
    if bytes.len() < HEADER_LEN {
        return Err(DecodeError::TooShort { len: bytes.len() });
    }
    if bytes[0] != MAGIC_BYTE {
        return Err(DecodeError::WrongMagicByte { found: bytes[0] });
    }
    let id = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    Ok((id, &bytes[HEADER_LEN..]))
}

/// A decoded Avro value with the writer schema's id and record name.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedValue {
    /// Schema id from the header.
    pub schema_id: u32,
    /// Full name of the writer's record, when the schema is a record.
    pub full_name: Option<String>,
    /// The value, as written (writer schema).
    pub value: Value,
}

/// Encodes and decodes values per topic. Share one instance (`Arc`) per
/// process: the encoder and decoder caches live inside.
pub struct Codec {
    config: ValidatedCodecConfig,
    avro: Option<AvroParts>,
}

struct AvroParts {
    url: String,
    encoder: AvroEncoder,
    decoder: AvroDecoder,
    /// Subjects whose schema the encoder has cached.
    warm_subjects: RwLock<HashSet<String>>,
    /// `(schema id, record full name)` → whether the writer schema is exactly
    /// the compiled-in reader schema (then resolution is skipped).
    same_as_reader: RwLock<HashMap<(u32, &'static str), bool>>,
    /// Schema id → the named types of the writer schema once it passed the
    /// limits, or why it was refused.
    checked: RwLock<HashMap<u32, Result<Arc<Writer>, DecodeError>>>,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn sr_settings(config: &ValidatedCodecConfig) -> Result<Option<(String, SrSettings)>, ConfigError> {
    let Some(registry) = &config.registry else {
        return Ok(None);
    };
    let mut builder = SrSettings::new_builder(registry.url.clone());
    builder.set_timeout(registry.timeout);
    match &registry.auth {
        None => {}
        Some(RegistryAuth::Basic { username, password }) => {
            builder.set_basic_authorization(username, Some(password));
        }
        Some(RegistryAuth::Bearer { token }) => {
            builder.set_token_authorization(token);
        }
    }
    let settings = builder.build().map_err(|e| ConfigError {
        message: format!("registry client: {e}"),
    })?;
    Ok(Some((registry.url.clone(), settings)))
}

/// Whether an error from `schema_registry_converter` is the registry's
/// answer, and if so with which Confluent error code.
fn registry_answer(e: &SRCError) -> Option<&RawError> {
    std::error::Error::source(e).and_then(|s| s.downcast_ref::<RawError>())
}

fn describe(e: &SRCError) -> String {
    match &e.cause {
        Some(cause) => format!("{}: {cause}", e.error),
        None => e.error.clone(),
    }
}

/// The converter marks exactly transport failures and HTTP 502/503 as
/// retriable.
fn unreachable(e: &SRCError) -> bool {
    e.retriable
}

impl Codec {
    /// Builds a codec from raw configuration (validated here).
    pub fn new(config: CodecConfig) -> Result<Self, ConfigError> {
        Self::from_validated(config.validate()?)
    }

    /// Builds a codec from a validated configuration.
    pub fn from_validated(config: ValidatedCodecConfig) -> Result<Self, ConfigError> {
        let avro = sr_settings(&config)?.map(|(url, settings)| AvroParts {
            url,
            encoder: AvroEncoder::new(settings.clone()),
            decoder: AvroDecoder::new(settings),
            warm_subjects: RwLock::new(HashSet::new()),
            same_as_reader: RwLock::new(HashMap::new()),
            checked: RwLock::new(HashMap::new()),
        });
        Ok(Self { config, avro })
    }

    /// The configuration in use.
    pub fn config(&self) -> &ValidatedCodecConfig {
        &self.config
    }

    fn format(&self, topic: &str) -> Option<&TopicFormat> {
        self.config.format(topic)
    }

    fn avro_parts(&self, topic: &str) -> Option<&AvroParts> {
        // `validate` guarantees a registry whenever a topic is Avro.
        self.avro
            .as_ref()
            .filter(|_| matches!(self.format(topic), Some(TopicFormat::Avro { .. })))
    }

    /// Encodes `message` for `topic`.
    pub async fn encode<M: AvroMessage>(
        &self,
        topic: &str,
        message: &M,
    ) -> Result<Vec<u8>, EncodeError> {
        match self.format(topic) {
            None => Err(EncodeError::TopicNotConfigured {
                topic: topic.to_string(),
            }),
            Some(TopicFormat::Json) => {
                serde_json::to_vec(message).map_err(|e| EncodeError::ValueMismatch {
                    subject: topic.to_string(),
                    message: e.to_string(),
                })
            }
            Some(TopicFormat::Avro { .. }) => {
                self.encode_avro_value(topic, M::FULL_NAME, M::SCHEMA_JSON, message.to_avro())
                    .await
            }
        }
    }

    /// Encodes an arbitrary Avro record of schema `schema_json` (full name
    /// `full_name`) for an Avro `topic` — for domain events, which have no
    /// Rust type here.
    pub async fn encode_avro_value(
        &self,
        topic: &str,
        full_name: &str,
        schema_json: &str,
        value: Value,
    ) -> Result<Vec<u8>, EncodeError> {
        let Some(TopicFormat::Avro {
            subject_strategy,
            auto_register,
        }) = self.format(topic)
        else {
            return Err(EncodeError::TopicNotConfigured {
                topic: topic.to_string(),
            });
        };
        let parts = self
            .avro_parts(topic)
            .ok_or_else(|| EncodeError::TopicNotConfigured {
                topic: topic.to_string(),
            })?;
        let subject = subject_strategy.subject(topic, full_name);
        // The plain strategy names the same subject (the converter's cache
        // key) without carrying the schema text, which the converter clones
        // on every call.
        let plain = match subject_strategy {
            SubjectStrategy::TopicName => {
                SubjectNameStrategy::TopicNameStrategy(topic.to_string(), false)
            }
            SubjectStrategy::RecordName => {
                SubjectNameStrategy::RecordNameStrategy(full_name.to_string())
            }
            SubjectStrategy::TopicRecordName => SubjectNameStrategy::TopicRecordNameStrategy(
                topic.to_string(),
                full_name.to_string(),
            ),
        };
        let warm = parts
            .warm_subjects
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&subject);
        if !warm {
            let first = if *auto_register {
                let supplied = SuppliedSchema::new(
                    Some(full_name.to_string()),
                    SchemaType::Avro,
                    schema_json.to_string(),
                );
                match subject_strategy {
                    SubjectStrategy::TopicName => SubjectNameStrategy::TopicNameStrategyWithSchema(
                        topic.to_string(),
                        false,
                        supplied,
                    ),
                    SubjectStrategy::RecordName => {
                        SubjectNameStrategy::RecordNameStrategyWithSchema(supplied)
                    }
                    SubjectStrategy::TopicRecordName => {
                        SubjectNameStrategy::TopicRecordNameStrategyWithSchema(
                            topic.to_string(),
                            supplied,
                        )
                    }
                }
            } else {
                plain.clone()
            };
            // Fetch (or register) first so registry failures and value
            // mismatches are told apart.
            parts
                .encoder
                .get_schema_and_id(&subject, first)
                .await
                .map_err(|e| {
                    if !e.retriable {
                        // The converter caches non-retriable failures per
                        // subject; drop them so the next call asks again.
                        parts.encoder.remove_errors_from_cache();
                    }
                    if unreachable(&e) {
                        EncodeError::RegistryUnreachable {
                            message: format!("{} ({})", describe(&e), parts.url),
                        }
                    } else {
                        EncodeError::Registry {
                            message: format!("subject `{subject}`: {}", describe(&e)),
                        }
                    }
                })?;
            parts
                .warm_subjects
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(subject.clone());
        }
        parts
            .encoder
            .encode_value(value, &plain)
            .await
            .map_err(|e| EncodeError::ValueMismatch {
                subject,
                message: describe(&e),
            })
    }

    fn same_as_reader<M: AvroMessage>(&self, schema_id: u32, writer: &Schema) -> bool {
        let Some(parts) = &self.avro else {
            return false;
        };
        let key = (schema_id, M::FULL_NAME);
        if let Some(same) = parts
            .same_as_reader
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return *same;
        }
        // Full JSON form (keeps logical types and defaults, unlike the
        // parsing canonical form).
        let same = matches!(
            (serde_json::to_value(writer), serde_json::to_value(M::schema())),
            (Ok(w), Ok(r)) if w == r
        );
        parts
            .same_as_reader
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, same);
        same
    }

    /// Decodes a value of `topic` as `M`. Never panics: a panic inside is
    /// caught and returned as SF-CODEC-013.
    pub async fn decode<M: AvroMessage>(
        &self,
        topic: &str,
        bytes: &[u8],
    ) -> Result<M, DecodeError> {
        no_panic(self.decode_unguarded(topic, bytes)).await
    }

    async fn decode_unguarded<M: AvroMessage>(
        &self,
        topic: &str,
        bytes: &[u8],
    ) -> Result<M, DecodeError> {
        match self.format(topic) {
            None => Err(DecodeError::TopicNotConfigured {
                topic: topic.to_string(),
            }),
            Some(TopicFormat::Json) => {
                serde_json::from_slice(bytes).map_err(|e| DecodeError::InvalidJson {
                    field: None,
                    message: e.to_string(),
                })
            }
            Some(TopicFormat::Avro { .. }) => {
                let (decoded, writer) = self.decode_avro(topic, bytes).await?;
                if decoded.full_name.as_deref() != Some(M::FULL_NAME) {
                    return Err(DecodeError::WrongRecordType {
                        expected: M::FULL_NAME,
                        found: decoded
                            .full_name
                            .unwrap_or_else(|| "a non-record schema".into()),
                    });
                }
                let schema_id = decoded.schema_id;
                let mismatch = |message: String| DecodeError::BodyMismatch { schema_id, message };
                // Resolve writer → our reader schema: fills defaults of fields
                // the writer did not have, drops fields we do not know.
                // Skipped when the writer schema is ours.
                let resolved = if self.same_as_reader::<M>(schema_id, &writer.parsed) {
                    decoded.value
                } else {
                    decoded
                        .value
                        .resolve(M::schema())
                        .map_err(|e| mismatch(format!("cannot be read as {}: {e}", M::FULL_NAME)))?
                };
                M::from_avro(resolved).map_err(|e| match e {
                    FieldError::Shape(message) => mismatch(message),
                    FieldError::Json { field, message } => DecodeError::InvalidJson {
                        field: Some(field),
                        message,
                    },
                })
            }
        }
    }

    /// Decodes an Avro value of an Avro `topic` with its writer schema. The
    /// header is checked here before the converter sees the bytes.
    pub async fn decode_avro_value(
        &self,
        topic: &str,
        bytes: &[u8],
    ) -> Result<DecodedValue, DecodeError> {
        no_panic(self.decode_avro(topic, bytes))
            .await
            .map(|(decoded, _)| decoded)
    }

    /// The writer schema `schema_id`, checked against `limits.schema` (once
    /// per id) with its named types resolved.
    fn checked_writer(
        &self,
        parts: &AvroParts,
        schema_id: u32,
        schema: &AvroSchema,
    ) -> Result<Arc<Writer>, DecodeError> {
        if let Some(found) = parts
            .checked
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&schema_id)
        {
            return found.clone();
        }
        let checked = sagaflow_avro_limits::check_schema(
            schema.raw.len(),
            &schema.parsed,
            &self.config.limits.schema,
        )
        .map_err(|e| DecodeError::WriterSchemaRefused {
            schema_id,
            limit: e.limit,
            message: e.to_string(),
        })
        .and_then(|()| {
            Writer::new(&schema.parsed).map(Arc::new).map_err(|e| {
                DecodeError::WriterSchemaRefused {
                    schema_id,
                    limit: "names",
                    message: format!("its named types do not resolve: {e}"),
                }
            })
        });
        let mut cache = parts.checked.write().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CHECKED_SCHEMAS_CAP {
            cache.clear();
        }
        cache.insert(schema_id, checked.clone());
        checked
    }

    async fn decode_avro(
        &self,
        topic: &str,
        bytes: &[u8],
    ) -> Result<(DecodedValue, Arc<AvroSchema>), DecodeError> {
        let parts = self
            .avro_parts(topic)
            .ok_or_else(|| DecodeError::TopicNotConfigured {
                topic: topic.to_string(),
            })?;
        let (schema_id, body) = split_header(bytes)?;
        let schema = parts.decoder.get_schema(schema_id).await.map_err(|e| {
            let not_found =
                registry_answer(&e).is_some_and(|raw| matches!(raw.error_code, 40403 | 404));
            if !e.retriable {
                // The converter caches non-retriable failures per id; drop
                // them so garbage ids do not grow the cache and a schema
                // registered later is found.
                parts.decoder.remove_errors_from_cache();
            }
            if not_found {
                DecodeError::UnknownSchemaId { id: schema_id }
            } else if unreachable(&e) {
                DecodeError::RegistryUnreachable {
                    message: format!("{} ({})", describe(&e), parts.url),
                }
            } else {
                DecodeError::Registry {
                    message: format!("schema {schema_id}: {}", describe(&e)),
                }
            }
        })?;
        let writer = self.checked_writer(parts, schema_id, &schema)?;
        // Before apache-avro sees the body: lengths must fit the bytes that
        // are left, and the work is bounded (see `scan`).
        scan(
            &schema.parsed,
            &writer.names,
            body,
            &self.config.limits.value,
        )
        .map_err(|e| match e {
            ScanError::Malformed(message) => DecodeError::BodyMismatch { schema_id, message },
            ScanError::OverLimit(message) => DecodeError::ValueOverLimit { schema_id, message },
        })?;
        let full_name = match &schema.parsed {
            Schema::Record(r) => Some(r.name.fullname(None)),
            _ => None,
        };
        let result =
            parts
                .decoder
                .decode(Some(bytes))
                .await
                .map_err(|e| DecodeError::BodyMismatch {
                    schema_id,
                    message: describe(&e),
                })?;
        Ok((
            DecodedValue {
                schema_id,
                full_name,
                value: result.value,
            },
            schema,
        ))
    }

    /// Encodes a command for `topic`.
    pub async fn encode_command(
        &self,
        topic: &str,
        command: &Command,
    ) -> Result<Vec<u8>, EncodeError> {
        self.encode(topic, command).await
    }

    /// Decodes a command from `topic`.
    pub async fn decode_command(&self, topic: &str, bytes: &[u8]) -> Result<Command, DecodeError> {
        self.decode(topic, bytes).await
    }

    /// Encodes a reply for `topic`.
    pub async fn encode_reply(&self, topic: &str, reply: &Reply) -> Result<Vec<u8>, EncodeError> {
        self.encode(topic, reply).await
    }

    /// Decodes a reply from `topic`.
    pub async fn decode_reply(&self, topic: &str, bytes: &[u8]) -> Result<Reply, DecodeError> {
        self.decode(topic, bytes).await
    }

    /// Encodes a lifecycle event for `topic`.
    pub async fn encode_lifecycle_event(
        &self,
        topic: &str,
        event: &SagaLifecycleEvent,
    ) -> Result<Vec<u8>, EncodeError> {
        self.encode(topic, event).await
    }

    /// Decodes a lifecycle event from `topic`.
    pub async fn decode_lifecycle_event(
        &self,
        topic: &str,
        bytes: &[u8],
    ) -> Result<SagaLifecycleEvent, DecodeError> {
        self.decode(topic, bytes).await
    }

    /// Encodes a saga result for `topic`.
    pub async fn encode_saga_result(
        &self,
        topic: &str,
        result: &SagaResult,
    ) -> Result<Vec<u8>, EncodeError> {
        self.encode(topic, result).await
    }

    /// Decodes a saga result from `topic`.
    pub async fn decode_saga_result(
        &self,
        topic: &str,
        bytes: &[u8],
    ) -> Result<SagaResult, DecodeError> {
        self.decode(topic, bytes).await
    }

    /// Decodes a value of `sagaflow.saga-events`, which carries both
    /// lifecycle events and results.
    pub async fn decode_saga_event(
        &self,
        topic: &str,
        bytes: &[u8],
    ) -> Result<SagaEvent, DecodeError> {
        if let Some(TopicFormat::Json) = self.format(topic) {
            let value: serde_json::Value =
                serde_json::from_slice(bytes).map_err(|e| DecodeError::InvalidJson {
                    field: None,
                    message: e.to_string(),
                })?;
            return if value.get("status").is_some() {
                serde_json::from_value(value).map(SagaEvent::Result)
            } else {
                serde_json::from_value(value).map(SagaEvent::Lifecycle)
            }
            .map_err(|e| DecodeError::InvalidJson {
                field: None,
                message: e.to_string(),
            });
        }
        match self.decode::<SagaLifecycleEvent>(topic, bytes).await {
            Err(DecodeError::WrongRecordType { found, .. }) if found == SagaResult::FULL_NAME => {
                self.decode(topic, bytes).await.map(SagaEvent::Result)
            }
            other => other.map(SagaEvent::Lifecycle),
        }
    }
}

/// A value of the saga events topic.
#[derive(Debug, Clone, PartialEq)]
pub enum SagaEvent {
    /// A lifecycle event.
    Lifecycle(SagaLifecycleEvent),
    /// The saga's result.
    Result(SagaResult),
}

/// A codec shared between tasks.
pub type SharedCodec = Arc<Codec>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_validated() {
        assert_eq!(split_header(&[]), Err(DecodeError::TooShort { len: 0 }));
        assert_eq!(
            split_header(&[0, 0, 0, 1]),
            Err(DecodeError::TooShort { len: 4 })
        );
        assert_eq!(
            split_header(&[1, 0, 0, 0, 1]),
            Err(DecodeError::WrongMagicByte { found: 1 })
        );
        assert_eq!(split_header(&[0, 0, 0, 1, 2, 9]), Ok((258, &[9u8][..])));
    }
}
