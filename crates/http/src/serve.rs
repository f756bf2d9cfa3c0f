//! The accept loop and the per-connection watchdog.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::middleware;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::ServiceExt;

use crate::body::{BodyLimits, read_body};
use crate::{Render, ServerConfig, render_json};

/// Counts of a running server, for tests and metrics. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct ServerStats {
    inner: Arc<Stats>,
}

#[derive(Debug, Default)]
struct Stats {
    open: AtomicUsize,
    accepted: AtomicU64,
    timed_out: AtomicU64,
}

impl ServerStats {
    /// Connections being served now.
    pub fn open_connections(&self) -> usize {
        self.inner.open.load(Ordering::SeqCst)
    }
    /// Connections accepted since the start.
    pub fn accepted_connections(&self) -> u64 {
        self.inner.accepted.load(Ordering::SeqCst)
    }
    /// Connections closed by a header or idle timeout.
    pub fn timed_out_connections(&self) -> u64 {
        self.inner.timed_out.load(Ordering::SeqCst)
    }
}

/// Serves axum routers with the limits of a [`ServerConfig`].
#[derive(Clone)]
pub struct Server {
    config: ServerConfig,
    render: Render,
    stats: ServerStats,
}

impl Server {
    /// A server with `config`; refusals are rendered by [`render_json`].
    pub fn new(config: ServerConfig) -> Self {
        Self {
            config,
            render: render_json,
            stats: ServerStats::default(),
        }
    }

    /// Renders refusals (401, 408, 413) in the shape this API's clients
    /// expect.
    pub fn render_refusals(mut self, render: Render) -> Self {
        self.render = render;
        self
    }

    /// The server's counters.
    pub fn stats(&self) -> ServerStats {
        self.stats.clone()
    }

    /// Serves `router` on `listener` until `shutdown` completes, then stops
    /// accepting, lets requests in flight finish for up to the shutdown
    /// grace and closes the rest. Errors only if the listener fails for
    /// good.
    pub async fn serve<F>(
        self,
        listener: TcpListener,
        router: Router,
        shutdown: F,
    ) -> io::Result<()>
    where
        F: Future<Output = ()> + Send,
    {
        let cfg = self.config.clone();
        let router = router.layer(middleware::from_fn_with_state(
            BodyLimits {
                max_bytes: cfg.max_body_bytes,
                timeout: cfg.body_timeout,
                render: self.render,
            },
            read_body,
        ));
        let permits = Arc::new(Semaphore::new(cfg.max_connections.get()));
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut conns = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            // A free slot first: beyond the cap, connections wait in the
            // kernel's backlog instead of being accepted and held.
            let permit = tokio::select! {
                () = &mut shutdown => break,
                Some(_) = conns.join_next(), if !conns.is_empty() => continue,
                p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            };
            let (stream, peer) = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off
                        // instead of spinning; the connections held free up.
                        tracing::warn!(error = %e, "HTTP accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            self.stats.inner.accepted.fetch_add(1, Ordering::Relaxed);
            let conn = Connection {
                cfg: cfg.clone(),
                router: router.clone(),
                stats: self.stats.clone(),
                stop: stop_rx.clone(),
            };
            conns.spawn(async move {
                conn.run(stream).await;
                drop(permit);
                tracing::trace!(%peer, "HTTP connection closed");
            });
        }
        drop(listener);
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(cfg.shutdown_grace, async {
            while conns.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                open = conns.len(),
                "HTTP connections still open after the shutdown grace; closing them"
            );
            conns.shutdown().await;
        }
        Ok(())
    }
}

struct Connection {
    cfg: ServerConfig,
    router: Router,
    stats: ServerStats,
    stop: watch::Receiver<bool>,
}

impl Connection {
    async fn run(mut self, stream: TcpStream) {
        self.stats.inner.open.fetch_add(1, Ordering::SeqCst);
        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(Tracked {
            inner: stream,
            activity: activity.clone(),
        });
        let router = self.router.clone();
        let in_flight = activity.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let guard = InFlight::enter(in_flight.clone());
            let router = router.clone();
            async move {
                let response = router.oneshot(req).await;
                drop(guard);
                response
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            // The watchdog below enforces the header and idle timeouts.
            .header_read_timeout(None)
            .keep_alive(true);
        let conn = builder.serve_connection(io, service);
        tokio::pin!(conn);
        let tick = (self.cfg.header_timeout.min(self.cfg.idle_timeout) / 8)
            .clamp(Duration::from_millis(10), Duration::from_secs(1));
        let mut ticks = tokio::time::interval(tick);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stopping = *self.stop.borrow();
        if stopping {
            conn.as_mut().graceful_shutdown();
        }
        loop {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "HTTP connection ended with an error");
                    }
                    break;
                }
                _ = ticks.tick() => {
                    if let Some(why) = activity.expired(&self.cfg) {
                        tracing::debug!(reason = why, "closing a slow HTTP connection");
                        self.stats.inner.timed_out.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
                changed = self.stop.changed(), if !stopping => {
                    if changed.is_err() || *self.stop.borrow() {
                        stopping = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        }
        self.stats.inner.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What a connection is doing, for the watchdog. Times are milliseconds
/// since the connection started.
struct Activity {
    start: Instant,
    in_flight: AtomicUsize,
    /// When the client started the request head being waited for, plus one;
    /// 0 while no head is being waited for.
    head_since: AtomicU64,
    /// When the connection last went idle or moved response bytes.
    idle_since: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            // A new connection owes its first request head right away.
            head_since: AtomicU64::new(1),
            idle_since: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn read_some(&self) {
        if self.in_flight.load(Ordering::SeqCst) == 0 {
            let now = self.now() + 1;
            let _ = self
                .head_since
                .compare_exchange(0, now, Ordering::SeqCst, Ordering::SeqCst);
        }
    }

    fn wrote_some(&self) {
        self.idle_since.store(self.now(), Ordering::SeqCst);
    }

    /// Why the connection should close now, if it should.
    fn expired(&self, cfg: &ServerConfig) -> Option<&'static str> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            // The body deadline is the body reader's; handlers are bounded
            // by their own waits.
            return None;
        }
        let now = self.now();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        match self.head_since.load(Ordering::SeqCst) {
            0 => (now.saturating_sub(self.idle_since.load(Ordering::SeqCst))
                > ms(cfg.idle_timeout))
            .then_some("idle timeout"),
            since => {
                (now.saturating_sub(since - 1) > ms(cfg.header_timeout)).then_some("header timeout")
            }
        }
    }
}

/// Marks a request in flight for as long as it lives.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn enter(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::SeqCst);
        activity.head_since.store(0, Ordering::SeqCst);
        Self(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.idle_since.store(self.0.now(), Ordering::SeqCst);
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A socket that reports its reads and writes to the watchdog.
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.read_some();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.wrote_some();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.wrote_some();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RawServerConfig;

    fn cfg(header_ms: u64, idle_ms: u64) -> ServerConfig {
        RawServerConfig {
            header_timeout: Duration::from_millis(header_ms),
            idle_timeout: Duration::from_millis(idle_ms),
            ..RawServerConfig::default()
        }
        .validate()
        .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_connection_owes_a_head_an_idle_one_only_the_idle_timeout() {
        let cfg = cfg(100, 1000);
        let a = Arc::new(Activity::new());
        assert_eq!(a.expired(&cfg), None);
        tokio::time::advance(Duration::from_millis(150)).await;
        assert_eq!(a.expired(&cfg), Some("header timeout"));

        let a = Arc::new(Activity::new());
        let guard = InFlight::enter(a.clone());
        tokio::time::advance(Duration::from_millis(5000)).await;
        assert_eq!(a.expired(&cfg), None, "a request in flight is not timed");
        drop(guard);
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(a.expired(&cfg), None, "idle, within the idle timeout");
        a.read_some();
        tokio::time::advance(Duration::from_millis(150)).await;
        assert_eq!(
            a.expired(&cfg),
            Some("header timeout"),
            "a started head is held to the header timeout"
        );

        let a = Arc::new(Activity::new());
        drop(InFlight::enter(a.clone()));
        tokio::time::advance(Duration::from_millis(1100)).await;
        assert_eq!(a.expired(&cfg), Some("idle timeout"));
    }
}
