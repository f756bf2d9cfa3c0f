//! The bearer-token check the Sagaflow APIs share.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::Response;

use crate::{Refusal, Render, refuse};

/// A bearer token. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(Arc<str>);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

/// Why no token could be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, sagaflow_codes::Coded)]
pub enum TokenError {
    /// The environment variable is unset or empty.
    #[error("SF-HTTP-002: bearer token: environment variable `{0}` is not set or empty")]
    Missing(String),
    /// The token has characters a header cannot carry or blanks around it.
    #[error(
        "SF-HTTP-003: bearer token in `{0}`: must be visible ASCII without blanks (it goes into an `Authorization` header)"
    )]
    Malformed(String),
}

impl BearerToken {
    /// A token of visible ASCII characters; `None` when empty or not.
    pub fn new(token: &str) -> Option<Self> {
        (!token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic()))
            .then(|| Self(Arc::from(token)))
    }

    /// Reads the token from the environment variable `var`.
    pub fn from_env(var: &str) -> Result<Self, TokenError> {
        match std::env::var(var) {
            Ok(t) if !t.is_empty() => {
                Self::new(&t).ok_or_else(|| TokenError::Malformed(var.to_owned()))
            }
            _ => Err(TokenError::Missing(var.to_owned())),
        }
    }

    /// Whether `presented` is this token, compared without stopping at the
    /// first differing byte.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let expected = self.0.as_bytes();
        // The length of a token is not a secret worth a timing channel;
        // its bytes are.
        presented.len() == expected.len()
            && presented
                .iter()
                .zip(expected)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

#[derive(Clone)]
struct Check {
    token: BearerToken,
    render: Render,
}

async fn check(State(c): State<Check>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .and_then(|v| v.strip_prefix(b"Bearer "));
    if presented.is_some_and(|p| c.token.matches(p)) {
        next.run(req).await
    } else {
        refuse(c.render, &Refusal::Unauthorized)
    }
}

/// Requires `Authorization: Bearer <token>` on every route of `router` (add
/// the open routes, such as `/healthz`, after this call). Others get 401,
/// rendered by `render`; the answer never contains the token.
pub fn require_bearer<S>(router: Router<S>, token: BearerToken, render: Render) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    router.route_layer(middleware::from_fn_with_state(
        Check { token, render },
        check,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole_and_never_show() {
        let t = BearerToken::new("s3cret-token").unwrap();
        assert!(t.matches(b"s3cret-token"));
        assert!(!t.matches(b"s3cret-tokeN"));
        assert!(!t.matches(b"s3cret"));
        assert!(!t.matches(b""));
        assert!(!format!("{t:?}").contains("s3cret"));
        assert!(BearerToken::new("").is_none());
        assert!(BearerToken::new("has space").is_none());
        assert!(BearerToken::new("line\nbreak").is_none());
    }

    #[test]
    fn missing_variable_is_named_not_its_value() {
        let e = BearerToken::from_env("SAGAFLOW_HTTP_TEST_SURELY_UNSET").unwrap_err();
        assert_eq!(
            e,
            TokenError::Missing("SAGAFLOW_HTTP_TEST_SURELY_UNSET".into())
        );
        assert!(e.to_string().starts_with("SF-HTTP-002:"));
    }
}
