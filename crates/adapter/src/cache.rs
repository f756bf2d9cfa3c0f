//! Bounded TTL caches: the idempotency store and the response cache. Both
//! are bounded by entry count *and* by bytes, and report their size.

use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::Duration;

use lru::LruCache;
use prometheus::IntGauge;
use tokio::time::Instant;

use crate::command::AdapterOutcome;
use crate::config::IdempotencySettings;

/// Fixed per-entry overhead counted on top of key and value (LRU links,
/// the expiry instant, the allocation headers).
const ENTRY_OVERHEAD: usize = 64;

/// The bytes an outcome stored under `key` is counted for: the key, the
/// outcome serialized as JSON, and [`ENTRY_OVERHEAD`].
pub(crate) fn outcome_size(key: &str, outcome: &AdapterOutcome) -> usize {
    let value = serde_json::to_vec(outcome).map_or(0, |v| v.len());
    key.len() + value + ENTRY_OVERHEAD
}

/// `sagaflow_adapter_cache_entries` / `_bytes` of one cache.
#[derive(Debug, Clone)]
pub(crate) struct CacheGauges {
    pub(crate) entries: IntGauge,
    pub(crate) bytes: IntGauge,
}

#[derive(Debug)]
struct Inner<V> {
    lru: LruCache<String, (Instant, V, usize)>,
    bytes: usize,
}

/// A bounded LRU whose entries also expire; bounded by count and by the
/// bytes its entries are counted for.
#[derive(Debug)]
pub(crate) struct TtlLru<V> {
    inner: Mutex<Inner<V>>,
    max_bytes: usize,
    gauges: Option<CacheGauges>,
}

impl<V: Clone> TtlLru<V> {
    pub(crate) fn new(
        capacity: NonZeroUsize,
        max_bytes: usize,
        gauges: Option<CacheGauges>,
    ) -> Self {
        Self {
            inner: Mutex::new(Inner {
                lru: LruCache::new(capacity),
                bytes: 0,
            }),
            max_bytes,
            gauges,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<V>> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn report(&self, inner: &Inner<V>) {
        if let Some(g) = &self.gauges {
            g.entries
                .set(i64::try_from(inner.lru.len()).unwrap_or(i64::MAX));
            g.bytes.set(i64::try_from(inner.bytes).unwrap_or(i64::MAX));
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<V> {
        let mut inner = self.lock();
        let found = match inner.lru.get(key) {
            Some((expires, v, _)) if Instant::now() < *expires => return Some(v.clone()),
            Some(_) => inner.lru.pop(key),
            None => None,
        };
        if let Some((_, _, size)) = found {
            inner.bytes = inner.bytes.saturating_sub(size);
            self.report(&inner);
        }
        None
    }

    /// Stores `value`, counted as `size` bytes, for `ttl`. Evicts the least
    /// recently used entries until both bounds hold; a value larger than
    /// the whole byte bound is not stored.
    pub(crate) fn put(&self, key: String, value: V, size: usize, ttl: Duration) {
        let mut inner = self.lock();
        if size > self.max_bytes {
            if let Some((_, _, old)) = inner.lru.pop(&key) {
                inner.bytes = inner.bytes.saturating_sub(old);
            }
            self.report(&inner);
            return;
        }
        let now = Instant::now();
        let expires = now.checked_add(ttl).unwrap_or(now);
        if let Some((_, (_, _, old))) = inner.lru.push(key, (expires, value, size)) {
            inner.bytes = inner.bytes.saturating_sub(old);
        }
        inner.bytes += size;
        while inner.bytes > self.max_bytes {
            match inner.lru.pop_lru() {
                Some((_, (_, _, old))) => inner.bytes = inner.bytes.saturating_sub(old),
                None => break,
            }
        }
        self.report(&inner);
    }

    /// (entries, bytes) now.
    #[cfg(test)]
    pub(crate) fn size(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.lru.len(), inner.bytes)
    }
}

/// Remembers final outcomes of recently completed commands by Idempotency-Key.
/// Small on purpose so that a persistent backend can implement it.
#[async_trait::async_trait]
pub trait IdempotencyStore: Send + Sync + 'static {
    /// The stored outcome for `command_id`, if it completed recently.
    async fn get(&self, command_id: &str) -> Option<AdapterOutcome>;
    /// Stores a final outcome.
    async fn put(&self, command_id: &str, outcome: &AdapterOutcome);
    /// Stores an outcome restored from the durable log, which completed
    /// `age` ago; it should be forgotten when the store's TTL minus `age`
    /// has passed. The default stores it like [`Self::put`].
    async fn restore(&self, command_id: &str, outcome: &AdapterOutcome, age: Duration) {
        let _ = age;
        self.put(command_id, outcome).await;
    }
}

/// In-memory [`IdempotencyStore`]: LRU with TTL, bounded by count and bytes.
#[derive(Debug)]
pub struct InMemoryIdempotencyStore {
    entries: TtlLru<AdapterOutcome>,
    ttl: Duration,
}

impl InMemoryIdempotencyStore {
    /// A store of at most `capacity` entries (and 64 MiB) kept for `ttl`.
    pub fn new(capacity: NonZeroUsize, ttl: Duration) -> Self {
        Self::with_limits(IdempotencySettings {
            capacity,
            max_bytes: NonZeroUsize::new(64 * 1024 * 1024).unwrap_or(NonZeroUsize::MIN),
            ttl,
        })
    }

    /// A store bounded as `settings` say.
    pub fn with_limits(settings: IdempotencySettings) -> Self {
        Self::with_gauges(settings, None)
    }

    pub(crate) fn with_gauges(settings: IdempotencySettings, gauges: Option<CacheGauges>) -> Self {
        Self {
            entries: TtlLru::new(settings.capacity, settings.max_bytes.get(), gauges),
            ttl: settings.ttl,
        }
    }
}

#[async_trait::async_trait]
impl IdempotencyStore for InMemoryIdempotencyStore {
    async fn get(&self, command_id: &str) -> Option<AdapterOutcome> {
        self.entries.get(command_id)
    }

    async fn put(&self, command_id: &str, outcome: &AdapterOutcome) {
        let size = outcome_size(command_id, outcome);
        self.entries
            .put(command_id.to_owned(), outcome.clone(), size, self.ttl);
    }

    async fn restore(&self, command_id: &str, outcome: &AdapterOutcome, age: Duration) {
        let left = self.ttl.saturating_sub(age);
        if left.is_zero() {
            return;
        }
        let size = outcome_size(command_id, outcome);
        self.entries
            .put(command_id.to_owned(), outcome.clone(), size, left);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn entries_expire_and_are_bounded() {
        let c = TtlLru::new(NonZeroUsize::new(2).unwrap(), 1000, None);
        c.put("a".into(), 1, 10, Duration::from_secs(5));
        c.put("b".into(), 2, 10, Duration::from_secs(50));
        assert_eq!(c.get("a"), Some(1));
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(c.get("a"), None);
        assert_eq!(c.get("b"), Some(2));
        c.put("c".into(), 3, 10, Duration::from_secs(50));
        c.put("d".into(), 4, 10, Duration::from_secs(50));
        assert_eq!(c.get("b"), None, "evicted by capacity");
        assert_eq!(c.get("d"), Some(4));
        assert_eq!(c.size(), (2, 20));
    }

    #[tokio::test]
    async fn bytes_are_bounded_and_reported() {
        let r = prometheus::Registry::new();
        let m = crate::AdapterMetrics::register(&r).unwrap();
        let g = CacheGauges {
            entries: m.cache_entries.with_label_values(&["s", "response"]),
            bytes: m.cache_bytes.with_label_values(&["s", "response"]),
        };
        let c = TtlLru::new(NonZeroUsize::new(100).unwrap(), 100, Some(g.clone()));
        let ttl = Duration::from_secs(60);
        c.put("a".into(), 1, 40, ttl);
        c.put("b".into(), 2, 40, ttl);
        assert_eq!((g.entries.get(), g.bytes.get()), (2, 80));
        c.put("c".into(), 3, 40, ttl);
        assert_eq!(c.get("a"), None, "evicted by bytes");
        assert_eq!((g.entries.get(), g.bytes.get()), (2, 80));
        // Replacing a key counts its new size only.
        c.put("c".into(), 4, 10, ttl);
        assert_eq!(c.size(), (2, 50));
        // A value larger than the whole bound is not kept.
        c.put("huge".into(), 5, 101, ttl);
        assert_eq!(c.get("huge"), None);
        assert_eq!(c.size(), (2, 50));
        assert_eq!(g.bytes.get(), 50);
    }

    #[tokio::test]
    async fn idempotency_store_round_trips_and_restores_with_age() {
        let s =
            InMemoryIdempotencyStore::new(NonZeroUsize::new(8).unwrap(), Duration::from_secs(60));
        assert!(s.get("x").await.is_none());
        let o = AdapterOutcome::success(serde_json::json!({"id": 1}));
        s.put("x", &o).await;
        assert_eq!(s.get("x").await, Some(o.clone()));
        s.restore("old", &o, Duration::from_secs(61)).await;
        assert_eq!(s.get("old").await, None, "older than the TTL");
        s.restore("young", &o, Duration::from_secs(1)).await;
        assert_eq!(s.get("young").await, Some(o));
    }
}
