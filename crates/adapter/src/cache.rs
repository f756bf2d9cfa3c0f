//! Bounded TTL caches: the idempotency store and the response cache.

use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::Duration;

use lru::LruCache;
use tokio::time::Instant;

use crate::command::AdapterOutcome;

/// A bounded LRU whose entries also expire.
#[derive(Debug)]
pub(crate) struct TtlLru<V> {
    inner: Mutex<LruCache<String, (Instant, V)>>,
}

impl<V: Clone> TtlLru<V> {
    pub(crate) fn new(capacity: NonZeroUsize) -> Self {
        Self {
            inner: Mutex::new(LruCache::new(capacity)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<String, (Instant, V)>> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn get(&self, key: &str) -> Option<V> {
        let mut lru = self.lock();
        match lru.get(key) {
            Some((expires, v)) if Instant::now() < *expires => Some(v.clone()),
            Some(_) => {
                lru.pop(key);
                None
            }
            None => None,
        }
    }

    pub(crate) fn put(&self, key: String, value: V, ttl: Duration) {
        self.lock().put(key, (Instant::now() + ttl, value));
    }
}

/// Remembers final outcomes of recently completed commands by command id.
/// Small on purpose so that a persistent backend can implement it later.
#[async_trait::async_trait]
pub trait IdempotencyStore: Send + Sync + 'static {
    /// The stored outcome for `command_id`, if it completed recently.
    async fn get(&self, command_id: &str) -> Option<AdapterOutcome>;
    /// Stores a final outcome.
    async fn put(&self, command_id: &str, outcome: &AdapterOutcome);
}

/// In-memory [`IdempotencyStore`]: bounded LRU with TTL.
#[derive(Debug)]
pub struct InMemoryIdempotencyStore {
    entries: TtlLru<AdapterOutcome>,
    ttl: Duration,
}

impl InMemoryIdempotencyStore {
    pub fn new(capacity: NonZeroUsize, ttl: Duration) -> Self {
        Self {
            entries: TtlLru::new(capacity),
            ttl,
        }
    }
}

#[async_trait::async_trait]
impl IdempotencyStore for InMemoryIdempotencyStore {
    async fn get(&self, command_id: &str) -> Option<AdapterOutcome> {
        self.entries.get(command_id)
    }

    async fn put(&self, command_id: &str, outcome: &AdapterOutcome) {
        self.entries
            .put(command_id.to_owned(), outcome.clone(), self.ttl);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn entries_expire_and_are_bounded() {
        let c = TtlLru::new(NonZeroUsize::new(2).unwrap());
        c.put("a".into(), 1, Duration::from_secs(5));
        c.put("b".into(), 2, Duration::from_secs(50));
        assert_eq!(c.get("a"), Some(1));
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(c.get("a"), None);
        assert_eq!(c.get("b"), Some(2));
        c.put("c".into(), 3, Duration::from_secs(50));
        c.put("d".into(), 4, Duration::from_secs(50));
        assert_eq!(c.get("b"), None, "evicted by capacity");
        assert_eq!(c.get("d"), Some(4));
    }

    #[tokio::test]
    async fn idempotency_store_round_trips() {
        let s =
            InMemoryIdempotencyStore::new(NonZeroUsize::new(8).unwrap(), Duration::from_secs(60));
        assert!(s.get("x").await.is_none());
        let o = AdapterOutcome::success(serde_json::json!({"id": 1}));
        s.put("x", &o).await;
        assert_eq!(s.get("x").await, Some(o));
    }
}
