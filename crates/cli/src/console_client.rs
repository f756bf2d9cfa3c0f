//! The console's JSON API from the command line (`saga list` searches,
//! bulk `saga retry|abort --filter`, `dlq list|show|redrive`).

use clap::Args;
use reqwest::{Client, RequestBuilder, StatusCode};
use serde_json::Value;

use crate::exit::{CliResult, Failure};

/// Where the console is.
#[derive(Debug, Clone, Args)]
pub(crate) struct ConsoleApiArgs {
    /// Base URL of `sagaflow console` (its history answers searches, bulk
    /// operations and dead letters).
    #[arg(long = "console", env = "SAGAFLOW_CONSOLE_URL", value_name = "URL")]
    pub(crate) console_url: Option<String>,
    /// The console's bearer token (read-only for searches; the operator
    /// token for bulk operations and redrives).
    #[arg(
        long = "console-token",
        env = "SAGAFLOW_CONSOLE_TOKEN",
        hide_env_values = true
    )]
    pub(crate) console_token: Option<String>,
}

pub(crate) struct ConsoleApi {
    pub(crate) client: Client,
    pub(crate) base: String,
    token: Option<String>,
}

impl ConsoleApi {
    /// The console named by `args`; `what` says what needs it.
    pub(crate) fn new(args: &ConsoleApiArgs, what: &str) -> CliResult<Self> {
        let Some(base) = args.console_url.as_deref() else {
            return Err(Failure::Usage(format!(
                "{what} needs the console: pass --console URL or set SAGAFLOW_CONSOLE_URL (`sagaflow dev` prints it)"
            )));
        };
        let base = base.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Failure::Usage(format!(
                "--console `{base}` is not an http:// or https:// URL"
            )));
        }
        let client = Client::builder()
            .timeout(std::time::Duration::from_secs(300))
            .connect_timeout(std::time::Duration::from_secs(5))
            .build()
            .map_err(|e| Failure::Usage(format!("HTTP client: {e}")))?;
        Ok(Self {
            client,
            base,
            token: args.console_token.clone(),
        })
    }

    /// Sends the request; the JSON of a 2xx, or a failure that says what
    /// went wrong.
    pub(crate) async fn call(&self, r: RequestBuilder, what: &str) -> CliResult<Value> {
        let r = match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        };
        let resp = r.send().await.map_err(|e| {
            Failure::Unreachable(format!(
                "cannot reach the console at {} ({what}): {e}; start it with `sagaflow console --config …` or `sagaflow dev`",
                self.base
            ))
        })?;
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        let json: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let message = json
            .pointer("/error/message")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| body.chars().take(200).collect());
        match status {
            s if s.is_success() => Ok(json),
            StatusCode::UNAUTHORIZED => Err(Failure::Usage(format!(
                "{what}: the console requires a bearer token: pass --console-token or set SAGAFLOW_CONSOLE_TOKEN"
            ))),
            StatusCode::FORBIDDEN => Err(Failure::Usage(format!("{what}: {message}"))),
            s if s.is_server_error() => Err(Failure::Unreachable(format!(
                "{what}: the console answered {s}: {message}"
            ))),
            s => Err(Failure::Usage(format!(
                "{what}: the console answered {s}: {message}"
            ))),
        }
    }
}

/// `k=v` filter terms as a query string (values percent-encoded).
pub(crate) fn query(terms: &[(String, String)]) -> String {
    terms
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Splits `name=value` (for `--filter` and `--attr`).
pub(crate) fn pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
        _ => Err(format!("`{s}` is not NAME=VALUE")),
    }
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b':' => {
                out.push(b as char);
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_become_an_encoded_query() {
        let terms = vec![
            pair("status=FAILED").unwrap(),
            pair("attr.customer_id=c 1&x").unwrap(),
        ];
        assert_eq!(query(&terms), "status=FAILED&attr.customer_id=c%201%26x");
        assert!(pair("nothing").is_err());
        assert!(pair("=v").is_err());
    }
}
