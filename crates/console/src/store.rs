//! The history: one SQLite file (through libsql) holding every saga the
//! console has seen, its lifecycle events with step data, its search
//! attributes, the dead letters, the audit log, and the Kafka offsets the
//! indexer has applied. Offsets are written in the same transaction as the
//! rows they produced, so after a crash (even `kill -9`) the file says
//! exactly which records are in it and the indexer resumes from there:
//! nothing is missing and nothing is indexed twice. A lost file has no
//! offsets, so the indexer starts from the beginning of the topics and
//! rebuilds it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use libsql::{Connection, Value as Sql};
use sagaflow_codec::messages::{LifecycleKind, SagaLifecycleEvent, SagaResult, SagaStatus};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Mutex;

use crate::error::ConsoleError;

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS sagas (
    saga_id TEXT PRIMARY KEY,
    saga_type TEXT NOT NULL,
    saga_version INTEGER NOT NULL,
    status TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    ended_at INTEGER,
    last_seq INTEGER NOT NULL,
    current_step TEXT,
    error TEXT,
    trigger_key TEXT,
    output TEXT
);
CREATE INDEX IF NOT EXISTS sagas_started ON sagas (started_at DESC, saga_id DESC);
CREATE INDEX IF NOT EXISTS sagas_status ON sagas (status, started_at DESC);
CREATE INDEX IF NOT EXISTS sagas_type ON sagas (saga_type, status, started_at DESC);
CREATE INDEX IF NOT EXISTS sagas_key ON sagas (trigger_key);
CREATE INDEX IF NOT EXISTS sagas_ended ON sagas (ended_at) WHERE ended_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS events (
    saga_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    step TEXT,
    attempt INTEGER,
    detail TEXT,
    at INTEGER NOT NULL,
    input TEXT,
    output TEXT,
    error TEXT,
    PRIMARY KEY (saga_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS attributes (
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    saga_id TEXT NOT NULL,
    PRIMARY KEY (name, value, saga_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS attributes_saga ON attributes (saga_id);
CREATE VIRTUAL TABLE IF NOT EXISTS error_text USING fts5 (text, saga_id UNINDEXED);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    at INTEGER NOT NULL,
    key BLOB,
    value BLOB,
    headers TEXT NOT NULL,
    code TEXT,
    reason TEXT,
    source_topic TEXT,
    source_partition INTEGER,
    source_offset INTEGER,
    redriven_at INTEGER,
    redriven_by TEXT,
    UNIQUE (topic, partition, offset)
);
CREATE TABLE IF NOT EXISTS offsets (
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS skipped (
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (topic, partition, offset)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    who TEXT NOT NULL,
    action TEXT NOT NULL,
    filter TEXT NOT NULL,
    matched INTEGER NOT NULL,
    succeeded INTEGER NOT NULL,
    failed INTEGER NOT NULL
);
";

/// One record the indexer read, with where it came from.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub item: Item,
}

/// What a record is.
#[derive(Debug, Clone)]
pub enum Item {
    Lifecycle(SagaLifecycleEvent),
    Result(SagaResult),
    DeadLetter(DeadLetterIn),
    /// A record that could not be read: remembered with its reason, so
    /// that its offset is applied and the problem is visible.
    Skipped(String),
}

/// A dead-letter record as read.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterIn {
    pub at: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, String)>,
}

/// A search over the sagas. Every field narrows the result.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Filter {
    /// Saga id, or its beginning (`order-checkout:o-1` finds `…:o-12` too).
    pub id: Option<String>,
    #[serde(rename = "type")]
    pub saga_type: Option<String>,
    pub version: Option<i64>,
    /// One status or several, comma-separated (`FAILED,COMPENSATED`).
    pub status: Option<String>,
    /// Started at or after (ms since the epoch).
    pub from: Option<i64>,
    /// Started before (ms since the epoch).
    pub to: Option<i64>,
    /// The trigger's correlation key, exactly.
    pub key: Option<String>,
    /// Text contained in the saga's last error.
    pub error: Option<String>,
    /// Search attributes, `name=value` each, all of them must match.
    pub attrs: Vec<(String, String)>,
}

/// Statuses a saga can have in the history.
pub const STATUSES: &[&str] = &[
    "RUNNING",
    "COMPENSATING",
    "COMPLETED",
    "COMPENSATED",
    "FAILED",
];

impl Filter {
    /// Builds a filter from query parameters (`attr.customer_id=c-1` for
    /// attributes). Unknown parameters are refused by name.
    pub fn from_query(q: &[(String, String)]) -> Result<(Self, Page), ConsoleError> {
        let mut f = Self::default();
        let mut page = Page::default();
        let num = |k: &str, v: &str| {
            v.parse::<i64>()
                .map_err(|_| ConsoleError::Filter(format!("`{k}` must be an integer, got `{v}`")))
        };
        for (k, v) in q {
            let v = v.trim();
            if v.is_empty() {
                continue;
            }
            match k.as_str() {
                "id" => f.id = Some(v.to_owned()),
                "type" => f.saga_type = Some(v.to_owned()),
                "version" => f.version = Some(num(k, v)?),
                "status" => f.status = Some(v.to_ascii_uppercase()),
                "from" => f.from = Some(num(k, v)?),
                "to" => f.to = Some(num(k, v)?),
                "key" => f.key = Some(v.to_owned()),
                "error" => f.error = Some(v.to_owned()),
                "limit" => page.limit = num(k, v)?.clamp(1, MAX_LIMIT),
                "before" => page.before = Some(v.to_owned()),
                other => match other.strip_prefix("attr.") {
                    Some(name) if !name.is_empty() => f.attrs.push((name.to_owned(), v.to_owned())),
                    _ => {
                        return Err(ConsoleError::Filter(format!(
                            "unknown parameter `{other}` (known: id, type, version, status, from, to, key, error, attr.<name>, limit, before)"
                        )));
                    }
                },
            }
        }
        f.check()?;
        Ok((f, page))
    }

    /// Refuses statuses that do not exist.
    pub fn check(&self) -> Result<(), ConsoleError> {
        if let Some(s) = &self.status {
            for one in s.split(',') {
                if !STATUSES.contains(&one.trim()) {
                    return Err(ConsoleError::Filter(format!(
                        "unknown status `{one}` (known: {})",
                        STATUSES.join(", ")
                    )));
                }
            }
        }
        Ok(())
    }

    /// `WHERE …` and its parameters.
    fn sql(&self) -> (String, Vec<Sql>) {
        let mut w: Vec<String> = Vec::new();
        let mut p: Vec<Sql> = Vec::new();
        // With a selective filter (id, key, attribute, error text), the
        // broad columns must not drive the query: `+col` keeps SQLite from
        // picking their index (it has no statistics to know better).
        let selective = self.id.is_some()
            || self.key.is_some()
            || self.error.is_some()
            || !self.attrs.is_empty();
        let broad = if selective { "+" } else { "" };
        if let Some(id) = &self.id {
            p.push(Sql::Text(id.clone()));
            p.push(Sql::Text(format!("{id}\u{10FFFF}")));
            w.push(format!(
                "s.saga_id >= ?{} AND s.saga_id < ?{}",
                p.len() - 1,
                p.len()
            ));
        }
        if let Some(t) = &self.saga_type {
            p.push(Sql::Text(t.clone()));
            w.push(format!("{broad}s.saga_type = ?{}", p.len()));
        }
        if let Some(v) = self.version {
            p.push(Sql::Integer(v));
            w.push(format!("{broad}s.saga_version = ?{}", p.len()));
        }
        if let Some(s) = &self.status {
            let mut marks = Vec::new();
            for one in s.split(',') {
                p.push(Sql::Text(one.trim().to_owned()));
                marks.push(format!("?{}", p.len()));
            }
            w.push(format!("{broad}s.status IN ({})", marks.join(", ")));
        }
        if let Some(from) = self.from {
            p.push(Sql::Integer(from));
            w.push(format!("{broad}s.started_at >= ?{}", p.len()));
        }
        if let Some(to) = self.to {
            p.push(Sql::Integer(to));
            w.push(format!("{broad}s.started_at < ?{}", p.len()));
        }
        if let Some(k) = &self.key {
            p.push(Sql::Text(k.clone()));
            w.push(format!("s.trigger_key = ?{}", p.len()));
        }
        if let Some(e) = &self.error {
            p.push(Sql::Text(fts_phrase(e)));
            w.push(format!(
                "s.saga_id IN (SELECT saga_id FROM error_text WHERE error_text MATCH ?{})",
                p.len()
            ));
        }
        for (name, value) in &self.attrs {
            p.push(Sql::Text(name.clone()));
            p.push(Sql::Text(value.clone()));
            w.push(format!(
                "s.saga_id IN (SELECT saga_id FROM attributes WHERE name = ?{} AND value = ?{})",
                p.len() - 1,
                p.len()
            ));
        }
        let clause = if w.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", w.join(" AND "))
        };
        (clause, p)
    }
}

/// Error text as an FTS5 query: the words as one phrase, the last one a
/// prefix (`card decl` finds "card declined"). Quotes are doubled, so any
/// text is a valid query.
fn fts_phrase(text: &str) -> String {
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect();
    if words.is_empty() {
        return "\"\"".into();
    }
    format!("\"{}\"*", words.join(" ").replace('"', "\"\""))
}

/// Most rows one search returns.
pub const MAX_LIMIT: i64 = 500;

/// Which page of a search.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Page {
    pub limit: i64,
    /// The `next` cursor of the previous page.
    pub before: Option<String>,
}

impl Default for Page {
    fn default() -> Self {
        Self {
            limit: 50,
            before: None,
        }
    }
}

/// A saga as the list shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaRow {
    pub saga_id: String,
    pub saga_type: String,
    pub saga_version: i64,
    pub status: String,
    pub started_at: i64,
    pub updated_at: i64,
    pub ended_at: Option<i64>,
    pub current_step: Option<String>,
    pub error: Option<String>,
    pub key: Option<String>,
}

/// One page of a search.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SearchPage {
    pub sagas: Vec<SagaRow>,
    /// Cursor of the next page, if there may be one.
    pub next: Option<String>,
}

/// One lifecycle event of a saga, with its step data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRow {
    pub seq: i64,
    pub kind: String,
    pub step: Option<String>,
    pub attempt: Option<i64>,
    pub detail: Option<String>,
    pub at: i64,
    pub input: Option<Value>,
    pub output: Option<Value>,
    pub error: Option<Value>,
}

/// A saga with everything the history knows of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SagaDetail {
    #[serde(flatten)]
    pub saga: SagaRow,
    pub output: Option<Value>,
    pub attributes: BTreeMap<String, String>,
    pub events: Vec<EventRow>,
}

/// Counts for the overview page.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Overview {
    /// saga type → status → count.
    pub counts: BTreeMap<String, BTreeMap<String, i64>>,
    pub total: i64,
    /// Sagas started in the last minute, per second.
    pub started_per_sec: f64,
    /// Sagas that ended in the last minute, per second.
    pub ended_per_sec: f64,
    pub oldest_running: Option<SagaRow>,
    /// Dead letters not redriven yet, and in all.
    pub dead_letters_open: i64,
    pub dead_letters_total: i64,
    /// Records the indexer could not read.
    pub skipped: i64,
}

/// A dead letter as the console shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetter {
    pub id: i64,
    pub topic: String,
    pub partition: i64,
    pub offset: i64,
    pub at: i64,
    pub code: Option<String>,
    pub reason: Option<String>,
    pub source_topic: Option<String>,
    pub source_partition: Option<i64>,
    pub source_offset: Option<i64>,
    pub redriven_at: Option<i64>,
    pub redriven_by: Option<String>,
    /// The record's key as text (lossy UTF-8).
    pub key: Option<String>,
    pub headers: Vec<(String, String)>,
    pub value_bytes: usize,
    #[serde(skip)]
    pub raw_key: Option<Vec<u8>>,
    #[serde(skip)]
    pub raw_value: Option<Vec<u8>>,
}

/// One audit line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditLine {
    pub id: i64,
    pub at: i64,
    pub who: String,
    pub action: String,
    pub filter: String,
    pub matched: i64,
    pub succeeded: i64,
    pub failed: i64,
}

/// The history database.
pub struct Store {
    path: String,
    _db: libsql::Database,
    write: Mutex<Connection>,
    read: Mutex<Connection>,
}

fn status_of(kind: LifecycleKind) -> Option<&'static str> {
    Some(match kind {
        LifecycleKind::Started | LifecycleKind::Resumed => "RUNNING",
        LifecycleKind::Compensating => "COMPENSATING",
        LifecycleKind::Completed => "COMPLETED",
        LifecycleKind::Compensated => "COMPENSATED",
        LifecycleKind::Failed => "FAILED",
        _ => return None,
    })
}

/// Whether an event's detail is an error worth searching.
fn error_of(e: &SagaLifecycleEvent) -> Option<String> {
    match e.kind {
        LifecycleKind::StepFailed
        | LifecycleKind::StepRetrying
        | LifecycleKind::StepTimedOut
        | LifecycleKind::CompensationStepFailed
        | LifecycleKind::CompensationStepRetrying
        | LifecycleKind::Compensating
        | LifecycleKind::Failed
        | LifecycleKind::Aborted => e.detail.clone(),
        _ => None,
    }
}

/// The per-saga sequence number at the end of an event id (`<saga id>/<seq>`).
fn seq_of(event_id: &str) -> i64 {
    event_id
        .rsplit('/')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn opt_text(v: Option<&str>) -> Sql {
    v.map_or(Sql::Null, |s| Sql::Text(s.to_owned()))
}

fn opt_json(v: Option<&Value>) -> Sql {
    v.map_or(Sql::Null, |v| Sql::Text(v.to_string()))
}

fn status_symbol(s: SagaStatus) -> &'static str {
    match s {
        SagaStatus::Completed => "COMPLETED",
        SagaStatus::Compensated => "COMPENSATED",
        SagaStatus::Failed => "FAILED",
    }
}

const SAGA_COLUMNS: &str = "s.saga_id, s.saga_type, s.saga_version, s.status, s.started_at, s.updated_at, s.ended_at, s.current_step, s.error, s.trigger_key";

fn saga_row(r: &libsql::Row) -> Result<SagaRow, ConsoleError> {
    Ok(SagaRow {
        saga_id: r.get(0)?,
        saga_type: r.get(1)?,
        saga_version: r.get(2)?,
        status: r.get(3)?,
        started_at: r.get(4)?,
        updated_at: r.get(5)?,
        ended_at: r.get(6)?,
        current_step: r.get(7)?,
        error: r.get(8)?,
        key: r.get(9)?,
    })
}

fn json_col(r: &libsql::Row, i: i32) -> Result<Option<Value>, ConsoleError> {
    let text: Option<String> = r.get(i)?;
    Ok(text.map(|t| serde_json::from_str(&t).unwrap_or(Value::String(t))))
}

fn cursor(row: &SagaRow) -> String {
    format!("{}|{}", row.started_at, row.saga_id)
}

fn parse_cursor(c: &str) -> Result<(i64, String), ConsoleError> {
    let (at, id) = c
        .split_once('|')
        .ok_or_else(|| ConsoleError::Filter(format!("`before` cursor `{c}` is not valid")))?;
    let at = at
        .parse()
        .map_err(|_| ConsoleError::Filter(format!("`before` cursor `{c}` is not valid")))?;
    Ok((at, id.to_owned()))
}

impl Store {
    /// Opens (or creates) the history at `path`.
    pub async fn open(path: &Path) -> Result<Self, ConsoleError> {
        let shown = path.display().to_string();
        let db_err = |e: libsql::Error| ConsoleError::Database {
            path: shown.clone(),
            message: e.to_string(),
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| ConsoleError::Database {
                path: shown.clone(),
                message: e.to_string(),
            })?;
        }
        let db = libsql::Builder::new_local(path)
            .build()
            .await
            .map_err(db_err)?;
        let write = db.connect().map_err(db_err)?;
        write
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db_err)?;
        // `PRAGMA journal_mode` returns a row: run it as a query.
        let _ = write.query("PRAGMA journal_mode = WAL", ()).await;
        write.execute_batch(SCHEMA).await.map_err(db_err)?;
        let read = db.connect().map_err(db_err)?;
        read.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db_err)?;
        Ok(Self {
            path: shown,
            _db: db,
            write: Mutex::new(write),
            read: Mutex::new(read),
        })
    }

    /// Where the file is.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The next offset to read per (topic, partition).
    pub async fn offsets(&self) -> Result<HashMap<(String, i32), i64>, ConsoleError> {
        let c = self.read.lock().await;
        let mut rows = c
            .query("SELECT topic, partition, next_offset FROM offsets", ())
            .await?;
        let mut out = HashMap::new();
        while let Some(r) = rows.next().await? {
            out.insert((r.get::<String>(0)?, r.get::<i32>(1)?), r.get::<i64>(2)?);
        }
        Ok(out)
    }

    /// Applies records and their offsets in one transaction.
    pub async fn apply(&self, records: &[Record]) -> Result<(), ConsoleError> {
        if records.is_empty() {
            return Ok(());
        }
        let c = self.write.lock().await;
        let tx = c.transaction().await?;
        let mut next: HashMap<(&str, i32), i64> = HashMap::new();
        {
            let upsert_saga = tx
                .prepare(
                    "INSERT INTO sagas (saga_id, saga_type, saga_version, status, started_at, updated_at, last_seq, current_step, error, trigger_key)
                     VALUES (?1, ?2, ?3, COALESCE(?4, 'RUNNING'), ?5, ?5, ?6, ?7, ?8, ?9)
                     ON CONFLICT (saga_id) DO UPDATE SET
                       status = CASE WHEN ?6 >= sagas.last_seq AND ?4 IS NOT NULL THEN ?4 ELSE sagas.status END,
                       ended_at = CASE WHEN ?6 >= sagas.last_seq AND ?4 IN ('RUNNING', 'COMPENSATING') THEN NULL ELSE sagas.ended_at END,
                       started_at = CASE WHEN ?10 THEN ?5 ELSE sagas.started_at END,
                       updated_at = MAX(sagas.updated_at, ?5),
                       current_step = CASE WHEN ?6 >= sagas.last_seq AND ?7 IS NOT NULL THEN ?7 ELSE sagas.current_step END,
                       error = CASE WHEN ?6 >= sagas.last_seq AND ?8 IS NOT NULL THEN ?8 ELSE sagas.error END,
                       trigger_key = COALESCE(?9, sagas.trigger_key),
                       last_seq = MAX(sagas.last_seq, ?6)",
                )
                .await?;
            let insert_event = tx
                .prepare(
                    "INSERT OR IGNORE INTO events (saga_id, seq, kind, step, attempt, detail, at, input, output, error)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )
                .await?;
            let insert_error = tx
                .prepare("INSERT INTO error_text (text, saga_id) VALUES (?1, ?2)")
                .await?;
            let insert_attr = tx
                .prepare(
                    "INSERT OR IGNORE INTO attributes (name, value, saga_id) VALUES (?1, ?2, ?3)",
                )
                .await?;
            let upsert_result = tx
                .prepare(
                    "INSERT INTO sagas (saga_id, saga_type, saga_version, status, started_at, updated_at, ended_at, last_seq, error, output)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, 0, ?7, ?8)
                     ON CONFLICT (saga_id) DO UPDATE SET
                       status = ?4, ended_at = ?6, updated_at = MAX(sagas.updated_at, ?6),
                       error = COALESCE(?7, sagas.error), output = ?8",
                )
                .await?;
            let insert_dead = tx
                .prepare(
                    "INSERT OR IGNORE INTO dead_letters (topic, partition, offset, at, key, value, headers, code, reason, source_topic, source_partition, source_offset)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                )
                .await?;
            let insert_skipped = tx
                .prepare("INSERT OR IGNORE INTO skipped (topic, partition, offset, reason) VALUES (?1, ?2, ?3, ?4)")
                .await?;
            for r in records {
                match &r.item {
                    Item::Lifecycle(e) => {
                        let seq = seq_of(&e.event_id);
                        let status = status_of(e.kind);
                        let key = e.attributes.get("key").cloned();
                        let is_start = e.kind == LifecycleKind::Started;
                        let error = error_of(e);
                        upsert_saga
                            .execute(vec![
                                Sql::Text(e.saga_id.clone()),
                                Sql::Text(e.saga_type.clone()),
                                Sql::Integer(i64::from(e.saga_version)),
                                opt_text(status),
                                Sql::Integer(e.at),
                                Sql::Integer(seq),
                                opt_text(e.step.as_deref()),
                                opt_text(error.as_deref()),
                                opt_text(key.as_deref()),
                                Sql::Integer(i64::from(is_start)),
                            ])
                            .await?;
                        upsert_saga.reset();
                        insert_event
                            .execute(vec![
                                Sql::Text(e.saga_id.clone()),
                                Sql::Integer(seq),
                                Sql::Text(e.kind.symbol().to_owned()),
                                opt_text(e.step.as_deref()),
                                e.attempt.map_or(Sql::Null, |a| Sql::Integer(i64::from(a))),
                                opt_text(e.detail.as_deref()),
                                Sql::Integer(e.at),
                                opt_json(e.input.as_ref()),
                                opt_json(e.output.as_ref()),
                                opt_json(e.error.as_ref()),
                            ])
                            .await?;
                        insert_event.reset();
                        // Once per event: a replayed record is a duplicate
                        // of an event already there.
                        // The error body's text is searchable too: a
                        // backend's "card declined" is often only there.
                        let searchable = match (&error, &e.error) {
                            (Some(d), Some(body)) => Some(format!("{d} {body}")),
                            (Some(d), None) => Some(d.clone()),
                            (None, Some(body)) => Some(body.to_string()),
                            (None, None) => None,
                        };
                        if let Some(text) = searchable
                            && tx.changes() > 0
                        {
                            insert_error
                                .execute(vec![Sql::Text(text), Sql::Text(e.saga_id.clone())])
                                .await?;
                            insert_error.reset();
                        }
                        for (name, value) in &e.attributes {
                            insert_attr
                                .execute(vec![
                                    Sql::Text(name.clone()),
                                    Sql::Text(value.clone()),
                                    Sql::Text(e.saga_id.clone()),
                                ])
                                .await?;
                            insert_attr.reset();
                        }
                    }
                    Item::Result(res) => {
                        upsert_result
                            .execute(vec![
                                Sql::Text(res.saga_id.clone()),
                                Sql::Text(res.saga_type.clone()),
                                Sql::Integer(i64::from(res.saga_version)),
                                Sql::Text(status_symbol(res.status).to_owned()),
                                Sql::Integer(res.started_at),
                                Sql::Integer(res.ended_at),
                                opt_text(res.error.as_deref()),
                                Sql::Text(res.output.to_string()),
                            ])
                            .await?;
                        upsert_result.reset();
                    }
                    Item::DeadLetter(d) => {
                        let h = |k: &str| {
                            d.headers
                                .iter()
                                .find(|(n, _)| n == k)
                                .map(|(_, v)| v.clone())
                        };
                        let int = |k: &str| h(k).and_then(|v| v.parse::<i64>().ok());
                        insert_dead
                            .execute(vec![
                                Sql::Text(r.topic.clone()),
                                Sql::Integer(i64::from(r.partition)),
                                Sql::Integer(r.offset),
                                Sql::Integer(d.at),
                                d.key.clone().map_or(Sql::Null, Sql::Blob),
                                d.value.clone().map_or(Sql::Null, Sql::Blob),
                                Sql::Text(serde_json::to_string(&d.headers).unwrap_or_default()),
                                opt_text(h(sagaflow_bus::dead_letter::CODE).as_deref()),
                                opt_text(h(sagaflow_bus::dead_letter::REASON).as_deref()),
                                opt_text(h(sagaflow_bus::dead_letter::SOURCE_TOPIC).as_deref()),
                                int(sagaflow_bus::dead_letter::SOURCE_PARTITION)
                                    .map_or(Sql::Null, Sql::Integer),
                                int(sagaflow_bus::dead_letter::SOURCE_OFFSET)
                                    .map_or(Sql::Null, Sql::Integer),
                            ])
                            .await?;
                        insert_dead.reset();
                    }
                    Item::Skipped(reason) => {
                        insert_skipped
                            .execute(vec![
                                Sql::Text(r.topic.clone()),
                                Sql::Integer(i64::from(r.partition)),
                                Sql::Integer(r.offset),
                                Sql::Text(reason.clone()),
                            ])
                            .await?;
                        insert_skipped.reset();
                    }
                }
                let n = next.entry((r.topic.as_str(), r.partition)).or_insert(0);
                *n = (*n).max(r.offset + 1);
            }
        }
        for ((topic, partition), offset) in next {
            tx.execute(
                "INSERT INTO offsets (topic, partition, next_offset) VALUES (?1, ?2, ?3)
                 ON CONFLICT (topic, partition) DO UPDATE SET next_offset = MAX(offsets.next_offset, ?3)",
                vec![
                    Sql::Text(topic.to_owned()),
                    Sql::Integer(i64::from(partition)),
                    Sql::Integer(offset),
                ],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// One page of sagas matching `f`, newest first.
    pub async fn search(&self, f: &Filter, page: &Page) -> Result<SearchPage, ConsoleError> {
        let (mut clause, mut params) = f.sql();
        if let Some(c) = &page.before {
            let (at, id) = parse_cursor(c)?;
            params.push(Sql::Integer(at));
            params.push(Sql::Text(id));
            let cond = format!(
                "(s.started_at < ?{a} OR (s.started_at = ?{a} AND s.saga_id < ?{b}))",
                a = params.len() - 1,
                b = params.len()
            );
            clause = if clause.is_empty() {
                format!("WHERE {cond}")
            } else {
                format!("{clause} AND {cond}")
            };
        }
        let limit = page.limit.clamp(1, MAX_LIMIT);
        let sql = format!(
            "SELECT {SAGA_COLUMNS} FROM sagas s {clause} ORDER BY s.started_at DESC, s.saga_id DESC LIMIT {}",
            limit + 1
        );
        let c = self.read.lock().await;
        let mut rows = c.query(&sql, params).await?;
        let mut sagas = Vec::new();
        while let Some(r) = rows.next().await? {
            sagas.push(saga_row(&r)?);
        }
        let next = if sagas.len() as i64 > limit {
            sagas.truncate(limit as usize);
            sagas.last().map(cursor)
        } else {
            None
        };
        Ok(SearchPage { sagas, next })
    }

    /// How many sagas match `f`.
    pub async fn count(&self, f: &Filter) -> Result<i64, ConsoleError> {
        let (clause, params) = f.sql();
        let c = self.read.lock().await;
        let mut rows = c
            .query(&format!("SELECT COUNT(*) FROM sagas s {clause}"), params)
            .await?;
        Ok(match rows.next().await? {
            Some(r) => r.get(0)?,
            None => 0,
        })
    }

    /// The ids of the sagas matching `f`, at most `max`, oldest first.
    pub async fn ids(&self, f: &Filter, max: i64) -> Result<Vec<String>, ConsoleError> {
        let (clause, params) = f.sql();
        let c = self.read.lock().await;
        let mut rows = c
            .query(
                &format!("SELECT s.saga_id FROM sagas s {clause} ORDER BY s.started_at, s.saga_id LIMIT {max}"),
                params,
            )
            .await?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().await? {
            out.push(r.get(0)?);
        }
        Ok(out)
    }

    /// A saga with its events and attributes.
    pub async fn saga(&self, id: &str) -> Result<Option<SagaDetail>, ConsoleError> {
        let c = self.read.lock().await;
        let mut rows = c
            .query(
                &format!("SELECT {SAGA_COLUMNS}, s.output FROM sagas s WHERE s.saga_id = ?1"),
                [id],
            )
            .await?;
        let Some(r) = rows.next().await? else {
            return Ok(None);
        };
        let saga = saga_row(&r)?;
        let output = json_col(&r, 10)?;
        drop(rows);
        let mut attributes = BTreeMap::new();
        let mut rows = c
            .query(
                "SELECT name, value FROM attributes WHERE saga_id = ?1",
                [id],
            )
            .await?;
        while let Some(r) = rows.next().await? {
            attributes.insert(r.get(0)?, r.get(1)?);
        }
        let mut events = Vec::new();
        let mut rows = c
            .query(
                "SELECT seq, kind, step, attempt, detail, at, input, output, error FROM events WHERE saga_id = ?1 ORDER BY seq",
                [id],
            )
            .await?;
        while let Some(r) = rows.next().await? {
            events.push(EventRow {
                seq: r.get(0)?,
                kind: r.get(1)?,
                step: r.get(2)?,
                attempt: r.get(3)?,
                detail: r.get(4)?,
                at: r.get(5)?,
                input: json_col(&r, 6)?,
                output: json_col(&r, 7)?,
                error: json_col(&r, 8)?,
            });
        }
        Ok(Some(SagaDetail {
            saga,
            output,
            attributes,
            events,
        }))
    }

    /// The overview's counts; `now` in ms since the epoch.
    pub async fn overview(&self, now: i64) -> Result<Overview, ConsoleError> {
        let c = self.read.lock().await;
        let mut o = Overview::default();
        let mut rows = c
            .query(
                "SELECT saga_type, status, COUNT(*) FROM sagas GROUP BY saga_type, status",
                (),
            )
            .await?;
        while let Some(r) = rows.next().await? {
            let n: i64 = r.get(2)?;
            o.total += n;
            o.counts.entry(r.get(0)?).or_default().insert(r.get(1)?, n);
        }
        let one = |sql: &'static str, p: Vec<Sql>| {
            let c = &c;
            async move {
                let mut rows = c.query(sql, p).await?;
                Ok::<i64, ConsoleError>(match rows.next().await? {
                    Some(r) => r.get::<Option<i64>>(0)?.unwrap_or(0),
                    None => 0,
                })
            }
        };
        let minute = now - 60_000;
        o.started_per_sec = one(
            "SELECT COUNT(*) FROM sagas WHERE started_at >= ?1",
            vec![Sql::Integer(minute)],
        )
        .await? as f64
            / 60.0;
        o.ended_per_sec = one(
            "SELECT COUNT(*) FROM sagas WHERE ended_at >= ?1",
            vec![Sql::Integer(minute)],
        )
        .await? as f64
            / 60.0;
        o.dead_letters_open = one(
            "SELECT COUNT(*) FROM dead_letters WHERE redriven_at IS NULL",
            vec![],
        )
        .await?;
        o.dead_letters_total = one("SELECT COUNT(*) FROM dead_letters", vec![]).await?;
        o.skipped = one("SELECT COUNT(*) FROM skipped", vec![]).await?;
        let mut rows = c
            .query(
                &format!("SELECT {SAGA_COLUMNS} FROM sagas s WHERE s.status = 'RUNNING' ORDER BY s.started_at LIMIT 1"),
                (),
            )
            .await?;
        if let Some(r) = rows.next().await? {
            o.oldest_running = Some(saga_row(&r)?);
        }
        Ok(o)
    }

    /// Dead letters, newest first.
    pub async fn dead_letters(
        &self,
        open_only: bool,
        limit: i64,
    ) -> Result<Vec<DeadLetter>, ConsoleError> {
        let filter = if open_only {
            "WHERE redriven_at IS NULL"
        } else {
            ""
        };
        let sql = format!(
            "SELECT {DLQ_COLUMNS} FROM dead_letters {filter} ORDER BY id DESC LIMIT {}",
            limit.clamp(1, 1000)
        );
        let c = self.read.lock().await;
        let mut rows = c.query(&sql, ()).await?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().await? {
            out.push(dead_letter_row(&r)?);
        }
        Ok(out)
    }

    /// One dead letter.
    pub async fn dead_letter(&self, id: i64) -> Result<Option<DeadLetter>, ConsoleError> {
        let c = self.read.lock().await;
        let mut rows = c
            .query(
                &format!("SELECT {DLQ_COLUMNS} FROM dead_letters WHERE id = ?1"),
                [id],
            )
            .await?;
        match rows.next().await? {
            Some(r) => Ok(Some(dead_letter_row(&r)?)),
            None => Ok(None),
        }
    }

    /// Marks dead letters as redriven.
    pub async fn mark_redriven(&self, ids: &[i64], who: &str, at: i64) -> Result<(), ConsoleError> {
        let c = self.write.lock().await;
        let tx = c.transaction().await?;
        for id in ids {
            tx.execute(
                "UPDATE dead_letters SET redriven_at = ?1, redriven_by = ?2 WHERE id = ?3",
                vec![
                    Sql::Integer(at),
                    Sql::Text(who.to_owned()),
                    Sql::Integer(*id),
                ],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Appends an audit line.
    pub async fn audit(&self, line: &AuditLine) -> Result<i64, ConsoleError> {
        let c = self.write.lock().await;
        c.execute(
            "INSERT INTO audit (at, who, action, filter, matched, succeeded, failed) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            vec![
                Sql::Integer(line.at),
                Sql::Text(line.who.clone()),
                Sql::Text(line.action.clone()),
                Sql::Text(line.filter.clone()),
                Sql::Integer(line.matched),
                Sql::Integer(line.succeeded),
                Sql::Integer(line.failed),
            ],
        )
        .await?;
        Ok(c.last_insert_rowid())
    }

    /// The audit log, newest first.
    pub async fn audit_lines(&self, limit: i64) -> Result<Vec<AuditLine>, ConsoleError> {
        let c = self.read.lock().await;
        let mut rows = c
            .query(
                &format!("SELECT id, at, who, action, filter, matched, succeeded, failed FROM audit ORDER BY id DESC LIMIT {}", limit.clamp(1, 1000)),
                (),
            )
            .await?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().await? {
            out.push(AuditLine {
                id: r.get(0)?,
                at: r.get(1)?,
                who: r.get(2)?,
                action: r.get(3)?,
                filter: r.get(4)?,
                matched: r.get(5)?,
                succeeded: r.get(6)?,
                failed: r.get(7)?,
            });
        }
        Ok(out)
    }

    /// Removes sagas that ended before `cutoff` (ms since the epoch) and
    /// dead letters older than it, at most `max` sagas per call. Returns
    /// how many sagas were removed.
    pub async fn prune(&self, cutoff: i64, max: i64) -> Result<u64, ConsoleError> {
        let c = self.write.lock().await;
        let tx = c.transaction().await?;
        let pick = format!(
            "SELECT saga_id FROM sagas WHERE ended_at IS NOT NULL AND ended_at < ?1 LIMIT {max}"
        );
        tx.execute(
            &format!("DELETE FROM events WHERE saga_id IN ({pick})"),
            [cutoff],
        )
        .await?;
        tx.execute(
            &format!("DELETE FROM attributes WHERE saga_id IN ({pick})"),
            [cutoff],
        )
        .await?;
        tx.execute(
            &format!("DELETE FROM error_text WHERE saga_id IN ({pick})"),
            [cutoff],
        )
        .await?;
        let n = tx
            .execute(
                &format!("DELETE FROM sagas WHERE saga_id IN ({pick})"),
                [cutoff],
            )
            .await?;
        tx.execute("DELETE FROM dead_letters WHERE at < ?1", [cutoff])
            .await?;
        tx.commit().await?;
        Ok(n)
    }

    /// Counts rows of the main tables (for tests and the bench).
    pub async fn table_counts(&self) -> Result<BTreeMap<String, i64>, ConsoleError> {
        let c = self.read.lock().await;
        let mut out = BTreeMap::new();
        for t in ["sagas", "events", "attributes", "dead_letters", "skipped"] {
            let mut rows = c.query(&format!("SELECT COUNT(*) FROM {t}"), ()).await?;
            if let Some(r) = rows.next().await? {
                out.insert(t.to_owned(), r.get(0)?);
            }
        }
        Ok(out)
    }
}

const DLQ_COLUMNS: &str = "id, topic, partition, offset, at, code, reason, source_topic, source_partition, source_offset, redriven_at, redriven_by, key, headers, value";

fn dead_letter_row(r: &libsql::Row) -> Result<DeadLetter, ConsoleError> {
    let raw_key: Option<Vec<u8>> = r.get(12)?;
    let headers: String = r.get(13)?;
    let raw_value: Option<Vec<u8>> = r.get(14)?;
    Ok(DeadLetter {
        id: r.get(0)?,
        topic: r.get(1)?,
        partition: r.get(2)?,
        offset: r.get(3)?,
        at: r.get(4)?,
        code: r.get(5)?,
        reason: r.get(6)?,
        source_topic: r.get(7)?,
        source_partition: r.get(8)?,
        source_offset: r.get(9)?,
        redriven_at: r.get(10)?,
        redriven_by: r.get(11)?,
        key: raw_key
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).into_owned()),
        headers: serde_json::from_str(&headers).unwrap_or_default(),
        value_bytes: raw_value.as_ref().map_or(0, Vec::len),
        raw_key,
        raw_value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(saga: &str, seq: i64, kind: LifecycleKind, at: i64) -> Record {
        Record {
            topic: "sagaflow.saga-events".into(),
            partition: 0,
            offset: at,
            item: Item::Lifecycle(SagaLifecycleEvent {
                event_id: format!("{saga}/{seq}"),
                saga_id: saga.into(),
                saga_type: "order-checkout".into(),
                saga_version: 1,
                kind,
                at,
                ..Default::default()
            }),
        }
    }

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("h.db")).await.unwrap();
        (dir, s)
    }

    #[tokio::test]
    async fn lifecycle_events_make_a_saga_with_status_step_data_and_attributes() {
        let (_d, s) = store().await;
        let mut started = ev("o:1", 1, LifecycleKind::Started, 10);
        if let Item::Lifecycle(e) = &mut started.item {
            e.attributes = [
                ("key".to_string(), "1".to_string()),
                ("customer_id".to_string(), "c-9".to_string()),
            ]
            .into();
            e.input = Some(json!({"order_id": "1"}));
        }
        let mut failed = ev("o:1", 3, LifecycleKind::StepFailed, 12);
        if let Item::Lifecycle(e) = &mut failed.item {
            e.step = Some("charge_payment".into());
            e.detail = Some("card declined".into());
            e.error = Some(json!({"message": "card declined", "data": {"code": 402}}));
        }
        s.apply(&[
            started,
            ev("o:1", 2, LifecycleKind::StepStarted, 11),
            failed,
            ev("o:1", 4, LifecycleKind::Compensating, 13),
        ])
        .await
        .unwrap();
        let d = s.saga("o:1").await.unwrap().unwrap();
        assert_eq!(d.saga.status, "COMPENSATING");
        assert_eq!(d.saga.key.as_deref(), Some("1"));
        assert_eq!(d.saga.error.as_deref(), Some("card declined"));
        assert_eq!(d.events.len(), 4);
        assert_eq!(d.events[0].input, Some(json!({"order_id": "1"})));
        assert_eq!(
            d.events[2].error.as_ref().unwrap()["data"]["code"],
            json!(402)
        );
        assert_eq!(d.attributes["customer_id"], "c-9");

        let by_attr = Filter {
            attrs: vec![("customer_id".into(), "c-9".into())],
            ..Default::default()
        };
        assert_eq!(s.count(&by_attr).await.unwrap(), 1);
        let by_error = Filter {
            error: Some("card decl".into()),
            status: Some("COMPENSATING".into()),
            ..Default::default()
        };
        assert_eq!(s.count(&by_error).await.unwrap(), 1);
        let wrong = Filter {
            attrs: vec![("customer_id".into(), "c-1".into())],
            ..Default::default()
        };
        assert_eq!(s.count(&wrong).await.unwrap(), 0);
        let odd = Filter {
            error: Some("\"); DROP TABLE sagas; --".into()),
            ..Default::default()
        };
        assert_eq!(s.count(&odd).await.unwrap(), 0);
        assert_eq!(
            s.offsets().await.unwrap()[&("sagaflow.saga-events".to_string(), 0)],
            14
        );
    }

    #[tokio::test]
    async fn a_replayed_batch_changes_nothing_and_an_old_event_does_not_undo_a_newer_status() {
        let (_d, s) = store().await;
        let batch = [
            ev("o:2", 1, LifecycleKind::Started, 1),
            ev("o:2", 5, LifecycleKind::Completed, 5),
        ];
        s.apply(&batch).await.unwrap();
        s.apply(&batch).await.unwrap();
        s.apply(&[ev("o:2", 3, LifecycleKind::Compensating, 3)])
            .await
            .unwrap();
        let d = s.saga("o:2").await.unwrap().unwrap();
        assert_eq!(d.saga.status, "COMPLETED");
        assert_eq!(d.events.len(), 3);
        assert_eq!(s.table_counts().await.unwrap()["sagas"], 1);
    }

    #[tokio::test]
    async fn search_pages_newest_first_and_filters_by_id_prefix_type_and_time() {
        let (_d, s) = store().await;
        let batch: Vec<Record> = (0..25)
            .map(|i| ev(&format!("o:{i:02}"), 1, LifecycleKind::Started, 100 + i))
            .collect();
        s.apply(&batch).await.unwrap();
        let mut page = Page {
            limit: 10,
            before: None,
        };
        let mut seen = Vec::new();
        loop {
            let p = s.search(&Filter::default(), &page).await.unwrap();
            seen.extend(p.sagas.iter().map(|r| r.saga_id.clone()));
            match p.next {
                Some(n) => page.before = Some(n),
                None => break,
            }
        }
        assert_eq!(seen.len(), 25);
        assert_eq!(seen[0], "o:24");
        let f = Filter {
            id: Some("o:1".into()),
            from: Some(112),
            to: Some(118),
            saga_type: Some("order-checkout".into()),
            ..Default::default()
        };
        let p = s.search(&f, &Page::default()).await.unwrap();
        let ids: Vec<_> = p.sagas.iter().map(|r| r.saga_id.as_str()).collect();
        assert_eq!(ids, ["o:17", "o:16", "o:15", "o:14", "o:13", "o:12"]);
    }

    #[tokio::test]
    async fn retention_removes_ended_sagas_only() {
        let (_d, s) = store().await;
        s.apply(&[
            ev("old", 1, LifecycleKind::Started, 1),
            Record {
                topic: "t".into(),
                partition: 0,
                offset: 1,
                item: Item::Result(SagaResult {
                    saga_id: "old".into(),
                    saga_type: "order-checkout".into(),
                    saga_version: 1,
                    status: SagaStatus::Completed,
                    output: json!({}),
                    error: None,
                    started_at: 1,
                    ended_at: 2,
                }),
            },
            ev("running", 1, LifecycleKind::Started, 1),
        ])
        .await
        .unwrap();
        assert_eq!(s.prune(1000, 100).await.unwrap(), 1);
        assert!(s.saga("old").await.unwrap().is_none());
        assert!(s.saga("running").await.unwrap().is_some());
        assert_eq!(s.table_counts().await.unwrap()["events"], 1);
    }

    #[test]
    fn query_filters_refuse_unknown_parameters_and_statuses() {
        let q = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<Vec<_>>()
        };
        let (f, p) = Filter::from_query(&q(&[
            ("status", "failed"),
            ("attr.customer_id", "c"),
            ("limit", "9999"),
        ]))
        .unwrap();
        assert_eq!(f.status.as_deref(), Some("FAILED"));
        assert_eq!(f.attrs, [("customer_id".to_string(), "c".to_string())]);
        assert_eq!(p.limit, MAX_LIMIT);
        let e = Filter::from_query(&q(&[("colour", "red")])).unwrap_err();
        assert_eq!(e.code(), "SF-CON-006");
        assert!(e.to_string().contains("colour"));
        assert!(Filter::from_query(&q(&[("status", "SLEEPING")])).is_err());
        assert!(Filter::from_query(&q(&[("from", "yesterday")])).is_err());
    }
}
