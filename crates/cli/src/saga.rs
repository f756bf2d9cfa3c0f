//! `sagaflow saga list|get|retry|abort`: operator commands over the
//! orchestrator's HTTP API (docs/orchestrator.md), any instance of the group.

use clap::{Args, Subcommand, ValueEnum};
use reqwest::{Client, RequestBuilder, StatusCode};
use serde_json::{Value, json};

use crate::console_client::{self, ConsoleApi, ConsoleApiArgs};
use crate::exit::{CliResult, Failure};

#[derive(Debug, Subcommand)]
pub(crate) enum SagaCommand {
    /// List sagas, most recently updated first.
    List {
        #[command(flatten)]
        api: ApiArgs,
        /// Only sagas of this type.
        #[arg(long = "type", value_name = "SAGA_TYPE")]
        saga_type: Option<String>,
        /// Only sagas in this status.
        #[arg(long, value_enum)]
        status: Option<Status>,
        /// At most this many (the API caps it at 1000; the console at 500).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        search: SearchArgs,
    },
    /// Show one saga: status, current step, result and its history.
    Get {
        #[command(flatten)]
        api: ApiArgs,
        /// The saga id, e.g. `order-checkout:o-17`.
        saga_id: String,
    },
    /// Retry a failed saga from the step that failed; with `--filter`,
    /// every saga of the console's history that matches.
    Retry {
        #[command(flatten)]
        api: ApiArgs,
        #[arg(required_unless_present = "filter")]
        saga_id: Option<String>,
        #[command(flatten)]
        bulk: BulkArgs,
    },
    /// Abort a running saga: it compensates what it has done; with
    /// `--filter`, every saga of the console's history that matches.
    Abort {
        #[command(flatten)]
        api: ApiArgs,
        #[arg(required_unless_present = "filter")]
        saga_id: Option<String>,
        /// Why, recorded in the saga's history.
        #[arg(long, default_value = "aborted by an operator")]
        reason: String,
        #[command(flatten)]
        bulk: BulkArgs,
    },
}

/// Searching the console's history (any of these sends `saga list` to the
/// console instead of the orchestrator).
#[derive(Debug, Clone, Args)]
pub(crate) struct SearchArgs {
    /// Saga id, or its beginning.
    #[arg(long)]
    id: Option<String>,
    /// The trigger's correlation key (e.g. the order id).
    #[arg(long)]
    key: Option<String>,
    /// Words of an error the saga had.
    #[arg(long)]
    error: Option<String>,
    /// A search attribute, NAME=VALUE (repeatable: all must match).
    #[arg(long = "attr", value_name = "NAME=VALUE", value_parser = console_client::pair)]
    attrs: Vec<(String, String)>,
    /// Started at or after, ms since the epoch.
    #[arg(long)]
    from: Option<i64>,
    /// Started before, ms since the epoch.
    #[arg(long)]
    to: Option<i64>,
    #[command(flatten)]
    console: ConsoleApiArgs,
}

impl SearchArgs {
    fn used(&self) -> bool {
        self.id.is_some()
            || self.key.is_some()
            || self.error.is_some()
            || !self.attrs.is_empty()
            || self.from.is_some()
            || self.to.is_some()
            || self.console.console_url.is_some()
    }
}

/// Bulk retry/abort through the console.
#[derive(Debug, Clone, Args)]
pub(crate) struct BulkArgs {
    /// A search term of the console's history, NAME=VALUE (repeatable):
    /// `status=FAILED`, `type=order-checkout`, `key=o-1`, `error=declined`,
    /// `attr.customer_id=c-1`, `from=<ms>`, `to=<ms>`, `version=1`, `id=<prefix>`.
    #[arg(long, value_name = "NAME=VALUE", value_parser = console_client::pair, conflicts_with = "saga_id")]
    filter: Vec<(String, String)>,
    /// Only count the matching sagas; change nothing.
    #[arg(long, requires = "filter")]
    dry_run: bool,
    /// Who asks, for the console's audit log.
    #[arg(long, env = "USER", default_value = "cli")]
    actor: String,
    #[command(flatten)]
    console: ConsoleApiArgs,
}

async fn bulk(action: &str, b: &BulkArgs, reason: Option<&str>, output: Output) -> CliResult {
    let api = ConsoleApi::new(&b.console, &format!("`saga {action} --filter`"))?;
    let url = format!(
        "{}/api/bulk/{action}?{}",
        api.base,
        console_client::query(&b.filter)
    );
    let body = json!({ "dry_run": b.dry_run, "actor": b.actor, "reason": reason });
    let answer = api
        .call(api.client.post(url).json(&body), &format!("bulk {action}"))
        .await?;
    if output == Output::Json {
        print_json(&answer);
        return Ok(());
    }
    if b.dry_run {
        println!(
            "{} sagas match; nothing changed (drop --dry-run to {action} them)",
            text(&answer["matched"])
        );
        return Ok(());
    }
    println!(
        "{action}: {} matched, {} accepted, {} failed",
        text(&answer["matched"]),
        text(&answer["succeeded"]),
        text(&answer["failed"])
    );
    for e in answer["errors"].as_array().into_iter().flatten() {
        println!("  {}: {}", text(&e["saga_id"]), text(&e["error"]));
    }
    if answer["failed"].as_i64().unwrap_or(0) > 0 {
        return Err(Failure::Found(format!(
            "{} sagas were not {action}-requested",
            text(&answer["failed"])
        )));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Status {
    Running,
    Compensating,
    Completed,
    Compensated,
    Failed,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Compensating => "compensating",
            Self::Completed => "completed",
            Self::Compensated => "compensated",
            Self::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    /// Readable tables.
    Table,
    /// The API's JSON, one document.
    Json,
}

/// Where the orchestrator's API is and how to present the answer.
#[derive(Debug, Clone, Args)]
pub(crate) struct ApiArgs {
    /// Base URL of any orchestrator instance's HTTP API.
    #[arg(
        long,
        env = "SAGAFLOW_API_URL",
        default_value = "http://127.0.0.1:8080",
        value_name = "URL"
    )]
    api: String,
    /// Bearer token, when the orchestrator requires one (`http.token-env`).
    #[arg(long, env = "SAGAFLOW_API_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    output: Output,
}

struct Api {
    client: Client,
    base: String,
    token: Option<String>,
}

impl Api {
    fn new(args: &ApiArgs) -> CliResult<Self> {
        let base = args.api.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Failure::Usage(format!(
                "--api `{base}` is not an http:// or https:// URL"
            )));
        }
        let client = Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .connect_timeout(std::time::Duration::from_secs(5))
            .build()
            .map_err(|e| Failure::Usage(format!("HTTP client: {e}")))?;
        Ok(Self {
            client,
            base,
            token: args.token.clone(),
        })
    }

    fn authed(&self, r: RequestBuilder) -> RequestBuilder {
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// Sends the request and returns the JSON answer of a 2xx, or a failure
    /// saying what went wrong and what to do.
    async fn call(&self, r: RequestBuilder, what: &str) -> CliResult<Value> {
        let resp = self.authed(r).send().await.map_err(|e| {
            Failure::Unreachable(format!(
                "cannot reach the orchestrator API at {} ({what}): {}; is an orchestrator running? \
                 start one with `sagaflow orchestrator --config …` or `sagaflow dev`, or point --api / \
                 SAGAFLOW_API_URL at it",
                self.base,
                root_cause(&e)
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
            StatusCode::NOT_FOUND => Err(Failure::Usage(format!("{what}: {message}"))),
            StatusCode::UNAUTHORIZED => Err(Failure::Usage(format!(
                "{what}: the orchestrator API requires a bearer token: pass --token or set SAGAFLOW_API_TOKEN"
            ))),
            s if s.is_server_error() => Err(Failure::Unreachable(format!(
                "{what}: the orchestrator answered {s}: {message}"
            ))),
            s => Err(Failure::Usage(format!(
                "{what}: the orchestrator answered {s}: {message}"
            ))),
        }
    }

    async fn saga(&self, id: &str) -> CliResult<Value> {
        let url = format!("{}/v1/sagas/{}", self.base, encode_segment(id));
        self.call(self.client.get(url), &format!("saga `{id}`"))
            .await
    }
}

/// The innermost error of a reqwest failure ("Connection refused"), which
/// says more than reqwest's outer "error sending request".
fn root_cause(e: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Percent-encodes a path segment (saga ids contain `:` and may contain `/`).
fn encode_segment(s: &str) -> String {
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

pub(crate) async fn run(command: SagaCommand) -> CliResult {
    match command {
        SagaCommand::List {
            api,
            saga_type,
            status,
            limit,
            search,
        } if search.used() => {
            let console = ConsoleApi::new(&search.console, "searching sagas")?;
            let mut terms: Vec<(String, String)> =
                vec![("limit".into(), limit.min(500).to_string())];
            let mut add = |k: &str, v: Option<String>| {
                if let Some(v) = v {
                    terms.push((k.to_owned(), v));
                }
            };
            add("type", saga_type);
            add("status", status.map(|s| s.as_str().to_ascii_uppercase()));
            add("id", search.id.clone());
            add("key", search.key.clone());
            add("error", search.error.clone());
            add("from", search.from.map(|v| v.to_string()));
            add("to", search.to.map(|v| v.to_string()));
            for (k, v) in &search.attrs {
                terms.push((format!("attr.{k}"), v.clone()));
            }
            let url = format!(
                "{}/api/sagas?{}",
                console.base,
                console_client::query(&terms)
            );
            let answer = console
                .call(console.client.get(url), "searching sagas")
                .await?;
            match api.output {
                Output::Json => print_json(&answer),
                Output::Table => {
                    let sagas = answer["sagas"].as_array().cloned().unwrap_or_default();
                    print!("{}", list_table(&sagas));
                }
            }
            Ok(())
        }
        SagaCommand::List {
            api,
            saga_type,
            status,
            limit,
            search: _,
        } => {
            let client = Api::new(&api)?;
            let mut query = vec![("limit", limit.to_string())];
            if let Some(t) = &saga_type {
                query.push(("type", t.clone()));
            }
            if let Some(s) = status {
                query.push(("status", s.as_str().to_owned()));
            }
            let query: Vec<String> = query
                .iter()
                .map(|(k, v)| format!("{k}={}", encode_segment(v)))
                .collect();
            let req = client
                .client
                .get(format!("{}/v1/sagas?{}", client.base, query.join("&")));
            let answer = client.call(req, "listing sagas").await?;
            match api.output {
                Output::Json => print_json(&answer),
                Output::Table => {
                    let sagas = answer["sagas"].as_array().cloned().unwrap_or_default();
                    print!("{}", list_table(&sagas));
                }
            }
            Ok(())
        }
        SagaCommand::Get { api, saga_id } => {
            let client = Api::new(&api)?;
            let saga = client.saga(&saga_id).await?;
            match api.output {
                Output::Json => print_json(&saga),
                Output::Table => print!("{}", saga_details(&saga)),
            }
            Ok(())
        }
        SagaCommand::Retry {
            api,
            saga_id: None,
            bulk: b,
        } => bulk("retry", &b, None, api.output).await,
        SagaCommand::Abort {
            api,
            saga_id: None,
            reason,
            bulk: b,
        } => bulk("abort", &b, Some(&reason), api.output).await,
        SagaCommand::Retry {
            api,
            saga_id: Some(saga_id),
            bulk: _,
        } => {
            let client = Api::new(&api)?;
            let saga = client.saga(&saga_id).await?;
            let status = saga["status"].as_str().unwrap_or_default();
            if status != "failed" {
                return Err(Failure::Found(format!(
                    "saga `{saga_id}` is {status}: only a failed saga can be retried"
                )));
            }
            let url = format!(
                "{}/v1/sagas/{}/retry",
                client.base,
                encode_segment(&saga_id)
            );
            let answer = client
                .call(client.client.post(url), &format!("retrying `{saga_id}`"))
                .await?;
            report_request(&api, &answer, "retry", &saga_id);
            Ok(())
        }
        SagaCommand::Abort {
            api,
            saga_id: Some(saga_id),
            reason,
            bulk: _,
        } => {
            let client = Api::new(&api)?;
            let saga = client.saga(&saga_id).await?;
            let status = saga["status"].as_str().unwrap_or_default();
            if !matches!(status, "running") {
                return Err(Failure::Found(format!(
                    "saga `{saga_id}` is {status}: only a running saga can be aborted"
                )));
            }
            let url = format!(
                "{}/v1/sagas/{}/abort",
                client.base,
                encode_segment(&saga_id)
            );
            let answer = client
                .call(
                    client.client.post(url).json(&json!({ "reason": reason })),
                    &format!("aborting `{saga_id}`"),
                )
                .await?;
            report_request(&api, &answer, "abort", &saga_id);
            Ok(())
        }
    }
}

fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

fn report_request(api: &ApiArgs, answer: &Value, what: &str, saga_id: &str) {
    match api.output {
        Output::Json => print_json(answer),
        Output::Table => println!(
            "{what} of {saga_id} accepted (request {}); follow it with `sagaflow saga get {saga_id}`",
            answer["request_id"].as_str().unwrap_or("?")
        ),
    }
}

/// `ms` since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn time(ms: &Value) -> String {
    match ms.as_i64().and_then(|ms| u64::try_from(ms).ok()) {
        Some(ms) => humantime::format_rfc3339_millis(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
        )
        .to_string(),
        None => "-".into(),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A table with a header row, columns as wide as their widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                l.push_str(&format!("{cell:<w$}  "));
            }
        }
        l.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}

fn list_table(sagas: &[Value]) -> String {
    if sagas.is_empty() {
        return "no sagas\n".into();
    }
    let rows: Vec<Vec<String>> = sagas
        .iter()
        .map(|s| {
            vec![
                text(&s["saga_id"]),
                text(&s["saga_type"]),
                text(&s["status"]),
                text(&s["current_step"]),
                time(&s["started_at"]),
                time(&s["updated_at"]),
            ]
        })
        .collect();
    table(
        &["SAGA ID", "TYPE", "STATUS", "STEP", "STARTED", "UPDATED"],
        &rows,
    )
}

fn saga_details(s: &Value) -> String {
    let mut out = String::new();
    let field = |name: &str, value: String| format!("{name:<13}{value}\n");
    out.push_str(&field("saga", text(&s["saga_id"])));
    out.push_str(&field(
        "type",
        format!("{} v{}", text(&s["saga_type"]), text(&s["saga_version"])),
    ));
    out.push_str(&field("status", text(&s["status"])));
    out.push_str(&field("current step", text(&s["current_step"])));
    out.push_str(&field("started", time(&s["started_at"])));
    out.push_str(&field("updated", time(&s["updated_at"])));
    if let Some(r) = s.get("result").filter(|r| !r.is_null()) {
        out.push_str(&field("output", text(&r["output"])));
        if !r["error"].is_null() {
            out.push_str(&field("error", text(&r["error"])));
        }
    }
    let history = s["history"].as_array().cloned().unwrap_or_default();
    if !history.is_empty() {
        out.push_str("\nhistory:\n");
        let rows: Vec<Vec<String>> = history
            .iter()
            .map(|e| {
                vec![
                    time(&e["at"]),
                    text(&e["kind"]),
                    text(&e["step"]),
                    text(&e["attempt"]),
                    text(&e["detail"]),
                ]
            })
            .collect();
        out.push_str(&table(&["AT", "EVENT", "STEP", "ATTEMPT", "DETAIL"], &rows));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_and_show_missing_values_as_dashes() {
        let sagas = vec![
            json!({"saga_id": "order-checkout:o-1", "saga_type": "order-checkout", "status": "completed",
                   "current_step": null, "started_at": 0, "updated_at": 1500}),
            json!({"saga_id": "t:b", "saga_type": "travel-booking", "status": "running",
                   "current_step": "reserve_trip", "started_at": 0, "updated_at": 0}),
        ];
        let t = list_table(&sagas);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(
            lines[0].starts_with("SAGA ID             TYPE            STATUS"),
            "{t}"
        );
        assert!(lines[1].contains("  -  "), "{t}");
        assert!(lines[1].ends_with("1970-01-01T00:00:01.500Z"), "{t}");
        assert_eq!(list_table(&[]), "no sagas\n");
    }

    #[test]
    fn details_show_result_error_and_history() {
        let s = json!({"saga_id": "x:1", "saga_type": "x", "saga_version": 2, "status": "failed",
            "current_step": "charge", "started_at": 0, "updated_at": 0,
            "result": {"output": null, "error": "card declined"},
            "history": [{"at": 0, "kind": "started", "step": null, "attempt": null, "detail": null}]});
        let d = saga_details(&s);
        assert!(d.contains("type         x v2\n"), "{d}");
        assert!(d.contains("error        card declined\n"), "{d}");
        assert!(d.contains("history:\nAT"), "{d}");
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(encode_segment("order-checkout:o-1"), "order-checkout:o-1");
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
    }
}
