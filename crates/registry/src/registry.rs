//! The registry's state and operations, independent of HTTP.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use apache_avro::Schema;
use axum::http::StatusCode;
use sagaflow_avro_limits::{SchemaLimits, check_schema};
use serde::Serialize;
use tokio::sync::Mutex;

use crate::compat::{self, CompatibilityLevel};
use crate::storage::{LogRecord, SchemaLog, StorageError};

/// The only schema type this registry accepts.
pub(crate) const AVRO: &str = "AVRO";

/// An error in Confluent's shape: HTTP status, `error_code`, `message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error_code}: {message}")]
pub struct ApiError {
    /// HTTP status of the response.
    pub status: StatusCode,
    /// Confluent error code, e.g. 40401.
    pub error_code: u32,
    /// Human-readable message.
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, error_code: u32, message: impl Into<String>) -> Self {
        Self {
            status,
            error_code,
            message: message.into(),
        }
    }
    pub(crate) fn subject_not_found(subject: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            40401,
            format!("Subject '{subject}' not found."),
        )
    }
    pub(crate) fn version_not_found(version: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            40402,
            format!("Version {version} not found."),
        )
    }
    pub(crate) fn schema_not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, 40403, "Schema not found")
    }
    pub(crate) fn subject_not_soft_deleted(subject: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            40405,
            format!("Subject '{subject}' was not deleted first before being permanently deleted"),
        )
    }
    pub(crate) fn subject_level_config_not_found(subject: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            40408,
            format!("Subject '{subject}' does not have subject-level compatibility configured"),
        )
    }
    pub(crate) fn invalid_schema(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, 42201, message)
    }
    pub(crate) fn invalid_version(version: &str) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42202,
            format!(
                "The specified version '{version}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""
            ),
        )
    }
    pub(crate) fn invalid_compatibility_level(level: &str) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42203,
            format!(
                "Invalid compatibility level. Valid values are none, backward, forward, full, backward_transitive, forward_transitive, and full_transitive: {level}"
            ),
        )
    }
    pub(crate) fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, 422, message)
    }
    pub(crate) fn incompatible(subject: &str, messages: &[String]) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            409,
            format!(
                "Schema being registered is incompatible with an earlier schema for subject \"{subject}\", details: [{}]",
                messages.join("; ")
            ),
        )
    }
    pub(crate) fn store(e: &StorageError) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            50001,
            format!("Error in the backend data store: {e}"),
        )
    }
}

/// A version reference in a path: a number or `latest` (also `-1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionRef {
    /// The newest live version.
    Latest,
    /// A specific version.
    Number(u32),
}

impl VersionRef {
    /// Parses `latest`, `-1` or a positive number.
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        match text {
            "latest" | "-1" => Ok(Self::Latest),
            n => match n.parse::<u32>() {
                Ok(v) if v >= 1 && v <= i32::MAX as u32 => Ok(Self::Number(v)),
                _ => Err(ApiError::invalid_version(text)),
            },
        }
    }
}

/// A schema as stored under a subject version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubjectSchema {
    /// Subject name.
    pub subject: String,
    /// Version within the subject.
    pub version: u32,
    /// Global id.
    pub id: u32,
    /// Schema type; omitted on the wire for AVRO, like Confluent does.
    #[serde(skip_serializing_if = "is_avro")]
    pub schema_type: String,
    /// Schema text.
    pub schema: String,
}

fn is_avro(t: &str) -> bool {
    t == AVRO
}

#[derive(Debug)]
struct StoredSchema {
    schema_type: String,
    text: String,
    parsed: Schema,
}

#[derive(Debug, Clone, Copy)]
struct VersionEntry {
    version: u32,
    id: u32,
    deleted: bool,
}

#[derive(Debug, Default)]
struct Subject {
    versions: Vec<VersionEntry>,
}

impl Subject {
    fn live(&self) -> impl Iterator<Item = &VersionEntry> {
        self.versions.iter().filter(|v| !v.deleted)
    }
    fn is_live(&self) -> bool {
        self.live().next().is_some()
    }
}

#[derive(Debug, Default)]
struct State {
    schemas: BTreeMap<u32, StoredSchema>,
    ids_by_key: HashMap<String, u32>,
    subjects: BTreeMap<String, Subject>,
    global: CompatibilityLevel,
    subject_levels: BTreeMap<String, CompatibilityLevel>,
}

/// Dedupe key: the schema type plus the schema JSON with whitespace removed.
fn schema_key(schema_type: &str, text: &str) -> String {
    let normalized = serde_json::from_str::<serde_json::Value>(text)
        .map(|v| v.to_string())
        .unwrap_or_else(|_| text.to_string());
    format!("{schema_type}:{normalized}")
}

impl State {
    fn apply(&mut self, record: &LogRecord) -> Result<(), String> {
        match record {
            LogRecord::Schema {
                subject,
                version,
                id,
                schema_type,
                schema,
            } => {
                if !self.schemas.contains_key(id) {
                    let parsed = Schema::parse_str(schema).map_err(|e| e.to_string())?;
                    self.schemas.insert(
                        *id,
                        StoredSchema {
                            schema_type: schema_type.clone(),
                            text: schema.clone(),
                            parsed,
                        },
                    );
                    self.ids_by_key.insert(schema_key(schema_type, schema), *id);
                }
                self.subjects
                    .entry(subject.clone())
                    .or_default()
                    .versions
                    .push(VersionEntry {
                        version: *version,
                        id: *id,
                        deleted: false,
                    });
            }
            LogRecord::DeleteSubject { subject, permanent } => {
                if *permanent {
                    self.subjects.remove(subject);
                    self.subject_levels.remove(subject);
                } else if let Some(s) = self.subjects.get_mut(subject) {
                    s.versions.iter_mut().for_each(|v| v.deleted = true);
                }
            }
            LogRecord::Config {
                subject,
                compatibility,
            } => match (subject, compatibility) {
                (None, Some(level)) => self.global = *level,
                (None, None) => self.global = CompatibilityLevel::default(),
                (Some(s), Some(level)) => {
                    self.subject_levels.insert(s.clone(), *level);
                }
                (Some(s), None) => {
                    self.subject_levels.remove(s);
                }
            },
        }
        Ok(())
    }

    fn next_id(&self) -> u32 {
        self.schemas.keys().next_back().map_or(1, |id| id + 1)
    }

    fn level(&self, subject: &str) -> CompatibilityLevel {
        self.subject_levels
            .get(subject)
            .copied()
            .unwrap_or(self.global)
    }

    fn live_subject(&self, subject: &str) -> Result<&Subject, ApiError> {
        self.subjects
            .get(subject)
            .filter(|s| s.is_live())
            .ok_or_else(|| ApiError::subject_not_found(subject))
    }

    fn version_entry(&self, subject: &str, version: VersionRef) -> Result<VersionEntry, ApiError> {
        let s = self.live_subject(subject)?;
        let found = match version {
            VersionRef::Latest => s.live().last(),
            VersionRef::Number(n) => s.live().find(|v| v.version == n),
        };
        found.copied().ok_or_else(|| {
            ApiError::version_not_found(&match version {
                VersionRef::Latest => "latest".to_string(),
                VersionRef::Number(n) => n.to_string(),
            })
        })
    }

    fn subject_schema(&self, subject: &str, entry: VersionEntry) -> SubjectSchema {
        let stored = &self.schemas[&entry.id];
        SubjectSchema {
            subject: subject.to_string(),
            version: entry.version,
            id: entry.id,
            schema_type: stored.schema_type.clone(),
            schema: stored.text.clone(),
        }
    }
}

/// Parses a schema submitted by a client and checks it against `limits`
/// (the same checker the codec applies to every writer schema it reads).
fn parse_submitted(
    schema_type: Option<&str>,
    text: &str,
    has_references: bool,
    limits: &SchemaLimits,
) -> Result<(String, Schema), ApiError> {
    let schema_type = schema_type.unwrap_or(AVRO).to_ascii_uppercase();
    if schema_type != AVRO {
        return Err(ApiError::invalid_schema(format!(
            "Invalid schema: schema type {schema_type} is not supported by this registry (only AVRO)"
        )));
    }
    if has_references {
        return Err(ApiError::invalid_schema(
            "Invalid schema: schema references are not supported by this registry",
        ));
    }
    let over = |e: sagaflow_avro_limits::LimitExceeded| {
        ApiError::invalid_schema(format!("Invalid schema: {e}"))
    };
    // The text size first, before parsing spends anything on it.
    check_schema(text.len(), &Schema::Null, limits).map_err(over)?;
    let parsed = Schema::parse_str(text)
        .map_err(|e| ApiError::invalid_schema(format!("Invalid schema: {e}")))?;
    check_schema(text.len(), &parsed, limits).map_err(over)?;
    Ok((schema_type, parsed))
}

/// A schema submitted for registration, lookup or a compatibility check.
#[derive(Debug, Clone, Copy)]
pub struct Submitted<'a> {
    /// Schema text.
    pub schema: &'a str,
    /// `schemaType` from the request (`None` = AVRO).
    pub schema_type: Option<&'a str>,
    /// Whether the request carried schema references.
    pub has_references: bool,
}

impl<'a> Submitted<'a> {
    /// An AVRO schema without references.
    pub fn avro(schema: &'a str) -> Self {
        Self {
            schema,
            schema_type: None,
            has_references: false,
        }
    }
}

/// Result of a compatibility check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CompatibilityResult {
    /// Whether the schema is compatible.
    pub is_compatible: bool,
    /// Why not, one line per problem.
    pub messages: Vec<String>,
}

/// A schema registry: state in memory, changes in a [`SchemaLog`]. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    log: Box<dyn SchemaLog>,
    limits: SchemaLimits,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl Registry {
    /// Opens a registry on `log`, replaying it, with the default
    /// [`SchemaLimits`] for new schemas.
    pub async fn open(log: impl SchemaLog) -> Result<Self, StorageError> {
        Self::open_with_limits(log, SchemaLimits::default()).await
    }

    /// Opens a registry on `log`, replaying it. Schemas submitted from now
    /// on (register, lookup, compatibility check) over `limits` are refused
    /// with 422 / 42201 naming the limit; schemas already in the log are
    /// kept as they are, so a lowered limit never loses data.
    pub async fn open_with_limits(
        log: impl SchemaLog,
        limits: SchemaLimits,
    ) -> Result<Self, StorageError> {
        let mut state = State::default();
        for (index, record) in log.replay().await?.iter().enumerate() {
            state
                .apply(record)
                .map_err(|message| StorageError::Corrupt {
                    path: "<schema log>".into(),
                    line: index + 1,
                    message,
                })?;
        }
        Ok(Self {
            inner: Arc::new(Inner {
                state: Mutex::new(state),
                log: Box::new(log),
                limits,
            }),
        })
    }

    /// Opens a registry persisted in `dir` (see [`crate::FileLog`]).
    pub async fn open_dir(dir: &std::path::Path) -> Result<Self, StorageError> {
        Self::open(crate::FileLog::open(dir)?).await
    }

    async fn commit(&self, state: &mut State, record: LogRecord) -> Result<(), ApiError> {
        self.inner
            .log
            .append(&record)
            .await
            .map_err(|e| ApiError::store(&e))?;
        state
            .apply(&record)
            .map_err(|e| ApiError::unprocessable(format!("could not apply a logged change: {e}")))
    }

    /// Registers `submitted` under `subject`; returns its global id. Idempotent:
    /// a schema already registered under the subject returns its id, and the
    /// same schema under another subject gets the same id.
    pub async fn register(&self, subject: &str, submitted: Submitted<'_>) -> Result<u32, ApiError> {
        let (schema_type, parsed) = parse_submitted(
            submitted.schema_type,
            submitted.schema,
            submitted.has_references,
            &self.inner.limits,
        )?;
        let key = schema_key(&schema_type, submitted.schema);
        let mut state = self.inner.state.lock().await;
        let existing_id = state.ids_by_key.get(&key).copied();
        let subject_entry = state.subjects.get(subject);
        if let (Some(id), Some(s)) = (existing_id, subject_entry)
            && s.live().any(|v| v.id == id)
        {
            return Ok(id);
        }
        let previous: Vec<(u32, &Schema)> = subject_entry
            .map(|s| {
                s.live()
                    .map(|v| (v.version, &state.schemas[&v.id].parsed))
                    .collect()
            })
            .unwrap_or_default();
        let messages = compat::check(state.level(subject), &parsed, &previous);
        if !messages.is_empty() {
            return Err(ApiError::incompatible(subject, &messages));
        }
        let version = subject_entry
            .and_then(|s| s.versions.iter().map(|v| v.version).max())
            .map_or(1, |v| v + 1);
        let id = existing_id.unwrap_or_else(|| state.next_id());
        self.commit(
            &mut state,
            LogRecord::Schema {
                subject: subject.to_string(),
                version,
                id,
                schema_type,
                schema: submitted.schema.to_string(),
            },
        )
        .await?;
        tracing::info!(subject, version, id, "schema registered");
        Ok(id)
    }

    /// Finds `submitted` among the live versions of `subject`.
    pub async fn lookup(
        &self,
        subject: &str,
        submitted: Submitted<'_>,
    ) -> Result<SubjectSchema, ApiError> {
        let (schema_type, _) = parse_submitted(
            submitted.schema_type,
            submitted.schema,
            submitted.has_references,
            &self.inner.limits,
        )?;
        let key = schema_key(&schema_type, submitted.schema);
        let state = self.inner.state.lock().await;
        let s = state.live_subject(subject)?;
        let id = state
            .ids_by_key
            .get(&key)
            .ok_or_else(ApiError::schema_not_found)?;
        let entry = s
            .live()
            .find(|v| v.id == *id)
            .copied()
            .ok_or_else(ApiError::schema_not_found)?;
        Ok(state.subject_schema(subject, entry))
    }

    /// The schema with global id `id` as `(schema type, text)`.
    pub async fn schema_by_id(&self, id: u32) -> Result<(String, String), ApiError> {
        let state = self.inner.state.lock().await;
        state
            .schemas
            .get(&id)
            .map(|s| (s.schema_type.clone(), s.text.clone()))
            .ok_or_else(ApiError::schema_not_found)
    }

    /// Subjects that hold schema `id` in a live version (or in any version
    /// with `deleted`); 40403 when no schema has that id.
    pub async fn subjects_by_id(&self, id: u32, deleted: bool) -> Result<Vec<String>, ApiError> {
        Ok(self
            .versions_by_id(id, deleted)
            .await?
            .into_iter()
            .map(|(subject, _)| subject)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect())
    }

    /// `(subject, version)` of every live version holding schema `id` (or
    /// every version with `deleted`), by subject then version; 40403 when
    /// no schema has that id.
    pub async fn versions_by_id(
        &self,
        id: u32,
        deleted: bool,
    ) -> Result<Vec<(String, u32)>, ApiError> {
        let state = self.inner.state.lock().await;
        if !state.schemas.contains_key(&id) {
            return Err(ApiError::schema_not_found());
        }
        Ok(state
            .subjects
            .iter()
            .flat_map(|(name, s)| {
                s.versions
                    .iter()
                    .filter(move |v| v.id == id && (deleted || !v.deleted))
                    .map(move |v| (name.clone(), v.version))
            })
            .collect())
    }

    /// Subjects with at least one live version (or every known subject with `deleted`).
    pub async fn subjects(&self, deleted: bool) -> Vec<String> {
        let state = self.inner.state.lock().await;
        state
            .subjects
            .iter()
            .filter(|(_, s)| deleted || s.is_live())
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Live version numbers of `subject`.
    pub async fn versions(&self, subject: &str) -> Result<Vec<u32>, ApiError> {
        let state = self.inner.state.lock().await;
        Ok(state
            .live_subject(subject)?
            .live()
            .map(|v| v.version)
            .collect())
    }

    /// One version of `subject`.
    pub async fn version(
        &self,
        subject: &str,
        version: VersionRef,
    ) -> Result<SubjectSchema, ApiError> {
        let state = self.inner.state.lock().await;
        let entry = state.version_entry(subject, version)?;
        Ok(state.subject_schema(subject, entry))
    }

    /// Checks `submitted` against `version` of `subject` (or, with `None`,
    /// against the versions the subject's level says).
    pub async fn check_compatibility(
        &self,
        subject: &str,
        version: Option<VersionRef>,
        submitted: Submitted<'_>,
    ) -> Result<CompatibilityResult, ApiError> {
        let (_, parsed) = parse_submitted(
            submitted.schema_type,
            submitted.schema,
            submitted.has_references,
            &self.inner.limits,
        )?;
        let state = self.inner.state.lock().await;
        let level = state.level(subject);
        let against: Vec<(u32, &Schema)> = match version {
            Some(v) => {
                let entry = state.version_entry(subject, v)?;
                vec![(entry.version, &state.schemas[&entry.id].parsed)]
            }
            None => state
                .live_subject(subject)?
                .live()
                .map(|v| (v.version, &state.schemas[&v.id].parsed))
                .collect(),
        };
        let messages = compat::check(level, &parsed, &against);
        Ok(CompatibilityResult {
            is_compatible: messages.is_empty(),
            messages,
        })
    }

    /// Deletes `subject`: soft (versions hidden, numbering kept) or, after a
    /// soft delete, permanently. Returns the versions deleted.
    pub async fn delete_subject(
        &self,
        subject: &str,
        permanent: bool,
    ) -> Result<Vec<u32>, ApiError> {
        let mut state = self.inner.state.lock().await;
        let s = state
            .subjects
            .get(subject)
            .ok_or_else(|| ApiError::subject_not_found(subject))?;
        let versions: Vec<u32> = if permanent {
            if s.is_live() {
                return Err(ApiError::subject_not_soft_deleted(subject));
            }
            s.versions.iter().map(|v| v.version).collect()
        } else {
            if !s.is_live() {
                return Err(ApiError::subject_not_found(subject));
            }
            s.live().map(|v| v.version).collect()
        };
        self.commit(
            &mut state,
            LogRecord::DeleteSubject {
                subject: subject.to_string(),
                permanent,
            },
        )
        .await?;
        Ok(versions)
    }

    /// The global level, or `subject`'s own level (`None` if it has none).
    pub async fn compatibility(&self, subject: Option<&str>) -> Option<CompatibilityLevel> {
        let state = self.inner.state.lock().await;
        match subject {
            None => Some(state.global),
            Some(s) => state.subject_levels.get(s).copied(),
        }
    }

    /// Sets (or with `None` removes) the global or a subject's level.
    pub async fn set_compatibility(
        &self,
        subject: Option<&str>,
        level: Option<CompatibilityLevel>,
    ) -> Result<(), ApiError> {
        let mut state = self.inner.state.lock().await;
        if let (Some(s), None) = (subject, level)
            && !state.subject_levels.contains_key(s)
        {
            return Err(ApiError::subject_level_config_not_found(s));
        }
        self.commit(
            &mut state,
            LogRecord::Config {
                subject: subject.map(str::to_string),
                compatibility: level,
            },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryLog;

    const V1: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"long"}]}"#;
    const V2: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"long"},{"name":"b","type":"string","default":""}]}"#;
    const BAD: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"long"},{"name":"c","type":"string"}]}"#;

    #[tokio::test]
    async fn register_is_idempotent_and_ids_are_shared_across_subjects() {
        let r = Registry::open(MemoryLog::new()).await.unwrap();
        let id = r.register("s1", Submitted::avro(V1)).await.unwrap();
        assert_eq!(r.register("s1", Submitted::avro(V1)).await.unwrap(), id);
        let spaced = V1.replace(',', " ,\n ");
        assert_eq!(
            r.register("s2", Submitted::avro(&spaced)).await.unwrap(),
            id
        );
        let id2 = r.register("s1", Submitted::avro(V2)).await.unwrap();
        assert_ne!(id, id2);
        assert_eq!(r.versions("s1").await.unwrap(), vec![1, 2]);
        assert_eq!(r.version("s1", VersionRef::Latest).await.unwrap().id, id2);
    }

    #[tokio::test]
    async fn incompatible_schema_is_rejected_with_409() {
        let r = Registry::open(MemoryLog::new()).await.unwrap();
        r.register("s", Submitted::avro(V1)).await.unwrap();
        let err = r.register("s", Submitted::avro(BAD)).await.unwrap_err();
        assert_eq!((err.status, err.error_code), (StatusCode::CONFLICT, 409));
        assert!(err.message.contains("`c`"), "{err}");
        r.set_compatibility(Some("s"), Some(CompatibilityLevel::None))
            .await
            .unwrap();
        r.register("s", Submitted::avro(BAD)).await.unwrap();
    }

    #[tokio::test]
    async fn soft_delete_hides_subject_and_keeps_numbering() {
        let r = Registry::open(MemoryLog::new()).await.unwrap();
        let id = r.register("s", Submitted::avro(V1)).await.unwrap();
        assert_eq!(r.delete_subject("s", false).await.unwrap(), vec![1]);
        assert_eq!(r.versions("s").await.unwrap_err().error_code, 40401);
        assert!(r.subjects(false).await.is_empty());
        assert_eq!(r.schema_by_id(id).await.unwrap().1, V1);
        r.register("s", Submitted::avro(V1)).await.unwrap();
        assert_eq!(r.versions("s").await.unwrap(), vec![2]);
    }

    #[tokio::test]
    async fn state_is_rebuilt_from_the_log() {
        let log = MemoryLog::new();
        let r = Registry::open(log.clone()).await.unwrap();
        let id1 = r.register("s", Submitted::avro(V1)).await.unwrap();
        let id2 = r.register("t", Submitted::avro(V2)).await.unwrap();
        r.set_compatibility(None, Some(CompatibilityLevel::Full))
            .await
            .unwrap();
        let again = Registry::open(log).await.unwrap();
        assert_eq!(
            again.version("s", VersionRef::Number(1)).await.unwrap().id,
            id1
        );
        assert_eq!(
            again.version("t", VersionRef::Latest).await.unwrap().id,
            id2
        );
        assert_eq!(
            again.compatibility(None).await,
            Some(CompatibilityLevel::Full)
        );
        let id3 = again
            .register("u", Submitted::avro(r#""string""#))
            .await
            .unwrap();
        assert!(id3 > id2);
    }

    #[tokio::test]
    async fn invalid_schema_and_versions_are_rejected() {
        let r = Registry::open(MemoryLog::new()).await.unwrap();
        assert_eq!(
            r.register("s", Submitted::avro("{nope"))
                .await
                .unwrap_err()
                .error_code,
            42201
        );
        assert_eq!(VersionRef::parse("0").unwrap_err().error_code, 42202);
        assert_eq!(VersionRef::parse("x").unwrap_err().error_code, 42202);
        assert_eq!(r.schema_by_id(7).await.unwrap_err().error_code, 40403);
    }

    const HUGE_FIXED: &str = r#"{"type":"record","name":"Evil","fields":[{"name":"blob","type":{"type":"fixed","name":"Huge","size":18446744073709551615}}]}"#;

    #[tokio::test]
    async fn schemas_over_the_limits_are_refused_with_42201_naming_the_limit() {
        let r = Registry::open(MemoryLog::new()).await.unwrap();
        for (text, limit) in [
            (HUGE_FIXED.to_string(), "max-fixed-bytes"),
            (
                format!(
                    "{}\"int\"{}",
                    r#"{"type":"array","items":"#.repeat(40),
                    "}".repeat(40)
                ),
                "max-depth",
            ),
            (
                format!(
                    r#"{{"type":"enum","name":"E","symbols":[{}]}}"#,
                    (0..10_001)
                        .map(|i| format!("\"S{i}\""))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                "max-symbols",
            ),
            (
                format!(
                    r#"{{"type":"record","name":"R","doc":"{}","fields":[]}}"#,
                    "x".repeat(600 * 1024)
                ),
                "max-schema-bytes",
            ),
        ] {
            let err = r.register("s", Submitted::avro(&text)).await.unwrap_err();
            assert_eq!(
                (err.status, err.error_code),
                (StatusCode::UNPROCESSABLE_ENTITY, 42201),
                "{err}"
            );
            assert!(err.message.contains(limit), "{limit}: {err}");
            let err = r.lookup("s", Submitted::avro(&text)).await.unwrap_err();
            assert_eq!(err.error_code, 42201, "{err}");
            let err = r
                .check_compatibility("s", None, Submitted::avro(&text))
                .await
                .unwrap_err();
            assert_eq!(err.error_code, 42201, "{err}");
        }
        assert!(r.subjects(true).await.is_empty(), "nothing was stored");
        // A schema within the limits still registers.
        r.register("s", Submitted::avro(V1)).await.unwrap();
    }

    #[tokio::test]
    async fn limits_are_configurable_and_the_log_is_replayed_whatever_they_are() {
        let log = MemoryLog::new();
        let open = Registry::open_with_limits(
            log.clone(),
            SchemaLimits {
                max_fixed_bytes: usize::MAX,
                ..SchemaLimits::default()
            },
        )
        .await
        .unwrap();
        let id = open
            .register("s", Submitted::avro(HUGE_FIXED))
            .await
            .unwrap();
        // Reopened with the default limits: the stored schema is still
        // served (a lowered limit never loses data), new ones are refused.
        let strict = Registry::open(log).await.unwrap();
        assert_eq!(strict.schema_by_id(id).await.unwrap().1, HUGE_FIXED);
        let err = strict
            .register("t", Submitted::avro(HUGE_FIXED))
            .await
            .unwrap_err();
        assert_eq!(err.error_code, 42201);
        let tight = Registry::open_with_limits(
            MemoryLog::new(),
            SchemaLimits {
                max_fields: 0,
                ..SchemaLimits::default()
            },
        )
        .await
        .unwrap();
        let err = tight.register("s", Submitted::avro(V1)).await.unwrap_err();
        assert!(err.message.contains("max-fields"), "{err}");
    }
}
