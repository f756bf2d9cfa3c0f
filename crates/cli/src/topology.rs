//! `sagaflow topology …`: check saga definitions and draw them.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use sagaflow_engine::definition::{OnDeadline, StepKind};
use sagaflow_engine::{
    DefinitionError, DefinitionErrors, DefinitionRegistry, NodeId, RawSagaDefinition,
    SagaDefinition, ServiceCatalog,
};

use crate::exit::{CliResult, Failure};

#[derive(Debug, Subcommand)]
pub(crate) enum TopologyCommand {
    /// Check every saga definition (<DIR>/sagas/*.yaml) and <DIR>/services.yaml.
    ///
    /// Prints every problem at once as file:line:col with its SF-DEF code,
    /// and exits 1 if there is any.
    Validate(DirArgs),
    /// Print a Mermaid flowchart of a saga (latest version): steps, parallel
    /// branches, awaits, emits; compensations as dashed edges.
    Graph(GraphArgs),
    /// Create the topics declared in a topics file (default
    /// topology/topics.yaml) with their partitions, replication and configs.
    ///
    /// Topics that exist already are left as they are.
    Apply(ApplyArgs),
    /// Write an AsyncAPI 3.0 document of the topics the definitions use:
    /// triggers and awaited events, commands per service, replies, saga
    /// events, emitted events and dead letters, with their Avro schemas
    /// and headers (see docs/protocol.md).
    Asyncapi(crate::asyncapi::AsyncapiArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ApplyArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "SAGAFLOW_BOOTSTRAP_SERVERS", value_name = "HOSTS")]
    bootstrap_servers: String,
    /// Prefix for every topic name (e.g. `staging.`).
    #[arg(long, default_value = "")]
    prefix: String,
    /// The topics file.
    #[arg(long, default_value = "topology/topics.yaml", value_name = "FILE")]
    file: PathBuf,
    /// A librdkafka property for the admin client, e.g.
    /// `-X security.protocol=SASL_SSL` (repeatable).
    #[arg(short = 'X', value_name = "KEY=VALUE", value_parser = parse_property)]
    property: Vec<(String, String)>,
}

pub(crate) fn parse_property(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("`{s}` is not KEY=VALUE")),
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct TopicsFile {
    #[serde(default)]
    defaults: TopicDefaults,
    topics: Vec<TopicEntry>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct TopicDefaults {
    #[serde(default = "one")]
    partitions: i32,
    #[serde(default = "one")]
    replication: i32,
}

impl Default for TopicDefaults {
    fn default() -> Self {
        Self {
            partitions: 1,
            replication: 1,
        }
    }
}

fn one() -> i32 {
    1
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct TopicEntry {
    name: String,
    partitions: Option<i32>,
    replication: Option<i32>,
    #[serde(default)]
    config: std::collections::BTreeMap<String, serde_json::Value>,
}

/// Reads a topics file into specs with `prefix` on every name.
fn topic_specs(file: &Path, prefix: &str) -> CliResult<Vec<sagaflow_bus::TopicSpec>> {
    let text = read(file)?;
    let (value, _) = sagaflow_config::load(&text)
        .map_err(|e| Failure::Usage(format!("{}:{}: {}", file.display(), e.position, e.message)))?;
    let raw: TopicsFile = serde_json::from_value(value).map_err(|e| {
        Failure::Usage(format!(
            "{}: {e} (expected `defaults: {{partitions, replication}}` and `topics: [{{name, partitions, replication, config}}]`)",
            file.display()
        ))
    })?;
    let mut specs = Vec::new();
    for t in raw.topics {
        let mut spec = sagaflow_bus::TopicSpec::new(
            format!("{prefix}{}", t.name),
            t.partitions.unwrap_or(raw.defaults.partitions),
        );
        spec.replication = t.replication.unwrap_or(raw.defaults.replication);
        for (k, v) in t.config {
            let v = match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            spec = spec.with_config(k, v);
        }
        spec.validate()
            .map_err(|e| Failure::Usage(format!("{}: {e}", file.display())))?;
        specs.push(spec);
    }
    Ok(specs)
}

async fn apply(args: ApplyArgs) -> CliResult {
    let specs = topic_specs(&args.file, &args.prefix)?;
    let mut kafka = sagaflow_bus::KafkaConfig::new(args.bootstrap_servers.clone());
    for (k, v) in args.property {
        kafka = kafka.with(k, v);
    }
    sagaflow_bus::ensure_topics(&kafka, &specs)
        .await
        .map_err(|e| match e {
            sagaflow_bus::Error::InvalidTopic { .. } => Failure::Usage(e.to_string()),
            other => Failure::Unreachable(format!(
                "{other} (is the broker at {} reachable?)",
                args.bootstrap_servers
            )),
        })?;
    for spec in &specs {
        let config: Vec<String> = spec
            .config
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!(
            "topic {} partitions {} replication {}{}",
            spec.name,
            spec.partitions,
            spec.replication,
            if config.is_empty() {
                String::new()
            } else {
                format!(" {}", config.join(" "))
            }
        );
    }
    println!(
        "{} topics present (existing ones left unchanged)",
        specs.len()
    );
    Ok(())
}

#[derive(Debug, Args)]
pub(crate) struct DirArgs {
    /// Topology directory holding services.yaml and sagas/.
    #[arg(long, default_value = "topology", value_name = "DIR")]
    dir: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct GraphArgs {
    /// The saga type to draw (its `type:`).
    saga_type: String,
    #[command(flatten)]
    dir: DirArgs,
}

pub(crate) async fn run(command: TopologyCommand) -> CliResult {
    match command {
        TopologyCommand::Validate(args) => validate(&args),
        TopologyCommand::Graph(args) => graph(&args.dir.dir, &args.saga_type),
        TopologyCommand::Apply(args) => apply(args).await,
        TopologyCommand::Asyncapi(args) => crate::asyncapi::run(&args),
    }
}

fn read(path: &Path) -> CliResult<String> {
    std::fs::read_to_string(path)
        .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))
}

/// The definition files of `<dir>/sagas`, sorted by name.
fn saga_files(dir: &Path) -> CliResult<Vec<(String, String)>> {
    let sagas = dir.join("sagas");
    let entries = std::fs::read_dir(&sagas).map_err(|e| {
        Failure::Usage(format!(
            "cannot read {}: {e} (pass --dir with the topology directory)",
            sagas.display()
        ))
    })?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| Ok((p.display().to_string(), read(&p)?)))
        .collect()
}

/// Loads everything, collecting every error of every file.
pub(crate) fn load(dir: &Path) -> CliResult<Result<DefinitionRegistry, Vec<DefinitionError>>> {
    let services_path = dir.join("services.yaml");
    let services_text = read(&services_path)?;
    let files = saga_files(dir)?;
    let mut errors = Vec::new();
    match ServiceCatalog::from_yaml(&services_path.display().to_string(), &services_text) {
        Ok(services) => {
            match DefinitionRegistry::from_sources(
                files.iter().map(|(f, s)| (f.as_str(), s.as_str())),
                &services,
            ) {
                Ok(registry) => return Ok(Ok(registry)),
                Err(DefinitionErrors(es)) => errors.extend(es),
            }
        }
        Err(DefinitionErrors(es)) => {
            // Without a service catalog the sagas can only be parsed.
            errors.extend(es);
            for (file, source) in &files {
                if let Err(DefinitionErrors(es)) = RawSagaDefinition::parse(file, source) {
                    errors.extend(es);
                }
            }
        }
    }
    Ok(Err(errors))
}

fn validate(args: &DirArgs) -> CliResult {
    match load(&args.dir)? {
        Ok(registry) => {
            let sources: std::collections::HashMap<String, String> =
                saga_files(&args.dir)?.into_iter().collect();
            let mut n = 0;
            let mut warnings = Vec::new();
            for def in registry.iter() {
                n += 1;
                println!(
                    "ok {} version {} ({} steps) in {}",
                    def.saga_type,
                    def.version,
                    def.steps().len(),
                    def.file
                );
                if let Some(source) = sources.get(&def.file) {
                    warnings.extend(def.lint(source));
                }
            }
            for w in &warnings {
                println!("{w}");
            }
            println!(
                "{n} saga definitions valid, {} lint warning(s)",
                warnings.len()
            );
            Ok(())
        }
        Err(errors) => {
            for e in &errors {
                println!("{e}");
            }
            Err(Failure::Found(format!(
                "{} problem(s) in the definitions under {}",
                errors.len(),
                args.dir.display()
            )))
        }
    }
}

/// The definitions under `dir`; when any is invalid, every problem is
/// printed and the command fails with exit 1.
pub(crate) fn load_valid(dir: &Path) -> CliResult<DefinitionRegistry> {
    match load(dir)? {
        Ok(registry) => Ok(registry),
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            Err(Failure::Found(format!(
                "the definitions under {} have {} problem(s); run `sagaflow topology validate`",
                dir.display(),
                errors.len()
            )))
        }
    }
}

/// The latest version of `saga_type`, or a usage error listing the known
/// saga types.
pub(crate) fn latest<'a>(
    registry: &'a DefinitionRegistry,
    saga_type: &str,
) -> CliResult<&'a SagaDefinition> {
    registry.latest(saga_type).ok_or_else(|| {
        let known: Vec<&str> = registry.iter().map(|d| d.saga_type.as_str()).collect();
        Failure::Usage(format!(
            "unknown saga type `{saga_type}`; known: {}",
            known.join(", ")
        ))
    })
}

fn graph(dir: &Path, saga_type: &str) -> CliResult {
    let registry = load_valid(dir)?;
    print!("{}", mermaid(latest(&registry, saga_type)?));
    Ok(())
}

/// A node's exit: the node and an optional edge label.
type Exit = (String, Option<String>);

struct Drawing<'a> {
    def: &'a SagaDefinition,
    out: String,
}

/// Quotes a label for Mermaid (`"` is not allowed inside).
fn label(text: &str) -> String {
    text.replace('"', "#quot;")
}

impl Drawing<'_> {
    fn line(&mut self, s: String) {
        self.out.push_str("    ");
        self.out.push_str(&s);
        self.out.push('\n');
    }

    fn edge(&mut self, from: &Exit, to: &str) {
        match &from.1 {
            Some(l) => self.line(format!("{} -->|\"{}\"| {to}", from.0, label(l))),
            None => self.line(format!("{} --> {to}", from.0)),
        }
    }

    /// Draws a step list; `from` flows into its first step. Returns the
    /// exits that flow on after the list (empty if it always ends the saga).
    fn list(&mut self, ids: &[NodeId], from: Vec<Exit>) -> Vec<Exit> {
        let mut exits = from;
        for &id in ids {
            let node = format!("s{id}");
            for e in &exits {
                self.edge(e, &node);
            }
            exits = self.step(id);
        }
        exits
    }

    fn step(&mut self, id: NodeId) -> Vec<Exit> {
        let step = self.def.step(id);
        let node = format!("s{id}");
        let name = label(&step.name);
        match &step.kind {
            StepKind::Call(call) => {
                self.line(format!(
                    "{node}[\"{name}<br/>{}.{}\"]",
                    label(&call.service),
                    label(&call.operation)
                ));
                if let Some(c) = &call.compensate {
                    self.line(format!(
                        "c{id}[\"undo {name}<br/>{}.{}\"]",
                        label(&c.service),
                        label(&c.operation)
                    ));
                    self.line(format!("{node} -.->|compensate| c{id}"));
                }
                vec![(node, None)]
            }
            StepKind::Emit(emit) => {
                self.line(format!(
                    "{node}>\"emit {name}<br/>{} on {}\"]",
                    label(&emit.event_type),
                    label(&emit.topic)
                ));
                vec![(node, None)]
            }
            StepKind::Await(wait) => {
                self.line(format!(
                    "{node}{{{{\"await {name}<br/>{} on {}\"}}}}",
                    label(&wait.event_type),
                    label(&wait.topic)
                ));
                let mut exits = vec![(node.clone(), Some("event".to_string()))];
                let deadline = (node.clone(), Some("deadline".to_string()));
                match &wait.on_deadline {
                    OnDeadline::Fail => self.edge(&deadline, "failed"),
                    OnDeadline::Compensate => self.edge(&deadline, "compensated"),
                    OnDeadline::Continue(ids) => {
                        exits.extend(self.list(ids, vec![deadline]));
                    }
                }
                exits
            }
            StepKind::Parallel { branches } => {
                self.line(format!("{node}[/\"parallel {name}\"\\]"));
                let join = format!("j{id}");
                self.line(format!("{join}[\\\"join {name}\"/]"));
                for (branch, ids) in branches {
                    let exits = self.list(ids, vec![(node.clone(), Some(branch.clone()))]);
                    for e in &exits {
                        self.edge(e, &join);
                    }
                }
                vec![(join, None)]
            }
            StepKind::Choice { when, default } => {
                self.line(format!("{node}{{\"{name}\"}}"));
                let mut exits = Vec::new();
                for (expr, ids) in when {
                    exits.extend(self.list(ids, vec![(node.clone(), Some(expr.source().into()))]));
                }
                exits.extend(self.list(default, vec![(node.clone(), Some("otherwise".into()))]));
                exits
            }
            StepKind::Reject { .. } => {
                self.line(format!("{node}[/\"reject {name}\"/]"));
                self.line(format!("{node} --> compensated"));
                Vec::new()
            }
            StepKind::Finish => {
                self.line(format!("{node}[\"finish {name}\"]"));
                self.line(format!("{node} --> completed"));
                Vec::new()
            }
        }
    }
}

/// The saga as a Mermaid flowchart (top to bottom).
pub(crate) fn mermaid(def: &SagaDefinition) -> String {
    // Top-level steps: those in no branch, choice or deadline list.
    let mut nested = BTreeSet::new();
    for step in def.steps() {
        match &step.kind {
            StepKind::Parallel { branches } => {
                nested.extend(branches.iter().flat_map(|(_, ids)| ids.iter().copied()))
            }
            StepKind::Choice { when, default } => {
                nested.extend(when.iter().flat_map(|(_, ids)| ids.iter().copied()));
                nested.extend(default.iter().copied());
            }
            StepKind::Await(wait) => {
                if let OnDeadline::Continue(ids) = &wait.on_deadline {
                    nested.extend(ids.iter().copied());
                }
            }
            _ => {}
        }
    }
    let root: Vec<NodeId> = (0..def.steps().len())
        .filter_map(|i| NodeId::try_from(i).ok())
        .filter(|id| !nested.contains(id))
        .collect();
    let mut d = Drawing {
        def,
        out: String::new(),
    };
    let _ = writeln!(
        d.out,
        "%% saga {} version {} ({})\nflowchart TD",
        def.saga_type, def.version, def.file
    );
    d.line(format!(
        "start([\"{} on {}\"])",
        label(&def.trigger.event_type),
        label(&def.trigger.topic)
    ));
    d.line("completed([completed])".into());
    d.line("compensated([compensated])".into());
    d.line("failed([failed])".into());
    let exits = d.list(&root, vec![("start".into(), None)]);
    for e in &exits {
        d.edge(e, "completed");
    }
    d.out
}
