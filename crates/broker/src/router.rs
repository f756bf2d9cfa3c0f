//! The request router: tansu's services, with a fetch that answers as soon
//! as records are there.
//!
//! tansu 0.6.0's fetch polls its storage and then sleeps the rest of
//! `max.wait.ms` before it answers, records or not: every fetch took the
//! whole wait, so each consume hop of a saga cost the consumer's
//! `fetch.wait.max.ms`, and an idle consumer had to choose between slow
//! round trips (a long wait) and busy polling (a short one). Over Sagaflow's
//! own log the embedded broker answers as Kafka does instead: at once when
//! the fetch finds records, otherwise when a produce to any partition wakes
//! it (then it looks again) or when the wait is over.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rama::layer::{MapErrLayer, MapStateLayer};
use rama::{Context, Layer as _, Service};
use tansu_broker::Error;
use tansu_broker::coordinator::group::Coordinator;
use tansu_broker::service::{auth, coordinator, storage as routes};
use tansu_sans_io::fetch_request::FetchTopic;
use tansu_sans_io::{ApiKey as _, FetchRequest, FetchResponse, Frame, Header};
use tansu_service::{
    FrameRequestLayer, FrameRouteBuilder, FrameRouteService, TcpBytesLayer, TcpBytesService,
    TcpContext, TcpContextLayer, TcpContextService,
};
use tansu_storage::{FetchService, Storage, TopicId};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::requests::{Counted, Requests};

/// A connection's service: Kafka frames in, routed, frames out.
pub(crate) type Router =
    TcpContextService<TcpBytesService<Frames<Counted<FrameRouteService<(), Error>>>, ()>>;

type Routes = FrameRouteBuilder<(), Error>;
/// One of tansu's route functions: adds its request's route over `S`.
type AddRoute<S> = fn(Routes, S) -> Result<Routes, Error>;

/// tansu's storage routes but fetch (tansu_broker::service::storage::services
/// lists the same, with fetch).
fn storage_routes<S: Storage>() -> [AddRoute<S>; 25] {
    [
        routes::add_offsets_to_txn,
        routes::add_partitions_to_txn,
        routes::alter_user_scram_credentials,
        routes::consumer_group_describe,
        routes::create_acls,
        routes::create_topics,
        routes::delete_groups,
        routes::delete_records,
        routes::delete_topics,
        routes::describe_acls,
        routes::describe_cluster,
        routes::describe_configs,
        routes::describe_groups,
        routes::describe_topic_partitions,
        routes::describe_user_scram_credentials,
        routes::find_coordinator,
        routes::get_telemetry_subscriptions,
        routes::incremental_alter_configs,
        routes::init_producer_id,
        routes::list_groups,
        routes::list_offsets,
        routes::list_partition_reassignments,
        routes::metadata,
        routes::produce,
        routes::txn_offset_commit_request,
    ]
}

/// The router over `storage`. With `arrivals` (which every batch stored
/// in `storage` fires), fetches answer promptly ([`PromptFetch`]); without,
/// they are tansu's own. Every request is counted in `requests`.
pub(crate) fn router<S: Storage, C: Coordinator>(
    cluster_id: &str,
    groups: C,
    storage: S,
    arrivals: Option<Arc<Arrivals>>,
    requests: Arc<Requests>,
) -> Result<Router, Error> {
    let builder = storage_routes::<S>()
        .iter()
        .try_fold(FrameRouteService::<(), Error>::builder(), |b, route| {
            route(b, storage.clone())
        })?;
    let fetch = MapStateLayer::new(move |_| storage.clone());
    let builder = match arrivals {
        Some(arrivals) => builder.with_route(
            FetchRequest::KEY,
            (
                MapErrLayer::new(Error::from),
                fetch,
                FrameRequestLayer::<FetchRequest>::new(),
            )
                .into_layer(PromptFetch { arrivals })
                .boxed(),
        ),
        None => builder.with_route(
            FetchRequest::KEY,
            (
                MapErrLayer::new(Error::from),
                fetch,
                FrameRequestLayer::<FetchRequest>::new(),
            )
                .into_layer(FetchService)
                .boxed(),
        ),
    }?;
    let route = auth::services(coordinator::services(builder, groups)?)?.build()?;
    Ok((
        TcpContextLayer::new(TcpContext::default().cluster_id(Some(cluster_id.into()))),
        TcpBytesLayer::default(),
    )
        .into_layer(Frames {
            inner: Counted {
                inner: route,
                requests,
            },
            inline_bytes: DECODE_INLINE_BYTES,
        }))
}

/// Request frames larger than this are decoded on tokio's blocking pool,
/// so that a large produce does not hold an async worker; smaller ones
/// (nearly all: fetches, heartbeats, a saga's records) where they arrive.
pub(crate) const DECODE_INLINE_BYTES: usize = 256 * 1024;

/// Kafka frames in, routed, frames out: what tansu's `BytesFrameService`
/// does without SASL (this broker listens on loopback only), except that
/// it decodes and encodes on the connection's own task. tansu's hands both
/// to tokio's blocking pool: two thread hand-offs per request, which were
/// most of an idle broker's context switches.
#[derive(Debug)]
pub(crate) struct Frames<S> {
    inner: S,
    /// Larger request frames are decoded on the blocking pool.
    inline_bytes: usize,
}

impl<S, State> Service<State, Bytes> for Frames<S>
where
    S: Service<State, Frame, Response = Frame>,
    S::Error: From<tansu_sans_io::Error> + From<tokio::task::JoinError>,
    State: Clone + Send + Sync + 'static,
{
    type Response = Bytes;
    type Error = S::Error;

    async fn serve(&self, ctx: Context<State>, req: Bytes) -> Result<Bytes, S::Error> {
        let req = if req.len() <= self.inline_bytes {
            Frame::request_from_bytes(req)?
        } else {
            tokio::task::spawn_blocking(move || Frame::request_from_bytes(req)).await??
        };
        let (api_key, api_version) = (req.api_key()?, req.api_version()?);
        let correlation_id = req.correlation_id()?;
        let Frame { body, .. } = self.inner.serve(ctx, req).await?;
        Ok(Frame::response(
            Header::Response { correlation_id },
            body,
            api_key,
            api_version,
        )?)
    }
}

/// Who waits for records of which topic: fetches register here while they
/// wait, and a stored batch wakes those of its topic.
#[derive(Debug, Default)]
pub(crate) struct Arrivals {
    /// Topic name → the waiting fetches' notifications. Fetches that name
    /// their topics by an id the metadata does not know wait under
    /// [`ANY_TOPIC`].
    waiting: Mutex<HashMap<String, Vec<Arc<Notify>>>>,
    /// Topic id → name, as the metadata said: librdkafka names fetched
    /// topics by id (Fetch v13+), and a metadata lookup for each topic of
    /// every fetch cost the broker more than the fetch itself. An id is
    /// never reused for another topic (a recreated topic gets a new one).
    names: Mutex<HashMap<[u8; 16], String>>,
}

/// Ids remembered at most: past this (topics created and deleted by the
/// thousand) the memory starts over.
const MAX_NAMES: usize = 10_000;

/// Where a fetch that names no topic waits: woken by every batch.
const ANY_TOPIC: &str = "";

impl Arrivals {
    /// A batch was stored to `topic`: its waiting fetches (and those
    /// waiting on any topic) look again.
    pub(crate) fn arrived(&self, topic: &str) {
        let waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        for key in [topic, ANY_TOPIC] {
            for fetch in waiting.get(key).into_iter().flatten() {
                // A permit if the fetch is between its passes: never lost.
                fetch.notify_one();
            }
        }
    }

    fn watch(&self, topics: Vec<String>) -> Watch<'_> {
        let notify = Arc::new(Notify::new());
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        for topic in &topics {
            waiting
                .entry(topic.clone())
                .or_default()
                .push(notify.clone());
        }
        Watch {
            arrivals: self,
            topics,
            notify,
        }
    }
}

/// A fetch's registration in [`Arrivals`], removed when it is dropped.
struct Watch<'a> {
    arrivals: &'a Arrivals,
    topics: Vec<String>,
    notify: Arc<Notify>,
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        let mut waiting = self
            .arrivals
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for topic in &self.topics {
            if let Some(fetches) = waiting.get_mut(topic) {
                fetches.retain(|n| !Arc::ptr_eq(n, &self.notify));
                if fetches.is_empty() {
                    waiting.remove(topic);
                }
            }
        }
    }
}

/// A fetch that answers once its partitions have records, or its wait is
/// over. It asks tansu's fetch with no wait (one pass over the partitions),
/// and between passes sleeps until a batch is stored to one of its topics.
/// A wait that ends with no batch stored answers with the last pass: nothing
/// it would find has changed, and an idle consumer's fetch costs one pass,
/// not two.
#[derive(Clone, Debug)]
pub(crate) struct PromptFetch {
    pub(crate) arrivals: Arc<Arrivals>,
}

impl<S: Storage> Service<S, FetchRequest> for PromptFetch {
    type Response = FetchResponse;
    type Error = tansu_storage::Error;

    async fn serve(
        &self,
        ctx: Context<S>,
        req: FetchRequest,
    ) -> Result<FetchResponse, tansu_storage::Error> {
        let wait = Duration::from_millis(u64::try_from(req.max_wait_ms).unwrap_or(0));
        let deadline = Instant::now() + wait;
        let mut topics = Vec::new();
        for topic in req.topics.iter().flatten() {
            topics.push(self.arrivals.topic_name(&ctx, topic).await);
        }
        let once = req.max_wait_ms(0);
        // Registered before the first pass: a batch stored during a pass
        // leaves a permit, and the next wait returns at once.
        let watch = self.arrivals.watch(topics);
        loop {
            let response =
                crate::log::fetch_pass(FetchService.serve(ctx.clone(), once.clone())).await?;
            if answers(&response) || Instant::now() >= deadline {
                return Ok(response);
            }
            // Woken: look once more (past the deadline that pass is the
            // answer). Timed out: no batch was stored to these topics since
            // the pass began (a store leaves a permit), so it stands.
            let woken = tokio::time::timeout_at(deadline, watch.notify.notified()).await;
            if woken.is_err() {
                return Ok(response);
            }
        }
    }
}

impl Arrivals {
    /// The name of a fetched topic: librdkafka names them by id (Fetch
    /// v13+). An id the metadata does not know (or a topic named neither
    /// way) waits under [`ANY_TOPIC`], and is looked up again next time.
    async fn topic_name<S: Storage>(&self, ctx: &Context<S>, topic: &FetchTopic) -> String {
        if let Some(name) = &topic.topic {
            return name.clone();
        }
        let Some(id) = topic.topic_id else {
            return ANY_TOPIC.to_owned();
        };
        if let Some(name) = self.lock_names().get(&id) {
            return name.clone();
        }
        let found = ctx
            .state()
            .metadata(Some(&[TopicId::Id(uuid::Uuid::from_bytes(id))]))
            .await
            .ok()
            .and_then(|m| m.topics().first().and_then(|t| t.name.clone()));
        let Some(name) = found else {
            return ANY_TOPIC.to_owned();
        };
        let mut names = self.lock_names();
        if names.len() >= MAX_NAMES {
            names.clear();
        }
        names.insert(id, name.clone());
        name
    }

    fn lock_names(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 16], String>> {
        self.names.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Whether a fetch response should go back now: it carries records, or a
/// partition's error.
fn answers(response: &FetchResponse) -> bool {
    response.responses.iter().flatten().any(|topic| {
        topic.partitions.iter().flatten().any(|p| {
            p.error_code != 0
                || p.records
                    .as_ref()
                    .is_some_and(|frame| !frame.batches.is_empty())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(arrivals: &Arrivals) -> usize {
        arrivals
            .waiting
            .lock()
            .unwrap()
            .values()
            .map(Vec::len)
            .sum()
    }

    /// Answers every request with an empty ApiVersions response.
    struct Versions;

    impl Service<(), Frame> for Versions {
        type Response = Frame;
        type Error = Error;

        async fn serve(&self, _: Context<()>, req: Frame) -> Result<Frame, Error> {
            Ok(Frame {
                size: 0,
                header: Header::Response {
                    correlation_id: req.correlation_id()?,
                },
                body: tansu_sans_io::ApiVersionsResponse::default()
                    .error_code(0)
                    .api_keys(Some(vec![]))
                    .into(),
            })
        }
    }

    #[tokio::test]
    async fn frames_decode_and_encode_inline_and_large_ones_on_the_pool() {
        let request = Frame::request(
            Header::Request {
                api_key: tansu_sans_io::ApiVersionsRequest::KEY,
                api_version: 0,
                correlation_id: 7,
                client_id: Some("test".into()),
            },
            tansu_sans_io::ApiVersionsRequest::default().into(),
        )
        .expect("encodes");
        // Past the threshold (0 bytes) the decode takes the blocking pool.
        for inline_bytes in [DECODE_INLINE_BYTES, 0] {
            let frames = Frames {
                inner: Versions,
                inline_bytes,
            };
            let answer = frames
                .serve(Context::default(), request.clone())
                .await
                .expect("served");
            let response =
                Frame::response_from_bytes(answer, tansu_sans_io::ApiVersionsRequest::KEY, 0)
                    .expect("a response frame");
            assert_eq!(response.correlation_id().ok(), Some(7), "{inline_bytes}");
        }
        let garbage = Frames {
            inner: Versions,
            inline_bytes: DECODE_INLINE_BYTES,
        }
        .serve(Context::default(), Bytes::from_static(b"\0\0\0\x02\xff"))
        .await;
        assert!(
            garbage.is_err(),
            "a malformed frame is an error, not a panic"
        );
    }

    #[tokio::test]
    async fn a_batch_wakes_the_fetches_of_its_topic_only() {
        let arrivals = Arrivals::default();
        let orders = arrivals.watch(vec!["orders".into()]);
        let payments = arrivals.watch(vec!["payments".into()]);
        arrivals.arrived("orders");
        // The permit is kept for a fetch between its passes.
        tokio::time::timeout(Duration::from_secs(5), orders.notify.notified())
            .await
            .expect("the orders fetch is woken");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), payments.notify.notified())
                .await
                .is_err(),
            "a batch to orders woke the payments fetch"
        );
    }

    #[tokio::test]
    async fn a_fetch_naming_no_topic_is_woken_by_every_batch() {
        let arrivals = Arrivals::default();
        let any = arrivals.watch(vec![ANY_TOPIC.into()]);
        arrivals.arrived("whatever");
        tokio::time::timeout(Duration::from_secs(5), any.notify.notified())
            .await
            .expect("woken");
    }

    #[test]
    fn a_finished_fetch_leaves_no_registration() {
        let arrivals = Arrivals::default();
        {
            let _a = arrivals.watch(vec!["t".into(), "u".into()]);
            let _b = arrivals.watch(vec!["t".into()]);
            assert_eq!(waiting(&arrivals), 3);
        }
        assert_eq!(waiting(&arrivals), 0);
        assert!(arrivals.waiting.lock().unwrap().is_empty());
    }
}
