//! A store whose log lives in memory: the same log semantics as the
//! changelog topic (offsets per partition, appends in order, records never
//! rewritten) without a broker. Clones share the log, as two processes
//! share a topic: the simulation and the contract suite run owners,
//! replaced owners and crashes against it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{Change, Lease, Restored, SagaStore, StoreError, Written, advance, skip_gap};
use crate::changelog::{self, DeliveredMark, GapScan, Record, Replay};

/// One record of the in-memory log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryRecord {
    pub key: String,
    pub payload: Option<Vec<u8>>,
    /// The writer's epoch (markers have none).
    pub epoch: Option<i64>,
}

/// See the module documentation.
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    log: Arc<Mutex<HashMap<i32, Vec<MemoryRecord>>>>,
    /// Names this owner in its markers.
    owner: String,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Another owner (process) on the same log.
    pub fn owner(&self, name: &str) -> Self {
        Self {
            log: self.log.clone(),
            owner: name.to_owned(),
        }
    }

    /// A copy of partition `p`'s log, for tests to look at.
    pub fn records(&self, p: i32) -> Vec<MemoryRecord> {
        self.lock().get(&p).cloned().unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, Vec<MemoryRecord>>> {
        // A test that panicked while holding the lock leaves a log that is
        // still a valid log: appends are whole.
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn append(log: &mut Vec<MemoryRecord>, r: MemoryRecord) -> i64 {
        log.push(r);
        log.len() as i64 - 1
    }
}

/// Runs a call of a [`MemoryStore`] to completion without a runtime: its
/// futures never wait (the simulation and tests drive it synchronously).
///
/// # Panics
/// If the future is not ready at once (it is not a `MemoryStore` call).
pub fn ready<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(out) => out,
        std::task::Poll::Pending => panic!("the in-memory store never waits"),
    }
}

fn record(offset: usize, r: &MemoryRecord) -> Record<'_> {
    Record {
        offset: offset as i64,
        key: Some(&r.key),
        payload: r.payload.as_deref(),
        epoch: r.epoch,
    }
}

impl SagaStore for MemoryStore {
    async fn take_over(&self, p: i32) -> Result<Restored, StoreError> {
        let mut all = self.lock();
        let log = all.entry(p).or_default();
        let marker = serde_json::to_vec(&changelog::EpochMarker {
            owner: self.owner.clone(),
            partition: p,
        })
        .expect("a marker serialises");
        let epoch = Self::append(
            log,
            MemoryRecord {
                key: format!("{}{p}/{}", changelog::EPOCH_PREFIX, log.len()),
                payload: Some(marker),
                epoch: None,
            },
        );
        let mut replay = Replay::new();
        for (offset, r) in log.iter().enumerate() {
            replay.apply(&record(offset, r));
        }
        Ok(Restored {
            lease: Lease::new(p, epoch),
            replay,
            records: log.len() as u64,
        })
    }

    async fn write(&self, batch: Vec<(&mut Lease, Vec<Change>)>) -> Result<Written, StoreError> {
        let mut all = self.lock();
        let mut written = Written::default();
        for (lease, changes) in batch {
            let had_changes = !changes.is_empty();
            let log = all.entry(lease.partition).or_default();
            let mut offsets: Vec<i64> = changes
                .into_iter()
                .map(|c| {
                    Self::append(
                        log,
                        MemoryRecord {
                            key: c.key,
                            payload: c.payload,
                            epoch: Some(lease.epoch),
                        },
                    )
                })
                .collect();
            if let Some(through) = lease.take_delivered() {
                offsets.push(Self::append(log, mark(lease, through)));
            }
            if offsets.is_empty() || advance(lease, &mut offsets, had_changes) {
                continue;
            }
            let mut scan = GapScan::new(lease.epoch);
            let through = *offsets.last().expect("not empty") as usize;
            for (offset, r) in log.iter().enumerate().take(through + 1) {
                if offset as i64 >= lease.next_offset
                    && !offsets.contains(&(offset as i64))
                    && scan.see(&record(offset, r))
                {
                    break;
                }
            }
            written.foreign += scan.foreign;
            if scan.taken_over {
                written.lost.push(lease.partition);
            } else {
                skip_gap(lease, &offsets, had_changes);
            }
        }
        Ok(written)
    }

    async fn mark_delivered(&self, leases: Vec<&mut Lease>) -> Result<(), StoreError> {
        let mut all = self.lock();
        for lease in leases {
            if let Some(through) = lease.take_delivered() {
                let log = all.entry(lease.partition).or_default();
                Self::append(log, mark(lease, through));
            }
        }
        Ok(())
    }
}

fn mark(lease: &Lease, through: i64) -> MemoryRecord {
    MemoryRecord {
        key: changelog::delivered_key(lease.partition),
        payload: Some(serde_json::to_vec(&DeliveredMark { through }).expect("a mark serialises")),
        epoch: Some(lease.epoch),
    }
}
