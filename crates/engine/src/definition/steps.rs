//! One validation function per step kind.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::error::DefCode;
use crate::expr::ValueTemplate;

use super::raw::{
    RawAwait, RawCall, RawChoice, RawCompensate, RawEmit, RawFinish, RawLint, RawOnDeadline,
    RawParallel, RawReject,
};
use super::validate::{SAGA_VARS, Validator, intersect_all, is_ident, join};
use super::{
    AwaitStep, CallStep, Compensation, EmitStep, ListOwner, NodeId, OnDeadline, STEP_KINDS,
    StepKind,
};

impl Validator<'_> {
    /// Validates one step: finds its kind, then checks it as that kind.
    pub(super) fn step(
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
        match kind {
            "call" => self.call(item, path, parent, owner, bound),
            "parallel" => self.parallel(item, path, parent, owner, bound),
            "choice" => self.choice(item, path, parent, owner, bound),
            "await" => self.await_step(item, path, parent, owner, bound),
            "emit" => self.emit(item, path, parent, owner, bound),
            "reject" => self.reject(item, path, parent, owner, bound),
            "finish" => self.finish(item, path, parent, owner, bound),
            _ => unreachable!("kind is one of STEP_KINDS"),
        }
    }

    /// A `call` step.
    fn call(
        &mut self,
        item: &Value,
        path: &str,
        parent: &str,
        owner: ListOwner,
        bound: &mut BTreeSet<String>,
    ) -> Option<(NodeId, bool)> {
        let name_path = join(path, "call");
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
            Some(v) => self.template(v, &join(path, "input"), bound, DefCode::UnboundReference),
            None => Some(ValueTemplate::Literal(Value::Object(Default::default()))),
        };
        let timeout_ms = match &raw.timeout {
            Some(t) => self.duration(t, &join(path, "timeout")),
            None => Some(30_000),
        };
        let retry = self.retry(raw.retry.as_ref(), &join(path, "retry"), 3);
        let compensate = raw.compensate.as_ref().map(|c| {
            let mut cbound = bound.clone();
            cbound.insert(bind.clone());
            self.compensation(c, &raw.service, path, &cbound, timeout_ms)
        });
        bound.insert(bind.clone());
        let sensitive = self.sensitive(&raw.sensitive, &join(path, "sensitive"));
        let (Some(input), Some(timeout_ms)) = (input, timeout_ms) else {
            return None;
        };
        let compensate = match compensate {
            None => None,
            Some(Some(c)) => Some(c),
            Some(None) => return None,
        };
        let explicit_bind = raw.bind.is_some();
        let allow = self.lint_allow(raw.lint, path);
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

    /// A call's `compensate`: its service defaults to the call's, its
    /// timeout to the call's `timeout_ms`; its input may read what was
    /// bound before the step and the step's own reply (`cbound`). `None`
    /// when it has errors (they are reported).
    fn compensation(
        &mut self,
        c: &RawCompensate,
        call_service: &str,
        path: &str,
        cbound: &BTreeSet<String>,
        timeout_ms: Option<u64>,
    ) -> Option<Compensation> {
        let cpath = join(path, "compensate");
        let input = match &c.input {
            Some(v) => self.template(
                v,
                &join(&cpath, "input"),
                cbound,
                DefCode::CompensationReference,
            ),
            None => Some(ValueTemplate::Literal(Value::Object(Default::default()))),
        };
        let timeout_ms = match &c.timeout {
            Some(t) => self.duration(t, &join(&cpath, "timeout")),
            None => timeout_ms,
        };
        let retry = self.retry(c.retry.as_ref(), &join(&cpath, "retry"), 5);
        Some(Compensation {
            service: c
                .service
                .clone()
                .unwrap_or_else(|| call_service.to_string()),
            operation: c.operation.clone(),
            input: input?,
            timeout_ms: timeout_ms?,
            retry,
        })
    }

    /// A `parallel` step.
    fn parallel(
        &mut self,
        item: &Value,
        path: &str,
        parent: &str,
        owner: ListOwner,
        bound: &mut BTreeSet<String>,
    ) -> Option<(NodeId, bool)> {
        let name_path = join(path, "parallel");
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

    /// A `choice` step.
    fn choice(
        &mut self,
        item: &Value,
        path: &str,
        parent: &str,
        owner: ListOwner,
        bound: &mut BTreeSet<String>,
    ) -> Option<(NodeId, bool)> {
        let name_path = join(path, "choice");
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

    /// A `await` step.
    fn await_step(
        &mut self,
        item: &Value,
        path: &str,
        parent: &str,
        owner: ListOwner,
        bound: &mut BTreeSet<String>,
    ) -> Option<(NodeId, bool)> {
        let name_path = join(path, "await");
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
        self.steps[id as usize].lint_allow = self.lint_allow(raw.lint, path);
        Some((id, false))
    }

    /// The warning codes a step silences (`lint: {allow: [...]}`); an
    /// unknown code is an error.
    fn lint_allow(&mut self, lint: Option<RawLint>, path: &str) -> Vec<String> {
        let allow = lint.map(|l| l.allow).unwrap_or_default();
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
        allow
    }

    /// A `emit` step.
    fn emit(
        &mut self,
        item: &Value,
        path: &str,
        parent: &str,
        owner: ListOwner,
        bound: &mut BTreeSet<String>,
    ) -> Option<(NodeId, bool)> {
        let name_path = join(path, "emit");
        let raw: RawEmit = self.de(item, path)?;
        self.name(&raw.emit, &name_path);
        let key = self.string_template(&raw.key, &join(path, "key"), bound);
        let payload = match &raw.payload {
            Some(v) => self.template(v, &join(path, "payload"), bound, DefCode::UnboundReference),
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

    /// A `reject` step.
    fn reject(
        &mut self,
        item: &Value,
        path: &str,
        parent: &str,
        owner: ListOwner,
        bound: &mut BTreeSet<String>,
    ) -> Option<(NodeId, bool)> {
        let name_path = join(path, "reject");
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

    /// A `finish` step.
    fn finish(
        &mut self,
        item: &Value,
        path: &str,
        parent: &str,
        owner: ListOwner,
        bound: &mut BTreeSet<String>,
    ) -> Option<(NodeId, bool)> {
        let name_path = join(path, "finish");
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
}
