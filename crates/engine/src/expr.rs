//! Expressions and value templates (minijinja), compiled at load time.
//!
//! * An [`Expr`] is a minijinja expression such as `event.total > 1000`.
//! * A string template such as `"order {{ event.id }}"` is compiled into an
//!   expression too: literal text and `{{ … }}` parts are joined with `~`.
//! * A [`ValueTemplate`] is a YAML value tree: a string leaf that is exactly
//!   `{{ expr }}` evaluates to a typed JSON value, other strings containing
//!   `{{` render as strings, everything else is a literal.
//!
//! All of them share one immutable environment with strict undefined
//! behaviour, so a missing field is a runtime error rather than an empty
//! string.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use minijinja::{Environment, Expression, UndefinedBehavior};
use serde_json::Value;

static ENV: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.add_filter("hash", |v: minijinja::Value| -> String {
        format!("{:016x}", crate::fnv1a(v.to_string().as_bytes()))
    });
    env
});

/// A compiled expression together with its source.
pub struct Expr {
    source: String,
    compiled: Expression<'static, 'static>,
    /// Variable paths read (`["event", "order_id"]`), for building small
    /// evaluation contexts.
    needs: Vec<Vec<String>>,
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Expr({:?})", self.source)
    }
}

/// A compile error: message only (the caller knows the position).
#[derive(Debug, Clone)]
pub struct CompileError(pub String);

impl Expr {
    /// Compiles an expression.
    pub fn compile(source: &str) -> Result<Self, CompileError> {
        let compiled = ENV
            .compile_expression_owned(source.to_string())
            .map_err(|e| CompileError(describe(&e)))?;
        Ok(Self::new(source, compiled))
    }

    fn new(source: &str, compiled: Expression<'static, 'static>) -> Self {
        let needs = compiled
            .undeclared_variables(true)
            .into_iter()
            .map(|r| r.split('.').map(str::to_string).collect())
            .collect();
        Self {
            source: source.to_string(),
            compiled,
            needs,
        }
    }

    /// Variable paths the expression reads, split into segments.
    pub fn needs(&self) -> &[Vec<String>] {
        &self.needs
    }

    /// Compiles a string template (`text {{ expr }} text`) into an
    /// expression that renders it as a string.
    pub fn template(source: &str) -> Result<Self, CompileError> {
        if source.contains("{%") || source.contains("{#") {
            return Err(CompileError(
                "statements (`{% %}`) and comments (`{# #}`) are not allowed in templates; use `{{ expression }}`"
                    .into(),
            ));
        }
        let mut parts = Vec::new();
        let mut rest = source;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(quote(&rest[..start]));
            }
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| CompileError("unclosed `{{` in template".into()))?;
            let inner = after[..end].trim();
            if inner.is_empty() {
                return Err(CompileError("empty `{{ }}` in template".into()));
            }
            // Compile each part alone first so errors point at it.
            Expr::compile(inner)?;
            parts.push(format!("(({inner}) | string)"));
            rest = &after[end + 2..];
        }
        if !rest.is_empty() || parts.is_empty() {
            parts.push(quote(rest));
        }
        let joined = parts.join(" ~ ");
        let compiled = ENV
            .compile_expression_owned(joined)
            .map_err(|e| CompileError(describe(&e)))?;
        Ok(Self::new(source, compiled))
    }

    /// The source text as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates against a JSON context.
    pub fn eval<C: serde::Serialize>(&self, ctx: &C) -> Result<Value, String> {
        let v = self
            .compiled
            .eval(ctx)
            .map_err(|e| format!("expression `{}` failed: {}", self.source, describe(&e)))?;
        if v.is_undefined() {
            return Err(format!("expression `{}` is undefined", self.source));
        }
        serde_json::to_value(&v).map_err(|e| {
            format!(
                "expression `{}` gave a value that is not JSON: {e}",
                self.source
            )
        })
    }

    /// Evaluates to a string (numbers and booleans are formatted).
    pub fn eval_string<C: serde::Serialize>(&self, ctx: &C) -> Result<String, String> {
        Ok(match self.eval(ctx)? {
            Value::String(s) => s,
            Value::Null => {
                return Err(format!("expression `{}` evaluated to none", self.source));
            }
            other => other.to_string(),
        })
    }

    /// Evaluates to a boolean using Jinja truthiness.
    pub fn eval_bool<C: serde::Serialize>(&self, ctx: &C) -> Result<bool, String> {
        let v = self
            .compiled
            .eval(ctx)
            .map_err(|e| format!("condition `{}` failed: {}", self.source, describe(&e)))?;
        Ok(v.is_true())
    }

    /// Variable paths the expression reads, e.g. `steps.charge.id`.
    pub fn references(&self) -> BTreeSet<String> {
        self.needs.iter().map(|p| p.join(".")).collect()
    }
}

fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn describe(e: &minijinja::Error) -> String {
    match e.detail() {
        Some(d) => format!("{}: {d}", e.kind()),
        None => e.kind().to_string(),
    }
}

/// A JSON value tree whose string leaves may be expressions or templates.
#[derive(Debug)]
pub enum ValueTemplate {
    /// Used as is.
    Literal(Value),
    /// `"{{ expr }}"`: the expression's typed value.
    Expr(Expr),
    /// A string with `{{ … }}` parts, rendered as a string.
    Render(Expr),
    /// A list.
    Array(Vec<ValueTemplate>),
    /// A mapping, in source order.
    Object(Vec<(String, ValueTemplate)>),
}

/// Error while compiling a value template: path inside the value and message.
#[derive(Debug, Clone)]
pub struct TemplateError {
    pub path: String,
    pub message: String,
}

impl ValueTemplate {
    /// Compiles a value tree; errors carry the relative path of the leaf.
    pub fn compile(value: &Value) -> Result<Self, TemplateError> {
        Self::compile_at(value, String::new())
    }

    fn compile_at(value: &Value, path: String) -> Result<Self, TemplateError> {
        let err = |path: &str, e: CompileError| TemplateError {
            path: path.to_string(),
            message: e.0,
        };
        Ok(match value {
            Value::String(s) => {
                let t = s.trim();
                if let Some(inner) = t.strip_prefix("{{").and_then(|x| x.strip_suffix("}}"))
                    && !inner.contains("{{")
                    && !inner.contains("}}")
                {
                    ValueTemplate::Expr(Expr::compile(inner.trim()).map_err(|e| err(&path, e))?)
                } else if s.contains("{{") || s.contains("{%") {
                    ValueTemplate::Render(Expr::template(s).map_err(|e| err(&path, e))?)
                } else {
                    ValueTemplate::Literal(value.clone())
                }
            }
            Value::Array(items) => ValueTemplate::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| Self::compile_at(v, format!("{path}[{i}]")))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(map) => ValueTemplate::Object(
                map.iter()
                    .map(|(k, v)| {
                        let p = if path.is_empty() {
                            k.clone()
                        } else {
                            format!("{path}.{k}")
                        };
                        Ok((k.clone(), Self::compile_at(v, p)?))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            other => ValueTemplate::Literal(other.clone()),
        })
    }

    /// Evaluates the tree against a context.
    pub fn eval<C: serde::Serialize>(&self, ctx: &C) -> Result<Value, String> {
        if let ValueTemplate::Literal(v) = self {
            return Ok(v.clone());
        }
        // Convert the context once; minijinja passes converted values
        // through by handle, so each leaf does not copy it again.
        self.eval_converted(&minijinja::Value::from_serialize(ctx))
    }

    fn eval_converted(&self, ctx: &minijinja::Value) -> Result<Value, String> {
        Ok(match self {
            ValueTemplate::Literal(v) => v.clone(),
            ValueTemplate::Expr(e) => e.eval(ctx)?,
            ValueTemplate::Render(e) => Value::String(e.eval_string(ctx)?),
            ValueTemplate::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|t| t.eval_converted(ctx))
                    .collect::<Result<_, _>>()?,
            ),
            ValueTemplate::Object(entries) => {
                let mut m = serde_json::Map::with_capacity(entries.len());
                for (k, t) in entries {
                    m.insert(k.clone(), t.eval_converted(ctx)?);
                }
                Value::Object(m)
            }
        })
    }

    /// Variable paths read by any expression in the tree.
    pub fn needs(&self) -> Vec<&[String]> {
        self.exprs()
            .into_iter()
            .flat_map(|(_, e)| e.needs().iter().map(Vec::as_slice))
            .collect()
    }

    /// Every expression in the tree with its relative path.
    pub fn exprs(&self) -> Vec<(String, &Expr)> {
        let mut out = Vec::new();
        self.collect(String::new(), &mut out);
        out
    }

    fn collect<'a>(&'a self, path: String, out: &mut Vec<(String, &'a Expr)>) {
        match self {
            ValueTemplate::Literal(_) => {}
            ValueTemplate::Expr(e) | ValueTemplate::Render(e) => out.push((path, e)),
            ValueTemplate::Array(items) => {
                for (i, t) in items.iter().enumerate() {
                    t.collect(format!("{path}[{i}]"), out);
                }
            }
            ValueTemplate::Object(entries) => {
                for (k, t) in entries {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    t.collect(p, out);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn whole_expression_leaves_keep_their_type() {
        let t = ValueTemplate::compile(&json!({
            "amount": "{{ event.total }}",
            "label": "order {{ event.id }} for {{ event.total * 2 }}",
            "items": ["{{ event.items }}", 3],
            "flag": true
        }))
        .unwrap();
        let out = t
            .eval(&json!({"event": {"total": 12.5, "id": "o-1", "items": [1, 2]}}))
            .unwrap();
        assert_eq!(
            out,
            json!({"amount": 12.5, "label": "order o-1 for 25.0", "items": [[1, 2], 3], "flag": true})
        );
    }

    #[test]
    fn missing_fields_are_runtime_errors() {
        let e = Expr::compile("event.missing.deeper").unwrap();
        let err = e.eval(&json!({"event": {}})).unwrap_err();
        assert!(err.contains("event.missing.deeper"), "{err}");
    }

    #[test]
    fn compile_errors_are_reported() {
        assert!(Expr::compile("event.total >").is_err());
        assert!(Expr::template("a {{ b").is_err());
        assert!(Expr::template("{% if x %}y{% endif %}").is_err());
        let err = ValueTemplate::compile(&json!({"a": {"b": "{{ 1 + }}"}})).unwrap_err();
        assert_eq!(err.path, "a.b");
    }

    #[test]
    fn references_are_nested_paths() {
        let e = Expr::compile("steps.charge.id ~ event.order_id").unwrap();
        let refs = e.references();
        assert!(refs.contains("steps.charge.id"), "{refs:?}");
        assert!(refs.contains("event.order_id"), "{refs:?}");
    }

    #[test]
    fn templates_escape_literal_text() {
        let e = Expr::template("say \"hi\" \\ {{ name }}\n").unwrap();
        assert_eq!(
            e.eval_string(&json!({"name": "bob"})).unwrap(),
            "say \"hi\" \\ bob\n"
        );
    }

    #[test]
    fn projection_keeps_only_what_is_read() {
        let full =
            json!({"event": {"a": {"b": 1, "c": [1, 2]}, "big": "x"}, "steps": {"s": {"v": 2}}});
        let lookup = |k: &str| full.get(k).map(Root::Value);
        let e = Expr::compile("event.a.b + steps.s.v").unwrap();
        let needs: Vec<&[String]> = e.needs().iter().map(Vec::as_slice).collect();
        let ctx = project(lookup, &needs);
        assert_eq!(
            ctx,
            json!({"event": {"a": {"b": 1}}, "steps": {"s": {"v": 2}}})
        );
        assert_eq!(e.eval(&ctx).unwrap(), json!(3));
        // A missing key stays missing; an overlapping shorter path wins.
        let e = Expr::compile("event.a.zz ~ event.a").unwrap();
        let needs: Vec<&[String]> = e.needs().iter().map(Vec::as_slice).collect();
        let ctx = project(lookup, &needs);
        assert_eq!(ctx, json!({"event": {"a": {"b": 1, "c": [1, 2]}}}));
        assert!(e.eval(&ctx).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, failure_persistence: None, ..Default::default() })]

        /// Evaluating against the projected context gives the same result
        /// as against the full one.
        #[test]
        fn projection_preserves_results(
            paths in proptest::collection::vec(
                (0..2usize, proptest::collection::vec(0..4usize, 0..3)),
                1..4,
            )
        ) {
            let full = json!({
                "event": {"a": {"b": 1, "c": [1, 2], "d": {"a": "x"}}, "b": "s", "c": null},
                "steps": {"a": {"b": {"c": 3}}, "d": 4},
            });
            let keys = ["a", "b", "c", "d"];
            let parts: Vec<String> = paths
                .iter()
                .map(|(top, segs)| {
                    let mut p = ["event", "steps"][*top].to_string();
                    for s in segs {
                        p.push('.');
                        p.push_str(keys[*s]);
                    }
                    format!("[({p} is defined), ({p} if {p} is defined else 0)]")
                })
                .collect();
            let e = Expr::compile(&parts.join(" + ")).unwrap();
            let needs: Vec<&[String]> = e.needs().iter().map(Vec::as_slice).collect();
            let lookup = |k: &str| full.get(k).map(Root::Value);
            let small = project(lookup, &needs);
            proptest::prop_assert_eq!(e.eval(&small), e.eval(&full));
        }
    }

    #[test]
    fn hash_filter_is_stable() {
        let e = Expr::compile("'abc' | hash").unwrap();
        assert_eq!(
            e.eval_string(&json!({})).unwrap(),
            format!("{:016x}", crate::fnv1a(b"abc"))
        );
    }
}

/// A top-level variable of a context: a JSON value or a JSON object's map.
#[derive(Clone, Copy)]
pub enum Root<'a> {
    Value(&'a Value),
    Map(&'a serde_json::Map<String, Value>),
}

/// Builds the part of a context that `needs` read: for each path, the
/// subtree at the deepest existing prefix is copied (so a missing key stays
/// missing and fails exactly as it would against the full context).
pub fn project<'a>(lookup: impl Fn(&str) -> Option<Root<'a>>, needs: &[&[String]]) -> Value {
    let mut needs: Vec<&[String]> = needs.iter().copied().filter(|p| !p.is_empty()).collect();
    needs.sort_by_key(|p| p.len());
    let mut out = serde_json::Map::new();
    let mut complete: Vec<&[String]> = Vec::new();
    'paths: for path in needs {
        if complete.iter().any(|c| path.starts_with(c)) {
            continue;
        }
        let Some(root) = lookup(&path[0]) else {
            continue;
        };
        let (mut node, mut depth) = match root {
            Root::Value(v) => (Some(v), 1),
            Root::Map(m) => match path.get(1).and_then(|k| m.get(k)) {
                Some(v) => (Some(v), 2),
                None => (None, 1),
            },
        };
        // Walk down while the next key exists in an object.
        while let Some(Value::Object(m)) = node
            && depth < path.len()
            && let Some(next) = m.get(&path[depth])
        {
            node = Some(next);
            depth += 1;
        }
        let prefix = &path[..depth];
        complete.push(prefix);
        let value = match (node, root) {
            (Some(v), _) => v.clone(),
            (None, Root::Map(m)) => Value::Object(m.clone()),
            (None, Root::Value(v)) => v.clone(),
        };
        // Insert `value` at `prefix` in `out`.
        let mut slot = &mut out;
        for seg in &prefix[..depth - 1] {
            let entry = slot
                .entry(seg.clone())
                .or_insert_with(|| Value::Object(serde_json::Map::new()));
            match entry {
                Value::Object(m) => slot = m,
                // A complete subtree is already there (cannot happen: its
                // prefix is in `complete`), so there is nothing to add.
                _ => continue 'paths,
            }
        }
        slot.insert(prefix[depth - 1].clone(), value);
    }
    Value::Object(out)
}
