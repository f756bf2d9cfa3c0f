//! Saga definitions: raw YAML shape, validation, and the validated form.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::data::FieldPath;
use crate::error::{DefCode, DefinitionError, DefinitionErrors};
use crate::expr::{Expr, ValueTemplate};
use crate::yaml::{self, Position, Spans};

/// Index of a step inside its definition.
pub type NodeId = u16;

/// The step kinds a step mapping may start with.
pub const STEP_KINDS: &[&str] = &[
    "call", "parallel", "choice", "await", "emit", "reject", "finish",
];

// ---------------------------------------------------------------- raw shape

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawTop {
    #[serde(rename = "type")]
    saga_type: String,
    version: u32,
    #[serde(default)]
    description: Option<String>,
    trigger: RawTrigger,
    steps: Vec<Value>,
    #[serde(default)]
    result: Option<Value>,
    /// Field paths redacted from every step's data in lifecycle events.
    #[serde(default)]
    sensitive: Vec<String>,
    /// Named values computed from the trigger event, for searching sagas.
    #[serde(default)]
    search_attributes: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawTrigger {
    topic: String,
    event_type: String,
    key: String,
    #[serde(default)]
    saga_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawRetry {
    #[serde(default)]
    max_attempts: Option<u32>,
    #[serde(default)]
    initial: Option<String>,
    #[serde(default)]
    multiplier: Option<f64>,
    #[serde(default)]
    max: Option<String>,
    #[serde(default)]
    on: Option<Vec<RetryOn>>,
}

/// Which failed outcomes a retry policy retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RetryOn {
    /// The adapter reported a transient failure (5xx, connection error…).
    Transient,
    /// No reply before the step's timeout.
    Timeout,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawCompensate {
    #[serde(default)]
    service: Option<String>,
    operation: String,
    #[serde(default)]
    input: Option<Value>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    retry: Option<RawRetry>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawCall {
    call: String,
    service: String,
    operation: String,
    #[serde(default)]
    input: Option<Value>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    retry: Option<RawRetry>,
    #[serde(default)]
    bind: Option<String>,
    #[serde(default)]
    compensate: Option<RawCompensate>,
    #[serde(default)]
    lint: Option<RawLint>,
    /// Field paths redacted from this step's data in lifecycle events.
    #[serde(default)]
    sensitive: Vec<String>,
}

/// `lint: {allow: [SF-DEF-W001]}`: warnings silenced on purpose for a step.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawLint {
    allow: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawBranch {
    name: String,
    steps: Vec<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawParallel {
    parallel: String,
    branches: Vec<RawBranch>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawWhen {
    #[serde(rename = "if")]
    condition: String,
    steps: Vec<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawChoice {
    choice: String,
    when: Vec<RawWhen>,
    #[serde(default)]
    default: Option<Vec<Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
enum RawOnDeadline {
    Fail,
    Compensate,
    Continue(Vec<Value>),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawAwait {
    #[serde(rename = "await")]
    name: String,
    topic: String,
    event_type: String,
    correlate: String,
    deadline: String,
    #[serde(default)]
    on_deadline: Option<RawOnDeadline>,
    #[serde(default)]
    bind: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawEmit {
    emit: String,
    topic: String,
    event_type: String,
    key: String,
    #[serde(default)]
    payload: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawReject {
    reject: String,
    reason: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawFinish {
    finish: String,
}

// ----------------------------------------------------------- validated shape

/// Retry policy: exponential backoff with deterministic jitter.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in total, including the first (≥ 1).
    pub max_attempts: u32,
    /// Delay before the second attempt.
    pub initial: Duration,
    /// Growth factor per attempt (≥ 1).
    pub multiplier: f64,
    /// Upper bound of a delay.
    pub max: Duration,
    /// Failed outcomes that are retried.
    pub on: Vec<RetryOn>,
}

impl RetryPolicy {
    fn default_for(max_attempts: u32) -> Self {
        Self {
            max_attempts,
            initial: Duration::from_millis(200),
            multiplier: 2.0,
            max: Duration::from_secs(30),
            on: vec![RetryOn::Transient, RetryOn::Timeout],
        }
    }

    /// Backoff before attempt `next_attempt` (≥ 2), in milliseconds, with
    /// jitter derived from `seed` (the failed command's id): the delay is
    /// uniformly spread over [d/2, d] where d is the exponential delay.
    pub fn backoff_ms(&self, next_attempt: u32, seed: &str) -> u64 {
        let exp = next_attempt.saturating_sub(2).min(64) as i32;
        let base = self.initial.as_millis() as f64 * self.multiplier.powi(exp);
        let d = base.min(self.max.as_millis() as f64).max(1.0) as u64;
        let half = d / 2;
        half + crate::fnv1a(seed.as_bytes()) % (d - half + 1)
    }
}

/// A call step's compensation.
#[derive(Debug)]
pub struct Compensation {
    pub service: String,
    pub operation: String,
    pub input: ValueTemplate,
    pub timeout_ms: u64,
    pub retry: RetryPolicy,
}

/// A command to a service adapter.
#[derive(Debug)]
pub struct CallStep {
    pub service: String,
    pub operation: String,
    pub input: ValueTemplate,
    pub timeout_ms: u64,
    pub retry: RetryPolicy,
    /// Name under `steps.` that the reply data is bound to.
    pub bind: String,
    pub compensate: Option<Compensation>,
    /// Paths redacted from this step's input, output and error (on top of
    /// the saga's own `sensitive` paths).
    pub sensitive: Vec<FieldPath>,
}

/// What an await does when its deadline passes.
#[derive(Debug)]
pub enum OnDeadline {
    /// The saga becomes `Failed` (an operator decides).
    Fail,
    /// The saga compensates what succeeded and ends `Compensated`.
    Compensate,
    /// These steps run, then the saga carries on after the await.
    Continue(Vec<NodeId>),
}

/// Wait for a domain event.
#[derive(Debug)]
pub struct AwaitStep {
    pub topic: String,
    pub event_type: String,
    /// Evaluated over the awaited event (`event`); must equal the saga key.
    pub correlate: Expr,
    pub deadline_ms: u64,
    pub on_deadline: OnDeadline,
    pub bind: String,
}

/// Publish a domain event.
#[derive(Debug)]
pub struct EmitStep {
    pub topic: String,
    pub event_type: String,
    pub key: Expr,
    pub payload: ValueTemplate,
}

/// What a step does.
#[derive(Debug)]
pub enum StepKind {
    Call(Box<CallStep>),
    Parallel {
        branches: Vec<(String, Vec<NodeId>)>,
    },
    Choice {
        when: Vec<(Expr, Vec<NodeId>)>,
        default: Vec<NodeId>,
    },
    Await(AwaitStep),
    Emit(EmitStep),
    /// Ends the saga by compensating, with a reason.
    Reject {
        reason: Expr,
    },
    /// Ends the saga successfully.
    Finish,
}

/// Which step list a step belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListOwner {
    Root,
    Branch(NodeId),
    Choice(NodeId),
    Deadline(NodeId),
}

/// One step of a validated definition.
#[derive(Debug)]
pub struct Step {
    /// Unique name.
    pub name: String,
    /// Names from the root, joined by `/` (used in command ids).
    pub path: String,
    /// What it does.
    pub kind: StepKind,
    pub(crate) next: Option<NodeId>,
    pub(crate) owner: ListOwner,
    /// Where it is defined.
    pub position: Position,
    /// Lint warnings silenced for this step (`lint: {allow: […]}`).
    pub lint_allow: Vec<String>,
    /// Whether the step names its binding (`bind:`) rather than using its
    /// own name.
    pub(crate) explicit_bind: bool,
}

/// How a saga starts.
#[derive(Debug)]
pub struct Trigger {
    pub topic: String,
    pub event_type: String,
    /// Correlation key, over the trigger event (`event`).
    pub key: Expr,
    /// Saga id template over `type`, `key` and `event`.
    pub saga_id: Expr,
}

/// A validated, compiled saga definition.
#[derive(Debug)]
pub struct SagaDefinition {
    pub saga_type: String,
    pub version: u32,
    pub description: Option<String>,
    pub trigger: Trigger,
    pub(crate) steps: Vec<Step>,
    pub(crate) root: Vec<NodeId>,
    pub result: Option<ValueTemplate>,
    pub(crate) by_path: HashMap<String, NodeId>,
    /// Paths redacted from the trigger and every step's data in lifecycle
    /// events.
    pub sensitive: Vec<FieldPath>,
    /// Search attributes: a name and an expression over the trigger event
    /// (`event`), computed when the saga starts.
    pub search_attributes: Vec<(String, Expr)>,
    /// File it was loaded from.
    pub file: String,
}

impl SagaDefinition {
    /// Parses and validates a definition file (pure: the caller reads it).
    pub fn from_yaml(
        file: &str,
        source: &str,
        services: &ServiceCatalog,
    ) -> Result<Self, DefinitionErrors> {
        RawSagaDefinition::parse(file, source)?.validate(services)
    }

    /// All steps, in definition order.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// The step at `id`.
    pub fn step(&self, id: NodeId) -> &Step {
        &self.steps[id as usize]
    }

    /// The step whose path is `path`.
    pub fn step_by_path(&self, path: &str) -> Option<NodeId> {
        self.by_path.get(path).copied()
    }

    /// The first step of the top-level list.
    pub(crate) fn first(&self) -> Option<NodeId> {
        self.root.first().copied()
    }
}

// ------------------------------------------------------------------ services

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawServices {
    services: Vec<ServiceInfo>,
}

/// A known service (a command target).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ServiceInfo {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
}

/// The services steps may call, e.g. from `topology/services.yaml`.
#[derive(Debug, Clone, Default)]
pub struct ServiceCatalog {
    services: BTreeMap<String, ServiceInfo>,
}

impl ServiceCatalog {
    /// A catalog of bare names.
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(names: I) -> Self {
        Self {
            services: names
                .into_iter()
                .map(|n| {
                    let name = n.into();
                    (
                        name.clone(),
                        ServiceInfo {
                            name,
                            description: None,
                        },
                    )
                })
                .collect(),
        }
    }

    /// Parses a services file (`services: [{name, description}]`).
    pub fn from_yaml(file: &str, source: &str) -> Result<Self, DefinitionErrors> {
        let (value, spans) = load_yaml(file, source)?;
        let raw: RawServices =
            deserialize(file, &spans, value, "").map_err(|e| DefinitionErrors(vec![e]))?;
        let mut services = BTreeMap::new();
        let mut errors = Vec::new();
        for (i, s) in raw.services.into_iter().enumerate() {
            if services.contains_key(&s.name) {
                errors.push(error(
                    DefCode::DuplicateName,
                    file,
                    spans.find(&format!("services[{i}].name")),
                    format!("service `{}` is listed twice", s.name),
                    None,
                ));
            }
            services.insert(s.name.clone(), s);
        }
        if errors.is_empty() {
            Ok(Self { services })
        } else {
            Err(DefinitionErrors(errors))
        }
    }

    /// Whether `name` is known.
    pub fn contains(&self, name: &str) -> bool {
        self.services.contains_key(name)
    }

    /// Known services, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &ServiceInfo> {
        self.services.values()
    }

    fn names(&self) -> String {
        self.services.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

// ---------------------------------------------------------------- validation

fn error(
    code: DefCode,
    file: &str,
    position: Position,
    message: String,
    help: Option<String>,
) -> DefinitionError {
    DefinitionError {
        code,
        file: file.to_string(),
        position,
        message,
        help,
    }
}

fn load_yaml(file: &str, source: &str) -> Result<(Value, Spans), DefinitionErrors> {
    yaml::load(source).map_err(|e| {
        DefinitionErrors(vec![error(
            DefCode::YamlSyntax,
            file,
            e.position,
            format!("invalid YAML: {}", e.message),
            None,
        )])
    })
}

fn join(base: &str, rel: &str) -> String {
    match (base.is_empty(), rel.is_empty()) {
        (true, _) => rel.to_string(),
        (_, true) => base.to_string(),
        _ if rel.starts_with('[') => format!("{base}{rel}"),
        _ => format!("{base}.{rel}"),
    }
}

fn deserialize<T: DeserializeOwned>(
    file: &str,
    spans: &Spans,
    value: Value,
    base: &str,
) -> Result<T, DefinitionError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let mut rel = String::new();
        for seg in e.path().iter() {
            match seg {
                serde_path_to_error::Segment::Seq { index } => rel.push_str(&format!("[{index}]")),
                serde_path_to_error::Segment::Map { key } => rel = join(&rel, key),
                serde_path_to_error::Segment::Enum { variant } => rel = join(&rel, variant),
                serde_path_to_error::Segment::Unknown => {}
            }
        }
        let mut path = join(base, &rel);
        let msg = e.inner().to_string();
        // Point at the offending key for unknown fields.
        if let Some(rest) = msg.strip_prefix("unknown field `")
            && let Some(end) = rest.find('`')
        {
            let candidate = join(&path, &rest[..end]);
            if spans.get(&candidate).is_some() {
                path = candidate;
            }
        }
        error(DefCode::Schema, file, spans.find(&path), msg, None)
    })
}

/// A parsed but not yet validated definition file.
#[derive(Debug)]
pub struct RawSagaDefinition {
    file: String,
    spans: Spans,
    top: RawTop,
}

impl RawSagaDefinition {
    /// Parses the YAML and its shape (keys, types); no semantic checks.
    pub fn parse(file: &str, source: &str) -> Result<Self, DefinitionErrors> {
        let (value, spans) = load_yaml(file, source)?;
        let top = deserialize(file, &spans, value, "").map_err(|e| DefinitionErrors(vec![e]))?;
        Ok(Self {
            file: file.to_string(),
            spans,
            top,
        })
    }

    /// Validates and compiles the definition against the known services.
    pub fn validate(self, services: &ServiceCatalog) -> Result<SagaDefinition, DefinitionErrors> {
        let mut v = Validator {
            file: &self.file,
            spans: &self.spans,
            services,
            errors: Vec::new(),
            steps: Vec::new(),
            names: HashMap::new(),
            completion_bounds: Vec::new(),
            all_names: BTreeSet::new(),
        };
        let top = self.top;
        for s in &top.steps {
            collect_names(s, &mut v.all_names);
        }
        if !is_slug(&top.saga_type) {
            v.err(
                DefCode::BadName,
                "type",
                format!("saga type `{}` is not a valid name", top.saga_type),
                Some("use lowercase letters, digits and `-`, e.g. `order-checkout`".into()),
            );
        }
        if top.version == 0 {
            v.err(
                DefCode::Schema,
                "version",
                "version must be at least 1".into(),
                None,
            );
        }
        let key = v.expr(
            &top.trigger.key,
            "trigger.key",
            &["event"],
            &BTreeSet::new(),
            DefCode::UnboundReference,
        );
        let saga_id_src = top
            .trigger
            .saga_id
            .clone()
            .unwrap_or_else(|| "{{ type }}:{{ key }}".to_string());
        let saga_id = match Expr::template(&saga_id_src) {
            Ok(e) => {
                // Only `type` and `key`: an awaited event is routed to its
                // saga by correlation key, so the id must follow from them.
                v.check_refs(
                    &e,
                    "trigger.saga-id",
                    &["type", "key"],
                    &BTreeSet::new(),
                    DefCode::UnboundReference,
                );
                Some(e)
            }
            Err(e) => {
                v.err(
                    DefCode::BadExpression,
                    "trigger.saga-id",
                    format!("template does not compile: {}", e.0),
                    None,
                );
                None
            }
        };
        let sensitive = v.sensitive(&top.sensitive, "sensitive");
        let mut search_attributes = Vec::new();
        for (name, src) in &top.search_attributes {
            let path = join("search-attributes", name);
            if name == crate::engine::KEY_ATTRIBUTE {
                v.err(
                    DefCode::BadName,
                    &path,
                    "search attribute `key` is reserved: every saga has it (its correlation key)"
                        .into(),
                    Some("pick another name".into()),
                );
            } else if !is_ident(name) {
                v.err(
                    DefCode::BadName,
                    &path,
                    format!("search attribute `{name}` is not a valid name"),
                    Some("use lowercase letters, digits and `_`, e.g. `customer_id`".into()),
                );
            }
            if let Some(e) = v.expr(
                src,
                &path,
                &["event"],
                &BTreeSet::new(),
                DefCode::UnboundReference,
            ) {
                search_attributes.push((name.clone(), e));
            }
        }
        let mut bound = BTreeSet::new();
        let (root, terminal) = v.list(&top.steps, "steps", "", ListOwner::Root, &mut bound);
        if !terminal {
            v.completion_bounds.push(bound.clone());
        }
        let final_bound = intersect_all(&v.completion_bounds);
        let result = top
            .result
            .as_ref()
            .and_then(|r| v.template(r, "result", &final_bound, DefCode::UnboundReference));
        let by_path = v
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.path.clone(), i as NodeId))
            .collect();
        if !v.errors.is_empty() {
            return Err(DefinitionErrors(v.errors));
        }
        let (Some(key), Some(saga_id)) = (key, saga_id) else {
            unreachable!("expression errors are reported above");
        };
        Ok(SagaDefinition {
            saga_type: top.saga_type,
            version: top.version,
            description: top.description,
            trigger: Trigger {
                topic: top.trigger.topic,
                event_type: top.trigger.event_type,
                key,
                saga_id,
            },
            steps: v.steps,
            root,
            result,
            by_path,
            sensitive,
            search_attributes,
            file: self.file,
        })
    }
}

/// Whether `source` explicitly guards `steps.<name>` against not having
/// run (`is defined`, `is undefined`, `| default(…)`), which makes reading
/// data from a step that may not have run deliberate.
fn guarded(source: &str, name: &str) -> bool {
    let compact: String = source.split_whitespace().collect::<Vec<_>>().join(" ");
    let var = format!("steps.{name}");
    [
        " is defined",
        " is not defined",
        " is undefined",
        " | default",
        "|default",
    ]
    .iter()
    .any(|g| compact.contains(&format!("{var}{g}")))
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn is_slug(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
}

fn intersect_all(sets: &[BTreeSet<String>]) -> BTreeSet<String> {
    let mut it = sets.iter();
    let Some(first) = it.next() else {
        return BTreeSet::new();
    };
    it.fold(first.clone(), |acc, s| {
        acc.intersection(s).cloned().collect()
    })
}

struct Validator<'a> {
    file: &'a str,
    spans: &'a Spans,
    services: &'a ServiceCatalog,
    errors: Vec<DefinitionError>,
    steps: Vec<Step>,
    /// Step names and bindings seen so far, with their yaml path.
    names: HashMap<String, String>,
    /// Bindings available wherever the saga can complete.
    completion_bounds: Vec<BTreeSet<String>>,
    /// Every step name and binding in the file (for better messages).
    all_names: BTreeSet<String>,
}

fn collect_names(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                if (STEP_KINDS.contains(&k.as_str()) || k == "bind")
                    && let Value::String(s) = v
                {
                    out.insert(s.clone());
                }
                collect_names(v, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect_names(i, out)),
        _ => {}
    }
}

const SAGA_VARS: &[&str] = &["event", "saga", "steps"];

impl Validator<'_> {
    /// Parses a list of `sensitive` field paths.
    fn sensitive(&mut self, list: &[String], path: &str) -> Vec<FieldPath> {
        let mut out = Vec::new();
        for (i, src) in list.iter().enumerate() {
            match FieldPath::parse(src) {
                Some(p) => out.push(p),
                None => self.err(
                    DefCode::Schema,
                    &format!("{path}[{i}]"),
                    format!("`{src}` is not a field path"),
                    Some("write field names joined by `.`, e.g. `customer.email`".into()),
                ),
            }
        }
        out
    }

    fn err(&mut self, code: DefCode, path: &str, message: String, help: Option<String>) {
        let position = self.spans.find(path);
        self.errors
            .push(error(code, self.file, position, message, help));
    }

    fn duration(&mut self, src: &str, path: &str) -> Option<u64> {
        match humantime::parse_duration(src.trim()) {
            Ok(d) if d.is_zero() => {
                self.err(
                    DefCode::BadDuration,
                    path,
                    format!("duration `{src}` must be greater than zero"),
                    Some("e.g. 250ms, 30s, 5m, 24h".into()),
                );
                None
            }
            Ok(d) => Some(d.as_millis().min(u64::MAX as u128) as u64),
            Err(e) => {
                self.err(
                    DefCode::BadDuration,
                    path,
                    format!("`{src}` is not a duration: {e}"),
                    Some("use a number with a unit: 250ms, 30s, 5m, 2h, 1d (units may be combined: 1h 30m)".into()),
                );
                None
            }
        }
    }

    fn check_refs(
        &mut self,
        e: &Expr,
        path: &str,
        vars: &[&str],
        bound: &BTreeSet<String>,
        unbound_code: DefCode,
    ) {
        for r in e.references() {
            let mut segs = r.split('.');
            let top = segs.next().unwrap_or_default();
            if !vars.contains(&top) {
                self.err(
                    DefCode::UnknownVariable,
                    path,
                    format!("`{}` reads `{top}`, which does not exist here", e.source()),
                    Some(format!("available here: {}", vars.join(", "))),
                );
                continue;
            }
            if top == "steps"
                && let Some(name) = segs.next()
                && !bound.contains(name)
                && !(self.all_names.contains(name) && guarded(e.source(), name))
            {
                let why = if unbound_code == DefCode::CompensationReference {
                    "a compensation can read only data bound before its step and its own step's reply"
                } else if self.all_names.contains(name) {
                    "that step has not run yet here, or may not have run (another branch, or after this point)"
                } else {
                    "no step binds that name"
                };
                let bound_list = if bound.is_empty() {
                    "nothing yet".to_string()
                } else {
                    bound
                        .iter()
                        .map(|b| format!("steps.{b}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                self.err(
                    unbound_code,
                    path,
                    format!(
                        "`{}` reads `steps.{name}`, which is not bound here: {why}",
                        e.source()
                    ),
                    Some(format!("bound here: {bound_list}")),
                );
            }
        }
    }

    fn expr(
        &mut self,
        src: &str,
        path: &str,
        vars: &[&str],
        bound: &BTreeSet<String>,
        unbound: DefCode,
    ) -> Option<Expr> {
        let t = src.trim();
        let inner = t
            .strip_prefix("{{")
            .and_then(|x| x.strip_suffix("}}"))
            .map(str::trim)
            .unwrap_or(t);
        match Expr::compile(inner) {
            Ok(e) => {
                self.check_refs(&e, path, vars, bound, unbound);
                Some(e)
            }
            Err(e) => {
                self.err(
                    DefCode::BadExpression,
                    path,
                    format!("expression `{inner}` does not compile: {}", e.0),
                    Some("see docs/saga-definitions.md#expressions".into()),
                );
                None
            }
        }
    }

    fn string_template(&mut self, src: &str, path: &str, bound: &BTreeSet<String>) -> Option<Expr> {
        match Expr::template(src) {
            Ok(e) => {
                self.check_refs(&e, path, SAGA_VARS, bound, DefCode::UnboundReference);
                Some(e)
            }
            Err(e) => {
                self.err(
                    DefCode::BadExpression,
                    path,
                    format!("template `{src}` does not compile: {}", e.0),
                    Some("write text with `{{ expression }}` parts".into()),
                );
                None
            }
        }
    }

    fn template(
        &mut self,
        value: &Value,
        path: &str,
        bound: &BTreeSet<String>,
        unbound: DefCode,
    ) -> Option<ValueTemplate> {
        match ValueTemplate::compile(value) {
            Ok(t) => {
                for (rel, e) in t.exprs() {
                    self.check_refs(e, &join(path, &rel), SAGA_VARS, bound, unbound);
                }
                Some(t)
            }
            Err(e) => {
                self.err(DefCode::BadExpression, &join(path, &e.path), format!("does not compile: {}", e.message), Some("a string that is exactly `{{ expression }}` gives a typed value; other strings may contain `{{ expression }}` parts".into()));
                None
            }
        }
    }

    fn name(&mut self, name: &str, path: &str) {
        if name == "compensate" {
            // `<saga>/<path>/compensate/<n>` names compensation commands.
            self.err(
                DefCode::BadName,
                path,
                "`compensate` is reserved and cannot name a step or binding".into(),
                Some("pick another name, e.g. `compensate_order`".into()),
            );
        } else if !is_ident(name) {
            self.err(
                DefCode::BadName,
                path,
                format!("`{name}` is not a valid step or binding name"),
                Some("use lowercase letters, digits and `_`, starting with a letter, e.g. `charge_payment`".into()),
            );
        }
        if let Some(prev) = self.names.get(name) {
            let at = self.spans.find(prev);
            self.err(
                DefCode::DuplicateName,
                path,
                format!("name `{name}` is already used at line {}", at.line),
                Some("step names and bindings must be unique in a definition".into()),
            );
        } else {
            self.names.insert(name.to_string(), path.to_string());
        }
    }

    fn retry(&mut self, raw: Option<&RawRetry>, path: &str, default_attempts: u32) -> RetryPolicy {
        let mut p = RetryPolicy::default_for(default_attempts);
        let Some(raw) = raw else { return p };
        if let Some(n) = raw.max_attempts {
            if n == 0 {
                self.err(
                    DefCode::BadRetry,
                    &join(path, "max-attempts"),
                    "max-attempts must be at least 1".into(),
                    Some("1 means no retry".into()),
                );
            }
            p.max_attempts = n.max(1);
        }
        if let Some(m) = raw.multiplier {
            if !(1.0..=100.0).contains(&m) {
                self.err(
                    DefCode::BadRetry,
                    &join(path, "multiplier"),
                    format!("multiplier {m} is out of range"),
                    Some("a number from 1.0 to 100.0".into()),
                );
            }
            p.multiplier = m.clamp(1.0, 100.0);
        }
        if let Some(s) = &raw.initial
            && let Some(ms) = self.duration(s, &join(path, "initial"))
        {
            p.initial = Duration::from_millis(ms);
        }
        if let Some(s) = &raw.max
            && let Some(ms) = self.duration(s, &join(path, "max"))
        {
            p.max = Duration::from_millis(ms);
        }
        if p.initial > p.max {
            self.err(
                DefCode::BadRetry,
                path,
                "initial backoff is larger than max".into(),
                Some("initial ≤ max".into()),
            );
        }
        if let Some(on) = &raw.on {
            p.on = on.clone();
        }
        p
    }

    fn push(
        &mut self,
        name: &str,
        parent: &str,
        kind: StepKind,
        owner: ListOwner,
        path: &str,
    ) -> NodeId {
        let id = self.steps.len() as NodeId;
        self.steps.push(Step {
            name: name.to_string(),
            path: if parent.is_empty() {
                name.to_string()
            } else {
                format!("{parent}/{name}")
            },
            kind,
            next: None,
            owner,
            position: self.spans.find(path),
            lint_allow: Vec::new(),
            explicit_bind: false,
        });
        id
    }

    /// Validates a step list; returns its ids and whether it always ends the saga.
    fn list(
        &mut self,
        items: &[Value],
        path: &str,
        parent: &str,
        owner: ListOwner,
        bound: &mut BTreeSet<String>,
    ) -> (Vec<NodeId>, bool) {
        let mut ids: Vec<NodeId> = Vec::new();
        let mut terminal = false;
        for (i, item) in items.iter().enumerate() {
            let ipath = format!("{path}[{i}]");
            if terminal {
                let last = ids
                    .last()
                    .map(|&id| self.steps[id as usize].name.clone())
                    .unwrap_or_default();
                self.err(
                    DefCode::UnreachableStep,
                    &ipath,
                    format!(
                        "this step can never run: step `{last}` before it always ends the saga"
                    ),
                    Some("remove it, or move it before the terminal step or into a branch".into()),
                );
                break;
            }
            let Some((id, t)) = self.step(item, &ipath, parent, owner, bound) else {
                continue;
            };
            if let Some(&prev) = ids.last() {
                self.steps[prev as usize].next = Some(id);
            }
            ids.push(id);
            terminal = t;
        }
        (ids, terminal)
    }

    fn de<T: DeserializeOwned>(&mut self, item: &Value, path: &str) -> Option<T> {
        match deserialize(self.file, self.spans, item.clone(), path) {
            Ok(t) => Some(t),
            Err(e) => {
                self.errors.push(e);
                None
            }
        }
    }

    fn step(
        &mut self,
        item: &Value,
        path: &str,
        parent: &str,
        owner: ListOwner,
        bound: &mut BTreeSet<String>,
    ) -> Option<(NodeId, bool)> {
        let Value::Object(map) = item else {
            self.err(
                DefCode::Schema,
                path,
                "a step must be a mapping".into(),
                Some(format!("start it with one of: {}", STEP_KINDS.join(", "))),
            );
            return None;
        };
        let kinds: Vec<&str> = STEP_KINDS
            .iter()
            .copied()
            .filter(|k| map.contains_key(*k))
            .collect();
        let kind = match kinds.as_slice() {
            [k] => *k,
            [] => {
                let keys = map
                    .keys()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let first = map
                    .keys()
                    .next()
                    .map(|k| join(path, k))
                    .unwrap_or_else(|| path.to_string());
                self.err(
                    DefCode::UnknownStepKind,
                    &first,
                    format!("unknown step kind: the step has keys {keys}"),
                    Some(format!(
                        "a step has exactly one of: {}",
                        STEP_KINDS.join(", ")
                    )),
                );
                return None;
            }
            many => {
                self.err(
                    DefCode::UnknownStepKind,
                    path,
                    format!("a step has one kind, this one has {}", many.join(" and ")),
                    Some("split it into separate steps".into()),
                );
                return None;
            }
        };
        let name_path = join(path, kind);
        match kind {
            "call" => {
                let raw: RawCall = self.de(item, path)?;
                self.name(&raw.call, &name_path);
                let bind = raw.bind.clone().unwrap_or_else(|| raw.call.clone());
                if raw.bind.is_some() {
                    self.name(&bind, &join(path, "bind"));
                }
                for (svc, p) in [
                    (Some(&raw.service), join(path, "service")),
                    (
                        raw.compensate.as_ref().and_then(|c| c.service.as_ref()),
                        join(path, "compensate.service"),
                    ),
                ] {
                    if let Some(svc) = svc
                        && !self.services.contains(svc)
                    {
                        let known = self.services.names();
                        self.err(
                            DefCode::UnknownService,
                            &p,
                            format!("unknown service `{svc}`"),
                            Some(format!("known services: {known}")),
                        );
                    }
                }
                let input = match &raw.input {
                    Some(v) => {
                        self.template(v, &join(path, "input"), bound, DefCode::UnboundReference)
                    }
                    None => Some(ValueTemplate::Literal(Value::Object(Default::default()))),
                };
                let timeout_ms = match &raw.timeout {
                    Some(t) => self.duration(t, &join(path, "timeout")),
                    None => Some(30_000),
                };
                let retry = self.retry(raw.retry.as_ref(), &join(path, "retry"), 3);
                let compensate = raw.compensate.as_ref().map(|c| {
                    let cpath = join(path, "compensate");
                    let mut cbound = bound.clone();
                    cbound.insert(bind.clone());
                    let input = match &c.input {
                        Some(v) => self.template(
                            v,
                            &join(&cpath, "input"),
                            &cbound,
                            DefCode::CompensationReference,
                        ),
                        None => Some(ValueTemplate::Literal(Value::Object(Default::default()))),
                    };
                    let timeout_ms = match &c.timeout {
                        Some(t) => self.duration(t, &join(&cpath, "timeout")),
                        None => timeout_ms,
                    };
                    let retry = self.retry(c.retry.as_ref(), &join(&cpath, "retry"), 5);
                    (
                        c.service.clone().unwrap_or_else(|| raw.service.clone()),
                        c.operation.clone(),
                        input,
                        timeout_ms,
                        retry,
                    )
                });
                bound.insert(bind.clone());
                let sensitive = self.sensitive(&raw.sensitive, &join(path, "sensitive"));
                let (Some(input), Some(timeout_ms)) = (input, timeout_ms) else {
                    return None;
                };
                let compensate = match compensate {
                    None => None,
                    Some((service, operation, Some(input), Some(timeout_ms), retry)) => {
                        Some(Compensation {
                            service,
                            operation,
                            input,
                            timeout_ms,
                            retry,
                        })
                    }
                    Some(_) => return None,
                };
                let explicit_bind = raw.bind.is_some();
                let allow = raw.lint.map(|l| l.allow).unwrap_or_default();
                for (i, code) in allow.iter().enumerate() {
                    if !crate::lint::CODES.contains(&code.as_str()) {
                        self.err(
                            DefCode::Schema,
                            &join(path, &format!("lint.allow[{i}]")),
                            format!("`{code}` is not a lint warning code"),
                            Some(format!("one of {}", crate::lint::CODES.join(", "))),
                        );
                    }
                }
                let id = self.push(
                    &raw.call,
                    parent,
                    StepKind::Call(Box::new(CallStep {
                        service: raw.service,
                        operation: raw.operation,
                        input,
                        timeout_ms,
                        retry,
                        bind,
                        compensate,
                        sensitive,
                    })),
                    owner,
                    path,
                );
                self.steps[id as usize].lint_allow = allow;
                self.steps[id as usize].explicit_bind = explicit_bind;
                Some((id, false))
            }
            "parallel" => {
                let raw: RawParallel = self.de(item, path)?;
                self.name(&raw.parallel, &name_path);
                if raw.branches.len() < 2 {
                    self.err(
                        DefCode::Schema,
                        &join(path, "branches"),
                        "a parallel step needs at least two branches".into(),
                        Some("use plain steps for one branch".into()),
                    );
                }
                let id = self.push(
                    &raw.parallel,
                    parent,
                    StepKind::Parallel {
                        branches: Vec::new(),
                    },
                    owner,
                    path,
                );
                let my_path = self.steps[id as usize].path.clone();
                let mut after = bound.clone();
                let mut terminal = false;
                let mut branches = Vec::new();
                let mut branch_names = BTreeSet::new();
                for (bi, b) in raw.branches.iter().enumerate() {
                    let bpath = format!("{path}.branches[{bi}]");
                    if !is_ident(&b.name) {
                        self.err(
                            DefCode::BadName,
                            &join(&bpath, "name"),
                            format!("`{}` is not a valid branch name", b.name),
                            Some("lowercase letters, digits and `_`".into()),
                        );
                    }
                    if !branch_names.insert(b.name.clone()) {
                        self.err(
                            DefCode::DuplicateName,
                            &join(&bpath, "name"),
                            format!("branch `{}` appears twice", b.name),
                            None,
                        );
                    }
                    let mut bb = bound.clone();
                    let (ids, t) = self.list(
                        &b.steps,
                        &join(&bpath, "steps"),
                        &my_path,
                        ListOwner::Branch(id),
                        &mut bb,
                    );
                    terminal |= t;
                    after.extend(bb);
                    branches.push((b.name.clone(), ids));
                }
                self.steps[id as usize].kind = StepKind::Parallel { branches };
                *bound = after;
                Some((id, terminal))
            }
            "choice" => {
                let raw: RawChoice = self.de(item, path)?;
                self.name(&raw.choice, &name_path);
                let id = self.push(&raw.choice, parent, StepKind::Finish, owner, path);
                let my_path = self.steps[id as usize].path.clone();
                let mut falls_through = Vec::new();
                let mut when = Vec::new();
                for (wi, w) in raw.when.iter().enumerate() {
                    let wpath = format!("{path}.when[{wi}]");
                    let cond = self.expr(
                        &w.condition,
                        &join(&wpath, "if"),
                        SAGA_VARS,
                        bound,
                        DefCode::UnboundReference,
                    );
                    let mut bb = bound.clone();
                    let (ids, t) = self.list(
                        &w.steps,
                        &join(&wpath, "steps"),
                        &my_path,
                        ListOwner::Choice(id),
                        &mut bb,
                    );
                    if !t {
                        falls_through.push(bb);
                    }
                    if let Some(c) = cond {
                        when.push((c, ids));
                    }
                }
                let mut bb = bound.clone();
                let (default, t) = match &raw.default {
                    Some(d) => self.list(
                        d,
                        &join(path, "default"),
                        &my_path,
                        ListOwner::Choice(id),
                        &mut bb,
                    ),
                    None => (Vec::new(), false),
                };
                if !t {
                    falls_through.push(bb);
                }
                if raw.when.is_empty() {
                    self.err(
                        DefCode::Schema,
                        &join(path, "when"),
                        "a choice needs at least one `when` branch".into(),
                        None,
                    );
                }
                self.steps[id as usize].kind = StepKind::Choice { when, default };
                let terminal = falls_through.is_empty();
                if !terminal {
                    *bound = intersect_all(&falls_through);
                }
                Some((id, terminal))
            }
            "await" => {
                let raw: RawAwait = self.de(item, path)?;
                self.name(&raw.name, &name_path);
                let bind = raw.bind.clone().unwrap_or_else(|| raw.name.clone());
                if raw.bind.is_some() {
                    self.name(&bind, &join(path, "bind"));
                }
                let correlate = self.expr(
                    &raw.correlate,
                    &join(path, "correlate"),
                    &["event"],
                    &BTreeSet::new(),
                    DefCode::UnboundReference,
                );
                let deadline_ms = self.duration(&raw.deadline, &join(path, "deadline"));
                let id = self.push(&raw.name, parent, StepKind::Finish, owner, path);
                let my_path = self.steps[id as usize].path.clone();
                let mut with_event = bound.clone();
                with_event.insert(bind.clone());
                let on_deadline = match raw.on_deadline.unwrap_or(RawOnDeadline::Fail) {
                    RawOnDeadline::Fail => OnDeadline::Fail,
                    RawOnDeadline::Compensate => OnDeadline::Compensate,
                    RawOnDeadline::Continue(items) => {
                        let mut bb = bound.clone();
                        let (ids, t) = self.list(
                            &items,
                            &join(path, "on-deadline.continue"),
                            &my_path,
                            ListOwner::Deadline(id),
                            &mut bb,
                        );
                        if !t {
                            with_event = with_event.intersection(&bb).cloned().collect();
                        }
                        OnDeadline::Continue(ids)
                    }
                };
                *bound = with_event;
                let (Some(correlate), Some(deadline_ms)) = (correlate, deadline_ms) else {
                    return None;
                };
                self.steps[id as usize].kind = StepKind::Await(AwaitStep {
                    topic: raw.topic,
                    event_type: raw.event_type,
                    correlate,
                    deadline_ms,
                    on_deadline,
                    bind,
                });
                Some((id, false))
            }
            "emit" => {
                let raw: RawEmit = self.de(item, path)?;
                self.name(&raw.emit, &name_path);
                let key = self.string_template(&raw.key, &join(path, "key"), bound);
                let payload = match &raw.payload {
                    Some(v) => {
                        self.template(v, &join(path, "payload"), bound, DefCode::UnboundReference)
                    }
                    None => Some(ValueTemplate::Literal(Value::Object(Default::default()))),
                };
                let (Some(key), Some(payload)) = (key, payload) else {
                    return None;
                };
                let id = self.push(
                    &raw.emit,
                    parent,
                    StepKind::Emit(EmitStep {
                        topic: raw.topic,
                        event_type: raw.event_type,
                        key,
                        payload,
                    }),
                    owner,
                    path,
                );
                Some((id, false))
            }
            "reject" => {
                let raw: RawReject = self.de(item, path)?;
                self.name(&raw.reject, &name_path);
                let reason = self.string_template(&raw.reason, &join(path, "reason"), bound)?;
                let id = self.push(
                    &raw.reject,
                    parent,
                    StepKind::Reject { reason },
                    owner,
                    path,
                );
                Some((id, true))
            }
            "finish" => {
                let raw: RawFinish = self.de(item, path)?;
                self.name(&raw.finish, &name_path);
                if matches!(owner, ListOwner::Branch(_)) || self.inside_parallel(owner) {
                    self.err(
                        DefCode::Schema,
                        &name_path,
                        "`finish` cannot be used inside a parallel branch".into(),
                        Some("end the saga after the parallel step".into()),
                    );
                }
                self.completion_bounds.push(bound.clone());
                let id = self.push(&raw.finish, parent, StepKind::Finish, owner, path);
                Some((id, true))
            }
            _ => unreachable!("kind is one of STEP_KINDS"),
        }
    }

    fn inside_parallel(&self, mut owner: ListOwner) -> bool {
        loop {
            match owner {
                ListOwner::Root => return false,
                ListOwner::Branch(_) => return true,
                ListOwner::Choice(id) | ListOwner::Deadline(id) => {
                    owner = self.steps[id as usize].owner
                }
            }
        }
    }
}

// ------------------------------------------------------------------ registry

/// Validated definitions keyed by (type, version).
#[derive(Debug, Default)]
pub struct DefinitionRegistry {
    defs: BTreeMap<(String, u32), std::sync::Arc<SagaDefinition>>,
}

impl DefinitionRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a definition; a (type, version) may be registered once.
    pub fn insert(&mut self, def: SagaDefinition) -> Result<(), DefinitionError> {
        let key = (def.saga_type.clone(), def.version);
        if let Some(existing) = self.defs.get(&key) {
            return Err(error(
                DefCode::DuplicateDefinition,
                &def.file,
                Position { line: 1, column: 1 },
                format!("saga `{}` version {} is already defined in {}", def.saga_type, def.version, existing.file),
                Some("bump `version` when you change a definition; running sagas stay on their version".into()),
            ));
        }
        self.defs.insert(key, std::sync::Arc::new(def));
        Ok(())
    }

    /// Parses and validates definition files (name, text) against the
    /// services, collecting every error of every file.
    pub fn from_sources<'a, I>(
        sources: I,
        services: &ServiceCatalog,
    ) -> Result<Self, DefinitionErrors>
    where
        I: IntoIterator<Item = (&'a str, &'a str)>,
    {
        let mut reg = Self::new();
        let mut errors = Vec::new();
        for (file, source) in sources {
            match SagaDefinition::from_yaml(file, source, services) {
                Ok(def) => {
                    if let Err(e) = reg.insert(def) {
                        errors.push(e);
                    }
                }
                Err(DefinitionErrors(es)) => errors.extend(es),
            }
        }
        if errors.is_empty() {
            Ok(reg)
        } else {
            Err(DefinitionErrors(errors))
        }
    }

    /// The definition of `saga_type` at `version`.
    pub fn get(&self, saga_type: &str, version: u32) -> Option<&SagaDefinition> {
        self.defs
            .get(&(saga_type.to_string(), version))
            .map(|d| &**d)
    }

    /// The highest version of `saga_type`.
    pub fn latest(&self, saga_type: &str) -> Option<&SagaDefinition> {
        self.defs
            .range((saga_type.to_string(), 0)..=(saga_type.to_string(), u32::MAX))
            .next_back()
            .map(|(_, d)| &**d)
    }

    /// Every registered definition.
    pub fn iter(&self) -> impl Iterator<Item = &SagaDefinition> {
        self.defs.values().map(|d| &**d)
    }

    /// Latest definitions started by events of `event_type` on `topic`.
    pub fn triggered_by(&self, topic: &str, event_type: &str) -> Vec<&SagaDefinition> {
        let mut latest: BTreeMap<&str, &SagaDefinition> = BTreeMap::new();
        for d in self.iter() {
            if d.trigger.topic == topic && d.trigger.event_type == event_type {
                latest.insert(&d.saga_type, d);
            }
        }
        latest.into_values().collect()
    }
}

#[cfg(test)]
#[path = "definition_tests.rs"]
mod tests;
