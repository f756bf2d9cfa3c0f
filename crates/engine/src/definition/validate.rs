//! Validation: raw definition → [`SagaDefinition`], every error with its
//! file, line and column. The per-kind step checks are in `steps`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::data::FieldPath;
use crate::error::{DefCode, DefinitionError, DefinitionErrors};
use crate::expr::{Expr, ValueTemplate};
use crate::yaml::{self, Position, Spans};

use super::raw::{RawRetry, RawSagaOnDeadline, RawTop, RawTrigger};
use super::{
    ListOwner, NodeId, RetryPolicy, STEP_KINDS, SagaDeadline, SagaDefinition, SagaOnDeadline,
    ServiceCatalog, Step, StepKind, Trigger,
};

pub(super) fn error(
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

pub(super) fn load_yaml(file: &str, source: &str) -> Result<(Value, Spans), DefinitionErrors> {
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

pub(super) fn join(base: &str, rel: &str) -> String {
    match (base.is_empty(), rel.is_empty()) {
        (true, _) => rel.to_string(),
        (_, true) => base.to_string(),
        _ if rel.starts_with('[') => format!("{base}{rel}"),
        _ => format!("{base}.{rel}"),
    }
}

pub(super) fn deserialize<T: DeserializeOwned>(
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
    pub(super) file: String,
    pub(super) spans: Spans,
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
        let (key, saga_id) = v.trigger(&top.trigger);
        let sensitive = v.sensitive(&top.sensitive, "sensitive");
        let search_attributes = v.search_attributes(&top.search_attributes);
        let deadline = v.saga_deadline(top.deadline.as_deref(), top.on_deadline);
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
            deadline,
            file: self.file,
        })
    }
}

impl Validator<'_> {
    /// The trigger's correlation key and saga id template.
    fn trigger(&mut self, raw: &RawTrigger) -> (Option<Expr>, Option<Expr>) {
        let key = self.expr(
            &raw.key,
            "trigger.key",
            &["event"],
            &BTreeSet::new(),
            DefCode::UnboundReference,
        );
        let saga_id_src = raw
            .saga_id
            .clone()
            .unwrap_or_else(|| "{{ type }}:{{ key }}".to_string());
        let saga_id = match Expr::template(&saga_id_src) {
            Ok(e) => {
                // Only `type` and `key`: an awaited event is routed to its
                // saga by correlation key, so the id must follow from them.
                self.check_refs(
                    &e,
                    "trigger.saga-id",
                    &["type", "key"],
                    &BTreeSet::new(),
                    DefCode::UnboundReference,
                );
                Some(e)
            }
            Err(e) => {
                self.err(
                    DefCode::BadExpression,
                    "trigger.saga-id",
                    format!("template does not compile: {}", e.0),
                    None,
                );
                None
            }
        };
        (key, saga_id)
    }

    /// The search attributes: valid names, expressions over `event`.
    fn search_attributes(&mut self, raw: &BTreeMap<String, String>) -> Vec<(String, Expr)> {
        let mut search_attributes = Vec::new();
        for (name, src) in raw {
            let path = join("search-attributes", name);
            if name == crate::engine::KEY_ATTRIBUTE {
                self.err(
                    DefCode::BadName,
                    &path,
                    "search attribute `key` is reserved: every saga has it (its correlation key)"
                        .into(),
                    Some("pick another name".into()),
                );
            } else if !is_ident(name) {
                self.err(
                    DefCode::BadName,
                    &path,
                    format!("search attribute `{name}` is not a valid name"),
                    Some("use lowercase letters, digits and `_`, e.g. `customer_id`".into()),
                );
            }
            if let Some(e) = self.expr(
                src,
                &path,
                &["event"],
                &BTreeSet::new(),
                DefCode::UnboundReference,
            ) {
                search_attributes.push((name.clone(), e));
            }
        }
        search_attributes
    }

    /// The saga-level `deadline` and `on-deadline`.
    fn saga_deadline(
        &mut self,
        deadline: Option<&str>,
        on_deadline: Option<RawSagaOnDeadline>,
    ) -> Option<SagaDeadline> {
        match deadline {
            Some(src) => self.duration(src, "deadline").map(|ms| SagaDeadline {
                ms,
                on_deadline: match on_deadline {
                    Some(RawSagaOnDeadline::Fail) => SagaOnDeadline::Fail,
                    Some(RawSagaOnDeadline::Compensate) | None => SagaOnDeadline::Compensate,
                },
                position: self.spans.find("deadline"),
            }),
            None => {
                if on_deadline.is_some() {
                    self.err(
                        DefCode::Schema,
                        "on-deadline",
                        "`on-deadline` without a saga `deadline`".into(),
                        Some("add `deadline: <duration>`, e.g. `deadline: 30m`".into()),
                    );
                }
                None
            }
        }
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

pub(super) fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn is_slug(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
}

pub(super) fn intersect_all(sets: &[BTreeSet<String>]) -> BTreeSet<String> {
    let mut it = sets.iter();
    let Some(first) = it.next() else {
        return BTreeSet::new();
    };
    it.fold(first.clone(), |acc, s| {
        acc.intersection(s).cloned().collect()
    })
}

pub(super) struct Validator<'a> {
    pub(super) file: &'a str,
    pub(super) spans: &'a Spans,
    pub(super) services: &'a ServiceCatalog,
    pub(super) errors: Vec<DefinitionError>,
    pub(super) steps: Vec<Step>,
    /// Step names and bindings seen so far, with their yaml path.
    pub(super) names: HashMap<String, String>,
    /// Bindings available wherever the saga can complete.
    pub(super) completion_bounds: Vec<BTreeSet<String>>,
    /// Every step name and binding in the file (for better messages).
    pub(super) all_names: BTreeSet<String>,
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

pub(super) const SAGA_VARS: &[&str] = &["event", "saga", "steps"];

impl Validator<'_> {
    /// Parses a list of `sensitive` field paths.
    pub(super) fn sensitive(&mut self, list: &[String], path: &str) -> Vec<FieldPath> {
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

    pub(super) fn err(&mut self, code: DefCode, path: &str, message: String, help: Option<String>) {
        let position = self.spans.find(path);
        self.errors
            .push(error(code, self.file, position, message, help));
    }

    pub(super) fn duration(&mut self, src: &str, path: &str) -> Option<u64> {
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

    pub(super) fn check_refs(
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

    pub(super) fn expr(
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

    pub(super) fn string_template(
        &mut self,
        src: &str,
        path: &str,
        bound: &BTreeSet<String>,
    ) -> Option<Expr> {
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

    pub(super) fn template(
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

    pub(super) fn name(&mut self, name: &str, path: &str) {
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

    pub(super) fn retry(
        &mut self,
        raw: Option<&RawRetry>,
        path: &str,
        default_attempts: u32,
    ) -> RetryPolicy {
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

    pub(super) fn push(
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
    pub(super) fn list(
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

    pub(super) fn de<T: DeserializeOwned>(&mut self, item: &Value, path: &str) -> Option<T> {
        match deserialize(self.file, self.spans, item.clone(), path) {
            Ok(t) => Some(t),
            Err(e) => {
                self.errors.push(e);
                None
            }
        }
    }

    pub(super) fn inside_parallel(&self, mut owner: ListOwner) -> bool {
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
