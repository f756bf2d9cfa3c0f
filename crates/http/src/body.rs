//! Reading a request body within its size limit and deadline before the
//! handler runs, so that no handler waits on a trickling client.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::{Refusal, Render, refuse};

#[derive(Clone)]
pub(crate) struct BodyLimits {
    pub(crate) max_bytes: usize,
    pub(crate) timeout: Duration,
    pub(crate) render: Render,
}

pub(crate) async fn read_body(State(l): State<BodyLimits>, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > l.max_bytes as u64) {
        return refuse(l.render, &Refusal::TooLarge { limit: l.max_bytes });
    }
    let (parts, body) = req.into_parts();
    let collected =
        tokio::time::timeout(l.timeout, Limited::new(body, l.max_bytes).collect()).await;
    let bytes = match collected {
        Ok(Ok(c)) => c.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return refuse(l.render, &Refusal::TooLarge { limit: l.max_bytes });
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "request body unreadable");
            return refuse(l.render, &Refusal::BodyUnreadable);
        }
        Err(_) => {
            tracing::debug!(method = %parts.method, path = %parts.uri.path(), "request body timed out");
            return refuse(l.render, &Refusal::BodyTimeout(l.timeout));
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}
