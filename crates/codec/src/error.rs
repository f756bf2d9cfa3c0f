//! Codec errors. Every variant has a stable code, documented in `docs/errors.md`.

/// Why bytes could not be decoded. Never a panic: every byte string ends in
/// a value or one of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, sagaflow_codes::Coded)]
pub enum DecodeError {
    /// Fewer than the 5 header bytes of the Confluent wire format.
    #[error(
        "SF-CODEC-001: payload too short: {len} bytes, the Confluent wire format needs at least 5 (magic byte + 4-byte schema id)"
    )]
    TooShort {
        /// Length of the payload.
        len: usize,
    },
    /// The first byte is not the Confluent magic byte 0.
    #[error(
        "SF-CODEC-002: wrong magic byte {found:#04x}, expected 0x00: the value was not written by a Confluent-format Avro serializer"
    )]
    WrongMagicByte {
        /// The first byte found.
        found: u8,
    },
    /// The registry does not know the schema id in the header.
    #[error("SF-CODEC-003: unknown schema id {id}: the registry has no schema with this id")]
    UnknownSchemaId {
        /// The id from the header.
        id: u32,
    },
    /// The registry could not be reached (connection, timeout, 502/503).
    #[error("SF-CODEC-004: schema registry unreachable: {message}")]
    RegistryUnreachable {
        /// What went wrong.
        message: String,
    },
    /// The Avro body does not match the writer schema, or cannot be read as the expected type.
    #[error("SF-CODEC-005: body does not match schema {schema_id}: {message}")]
    BodyMismatch {
        /// The writer schema id.
        schema_id: u32,
        /// What did not match.
        message: String,
    },
    /// A JSON payload, or a JSON-text field inside an Avro record, does not parse.
    #[error("SF-CODEC-006: invalid JSON{}: {message}", field.map(|f| format!(" in field `{f}`")).unwrap_or_default())]
    InvalidJson {
        /// The Avro field holding the JSON text, if the JSON came from one.
        field: Option<&'static str>,
        /// The parser's message.
        message: String,
    },
    /// The registry answered with an error other than "schema not found".
    #[error("SF-CODEC-007: schema registry error: {message}")]
    Registry {
        /// The registry's answer.
        message: String,
    },
    /// No format is configured for the topic.
    #[error("SF-CODEC-008: no format configured for topic `{topic}`")]
    TopicNotConfigured {
        /// The topic.
        topic: String,
    },
    /// The value is a valid record of another type than the one asked for.
    #[error("SF-CODEC-009: expected a {expected} record, found {found}")]
    WrongRecordType {
        /// Full name expected.
        expected: &'static str,
        /// Full name (or schema kind) found.
        found: String,
    },
    /// The writer schema is over a configured size or complexity limit
    /// (`limits.schema`), or its named types do not resolve. No value of it
    /// is read.
    #[error("SF-CODEC-011: writer schema {schema_id} refused: {message}")]
    WriterSchemaRefused {
        /// The writer schema id.
        schema_id: u32,
        /// The limit's name (e.g. `max-fixed-bytes`), or `names` when a
        /// named type does not resolve.
        limit: &'static str,
        /// Which limit, its value, what the schema has and where.
        message: String,
    },
    /// Decoding the value would take more work than `limits.value` allows
    /// (nesting, or values that cost no bytes, such as a huge array of nulls).
    #[error("SF-CODEC-012: value of schema {schema_id} over a decode limit: {message}")]
    ValueOverLimit {
        /// The writer schema id.
        schema_id: u32,
        /// Which limit, and where in the body.
        message: String,
    },
    /// The decoder panicked on this value. Caught and turned into this error
    /// as a last defence: report it, it is a bug in the codec or a library.
    #[error("SF-CODEC-013: the decoder panicked on this value: {message}")]
    DecoderPanicked {
        /// The panic's message (first 200 characters).
        message: String,
    },
}

impl DecodeError {
    /// Whether retrying later may succeed (the registry was unreachable).
    /// Everything else is a property of the bytes: dead-letter them.
    pub fn is_retriable(&self) -> bool {
        matches!(self, Self::RegistryUnreachable { .. })
    }
}

/// Why a value could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, sagaflow_codes::Coded)]
pub enum EncodeError {
    /// The registry could not be reached.
    #[error("SF-CODEC-004: schema registry unreachable: {message}")]
    RegistryUnreachable {
        /// What went wrong.
        message: String,
    },
    /// The registry refused (e.g. 409 incompatible, subject not found) or answered nonsense.
    #[error("SF-CODEC-007: schema registry error: {message}")]
    Registry {
        /// The registry's answer.
        message: String,
    },
    /// No format is configured for the topic.
    #[error("SF-CODEC-008: no format configured for topic `{topic}`")]
    TopicNotConfigured {
        /// The topic.
        topic: String,
    },
    /// The value does not fit the schema registered for the subject.
    #[error("SF-CODEC-010: value does not match the schema of subject `{subject}`: {message}")]
    ValueMismatch {
        /// The subject.
        subject: String,
        /// What did not match.
        message: String,
    },
}

impl EncodeError {
    /// Whether retrying later may succeed.
    pub fn is_retriable(&self) -> bool {
        matches!(self, Self::RegistryUnreachable { .. })
    }
}

/// Invalid codec configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, sagaflow_codes::Coded)]
#[error("SF-CODEC-020: invalid codec configuration: {message}")]
pub struct ConfigError {
    /// What is wrong and what would be valid.
    pub message: String,
}
