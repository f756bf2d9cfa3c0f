//! A small client for the Confluent schema registry REST API.

use clap::Args;
use reqwest::{Client, RequestBuilder, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::exit::{CliResult, Failure};

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// Where the registry is and how to log in.
#[derive(Debug, Clone, Args)]
pub(crate) struct RegistryArgs {
    /// Schema registry base URL.
    #[arg(long = "registry", env = "SAGAFLOW_REGISTRY_URL", value_name = "URL")]
    url: String,
    /// Basic-auth user (Confluent Cloud: API key).
    #[arg(
        long,
        env = "SAGAFLOW_REGISTRY_USERNAME",
        requires = "registry_password"
    )]
    registry_username: Option<String>,
    /// Basic-auth password (Confluent Cloud: API secret).
    #[arg(long, env = "SAGAFLOW_REGISTRY_PASSWORD", hide_env_values = true)]
    registry_password: Option<String>,
    /// Bearer token.
    #[arg(
        long,
        env = "SAGAFLOW_REGISTRY_TOKEN",
        hide_env_values = true,
        conflicts_with = "registry_username"
    )]
    registry_token: Option<String>,
}

impl RegistryArgs {
    /// The registry part of a codec configuration (same URL and credentials).
    pub(crate) fn codec_registry(&self) -> CliResult<sagaflow_codec::RegistryConfig> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(Failure::Usage(format!(
                "--registry `{}` must be an http:// or https:// URL",
                self.url
            )));
        }
        let auth = match (&self.registry_token, &self.registry_username) {
            (Some(token), _) => Some(sagaflow_codec::RegistryAuth::Bearer {
                token: token.clone(),
            }),
            (None, Some(username)) => Some(sagaflow_codec::RegistryAuth::Basic {
                username: username.clone(),
                password: self.registry_password.clone().unwrap_or_default(),
            }),
            (None, None) => None,
        };
        Ok(sagaflow_codec::RegistryConfig {
            url: self.url.clone(),
            auth,
            timeout: Some("10s".into()),
        })
    }
}

/// An error answer of the registry.
#[derive(Debug, Deserialize)]
pub(crate) struct RegistryError {
    pub(crate) error_code: u32,
    pub(crate) message: String,
}

/// The answer to a call: success body, or the registry's error.
pub(crate) type Answer<T> = Result<T, RegistryError>;

#[derive(Debug, Deserialize)]
pub(crate) struct RegisteredVersion {
    pub(crate) version: u32,
    pub(crate) id: u32,
    pub(crate) schema: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct CompatibilityAnswer {
    pub(crate) is_compatible: bool,
    #[serde(default)]
    pub(crate) messages: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct IdAnswer {
    id: u32,
}

pub(crate) struct RegistryClient {
    client: Client,
    base: String,
    args: RegistryArgs,
}

fn encode_subject(subject: &str) -> String {
    subject
        .replace('%', "%25")
        .replace('/', "%2F")
        .replace('?', "%3F")
        .replace('#', "%23")
}

impl RegistryClient {
    pub(crate) fn new(args: RegistryArgs) -> CliResult<Self> {
        if !(args.url.starts_with("http://") || args.url.starts_with("https://")) {
            return Err(Failure::Usage(format!(
                "--registry `{}` must be an http:// or https:// URL",
                args.url
            )));
        }
        let client = Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| Failure::Usage(format!("HTTP client: {e}")))?;
        Ok(Self {
            client,
            base: args.url.trim_end_matches('/').to_string(),
            args,
        })
    }

    pub(crate) fn url(&self) -> &str {
        &self.base
    }

    fn auth(&self, request: RequestBuilder) -> RequestBuilder {
        match (&self.args.registry_token, &self.args.registry_username) {
            (Some(token), _) => request.bearer_auth(token),
            (None, Some(user)) => request.basic_auth(user, self.args.registry_password.as_deref()),
            (None, None) => request,
        }
    }

    async fn call<T: for<'de> Deserialize<'de>>(
        &self,
        request: RequestBuilder,
    ) -> CliResult<Answer<T>> {
        let response = self
            .auth(request)
            .header("accept", CONTENT_TYPE)
            .send()
            .await
            .map_err(|e| Failure::Unreachable(format!("schema registry at {}: {e}", self.base)))?;
        let status = response.status();
        if matches!(
            status,
            StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
        ) {
            return Err(Failure::Unreachable(format!(
                "schema registry at {}: HTTP {status}",
                self.base
            )));
        }
        let text = response
            .text()
            .await
            .map_err(|e| Failure::Unreachable(format!("schema registry at {}: {e}", self.base)))?;
        if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            return Err(Failure::Usage(format!(
                "schema registry at {} refused the credentials (HTTP {status}); check --registry-username/--registry-password or --registry-token",
                self.base
            )));
        }
        if status.is_success() {
            serde_json::from_str(&text).map(Ok).map_err(|e| {
                Failure::Usage(format!(
                    "unexpected answer from {} ({e}): {text}",
                    self.base
                ))
            })
        } else {
            Ok(Err(serde_json::from_str(&text).unwrap_or(RegistryError {
                error_code: status.as_u16().into(),
                message: text,
            })))
        }
    }

    pub(crate) async fn register(&self, subject: &str, schema: &str) -> CliResult<Answer<u32>> {
        let url = format!(
            "{}/subjects/{}/versions",
            self.base,
            encode_subject(subject)
        );
        let request = self
            .client
            .post(url)
            .header("content-type", CONTENT_TYPE)
            .body(json!({"schema": schema, "schemaType": "AVRO"}).to_string());
        Ok(self.call::<IdAnswer>(request).await?.map(|a| a.id))
    }

    pub(crate) async fn latest(&self, subject: &str) -> CliResult<Answer<RegisteredVersion>> {
        let url = format!(
            "{}/subjects/{}/versions/latest",
            self.base,
            encode_subject(subject)
        );
        self.call(self.client.get(url)).await
    }

    pub(crate) async fn check(
        &self,
        subject: &str,
        schema: &str,
    ) -> CliResult<Answer<CompatibilityAnswer>> {
        let url = format!(
            "{}/compatibility/subjects/{}/versions/latest?verbose=true",
            self.base,
            encode_subject(subject)
        );
        let request = self
            .client
            .post(url)
            .header("content-type", CONTENT_TYPE)
            .body(json!({"schema": schema, "schemaType": "AVRO"}).to_string());
        self.call(request).await
    }
}

/// Whether two schema texts are the same JSON (whitespace aside).
pub(crate) fn same_schema(a: &str, b: &str) -> bool {
    match (
        serde_json::from_str::<Value>(a),
        serde_json::from_str::<Value>(b),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}
