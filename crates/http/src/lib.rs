//! Serving Sagaflow's HTTP APIs (orchestrator, schema registry, adapter
//! metrics) so that no client, slow or hostile, can hold them:
//!
//! * a request head must arrive within `header-timeout` of the connection's
//!   start (or of the first byte of a later request on it);
//! * a request body must arrive in full within `body-timeout`, and is at
//!   most `max-body-bytes` (larger: 413, slower: 408, both close the
//!   connection);
//! * a keep-alive connection between requests is closed after
//!   `idle-timeout`;
//! * at most `max-connections` connections are served at once; more wait in
//!   the listen backlog until one is freed;
//! * a graceful shutdown lets requests in flight finish for up to
//!   `shutdown-grace`.
//!
//! [`Server::serve`] runs an axum [`Router`] with these limits through
//! hyper's HTTP/1 connection builder; [`require_bearer`] is the bearer-token
//! check the APIs share; [`Probes::routes`] the `/healthz`, `/readyz` and
//! `/metrics` routes both runtimes serve.
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! let router = axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok" }));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let server = sagaflow_http::Server::new(sagaflow_http::ServerConfig::default());
//! server.serve(listener, router, std::future::pending()).await
//! # }
//! ```

mod auth;
mod body;
mod config;
mod probes;
mod serve;

pub use auth::{BearerToken, TokenError, require_bearer};
pub use config::{ConfigError, RawServerConfig, ServerConfig};
pub use probes::{PROMETHEUS_TEXT, ProbeAnswers, Probes, RenderMetrics};
pub use serve::{Server, ServerStats};

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::time::Duration;

/// A request the server layer refuses before it reaches a handler.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No bearer token, or the wrong one. Never names the token.
    #[error("a valid bearer token is required (`Authorization: Bearer <token>`)")]
    Unauthorized,
    /// The body did not arrive in full in time.
    #[error("the request body did not arrive within {}", humantime::format_duration(*.0))]
    BodyTimeout(Duration),
    /// The body is larger than the limit.
    #[error("the request body is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The body could not be read (the client broke it off).
    #[error("the request body could not be read")]
    BodyUnreadable,
}

impl Refusal {
    /// The HTTP status of the refusal.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyUnreadable => StatusCode::BAD_REQUEST,
        }
    }

    /// The stable code of the refusal when a server has none of its own.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthorized => "SF-HTTP-401",
            Self::BodyTimeout(_) => "SF-HTTP-408",
            Self::TooLarge { .. } => "SF-HTTP-413",
            Self::BodyUnreadable => "SF-HTTP-400",
        }
    }

    /// Whether the connection must close after the answer: the rest of the
    /// body is not read.
    pub fn closes_connection(&self) -> bool {
        !matches!(self, Self::Unauthorized)
    }
}

/// Turns a refusal into the response a server's clients expect.
pub type Render = fn(&Refusal) -> Response;

/// The default answer: `{"error": {"code": "SF-HTTP-…", "message": …}}`.
pub fn render_json(refusal: &Refusal) -> Response {
    (
        refusal.status(),
        Json(serde_json::json!({
            "error": { "code": refusal.code(), "message": refusal.to_string() }
        })),
    )
        .into_response()
}

/// Renders `refusal` with `render` and, when the body is left unread, asks
/// the connection to close.
pub(crate) fn refuse(render: Render, refusal: &Refusal) -> Response {
    let mut response = render(refusal);
    if refusal.closes_connection() {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}
