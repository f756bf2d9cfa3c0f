//! Durable storage of the registry: an append-only log of [`LogRecord`]s.
//!
//! The registry keeps its whole state in memory and rebuilds it on start by
//! replaying the log, the way Confluent's registry replays its `_schemas`
//! topic. A backend only has to *append one record durably* and *replay every
//! record in order*; [`FileLog`] (JSON lines, fsync on every append) and
//! [`MemoryLog`] (tests) are the two backends so far. A Kafka `_schemas`
//! backend fits the same trait: append = produce and wait for the ack,
//! replay = read the topic from the beginning up to the end offset.

use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::compat::CompatibilityLevel;

/// One change to the registry's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum LogRecord {
    /// `schema` was registered under `subject` as `version`, with global id `id`.
    Schema {
        /// Subject name.
        subject: String,
        /// Version within the subject, from 1.
        version: u32,
        /// Global schema id (shared by every subject registering the same schema).
        id: u32,
        /// `AVRO` (the only type accepted so far).
        schema_type: String,
        /// The schema text as it was registered.
        schema: String,
    },
    /// The subject was deleted: soft (hidden, versions kept) or permanent.
    DeleteSubject {
        /// Subject name.
        subject: String,
        /// `true` for a hard delete (only allowed after a soft delete).
        permanent: bool,
    },
    /// The compatibility level was set, globally (`subject: None`) or for a subject.
    Config {
        /// Subject, or `None` for the global level.
        subject: Option<String>,
        /// The level; `None` removes a subject-level setting.
        compatibility: Option<CompatibilityLevel>,
    },
}

/// Why the log could not be read or written. `Clone` so it can cross tasks.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// An I/O error on the log file.
    #[error("schema log {path}: {message}")]
    Io {
        /// The log file.
        path: PathBuf,
        /// The underlying error.
        message: String,
    },
    /// The log holds as many records as it may; nothing more is accepted.
    #[error(
        "schema log is full: it holds its limit of {limit} records; delete subjects permanently and compact it, or raise the limit"
    )]
    Full {
        /// The most records the log holds.
        limit: usize,
    },
    /// A complete line of the log does not parse.
    #[error("schema log {path}, line {line}: {message}")]
    Corrupt {
        /// The log file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
}

/// A boxed future returned by [`SchemaLog`] methods (keeps the trait object-safe).
pub type StorageFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StorageError>> + Send + 'a>>;

/// An append-only, durable log of registry changes.
pub trait SchemaLog: Send + Sync + 'static {
    /// Appends `record`; resolves once it is durable.
    fn append<'a>(&'a self, record: &'a LogRecord) -> StorageFuture<'a, ()>;
    /// Every record appended so far, oldest first.
    fn replay(&self) -> StorageFuture<'_, Vec<LogRecord>>;
}

/// Most records a log holds by default: every registration, delete and
/// config change is one, and the registry keeps them all in memory.
pub const MAX_LOG_RECORDS: usize = 100_000;

/// In-memory log, for tests: durable only as long as the value lives.
#[derive(Debug, Clone)]
pub struct MemoryLog {
    records: Arc<Mutex<Vec<LogRecord>>>,
    limit: usize,
}

impl Default for MemoryLog {
    fn default() -> Self {
        Self {
            records: Arc::default(),
            limit: MAX_LOG_RECORDS,
        }
    }
}

impl MemoryLog {
    /// An empty log. Clones share the same records.
    pub fn new() -> Self {
        Self::default()
    }

    /// The same log, holding at most `limit` records.
    pub fn with_limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }
}

impl SchemaLog for MemoryLog {
    fn append<'a>(&'a self, record: &'a LogRecord) -> StorageFuture<'a, ()> {
        Box::pin(async move {
            let mut records = self
                .records
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if records.len() >= self.limit {
                return Err(StorageError::Full { limit: self.limit });
            }
            records.push(record.clone());
            Ok(())
        })
    }

    fn replay(&self) -> StorageFuture<'_, Vec<LogRecord>> {
        Box::pin(async move {
            Ok(self
                .records
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone())
        })
    }
}

/// File name of the log inside the data directory.
pub const LOG_FILE_NAME: &str = "schemas.jsonl";

/// A JSON-lines file in a data directory; every append is fsynced.
///
/// A torn last line (crash in the middle of a write) is cut off when the log
/// is opened; any other unparsable line is reported as [`StorageError::Corrupt`].
#[derive(Debug, Clone)]
pub struct FileLog {
    path: PathBuf,
    file: Arc<Mutex<File>>,
    /// Records in the file.
    count: Arc<std::sync::atomic::AtomicUsize>,
    limit: usize,
}

impl FileLog {
    /// Opens (creating if needed) `dir/schemas.jsonl`.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        let path = dir.join(LOG_FILE_NAME);
        let io = |e: std::io::Error| StorageError::Io {
            path: path.clone(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(io)?;
        let mut contents = Vec::new();
        file.read_to_end(&mut contents).map_err(io)?;
        if !contents.is_empty() && !contents.ends_with(b"\n") {
            let keep = contents
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(0, |pos| pos + 1);
            tracing::warn!(path = %path.display(), kept_bytes = keep, "cutting off a torn last line of the schema log");
            file.set_len(keep as u64).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        let count = contents
            .split(|b| *b == b'\n')
            .filter(|line| line.iter().any(|b| !b.is_ascii_whitespace()))
            .count();
        Ok(Self {
            path,
            file: Arc::new(Mutex::new(file)),
            count: Arc::new(std::sync::atomic::AtomicUsize::new(count)),
            limit: MAX_LOG_RECORDS,
        })
    }

    /// The same log, accepting appends only while it holds fewer than
    /// `limit` records (a longer existing log is still replayed).
    pub fn with_limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// Path of the log file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl SchemaLog for FileLog {
    fn append<'a>(&'a self, record: &'a LogRecord) -> StorageFuture<'a, ()> {
        Box::pin(async move {
            let mut line = serde_json::to_vec(record).map_err(|e| StorageError::Io {
                path: self.path.clone(),
                message: e.to_string(),
            })?;
            line.push(b'\n');
            let file = Arc::clone(&self.file);
            let path = self.path.clone();
            let io = move |e: std::io::Error| StorageError::Io {
                path: path.clone(),
                message: e.to_string(),
            };
            let count = Arc::clone(&self.count);
            let limit = self.limit;
            tokio::task::spawn_blocking(move || {
                let mut file = file.lock().unwrap_or_else(|p| p.into_inner());
                // Counted under the file's lock, so concurrent appends
                // cannot pass the limit together.
                if count.load(std::sync::atomic::Ordering::SeqCst) >= limit {
                    return Err(StorageError::Full { limit });
                }
                file.write_all(&line).map_err(&io)?;
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                file.sync_data().map_err(&io)
            })
            .await
            .map_err(|e| StorageError::Io {
                path: self.path.clone(),
                message: format!("append task failed: {e}"),
            })?
        })
    }

    fn replay(&self) -> StorageFuture<'_, Vec<LogRecord>> {
        Box::pin(async move {
            let path = self.path.clone();
            tokio::task::spawn_blocking(move || read_log(&path))
                .await
                .map_err(|e| StorageError::Io {
                    path: self.path.clone(),
                    message: format!("replay task failed: {e}"),
                })?
        })
    }
}

fn read_log(path: &Path) -> Result<Vec<LogRecord>, StorageError> {
    let text = std::fs::read_to_string(path).map_err(|e| StorageError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| {
            serde_json::from_str(line).map_err(|e| StorageError::Corrupt {
                path: path.to_path_buf(),
                line: index + 1,
                message: e.to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records() -> Vec<LogRecord> {
        vec![
            LogRecord::Schema {
                subject: "a-value".into(),
                version: 1,
                id: 1,
                schema_type: "AVRO".into(),
                schema: "\"string\"".into(),
            },
            LogRecord::Config {
                subject: None,
                compatibility: Some(CompatibilityLevel::Full),
            },
            LogRecord::DeleteSubject {
                subject: "a-value".into(),
                permanent: false,
            },
        ]
    }

    /// The contract every backend must meet: replay returns appends in order.
    async fn contract(log: &dyn SchemaLog) {
        assert_eq!(log.replay().await.unwrap(), Vec::new());
        for record in &records() {
            log.append(record).await.unwrap();
        }
        assert_eq!(log.replay().await.unwrap(), records());
    }

    async fn refuses_beyond_its_limit(log: &dyn SchemaLog) {
        for record in &records()[..2] {
            log.append(record).await.unwrap();
        }
        let e = log.append(&records()[2]).await.unwrap_err();
        assert!(matches!(e, StorageError::Full { limit: 2 }), "{e}");
        assert_eq!(log.replay().await.unwrap(), records()[..2].to_vec());
    }

    #[tokio::test]
    async fn logs_are_bounded() {
        refuses_beyond_its_limit(&MemoryLog::new().with_limit(2)).await;
        let dir = tempfile::tempdir().unwrap();
        refuses_beyond_its_limit(&FileLog::open(dir.path()).unwrap().with_limit(2)).await;
        // Reopened, the file's records count toward the limit.
        let reopened = FileLog::open(dir.path()).unwrap().with_limit(2);
        assert!(matches!(
            reopened.append(&records()[2]).await,
            Err(StorageError::Full { .. })
        ));
    }

    #[tokio::test]
    async fn memory_log_meets_contract() {
        contract(&MemoryLog::new()).await;
    }

    #[tokio::test]
    async fn file_log_meets_contract_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        contract(&FileLog::open(dir.path()).unwrap()).await;
        let reopened = FileLog::open(dir.path()).unwrap();
        assert_eq!(reopened.replay().await.unwrap(), records());
    }

    #[tokio::test]
    async fn file_log_cuts_torn_last_line_and_keeps_appending() {
        let dir = tempfile::tempdir().unwrap();
        let log = FileLog::open(dir.path()).unwrap();
        log.append(&records()[0]).await.unwrap();
        let mut file = OpenOptions::new().append(true).open(log.path()).unwrap();
        file.write_all(b"{\"op\":\"sch").unwrap();
        drop(file);
        let reopened = FileLog::open(dir.path()).unwrap();
        reopened.append(&records()[1]).await.unwrap();
        assert_eq!(reopened.replay().await.unwrap(), records()[..2].to_vec());
    }

    #[tokio::test]
    async fn file_log_reports_corrupt_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LOG_FILE_NAME), "not json\n").unwrap();
        let err = FileLog::open(dir.path())
            .unwrap()
            .replay()
            .await
            .unwrap_err();
        assert!(
            matches!(err, StorageError::Corrupt { line: 1, .. }),
            "{err}"
        );
    }
}
