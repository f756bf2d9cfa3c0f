//! A custom adapter written with the SDK: provisions team workspaces in an
//! in-memory registry. The `Executor` adds idempotency, retries, circuit
//! breaking, limits and metrics; the handler only does the work.
//!
//! Run: `cargo run -p sagaflow-adapter --example workspaces`

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use sagaflow_adapter::{
    AdapterCommand, AdapterMetrics, AdapterOutcome, CallContext, CommandHandler, Executor,
    ExecutorSettings,
};
use serde_json::json;

/// Workspaces per team allowed on each plan.
fn plan_limit(plan: &str) -> Option<usize> {
    match plan {
        "free" => Some(1),
        "team" => Some(3),
        "enterprise" => Some(50),
        _ => None,
    }
}

/// `"Data Science!"` → `"data-science"`.
fn slug(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    out.trim_end_matches('-').to_owned()
}

#[derive(Debug, Clone)]
struct Workspace {
    team: String,
    slug: String,
    storage_gb: u64,
}

#[derive(Default)]
struct Workspaces {
    by_id: Mutex<BTreeMap<String, Workspace>>,
}

impl Workspaces {
    fn provision(&self, cmd: &AdapterCommand) -> AdapterOutcome {
        let (Some(team), Some(name), Some(plan)) = (
            cmd.input["team"].as_str(),
            cmd.input["name"].as_str(),
            cmd.input["plan"].as_str(),
        ) else {
            return AdapterOutcome::business_failure(
                "invalid_command",
                "provision needs `team`, `name` and `plan`",
            );
        };
        let Some(limit) = plan_limit(plan) else {
            return AdapterOutcome::business_failure("unknown_plan", format!("no plan `{plan}`"));
        };
        // One workspace per saga: the saga id makes provisioning idempotent
        // even across adapter restarts (the executor dedupes redeliveries).
        let id = format!("ws-{}", cmd.saga_id);
        let mut all = self
            .by_id
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(ws) = all.get(&id) {
            return AdapterOutcome::success(json!({"workspace_id": id, "slug": ws.slug}));
        }
        let used = all.values().filter(|w| w.team == team).count();
        if used >= limit {
            return AdapterOutcome::business_failure(
                "quota_exceeded",
                format!("team `{team}` already has {used} workspace(s) on plan `{plan}`"),
            );
        }
        let ws = Workspace {
            team: team.to_owned(),
            slug: format!("{}-{}", slug(team), slug(name)),
            storage_gb: 10 * limit as u64,
        };
        let data = json!({"workspace_id": id, "slug": ws.slug, "storage_gb": ws.storage_gb});
        all.insert(id, ws);
        AdapterOutcome::success(data)
    }

    fn deprovision(&self, cmd: &AdapterCommand) -> AdapterOutcome {
        let id = format!("ws-{}", cmd.saga_id);
        let removed = self
            .by_id
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id)
            .is_some();
        AdapterOutcome::success(json!({"workspace_id": id, "removed": removed}))
    }
}

#[async_trait::async_trait]
impl CommandHandler for Workspaces {
    async fn handle(&self, cmd: &AdapterCommand, _ctx: &CallContext) -> AdapterOutcome {
        match cmd.operation.as_str() {
            "provision" => self.provision(cmd),
            "deprovision" => self.deprovision(cmd),
            other => AdapterOutcome::business_failure(
                "unknown_operation",
                format!("workspaces has no operation `{other}`"),
            ),
        }
    }

    fn knows_operation(&self, operation: &str) -> bool {
        matches!(operation, "provision" | "deprovision")
    }
}

fn command(saga: &str, operation: &str, input: serde_json::Value) -> AdapterCommand {
    AdapterCommand {
        command_id: format!("team-onboarding:{saga}/{operation}/1"),
        saga_id: saga.to_owned(),
        saga_type: "team-onboarding".into(),
        step: operation.to_owned(),
        service: "workspaces".into(),
        operation: operation.to_owned(),
        attempt: 1,
        input,
        timeout_ms: 2_000,
        traceparent: None,
        tracestate: None,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let registry = prometheus::Registry::new();
    let metrics = AdapterMetrics::register(&registry)?;
    let executor = Executor::new(
        ExecutorSettings::new("workspaces"),
        Arc::new(Workspaces::default()),
        metrics,
    );
    let commands = [
        command(
            "s-1",
            "provision",
            json!({"team": "Data Science", "name": "Lab", "plan": "free"}),
        ),
        // Redelivery of the same command: answered from the idempotency store.
        command(
            "s-1",
            "provision",
            json!({"team": "Data Science", "name": "Lab", "plan": "free"}),
        ),
        command(
            "s-2",
            "provision",
            json!({"team": "Data Science", "name": "Prod", "plan": "free"}),
        ),
        command("s-2", "deprovision", json!({})),
    ];
    for cmd in &commands {
        let outcome = executor.execute(cmd).await;
        println!("{} -> {}", cmd.command_id, serde_json::to_string(&outcome)?);
    }
    let hits = prometheus::TextEncoder::new().encode_to_string(&registry.gather())?;
    for line in hits
        .lines()
        .filter(|l| l.starts_with("sagaflow_adapter_idempotent"))
    {
        println!("{line}");
    }
    Ok(())
}
