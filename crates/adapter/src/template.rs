//! Request templating with minijinja.
//!
//! Templates see `input` (the command's input) and `command` (its ids).
//! Substituted values are escaped for where they land: percent-encoded in
//! paths, XML-escaped in SOAP bodies. Undefined values are errors, so a
//! command lacking a field fails loudly instead of sending an empty value.

use minijinja::value::Value;
use minijinja::{Environment, Error, ErrorKind, UndefinedBehavior};
use serde::Serialize;

use crate::command::AdapterCommand;

#[derive(Serialize)]
struct CommandView<'a> {
    command_id: &'a str,
    saga_id: &'a str,
    saga_type: &'a str,
    step: &'a str,
    service: &'a str,
    operation: &'a str,
    attempt: u32,
}

/// Builds the template context for a command.
pub(crate) fn context(cmd: &AdapterCommand) -> Value {
    minijinja::context! {
        input => Value::from_serialize(&cmd.input),
        command => Value::from_serialize(CommandView {
            command_id: &cmd.command_id,
            saga_id: &cmd.saga_id,
            saga_type: &cmd.saga_type,
            step: &cmd.step,
            service: &cmd.service,
            operation: &cmd.operation,
            attempt: cmd.attempt,
        }),
    }
}

fn write_err(_: std::fmt::Error) -> Error {
    Error::new(ErrorKind::WriteFailure, "formatting failed")
}

fn plain_text(value: &Value) -> String {
    if value.is_none() {
        String::new()
    } else {
        value.to_string()
    }
}

/// Escapes text for XML character data and attribute values, dropping
/// characters XML 1.0 cannot represent at all.
pub fn xml_escape(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => {}
            c => out.push(c),
        }
    }
}

fn new_env() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env
}

/// The three escaping flavours.
pub(crate) struct Renderer {
    plain: Environment<'static>,
    path: Environment<'static>,
    xml: Environment<'static>,
}

impl Renderer {
    pub(crate) fn new() -> Self {
        let mut plain = new_env();
        plain.set_formatter(|out, _state, value| {
            std::fmt::Write::write_str(out, &plain_text(value)).map_err(write_err)
        });
        let mut path = new_env();
        path.set_formatter(|out, _state, value| {
            let text = plain_text(value);
            let mut s = String::with_capacity(text.len());
            if value.is_safe() {
                s = text;
            } else {
                crate::urls::encode_segment(&text, &mut s);
            }
            std::fmt::Write::write_str(out, &s).map_err(write_err)
        });
        let mut xml = new_env();
        xml.set_formatter(|out, _state, value| {
            let text = plain_text(value);
            let mut s = String::with_capacity(text.len());
            if value.is_safe() {
                s = text;
            } else {
                xml_escape(&text, &mut s);
            }
            std::fmt::Write::write_str(out, &s).map_err(write_err)
        });
        Self { plain, path, xml }
    }

    /// Renders a template whose values become path segments.
    pub(crate) fn path(&self, src: &str, ctx: &Value) -> Result<String, Error> {
        self.path.render_str(src, ctx)
    }

    /// Renders a template verbatim (headers, query values).
    pub(crate) fn plain(&self, src: &str, ctx: &Value) -> Result<String, Error> {
        self.plain.render_str(src, ctx)
    }

    /// Renders a template into XML with escaped values.
    pub(crate) fn xml(&self, src: &str, ctx: &Value) -> Result<String, Error> {
        self.xml.render_str(src, ctx)
    }

    /// Renders a JSON body template: every string leaf is a template. A leaf
    /// that is exactly one `{{ expression }}` keeps the expression's JSON
    /// type (number, object, …); other leaves render to strings. Values can
    /// therefore never break out of the JSON structure.
    pub(crate) fn json(
        &self,
        template: &serde_json::Value,
        ctx: &Value,
    ) -> Result<serde_json::Value, Error> {
        use serde_json::Value as J;
        Ok(match template {
            J::String(s) => match single_expression(s) {
                Some(expr) => {
                    let v = self.plain.compile_expression(expr)?.eval(ctx)?;
                    if v.is_undefined() {
                        return Err(Error::new(
                            ErrorKind::UndefinedError,
                            format!("`{expr}` is undefined"),
                        ));
                    }
                    serde_json::to_value(&v)
                        .map_err(|e| Error::new(ErrorKind::BadSerialization, e.to_string()))?
                }
                None => J::String(self.plain.render_str(s, ctx)?),
            },
            J::Array(items) => J::Array(
                items
                    .iter()
                    .map(|v| self.json(v, ctx))
                    .collect::<Result<_, _>>()?,
            ),
            J::Object(map) => J::Object(
                map.iter()
                    .map(|(k, v)| Ok((k.clone(), self.json(v, ctx)?)))
                    .collect::<Result<_, Error>>()?,
            ),
            other => other.clone(),
        })
    }
}

fn single_expression(s: &str) -> Option<&str> {
    let inner = s.trim().strip_prefix("{{")?.strip_suffix("}}")?;
    if inner.contains("{{") || inner.contains("}}") || inner.contains("{%") {
        return None;
    }
    Some(inner.trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cmd(input: serde_json::Value) -> AdapterCommand {
        AdapterCommand {
            command_id: "order-checkout:o-1/charge/2".into(),
            saga_id: "o-1".into(),
            saga_type: "order-checkout".into(),
            step: "charge".into(),
            service: "payments".into(),
            operation: "charge".into(),
            attempt: 2,
            input,
            timeout_ms: 1000,
            traceparent: None,
            tracestate: None,
        }
    }

    #[test]
    fn json_body_keeps_types_and_cannot_be_broken_out_of() {
        let r = Renderer::new();
        let ctx = context(&cmd(
            json!({"amount": 12.5, "name": "a\"}, \"x\": \"y", "tags": ["a"]}),
        ));
        let body = json!({
            "amount": "{{ input.amount }}",
            "name": "{{ input.name }}",
            "label": "order {{ command.saga_id }} ({{ command.attempt }})",
            "tags": "{{ input.tags }}",
            "fixed": 3
        });
        let out = r.json(&body, &ctx).unwrap();
        assert_eq!(
            out,
            json!({"amount": 12.5, "name": "a\"}, \"x\": \"y", "label": "order o-1 (2)", "tags": ["a"], "fixed": 3})
        );
    }

    #[test]
    fn missing_input_field_is_an_error() {
        let r = Renderer::new();
        let ctx = context(&cmd(json!({})));
        assert!(r.json(&json!("{{ input.amount }}"), &ctx).is_err());
        assert!(r.path("/x/{{ input.id }}", &ctx).is_err());
    }

    #[test]
    fn path_values_are_percent_encoded() {
        let r = Renderer::new();
        let ctx = context(&cmd(json!({"id": "../../admin?x=1"})));
        assert_eq!(
            r.path("/accounts/{{ input.id }}", &ctx).unwrap(),
            "/accounts/..%2F..%2Fadmin%3Fx%3D1"
        );
    }

    #[test]
    fn xml_values_are_escaped() {
        let r = Renderer::new();
        let ctx = context(&cmd(json!({"name": "<x>&'\"\u{1}</Name>"})));
        assert_eq!(
            r.xml("<Name>{{ input.name }}</Name>", &ctx).unwrap(),
            "<Name>&lt;x&gt;&amp;&apos;&quot;&lt;/Name&gt;</Name>"
        );
    }
}
