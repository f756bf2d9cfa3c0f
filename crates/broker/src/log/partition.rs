//! One partition's log: the batches in offset order, the watermarks, the
//! idempotent producers' sequences and, in durable mode, the segment file
//! being appended to.
//!
//! Everything a produce changes is changed under the partition's one lock:
//! a batch is stored (and written to its segment) before the high watermark
//! moves past it, so a fetch can never see a watermark above a batch it
//! cannot read, and the watermark is always exactly the next offset.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Mutex;

use tansu_sans_io::ErrorCode;
use tansu_sans_io::record::deflated;

use super::segment;

/// How many recent batches per producer are remembered to answer a
/// retried batch with its original offset (Kafka keeps five too).
const RECENT: usize = 5;

#[derive(Debug)]
struct Stored {
    base: i64,
    /// One past the last offset of the batch.
    end: i64,
    max_timestamp: i64,
    size: u64,
    batch: deflated::Batch,
}

#[derive(Debug, Default)]
struct Producer {
    epoch: i16,
    next_sequence: i32,
    /// (first sequence, last sequence, base offset) of recent batches.
    recent: VecDeque<(i32, i32, i64)>,
}

/// What to do with a produced batch, by its producer's sequence numbers.
#[derive(Debug, PartialEq, Eq)]
enum Admit {
    Append,
    /// A retry of a batch already stored at this offset.
    Duplicate(i64),
    Refuse(ErrorCode),
}

const SEQUENCE_MODULUS: i64 = i32::MAX as i64 + 1;

fn advance(sequence: i32, records: i32) -> i32 {
    ((i64::from(sequence) + i64::from(records)) % SEQUENCE_MODULUS) as i32
}

impl Producer {
    fn admit(&self, batch: &deflated::Batch) -> Admit {
        if batch.producer_epoch < self.epoch {
            return Admit::Refuse(ErrorCode::InvalidProducerEpoch);
        }
        if batch.producer_epoch > self.epoch {
            return Admit::Append;
        }
        let last = advance(batch.base_sequence, batch.last_offset_delta);
        if let Some((_, _, offset)) = self
            .recent
            .iter()
            .find(|(first, l, _)| *first == batch.base_sequence && *l == last)
        {
            return Admit::Duplicate(*offset);
        }
        if batch.base_sequence == self.next_sequence {
            return Admit::Append;
        }
        // Distance ahead of the expected sequence, modulo the wrap.
        let ahead = (i64::from(batch.base_sequence) - i64::from(self.next_sequence))
            .rem_euclid(SEQUENCE_MODULUS);
        if ahead < SEQUENCE_MODULUS / 2 {
            Admit::Refuse(ErrorCode::OutOfOrderSequenceNumber)
        } else {
            Admit::Refuse(ErrorCode::DuplicateSequenceNumber)
        }
    }

    fn appended(&mut self, batch: &deflated::Batch, offset: i64) {
        if batch.producer_epoch != self.epoch {
            self.epoch = batch.producer_epoch;
            self.recent.clear();
        }
        let last = advance(batch.base_sequence, batch.last_offset_delta);
        self.next_sequence = advance(last, 1);
        self.recent.push_back((batch.base_sequence, last, offset));
        if self.recent.len() > RECENT {
            self.recent.pop_front();
        }
    }
}

/// Where a durable partition writes.
#[derive(Debug)]
pub(crate) struct Files {
    pub(crate) dir: PathBuf,
    pub(crate) segment_bytes: u64,
    pub(crate) writer: Option<segment::Writer>,
}

#[derive(Debug, Default)]
struct State {
    log_start: i64,
    next: i64,
    batches: VecDeque<Stored>,
    producers: HashMap<i64, Producer>,
    files: Option<Files>,
}

/// A partition's log; see the module documentation.
#[derive(Debug, Default)]
pub(crate) struct Partition {
    state: Mutex<State>,
}

/// What `append` reports.
#[derive(Debug)]
pub(crate) enum AppendError {
    Refused(ErrorCode),
    Io(std::io::Error),
}

fn stored(batch: deflated::Batch) -> Stored {
    Stored {
        base: batch.base_offset,
        end: batch.base_offset + i64::from(batch.last_offset_delta) + 1,
        max_timestamp: batch.max_timestamp,
        size: batch.record_data.len() as u64,
        batch,
    }
}

impl Partition {
    /// A partition that writes its batches under `files` (durable mode)
    /// or only in memory (`None`).
    pub(crate) fn new(files: Option<Files>) -> Self {
        Self {
            state: Mutex::new(State {
                files,
                ..State::default()
            }),
        }
    }

    /// A durable partition rebuilt from its segments.
    pub(crate) fn recovered(
        files: Files,
        batches: Vec<deflated::Batch>,
        next: i64,
        log_start: i64,
        active: Option<(i64, u64)>,
    ) -> std::io::Result<Self> {
        let mut files = files;
        if let Some((base, len)) = active {
            files.writer = Some(segment::Writer::open(
                &files.dir,
                base,
                len,
                files.segment_bytes,
            )?);
        }
        let batches = batches
            .into_iter()
            .map(stored)
            .filter(|s| s.end > log_start)
            .collect();
        Ok(Self {
            state: Mutex::new(State {
                log_start,
                next: next.max(log_start),
                batches,
                files: Some(files),
                ..State::default()
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves a consistent state: every
        // change below is made after the last fallible step.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores `batch` and returns its base offset. With `sync`, the segment
    /// is fsynced before the watermark moves and the call returns.
    pub(crate) fn append(
        &self,
        mut batch: deflated::Batch,
        sync: bool,
    ) -> Result<i64, AppendError> {
        if batch.last_offset_delta < 0 {
            return Err(AppendError::Refused(ErrorCode::CorruptMessage));
        }
        let mut st = self.lock();
        let idempotent = batch.is_idempotent();
        if idempotent && let Some(p) = st.producers.get(&batch.producer_id) {
            match p.admit(&batch) {
                Admit::Append => {}
                Admit::Duplicate(offset) => return Ok(offset),
                Admit::Refuse(code) => return Err(AppendError::Refused(code)),
            }
        }
        let offset = st.next;
        batch.base_offset = offset;
        let st = &mut *st;
        if let Some(files) = st.files.as_mut() {
            let writer = match files.writer.as_mut() {
                Some(w) => w,
                None => files.writer.insert(
                    segment::Writer::open(&files.dir, offset, 0, files.segment_bytes)
                        .map_err(AppendError::Io)?,
                ),
            };
            writer
                .append(offset, &segment::encode(&batch), sync)
                .map_err(AppendError::Io)?;
        }
        if idempotent {
            st.producers
                .entry(batch.producer_id)
                .or_default()
                .appended(&batch, offset);
        }
        let s = stored(batch);
        st.next = s.end;
        st.batches.push_back(s);
        Ok(offset)
    }

    /// Batches from the one holding `offset` on, up to `max_bytes` (at least
    /// one batch when there is one), never past the high watermark.
    pub(crate) fn fetch(&self, offset: i64, max_bytes: u64) -> Vec<deflated::Batch> {
        let st = self.lock();
        let from = offset.max(st.log_start);
        if from >= st.next {
            return Vec::new();
        }
        let first = st.batches.partition_point(|s| s.end <= from);
        let mut out = Vec::new();
        let mut bytes = 0u64;
        for s in st.batches.range(first..) {
            if !out.is_empty() && bytes + s.size > max_bytes {
                break;
            }
            bytes += s.size;
            out.push(s.batch.clone());
        }
        out
    }

    /// (log start, high watermark).
    pub(crate) fn watermarks(&self) -> (i64, i64) {
        let st = self.lock();
        (st.log_start, st.next)
    }

    /// The first offset of the first batch whose newest record is at or
    /// after `timestamp_ms`, with that timestamp.
    pub(crate) fn offset_for_time(&self, timestamp_ms: i64) -> Option<(i64, i64)> {
        let st = self.lock();
        st.batches
            .iter()
            .find(|s| s.max_timestamp >= timestamp_ms)
            .map(|s| (s.base.max(st.log_start), s.max_timestamp))
    }

    /// Moves the log start to `offset` (-1: the high watermark); returns the
    /// new log start, or None when `offset` is past the high watermark.
    pub(crate) fn delete_before(&self, offset: i64) -> Option<i64> {
        let mut st = self.lock();
        let offset = if offset == -1 { st.next } else { offset };
        if offset > st.next || offset < 0 {
            return None;
        }
        if offset > st.log_start {
            st.log_start = offset;
            while st.batches.front().is_some_and(|s| s.end <= offset) {
                st.batches.pop_front();
            }
        }
        Some(st.log_start)
    }

    /// A handle on the segment written since the last sync, to fsync
    /// outside the lock.
    pub(crate) fn take_dirty(&self) -> Option<std::fs::File> {
        let mut st = self.lock();
        let writer = st.files.as_mut()?.writer.as_mut()?;
        if !writer.dirty {
            return None;
        }
        writer.dirty = false;
        writer.handle().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn batch(records: i32, producer: i64, epoch: i16, sequence: i32) -> deflated::Batch {
        deflated::Batch {
            base_offset: 0,
            batch_length: 0,
            partition_leader_epoch: -1,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: records - 1,
            base_timestamp: 100,
            max_timestamp: 100 + i64::from(records),
            producer_id: producer,
            producer_epoch: epoch,
            base_sequence: sequence,
            record_count: records as u32,
            record_data: Bytes::from(vec![1u8; 100]),
        }
    }

    fn plain(records: i32) -> deflated::Batch {
        batch(records, -1, -1, -1)
    }

    #[test]
    fn offsets_are_dense_and_the_watermark_is_exact() {
        let p = Partition::default();
        assert_eq!(p.append(plain(3), false).unwrap(), 0);
        assert_eq!(p.append(plain(1), false).unwrap(), 3);
        assert_eq!(p.append(plain(5), false).unwrap(), 4);
        assert_eq!(p.watermarks(), (0, 9));
    }

    #[test]
    fn a_fetch_inside_a_batch_returns_that_whole_batch_and_what_fits_after_it() {
        let p = Partition::default();
        p.append(plain(5), false).unwrap(); // 0..5
        p.append(plain(1), false).unwrap(); // 5
        p.append(plain(4), false).unwrap(); // 6..10
        let bases = |b: Vec<deflated::Batch>| b.iter().map(|b| b.base_offset).collect::<Vec<_>>();
        assert_eq!(bases(p.fetch(3, 150)), [0], "max_bytes allows one batch");
        assert_eq!(bases(p.fetch(3, 1 << 20)), [0, 5, 6]);
        // The same offset is always answered the same way, whoever asked
        // before: a fetch leaves nothing behind.
        assert_eq!(bases(p.fetch(8, 1 << 20)), [6]);
        assert!(p.fetch(10, 1 << 20).is_empty());
        p.append(plain(2), false).unwrap(); // 10..12
        assert_eq!(bases(p.fetch(10, 1 << 20)), [10]);
        assert!(p.fetch(12, 1 << 20).is_empty());
    }

    #[test]
    fn retried_batches_get_their_first_offset_and_gaps_are_refused() {
        let p = Partition::default();
        assert_eq!(p.append(batch(2, 7, 0, 0), false).unwrap(), 0);
        assert_eq!(p.append(batch(3, 7, 0, 2), false).unwrap(), 2);
        // A retry of the first batch: acknowledged at its offset, not stored.
        assert_eq!(p.append(batch(2, 7, 0, 0), false).unwrap(), 0);
        assert_eq!(p.watermarks().1, 5);
        assert!(matches!(
            p.append(batch(1, 7, 0, 9), false),
            Err(AppendError::Refused(ErrorCode::OutOfOrderSequenceNumber))
        ));
        assert!(matches!(
            p.append(batch(1, 7, 0, 1), false),
            Err(AppendError::Refused(ErrorCode::DuplicateSequenceNumber))
        ));
        // An older epoch is fenced; a newer one starts over.
        assert_eq!(p.append(batch(1, 7, 1, 0), false).unwrap(), 5);
        assert!(matches!(
            p.append(batch(1, 7, 0, 5), false),
            Err(AppendError::Refused(ErrorCode::InvalidProducerEpoch))
        ));
    }

    #[test]
    fn sequences_wrap_at_i32_max() {
        assert_eq!(advance(i32::MAX, 1), 0);
        let p = Partition::default();
        p.append(batch(1, 3, 0, i32::MAX - 1), false).unwrap();
        p.append(batch(2, 3, 0, i32::MAX), false).unwrap();
        assert_eq!(p.append(batch(1, 3, 0, 1), false).unwrap(), 3);
    }

    #[test]
    fn deleting_records_moves_the_log_start() {
        let p = Partition::default();
        p.append(plain(3), false).unwrap();
        p.append(plain(3), false).unwrap();
        assert_eq!(p.delete_before(4), Some(4));
        assert_eq!(p.watermarks(), (4, 6));
        assert_eq!(p.fetch(0, 1 << 20)[0].base_offset, 3);
        assert_eq!(p.delete_before(7), None);
        assert_eq!(p.delete_before(-1), Some(6));
        assert!(p.fetch(0, 1 << 20).is_empty());
    }

    #[test]
    fn offsets_for_times_find_the_first_batch_at_or_after() {
        let p = Partition::default();
        p.append(plain(3), false).unwrap(); // max_timestamp 103
        let mut later = plain(2);
        later.max_timestamp = 500;
        p.append(later, false).unwrap();
        assert_eq!(p.offset_for_time(50), Some((0, 103)));
        assert_eq!(p.offset_for_time(104), Some((3, 500)));
        assert_eq!(p.offset_for_time(501), None);
    }
}
