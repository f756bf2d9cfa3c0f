//! JSON values into Avro by a schema, for domain events that have no Rust
//! type (published by `emit` steps, the HTTP ingest, `sagaflow publish`).

use apache_avro::Schema;
use apache_avro::types::Value as AvroValue;
use serde_json::Value;

/// Converts `json` to an Avro value of `schema`: objects become records or
/// maps, strings enums where the schema says so, integers ints, longs or
/// timestamps, and a union takes the first branch the value fits. The
/// error says which part does not fit.
pub fn json_to_avro(json: &Value, schema: &Schema) -> Result<AvroValue, String> {
    untyped(json).resolve(schema).map_err(|e| e.to_string())
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
        assert!(!err.is_empty());
    }
}
