//! JSON values into Avro by a schema, for domain events that have no Rust
//! type (published by `emit` steps, the HTTP ingest, `sagaflow publish`).

use apache_avro::Schema;
use apache_avro::types::Value as AvroValue;
use serde_json::Value;

/// Converts `json` to an Avro value of `schema`: objects become records or
/// maps, strings enums where the schema says so, integers ints, longs or
/// timestamps, and a union takes the first branch the value fits. The
/// error names the first field that does not fit, as a JSON pointer
/// (`/shipping_address/city: expected a string, found 42`).
pub fn json_to_avro(json: &Value, schema: &Schema) -> Result<AvroValue, String> {
    untyped(json)
        .resolve(schema)
        .map_err(|e| mismatch(json, schema, "").unwrap_or_else(|| e.to_string()))
}

fn kind(json: &Value) -> String {
    let text = json.to_string();
    if text.chars().count() > 40 {
        let short: String = text.chars().take(40).collect();
        format!("{short}…")
    } else {
        text
    }
}

/// Where `json` does not fit `schema`: the first offending JSON pointer and
/// why, or `None` when no reason is found here (the caller then reports
/// Avro's own message).
fn mismatch(json: &Value, schema: &Schema, at: &str) -> Option<String> {
    let here = if at.is_empty() { "/" } else { at };
    let wrong = |expected: &str| Some(format!("{here}: expected {expected}, found {}", kind(json)));
    match schema {
        Schema::Record(record) => {
            let Value::Object(fields) = json else {
                return wrong(&format!("an object ({})", record.name.name()));
            };
            for field in &record.fields {
                let path = format!("{at}/{}", field.name);
                match fields.get(&field.name) {
                    None if field.default.is_none() => {
                        return Some(format!(
                            "{path}: required field `{}` is missing",
                            field.name
                        ));
                    }
                    None => {}
                    Some(v) => {
                        if let Some(m) = mismatch(v, &field.schema, &path) {
                            return Some(m);
                        }
                    }
                }
            }
            None
        }
        Schema::Array(a) => match json {
            Value::Array(items) => items
                .iter()
                .enumerate()
                .find_map(|(i, v)| mismatch(v, &a.items, &format!("{at}/{i}"))),
            _ => wrong("an array"),
        },
        Schema::Map(m) => match json {
            Value::Object(entries) => entries
                .iter()
                .find_map(|(k, v)| mismatch(v, &m.types, &format!("{at}/{k}"))),
            _ => wrong("an object (map)"),
        },
        Schema::Union(u) => {
            let fits = u.variants().iter().any(|v| mismatch(json, v, at).is_none());
            if fits {
                return None;
            }
            // One non-null branch: say what is wrong inside it.
            let non_null: Vec<&Schema> = u
                .variants()
                .iter()
                .filter(|v| !matches!(v, Schema::Null))
                .collect();
            match non_null.as_slice() {
                [only] => mismatch(json, only, at),
                _ => wrong("a value of one of the union's types"),
            }
        }
        Schema::Enum(e) => match json {
            Value::String(s) if e.symbols.contains(s) => None,
            _ => wrong(&format!("one of {}", e.symbols.join(", "))),
        },
        Schema::Null => (!json.is_null()).then(|| wrong("null")).flatten(),
        Schema::Boolean => (!json.is_boolean())
            .then(|| wrong("true or false"))
            .flatten(),
        Schema::Int | Schema::Date | Schema::TimeMillis => json
            .as_i64()
            .and_then(|i| i32::try_from(i).ok())
            .is_none()
            .then(|| wrong("a 32-bit integer"))
            .flatten(),
        Schema::Long
        | Schema::TimeMicros
        | Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => (json.as_i64().is_none())
            .then(|| wrong("an integer"))
            .flatten(),
        Schema::Float | Schema::Double => (!json.is_number()).then(|| wrong("a number")).flatten(),
        Schema::String | Schema::Uuid(_) => {
            (!json.is_string()).then(|| wrong("a string")).flatten()
        }
        _ => None,
    }
}

/// JSON into Avro's dynamic values, before resolution against a schema.
/// (`apache_avro::to_value` would turn a JSON u64 into an 8-byte Fixed.)
fn untyped(json: &Value) -> AvroValue {
    match json {
        Value::Null => AvroValue::Null,
        Value::Bool(b) => AvroValue::Boolean(*b),
        // Small integers start as Int: Avro resolves Int to long, float and
        // double too, but `date` and `time-millis` accept only Int.
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => i32::try_from(i).map_or(AvroValue::Long(i), AvroValue::Int),
            (None, Some(f)) => AvroValue::Double(f),
            (None, None) => AvroValue::String(n.to_string()),
        },
        Value::String(s) => AvroValue::String(s.clone()),
        Value::Array(items) => AvroValue::Array(items.iter().map(untyped).collect()),
        Value::Object(fields) => AvroValue::Map(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), untyped(v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn objects_numbers_enums_and_unions_resolve_by_schema() {
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"E","fields":[
                {"name":"n","type":"int"},
                {"name":"at","type":{"type":"long","logicalType":"timestamp-millis"}},
                {"name":"day","type":{"type":"int","logicalType":"date"}},
                {"name":"small","type":"long"},
                {"name":"ratio","type":"double"},
                {"name":"plan","type":{"type":"enum","name":"P","symbols":["FREE","PRO"]}},
                {"name":"note","type":["null","string"],"default":null},
                {"name":"items","type":{"type":"array","items":{"type":"record","name":"I","fields":[{"name":"q","type":"long"}]}}}
            ]}"#,
        )
        .unwrap();
        let v = json_to_avro(
            &json!({"n": 7, "at": 1700000000000u64, "day": 20800, "small": 3, "ratio": 2, "plan": "PRO", "note": "x", "items": [{"q": 2}]}),
            &schema,
        )
        .unwrap();
        assert!(v.validate(&schema));
        let back = serde_json::Value::try_from(v).unwrap();
        assert_eq!(back["n"], json!(7));
        assert_eq!(back["day"], json!(20800));
        assert_eq!(back["small"], json!(3));
        assert_eq!(back["plan"], json!("PRO"));
        assert_eq!(back["items"][0]["q"], json!(2));
        let err = json_to_avro(&json!({"n": "seven"}), &schema).unwrap_err();
        assert_eq!(err, "/n: expected a 32-bit integer, found \"seven\"");
    }

    #[test]
    fn mismatches_name_the_field_by_json_pointer() {
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"E","fields":[
                {"name":"id","type":"string"},
                {"name":"note","type":["null","string"],"default":null},
                {"name":"addr","type":{"type":"record","name":"A","fields":[{"name":"city","type":"string"}]}},
                {"name":"items","type":{"type":"array","items":{"type":"record","name":"I","fields":[{"name":"q","type":"long"}]}}}
            ]}"#,
        )
        .unwrap();
        let ok = json!({"id": "x", "addr": {"city": "B"}, "items": [{"q": 1}]});
        assert!(json_to_avro(&ok, &schema).is_ok());
        let cases = [
            (
                json!({"addr": {"city": "B"}, "items": []}),
                "/id: required field `id` is missing",
            ),
            (
                json!({"id": "x", "addr": {"city": 42}, "items": []}),
                "/addr/city: expected a string, found 42",
            ),
            (
                json!({"id": "x", "addr": {"city": "B"}, "items": [{"q": 1}, {"q": "2"}]}),
                "/items/1/q: expected an integer, found \"2\"",
            ),
            (
                json!({"id": "x", "note": 5, "addr": {"city": "B"}, "items": []}),
                "/note: expected a string, found 5",
            ),
            (json!([1]), "/: expected an object (E), found [1]"),
        ];
        for (value, expected) in cases {
            assert_eq!(
                json_to_avro(&value, &schema).unwrap_err(),
                expected,
                "{value}"
            );
        }
    }
}
