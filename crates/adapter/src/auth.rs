//! Backend authentication. Secrets are resolved once when the handler is
//! built and only ever leave as request headers or query values.

use std::time::Duration;

use reqwest::RequestBuilder;
use reqwest::header::{HeaderName, HeaderValue};
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::config::AuthConfig;
use crate::error::AdapterError;
use crate::secret::Secret;

/// Resolved authentication.
#[derive(Debug)]
pub(crate) enum Auth {
    None,
    ApiKeyHeader { name: HeaderName, key: Secret },
    ApiKeyQuery { name: String, key: Secret },
    Basic { username: String, password: Secret },
    Bearer(Secret),
    OAuth2(OAuth2),
}

#[derive(Debug)]
pub(crate) struct OAuth2 {
    service: String,
    token_url: String,
    client_id: String,
    client_secret: Secret,
    scope: Option<String>,
    margin: Duration,
    client: reqwest::Client,
    cached: Mutex<Option<CachedToken>>,
}

#[derive(Debug, Clone)]
struct CachedToken {
    token: Secret,
    refresh_at: Instant,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default, deserialize_with = "lenient_seconds")]
    expires_in: Option<u64>,
}

/// `expires_in` as a non-negative integer of any size (saturating at
/// `u64::MAX`) or a float; anything else (negative, string) means "unknown".
fn lenient_seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let v = Option::<serde_json::Value>::deserialize(d)?;
    Ok(v.and_then(|v| match v {
        serde_json::Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0)
                // Saturating float-to-int conversion.
                .map(|f| f as u64)
        }),
        _ => None,
    }))
}

/// The lifetime to assume for a token with `expires_in`.
fn token_lifetime(expires_in: Option<u64>) -> Duration {
    expires_in
        .map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs)
        .min(MAX_TOKEN_LIFETIME)
}

/// Tokens without `expires_in` are refreshed after this long.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(300);

/// The largest token response the adapter reads; a token server streaming
/// more is an `auth_failed` error, not an unbounded allocation.
pub(crate) const MAX_TOKEN_RESPONSE_BYTES: usize = 64 * 1024;

/// The longest token lifetime the adapter believes: a token server's
/// `expires_in` is outside input (`10000000000000000000` must not overflow
/// the clock), and a token is re-fetched at least this often.
pub(crate) const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

impl Auth {
    pub(crate) fn from_config(
        cfg: Option<&AuthConfig>,
        service: &str,
        client: &reqwest::Client,
    ) -> Result<Self, AdapterError> {
        Ok(match cfg {
            None => Self::None,
            Some(AuthConfig::ApiKey {
                header: Some(h),
                secret,
                ..
            }) => Self::ApiKeyHeader {
                name: HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                    AdapterError::ConfigInvalid {
                        file: format!("service `{service}`"),
                        key: "auth.header".into(),
                        message: "not a valid HTTP header name".into(),
                    }
                })?,
                key: secret.resolve()?,
            },
            Some(AuthConfig::ApiKey { query, secret, .. }) => Self::ApiKeyQuery {
                name: query.clone().unwrap_or_else(|| "api_key".into()),
                key: secret.resolve()?,
            },
            Some(AuthConfig::Basic { username, password }) => Self::Basic {
                username: username.clone(),
                password: password.resolve()?,
            },
            Some(AuthConfig::Bearer { token }) => Self::Bearer(token.resolve()?),
            Some(AuthConfig::Oauth2ClientCredentials {
                token_url,
                client_id,
                client_secret,
                scope,
                refresh_margin,
            }) => Self::OAuth2(OAuth2 {
                service: service.to_owned(),
                token_url: token_url.clone(),
                client_id: client_id.clone(),
                client_secret: client_secret.resolve()?,
                scope: scope.clone(),
                margin: *refresh_margin,
                client: client.clone(),
                cached: Mutex::new(None),
            }),
        })
    }

    /// Adds credentials to a request. `budget` bounds a token fetch.
    pub(crate) async fn apply(
        &self,
        req: RequestBuilder,
        budget: Duration,
    ) -> Result<RequestBuilder, AdapterError> {
        Ok(match self {
            Self::None => req,
            Self::ApiKeyHeader { name, key } => {
                let mut v = HeaderValue::from_str(key.expose()).map_err(|_| {
                    AdapterError::SecretUnavailable {
                        source_desc: "API key is not a valid header value".into(),
                    }
                })?;
                v.set_sensitive(true);
                req.header(name.clone(), v)
            }
            Self::ApiKeyQuery { name, key } => req.query(&[(name.as_str(), key.expose())]),
            Self::Basic { username, password } => req.basic_auth(username, Some(password.expose())),
            Self::Bearer(token) => req.bearer_auth(token.expose()),
            Self::OAuth2(o) => {
                let token = o.token(budget).await?;
                req.bearer_auth(token.expose())
            }
        })
    }

    /// Forgets a cached OAuth2 token (after the backend answered 401).
    pub(crate) async fn invalidate(&self) -> bool {
        if let Self::OAuth2(o) = self {
            *o.cached.lock().await = None;
            true
        } else {
            false
        }
    }
}

impl OAuth2 {
    /// The cached token, or a fresh one. Holding the lock while fetching
    /// makes the refresh single-flight: concurrent callers wait for it.
    async fn token(&self, budget: Duration) -> Result<Secret, AdapterError> {
        let mut cached = self.cached.lock().await;
        if let Some(t) = cached.as_ref()
            && Instant::now() < t.refresh_at
        {
            return Ok(t.token.clone());
        }
        let fresh = self.fetch(budget).await?;
        let token = fresh.token.clone();
        *cached = Some(fresh);
        Ok(token)
    }

    async fn fetch(&self, budget: Duration) -> Result<CachedToken, AdapterError> {
        let err = |message: String| AdapterError::TokenFetch {
            service: self.service.clone(),
            message,
        };
        let mut form = vec![("grant_type", "client_credentials")];
        if let Some(scope) = &self.scope {
            form.push(("scope", scope));
        }
        let started = Instant::now();
        let resp = self
            .client
            .post(&self.token_url)
            .basic_auth(&self.client_id, Some(self.client_secret.expose()))
            .form(&form)
            .timeout(budget.max(Duration::from_millis(1)))
            .send()
            .await
            .map_err(|e| err(format!("token request failed: {}", e.without_url())))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(err(format!(
                "token endpoint answered HTTP {}",
                status.as_u16()
            )));
        }
        let mut resp = resp;
        if resp
            .content_length()
            .is_some_and(|len| len > MAX_TOKEN_RESPONSE_BYTES as u64)
        {
            return Err(err(format!(
                "token response is larger than {MAX_TOKEN_RESPONSE_BYTES} bytes"
            )));
        }
        let mut raw = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| {
            err(format!(
                "cannot read the token response: {}",
                e.without_url()
            ))
        })? {
            if raw.len() + chunk.len() > MAX_TOKEN_RESPONSE_BYTES {
                return Err(err(format!(
                    "token response is larger than {MAX_TOKEN_RESPONSE_BYTES} bytes"
                )));
            }
            raw.extend_from_slice(&chunk);
        }
        let body: TokenResponse = serde_json::from_slice(&raw)
            .map_err(|e| err(format!("token response is not valid JSON: {e}")))?;
        let lifetime = token_lifetime(body.expires_in);
        tracing::debug!(
            service = %self.service,
            lifetime_s = lifetime.as_secs(),
            "fetched OAuth2 access token"
        );
        Ok(CachedToken {
            token: Secret::new(body.access_token),
            refresh_at: started
                .checked_add(lifetime.saturating_sub(self.margin))
                .unwrap_or(started),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_expires_in_is_clamped() {
        let parse = |json: &str| {
            let body: TokenResponse = serde_json::from_str(json).unwrap();
            token_lifetime(body.expires_in)
        };
        assert_eq!(
            parse(r#"{"access_token":"t","expires_in":60}"#),
            Duration::from_secs(60)
        );
        assert_eq!(parse(r#"{"access_token":"t"}"#), DEFAULT_TOKEN_LIFETIME);
        for huge in ["10000000000000000000", "1e300", "99999999999999999999999"] {
            let json = format!(r#"{{"access_token":"t","expires_in":{huge}}}"#);
            assert_eq!(parse(&json), MAX_TOKEN_LIFETIME, "{huge}");
        }
        for odd in ["-5", "\"3600\"", "null"] {
            let json = format!(r#"{{"access_token":"t","expires_in":{odd}}}"#);
            assert_eq!(parse(&json), DEFAULT_TOKEN_LIFETIME, "{odd}");
        }
    }
}
