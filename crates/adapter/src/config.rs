//! Adapter configuration: one YAML file per service.
//!
//! [`RawServiceConfig`] is what serde reads; [`RawServiceConfig::validate`]
//! is a pure function turning it into a [`ServiceConfig`] that the runtime
//! can trust (URLs parsed, templates compiled once, limits non-zero).
//! The format is documented in `docs/adapters.md`.

use std::collections::BTreeMap;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::error::AdapterError;
use crate::secret::SecretSource;

// ---------------------------------------------------------------- raw config

/// The file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RawServiceConfig {
    pub service: String,
    pub base_urls: Vec<String>,
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    #[serde(default)]
    pub protection: RawProtection,
    #[serde(default)]
    pub retry: RawRetry,
    #[serde(default)]
    pub idempotency: RawIdempotency,
    #[serde(default)]
    pub cache: RawCache,
    pub operations: BTreeMap<String, RawOperation>,
}

/// How the adapter authenticates to the backend.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "kebab-case",
    rename_all_fields = "kebab-case",
    deny_unknown_fields
)]
pub enum AuthConfig {
    /// A key sent in a header (`header: X-Api-Key`) or query parameter
    /// (`query: api_key`).
    ApiKey {
        #[serde(default)]
        header: Option<String>,
        #[serde(default)]
        query: Option<String>,
        secret: SecretSource,
    },
    /// HTTP basic authentication.
    Basic {
        username: String,
        password: SecretSource,
    },
    /// A static bearer token.
    Bearer { token: SecretSource },
    /// OAuth2 client credentials grant against `token-url`.
    Oauth2ClientCredentials {
        token_url: String,
        client_id: String,
        client_secret: SecretSource,
        #[serde(default)]
        scope: Option<String>,
        /// Refresh this long before the token expires.
        #[serde(default = "default_refresh_margin", with = "humantime_serde")]
        refresh_margin: Duration,
    },
}

fn default_refresh_margin() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct RawProtection {
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Used when a command carries `timeout_ms = 0`.
    #[serde(with = "humantime_serde")]
    pub default_command_timeout: Duration,
    pub max_response_bytes: u64,
    pub max_concurrency: usize,
    pub rate_limit: Option<RawRateLimit>,
    pub circuit_breaker: RawCircuitBreaker,
}

/// Default `protection.max-response-bytes`: with the reply envelope
/// ([`crate::process::REPLY_ENVELOPE_OVERHEAD`]) it stays under librdkafka's
/// default `message.max.bytes` of 1,000,000, so a default adapter can always
/// relay a body it accepted.
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 900_000;

impl Default for RawProtection {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(10),
            default_command_timeout: Duration::from_secs(30),
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            max_concurrency: 32,
            rate_limit: None,
            circuit_breaker: RawCircuitBreaker::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RawRateLimit {
    pub per_second: u32,
    #[serde(default)]
    pub burst: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct RawCircuitBreaker {
    pub failure_threshold: u32,
    #[serde(with = "humantime_serde")]
    pub cool_down: Duration,
}

impl Default for RawCircuitBreaker {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            cool_down: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct RawRetry {
    /// Total attempts per command inside the adapter (1 = no retry).
    pub max_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    pub jitter: bool,
}

impl Default for RawRetry {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            jitter: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct RawIdempotency {
    pub capacity: usize,
    /// Bound of the in-memory store in bytes (serialized outcomes and keys).
    pub max_bytes: usize,
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

impl Default for RawIdempotency {
    fn default() -> Self {
        Self {
            capacity: 10_000,
            max_bytes: 64 * 1024 * 1024,
            ttl: Duration::from_secs(24 * 3600),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct RawCache {
    pub capacity: usize,
    /// Bound of the response cache in bytes (serialized outcomes and keys).
    pub max_bytes: usize,
}

impl Default for RawCache {
    fn default() -> Self {
        Self {
            capacity: 1000,
            max_bytes: 16 * 1024 * 1024,
        }
    }
}

/// One operation: exactly one of `rest`, `soap` or `graphql`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RawOperation {
    #[serde(default)]
    pub rest: Option<RawRest>,
    #[serde(default)]
    pub soap: Option<RawSoap>,
    #[serde(default)]
    pub graphql: Option<RawGraphql>,
    #[serde(default)]
    pub cacheable: Option<RawCacheable>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RawCacheable {
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RawRest {
    pub method: String,
    pub path: String,
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub body: Option<serde_json::Value>,
    #[serde(default)]
    pub statuses: RawStatuses,
    /// Reply data field -> JSON pointer into the response body (`/id`).
    /// Empty: the whole body becomes the reply data.
    #[serde(default)]
    pub response: BTreeMap<String, String>,
    /// A success's body is not read: the status alone decides, and the
    /// reply carries no data. For endpoints whose contract declares no
    /// content but which answer a text (`Pet deleted`); without it, a 2xx
    /// body that is not JSON is an `invalid_response` (a login page served
    /// with 200 must not pass for success).
    #[serde(default)]
    pub discard_body: bool,
}

/// Overrides of the default status classification.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct RawStatuses {
    pub success: Vec<StatusSpec>,
    pub business_failure: Vec<StatusSpec>,
    pub transient: Vec<StatusSpec>,
}

/// `409` or `"4xx"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StatusSpec {
    Code(u16),
    Pattern(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RawSoap {
    /// `"1.1"` (default) or `"1.2"`.
    #[serde(default)]
    pub version: Option<String>,
    pub path: String,
    /// The SOAP action URI.
    pub action: String,
    /// Template of the content of `<Body>`; substituted values are
    /// XML-escaped.
    pub body: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Reply data field -> element path below the envelope
    /// (`Body/OpenAccountResponse/AccountId`), matched by local name.
    #[serde(default)]
    pub response: BTreeMap<String, String>,
    /// Fault codes (local names, e.g. `Client.DuplicateAccount` or a SOAP 1.2
    /// subcode) reported as business failures.
    #[serde(default)]
    pub business_faults: Vec<String>,
    /// Fault codes reported as transient failures (in addition to
    /// `Server`/`Receiver`).
    #[serde(default)]
    pub transient_faults: Vec<String>,
}

/// A GraphQL query or mutation sent as `POST {"query", "operationName",
/// "variables"}` (GraphQL over HTTP).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RawGraphql {
    pub path: String,
    /// The GraphQL document, sent verbatim: it is not a template, values
    /// only enter through `variables`.
    pub document: String,
    /// `operationName`, needed when the document holds several operations.
    #[serde(default)]
    pub operation_name: Option<String>,
    /// Variables; every string leaf is a template, as in a REST body.
    #[serde(default)]
    pub variables: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub statuses: RawStatuses,
    /// Reply data field -> JSON pointer into the response's `data`.
    /// Empty: the whole `data` object becomes the reply data.
    #[serde(default)]
    pub data: BTreeMap<String, String>,
    /// How `errors[]` entries are classified; the first matching rule wins.
    #[serde(default)]
    pub errors: Vec<RawGraphqlErrorRule>,
}

/// One rule for GraphQL `errors[]` entries.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RawGraphqlErrorRule {
    /// Matches `extensions.code`.
    #[serde(default)]
    pub code: Option<String>,
    /// Matches errors at this dotted response path or below
    /// (`provisionWorkspace.usage`, list indexes as numbers).
    #[serde(default)]
    pub path: Option<String>,
    pub outcome: GraphqlErrorOutcome,
}

/// What a matched GraphQL error means for the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GraphqlErrorOutcome {
    BusinessFailure,
    Transient,
    /// Success with partial data (only when the response has `data`).
    Success,
}

// ---------------------------------------------------------- validated config

/// A validated service configuration.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub service: String,
    pub base_urls: Vec<Url>,
    pub auth: Option<AuthConfig>,
    pub protection: Protection,
    pub retry: RetryPolicy,
    pub idempotency: IdempotencySettings,
    pub cache_capacity: NonZeroUsize,
    pub cache_max_bytes: NonZeroUsize,
    pub operations: BTreeMap<String, Operation>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Protection {
    pub request_timeout: Duration,
    pub default_command_timeout: Duration,
    pub max_response_bytes: u64,
    pub max_concurrency: NonZeroUsize,
    pub rate_limit: Option<RateLimit>,
    pub circuit_breaker: CircuitBreakerSettings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitBreakerSettings {
    pub failure_threshold: NonZeroU32,
    pub cool_down: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: NonZeroU32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub jitter: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdempotencySettings {
    pub capacity: NonZeroUsize,
    pub max_bytes: NonZeroUsize,
    pub ttl: Duration,
}

#[derive(Debug, Clone)]
pub struct Operation {
    pub name: String,
    pub kind: OperationKind,
    pub cache_ttl: Option<Duration>,
}

#[derive(Debug, Clone)]
pub enum OperationKind {
    Rest(RestOperation),
    Soap(SoapOperation),
    Graphql(GraphqlOperation),
}

#[derive(Debug, Clone)]
pub struct GraphqlOperation {
    pub path: String,
    pub document: String,
    pub operation_name: Option<String>,
    pub variables: serde_json::Value,
    pub headers: BTreeMap<String, String>,
    pub statuses: StatusRules,
    pub data: BTreeMap<String, String>,
    pub errors: Vec<GraphqlErrorRule>,
}

/// A validated [`RawGraphqlErrorRule`]; `path` is split into segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphqlErrorRule {
    pub code: Option<String>,
    pub path: Option<Vec<String>>,
    pub outcome: GraphqlErrorOutcome,
}

impl GraphqlErrorRule {
    /// Whether an error with this `extensions.code` and path matches: every
    /// part the rule names must match; a path matches at or below it.
    pub fn matches(&self, code: Option<&str>, path: &[String]) -> bool {
        self.code.as_deref().is_none_or(|c| code == Some(c))
            && self
                .path
                .as_ref()
                .is_none_or(|p| path.len() >= p.len() && path[..p.len()] == p[..])
    }
}

#[derive(Debug, Clone)]
pub struct RestOperation {
    pub method: reqwest::Method,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub headers: BTreeMap<String, String>,
    pub body: Option<serde_json::Value>,
    pub statuses: StatusRules,
    pub response: BTreeMap<String, String>,
    pub discard_body: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SoapVersion {
    V11,
    V12,
}

#[derive(Debug, Clone)]
pub struct SoapOperation {
    pub version: SoapVersion,
    pub path: String,
    pub action: String,
    pub body: String,
    pub headers: BTreeMap<String, String>,
    pub response: BTreeMap<String, Vec<String>>,
    pub business_faults: Vec<String>,
    pub transient_faults: Vec<String>,
}

/// A status code or class (`4xx`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusPattern {
    Exact(u16),
    Class(u16),
}

impl StatusPattern {
    fn matches(self, status: u16) -> bool {
        match self {
            Self::Exact(c) => c == status,
            Self::Class(c) => status / 100 == c,
        }
    }
}

/// Status classification. Exact codes win over classes; configured rules
/// win over the defaults (2xx success; 408, 425, 429, 5xx transient;
/// everything else business failure).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusRules {
    pub success: Vec<StatusPattern>,
    pub business_failure: Vec<StatusPattern>,
    pub transient: Vec<StatusPattern>,
}

impl StatusRules {
    /// Classifies an HTTP status.
    pub fn classify(&self, status: u16) -> crate::command::OutcomeKind {
        use crate::command::OutcomeKind as K;
        let lists = [
            (K::Success, &self.success),
            (K::BusinessFailure, &self.business_failure),
            (K::TransientFailure, &self.transient),
        ];
        for exact in [true, false] {
            for (kind, list) in &lists {
                if list
                    .iter()
                    .any(|p| matches!(p, StatusPattern::Exact(_)) == exact && p.matches(status))
                {
                    return *kind;
                }
            }
        }
        match status {
            200..=299 => K::Success,
            408 | 425 | 429 | 500..=599 => K::TransientFailure,
            _ => K::BusinessFailure,
        }
    }
}

// ---------------------------------------------------------------- loading

/// Reads, parses and validates one adapter config file.
pub fn load_file(path: impl AsRef<Path>) -> Result<ServiceConfig, AdapterError> {
    let path = path.as_ref();
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| AdapterError::ConfigRead {
        file: file.clone(),
        message: e.to_string(),
    })?;
    parse_str(&text, &file)?.validate(&file)
}

/// Parses YAML text; `file` is only used in error messages.
pub fn parse_str(text: &str, file: &str) -> Result<RawServiceConfig, AdapterError> {
    from_yaml(text, file)
}

/// Deserializes `T` from YAML text. Errors carry the file, line and column
/// of the offending node (found through its serde path), so every config
/// file of the adapter reports mistakes the same way.
pub(crate) fn from_yaml<T: serde::de::DeserializeOwned>(
    text: &str,
    file: &str,
) -> Result<T, AdapterError> {
    from_yaml_overridden(text, file, |_| {})
}

/// Like [`from_yaml`], with `overrides` applied to the loaded document
/// before it is deserialized (environment overrides of a process config).
pub(crate) fn from_yaml_overridden<T: serde::de::DeserializeOwned>(
    text: &str,
    file: &str,
    overrides: impl FnOnce(&mut serde_json::Value),
) -> Result<T, AdapterError> {
    let (mut value, spans) =
        sagaflow_config::load(text).map_err(|e| AdapterError::ConfigParse {
            file: file.to_owned(),
            line: e.position.line,
            column: e.position.column,
            message: e.message,
        })?;
    overrides(&mut value);
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let message = e.inner().to_string();
        // An unknown key is reported at its own position, not its parent's.
        let pos = unknown_field(&message)
            .and_then(|field| {
                let key = if path.is_empty() {
                    field.to_owned()
                } else {
                    format!("{path}.{field}")
                };
                spans.get(&key)
            })
            .unwrap_or_else(|| spans.find(&path));
        let message = if path.is_empty() {
            message
        } else {
            format!("`{path}`: {message}")
        };
        AdapterError::ConfigParse {
            file: file.to_owned(),
            line: pos.line,
            column: pos.column,
            message,
        }
    })
}

/// The key named by serde's "unknown field `x`, expected …" message.
fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split('`').next()
}

struct Ctx<'a> {
    file: &'a str,
}

impl Ctx<'_> {
    fn err(&self, key: impl Into<String>, message: impl Into<String>) -> AdapterError {
        AdapterError::ConfigInvalid {
            file: self.file.to_owned(),
            key: key.into(),
            message: message.into(),
        }
    }
}

fn nz_u32(ctx: &Ctx<'_>, key: &str, v: u32) -> Result<NonZeroU32, AdapterError> {
    NonZeroU32::new(v).ok_or_else(|| ctx.err(key, "must be at least 1"))
}

fn nz_usize(ctx: &Ctx<'_>, key: &str, v: usize) -> Result<NonZeroUsize, AdapterError> {
    NonZeroUsize::new(v).ok_or_else(|| ctx.err(key, "must be at least 1"))
}

impl RawServiceConfig {
    /// Checks everything that can be checked before the first call.
    /// Pure: reads no files, environment or network (secrets are resolved
    /// later, when the handler is built).
    pub fn validate(self, file: &str) -> Result<ServiceConfig, AdapterError> {
        let ctx = Ctx { file };
        if self.service.is_empty()
            || !self
                .service
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(ctx.err(
                "service",
                "must be a non-empty name of ASCII letters, digits, `-`, `_` or `.`",
            ));
        }
        if self.base_urls.is_empty() {
            return Err(ctx.err("base-urls", "at least one base URL is required"));
        }
        let mut base_urls = Vec::new();
        for (i, raw) in self.base_urls.iter().enumerate() {
            let key = format!("base-urls[{i}]");
            let mut url = Url::parse(raw).map_err(|e| ctx.err(&key, format!("not a URL: {e}")))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(ctx.err(&key, "scheme must be http or https"));
            }
            if url.host_str().is_none() {
                return Err(ctx.err(&key, "must have a host"));
            }
            if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
                return Err(ctx.err(&key, "must not contain a query, fragment or credentials"));
            }
            if !url.path().ends_with('/') {
                let p = format!("{}/", url.path());
                url.set_path(&p);
            }
            base_urls.push(url);
        }
        if let Some(auth) = &self.auth {
            validate_auth(&ctx, auth)?;
        }
        let p = &self.protection;
        if p.request_timeout.is_zero() {
            return Err(ctx.err("protection.request-timeout", "must be greater than 0"));
        }
        if p.default_command_timeout.is_zero() {
            return Err(ctx.err(
                "protection.default-command-timeout",
                "must be greater than 0",
            ));
        }
        if p.max_response_bytes == 0 {
            return Err(ctx.err("protection.max-response-bytes", "must be at least 1"));
        }
        let rate_limit = match &p.rate_limit {
            None => None,
            Some(r) => {
                let per_second = nz_u32(&ctx, "protection.rate-limit.per-second", r.per_second)?;
                let burst = match r.burst {
                    None => NonZeroU32::MIN,
                    Some(b) => nz_u32(&ctx, "protection.rate-limit.burst", b)?,
                };
                Some(RateLimit { per_second, burst })
            }
        };
        let protection = Protection {
            request_timeout: p.request_timeout,
            default_command_timeout: p.default_command_timeout,
            max_response_bytes: p.max_response_bytes,
            max_concurrency: nz_usize(&ctx, "protection.max-concurrency", p.max_concurrency)?,
            rate_limit,
            circuit_breaker: CircuitBreakerSettings {
                failure_threshold: nz_u32(
                    &ctx,
                    "protection.circuit-breaker.failure-threshold",
                    p.circuit_breaker.failure_threshold,
                )?,
                cool_down: p.circuit_breaker.cool_down,
            },
        };
        let r = &self.retry;
        if r.initial_backoff > r.max_backoff {
            return Err(ctx.err("retry.initial-backoff", "must not exceed retry.max-backoff"));
        }
        let retry = RetryPolicy {
            max_attempts: nz_u32(&ctx, "retry.max-attempts", r.max_attempts)?,
            initial_backoff: r.initial_backoff,
            max_backoff: r.max_backoff,
            jitter: r.jitter,
        };
        let idempotency = IdempotencySettings {
            capacity: nz_usize(&ctx, "idempotency.capacity", self.idempotency.capacity)?,
            max_bytes: nz_usize(&ctx, "idempotency.max-bytes", self.idempotency.max_bytes)?,
            ttl: self.idempotency.ttl,
        };
        if idempotency.ttl.is_zero() {
            return Err(ctx.err("idempotency.ttl", "must be longer than 0s"));
        }
        let cache_capacity = nz_usize(&ctx, "cache.capacity", self.cache.capacity)?;
        let cache_max_bytes = nz_usize(&ctx, "cache.max-bytes", self.cache.max_bytes)?;
        if self.operations.is_empty() {
            return Err(ctx.err("operations", "at least one operation is required"));
        }
        let mut operations = BTreeMap::new();
        for (name, op) in self.operations {
            let key = format!("operations.{name}");
            let kind = match (op.rest, op.soap, op.graphql) {
                (Some(rest), None, None) => OperationKind::Rest(validate_rest(&ctx, &key, rest)?),
                (None, Some(soap), None) => OperationKind::Soap(validate_soap(&ctx, &key, soap)?),
                (None, None, Some(gql)) => {
                    OperationKind::Graphql(validate_graphql(&ctx, &key, gql)?)
                }
                _ => {
                    return Err(ctx.err(
                        &key,
                        "exactly one of `rest`, `soap` or `graphql` is required",
                    ));
                }
            };
            let cache_ttl = match op.cacheable {
                Some(c) if c.ttl.is_zero() => {
                    return Err(ctx.err(format!("{key}.cacheable.ttl"), "must be greater than 0"));
                }
                Some(c) => Some(c.ttl),
                None => None,
            };
            operations.insert(
                name.clone(),
                Operation {
                    name,
                    kind,
                    cache_ttl,
                },
            );
        }
        Ok(ServiceConfig {
            service: self.service,
            base_urls,
            auth: self.auth,
            protection,
            retry,
            idempotency,
            cache_capacity,
            cache_max_bytes,
            operations,
        })
    }
}

fn validate_auth(ctx: &Ctx<'_>, auth: &AuthConfig) -> Result<(), AdapterError> {
    match auth {
        AuthConfig::ApiKey { header, query, .. } => match (header, query) {
            (Some(h), None) => reqwest::header::HeaderName::from_bytes(h.as_bytes())
                .map(|_| ())
                .map_err(|_| ctx.err("auth.header", "not a valid HTTP header name")),
            (None, Some(q)) if !q.is_empty() => Ok(()),
            _ => Err(ctx.err("auth", "api-key needs exactly one of `header` or `query`")),
        },
        AuthConfig::Oauth2ClientCredentials { token_url, .. } => {
            let url = Url::parse(token_url)
                .map_err(|e| ctx.err("auth.token-url", format!("not a URL: {e}")))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(ctx.err("auth.token-url", "scheme must be http or https"));
            }
            Ok(())
        }
        AuthConfig::Basic { .. } | AuthConfig::Bearer { .. } => Ok(()),
    }
}

fn check_template(ctx: &Ctx<'_>, key: &str, src: &str) -> Result<(), AdapterError> {
    let env = minijinja::Environment::new();
    env.template_from_str(src)
        .map(|_| ())
        .map_err(|e| ctx.err(key, format!("invalid template: {e}")))
}

fn check_path_template(ctx: &Ctx<'_>, key: &str, src: &str) -> Result<(), AdapterError> {
    check_template(ctx, key, src)?;
    // The literal parts must already be a relative path; rendered values
    // are checked again at call time (see `urls::join_locked`).
    if !src.starts_with('/') {
        return Err(ctx.err(key, "must start with `/` (it is relative to a base URL)"));
    }
    if let Err(reason) = crate::urls::check_relative_path(&literal_parts(src)) {
        return Err(ctx.err(key, reason));
    }
    Ok(())
}

/// The template with every `{{ … }}` / `{% … %}` block replaced by `x`.
fn literal_parts(src: &str) -> String {
    let mut out = String::new();
    let mut rest = src;
    while let Some(start) = rest.find(['{']) {
        let after = &rest[start..];
        let close = if after.starts_with("{{") {
            "}}"
        } else if after.starts_with("{%") {
            "%}"
        } else {
            out.push_str(&rest[..=start]);
            rest = &rest[start + 1..];
            continue;
        };
        out.push_str(&rest[..start]);
        out.push('x');
        rest = after.find(close).map_or("", |end| &after[end + 2..]);
    }
    out.push_str(rest);
    out
}

fn check_json_templates(
    ctx: &Ctx<'_>,
    key: &str,
    value: &serde_json::Value,
) -> Result<(), AdapterError> {
    match value {
        serde_json::Value::String(s) => check_template(ctx, key, s),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| check_json_templates(ctx, &format!("{key}[{i}]"), v)),
        serde_json::Value::Object(map) => map
            .iter()
            .try_for_each(|(k, v)| check_json_templates(ctx, &format!("{key}.{k}"), v)),
        _ => Ok(()),
    }
}

fn status_patterns(
    ctx: &Ctx<'_>,
    key: &str,
    specs: &[StatusSpec],
) -> Result<Vec<StatusPattern>, AdapterError> {
    specs
        .iter()
        .map(|s| match s {
            StatusSpec::Code(c @ 100..=599) => Ok(StatusPattern::Exact(*c)),
            StatusSpec::Pattern(p) => {
                let b = p.as_bytes();
                if b.len() == 3 && (b'1'..=b'5').contains(&b[0]) && &p[1..] == "xx" {
                    Ok(StatusPattern::Class(u16::from(b[0] - b'0')))
                } else if let Ok(c @ 100..=599) = p.parse::<u16>() {
                    Ok(StatusPattern::Exact(c))
                } else {
                    Err(ctx.err(
                        key,
                        format!("`{p}` is not a status code or class like `4xx`"),
                    ))
                }
            }
            StatusSpec::Code(c) => Err(ctx.err(key, format!("{c} is not an HTTP status code"))),
        })
        .collect()
}

fn status_rules(ctx: &Ctx<'_>, key: &str, s: &RawStatuses) -> Result<StatusRules, AdapterError> {
    Ok(StatusRules {
        success: status_patterns(ctx, &format!("{key}.statuses.success"), &s.success)?,
        business_failure: status_patterns(
            ctx,
            &format!("{key}.statuses.business-failure"),
            &s.business_failure,
        )?,
        transient: status_patterns(ctx, &format!("{key}.statuses.transient"), &s.transient)?,
    })
}

fn check_pointers(
    ctx: &Ctx<'_>,
    key: &str,
    pointers: &BTreeMap<String, String>,
) -> Result<(), AdapterError> {
    for (field, pointer) in pointers {
        if !(pointer.is_empty() || pointer.starts_with('/')) {
            return Err(ctx.err(
                format!("{key}.{field}"),
                "must be a JSON pointer such as `/id` or `/items/0/name`",
            ));
        }
    }
    Ok(())
}

/// The first keyword of a GraphQL document, skipping whitespace, commas
/// and `#` comments: `query`, `mutation`, `subscription`, `fragment` or
/// `{` for the query shorthand.
fn graphql_first_keyword(document: &str) -> &str {
    let mut rest = document;
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == ',' || c == '\u{feff}');
        if let Some(comment) = rest.strip_prefix('#') {
            rest = comment.split_once('\n').map_or("", |(_, r)| r);
            continue;
        }
        break;
    }
    if rest.starts_with('{') {
        return "{";
    }
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    &rest[..end]
}

fn validate_graphql(
    ctx: &Ctx<'_>,
    key: &str,
    gql: RawGraphql,
) -> Result<GraphqlOperation, AdapterError> {
    let k = format!("{key}.graphql");
    check_path_template(ctx, &format!("{k}.path"), &gql.path)?;
    match graphql_first_keyword(&gql.document) {
        "query" | "mutation" | "{" | "fragment" => {}
        "subscription" => {
            return Err(ctx.err(
                format!("{k}.document"),
                "subscriptions are not supported; use a query or a mutation",
            ));
        }
        "" => {
            return Err(ctx.err(
                format!("{k}.document"),
                "is empty; write a query or mutation such as `mutation Op($id: ID!) { op(id: $id) { id } }`",
            ));
        }
        other => {
            return Err(ctx.err(
                format!("{k}.document"),
                format!("starts with `{other}`; a GraphQL document starts with `query`, `mutation` or `{{`"),
            ));
        }
    }
    if let Some(name) = &gql.operation_name
        && (name.is_empty() || !gql.document.contains(name.as_str()))
    {
        return Err(ctx.err(
            format!("{k}.operation-name"),
            format!("`{name}` does not name an operation of the document"),
        ));
    }
    let variables = serde_json::Value::Object(gql.variables.into_iter().collect());
    check_json_templates(ctx, &format!("{k}.variables"), &variables)?;
    validate_headers(ctx, &format!("{k}.headers"), &gql.headers)?;
    check_pointers(ctx, &format!("{k}.data"), &gql.data)?;
    let statuses = status_rules(ctx, &k, &gql.statuses)?;
    let mut errors = Vec::new();
    for (i, rule) in gql.errors.into_iter().enumerate() {
        let rk = format!("{k}.errors[{i}]");
        if rule.code.is_none() && rule.path.is_none() {
            return Err(ctx.err(
                rk,
                "a rule needs `code` (extensions.code) and/or `path` (e.g. `createUser.email`)",
            ));
        }
        if rule.code.as_deref() == Some("") {
            return Err(ctx.err(format!("{rk}.code"), "must not be empty"));
        }
        let path = match rule.path {
            None => None,
            Some(p) => {
                let segments: Vec<String> = p.split('.').map(str::to_owned).collect();
                if segments.iter().any(String::is_empty) {
                    return Err(ctx.err(
                        format!("{rk}.path"),
                        format!("`{p}` is not a dotted response path such as `createUser.email` or `items.0.id`"),
                    ));
                }
                Some(segments)
            }
        };
        errors.push(GraphqlErrorRule {
            code: rule.code,
            path,
            outcome: rule.outcome,
        });
    }
    Ok(GraphqlOperation {
        path: gql.path,
        document: gql.document,
        operation_name: gql.operation_name,
        variables,
        headers: gql.headers,
        statuses,
        data: gql.data,
        errors,
    })
}

fn validate_rest(ctx: &Ctx<'_>, key: &str, rest: RawRest) -> Result<RestOperation, AdapterError> {
    let method = reqwest::Method::from_bytes(rest.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| ctx.err(format!("{key}.rest.method"), "not an HTTP method"))?;
    check_path_template(ctx, &format!("{key}.rest.path"), &rest.path)?;
    for (k, v) in &rest.query {
        check_template(ctx, &format!("{key}.rest.query.{k}"), v)?;
    }
    validate_headers(ctx, &format!("{key}.rest.headers"), &rest.headers)?;
    if let Some(body) = &rest.body {
        check_json_templates(ctx, &format!("{key}.rest.body"), body)?;
    }
    if rest.discard_body && !rest.response.is_empty() {
        return Err(ctx.err(
            format!("{key}.rest.discard-body"),
            "a discarded body maps nothing: remove `response:` or `discard-body`",
        ));
    }
    for (field, pointer) in &rest.response {
        if !(pointer.is_empty() || pointer.starts_with('/')) {
            return Err(ctx.err(
                format!("{key}.rest.response.{field}"),
                "must be a JSON pointer such as `/id` or `/items/0/name`",
            ));
        }
    }
    let s = &rest.statuses;
    let statuses = StatusRules {
        success: status_patterns(ctx, &format!("{key}.rest.statuses.success"), &s.success)?,
        business_failure: status_patterns(
            ctx,
            &format!("{key}.rest.statuses.business-failure"),
            &s.business_failure,
        )?,
        transient: status_patterns(ctx, &format!("{key}.rest.statuses.transient"), &s.transient)?,
    };
    Ok(RestOperation {
        method,
        path: rest.path,
        query: rest.query,
        headers: rest.headers,
        body: rest.body,
        statuses,
        response: rest.response,
        discard_body: rest.discard_body,
    })
}

fn validate_headers(
    ctx: &Ctx<'_>,
    key: &str,
    headers: &BTreeMap<String, String>,
) -> Result<(), AdapterError> {
    for (name, value) in headers {
        let k = format!("{key}.{name}");
        reqwest::header::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| ctx.err(&k, "not a valid HTTP header name"))?;
        let lower = name.to_ascii_lowercase();
        if matches!(
            lower.as_str(),
            "host"
                | "authorization"
                | "idempotency-key"
                | "content-length"
                | "traceparent"
                | "tracestate"
        ) {
            return Err(ctx.err(&k, "this header is set by the adapter itself"));
        }
        check_template(ctx, &k, value)?;
    }
    Ok(())
}

fn validate_soap(ctx: &Ctx<'_>, key: &str, soap: RawSoap) -> Result<SoapOperation, AdapterError> {
    let version = match soap.version.as_deref() {
        None | Some("1.1") => SoapVersion::V11,
        Some("1.2") => SoapVersion::V12,
        Some(other) => {
            return Err(ctx.err(
                format!("{key}.soap.version"),
                format!("`{other}` is not a SOAP version; use \"1.1\" or \"1.2\""),
            ));
        }
    };
    check_path_template(ctx, &format!("{key}.soap.path"), &soap.path)?;
    check_template(ctx, &format!("{key}.soap.body"), &soap.body)?;
    if soap.action.contains(['"', '\r', '\n']) {
        return Err(ctx.err(
            format!("{key}.soap.action"),
            "must not contain quotes or line breaks",
        ));
    }
    validate_headers(ctx, &format!("{key}.soap.headers"), &soap.headers)?;
    let mut response = BTreeMap::new();
    for (field, path) in soap.response {
        let segments: Vec<String> = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if segments.is_empty() {
            return Err(ctx.err(
                format!("{key}.soap.response.{field}"),
                "must be an element path such as `Body/OpenAccountResponse/AccountId`",
            ));
        }
        response.insert(field, segments);
    }
    Ok(SoapOperation {
        version,
        path: soap.path,
        action: soap.action,
        body: soap.body,
        headers: soap.headers,
        response,
        business_faults: soap.business_faults,
        transient_faults: soap.transient_faults,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::OutcomeKind;

    const MINIMAL: &str = r#"
service: payments
base-urls: ["http://127.0.0.1:9/api"]
operations:
  charge:
    rest:
      method: post
      path: /charges/{{ input.order_id }}
"#;

    #[test]
    fn minimal_config_gets_defaults() {
        let cfg = parse_str(MINIMAL, "p.yaml")
            .unwrap()
            .validate("p.yaml")
            .unwrap();
        assert_eq!(cfg.base_urls[0].as_str(), "http://127.0.0.1:9/api/");
        assert_eq!(cfg.retry.max_attempts.get(), 4);
        assert_eq!(cfg.protection.request_timeout, Duration::from_secs(10));
        let OperationKind::Rest(op) = &cfg.operations["charge"].kind else {
            panic!("rest expected")
        };
        assert_eq!(op.method, reqwest::Method::POST);
    }

    #[test]
    fn unknown_key_reports_file_line_and_column() {
        let text = MINIMAL.replace("method: post", "method: post\n      bogus: 1");
        let err = parse_str(&text, "p.yaml").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("SF-ADAPTER-002"), "{msg}");
        assert!(msg.contains("p.yaml:"), "{msg}");
        assert!(msg.contains("bogus"), "{msg}");
        match err {
            AdapterError::ConfigParse { line, column, .. } => {
                assert_eq!((line, column), (8, 7), "at the unknown key itself")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn durations_are_human_strings() {
        let text = format!(
            "{MINIMAL}protection:\n  request-timeout: 250ms\n  default-command-timeout: 2s\n  max-response-bytes: 10\n  max-concurrency: 2\n  circuit-breaker: {{ failure-threshold: 3, cool-down: 1m }}\n"
        );
        let cfg = parse_str(&text, "p.yaml")
            .unwrap()
            .validate("p.yaml")
            .unwrap();
        assert_eq!(cfg.protection.request_timeout, Duration::from_millis(250));
        assert_eq!(
            cfg.protection.circuit_breaker.cool_down,
            Duration::from_secs(60)
        );
    }

    #[test]
    fn validation_names_file_and_key() {
        let text = MINIMAL.replace("/charges/{{ input.order_id }}", "https://evil.example/x");
        let err = parse_str(&text, "p.yaml")
            .unwrap()
            .validate("p.yaml")
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("p.yaml"), "{msg}");
        assert!(msg.contains("operations.charge.rest.path"), "{msg}");

        let text = MINIMAL.replace("/charges/", "/a/../../charges/");
        let err = parse_str(&text, "p.yaml")
            .unwrap()
            .validate("p.yaml")
            .unwrap_err();
        assert!(err.to_string().contains("operations.charge.rest.path"));

        let text = MINIMAL.replace("{{ input.order_id }}", "{{ input.order_id ");
        let err = parse_str(&text, "p.yaml")
            .unwrap()
            .validate("p.yaml")
            .unwrap_err();
        assert!(err.to_string().contains("invalid template"), "{err}");

        let text = MINIMAL.replace("http://127.0.0.1:9/api", "ftp://x/");
        let err = parse_str(&text, "p.yaml")
            .unwrap()
            .validate("p.yaml")
            .unwrap_err();
        assert!(err.to_string().contains("base-urls[0]"), "{err}");
    }

    #[test]
    fn auth_and_secret_sources_parse() {
        let text = format!(
            "{MINIMAL}auth:\n  type: oauth2-client-credentials\n  token-url: http://127.0.0.1:9/token\n  client-id: me\n  client-secret: {{ env: SF_SECRET }}\n  refresh-margin: 5s\n"
        );
        let cfg = parse_str(&text, "p.yaml")
            .unwrap()
            .validate("p.yaml")
            .unwrap();
        assert_eq!(
            cfg.auth,
            Some(AuthConfig::Oauth2ClientCredentials {
                token_url: "http://127.0.0.1:9/token".into(),
                client_id: "me".into(),
                client_secret: SecretSource::Env("SF_SECRET".into()),
                scope: None,
                refresh_margin: Duration::from_secs(5),
            })
        );
        let bad = format!("{MINIMAL}auth:\n  type: bearer\n  token: {{ env: X }}\n  extra: 1\n");
        assert!(parse_str(&bad, "p.yaml").is_err());
    }

    #[test]
    fn documented_example_is_valid() {
        let doc = include_str!("../../../docs/adapters.md");
        let start = doc.find("```yaml\n").expect("yaml block") + 8;
        let len = doc[start..].find("```").expect("end of block");
        let cfg = parse_str(&doc[start..start + len], "docs/adapters.md")
            .unwrap()
            .validate("docs/adapters.md")
            .unwrap();
        assert_eq!(cfg.service, "legacy-bank");
        assert_eq!(cfg.base_urls.len(), 2);
        assert_eq!(cfg.operations.len(), 3);
        assert_eq!(
            cfg.operations["get-customer"].cache_ttl,
            Some(Duration::from_secs(30))
        );
        let OperationKind::Soap(soap) = &cfg.operations["open-account"].kind else {
            panic!("soap expected")
        };
        assert_eq!(soap.response["account_id"].len(), 3);
        assert_eq!(cfg.protection.rate_limit.unwrap().burst.get(), 10);
    }

    #[test]
    fn load_file_reads_and_names_missing_files() {
        let dir = std::env::temp_dir().join(format!("sf-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("payments.yaml");
        std::fs::write(&path, MINIMAL).unwrap();
        assert_eq!(load_file(&path).unwrap().service, "payments");
        let err = load_file(dir.join("missing.yaml")).unwrap_err();
        assert_eq!(err.code(), "SF-ADAPTER-001");
        assert!(err.to_string().contains("missing.yaml"));
        std::fs::write(&path, MINIMAL.replace("base-urls", "base-url")).unwrap();
        let err = load_file(&path).unwrap_err().to_string();
        assert!(
            err.contains("payments.yaml:") && err.contains("base-url"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    const GRAPHQL: &str = r#"
service: workspaces
base-urls: ["http://127.0.0.1:9"]
operations:
  provision:
    graphql:
      path: /graphql
      document: "mutation P($id: ID!) { provision(id: $id) { id } }"
      variables: { id: "{{ input.id }}" }
      data: { workspace_id: /provision/id }
      errors:
        - { code: QUOTA, outcome: business-failure }
        - { path: provision.usage, outcome: success }
"#;

    #[test]
    fn graphql_operations_validate() {
        let cfg = parse_str(GRAPHQL, "g.yaml")
            .unwrap()
            .validate("g.yaml")
            .unwrap();
        let OperationKind::Graphql(g) = &cfg.operations["provision"].kind else {
            panic!("graphql expected")
        };
        assert_eq!(g.errors.len(), 2);
        assert_eq!(
            g.errors[1].path,
            Some(vec!["provision".to_owned(), "usage".to_owned()])
        );
        let invalid = |from: &str, to: &str| {
            let text = GRAPHQL.replace(from, to);
            parse_str(&text, "g.yaml")
                .and_then(|raw| raw.validate("g.yaml"))
                .unwrap_err()
                .to_string()
        };
        let e = invalid("mutation P", "subscription P");
        assert!(
            e.contains("operations.provision.graphql.document") && e.contains("subscriptions"),
            "{e}"
        );
        let e = invalid("mutation P($id: ID!) { provision(id: $id) { id } }", "");
        assert!(e.contains("is empty"), "{e}");
        let e = invalid("{ code: QUOTA, outcome", "{ outcome");
        assert!(e.contains("errors[0]") && e.contains("`code`"), "{e}");
        let e = invalid("path: provision.usage", "path: provision..usage");
        assert!(e.contains("errors[1].path"), "{e}");
        let e = invalid("outcome: success", "outcome: maybe");
        assert!(e.contains("SF-ADAPTER-002") && e.contains("maybe"), "{e}");
        let e = invalid("/provision/id", "provision.id");
        assert!(e.contains("graphql.data.workspace_id"), "{e}");
        let e = invalid(
            "      path: /graphql",
            "      path: /graphql\n      operation-name: Q",
        );
        assert!(e.contains("operation-name"), "{e}");
        let e = invalid(
            "    graphql:",
            "    rest: { method: GET, path: /x }\n    graphql:",
        );
        assert!(e.contains("exactly one of"), "{e}");
    }

    #[test]
    fn documented_graphql_example_is_valid() {
        let doc = include_str!("../../../docs/adapters.md");
        let start = doc
            .find("```yaml\nservice: workspaces")
            .expect("graphql block")
            + 8;
        let len = doc[start..].find("```").expect("end of block");
        let cfg = parse_str(&doc[start..start + len], "docs/adapters.md")
            .unwrap()
            .validate("docs/adapters.md")
            .unwrap();
        let OperationKind::Graphql(g) = &cfg.operations["provision"].kind else {
            panic!("graphql expected")
        };
        assert_eq!(g.errors.len(), 3);
        assert_eq!(g.operation_name.as_deref(), Some("Provision"));
    }

    #[test]
    fn graphql_first_keyword_skips_comments() {
        assert_eq!(graphql_first_keyword("# c\n , query Q { a }"), "query");
        assert_eq!(graphql_first_keyword("{ a }"), "{");
        assert_eq!(graphql_first_keyword("  mutation{a}"), "mutation");
        assert_eq!(graphql_first_keyword("# only a comment"), "");
    }

    #[test]
    fn graphql_rules_match_code_and_path_prefix() {
        let rule = GraphqlErrorRule {
            code: Some("X".into()),
            path: Some(vec!["a".into(), "b".into()]),
            outcome: GraphqlErrorOutcome::Success,
        };
        let p = |s: &str| s.split('.').map(str::to_owned).collect::<Vec<_>>();
        assert!(rule.matches(Some("X"), &p("a.b")));
        assert!(rule.matches(Some("X"), &p("a.b.0.c")));
        assert!(!rule.matches(Some("X"), &p("a")));
        assert!(!rule.matches(Some("Y"), &p("a.b")));
        assert!(!rule.matches(None, &p("a.b")));
        let any_code = GraphqlErrorRule { code: None, ..rule };
        assert!(any_code.matches(None, &p("a.b")));
    }

    #[test]
    fn literal_parts_hide_expressions() {
        assert_eq!(
            literal_parts("/a/{{ input.x }}/b{% if y %}c{% endif %}"),
            "/a/x/bxcx"
        );
        assert_eq!(literal_parts("/a{b}"), "/a{b}");
    }

    #[test]
    fn status_rules_exact_beats_class_and_defaults_apply() {
        let rules = StatusRules {
            success: vec![StatusPattern::Exact(404)],
            business_failure: vec![StatusPattern::Class(5)],
            transient: vec![StatusPattern::Exact(503)],
        };
        assert_eq!(rules.classify(404), OutcomeKind::Success);
        assert_eq!(rules.classify(500), OutcomeKind::BusinessFailure);
        assert_eq!(rules.classify(503), OutcomeKind::TransientFailure);
        let d = StatusRules::default();
        assert_eq!(d.classify(201), OutcomeKind::Success);
        assert_eq!(d.classify(409), OutcomeKind::BusinessFailure);
        assert_eq!(d.classify(422), OutcomeKind::BusinessFailure);
        assert_eq!(d.classify(429), OutcomeKind::TransientFailure);
        assert_eq!(d.classify(502), OutcomeKind::TransientFailure);
        assert_eq!(d.classify(302), OutcomeKind::BusinessFailure);
    }
}
