//! `sagaflow schemas …`: register and check the schemas of a directory.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use sagaflow_codec::schema_set::{self, SchemaFile};

use crate::exit::{CliResult, Failure};
use crate::registry_client::{RegistryArgs, RegistryClient, same_schema};

#[derive(Debug, Subcommand)]
pub(crate) enum SchemasCommand {
    /// Register every schema of the directory under its subject (idempotent).
    ///
    /// Subjects come from <DIR>/subjects.json; a schema not listed there is
    /// registered under its record's full name. Exits 1 if the registry
    /// rejects a schema (e.g. incompatible), after trying all of them.
    Register(DirArgs),
    /// Check every changed schema against the latest registered version.
    ///
    /// Uses the registry's compatibility level for each subject (BACKWARD by
    /// default). Prints why a schema is incompatible and exits 1 if any is.
    Check(DirArgs),
}

#[derive(Debug, Args)]
pub(crate) struct DirArgs {
    #[command(flatten)]
    registry: RegistryArgs,
    /// Directory holding the .avsc files (searched recursively) and subjects.json.
    #[arg(long, default_value = "schemas", value_name = "DIR")]
    dir: PathBuf,
}

fn load(dir: &Path) -> CliResult<Vec<SchemaFile>> {
    let files = schema_set::load_dir(dir).map_err(|e| Failure::Usage(e.to_string()))?;
    if files.is_empty() {
        return Err(Failure::Usage(format!(
            "no .avsc files in {}",
            dir.display()
        )));
    }
    Ok(files)
}

fn display(file: &SchemaFile, dir: &Path) -> String {
    file.path
        .strip_prefix(dir)
        .unwrap_or(&file.path)
        .display()
        .to_string()
}

pub(crate) async fn run(command: SchemasCommand) -> CliResult {
    match command {
        SchemasCommand::Register(args) => register(args).await,
        SchemasCommand::Check(args) => check(args).await,
    }
}

async fn register(args: DirArgs) -> CliResult {
    let files = load(&args.dir)?;
    let client = RegistryClient::new(args.registry)?;
    let mut rejected = 0;
    for file in &files {
        match client.register(&file.subject, &file.text).await? {
            Ok(id) => println!(
                "registered {} as {} (id {id})",
                display(file, &args.dir),
                file.subject
            ),
            Err(e) => {
                rejected += 1;
                println!(
                    "REJECTED {} as {}: {} (error {})",
                    display(file, &args.dir),
                    file.subject,
                    e.message,
                    e.error_code
                );
            }
        }
    }
    if rejected > 0 {
        return Err(Failure::Found(format!(
            "{rejected} of {} schemas rejected by {}",
            files.len(),
            client.url()
        )));
    }
    println!("{} schemas registered at {}", files.len(), client.url());
    Ok(())
}

async fn check(args: DirArgs) -> CliResult {
    let files = load(&args.dir)?;
    let client = RegistryClient::new(args.registry)?;
    let mut incompatible = 0;
    for file in &files {
        let name = display(file, &args.dir);
        let latest = match client.latest(&file.subject).await? {
            Ok(latest) => latest,
            Err(e) if e.error_code == 40401 || e.error_code == 40402 => {
                println!(
                    "new       {name} ({}): not registered yet, nothing to check",
                    file.subject
                );
                continue;
            }
            Err(e) => {
                return Err(Failure::Usage(format!(
                    "{}: registry error {}: {}",
                    file.subject, e.error_code, e.message
                )));
            }
        };
        if same_schema(&latest.schema, &file.text) {
            println!(
                "unchanged {name} ({} version {}, id {})",
                file.subject, latest.version, latest.id
            );
            continue;
        }
        match client.check(&file.subject, &file.text).await? {
            Ok(answer) if answer.is_compatible => {
                println!(
                    "ok        {name}: compatible with {} version {}",
                    file.subject, latest.version
                );
            }
            Ok(answer) => {
                incompatible += 1;
                println!(
                    "FAIL      {name}: incompatible with {} version {}",
                    file.subject, latest.version
                );
                if answer.messages.is_empty() {
                    println!("            - (the registry gave no reason)");
                }
                for message in &answer.messages {
                    println!("            - {message}");
                }
            }
            Err(e) => {
                incompatible += 1;
                println!(
                    "FAIL      {name}: registry error {}: {}",
                    e.error_code, e.message
                );
            }
        }
    }
    if incompatible > 0 {
        return Err(Failure::Found(format!(
            "{incompatible} of {} schemas are incompatible with what {} holds",
            files.len(),
            client.url()
        )));
    }
    Ok(())
}
