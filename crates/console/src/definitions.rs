//! Saga definitions as the console shows them: each type and version
//! drawn as SVG (steps top to bottom, branches indented, each call with
//! its service operation and its compensation).

use std::collections::BTreeSet;
use std::path::Path;

use sagaflow_engine::definition::{OnDeadline, StepKind};
use sagaflow_engine::{NodeId, SagaDefinition};
use serde::Serialize;

use crate::error::ConsoleError;

/// One definition, ready to show.
#[derive(Debug, Clone, Serialize)]
pub struct DefinitionView {
    pub saga_type: String,
    pub version: u32,
    pub description: Option<String>,
    pub trigger: String,
    pub search_attributes: Vec<String>,
    pub sensitive: Vec<String>,
    pub svg: String,
}

/// Loads every `*.yaml` definition of `dir` against the services catalogue.
pub fn load(dir: &Path, services: &Path) -> Result<Vec<DefinitionView>, ConsoleError> {
    let (_, registry) = sagaflow_engine::load_definitions(dir, services)
        .map_err(|e| ConsoleError::Config(e.to_string()))?;
    let mut out: Vec<DefinitionView> = registry.iter().map(view).collect();
    out.sort_by(|a, b| (&a.saga_type, a.version).cmp(&(&b.saga_type, b.version)));
    Ok(out)
}

fn view(def: &SagaDefinition) -> DefinitionView {
    DefinitionView {
        saga_type: def.saga_type.clone(),
        version: def.version,
        description: def.description.clone(),
        trigger: format!("{} on {}", def.trigger.event_type, def.trigger.topic),
        search_attributes: def
            .search_attributes
            .iter()
            .map(|(n, _)| n.clone())
            .collect(),
        sensitive: def.sensitive.iter().map(|p| p.as_dotted()).collect(),
        svg: svg(def),
    }
}

/// One drawn row: indentation, text, CSS class.
struct Row {
    depth: usize,
    text: String,
    class: &'static str,
}

fn rows_of(def: &SagaDefinition, ids: &[NodeId], depth: usize, out: &mut Vec<Row>) {
    for &id in ids {
        let step = def.step(id);
        match &step.kind {
            StepKind::Call(c) => {
                let undo = c
                    .compensate
                    .as_ref()
                    .map(|u| format!("  ↺ {}.{}", u.service, u.operation))
                    .unwrap_or_default();
                out.push(Row {
                    depth,
                    text: format!("{}: {}.{}{undo}", step.name, c.service, c.operation),
                    class: "call",
                });
            }
            StepKind::Parallel { branches } => {
                out.push(Row {
                    depth,
                    text: format!("parallel {}", step.name),
                    class: "control",
                });
                for (name, list) in branches {
                    out.push(Row {
                        depth: depth + 1,
                        text: format!("branch {name}"),
                        class: "label",
                    });
                    rows_of(def, list, depth + 2, out);
                }
            }
            StepKind::Choice { when, default } => {
                out.push(Row {
                    depth,
                    text: format!("choice {}", step.name),
                    class: "control",
                });
                for (cond, list) in when {
                    out.push(Row {
                        depth: depth + 1,
                        text: format!("if {}", cond.source()),
                        class: "label",
                    });
                    rows_of(def, list, depth + 2, out);
                }
                if !default.is_empty() {
                    out.push(Row {
                        depth: depth + 1,
                        text: "otherwise".into(),
                        class: "label",
                    });
                    rows_of(def, default, depth + 2, out);
                }
            }
            StepKind::Await(a) => {
                out.push(Row {
                    depth,
                    text: format!("await {}: {} on {}", step.name, a.event_type, a.topic),
                    class: "await",
                });
                let on = match &a.on_deadline {
                    OnDeadline::Fail => "on deadline: fail",
                    OnDeadline::Compensate => "on deadline: compensate",
                    OnDeadline::Continue(_) => "on deadline:",
                };
                out.push(Row {
                    depth: depth + 1,
                    text: on.into(),
                    class: "label",
                });
                if let OnDeadline::Continue(list) = &a.on_deadline {
                    rows_of(def, list, depth + 2, out);
                }
            }
            StepKind::Emit(e) => out.push(Row {
                depth,
                text: format!("emit {}: {} on {}", step.name, e.event_type, e.topic),
                class: "emit",
            }),
            StepKind::Reject { .. } => out.push(Row {
                depth,
                text: format!("reject {}", step.name),
                class: "end",
            }),
            StepKind::Finish => out.push(Row {
                depth,
                text: format!("finish {}", step.name),
                class: "end",
            }),
        }
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The definition drawn as SVG.
pub fn svg(def: &SagaDefinition) -> String {
    let mut nested = BTreeSet::new();
    for step in def.steps() {
        match &step.kind {
            StepKind::Parallel { branches } => {
                nested.extend(branches.iter().flat_map(|(_, l)| l.iter().copied()))
            }
            StepKind::Choice { when, default } => {
                nested.extend(when.iter().flat_map(|(_, l)| l.iter().copied()));
                nested.extend(default.iter().copied());
            }
            StepKind::Await(a) => {
                if let OnDeadline::Continue(l) = &a.on_deadline {
                    nested.extend(l.iter().copied());
                }
            }
            _ => {}
        }
    }
    let root: Vec<NodeId> = (0..def.steps().len())
        .filter_map(|i| NodeId::try_from(i).ok())
        .filter(|id| !nested.contains(id))
        .collect();
    let mut rows = vec![Row {
        depth: 0,
        text: format!("start: {} on {}", def.trigger.event_type, def.trigger.topic),
        class: "start",
    }];
    rows_of(def, &root, 0, &mut rows);
    let (h, gap, indent, w) = (28, 8, 28, 520);
    let height = 10 + rows.len() * (h + gap);
    let width = w + 20 + rows.iter().map(|r| r.depth).max().unwrap_or(0) * indent;
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="definition" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{} v{}">"#,
        escape(&def.saga_type),
        def.version
    );
    for (i, r) in rows.iter().enumerate() {
        let (x, y) = (10 + r.depth * indent, 10 + i * (h + gap));
        out.push_str(&format!(
            r#"<g class="def-node {}"><rect x="{x}" y="{y}" width="{w}" height="{h}" rx="5"/><text x="{}" y="{}">{}</text></g>"#,
            r.class,
            x + 8,
            y + h / 2 + 5,
            escape(&r.text)
        ));
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worked_sagas_are_drawn_with_steps_branches_and_compensations() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../topology");
        let defs = load(&root.join("sagas"), &root.join("services.yaml")).unwrap();
        let order = defs
            .iter()
            .find(|d| d.saga_type == "order-checkout")
            .unwrap();
        assert!(
            order
                .svg
                .contains("reserve_inventory: inventory.reserve  ↺ inventory.release"),
            "{}",
            order.svg
        );
        assert!(order.svg.contains("choice screen_order"), "{}", order.svg);
        assert!(
            order.svg.contains("if event.total_cents &gt;= 100000"),
            "{}",
            order.svg
        );
        assert_eq!(order.search_attributes, ["customer_id", "total_cents"]);
        assert_eq!(order.sensitive, ["shipping_address"]);
        assert!(
            defs.iter().any(|d| d.svg.contains("await ")),
            "an await is drawn"
        );
        assert_eq!(defs.len(), 3);
    }
}
