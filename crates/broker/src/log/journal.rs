//! The durable mode's metadata journal, `meta.jsonl`: one JSON line per
//! change to what must survive a restart besides the records themselves —
//! topics (with their configs), committed consumer-group offsets and log
//! starts. It is replayed into a fresh tansu metadata store at start and
//! then rewritten compacted (latest value of each), so it stays small.
//!
//! A torn last line (a crash mid-write) is dropped; a bad line anywhere
//! else is corruption and refuses the start.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tansu_sans_io::create_topics_request::CreatableTopic;
use tansu_sans_io::incremental_alter_configs_request::AlterConfigsResource;
use tansu_storage::{OffsetCommitRequest, Topition};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Entry {
    Topic(CreatableTopic),
    AlterConfigs(AlterConfigsResource),
    DeleteTopic(String),
    Commit {
        group: String,
        topition: Topition,
        offset: OffsetCommitRequest,
    },
    LogStart {
        topition: Topition,
        offset: i64,
    },
}

/// The state the journal describes, latest value of each.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Meta {
    pub(crate) topics: BTreeMap<String, CreatableTopic>,
    pub(crate) alters: BTreeMap<String, Vec<AlterConfigsResource>>,
    pub(crate) commits: BTreeMap<(String, Topition), OffsetCommitRequest>,
    pub(crate) log_starts: BTreeMap<Topition, i64>,
}

impl Meta {
    pub(crate) fn apply(&mut self, entry: Entry) {
        match entry {
            Entry::Topic(t) => {
                self.forget(&t.name);
                self.topics.insert(t.name.clone(), t);
            }
            Entry::AlterConfigs(a) => {
                if self.topics.contains_key(&a.resource_name) {
                    self.alters
                        .entry(a.resource_name.clone())
                        .or_default()
                        .push(a);
                }
            }
            Entry::DeleteTopic(name) => {
                self.topics.remove(&name);
                self.forget(&name);
            }
            Entry::Commit {
                group,
                topition,
                offset,
            } => {
                self.commits.insert((group, topition), offset);
            }
            Entry::LogStart { topition, offset } => {
                self.log_starts.insert(topition, offset);
            }
        }
    }

    fn forget(&mut self, topic: &str) {
        self.alters.remove(topic);
        self.commits.retain(|(_, tp), _| tp.topic() != topic);
        self.log_starts.retain(|tp, _| tp.topic() != topic);
    }

    /// The entries that rebuild this state.
    pub(crate) fn entries(&self) -> Vec<Entry> {
        let mut out: Vec<Entry> = self.topics.values().cloned().map(Entry::Topic).collect();
        out.extend(
            self.alters
                .values()
                .flatten()
                .cloned()
                .map(Entry::AlterConfigs),
        );
        out.extend(
            self.commits
                .iter()
                .filter(|((_, tp), _)| self.topics.contains_key(tp.topic()))
                .map(|((group, topition), offset)| Entry::Commit {
                    group: group.clone(),
                    topition: topition.clone(),
                    offset: offset.clone(),
                }),
        );
        out.extend(self.log_starts.iter().map(|(tp, o)| Entry::LogStart {
            topition: tp.clone(),
            offset: *o,
        }));
        out
    }
}

/// Parses journal text; a bad or unterminated last line is a torn write
/// and is dropped (`torn` says so), a bad line before it is an error.
pub(crate) fn parse(text: &str) -> Result<(Vec<Entry>, bool), String> {
    let mut entries = Vec::new();
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    for (i, line) in lines.iter().enumerate() {
        let last = i + 1 == lines.len();
        if !line.ends_with('\n') {
            return Ok((entries, true));
        }
        let body = line.trim_end();
        if body.is_empty() {
            continue;
        }
        match serde_json::from_str::<Entry>(body) {
            Ok(e) => entries.push(e),
            Err(_) if last => return Ok((entries, true)),
            Err(e) => return Err(format!("line {}: {e}", i + 1)),
        }
    }
    Ok((entries, false))
}

/// The open journal, appended to under a lock by the storage.
#[derive(Debug)]
pub(crate) struct Journal {
    path: PathBuf,
    file: File,
    pub(crate) dirty: bool,
}

impl Journal {
    /// Reads the journal at `path` (absent: empty), then rewrites it
    /// compacted and opens it for appending.
    pub(crate) fn open(path: &Path) -> Result<(Self, Meta, bool), String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let (entries, torn) = parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut meta = Meta::default();
        for e in entries {
            meta.apply(e);
        }
        rewrite(path, &meta.entries()).map_err(|e| format!("{}: {e}", path.display()))?;
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok((
            Self {
                path: path.to_owned(),
                file,
                dirty: false,
            },
            meta,
            torn,
        ))
    }

    /// Appends one entry as one write; with `sync`, fsyncs before returning.
    pub(crate) fn append(&mut self, entry: &Entry, sync: bool) -> io::Result<()> {
        let mut line = serde_json::to_vec(entry).map_err(io::Error::other)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        if sync {
            self.file.sync_data()?;
        } else {
            self.dirty = true;
        }
        Ok(())
    }

    pub(crate) fn handle(&self) -> io::Result<File> {
        self.file.try_clone()
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

/// Replaces the journal atomically: a temporary file, fsynced, renamed.
fn rewrite(path: &Path, entries: &[Entry]) -> io::Result<()> {
    let tmp = path.with_extension("jsonl.tmp");
    let mut f = File::create(&tmp)?;
    for e in entries {
        let mut line = serde_json::to_vec(e).map_err(io::Error::other)?;
        line.push(b'\n');
        f.write_all(&line)?;
    }
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        super::segment::sync_dir(dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(name: &str) -> Entry {
        Entry::Topic(
            CreatableTopic::default()
                .name(name.into())
                .num_partitions(2)
                .replication_factor(1),
        )
    }

    fn commit(group: &str, topic: &str, offset: i64) -> Entry {
        Entry::Commit {
            group: group.into(),
            topition: Topition::new(topic, 0),
            offset: OffsetCommitRequest::default().offset(offset),
        }
    }

    #[test]
    fn replay_keeps_the_latest_of_each_and_forgets_deleted_topics() {
        let mut meta = Meta::default();
        for e in [
            topic("a"),
            topic("b"),
            commit("g", "a", 3),
            commit("g", "a", 7),
            commit("g", "b", 1),
            Entry::DeleteTopic("b".into()),
        ] {
            meta.apply(e);
        }
        assert_eq!(meta.topics.keys().collect::<Vec<_>>(), ["a"]);
        let entries = meta.entries();
        assert_eq!(entries, [topic("a"), commit("g", "a", 7)]);
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_a_bad_middle_line_refused() {
        let good = serde_json::to_string(&topic("a")).unwrap();
        let (entries, torn) = parse(&format!("{good}\n{{\"topic\":")).unwrap();
        assert_eq!((entries.len(), torn), (1, true));
        let (entries, torn) = parse(&format!("{good}\n{good}\n")).unwrap();
        assert_eq!((entries.len(), torn), (2, false));
        assert!(parse(&format!("{good}\nnot json\n{good}\n")).is_err());
    }

    #[test]
    fn the_journal_survives_reopening_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.jsonl");
        let (mut j, meta, _) = Journal::open(&path).unwrap();
        assert_eq!(meta, Meta::default());
        for e in [topic("a"), commit("g", "a", 1), commit("g", "a", 2)] {
            j.append(&e, true).unwrap();
        }
        drop(j);
        // A crash mid-append leaves half a line.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"commit\":{\"gro").unwrap();
        drop(f);
        let (_, meta, torn) = Journal::open(&path).unwrap();
        assert!(torn);
        assert_eq!(meta.entries(), [topic("a"), commit("g", "a", 2)]);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2, "rewritten compacted: {text}");
    }
}
