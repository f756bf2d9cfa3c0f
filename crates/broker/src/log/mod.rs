//! Sagaflow's own log engine behind tansu's [`Storage`] trait.
//!
//! [`LogStorage`] keeps the records — produce, fetch, list offsets, offset
//! stage, delete records — in its own per-partition logs, correct by
//! construction (see [`partition`]): a batch is stored before the high
//! watermark moves past it, under the partition's lock, and the watermark
//! is exactly the next offset. Everything else (topics, consumer groups,
//! producer ids, configs) is served by tansu's own in-memory engine, which
//! it wraps.
//!
//! In durable mode each partition is also an append-only segment log on
//! disk ([`segment`]) with an [`Fsync`] policy, and the metadata that must
//! outlive a restart — topics, committed offsets, log starts — goes to a
//! journal ([`journal`]) replayed into the wrapped engine at start.

mod journal;
mod partition;
mod pass;
mod segment;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime};

use crate::router::Arrivals;
use async_trait::async_trait;
use tansu_sans_io::{
    ConfigResource, ErrorCode, IsolationLevel, ListOffset, ScramMechanism,
    create_topics_request::CreatableTopic,
    delete_groups_response::DeletableGroupResult,
    delete_records_request::DeleteRecordsTopic,
    delete_records_response::{DeleteRecordsPartitionResult, DeleteRecordsTopicResult},
    describe_cluster_response::DescribeClusterBroker,
    describe_configs_response::DescribeConfigsResult,
    describe_topic_partitions_response::DescribeTopicPartitionsResponseTopic,
    incremental_alter_configs_request::AlterConfigsResource,
    incremental_alter_configs_response::AlterConfigsResourceResponse,
    list_groups_response::ListedGroup,
    record::deflated,
    txn_offset_commit_response::TxnOffsetCommitResponseTopic,
};
use tansu_storage::{
    BrokerRegistrationRequest, Error, GroupDetail, ListOffsetResponse, MetadataResponse,
    NamedGroupDetail, OffsetCommitRequest, OffsetStage, ProducerIdResponse, Result,
    ScramCredential, Storage, StorageContainer, TopicId, Topition, TxnAddPartitionsRequest,
    TxnAddPartitionsResponse, TxnOffsetCommitRequest, UpdateError, Version,
};
use uuid::Uuid;

use journal::{Entry, Journal};
use partition::{AppendError, Files, Partition};
pub(crate) use pass::fetch_pass;

/// When the durable log fsyncs what it has written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fsync {
    /// Before every produce is acknowledged (and before consumers see it).
    Always,
    /// In the background at this interval: a machine crash loses at most
    /// the last interval; a process crash (kill -9) loses nothing, as every
    /// acknowledged write has reached the operating system.
    Interval(Duration),
    /// Never explicitly; the operating system writes back when it likes.
    Never,
}

impl fmt::Display for Fsync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Always => f.write_str("always"),
            Self::Interval(d) => write!(f, "interval {}", humantime::format_duration(*d)),
            Self::Never => f.write_str("never"),
        }
    }
}

impl FromStr for Fsync {
    type Err = String;

    /// `always`, `never`, or `interval <duration>` (e.g. `interval 100ms`).
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let s = s.trim();
        match s {
            "always" => Ok(Self::Always),
            "never" => Ok(Self::Never),
            _ => {
                let d = s
                    .strip_prefix("interval")
                    .map(str::trim)
                    .filter(|d| !d.is_empty())
                    .ok_or_else(|| {
                        format!(
                            "fsync policy {s:?}: expected `always`, `never` or `interval <duration>`"
                        )
                    })?;
                let d =
                    humantime::parse_duration(d).map_err(|e| format!("fsync policy {s:?}: {e}"))?;
                if d.is_zero() {
                    return Err(format!("fsync policy {s:?}: the interval must not be zero"));
                }
                Ok(Self::Interval(d))
            }
        }
    }
}

/// Where and how the durable log writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Durable {
    pub dir: PathBuf,
    pub fsync: Fsync,
    /// A segment file is closed and a new one begun past this size.
    pub segment_bytes: u64,
}

impl Durable {
    /// The default policy: fsync every 100 ms (see docs/broker.md for the
    /// figures behind the choice).
    pub const DEFAULT_FSYNC: Fsync = Fsync::Interval(Duration::from_millis(100));

    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            fsync: Self::DEFAULT_FSYNC,
            segment_bytes: 64 * 1024 * 1024,
        }
    }
}

struct Disk {
    dir: PathBuf,
    fsync: Fsync,
    segment_bytes: u64,
    journal: Mutex<Journal>,
    /// Tells the background fsync of every write left unsynced.
    writes: Arc<Writes>,
}

impl Drop for Disk {
    fn drop(&mut self) {
        self.writes.close();
    }
}

/// Writes waiting for the background fsync ([`Fsync::Interval`]): the
/// syncer sleeps until there is one, so an idle log costs nothing.
#[derive(Debug, Default)]
struct Writes {
    state: Mutex<WritesState>,
    noted: std::sync::Condvar,
    /// Sync passes made (tests read it).
    passes: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Default)]
struct WritesState {
    pending: bool,
    closed: bool,
}

impl Writes {
    fn lock(&self) -> std::sync::MutexGuard<'_, WritesState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Something was written and not synced.
    fn note(&self) {
        let mut s = self.lock();
        if !s.pending {
            s.pending = true;
            self.noted.notify_one();
        }
    }

    fn close(&self) {
        self.lock().closed = true;
        self.noted.notify_one();
    }

    /// Waits until a write is noted (and takes it: writes noted from here
    /// on wait for the next pass), or the log is closed (false).
    fn wait(&self) -> bool {
        let mut s = self.lock();
        while !s.pending && !s.closed {
            s = self.noted.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        s.pending = false;
        !s.closed
    }
}

struct Inner {
    partitions: RwLock<HashMap<Topition, Arc<Partition>>>,
    disk: Option<Disk>,
    /// Told of every stored batch: fetches waiting for its topic wake.
    arrivals: Arc<Arrivals>,
    /// Metadata of single topics asked for by id.
    by_id: Mutex<ById>,
}

/// The metadata of single topics asked for by id, as tansu's fetch asks for
/// every topic of every fetch (librdkafka names fetched topics by id): the
/// wrapped engine builds each answer anew, 2.5 % of the stack's CPU at one
/// saga in flight. Only a topic found is kept; creating or deleting a topic
/// or registering a broker forgets them all, and an answer built while that
/// happened is not kept.
#[derive(Default)]
struct ById {
    /// Moves on every change that can alter an answer.
    generation: u64,
    responses: HashMap<Uuid, MetadataResponse>,
}

/// At most this many topics' answers are kept (then all are forgotten).
const MAX_BY_ID: usize = 4_096;

/// See the module documentation.
#[derive(Clone)]
pub struct LogStorage {
    meta: StorageContainer,
    log: Arc<Inner>,
}

impl fmt::Debug for LogStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogStorage")
            .field(
                "durable",
                &self.log.disk.as_ref().map(|d| (&d.dir, d.fsync)),
            )
            .finish_non_exhaustive()
    }
}

fn io(e: std::io::Error) -> Error {
    Error::from(e)
}

/// A topic name as a directory name: itself when made of Kafka's legal
/// characters, otherwise percent-encoded (never colliding with a legal one).
fn topic_dir(topic: &str) -> String {
    let legal = !topic.is_empty()
        && topic != "."
        && topic != ".."
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if legal {
        topic.to_owned()
    } else {
        topic.bytes().map(|b| format!("%{b:02x}")).collect()
    }
}

fn offset_stage(log_start: i64, high: i64) -> Result<OffsetStage> {
    // tansu offers no constructor; its serde form is public.
    serde_json::from_value(serde_json::json!({
        "last_stable": high,
        "high_watermark": high,
        "log_start": log_start,
    }))
    .map_err(|e| Error::Message(format!("offset stage: {e}")))
}

impl LogStorage {
    /// Told of every batch this log stores.
    pub(crate) fn arrivals(&self) -> Arc<Arrivals> {
        self.log.arrivals.clone()
    }

    /// A log in memory, with `meta` (tansu's engine, normally `memory://`)
    /// for everything but the records.
    pub fn memory(meta: StorageContainer) -> Self {
        Self {
            meta,
            log: Arc::new(Inner {
                partitions: RwLock::new(HashMap::new()),
                disk: None,
                arrivals: Arc::default(),
                by_id: Mutex::default(),
            }),
        }
    }

    /// A durable log under `durable.dir`: recovers what is there (replaying
    /// the metadata journal into `meta`, which must be empty), then starts
    /// the background fsync if the policy asks for one. Repairs made to a
    /// torn tail are returned for the caller to log.
    pub async fn open(meta: StorageContainer, durable: &Durable) -> Result<(Self, Vec<String>)> {
        let dir = &durable.dir;
        std::fs::create_dir_all(dir.join("log")).map_err(io)?;
        let (journal, state, torn) =
            Journal::open(&dir.join("meta.jsonl")).map_err(Error::Message)?;
        let mut repairs = Vec::new();
        if torn {
            repairs.push(format!(
                "{}: dropped a torn last line",
                journal.path().display()
            ));
        }
        for topic in state.topics.values() {
            meta.create_topic(topic.clone(), false).await?;
        }
        for alter in state.alters.values().flatten() {
            meta.incremental_alter_resource(alter.clone()).await?;
        }
        let mut by_group: BTreeMap<&str, Vec<(Topition, OffsetCommitRequest)>> = BTreeMap::new();
        for ((group, tp), offset) in &state.commits {
            by_group
                .entry(group.as_str())
                .or_default()
                .push((tp.clone(), offset.clone()));
        }
        for (group, offsets) in by_group {
            meta.offset_commit(group, None, &offsets).await?;
        }

        // Partitions: those on disk for live topics; anything else there is
        // a deleted topic's remains.
        let mut partitions = HashMap::new();
        let live: HashMap<String, &CreatableTopic> = state
            .topics
            .values()
            .map(|t| (topic_dir(&t.name), t))
            .collect();
        for entry in std::fs::read_dir(dir.join("log")).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(topic) = live.get(&name) else {
                std::fs::remove_dir_all(entry.path()).map_err(io)?;
                continue;
            };
            for p in std::fs::read_dir(entry.path()).map_err(io)? {
                let p = p.map_err(io)?;
                let Ok(index) = p.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                let tp = Topition::new(topic.name.clone(), index);
                let rec = segment::recover(&p.path()).map_err(io)?;
                repairs.extend(rec.repairs);
                let log_start = state.log_starts.get(&tp).copied().unwrap_or(0);
                let files = Files {
                    dir: p.path(),
                    segment_bytes: durable.segment_bytes,
                    writer: None,
                };
                let partition =
                    Partition::recovered(files, rec.batches, rec.next, log_start, rec.active)
                        .map_err(io)?;
                partitions.insert(tp, Arc::new(partition));
            }
        }
        let storage = Self {
            meta,
            log: Arc::new(Inner {
                partitions: RwLock::new(partitions),
                disk: Some(Disk {
                    dir: dir.clone(),
                    fsync: durable.fsync,
                    segment_bytes: durable.segment_bytes,
                    journal: Mutex::new(journal),
                    writes: Arc::default(),
                }),
                arrivals: Arc::default(),
                by_id: Mutex::default(),
            }),
        };
        if let (Fsync::Interval(every), Some(disk)) = (durable.fsync, &storage.log.disk) {
            spawn_syncer(Arc::downgrade(&storage.log), disk.writes.clone(), every);
        }
        Ok((storage, repairs))
    }

    fn partition(&self, tp: &Topition) -> Result<Arc<Partition>> {
        if let Some(p) = self.log.partitions.read()?.get(tp) {
            return Ok(p.clone());
        }
        let mut all = self.log.partitions.write()?;
        let p = all.entry(tp.clone()).or_insert_with(|| {
            Arc::new(Partition::new(self.log.disk.as_ref().map(|d| {
                Files {
                    dir: d
                        .dir
                        .join("log")
                        .join(topic_dir(tp.topic()))
                        .join(tp.partition().to_string()),
                    segment_bytes: d.segment_bytes,
                    writer: None,
                }
            })))
        });
        Ok(p.clone())
    }

    fn existing(&self, tp: &Topition) -> Result<Option<Arc<Partition>>> {
        Ok(self.log.partitions.read()?.get(tp).cloned())
    }

    fn journal(&self, entry: Entry) -> Result<()> {
        let Some(disk) = &self.log.disk else {
            return Ok(());
        };
        let sync = disk.fsync == Fsync::Always;
        disk.journal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .append(&entry, sync)
            .map_err(io)?;
        disk.writes.note();
        Ok(())
    }

    fn sync_always(&self) -> bool {
        self.log
            .disk
            .as_ref()
            .is_some_and(|d| d.fsync == Fsync::Always)
    }

    async fn topic_name(&self, topic: &TopicId) -> Result<Option<String>> {
        if let TopicId::Name(name) = topic {
            return Ok(Some(name.clone()));
        }
        let metadata = self
            .meta
            .metadata(Some(std::slice::from_ref(topic)))
            .await?;
        Ok(metadata.topics().iter().find_map(|t| t.name.clone()))
    }

    fn lock_by_id(&self) -> std::sync::MutexGuard<'_, ById> {
        self.log.by_id.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets every kept answer: a topic or broker changed.
    fn forget_metadata(&self) {
        let mut by_id = self.lock_by_id();
        by_id.generation += 1;
        by_id.responses.clear();
    }

    /// The metadata of one topic by id, kept after the first answer that
    /// found it (see [`ById`]).
    async fn metadata_by_id(&self, topic: &TopicId, id: Uuid) -> Result<MetadataResponse> {
        let generation = {
            let by_id = self.lock_by_id();
            if let Some(response) = by_id.responses.get(&id) {
                return Ok(response.clone());
            }
            by_id.generation
        };
        let response = self
            .meta
            .metadata(Some(std::slice::from_ref(topic)))
            .await?;
        let found = matches!(
            response.topics(),
            [t] if t.name.is_some() && t.error_code == i16::from(ErrorCode::None)
        );
        let mut by_id = self.lock_by_id();
        if found && by_id.generation == generation {
            if by_id.responses.len() >= MAX_BY_ID {
                by_id.responses.clear();
            }
            by_id.responses.insert(id, response.clone());
        }
        Ok(response)
    }
}

/// Fsyncs dirty segments and the journal `every` after a write is noted
/// (so no later than that after any write), until the log is dropped. With
/// nothing written it sleeps: an idle log does not wake it.
fn spawn_syncer(log: Weak<Inner>, writes: Arc<Writes>, every: Duration) {
    let spawned = std::thread::Builder::new()
        .name("sagaflow-log-fsync".into())
        .spawn(move || {
            while writes.wait() {
                std::thread::sleep(every);
                let Some(log) = log.upgrade() else { return };
                sync_dirty(&log);
                writes
                    .passes
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "could not start the log's fsync thread; syncing never");
    }
}

fn sync_dirty(log: &Inner) {
    let partitions: Vec<Arc<Partition>> = match log.partitions.read() {
        Ok(p) => p.values().cloned().collect(),
        Err(_) => return,
    };
    for p in partitions {
        if let Some(file) = p.take_dirty()
            && let Err(e) = file.sync_data()
        {
            tracing::error!(error = %e, "fsync of a log segment failed");
        }
    }
    if let Some(disk) = &log.disk {
        let handle = {
            let mut j = disk.journal.lock().unwrap_or_else(|p| p.into_inner());
            if !j.dirty {
                None
            } else {
                j.dirty = false;
                j.handle().ok()
            }
        };
        if let Some(f) = handle
            && let Err(e) = f.sync_data()
        {
            tracing::error!(error = %e, "fsync of the metadata journal failed");
        }
    }
}

#[async_trait]
impl Storage for LogStorage {
    async fn register_broker(&self, broker_registration: BrokerRegistrationRequest) -> Result<()> {
        let registered = self.meta.register_broker(broker_registration).await;
        self.forget_metadata();
        registered
    }

    async fn create_topic(&self, topic: CreatableTopic, validate_only: bool) -> Result<Uuid> {
        let id = self.meta.create_topic(topic.clone(), validate_only).await;
        if !validate_only {
            self.forget_metadata();
        }
        let id = id?;
        if !validate_only {
            // A recreated topic starts empty.
            self.log
                .partitions
                .write()?
                .retain(|tp, _| tp.topic() != topic.name);
            for p in 0..topic.num_partitions.max(0) {
                self.partition(&Topition::new(topic.name.clone(), p))?;
            }
            self.journal(Entry::Topic(topic))?;
        }
        Ok(id)
    }

    async fn incremental_alter_resource(
        &self,
        resource: AlterConfigsResource,
    ) -> Result<AlterConfigsResourceResponse> {
        let response = self
            .meta
            .incremental_alter_resource(resource.clone())
            .await?;
        if response.error_code == i16::from(ErrorCode::None)
            && ConfigResource::from(resource.resource_type) == ConfigResource::Topic
        {
            self.journal(Entry::AlterConfigs(resource))?;
        }
        Ok(response)
    }

    async fn delete_records(
        &self,
        topics: &[DeleteRecordsTopic],
    ) -> Result<Vec<DeleteRecordsTopicResult>> {
        let mut results = Vec::new();
        for topic in topics {
            let mut partitions = Vec::new();
            for p in topic.partitions.as_deref().unwrap_or_default() {
                let tp = Topition::new(topic.name.clone(), p.partition_index);
                let result =
                    DeleteRecordsPartitionResult::default().partition_index(p.partition_index);
                let result = match self.existing(&tp)? {
                    None => result
                        .low_watermark(-1)
                        .error_code(ErrorCode::UnknownTopicOrPartition.into()),
                    Some(partition) => match partition.delete_before(p.offset) {
                        None => result
                            .low_watermark(-1)
                            .error_code(ErrorCode::OffsetOutOfRange.into()),
                        Some(low) => {
                            self.journal(Entry::LogStart {
                                topition: tp,
                                offset: low,
                            })?;
                            result.low_watermark(low).error_code(ErrorCode::None.into())
                        }
                    },
                };
                partitions.push(result);
            }
            results.push(
                DeleteRecordsTopicResult::default()
                    .name(topic.name.clone())
                    .partitions(Some(partitions)),
            );
        }
        Ok(results)
    }

    async fn delete_topic(&self, topic: &TopicId) -> Result<ErrorCode> {
        let name = self.topic_name(topic).await?;
        let code = self.meta.delete_topic(topic).await;
        self.forget_metadata();
        let code = code?;
        if code == ErrorCode::None
            && let Some(name) = name
        {
            self.log
                .partitions
                .write()?
                .retain(|tp, _| tp.topic() != name);
            self.journal(Entry::DeleteTopic(name.clone()))?;
            if let Some(disk) = &self.log.disk {
                let dir = disk.dir.join("log").join(topic_dir(&name));
                if dir.exists() {
                    std::fs::remove_dir_all(dir).map_err(io)?;
                }
            }
        }
        Ok(code)
    }

    async fn brokers(&self) -> Result<Vec<DescribeClusterBroker>> {
        self.meta.brokers().await
    }

    async fn produce(
        &self,
        _transaction_id: Option<&str>,
        topition: &Topition,
        batch: deflated::Batch,
    ) -> Result<i64> {
        let partition = self.partition(topition)?;
        let appended = if self.sync_always() {
            // An fsync per batch blocks: keep it off the async workers.
            tokio::task::spawn_blocking(move || partition.append(batch, true))
                .await
                .map_err(|e| Error::Message(format!("append task: {e}")))?
        } else {
            partition.append(batch, false)
        };
        match appended {
            Ok(offset) => {
                if let Some(disk) = &self.log.disk {
                    disk.writes.note();
                }
                self.log.arrivals.arrived(topition.topic());
                Ok(offset)
            }
            Err(AppendError::Refused(code)) => Err(Error::Api(code)),
            Err(AppendError::Io(e)) => {
                tracing::error!(error = %e, topic = topition.topic(), partition = topition.partition(), "appending to the log failed");
                Err(io(e))
            }
        }
    }

    async fn fetch(
        &self,
        topition: &'_ Topition,
        offset: i64,
        _min_bytes: u32,
        max_bytes: u32,
        _isolation: IsolationLevel,
    ) -> Result<Vec<deflated::Batch>> {
        if pass::continues(topition, offset) {
            return Ok(Vec::new());
        }
        let batches = match self.existing(topition)? {
            Some(p) => p.fetch(offset, u64::from(max_bytes)),
            None => Vec::new(),
        };
        pass::answered(topition, offset, &batches);
        Ok(batches)
    }

    async fn offset_stage(&self, topition: &Topition) -> Result<OffsetStage> {
        let (low, high) = self.existing(topition)?.map_or((0, 0), |p| p.watermarks());
        offset_stage(low, high)
    }

    async fn list_offsets(
        &self,
        _isolation_level: IsolationLevel,
        offsets: &[(Topition, ListOffset)],
    ) -> Result<Vec<(Topition, ListOffsetResponse)>> {
        let mut out = Vec::with_capacity(offsets.len());
        for (tp, request) in offsets {
            let partition = self.existing(tp)?;
            let (low, high) = partition.as_ref().map_or((0, 0), |p| p.watermarks());
            let (offset, timestamp) = match request {
                ListOffset::Earliest => (low, None),
                ListOffset::Latest => (high, None),
                ListOffset::Timestamp(at) => {
                    let ms = at
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as i64);
                    match partition.as_ref().and_then(|p| p.offset_for_time(ms)) {
                        Some((offset, ts)) => (
                            offset,
                            Some(SystemTime::UNIX_EPOCH + Duration::from_millis(ts.max(0) as u64)),
                        ),
                        None => (-1, None),
                    }
                }
            };
            out.push((
                tp.clone(),
                ListOffsetResponse {
                    error_code: ErrorCode::None,
                    timestamp,
                    offset: Some(offset),
                },
            ));
        }
        Ok(out)
    }

    async fn offset_commit(
        &self,
        group_id: &str,
        retention_time_ms: Option<Duration>,
        offsets: &[(Topition, OffsetCommitRequest)],
    ) -> Result<Vec<(Topition, ErrorCode)>> {
        // Journal first: an acknowledged commit survives a restart.
        for (tp, offset) in offsets {
            self.journal(Entry::Commit {
                group: group_id.to_owned(),
                topition: tp.clone(),
                offset: offset.clone(),
            })?;
        }
        self.meta
            .offset_commit(group_id, retention_time_ms, offsets)
            .await
    }

    async fn offset_fetch(
        &self,
        group_id: Option<&str>,
        topics: &[Topition],
        require_stable: Option<bool>,
    ) -> Result<BTreeMap<Topition, i64>> {
        self.meta
            .offset_fetch(group_id, topics, require_stable)
            .await
    }

    async fn committed_offset_topitions(&self, group_id: &str) -> Result<BTreeMap<Topition, i64>> {
        self.meta.committed_offset_topitions(group_id).await
    }

    async fn metadata(&self, topics: Option<&[TopicId]>) -> Result<MetadataResponse> {
        match topics {
            Some([topic @ TopicId::Id(id)]) => self.metadata_by_id(topic, *id).await,
            _ => self.meta.metadata(topics).await,
        }
    }

    async fn upsert_user_scram_credential(
        &self,
        user: &str,
        mechanism: ScramMechanism,
        credential: ScramCredential,
    ) -> Result<()> {
        self.meta
            .upsert_user_scram_credential(user, mechanism, credential)
            .await
    }

    async fn delete_user_scram_credential(
        &self,
        user: &str,
        mechanism: ScramMechanism,
    ) -> Result<()> {
        self.meta
            .delete_user_scram_credential(user, mechanism)
            .await
    }

    async fn user_scram_credential(
        &self,
        user: &str,
        mechanism: ScramMechanism,
    ) -> Result<Option<ScramCredential>> {
        self.meta.user_scram_credential(user, mechanism).await
    }

    async fn describe_config(
        &self,
        name: &str,
        resource: ConfigResource,
        keys: Option<&[String]>,
    ) -> Result<DescribeConfigsResult> {
        self.meta.describe_config(name, resource, keys).await
    }

    async fn list_groups(&self, states_filter: Option<&[String]>) -> Result<Vec<ListedGroup>> {
        self.meta.list_groups(states_filter).await
    }

    async fn delete_groups(
        &self,
        group_ids: Option<&[String]>,
    ) -> Result<Vec<DeletableGroupResult>> {
        self.meta.delete_groups(group_ids).await
    }

    async fn describe_groups(
        &self,
        group_ids: Option<&[String]>,
        include_authorized_operations: bool,
    ) -> Result<Vec<NamedGroupDetail>> {
        self.meta
            .describe_groups(group_ids, include_authorized_operations)
            .await
    }

    async fn describe_topic_partitions(
        &self,
        topics: Option<&[TopicId]>,
        partition_limit: i32,
        cursor: Option<Topition>,
    ) -> Result<Vec<DescribeTopicPartitionsResponseTopic>> {
        self.meta
            .describe_topic_partitions(topics, partition_limit, cursor)
            .await
    }

    async fn update_group(
        &self,
        group_id: &str,
        detail: GroupDetail,
        version: Option<Version>,
    ) -> Result<Version, UpdateError<GroupDetail>> {
        self.meta.update_group(group_id, detail, version).await
    }

    async fn init_producer(
        &self,
        transaction_id: Option<&str>,
        transaction_timeout_ms: i32,
        producer_id: Option<i64>,
        producer_epoch: Option<i16>,
    ) -> Result<ProducerIdResponse> {
        self.meta
            .init_producer(
                transaction_id,
                transaction_timeout_ms,
                producer_id,
                producer_epoch,
            )
            .await
    }

    async fn txn_add_offsets(
        &self,
        transaction_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        group_id: &str,
    ) -> Result<ErrorCode> {
        self.meta
            .txn_add_offsets(transaction_id, producer_id, producer_epoch, group_id)
            .await
    }

    async fn txn_add_partitions(
        &self,
        partitions: TxnAddPartitionsRequest,
    ) -> Result<TxnAddPartitionsResponse> {
        self.meta.txn_add_partitions(partitions).await
    }

    async fn txn_offset_commit(
        &self,
        offsets: TxnOffsetCommitRequest,
    ) -> Result<Vec<TxnOffsetCommitResponseTopic>> {
        self.meta.txn_offset_commit(offsets).await
    }

    async fn txn_end(
        &self,
        transaction_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        committed: bool,
    ) -> Result<ErrorCode> {
        self.meta
            .txn_end(transaction_id, producer_id, producer_epoch, committed)
            .await
    }

    async fn maintain(&self, now: SystemTime) -> Result<()> {
        self.meta.maintain(now).await
    }

    async fn cluster_id(&self) -> Result<String> {
        self.meta.cluster_id().await
    }

    async fn node(&self) -> Result<i32> {
        self.meta.node().await
    }

    async fn advertised_listener(&self) -> Result<url::Url> {
        self.meta.advertised_listener().await
    }

    async fn ping(&self) -> Result<()> {
        self.meta.ping().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn memory_log() -> LogStorage {
        let meta = StorageContainer::builder()
            .cluster_id("c")
            .node_id(111)
            .advertised_listener(url::Url::parse("tcp://127.0.0.1:9092").unwrap())
            .storage(url::Url::parse("memory://tansu/").unwrap())
            .silent(true)
            .build()
            .await
            .unwrap();
        LogStorage::memory(meta)
    }

    /// The name the metadata by id gives `id`, as tansu's fetch reads it.
    async fn name_by_id(log: &LogStorage, id: Uuid) -> Option<String> {
        let m = log.metadata(Some(&[TopicId::Id(id)])).await.unwrap();
        m.topics().first().and_then(|t| t.name.clone())
    }

    #[tokio::test]
    async fn metadata_kept_by_id_is_forgotten_when_topics_change() {
        let log = memory_log().await;
        let create = |name: &str| {
            CreatableTopic::default()
                .name(name.into())
                .num_partitions(2)
                .replication_factor(1)
        };
        let first = log.create_topic(create("t"), false).await.unwrap();
        // Asked before the topic exists: not kept as unknown.
        let other = Uuid::from_u128(7);
        assert_eq!(name_by_id(&log, other).await, None);
        assert_eq!(name_by_id(&log, first).await.as_deref(), Some("t"));
        assert_eq!(name_by_id(&log, first).await.as_deref(), Some("t"));
        assert_eq!(
            log.lock_by_id().responses.len(),
            1,
            "the found answer is kept"
        );

        assert_eq!(
            log.delete_topic(&TopicId::Id(first)).await.unwrap(),
            ErrorCode::None
        );
        assert_eq!(
            name_by_id(&log, first).await,
            None,
            "a deleted topic is gone"
        );
        let second = log.create_topic(create("t"), false).await.unwrap();
        assert_ne!(first, second);
        assert_eq!(name_by_id(&log, first).await, None);
        assert_eq!(name_by_id(&log, second).await.as_deref(), Some("t"));
        // Partitions come from the topic created last, not a kept answer.
        let m = log.metadata(Some(&[TopicId::Id(second)])).await.unwrap();
        assert_eq!(m.topics()[0].partitions.as_ref().map(Vec::len), Some(2));
    }

    #[test]
    fn fsync_policies_parse_and_print() {
        assert_eq!("always".parse::<Fsync>().unwrap(), Fsync::Always);
        assert_eq!("never".parse::<Fsync>().unwrap(), Fsync::Never);
        let every = "interval 100ms".parse::<Fsync>().unwrap();
        assert_eq!(every, Fsync::Interval(Duration::from_millis(100)));
        assert_eq!(every.to_string(), "interval 100ms");
        for bad in ["", "sometimes", "interval", "interval 0s", "interval soon"] {
            assert!(bad.parse::<Fsync>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_background_fsync_sleeps_until_a_write_and_stops_with_the_log() {
        use std::sync::atomic::Ordering::Relaxed;
        let log = Arc::new(Inner {
            partitions: RwLock::default(),
            disk: None,
            arrivals: Arc::default(),
            by_id: Mutex::default(),
        });
        let writes = Arc::new(Writes::default());
        spawn_syncer(
            Arc::downgrade(&log),
            writes.clone(),
            Duration::from_millis(5),
        );
        let passes = || writes.passes.load(Relaxed);
        let settled = || {
            // Until the count holds still for 100 ms (at most 5 s).
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            let mut last = passes();
            loop {
                std::thread::sleep(Duration::from_millis(100));
                let now = passes();
                if now == last || std::time::Instant::now() > deadline {
                    return now;
                }
                last = now;
            }
        };
        assert_eq!(settled(), 0, "nothing written: no pass");
        writes.note();
        writes.note();
        let after_writes = settled();
        assert!(
            (1..=2).contains(&after_writes),
            "two writes, one or two passes: {after_writes}"
        );
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(passes(), after_writes, "idle again: no more passes");
        writes.close();
        writes.note();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(passes(), after_writes, "closed: the syncer has stopped");
    }

    #[test]
    fn topic_directories_are_injective_and_safe() {
        assert_eq!(topic_dir("sagaflow.replies"), "sagaflow.replies");
        assert_eq!(topic_dir(".."), "%2e%2e");
        assert_eq!(topic_dir("a/b"), "%61%2f%62");
        assert_ne!(topic_dir("%61"), topic_dir("a"));
    }

    #[test]
    fn offset_stage_is_built_from_its_public_form() {
        let s = offset_stage(3, 10).unwrap();
        assert_eq!(
            (s.log_start(), s.high_watermark(), s.last_stable()),
            (3, 10, 10)
        );
    }
}
