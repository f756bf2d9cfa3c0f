//! How many requests of each Kafka API the broker has served: what a
//! saga, or an idle stack, costs the broker, counted rather than guessed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rama::{Context, Service};
use tansu_sans_io::{Frame, RootMessageMeta};

/// API keys counted one by one; a key past these (none exists in Kafka
/// 4.0) is counted under the last.
const KEYS: usize = 128;

/// Requests served, per API key, since the broker started.
#[derive(Debug)]
pub struct Requests {
    by_key: [AtomicU64; KEYS],
}

impl Default for Requests {
    fn default() -> Self {
        Self {
            by_key: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Requests {
    fn count(&self, api_key: i16) {
        let i = usize::try_from(api_key).map_or(KEYS - 1, |k| k.min(KEYS - 1));
        self.by_key[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far, by API name (`FetchRequest`, `ProduceRequest`, …);
    /// APIs never requested are left out.
    pub fn snapshot(&self) -> RequestCounts {
        let meta = RootMessageMeta::messages().requests();
        let mut counts = BTreeMap::new();
        for (key, n) in self.by_key.iter().enumerate() {
            let n = n.load(Ordering::Relaxed);
            if n == 0 {
                continue;
            }
            let name = i16::try_from(key)
                .ok()
                .and_then(|k| meta.get(&k))
                .map_or_else(|| format!("api key {key}"), |m| m.name.to_owned());
            counts.insert(name, n);
        }
        RequestCounts(counts)
    }
}

/// A snapshot of [`Requests`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestCounts(pub BTreeMap<String, u64>);

impl RequestCounts {
    /// The requests served since `earlier`, per API (APIs with none left out).
    pub fn since(&self, earlier: &RequestCounts) -> RequestCounts {
        RequestCounts(
            self.0
                .iter()
                .filter_map(|(api, n)| {
                    let d = n.saturating_sub(earlier.0.get(api).copied().unwrap_or(0));
                    (d > 0).then(|| (api.clone(), d))
                })
                .collect(),
        )
    }

    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// APIs from the most requested down.
    pub fn busiest(&self) -> Vec<(&str, u64)> {
        let mut v: Vec<_> = self.0.iter().map(|(a, n)| (a.as_str(), *n)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        v
    }
}

/// Counts each request frame by its API key, then routes it.
#[derive(Debug)]
pub(crate) struct Counted<S> {
    pub(crate) inner: S,
    pub(crate) requests: Arc<Requests>,
}

impl<S, State> Service<State, Frame> for Counted<S>
where
    S: Service<State, Frame, Response = Frame>,
    State: Clone + Send + Sync + 'static,
{
    type Response = Frame;
    type Error = S::Error;

    async fn serve(&self, ctx: Context<State>, req: Frame) -> Result<Frame, S::Error> {
        if let Ok(key) = req.api_key() {
            self.requests.count(key);
        }
        self.inner.serve(ctx, req).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tansu_sans_io::ApiKey as _;

    #[test]
    fn counts_by_api_name_and_differences_leave_out_the_idle() {
        let r = Requests::default();
        r.count(tansu_sans_io::FetchRequest::KEY);
        r.count(tansu_sans_io::FetchRequest::KEY);
        r.count(tansu_sans_io::ProduceRequest::KEY);
        let before = r.snapshot();
        assert_eq!(before.0.get("FetchRequest"), Some(&2));
        assert_eq!(before.0.get("ProduceRequest"), Some(&1));
        r.count(tansu_sans_io::FetchRequest::KEY);
        r.count(-1);
        let after = r.snapshot();
        let d = after.since(&before);
        assert_eq!(d.0.get("FetchRequest"), Some(&1));
        assert!(!d.0.contains_key("ProduceRequest"), "{d:?}");
        assert_eq!(d.total(), 2, "the unknown key is counted too: {d:?}");
        assert_eq!(d.busiest()[0].1, 1);
    }
}
