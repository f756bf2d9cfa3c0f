//! The on-disk form of one partition: append-only segment files named by
//! the offset of their first batch (`00000000000000000000.log`), each a
//! sequence of frames `[len: u32][crc32: u32][batch]`, where `batch` is the
//! Kafka record batch exactly as produced, with its base offset set.
//!
//! Recovery keeps the longest valid prefix of the log: the first frame that
//! is short (a torn write), fails its checksum, does not decode, or does not
//! continue the offsets is where the log ends; the file is truncated there
//! and later segments are removed.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tansu_sans_io::record::deflated;

const HEADER: usize = 8;

/// Encodes `batch` (whose base offset is already set) as one frame.
pub(crate) fn encode(batch: &deflated::Batch) -> Vec<u8> {
    let payload = Bytes::from(batch.clone());
    let mut frame = Vec::with_capacity(HEADER + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&crc32fast::hash(&payload).to_be_bytes());
    frame.extend_from_slice(&payload);
    frame
}

/// What a scan of one segment found.
#[derive(Debug)]
pub(crate) struct Scan {
    pub(crate) batches: Vec<deflated::Batch>,
    /// Bytes of valid frames; a file longer than this has a bad tail.
    pub(crate) valid_len: u64,
    /// The offset after the last valid batch.
    pub(crate) next: i64,
    /// Why the scan stopped early, if it did.
    pub(crate) stopped: Option<String>,
}

/// Decodes the frames of `data`, a segment whose first batch has offset
/// `base`. Pure: the caller decides what to do with a bad tail.
pub(crate) fn scan(data: &[u8], base: i64) -> Scan {
    let mut batches = Vec::new();
    let mut pos = 0usize;
    let mut next = base;
    let mut stopped = None;
    while pos < data.len() {
        let rest = &data[pos..];
        if rest.len() < HEADER {
            stopped = Some(format!("torn frame header at byte {pos}"));
            break;
        }
        let len = u32::from_be_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_be_bytes(rest[4..8].try_into().expect("4 bytes"));
        if rest.len() < HEADER + len {
            stopped = Some(format!("torn frame at byte {pos}"));
            break;
        }
        let payload = &rest[HEADER..HEADER + len];
        if crc32fast::hash(payload) != crc {
            stopped = Some(format!("checksum mismatch at byte {pos}"));
            break;
        }
        let batch = match deflated::Batch::try_from(Bytes::copy_from_slice(payload)) {
            Ok(b) => b,
            Err(e) => {
                stopped = Some(format!("undecodable batch at byte {pos}: {e:?}"));
                break;
            }
        };
        if batch.base_offset != next || batch.last_offset_delta < 0 {
            stopped = Some(format!(
                "batch at byte {pos} has offset {}, expected {next}",
                batch.base_offset
            ));
            break;
        }
        next += i64::from(batch.last_offset_delta) + 1;
        batches.push(batch);
        pos += HEADER + len;
    }
    Scan {
        batches,
        valid_len: pos as u64,
        next,
        stopped,
    }
}

pub(crate) fn file_name(base: i64) -> String {
    format!("{base:020}.log")
}

/// The segments in `dir`, in offset order.
pub(crate) fn list(dir: &Path) -> io::Result<Vec<(i64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(".log") else {
            continue;
        };
        if let Ok(base) = stem.parse::<i64>() {
            out.push((base, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// What recovery of one partition directory found.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    pub(crate) batches: Vec<deflated::Batch>,
    pub(crate) next: i64,
    /// The segment to append to: (base offset, length).
    pub(crate) active: Option<(i64, u64)>,
    /// Bad tails truncated and segments removed, for the log.
    pub(crate) repairs: Vec<String>,
}

/// Reads every segment of `dir`, truncating a bad tail (and removing any
/// segment after it), so that appends continue a valid log.
pub(crate) fn recover(dir: &Path) -> io::Result<Recovered> {
    let segments = list(dir)?;
    let mut rec = Recovered::default();
    let mut expected: Option<i64> = None;
    let mut cut = false;
    for (base, path) in segments {
        if cut || expected.is_some_and(|e| e != base) {
            rec.repairs.push(format!(
                "removed {} after a gap or bad tail",
                path.display()
            ));
            std::fs::remove_file(&path)?;
            cut = true;
            continue;
        }
        let data = std::fs::read(&path)?;
        let scan = scan(&data, base);
        rec.batches.extend(scan.batches);
        if let Some(why) = scan.stopped {
            rec.repairs.push(format!(
                "{}: {why}; truncated to {} bytes",
                path.display(),
                scan.valid_len
            ));
            let f = OpenOptions::new().write(true).open(&path)?;
            f.set_len(scan.valid_len)?;
            f.sync_all()?;
            cut = true;
        }
        rec.next = scan.next;
        rec.active = Some((base, scan.valid_len));
        expected = Some(scan.next);
    }
    Ok(rec)
}

/// The segment being appended to.
#[derive(Debug)]
pub(crate) struct Writer {
    dir: PathBuf,
    file: File,
    len: u64,
    segment_bytes: u64,
    /// Written since the last fsync.
    pub(crate) dirty: bool,
}

impl Writer {
    /// Opens (or creates) the segment with first offset `base` at `len`.
    pub(crate) fn open(dir: &Path, base: i64, len: u64, segment_bytes: u64) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(file_name(base));
        let created = !path.exists();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)?;
        if created {
            sync_dir(dir)?;
        }
        Ok(Self {
            dir: dir.to_owned(),
            file,
            len,
            segment_bytes,
            dirty: false,
        })
    }

    /// Appends one frame for the batch starting at `offset`. On failure the
    /// file is cut back to where it was, so the log stays valid.
    pub(crate) fn append(&mut self, offset: i64, frame: &[u8], sync: bool) -> io::Result<()> {
        if self.len > 0 && self.len + frame.len() as u64 > self.segment_bytes {
            self.roll(offset)?;
        }
        let before = self.len;
        let written = self
            .file
            .write_all(frame)
            .and_then(|()| if sync { self.file.sync_data() } else { Ok(()) });
        match written {
            Ok(()) => {
                self.len += frame.len() as u64;
                self.dirty = !sync;
                Ok(())
            }
            Err(e) => {
                let _ = self.file.set_len(before);
                Err(e)
            }
        }
    }

    fn roll(&mut self, base: i64) -> io::Result<()> {
        if self.dirty {
            self.file.sync_data()?;
        }
        *self = Self::open(&self.dir, base, 0, self.segment_bytes)?;
        Ok(())
    }

    /// A handle to fsync outside the partition's lock.
    pub(crate) fn handle(&self) -> io::Result<File> {
        self.file.try_clone()
    }
}

/// Makes a directory entry (a new or renamed file) durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(base: i64, records: i32) -> deflated::Batch {
        deflated::Batch {
            base_offset: base,
            batch_length: 0,
            partition_leader_epoch: -1,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: records - 1,
            base_timestamp: 1,
            max_timestamp: 2,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            record_count: records as u32,
            record_data: Bytes::from(vec![7u8; 10 * records as usize]),
        }
    }

    fn encoded(batch: deflated::Batch) -> Vec<u8> {
        // batch_length as Kafka computes it: everything after the field.
        let mut b = batch;
        b.batch_length = (Bytes::from(b.clone()).len() - 12) as i32;
        encode(&b)
    }

    #[test]
    fn frames_round_trip_and_continue_offsets() {
        let mut data = encoded(batch(5, 3));
        data.extend(encoded(batch(8, 1)));
        let s = scan(&data, 5);
        assert_eq!(s.stopped, None);
        assert_eq!(s.next, 9);
        assert_eq!(s.valid_len, data.len() as u64);
        assert_eq!(
            s.batches.iter().map(|b| b.base_offset).collect::<Vec<_>>(),
            [5, 8]
        );
        assert_eq!(s.batches[0].record_data, batch(5, 3).record_data);
    }

    #[test]
    fn a_torn_or_corrupt_tail_ends_the_log_there() {
        let first = encoded(batch(0, 2));
        let second = encoded(batch(2, 2));
        for cut in [1, HEADER - 1, HEADER + 3, second.len() - 1] {
            let mut data = first.clone();
            data.extend(&second[..cut]);
            let s = scan(&data, 0);
            assert!(s.stopped.is_some(), "cut at {cut}");
            assert_eq!(s.valid_len, first.len() as u64);
            assert_eq!(s.next, 2);
        }
        let mut flipped = first.clone();
        flipped.extend(&second);
        let last = flipped.len() - 1;
        flipped[last] ^= 0xff;
        let s = scan(&flipped, 0);
        assert!(s.stopped.unwrap().contains("checksum"));
        assert_eq!(s.batches.len(), 1);
        // A frame that does not continue the offsets is not part of the log.
        let mut gap = first.clone();
        gap.extend(encoded(batch(7, 1)));
        assert_eq!(scan(&gap, 0).batches.len(), 1);
    }

    #[test]
    fn recovery_truncates_a_torn_tail_and_appends_continue() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::open(dir.path(), 0, 0, 1 << 20).unwrap();
        w.append(0, &encoded(batch(0, 2)), true).unwrap();
        w.append(2, &encoded(batch(2, 1)), false).unwrap();
        drop(w);
        // A torn write: half a frame at the end.
        let path = dir.path().join(file_name(0));
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&encoded(batch(3, 4))[..20]).unwrap();
        drop(f);
        let rec = recover(dir.path()).unwrap();
        assert_eq!(rec.next, 3);
        assert_eq!(rec.batches.len(), 2);
        assert_eq!(rec.repairs.len(), 1, "{:?}", rec.repairs);
        let (base, len) = rec.active.unwrap();
        let mut w = Writer::open(dir.path(), base, len, 1 << 20).unwrap();
        w.append(3, &encoded(batch(3, 4)), true).unwrap();
        let again = recover(dir.path()).unwrap();
        assert_eq!(again.next, 7);
        assert!(again.repairs.is_empty());
    }

    #[test]
    fn segments_roll_at_the_size_limit_and_recover_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::open(dir.path(), 0, 0, 100).unwrap();
        let mut offset = 0;
        for _ in 0..10 {
            w.append(offset, &encoded(batch(offset, 3)), false).unwrap();
            offset += 3;
        }
        drop(w);
        assert!(list(dir.path()).unwrap().len() > 1);
        let rec = recover(dir.path()).unwrap();
        assert_eq!(rec.next, 30);
        assert_eq!(rec.batches.len(), 10);
        // Removing a middle segment cuts the log at the gap.
        let segments = list(dir.path()).unwrap();
        std::fs::remove_file(&segments[1].1).unwrap();
        let rec = recover(dir.path()).unwrap();
        assert_eq!(rec.next, segments[1].0);
        assert!(!rec.repairs.is_empty());
    }
}
