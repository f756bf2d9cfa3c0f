//! Position-aware YAML loading.
//!
//! Pass one parses the text with `yaml-rust2`'s event parser and builds a
//! plain `serde_json::Value` tree together with a map from every node's path
//! (`steps[2].call`) to its line and column. Pass two (in `definition`)
//! (the saga definition loader, each runtime's config) deserializes from
//! that tree with serde and maps every error back to a position through the
//! path.

use std::collections::HashMap;

use serde_json::{Map, Number, Value};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A line and column in a source file, both starting at 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// Positions of the nodes of a loaded document, keyed by path.
///
/// Paths use `.key` for mapping entries and `[i]` for sequence items, from
/// the root (the empty path). A mapping entry's position is its key's.
#[derive(Debug, Default, Clone)]
pub struct Spans {
    map: HashMap<String, Position>,
}

impl Spans {
    /// The position of `path`, or of its nearest ancestor that has one.
    pub fn find(&self, path: &str) -> Position {
        let mut p = path;
        loop {
            if let Some(pos) = self.map.get(p) {
                return *pos;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p = &p[..i],
                None => {
                    return self
                        .map
                        .get("")
                        .copied()
                        .unwrap_or(Position { line: 1, column: 1 });
                }
            }
        }
    }

    /// The exact position of `path`, if the document has that node.
    pub fn get(&self, path: &str) -> Option<Position> {
        self.map.get(path).copied()
    }
}

/// A YAML syntax error with its position.
#[derive(Debug, Clone)]
pub struct YamlError {
    pub position: Position,
    pub message: String,
}

enum Frame {
    Seq(Vec<Value>, String, usize),
    Map(Map<String, Value>, String, Option<String>, usize),
}

struct Builder {
    stack: Vec<Frame>,
    root: Option<Value>,
    spans: Spans,
    anchors: HashMap<usize, Value>,
    error: Option<YamlError>,
}

fn pos(m: &Marker) -> Position {
    Position {
        line: m.line(),
        column: m.col() + 1,
    }
}

impl Builder {
    /// Path for the node about to be produced, recording its position.
    /// Returns `None` while the next scalar is a mapping key.
    fn next_path(&mut self, mark: &Marker) -> Option<String> {
        match self.stack.last_mut() {
            None => {
                self.spans.map.insert(String::new(), pos(mark));
                Some(String::new())
            }
            Some(Frame::Seq(items, path, _)) => {
                let p = format!("{path}[{}]", items.len());
                self.spans.map.insert(p.clone(), pos(mark));
                Some(p)
            }
            Some(Frame::Map(_, path, key, _)) => key.as_ref().map(|k| {
                if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                }
            }),
        }
    }

    fn push_value(&mut self, v: Value, mark: &Marker) {
        match self.stack.last_mut() {
            None => self.root = Some(v),
            Some(Frame::Seq(items, _, _)) => items.push(v),
            Some(Frame::Map(m, path, key, _)) => match key.take() {
                Some(k) => {
                    if m.contains_key(&k) && self.error.is_none() {
                        self.error = Some(YamlError {
                            position: pos(mark),
                            message: format!("duplicate key `{k}` in mapping `{path}`"),
                        });
                    }
                    m.insert(k, v);
                }
                None => {
                    // A key: only scalar keys are supported.
                    let k = match v {
                        Value::String(s) => s,
                        Value::Number(n) => n.to_string(),
                        Value::Bool(b) => b.to_string(),
                        Value::Null => "null".to_string(),
                        _ => {
                            if self.error.is_none() {
                                self.error = Some(YamlError {
                                    position: pos(mark),
                                    message: "mapping keys must be plain scalars".into(),
                                });
                            }
                            String::new()
                        }
                    };
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    // A block mapping's start marker is imprecise: a mapping
                    // that is a sequence item (or the root) is where its
                    // first key is.
                    if m.is_empty() && (path.is_empty() || path.ends_with(']')) {
                        self.spans.map.insert(path.clone(), pos(mark));
                    }
                    self.spans.map.insert(p, pos(mark));
                    *key = Some(k);
                }
            },
        }
    }
}

fn scalar(s: String, style: TScalarStyle) -> Value {
    if style != TScalarStyle::Plain {
        return Value::String(s);
    }
    match s.as_str() {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Ok(i) = s.parse::<i64>() {
        return Value::Number(i.into());
    }
    let looks_numeric = s
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E'))
        && s.chars().any(|c| c.is_ascii_digit());
    if looks_numeric
        && let Ok(f) = s.parse::<f64>()
        && let Some(n) = Number::from_f64(f)
    {
        return Value::Number(n);
    }
    Value::String(s)
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(s, style, anchor, _) => {
                let _ = self.next_path(&mark);
                let v = scalar(s, style);
                if anchor > 0 {
                    self.anchors.insert(anchor, v.clone());
                }
                self.push_value(v, &mark);
            }
            Event::Alias(id) => {
                let _ = self.next_path(&mark);
                let v = self.anchors.get(&id).cloned().unwrap_or(Value::Null);
                self.push_value(v, &mark);
            }
            Event::SequenceStart(anchor, _) => {
                let path = self.next_path(&mark).unwrap_or_default();
                self.stack.push(Frame::Seq(Vec::new(), path, anchor));
            }
            Event::MappingStart(anchor, _) => {
                let path = self.next_path(&mark).unwrap_or_default();
                self.stack.push(Frame::Map(Map::new(), path, None, anchor));
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (v, anchor) = match self.stack.pop() {
                    Some(Frame::Seq(items, _, a)) => (Value::Array(items), a),
                    Some(Frame::Map(m, _, _, a)) => (Value::Object(m), a),
                    None => return,
                };
                if anchor > 0 {
                    self.anchors.insert(anchor, v.clone());
                }
                self.push_value(v, &mark);
            }
            _ => {}
        }
    }
}

/// Parses one YAML document into a JSON value tree plus node positions.
pub fn load(source: &str) -> Result<(Value, Spans), YamlError> {
    let mut b = Builder {
        stack: Vec::new(),
        root: None,
        spans: Spans::default(),
        anchors: HashMap::new(),
        error: None,
    };
    let mut parser = Parser::new_from_str(source);
    parser.load(&mut b, false).map_err(|e| YamlError {
        position: pos(e.marker()),
        message: e.info().to_string(),
    })?;
    if let Some(e) = b.error {
        return Err(e);
    }
    Ok((b.root.unwrap_or(Value::Null), b.spans))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_values_and_positions() {
        let src = "a: 1\nb:\n  - x: true\n    y: \"2\"\n  - 2.5\nc: ~\n";
        let (v, spans) = load(src).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"a": 1, "b": [{"x": true, "y": "2"}, 2.5], "c": null})
        );
        assert_eq!(spans.get("a"), Some(Position { line: 1, column: 1 }));
        assert_eq!(spans.get("b[0]"), Some(Position { line: 3, column: 5 }));
        assert_eq!(spans.get("b[0].y"), Some(Position { line: 4, column: 5 }));
        assert_eq!(spans.get("b[1]"), Some(Position { line: 5, column: 5 }));
        // Unknown paths fall back to the nearest ancestor.
        assert_eq!(spans.find("b[0].y.z"), Position { line: 4, column: 5 });
    }

    #[test]
    fn reports_syntax_errors_with_position() {
        let err = load("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.position.line >= 1, "{err:?}");
        assert!(!err.message.is_empty());
    }

    #[test]
    fn empty_documents_point_at_the_start() {
        let (v, spans) = load("").unwrap();
        assert_eq!(v, Value::Null);
        assert_eq!(spans.find("steps"), Position { line: 1, column: 1 });
    }

    #[test]
    fn rejects_duplicate_keys() {
        let err = load("a: 1\na: 2\n").unwrap_err();
        assert!(err.message.contains("duplicate key `a`"), "{}", err.message);
        assert_eq!(err.position.line, 2);
    }

    #[test]
    fn quoted_scalars_stay_strings() {
        let (v, _) = load("a: '10'\nb: 10\nc: 1e3\nd: 1.2.3\n").unwrap();
        assert_eq!(
            v,
            serde_json::json!({"a": "10", "b": 10, "c": 1000.0, "d": "1.2.3"})
        );
    }
}
