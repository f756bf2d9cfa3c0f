//! The process shell's routes, shared by the orchestrator and the adapter
//! runtimes: `/healthz` (the process answers), `/readyz` (the runtime can
//! work: 200 while its flag is set, 503 otherwise) and `/metrics`
//! (Prometheus text format).
//!
//! What the runtimes answer differs and is kept as it is, so it is a
//! parameter ([`ProbeAnswers`]); so is how the metrics are rendered (a
//! closure, which may refresh a gauge first). The routes are generic over
//! the router's state, so a runtime merges them into its own API.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// The content type of the Prometheus text exposition format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4";

/// The bodies of the probe answers (all `text/plain`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeAnswers {
    /// `/healthz`, always 200.
    pub healthy: &'static str,
    /// `/readyz` when ready (200).
    pub ready: &'static str,
    /// `/readyz` when not ready (503).
    pub not_ready: &'static str,
}

/// Renders the metrics: the exposition text, or why it could not be
/// rendered (answered as a 500).
pub type RenderMetrics = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// What the probe routes read.
#[derive(Clone)]
pub struct Probes {
    /// The readiness flag the runtime sets and clears.
    pub ready: Arc<AtomicBool>,
    /// The bodies to answer with.
    pub answers: ProbeAnswers,
    /// Called on every `/metrics` request.
    pub metrics: RenderMetrics,
}

impl Probes {
    /// `/healthz`, `/readyz` and `/metrics`, to serve alone or merge into a
    /// runtime's API router.
    pub fn routes<S: Clone + Send + Sync + 'static>(self) -> Router<S> {
        let answers = self.answers;
        let ready = self.ready;
        let metrics = self.metrics;
        Router::new()
            .route("/healthz", get(move || async move { answers.healthy }))
            .route(
                "/readyz",
                get(move || async move {
                    if ready.load(Ordering::SeqCst) {
                        (StatusCode::OK, answers.ready)
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, answers.not_ready)
                    }
                }),
            )
            .route(
                "/metrics",
                get(move || async move { render_metrics(metrics.as_ref()) }),
            )
    }
}

fn render_metrics(render: &(dyn Fn() -> Result<String, String> + Send + Sync)) -> Response {
    match render() {
        Ok(text) => ([(header::CONTENT_TYPE, PROMETHEUS_TEXT)], text).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            e,
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use std::sync::atomic::AtomicUsize;
    use tower::ServiceExt;

    const ANSWERS: ProbeAnswers = ProbeAnswers {
        healthy: "ok\n",
        ready: "ready\n",
        not_ready: "stopping\n",
    };

    async fn get(router: &Router, path: &str) -> (StatusCode, Option<String>, String) {
        let response = router
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            content_type,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    #[tokio::test]
    async fn probes_answer_with_the_runtimes_bodies() {
        let ready = Arc::new(AtomicBool::new(false));
        let renders = Arc::new(AtomicUsize::new(0));
        let counted = renders.clone();
        let router: Router = Probes {
            ready: ready.clone(),
            answers: ANSWERS,
            metrics: Arc::new(move || {
                let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
                Ok(format!("renders_total {n}\n"))
            }),
        }
        .routes();
        let (status, _, body) = get(&router, "/healthz").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok\n"));
        let (status, _, body) = get(&router, "/readyz").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "stopping\n")
        );
        ready.store(true, Ordering::SeqCst);
        let (status, _, body) = get(&router, "/readyz").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ready\n"));
        // The render closure runs on every request (a pre-render hook can
        // refresh a gauge in it).
        let (status, content_type, body) = get(&router, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type.as_deref(), Some(PROMETHEUS_TEXT));
        assert_eq!(body, "renders_total 1\n");
        let (_, _, body) = get(&router, "/metrics").await;
        assert_eq!(body, "renders_total 2\n");
        assert_eq!(renders.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_failed_render_is_a_500_with_the_reason() {
        let router: Router = Probes {
            ready: Arc::new(AtomicBool::new(true)),
            answers: ANSWERS,
            metrics: Arc::new(|| Err("encoding failed".to_owned())),
        }
        .routes();
        let (status, content_type, body) = get(&router, "/metrics").await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(content_type.as_deref(), Some("text/plain"));
        assert_eq!(body, "encoding failed");
    }
}
