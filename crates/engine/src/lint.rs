//! Definition lint: warnings about definitions that are valid but probably
//! not what their author meant. `sagaflow topology validate` prints them;
//! they never stop a definition from loading. A step silences one on
//! purpose with `lint: {allow: [SF-DEF-W001]}`.
//!
//! The saga's `deadline:` bounds every command the saga sends going
//! forward (it cancels them all when it passes), so W003 and W004 compare
//! a step's own time bounds with it. The adapter's retries need no lint:
//! the adapter stops retrying when the command's `timeout_ms` runs out.

use crate::NodeId;
use crate::definition::ListOwner;
use crate::definition::{OnDeadline, RetryPolicy, SagaDefinition, StepKind};
use sagaflow_config::Position;

/// Every warning code.
pub const CODES: &[&str] = &[W001, W002, W003, W004];

/// A call step with effects has no compensation, but a later step can fail.
pub const W001: &str = "SF-DEF-W001";
/// A step names its binding (`bind:`) but nothing reads it.
pub const W002: &str = "SF-DEF-W002";
/// One attempt of a step (a call's `timeout`, an await's `deadline`) is
/// longer than the saga's `deadline`.
pub const W003: &str = "SF-DEF-W003";
/// A call's retry policy, run to its end (every attempt timing out, every
/// backoff at its longest), outlasts the saga's `deadline`.
pub const W004: &str = "SF-DEF-W004";

/// One warning, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinitionWarning {
    pub code: &'static str,
    pub file: String,
    pub position: Position,
    pub message: String,
    pub help: String,
}

impl std::fmt::Display for DefinitionWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}: warning[{}]: {} (help: {})",
            self.file, self.position, self.code, self.message, self.help
        )
    }
}

fn children(def: &SagaDefinition, id: NodeId) -> Vec<NodeId> {
    let mut lists: Vec<&Vec<NodeId>> = Vec::new();
    match &def.step(id).kind {
        StepKind::Parallel { branches } => lists.extend(branches.iter().map(|(_, l)| l)),
        StepKind::Choice { when, default } => {
            lists.extend(when.iter().map(|(_, l)| l));
            lists.push(default);
        }
        StepKind::Await(a) => {
            if let OnDeadline::Continue(l) = &a.on_deadline {
                lists.push(l);
            }
        }
        _ => {}
    }
    lists.into_iter().flat_map(|l| l.iter().copied()).collect()
}

/// `id` and every step nested in it.
fn subtree(def: &SagaDefinition, id: NodeId, out: &mut Vec<NodeId>) {
    out.push(id);
    for c in children(def, id) {
        let mut n = Some(c);
        while let Some(x) = n {
            subtree(def, x, out);
            n = def.step(x).next;
        }
    }
}

/// The steps that can run after `id` has run: its followers in its list,
/// the steps of sibling parallel branches (they run at the same time), and
/// the followers of every enclosing step.
fn after(def: &SagaDefinition, id: NodeId) -> Vec<NodeId> {
    let mut out = Vec::new();
    let mut cur = id;
    loop {
        let mut n = def.step(cur).next;
        while let Some(x) = n {
            subtree(def, x, &mut out);
            n = def.step(x).next;
        }
        match def.step(cur).owner {
            ListOwner::Root => return out,
            ListOwner::Branch(p) => {
                // The first step of cur's list: the others are siblings.
                let mine: Vec<NodeId> = {
                    let mut v = Vec::new();
                    subtree(def, first_of_list(def, cur), &mut v);
                    let mut n = def.step(first_of_list(def, cur)).next;
                    while let Some(x) = n {
                        subtree(def, x, &mut v);
                        n = def.step(x).next;
                    }
                    v
                };
                let mut all = Vec::new();
                for c in children(def, p) {
                    let mut n = Some(c);
                    while let Some(x) = n {
                        subtree(def, x, &mut all);
                        n = def.step(x).next;
                    }
                }
                out.extend(all.into_iter().filter(|x| !mine.contains(x)));
                cur = p;
            }
            ListOwner::Choice(p) | ListOwner::Deadline(p) => cur = p,
        }
    }
}

/// The first step of the list `id` belongs to.
fn first_of_list(def: &SagaDefinition, id: NodeId) -> NodeId {
    let owner = def.step(id).owner;
    let mut first = id;
    // Steps of one list are pushed in order; walk back while the previous
    // step of the same list leads here.
    'outer: loop {
        for (i, s) in def.steps().iter().enumerate() {
            if s.owner == owner && s.next == Some(first) {
                first = i as NodeId;
                continue 'outer;
            }
        }
        return first;
    }
}

fn can_fail(kind: &StepKind) -> bool {
    match kind {
        StepKind::Call(_) | StepKind::Reject { .. } => true,
        StepKind::Await(a) => !matches!(a.on_deadline, OnDeadline::Continue(_)),
        _ => false,
    }
}

/// Whether `source` reads `steps.<name>` (or `steps["<name>"]`) anywhere.
fn reads_binding(source: &str, name: &str) -> bool {
    let dotted = format!("steps.{name}");
    let mut rest = source;
    while let Some(i) = rest.find(&dotted) {
        let before = rest[..i].chars().next_back();
        let after = rest[i + dotted.len()..].chars().next();
        let boundary = |c: Option<char>| !c.is_some_and(|c| c.is_alphanumeric() || c == '_');
        if boundary(before) && boundary(after) {
            return true;
        }
        rest = &rest[i + dotted.len()..];
    }
    ["\"", "'"]
        .iter()
        .any(|q| source.contains(&format!("steps[{q}{name}{q}]")))
}

/// The longest a call can take going forward under its retry policy:
/// every attempt runs to its timeout and every backoff is at its upper
/// bound (jitter only shortens it). A policy that retries nothing allows
/// one attempt.
fn worst_case_ms(policy: &RetryPolicy, timeout_ms: u64) -> u64 {
    let attempts = if policy.on.is_empty() {
        1
    } else {
        policy.max_attempts.max(1)
    };
    let mut total = timeout_ms.saturating_mul(u64::from(attempts));
    for next in 2..=attempts {
        total = total.saturating_add(policy.max_backoff_ms(next));
    }
    total
}

/// `ms` as people write durations ("1m 30s").
fn human(ms: u64) -> String {
    humantime::format_duration(std::time::Duration::from_millis(ms)).to_string()
}

impl SagaDefinition {
    /// Lint warnings of this definition; `source` is the text it was loaded
    /// from (to find where bindings are read).
    pub fn lint(&self, source: &str) -> Vec<DefinitionWarning> {
        let mut out = Vec::new();
        for (i, step) in self.steps().iter().enumerate() {
            let allowed = |code: &str| step.lint_allow.iter().any(|a| a == code);
            let warn = |code: &'static str, message: String, help: String| DefinitionWarning {
                code,
                file: self.file.clone(),
                position: step.position,
                message,
                help,
            };
            if let Some(deadline) = self.deadline {
                out.extend(self.deadline_warnings(step, deadline.ms, &allowed, &warn));
            }
            let StepKind::Call(call) = &step.kind else {
                continue;
            };
            if call.compensate.is_none() && !allowed(W001) {
                let later = after(self, i as NodeId);
                if let Some(f) = later.iter().find(|x| can_fail(&self.step(**x).kind)) {
                    out.push(warn(
                        W001,
                        format!(
                            "step `{}` ({}.{}) has no compensation, but `{}` after it can fail: its effect would stay when the saga compensates",
                            step.name,
                            call.service,
                            call.operation,
                            self.step(*f).name
                        ),
                        format!("add `compensate:`, or `lint: {{allow: [{W001}]}}` if `{}` has no effect to undo", call.operation),
                    ));
                }
            }
            if step.explicit_bind && !allowed(W002) && !reads_binding(source, &call.bind) {
                out.push(warn(
                    W002,
                    format!(
                        "step `{}` binds its result to `{}`, but nothing reads `steps.{}`",
                        step.name, call.bind, call.bind
                    ),
                    format!(
                        "remove `bind: {}`, use it, or `lint: {{allow: [{W002}]}}`",
                        call.bind
                    ),
                ));
            }
        }
        out
    }

    /// W003 and W004 of one step against the saga's deadline.
    fn deadline_warnings(
        &self,
        step: &crate::definition::Step,
        deadline_ms: u64,
        allowed: &dyn Fn(&str) -> bool,
        warn: &dyn Fn(&'static str, String, String) -> DefinitionWarning,
    ) -> Option<DefinitionWarning> {
        let (what, one, policy) = match &step.kind {
            StepKind::Call(c) => ("timeout", c.timeout_ms, Some((&c.retry, c.timeout_ms))),
            StepKind::Await(a) => ("deadline", a.deadline_ms, None),
            _ => return None,
        };
        if one > deadline_ms {
            return (!allowed(W003)).then(|| {
                warn(
                    W003,
                    format!(
                        "step `{}` has a {what} of {}, longer than the saga's deadline of {}: the saga deadline always passes first",
                        step.name,
                        human(one),
                        human(deadline_ms)
                    ),
                    format!("shorten the step's `{what}` or lengthen the saga's `deadline`, or `lint: {{allow: [{W003}]}}`"),
                )
            });
        }
        let (retry, timeout_ms) = policy?;
        let worst = worst_case_ms(retry, timeout_ms);
        (worst > deadline_ms && !allowed(W004)).then(|| {
            warn(
                W004,
                format!(
                    "step `{}` can retry for up to {} ({} attempts of {} plus backoff), longer than the saga's deadline of {}: its last attempts never run",
                    step.name,
                    human(worst),
                    retry.max_attempts,
                    human(timeout_ms),
                    human(deadline_ms)
                ),
                format!("lower `retry.max-attempts`, `timeout` or the backoff, lengthen the saga's `deadline`, or `lint: {{allow: [{W004}]}}`"),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::ServiceCatalog;

    fn def(steps: &str) -> (SagaDefinition, String) {
        let source = format!(
            "type: t\nversion: 1\ntrigger:\n  topic: t.events\n  event-type: Go\n  key: event.id\nsteps:\n{steps}"
        );
        let services = ServiceCatalog::new(["a", "b"]);
        (
            SagaDefinition::from_yaml("t.yaml", &source, &services).unwrap(),
            source,
        )
    }

    fn codes(steps: &str) -> Vec<(&'static str, usize)> {
        let (d, s) = def(steps);
        d.lint(&s)
            .iter()
            .map(|w| (w.code, w.position.line))
            .collect()
    }

    #[test]
    fn w001_an_uncompensated_effect_before_a_step_that_can_fail() {
        let steps = "  - call: one\n    service: a\n    operation: do\n  - call: two\n    service: b\n    operation: do\n    compensate: { operation: undo }\n";
        assert_eq!(codes(steps), vec![(W001, 8)]);
        let (d, s) = def(steps);
        let w = &d.lint(&s)[0];
        assert!(w.to_string().starts_with("t.yaml:8:"), "{w}");
        assert!(w.message.contains("`two`"), "{w}");
        // The last step cannot be undone by anything after it: no warning.
        assert_eq!(
            codes("  - call: one\n    service: a\n    operation: do\n"),
            vec![]
        );
        // Nor when what follows cannot fail.
        assert_eq!(
            codes(
                "  - call: one\n    service: a\n    operation: do\n  - emit: e\n    topic: t.events\n    event-type: Done\n    key: event.id\n"
            ),
            vec![]
        );
        // Silenced on purpose.
        let silenced = steps.replace(
            "operation: do\n  - call: two",
            "operation: do\n    lint: { allow: [SF-DEF-W001] }\n  - call: two",
        );
        assert_eq!(codes(&silenced), vec![]);
    }

    #[test]
    fn w001_sees_parallel_siblings_and_steps_after_a_choice() {
        let par = "  - parallel: p\n    branches:\n      - name: x\n        steps:\n          - call: one\n            service: a\n            operation: do\n      - name: y\n        steps:\n          - reject: no\n            reason: \"'x'\"\n";
        assert_eq!(
            codes(par).iter().map(|c| c.0).collect::<Vec<_>>(),
            vec![W001]
        );
        let choice = "  - choice: c\n    when:\n      - if: event.id == 1\n        steps:\n          - call: one\n            service: a\n            operation: do\n      - if: event.id == 2\n        steps:\n          - reject: no\n            reason: \"'x'\"\n";
        assert_eq!(
            codes(choice),
            vec![],
            "the other branch of a choice never runs after it"
        );
        let after_choice = format!(
            "{choice}  - call: two\n    service: b\n    operation: do\n    compensate: {{ operation: undo }}\n"
        );
        assert_eq!(
            codes(&after_choice).iter().map(|c| c.0).collect::<Vec<_>>(),
            vec![W001]
        );
    }

    #[test]
    fn w002_a_named_binding_nothing_reads() {
        let steps = "  - call: one\n    service: a\n    operation: do\n    bind: thing\n";
        assert_eq!(codes(steps), vec![(W002, 8)]);
        let used = format!(
            "{steps}  - call: two\n    service: b\n    operation: do\n    input: {{ x: \"{{{{ steps.thing.id }}}}\" }}\n    compensate: {{ operation: undo }}\n"
        );
        // `one` is now followed by a call that can fail: W001, but no W002.
        assert_eq!(
            codes(&used).iter().map(|c| c.0).collect::<Vec<_>>(),
            vec![W001]
        );
        assert!(!reads_binding("steps.thingy", "thing"));
        assert!(reads_binding("x: steps.thing", "thing"));
        assert!(reads_binding("steps['thing'].id", "thing"));
        // A default binding (the step's name) is not flagged.
        assert_eq!(
            codes("  - call: one\n    service: a\n    operation: do\n"),
            vec![]
        );
    }

    /// A definition whose top level has `deadline:` (line 7; steps from 9).
    fn def_with_deadline(deadline: &str, steps: &str) -> (SagaDefinition, String) {
        let source = format!(
            "type: t\nversion: 1\ntrigger:\n  topic: t.events\n  event-type: Go\n  key: event.id\ndeadline: {deadline}\nsteps:\n{steps}"
        );
        let services = ServiceCatalog::new(["a", "b"]);
        (
            SagaDefinition::from_yaml("t.yaml", &source, &services).unwrap(),
            source,
        )
    }

    fn codes_with_deadline(deadline: &str, steps: &str) -> Vec<(&'static str, usize)> {
        let (d, source) = def_with_deadline(deadline, steps);
        d.lint(&source)
            .iter()
            .map(|w| (w.code, w.position.line))
            .collect()
    }

    #[test]
    fn w003_a_step_longer_than_the_saga_deadline() {
        let call = "  - call: one\n    service: a\n    operation: do\n    timeout: 2m\n    retry: { max-attempts: 1 }\n";
        assert_eq!(codes_with_deadline("1m", call), vec![(W003, 9)]);
        let (d, s) = def_with_deadline("1m", call);
        let w = &d.lint(&s)[0];
        assert!(w.to_string().starts_with("t.yaml:9:"), "{w}");
        assert!(w.message.contains("2m") && w.message.contains("1m"), "{w}");
        // Equal is fine; shorter is fine; no saga deadline, no warning.
        assert_eq!(codes_with_deadline("2m", call), vec![]);
        assert_eq!(codes(call), vec![]);
        // An await whose own deadline is longer.
        let wait = "  - await: paid\n    topic: t.events\n    event-type: Paid\n    correlate: event.id\n    deadline: 2h\n";
        assert_eq!(codes_with_deadline("1h", wait), vec![(W003, 9)]);
        // Silenced on purpose, on a call and on an await.
        let silenced = call.replace(
            "    timeout: 2m\n",
            "    timeout: 2m\n    lint: { allow: [SF-DEF-W003] }\n",
        );
        assert_eq!(codes_with_deadline("1m", &silenced), vec![]);
        let silenced = format!("{wait}    lint: {{ allow: [SF-DEF-W003] }}\n");
        assert_eq!(codes_with_deadline("1h", &silenced), vec![]);
    }

    #[test]
    fn w004_a_retry_schedule_longer_than_the_saga_deadline() {
        // 3 attempts of 30s plus backoffs of 1s and 2s: 93s > 90s.
        let call = "  - call: one\n    service: a\n    operation: do\n    timeout: 30s\n    retry: { max-attempts: 3, initial: 1s, multiplier: 2, max: 10s }\n";
        assert_eq!(codes_with_deadline("90s", call), vec![(W004, 9)]);
        assert_eq!(codes_with_deadline("93s", call), vec![]);
        // A policy that retries nothing allows one attempt only.
        let no_retry = call.replace("max: 10s }", "max: 10s, on: [] }");
        assert_eq!(codes_with_deadline("90s", &no_retry), vec![]);
        // One attempt already too long: W003 only, not both.
        assert_eq!(codes_with_deadline("20s", call), vec![(W003, 9)]);
        let silenced = call.replace(
            "    timeout: 30s\n",
            "    timeout: 30s\n    lint: { allow: [SF-DEF-W004] }\n",
        );
        assert_eq!(codes_with_deadline("90s", &silenced), vec![]);
        // Backoff is counted at its upper bound, capped by `max`.
        let policy = RetryPolicy {
            max_attempts: 4,
            initial: std::time::Duration::from_secs(1),
            multiplier: 10.0,
            max: std::time::Duration::from_secs(5),
            on: vec![crate::definition::RetryOn::Timeout],
        };
        assert_eq!(worst_case_ms(&policy, 1_000), 4_000 + 1_000 + 5_000 + 5_000);
    }

    #[test]
    fn unknown_codes_in_allow_are_errors() {
        let source = "type: t\nversion: 1\ntrigger:\n  topic: t.events\n  event-type: Go\n  key: event.id\nsteps:\n  - call: one\n    service: a\n    operation: do\n    lint: { allow: [SF-DEF-W999] }\n";
        let err = SagaDefinition::from_yaml("t.yaml", source, &ServiceCatalog::new(["a"]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("SF-DEF-W999") && err.contains("SF-DEF-W001"),
            "{err}"
        );
    }
}
