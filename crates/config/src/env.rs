//! `SAGAFLOW_*` environment overrides for a loaded config tree.

use serde_json::{Map, Value};

/// Overrides config values (as loaded by [`load`]) from environment
/// variables named
/// `SAGAFLOW_<KEY>__<KEY>…`: `__` separates the levels, and each key is
/// the YAML key upper-cased with `-` written as `_`
/// (`SAGAFLOW_HTTP__LISTEN`, `SAGAFLOW_KAFKA__BOOTSTRAP_SERVERS`,
/// `SAGAFLOW_TOPICS__PREFIX`). Below `kafka.properties` the rest of the
/// name is a librdkafka property with `.` written as `_`
/// (`SAGAFLOW_KAFKA__PROPERTIES__SECURITY_PROTOCOL=SASL_SSL`,
/// `SAGAFLOW_KAFKA__PROPERTIES__SASL_PASSWORD`); those values stay strings.
/// Other values that read as an unsigned number or `true`/`false` become
/// one. Only variables whose first key is one of `keys` are overrides
/// (so `SAGAFLOW_API_TOKEN` or `SAGAFLOW_ORCHESTRATOR_CONFIG` are not).
pub fn apply_env_overrides(
    value: &mut Value,
    keys: &[&str],
    vars: impl IntoIterator<Item = (String, String)>,
) {
    for (name, raw) in vars {
        let Some(rest) = name.strip_prefix("SAGAFLOW_") else {
            continue;
        };
        let parts: Vec<&str> = rest.split("__").collect();
        if parts.iter().any(|p| p.is_empty())
            || !keys.contains(&parts[0].to_ascii_lowercase().replace('_', "-").as_str())
        {
            continue;
        }
        let mut path: Vec<String> = Vec::new();
        let mut property = false;
        for (i, part) in parts.iter().enumerate() {
            if i == 2 && path == ["kafka", "properties"] {
                path.push(parts[2..].join("_").to_ascii_lowercase().replace('_', "."));
                property = true;
                break;
            }
            path.push(part.to_ascii_lowercase().replace('_', "-"));
        }
        let new = if property {
            Value::String(raw)
        } else if let Ok(n) = raw.parse::<u64>() {
            Value::from(n)
        } else if let Ok(b) = raw.parse::<bool>() {
            Value::Bool(b)
        } else {
            Value::String(raw)
        };
        let mut node = &mut *value;
        for key in &path {
            if !node.is_object() {
                *node = Value::Object(Map::new());
            }
            node = node
                .as_object_mut()
                .expect("made an object above")
                .entry(key.clone())
                .or_insert(Value::Null);
        }
        *node = new;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn numbers_and_booleans_are_typed_but_kafka_properties_stay_strings() {
        let mut value = serde_json::json!({});
        apply_env_overrides(
            &mut value,
            &["x", "kafka"],
            vars(&[
                ("SAGAFLOW_X__N", "12"),
                ("SAGAFLOW_X__B", "true"),
                ("SAGAFLOW_KAFKA__PROPERTIES__LINGER_MS", "5"),
            ]),
        );
        assert_eq!(value["x"]["n"], 12);
        assert_eq!(value["x"]["b"], true);
        assert_eq!(value["kafka"]["properties"]["linger.ms"], "5");
    }

    #[test]
    fn only_listed_keys_override_and_empty_levels_are_ignored() {
        let mut value = serde_json::json!({"http": {"listen": "a"}, "n": 1});
        apply_env_overrides(
            &mut value,
            &["http", "n", "group-id"],
            vars(&[
                ("SAGAFLOW_HTTP__LISTEN", "b"),
                ("SAGAFLOW_GROUP_ID", "g"),
                ("SAGAFLOW_API_TOKEN", "secret"),
                ("SAGAFLOW_HTTP____X", "bad"),
                ("HTTP__LISTEN", "c"),
            ]),
        );
        assert_eq!(
            value,
            serde_json::json!({"http": {"listen": "b"}, "n": 1, "group-id": "g"})
        );
    }

    #[test]
    fn an_override_below_a_scalar_replaces_it_with_a_mapping() {
        let mut value = serde_json::json!({"kafka": "oops"});
        apply_env_overrides(
            &mut value,
            &["kafka"],
            vars(&[("SAGAFLOW_KAFKA__BOOTSTRAP_SERVERS", "h:9092")]),
        );
        assert_eq!(value["kafka"]["bootstrap-servers"], "h:9092");
    }
}
