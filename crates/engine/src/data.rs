//! Step data in lifecycle events: redaction of the fields a definition
//! marks `sensitive`, and a size bound so that one large payload never
//! makes an event record too large to publish.

use serde_json::{Value, json};

/// What a redacted field's value becomes.
pub const REDACTED: &str = "[redacted]";

/// Largest JSON text (in bytes) one data field of a lifecycle event
/// carries. A larger value is replaced by a [`truncated`] marker.
/// Three fields (input, output, error) at this bound stay far below the
/// 1 MiB default `message.max.bytes`.
pub const MAX_DATA_BYTES: usize = 16 * 1024;

/// Characters of the original JSON text kept in a truncation marker.
const PREVIEW_CHARS: usize = 1024;

/// A dotted field path (`customer.email`), split into its names. Arrays
/// on the way are looked through: `items.sku` names the `sku` of every
/// element of `items`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath(Vec<String>);

impl FieldPath {
    /// Parses `a.b.c`; `None` when a part is empty or has blanks.
    pub fn parse(src: &str) -> Option<Self> {
        let parts: Vec<String> = src.split('.').map(str::to_owned).collect();
        let ok = parts
            .iter()
            .all(|p| !p.is_empty() && !p.chars().any(char::is_whitespace));
        ok.then_some(Self(parts))
    }

    /// The path as written.
    pub fn as_dotted(&self) -> String {
        self.0.join(".")
    }
}

/// Replaces the value at every path with [`REDACTED`] (missing paths are
/// ignored).
pub fn redact(value: &mut Value, paths: &[FieldPath]) {
    for p in paths {
        redact_at(value, &p.0);
    }
}

fn redact_at(value: &mut Value, path: &[String]) {
    let Some((head, rest)) = path.split_first() else {
        return;
    };
    match value {
        Value::Object(m) => {
            if let Some(v) = m.get_mut(head) {
                if rest.is_empty() {
                    *v = Value::String(REDACTED.into());
                } else {
                    redact_at(v, rest);
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                redact_at(item, path);
            }
        }
        _ => {}
    }
}

/// `value` itself when its JSON text is at most `max` bytes; otherwise a
/// marker `{"$truncated": true, "bytes": <size>, "preview": "<start>"}`.
pub fn bound(value: Value, max: usize) -> Value {
    let text = value.to_string();
    if text.len() <= max {
        return value;
    }
    let preview: String = text.chars().take(PREVIEW_CHARS.min(max / 2)).collect();
    json!({ "$truncated": true, "bytes": text.len(), "preview": preview })
}

/// Redacts, then bounds: what an event carries of a step's data.
pub fn for_event(mut value: Value, paths: &[FieldPath]) -> Value {
    redact(&mut value, paths);
    bound(value, MAX_DATA_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(list: &[&str]) -> Vec<FieldPath> {
        list.iter().map(|p| FieldPath::parse(p).unwrap()).collect()
    }

    #[test]
    fn sensitive_paths_are_redacted_at_any_depth_and_through_arrays() {
        let mut v = json!({
            "card_number": "4111111111111111",
            "customer": {"email": "a@b.c", "name": "Ada"},
            "items": [{"sku": "A", "secret": 1}, {"sku": "B", "secret": 2}],
            "amount": 10
        });
        redact(
            &mut v,
            &paths(&["card_number", "customer.email", "items.secret", "absent.x"]),
        );
        assert_eq!(
            v,
            json!({
                "card_number": REDACTED,
                "customer": {"email": REDACTED, "name": "Ada"},
                "items": [{"sku": "A", "secret": REDACTED}, {"sku": "B", "secret": REDACTED}],
                "amount": 10
            })
        );
        assert!(!v.to_string().contains("4111"));
    }

    #[test]
    fn a_whole_object_can_be_redacted() {
        let mut v = json!({"customer": {"email": "a@b.c"}});
        redact(&mut v, &paths(&["customer"]));
        assert_eq!(v, json!({"customer": REDACTED}));
    }

    #[test]
    fn bad_paths_do_not_parse() {
        assert!(FieldPath::parse("").is_none());
        assert!(FieldPath::parse("a..b").is_none());
        assert!(FieldPath::parse("a. b").is_none());
        assert_eq!(
            FieldPath::parse("customer.email").unwrap().as_dotted(),
            "customer.email"
        );
    }

    #[test]
    fn small_values_are_kept_and_large_ones_truncated_with_a_marker() {
        let small = json!({"ok": true});
        assert_eq!(bound(small.clone(), MAX_DATA_BYTES), small);
        let big = json!({"blob": "x".repeat(100_000)});
        let b = bound(big, MAX_DATA_BYTES);
        assert_eq!(b["$truncated"], json!(true));
        assert_eq!(b["bytes"], json!(100_000 + r#"{"blob":""}"#.len()));
        assert!(b.to_string().len() < MAX_DATA_BYTES);
        assert!(
            b["preview"]
                .as_str()
                .unwrap()
                .starts_with(r#"{"blob":"xxx"#)
        );
    }

    #[test]
    fn redaction_happens_before_truncation() {
        let big = json!({"card_number": "4111111111111111", "blob": "y".repeat(50_000)});
        let v = for_event(big, &paths(&["card_number"]));
        assert_eq!(v["$truncated"], json!(true));
        assert!(!v.to_string().contains("4111"), "{v}");
    }

    #[test]
    fn multibyte_text_is_cut_on_a_character_boundary() {
        let v = bound(json!("é".repeat(40_000)), 1000);
        assert!(
            v["preview"]
                .as_str()
                .unwrap()
                .chars()
                .all(|c| c == 'é' || c == '"')
        );
    }
}
