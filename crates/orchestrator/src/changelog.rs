//! The changelog's record kinds and the rules for reading it back: what a
//! new owner of a partition believes after replaying it. Pure: the Kafka
//! reads and writes live in the driver; everything here is a fold over
//! records in log order, unit- and property-tested.
//!
//! ## Ownership epochs (fencing)
//!
//! A new owner writes an *epoch marker* (key `@sagaflow/epoch/<p>/<uuid>`,
//! never overwritten, so compaction keeps every marker) and restores by
//! reading the partition until it reads its own marker back. It does not
//! trust the high watermark: a broker may report one below records it has
//! acknowledged. The marker's offset is the owner's *epoch*; every record
//! the owner writes carries it in the `sagaflow-epoch` header. Reading in
//! log order, a record whose epoch is older than the newest marker read so
//! far was written by an owner that had already been replaced (a paused
//! or partitioned instance writing late): it is ignored, so a zombie can
//! neither overwrite newer state nor resurrect a saga.

use std::collections::HashMap;

use sagaflow_engine::AwaitedEvent;
use serde::{Deserialize, Serialize};

use crate::core::StoredSaga;

/// Key prefix of ownership markers.
pub const EPOCH_PREFIX: &str = "@sagaflow/epoch/";
/// Key prefix of parked early events (one record per event).
pub const EARLY_PREFIX: &str = "@sagaflow/early/";
/// Key prefix of "this saga id has ended" markers that outlive the state.
pub const ENDED_PREFIX: &str = "@sagaflow/ended/";
/// Key prefix of delivery marks.
pub const DELIVERED_PREFIX: &str = "@sagaflow/delivered/";
/// Header carrying the writer's epoch.
pub const EPOCH_HEADER: &str = "sagaflow-epoch";

/// What a parked early event record holds.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Parked {
    pub saga_id: String,
    pub event: AwaitedEvent,
}

/// What an ended marker holds: the saga id is hashed into the key.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Ended {
    /// Until when (ms since the epoch) a trigger for this saga id is
    /// refused as a replay.
    pub until: u64,
}

/// What a delivery mark holds: every outbox written at or below changelog
/// offset `through` has been delivered.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeliveredMark {
    pub through: i64,
}

/// What an epoch marker holds (for people reading the topic).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct EpochMarker {
    pub owner: String,
    pub partition: i32,
}

/// A stable 64-bit hash of a saga id (FNV-1a): ended markers keep the hash,
/// not the id, to stay compact for days of saga ids.
pub fn saga_hash(saga_id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in saga_id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

pub fn ended_key(hash: u64) -> String {
    format!("{ENDED_PREFIX}{hash:016x}")
}

/// The key of one parked event: saga and message id hashed together, so
/// ids with any characters make a fixed-size key.
pub fn parked_key(saga_id: &str, message_id: &str) -> String {
    format!(
        "{EARLY_PREFIX}{:016x}{:016x}",
        saga_hash(saga_id),
        saga_hash(message_id)
    )
}

pub fn delivered_key(partition: i32) -> String {
    format!("{DELIVERED_PREFIX}{partition}")
}

/// One changelog record as read back.
#[derive(Clone, Debug)]
pub struct Record<'a> {
    pub offset: i64,
    pub key: Option<&'a str>,
    pub payload: Option<&'a [u8]>,
    /// The writer's epoch (`sagaflow-epoch`), if stamped.
    pub epoch: Option<i64>,
}

/// The fencing decision, for an owner that found records of someone else
/// between its own writes: fed those records in log order, it says
/// whether a newer owner took the partition over (an epoch marker after
/// the owner's own) or whether they are only late writes of a replaced
/// owner, which every restore ignores. Every store calls this one rule.
#[derive(Debug)]
pub struct GapScan {
    epoch: i64,
    /// Records in the gap not written by this owner.
    pub foreign: u64,
    /// A newer owner's marker was found.
    pub taken_over: bool,
}

impl GapScan {
    /// A scan for the owner whose marker is at `epoch`.
    pub fn new(epoch: i64) -> Self {
        Self {
            epoch,
            foreign: 0,
            taken_over: false,
        }
    }

    /// Looks at one record of the gap; true once the verdict is "taken
    /// over" (nothing after it can change that).
    pub fn see(&mut self, r: &Record<'_>) -> bool {
        let marker = r.key.is_some_and(|k| k.starts_with(EPOCH_PREFIX));
        if marker && r.offset > self.epoch {
            self.taken_over = true;
        } else if r.epoch != Some(self.epoch) {
            self.foreign += 1;
        }
        self.taken_over
    }
}

/// Everything a partition's changelog says, folded in log order.
#[derive(Debug, Default)]
pub struct Replay {
    /// Each saga's latest record (a [`StoredSaga`], still serialised: only
    /// the survivors are decoded, once, by the core) and the offset it was
    /// written at.
    pub sagas: HashMap<String, (i64, Vec<u8>)>,
    /// Outboxes at or below this offset were delivered.
    pub delivered_through: i64,
    /// Parked events by saga id, each with its record key.
    pub early: HashMap<String, Vec<(String, AwaitedEvent)>>,
    /// Ended saga ids (hashes) and until when they are remembered.
    pub ended: HashMap<u64, u64>,
    /// The newest epoch marker read so far (its offset).
    pub epoch: Option<i64>,
    /// Records ignored because a newer owner had taken over.
    pub fenced: u64,
    /// Records that could not be read (logged by the caller).
    pub unreadable: Vec<(i64, String)>,
}

impl Replay {
    /// The latest record of a saga, decoded.
    pub fn saga(&self, saga_id: &str) -> Option<Result<StoredSaga, serde_json::Error>> {
        self.sagas
            .get(saga_id)
            .map(|(_, bytes)| serde_json::from_slice(bytes))
    }

    pub fn new() -> Self {
        Self {
            delivered_through: -1,
            ..Self::default()
        }
    }

    /// Applies one record, in log order.
    pub fn apply(&mut self, r: &Record<'_>) {
        let Some(key) = r.key else { return };
        if key.starts_with(EPOCH_PREFIX) {
            self.epoch = Some(self.epoch.map_or(r.offset, |e| e.max(r.offset)));
            return;
        }
        // Fencing: a record stamped with an epoch older than the newest
        // marker was written by a replaced owner after its replacement.
        // Unstamped records predate epochs and count only before the first
        // marker.
        let current = self.epoch;
        let stale = match (r.epoch, current) {
            (_, None) => false,
            (Some(e), Some(c)) => e < c,
            (None, Some(_)) => true,
        };
        if stale {
            self.fenced += 1;
            return;
        }
        if key.starts_with(DELIVERED_PREFIX) {
            match r.payload.map(serde_json::from_slice::<DeliveredMark>) {
                Some(Ok(m)) => self.delivered_through = self.delivered_through.max(m.through),
                _ => self
                    .unreadable
                    .push((r.offset, "unreadable delivery mark".to_owned())),
            }
            return;
        }
        if let Some(hex) = key.strip_prefix(ENDED_PREFIX) {
            let Ok(hash) = u64::from_str_radix(hex, 16) else {
                self.unreadable
                    .push((r.offset, format!("ended marker with a bad key `{key}`")));
                return;
            };
            match r.payload.map(serde_json::from_slice::<Ended>) {
                None => {
                    self.ended.remove(&hash);
                }
                Some(Ok(e)) => {
                    self.ended.insert(hash, e.until);
                }
                Some(Err(e)) => self
                    .unreadable
                    .push((r.offset, format!("unreadable ended marker: {e}"))),
            }
            return;
        }
        if key.starts_with(EARLY_PREFIX) {
            self.apply_parked(r, key);
            return;
        }
        match r.payload {
            None => {
                self.sagas.remove(key);
            }
            Some(bytes) => {
                self.sagas
                    .insert(key.to_owned(), (r.offset, bytes.to_vec()));
            }
        }
    }

    fn apply_parked(&mut self, r: &Record<'_>, key: &str) {
        let Some(bytes) = r.payload else {
            // A tombstone: the event was applied or expired. Legacy keys
            // (`@sagaflow/early/<saga id>`, one record of all events) name
            // the saga; current keys name the event.
            let legacy = key.strip_prefix(EARLY_PREFIX).unwrap_or_default();
            self.early.remove(legacy);
            for events in self.early.values_mut() {
                events.retain(|(k, _)| k != key);
            }
            self.early.retain(|_, v| !v.is_empty());
            return;
        };
        if let Ok(p) = serde_json::from_slice::<Parked>(bytes) {
            let slot = self.early.entry(p.saga_id).or_default();
            slot.retain(|(k, _)| k != key);
            slot.push((key.to_owned(), p.event));
            return;
        }
        // Written before one record per event: a list under the saga's key.
        match serde_json::from_slice::<Vec<AwaitedEvent>>(bytes) {
            Ok(events) => {
                let saga_id = key.strip_prefix(EARLY_PREFIX).unwrap_or_default();
                self.early.insert(
                    saga_id.to_owned(),
                    events.into_iter().map(|e| (key.to_owned(), e)).collect(),
                );
            }
            Err(e) => self
                .unreadable
                .push((r.offset, format!("unreadable parked event `{key}`: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use sagaflow_engine::{SagaState, Timestamp};
    use serde_json::json;

    fn stored(id: &str, seq: u64) -> Vec<u8> {
        let mut state: SagaState = serde_json::from_value(json!({
            "version": 1,
            "saga_id": id,
            "saga_type": "t",
            "saga_version": 1,
            "key": id,
            "status": "running",
            "trigger": {},
            "started_at": 0,
            "updated_at": 0,
            "seq": seq
        }))
        .unwrap_or_else(|e| panic!("test state: {e}"));
        state.updated_at = Timestamp(seq);
        serde_json::to_vec(&StoredSaga {
            state,
            outbox: Vec::new(),
            traceparent: None,
            trigger_traceparent: None,
            tracestate: None,
        })
        .unwrap()
    }

    fn rec<'a>(
        offset: i64,
        key: &'a str,
        payload: Option<&'a [u8]>,
        epoch: Option<i64>,
    ) -> Record<'a> {
        Record {
            offset,
            key: Some(key),
            payload,
            epoch,
        }
    }

    fn seq_of(r: &Replay, id: &str) -> Option<u64> {
        r.saga(id).map(|s| s.expect("readable").state.seq)
    }

    #[test]
    fn a_replaced_owner_writing_late_is_ignored() {
        let (a1, a2, b1) = (stored("s", 1), stored("s", 2), stored("s", 3));
        let zombie = stored("s", 9);
        let mut r = Replay::new();
        r.apply(&rec(0, "@sagaflow/epoch/0/a", Some(b"{}"), None));
        r.apply(&rec(1, "s", Some(&a1), Some(0)));
        r.apply(&rec(2, "s", Some(&a2), Some(0)));
        // B takes over at offset 3 ...
        r.apply(&rec(3, "@sagaflow/epoch/0/b", Some(b"{}"), None));
        r.apply(&rec(4, "s", Some(&b1), Some(3)));
        // ... and A, resumed, writes once more: ignored.
        r.apply(&rec(5, "s", Some(&zombie), Some(0)));
        r.apply(&rec(6, "z", Some(&zombie), Some(0)));
        assert_eq!(seq_of(&r, "s"), Some(3));
        assert!(!r.sagas.contains_key("z"));
        assert_eq!(r.fenced, 2);
        assert_eq!(r.epoch, Some(3));
    }

    #[test]
    fn unstamped_records_count_only_before_the_first_marker() {
        let s = stored("s", 1);
        let mut r = Replay::new();
        r.apply(&rec(0, "s", Some(&s), None));
        r.apply(&rec(1, "@sagaflow/epoch/0/a", Some(b"{}"), None));
        r.apply(&rec(2, "t", Some(&s), None));
        assert!(r.sagas.contains_key("s"));
        assert!(!r.sagas.contains_key("t"));
    }

    #[test]
    fn parked_events_one_record_each_and_legacy_lists() {
        let ev = |id: &str| AwaitedEvent {
            message_id: id.to_owned(),
            topic: "t".to_owned(),
            event_type: "E".to_owned(),
            payload: json!({}),
        };
        let k1 = parked_key("s", "m1");
        let k2 = parked_key("s", "m2");
        let p1 = serde_json::to_vec(&Parked {
            saga_id: "s".into(),
            event: ev("m1"),
        })
        .unwrap();
        let p2 = serde_json::to_vec(&Parked {
            saga_id: "s".into(),
            event: ev("m2"),
        })
        .unwrap();
        let legacy = serde_json::to_vec(&vec![ev("old")]).unwrap();
        let mut r = Replay::new();
        r.apply(&rec(0, &k1, Some(&p1), None));
        r.apply(&rec(1, &k2, Some(&p2), None));
        r.apply(&rec(2, "@sagaflow/early/legacy-saga", Some(&legacy), None));
        assert_eq!(r.early["s"].len(), 2);
        assert_eq!(r.early["legacy-saga"][0].1.message_id, "old");
        r.apply(&rec(3, &k1, None, None));
        assert_eq!(r.early["s"].len(), 1);
        r.apply(&rec(4, "@sagaflow/early/legacy-saga", None, None));
        assert!(!r.early.contains_key("legacy-saga"));
    }

    #[test]
    fn ended_markers_and_delivery_marks() {
        let mut r = Replay::new();
        let k = ended_key(saga_hash("s"));
        r.apply(&rec(0, &k, Some(br#"{"until":99}"#), None));
        r.apply(&rec(
            1,
            "@sagaflow/delivered/0",
            Some(br#"{"through":7}"#),
            None,
        ));
        r.apply(&rec(
            2,
            "@sagaflow/delivered/0",
            Some(br#"{"through":5}"#),
            None,
        ));
        assert_eq!(r.ended.get(&saga_hash("s")), Some(&99));
        assert_eq!(r.delivered_through, 7);
        r.apply(&rec(3, &k, None, None));
        assert!(r.ended.is_empty());
        r.apply(&rec(4, "@sagaflow/delivered/0", Some(b"nonsense"), None));
        assert_eq!(r.unreadable.len(), 1);
    }

    /// A record of a simulated log: key, value, epoch stamp.
    type LogEntry = (Option<String>, Option<Vec<u8>>, Option<i64>);

    /// One owner's writes: (epoch index, saga, seq).
    fn owners() -> impl Strategy<Value = Vec<(usize, u8, u64)>> {
        prop::collection::vec((0usize..4, 0u8..4, 1u64..1000), 1..60)
    }

    proptest! {
        /// Whatever interleaving of owners' writes reaches the log, the
        /// replay holds, for each saga, the latest write of the newest owner
        /// that had taken over when it was written, and never a write an
        /// already-replaced owner made later.
        #[test]
        fn replay_keeps_only_writes_of_the_owner_in_charge(writes in owners()) {
            // Owners take over in order 0, 1, 2, 3; owner k's marker is
            // written just before its first write (a takeover) and every
            // write carries its writer's epoch.
            let mut log: Vec<LogEntry> = Vec::new();
            let mut marker_of: HashMap<usize, i64> = HashMap::new();
            let mut newest: Option<usize> = None;
            let mut expected: HashMap<String, u64> = HashMap::new();
            for (owner, saga, seq) in writes {
                if !marker_of.contains_key(&owner) && newest.is_none_or(|n| owner > n) {
                    marker_of.insert(owner, log.len() as i64);
                    log.push((Some(format!("@sagaflow/epoch/0/{owner}")), Some(b"{}".to_vec()), None));
                    newest = Some(owner);
                }
                let Some(&epoch) = marker_of.get(&owner) else { continue };
                let id = format!("s{saga}");
                if Some(owner) == newest {
                    expected.insert(id.clone(), seq);
                }
                log.push((Some(id.clone()), Some(stored(&id, seq)), Some(epoch)));
            }
            let mut r = Replay::new();
            for (i, (k, p, e)) in log.iter().enumerate() {
                r.apply(&Record { offset: i as i64, key: k.as_deref(), payload: p.as_deref(), epoch: *e });
            }
            let got: HashMap<String, u64> = r.sagas.keys().map(|k| (k.clone(), seq_of(&r, k).expect("a saga"))).collect();
            prop_assert_eq!(got, expected);
        }
    }
}
