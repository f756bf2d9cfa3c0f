//! The Confluent REST API over [`Registry`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::compat::CompatibilityLevel;
use crate::registry::{ApiError, Registry, Submitted, VersionRef};

/// Content type of every response.
pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

type Params = Query<HashMap<String, String>>;

fn reply(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        body.to_string(),
    )
        .into_response()
}

fn ok(body: Value) -> Result<Response, ApiError> {
    Ok(reply(StatusCode::OK, &body))
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        reply(
            self.status,
            &json!({"error_code": self.error_code, "message": self.message}),
        )
    }
}

fn flag(params: &HashMap<String, String>, name: &str) -> bool {
    params
        .get(name)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// Body of register, lookup and compatibility requests. Unknown fields
/// (`metadata`, `ruleSet`, …) are ignored, as Confluent clients send them.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaBody {
    schema: String,
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<Value>,
}

impl SchemaBody {
    fn parse(body: &[u8]) -> Result<Self, ApiError> {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::invalid_schema(format!("Invalid request body: {e}")))
    }
    fn submitted(&self) -> Submitted<'_> {
        Submitted {
            schema: &self.schema,
            schema_type: self.schema_type.as_deref(),
            has_references: !self.references.is_empty(),
        }
    }
}

#[derive(Deserialize)]
struct ConfigBody {
    compatibility: String,
}

fn parse_level(body: &[u8]) -> Result<CompatibilityLevel, ApiError> {
    let body: ConfigBody = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid_compatibility_level(&e.to_string()))?;
    serde_json::from_value(Value::String(body.compatibility.to_ascii_uppercase()))
        .map_err(|_| ApiError::invalid_compatibility_level(&body.compatibility))
}

async fn root() -> Response {
    reply(StatusCode::OK, &json!({}))
}

async fn schema_types() -> Response {
    reply(StatusCode::OK, &json!(["AVRO"]))
}

async fn schema_by_id(
    State(r): State<Registry>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id: u32 = id.parse().map_err(|_| ApiError::schema_not_found())?;
    let (schema_type, schema) = r.schema_by_id(id).await?;
    let mut body = json!({"schema": schema});
    if schema_type != crate::registry::AVRO {
        body["schemaType"] = json!(schema_type);
    }
    ok(body)
}

fn schema_id(id: &str) -> Result<u32, ApiError> {
    id.parse().map_err(|_| ApiError::schema_not_found())
}

/// `GET /schemas/ids/{id}/subjects` (Confluent clients'
/// `get_subjects_by_schema_id`).
async fn subjects_by_id(
    State(r): State<Registry>,
    Path(id): Path<String>,
    Query(p): Params,
) -> Result<Response, ApiError> {
    ok(json!(
        r.subjects_by_id(schema_id(&id)?, flag(&p, "deleted"))
            .await?
    ))
}

/// `GET /schemas/ids/{id}/versions` (`get_schema_versions`).
async fn versions_by_id(
    State(r): State<Registry>,
    Path(id): Path<String>,
    Query(p): Params,
) -> Result<Response, ApiError> {
    let found = r
        .versions_by_id(schema_id(&id)?, flag(&p, "deleted"))
        .await?;
    ok(Value::Array(
        found
            .into_iter()
            .map(|(subject, version)| json!({"subject": subject, "version": version}))
            .collect(),
    ))
}

/// `GET /mode` and `GET /mode/{subject}` (`get_mode`): this registry is
/// always read-write (no import mode, no read-only subjects).
async fn mode() -> Response {
    reply(StatusCode::OK, &json!({"mode": "READWRITE"}))
}

async fn subjects(State(r): State<Registry>, Query(p): Params) -> Result<Response, ApiError> {
    ok(json!(r.subjects(flag(&p, "deleted")).await))
}

async fn versions(
    State(r): State<Registry>,
    Path(subject): Path<String>,
) -> Result<Response, ApiError> {
    ok(json!(r.versions(&subject).await?))
}

async fn register(
    State(r): State<Registry>,
    Path(subject): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body = SchemaBody::parse(&body)?;
    let id = r.register(&subject, body.submitted()).await?;
    ok(json!({"id": id}))
}

async fn version(
    State(r): State<Registry>,
    Path((subject, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let version = VersionRef::parse(&version)?;
    ok(json!(r.version(&subject, version).await?))
}

async fn version_schema(
    State(r): State<Registry>,
    Path((subject, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let version = VersionRef::parse(&version)?;
    let found = r.version(&subject, version).await?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        found.schema,
    )
        .into_response())
}

async fn lookup(
    State(r): State<Registry>,
    Path(subject): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body = SchemaBody::parse(&body)?;
    ok(json!(r.lookup(&subject, body.submitted()).await?))
}

async fn delete_subject(
    State(r): State<Registry>,
    Path(subject): Path<String>,
    Query(p): Params,
) -> Result<Response, ApiError> {
    ok(json!(
        r.delete_subject(&subject, flag(&p, "permanent")).await?
    ))
}

async fn compatibility_version(
    State(r): State<Registry>,
    Path((subject, version)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let version = VersionRef::parse(&version)?;
    let body = SchemaBody::parse(&body)?;
    ok(json!(
        r.check_compatibility(&subject, Some(version), body.submitted())
            .await?
    ))
}

async fn compatibility_all(
    State(r): State<Registry>,
    Path(subject): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body = SchemaBody::parse(&body)?;
    ok(json!(
        r.check_compatibility(&subject, None, body.submitted())
            .await?
    ))
}

async fn get_global_config(State(r): State<Registry>) -> Result<Response, ApiError> {
    let level = r.compatibility(None).await.unwrap_or_default();
    ok(json!({"compatibilityLevel": level.as_str()}))
}

async fn put_global_config(State(r): State<Registry>, body: Bytes) -> Result<Response, ApiError> {
    let level = parse_level(&body)?;
    r.set_compatibility(None, Some(level)).await?;
    ok(json!({"compatibility": level.as_str()}))
}

async fn get_subject_config(
    State(r): State<Registry>,
    Path(subject): Path<String>,
    Query(p): Params,
) -> Result<Response, ApiError> {
    let level = match r.compatibility(Some(&subject)).await {
        Some(level) => level,
        None if flag(&p, "defaultToGlobal") => r.compatibility(None).await.unwrap_or_default(),
        None => return Err(ApiError::subject_level_config_not_found(&subject)),
    };
    ok(json!({"compatibilityLevel": level.as_str()}))
}

async fn put_subject_config(
    State(r): State<Registry>,
    Path(subject): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let level = parse_level(&body)?;
    r.set_compatibility(Some(&subject), Some(level)).await?;
    ok(json!({"compatibility": level.as_str()}))
}

async fn delete_subject_config(
    State(r): State<Registry>,
    Path(subject): Path<String>,
) -> Result<Response, ApiError> {
    let previous = r
        .compatibility(Some(&subject))
        .await
        .ok_or_else(|| ApiError::subject_level_config_not_found(&subject))?;
    r.set_compatibility(Some(&subject), None).await?;
    ok(json!({"compatibilityLevel": previous.as_str()}))
}

/// The Confluent REST routes over `registry`.
pub fn router(registry: Registry) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/schemas/types", get(schema_types))
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/schemas/ids/{id}/subjects", get(subjects_by_id))
        .route("/schemas/ids/{id}/versions", get(versions_by_id))
        .route("/mode", get(mode))
        .route("/mode/{subject}", get(mode))
        .route("/subjects", get(subjects))
        .route("/subjects/{subject}", post(lookup).delete(delete_subject))
        .route("/subjects/{subject}/versions", get(versions).post(register))
        .route("/subjects/{subject}/versions/{version}", get(version))
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(version_schema),
        )
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(compatibility_version),
        )
        .route(
            "/compatibility/subjects/{subject}/versions",
            post(compatibility_all),
        )
        .route("/config", get(get_global_config).put(put_global_config))
        .route(
            "/config/{subject}",
            get(get_subject_config)
                .put(put_subject_config)
                .delete(delete_subject_config),
        )
        .fallback(|| async {
            ApiError {
                status: StatusCode::NOT_FOUND,
                error_code: 404,
                message: "HTTP 404 Not Found".into(),
            }
        })
        .with_state(registry)
}

/// Credentials the server requires on every request. Without them it is
/// open (bind it to loopback).
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    /// HTTP basic authentication.
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: String,
    },
    /// A bearer token.
    Bearer {
        /// The token.
        token: String,
    },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Self::Bearer { .. } => write!(f, "Bearer(<redacted>)"),
        }
    }
}

impl Auth {
    fn expected_header(&self) -> String {
        use base64::Engine as _;
        match self {
            Self::Basic { username, password } => format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
            ),
            Self::Bearer { token } => format!("Bearer {token}"),
        }
    }
}

/// Compares without stopping at the first difference.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_auth(
    State(expected): State<Arc<String>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if same_bytes(given, expected.as_bytes()) {
        next.run(request).await
    } else {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            error_code: 401,
            message: "Unauthorized".into(),
        }
        .into_response()
    }
}

/// A running registry server; stops when [`ServeHandle::shutdown`] is called or it is dropped.
#[derive(Debug)]
pub struct ServeHandle {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl ServeHandle {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL, e.g. `http://127.0.0.1:8081`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting connections, lets in-flight requests finish and waits.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.map_err(std::io::Error::other)?,
            None => Ok(()),
        }
    }

    /// Waits until the server stops on its own (an accept error).
    pub async fn wait(mut self) -> std::io::Result<()> {
        match self.task.take() {
            Some(task) => task.await.map_err(std::io::Error::other)?,
            None => Ok(()),
        }
    }
}

impl Drop for ServeHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Confluent-shaped answer to a request the server layer refuses (a body
/// too large or too slow): `{"error_code": <status>, "message": …}`.
fn render_refusal(refusal: &sagaflow_http::Refusal) -> Response {
    ApiError {
        status: refusal.status(),
        error_code: u32::from(refusal.status().as_u16()),
        message: format!("{}: {refusal}", refusal.code()),
    }
    .into_response()
}

impl Registry {
    /// Serves the REST API on `listener` in a background task, open to
    /// anyone who can connect, with the default server limits.
    pub fn serve(&self, listener: TcpListener) -> std::io::Result<ServeHandle> {
        self.serve_with(listener, None, sagaflow_http::ServerConfig::default())
    }

    /// Serves the REST API, requiring `auth` (when given) on every request;
    /// others get 401 `{"error_code": 401, …}`.
    pub fn serve_with_auth(
        &self,
        listener: TcpListener,
        auth: Option<Auth>,
    ) -> std::io::Result<ServeHandle> {
        self.serve_with(listener, auth, sagaflow_http::ServerConfig::default())
    }

    /// Serves the REST API with `auth` (when given) and the server `limits`:
    /// header, body and idle timeouts, a connection cap and a request body
    /// limit (larger bodies get 413, slower ones 408).
    pub fn serve_with(
        &self,
        listener: TcpListener,
        auth: Option<Auth>,
        limits: sagaflow_http::ServerConfig,
    ) -> std::io::Result<ServeHandle> {
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let mut app = router(self.clone());
        if let Some(auth) = auth {
            let expected = Arc::new(auth.expected_header());
            app = app.layer(axum::middleware::from_fn_with_state(expected, require_auth));
        }
        let server = sagaflow_http::Server::new(limits).render_refusals(render_refusal);
        let task = tokio::spawn(server.serve(listener, app, async move {
            let _ = stopped.await;
        }));
        tracing::info!(%addr, "schema registry listening");
        Ok(ServeHandle {
            addr,
            stop: Some(stop),
            task: Some(task),
        })
    }
}
