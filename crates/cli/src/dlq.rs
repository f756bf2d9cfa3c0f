//! `sagaflow dlq list|show|redrive`: dead letters through the console.

use clap::Subcommand;
use serde_json::{Value, json};

use crate::console_client::{ConsoleApi, ConsoleApiArgs};
use crate::exit::{CliResult, Failure};

#[derive(Debug, Subcommand)]
pub(crate) enum DlqCommand {
    /// List dead letters, newest first: id, time, code, reason, source.
    List {
        #[command(flatten)]
        console: ConsoleApiArgs,
        /// Only those not redriven yet.
        #[arg(long)]
        open: bool,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Print the console's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter with its decoded payload and headers (JSON).
    Show {
        #[command(flatten)]
        console: ConsoleApiArgs,
        id: i64,
    },
    /// Produce dead letters back to their source topics (operator token).
    Redrive {
        #[command(flatten)]
        console: ConsoleApiArgs,
        /// Dead letter ids.
        #[arg(required_unless_present = "all_open")]
        ids: Vec<i64>,
        /// Every dead letter not redriven yet (up to 1000).
        #[arg(long)]
        all_open: bool,
        /// Who asks, for the audit log.
        #[arg(long, env = "USER", default_value = "cli")]
        actor: String,
    },
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub(crate) async fn run(command: DlqCommand) -> CliResult {
    match command {
        DlqCommand::List {
            console,
            open,
            limit,
            json,
        } => {
            let api = ConsoleApi::new(&console, "`dlq list`")?;
            let url = format!("{}/api/dead-letters?open={open}&limit={limit}", api.base);
            let answer = api
                .call(api.client.get(url), "listing dead letters")
                .await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&answer).unwrap_or_default()
                );
                return Ok(());
            }
            let list = answer["dead_letters"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if list.is_empty() {
                println!("no dead letters");
            }
            for d in list {
                println!(
                    "{}\t{}\t{}\t{}\t{}/{}/{}\t{}",
                    cell(&d["id"]),
                    cell(&d["at"]),
                    cell(&d["code"]),
                    cell(&d["reason"]),
                    cell(&d["source_topic"]),
                    cell(&d["source_partition"]),
                    cell(&d["source_offset"]),
                    if d["redriven_at"].is_null() {
                        "open"
                    } else {
                        "redriven"
                    }
                );
            }
            Ok(())
        }
        DlqCommand::Show { console, id } => {
            let api = ConsoleApi::new(&console, "`dlq show`")?;
            let url = format!("{}/api/dead-letters/{id}", api.base);
            let answer = api
                .call(api.client.get(url), &format!("dead letter {id}"))
                .await?;
            println!(
                "{}",
                serde_json::to_string_pretty(&answer).unwrap_or_default()
            );
            Ok(())
        }
        DlqCommand::Redrive {
            console,
            mut ids,
            all_open,
            actor,
        } => {
            let api = ConsoleApi::new(&console, "`dlq redrive`")?;
            if all_open {
                let url = format!("{}/api/dead-letters?open=true&limit=1000", api.base);
                let answer = api
                    .call(api.client.get(url), "listing dead letters")
                    .await?;
                ids.extend(
                    answer["dead_letters"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|d| d["id"].as_i64()),
                );
            }
            if ids.is_empty() {
                println!("nothing to redrive");
                return Ok(());
            }
            let url = format!("{}/api/dead-letters/redrive", api.base);
            let answer = api
                .call(
                    api.client
                        .post(url)
                        .json(&json!({ "ids": ids, "actor": actor })),
                    "redriving",
                )
                .await?;
            let done = answer["redriven"].as_array().map_or(0, Vec::len);
            let errors = answer["errors"].as_array().cloned().unwrap_or_default();
            println!("redriven: {done}, failed: {}", errors.len());
            for e in &errors {
                println!("  {}: {}", cell(&e["id"]), cell(&e["error"]));
            }
            if errors.is_empty() {
                Ok(())
            } else {
                Err(Failure::Found(format!(
                    "{} dead letters were not redriven",
                    errors.len()
                )))
            }
        }
    }
}
