//! deploy/ against a real Prometheus: it scrapes real orchestrator and
//! adapter processes running order-checkout sagas, loads the rules file from
//! deploy/prometheus/rules/, and every PromQL expression of the Grafana
//! dashboards and of every rule must parse and return data.
//!
//! Alert expressions with a threshold are empty when all is well, so each is
//! split at its top-level set operators (`and`, `or`, `unless`) and
//! comparisons, and every operand is evaluated on its own.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sagaflow_test_support as support;
use sagaflow_test_support::free_port;
use sagaflow_test_support::process::ChildGuard;
use serde_json::Value;

use common::{SERVICES, Stack};

const PROMETHEUS: &str = "/usr/bin/prometheus";

/// Counters whose series appear only once their event happens (a timer
/// firing, a restore with sagas in flight, a fencing event, an ingest
/// request, an eviction, a cache or idempotency hit, a failed produce, a
/// handler panic). This run causes none of them, so their dashboard
/// operands must parse but may return no data.
const EVENT_ONLY: &[&str] = &[
    "sagaflow_timers_fired_total",
    "sagaflow_outbox_resent_total",
    "sagaflow_view_evictions_total",
    "sagaflow_ingest_events_total",
    "sagaflow_fencing_total",
    "sagaflow_orchestrator_retries_total",
    "sagaflow_adapter_cache_hits_total",
    "sagaflow_adapter_idempotent_hits_total",
    "sagaflow_adapter_produce_retries_total",
    "sagaflow_adapter_produce_failures_total",
    "sagaflow_adapter_handler_panics_total",
];
const WAIT: Duration = Duration::from_secs(120);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Splits `expr` at the top level (outside parentheses, braces, brackets
/// and strings) at the lowest-precedence binary operators present: first
/// `or`, then `and`/`unless`, then comparisons (`==`, `!=`, `>=`, `<=`,
/// `>`, `<`). Returns the operands that are not plain numbers, each split
/// again, so the leaves are the expressions that must carry data.
fn operands(expr: &str) -> Vec<String> {
    let levels: [&[&str]; 3] = [
        &["or"],
        &["and", "unless"],
        &["==", "!=", ">=", "<=", ">", "<"],
    ];
    for ops in levels {
        let parts = split_top(expr, ops);
        if parts.len() > 1 {
            return parts
                .into_iter()
                .map(|p| strip_modifiers(&p))
                .filter(|p| p.parse::<f64>().is_err())
                .flat_map(|p| operands(&p))
                .collect();
        }
    }
    vec![expr.trim().to_owned()]
}

/// Drops a leading `bool` and `on(...)`/`ignoring(...)`/`group_left(...)`
/// modifiers that belong to the operator the operand was split from.
fn strip_modifiers(part: &str) -> String {
    let mut p = part.trim();
    loop {
        let before = p;
        for kw in ["bool", "on", "ignoring", "group_left", "group_right"] {
            if let Some(rest) = p.strip_prefix(kw)
                && rest.starts_with(|c: char| c.is_whitespace() || c == '(')
            {
                let rest = rest.trim_start();
                p = if let Some(inner) = rest.strip_prefix('(') {
                    inner.split_once(')').map(|(_, r)| r).unwrap_or("").trim()
                } else {
                    rest
                };
            }
        }
        if p == before {
            return p.to_owned();
        }
    }
}

fn split_top(expr: &str, ops: &[&str]) -> Vec<String> {
    let b = expr.as_bytes();
    let (mut depth, mut i, mut start) = (0i32, 0usize, 0usize);
    let mut parts = Vec::new();
    while i < b.len() {
        let c = b[i];
        match c {
            b'"' | b'\'' | b'`' => {
                i += 1;
                while i < b.len() && b[i] != c {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'(' | b'{' | b'[' => depth += 1,
            b')' | b'}' | b']' => depth -= 1,
            _ if depth == 0 => {
                let word_boundary = |j: usize| {
                    j >= b.len() || !(b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] == b':')
                };
                let prev_ok = i == 0 || word_boundary(i - 1);
                if let Some(op) = ops.iter().find(|op| expr[i..].starts_with(**op)) {
                    let alpha = op.as_bytes()[0].is_ascii_alphabetic();
                    // `=~`/`!~` only occur inside braces; `>=` before `>`.
                    if !alpha || (prev_ok && word_boundary(i + op.len())) {
                        parts.push(expr[start..i].to_owned());
                        i += op.len();
                        start = i;
                        continue;
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    parts.push(expr[start..].to_owned());
    parts
}

/// Dashboard template variables and Grafana's interval, as a query sees them.
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$saga_type", ".*")
        .replace("$service", ".*")
}

/// Every PromQL expression of a dashboard: panel targets, and the metric a
/// `label_values(metric, label)` variable reads.
fn dashboard_exprs(file: &Path) -> Vec<(String, String)> {
    let d: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().expect("targets") {
            let expr = t["expr"].as_str().expect("target expr");
            out.push((
                format!("{name}: panel {:?} target {}", p["title"], t["refId"]),
                substitute(expr),
            ));
        }
    }
    for v in d["templating"]["list"].as_array().expect("templating") {
        if v["type"] == "datasource" {
            // The Prometheus data source picker: no query of its own.
            continue;
        }
        let q = v["definition"].as_str().expect("variable definition");
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .and_then(|r| r.rsplit_once(','))
            .unwrap_or_else(|| panic!("{name}: variable {q}: expected label_values(m, l)"));
        out.push((
            format!("{name}: variable {}", v["name"]),
            format!("count by ({}) ({})", inner.1.trim(), inner.0.trim()),
        ));
    }
    out
}

async fn query(client: &reqwest::Client, base: &str, expr: &str) -> Result<usize, String> {
    let url = format!("{base}/api/v1/query?query={}", encode(expr));
    let resp = client
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("request: {e}"))?;
    let body: Value = resp.json().await.map_err(|e| format!("body: {e}"))?;
    if body["status"] != "success" {
        return Err(format!(
            "{}: {}",
            body["errorType"].as_str().unwrap_or("?"),
            body["error"].as_str().unwrap_or("?")
        ));
    }
    Ok(body["data"]["result"].as_array().map_or(0, Vec::len))
}

#[test]
fn operands_split_at_top_level_only() {
    assert_eq!(
        operands("sum by (a) (x{b=~\"a|>\"}) > 0 and delta(y[5m]) >= 0 or z == bool 1"),
        ["sum by (a) (x{b=~\"a|>\"})", "delta(y[5m])", "z"]
    );
    assert_eq!(operands("a / on(x) b"), ["a / on(x) b"]);
    assert_eq!(operands("max(c) >= 2"), ["max(c)"]);
    assert_eq!(operands("brand_new > 1"), ["brand_new"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_dashboard_and_rule_expression_returns_data_from_a_real_prometheus() {
    assert!(
        Path::new(PROMETHEUS).exists(),
        "{PROMETHEUS} not found: this test runs a real Prometheus; run `apt-get install prometheus`"
    );
    let mut stack = Stack::start("obs", 3).await;
    // Shipping is rate limited (1/s): sagas arriving together wait for it,
    // so the rate-limit series carries data; `flaky-1`'s first call gets a
    // 503 and is retried, so the retry series does.
    let shipping = stack.path("shipping.service.yaml");
    let text = std::fs::read_to_string(&shipping).unwrap();
    let limited = text.replacen(
        "protection:\n",
        "protection:\n  rate-limit: { per-second: 1, burst: 1 }\n",
        1,
    );
    assert_ne!(text, limited);
    std::fs::write(&shipping, limited).unwrap();
    stack.start_adapters();
    stack.start_orchestrator();
    let reader = stack.results_reader();

    // Completed and compensated sagas.
    let orders = [
        "ok-1", "ok-2", "ok-3", "big-1", "oos-1", "broke-1", "fraud-1", "flaky-1",
    ];
    for o in orders {
        let (customer, total) = match o {
            "broke-1" => ("broke", 4_200),
            "fraud-1" => ("fraudster", 250_000),
            "big-1" => ("c-1", 250_000),
            _ => ("c-1", 4_200),
        };
        stack.place_order(o, customer, total).await;
    }
    // Dead letters in the orchestrator and in an adapter.
    stack
        .send_raw(
            &stack.topic("orders.events"),
            "junk",
            b"\x00\x00\x00\x00\x07junk",
        )
        .await;
    stack
        .send_raw(
            &stack.topic("sagaflow.commands.inventory"),
            "junk",
            b"not a command",
        )
        .await;
    let mut results = BTreeMap::new();
    let mut copies = 0;
    stack
        .collect_results(&reader, &mut results, &mut copies, orders.len(), WAIT)
        .await;
    assert_eq!(results.len(), orders.len(), "sagas ended\n{}", stack.logs());

    let mut targets: Vec<String> = stack
        .orchestrators
        .iter()
        .map(|c| c.http_addr(WAIT))
        .collect();
    targets.extend(stack.adapters.iter().map(|c| c.http_addr(WAIT)));
    assert_eq!(targets.len(), 1 + SERVICES.len());

    let dir = tempfile::tempdir().unwrap();
    let rules = root().join("deploy/prometheus/rules/sagaflow.rules.yml");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: sagaflow\n    static_configs:\n      - targets: [{}]\n",
            rules.display(),
            targets
                .iter()
                .map(|t| format!("\"{t}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )
    .unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(PROMETHEUS);
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"));
    let prometheus = ChildGuard::command("prometheus", cmd, dir.path().join("prometheus.log"));
    let base = format!("http://{addr}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();

    // The rules as Prometheus loaded them: the file must have loaded whole.
    let deadline = tokio::time::Instant::now() + WAIT;
    let rule_list = loop {
        if let Ok(r) = client.get(format!("{base}/api/v1/rules")).send().await
            && let Ok(v) = r.json::<Value>().await
            && v["status"] == "success"
        {
            break v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Prometheus did not answer on {base}\n{}",
            prometheus.output()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut exprs = Vec::new();
    for g in rule_list["data"]["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            let name = r["name"].as_str().unwrap();
            exprs.push((
                format!("rule {name} ({})", r["type"].as_str().unwrap()),
                r["query"].as_str().unwrap().to_owned(),
            ));
        }
    }
    let loaded = exprs.len();
    let in_file = std::fs::read_to_string(&rules)
        .unwrap()
        .lines()
        .filter(|l| {
            l.trim_start().starts_with("- record:") || l.trim_start().starts_with("- alert:")
        })
        .count();
    assert_eq!(
        loaded,
        in_file,
        "Prometheus loaded every rule of {}",
        rules.display()
    );
    for d in ["saga-throughput.json", "adapters.json"] {
        exprs.extend(dashboard_exprs(
            &root().join("deploy/grafana/dashboards").join(d),
        ));
    }

    // Every expression parses (now), and each of its operands returns data
    // once a few scrapes and rule evaluations have happened.
    let mut checks = Vec::new();
    for (what, expr) in &exprs {
        if let Err(e) = query(&client, &base, expr).await {
            panic!("{what}: `{expr}` does not parse: {e}");
        }
        for leaf in operands(expr) {
            checks.push((what.clone(), leaf));
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut empty = Vec::new();
        for (what, leaf) in &checks {
            match query(&client, &base, leaf).await {
                Ok(0) if EVENT_ONLY.iter().any(|m| leaf.contains(m)) => {}
                Ok(0) => empty.push(format!("{what}: `{leaf}`")),
                Ok(_) => {}
                Err(e) => panic!("{what}: operand `{leaf}` does not parse: {e}"),
            }
        }
        if empty.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {} expressions return no data:\n{}\n{}",
            empty.len(),
            checks.len(),
            empty.join("\n"),
            stack.logs()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!(
        "{} expressions ({} rules, {} operands) return data",
        exprs.len(),
        loaded,
        checks.len()
    );
    let _ = support::unique("obs");
}
