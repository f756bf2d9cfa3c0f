//! Schema compatibility: Confluent's levels on top of apache-avro's
//! [`SchemaCompatibility`], with readable field-level reasons.

use std::collections::BTreeMap;

use apache_avro::Schema;
use apache_avro::schema::RecordSchema;
use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};
use serde::{Deserialize, Serialize};

/// Confluent compatibility levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CompatibilityLevel {
    /// No check.
    None,
    /// The new schema can read data written with the latest version.
    #[default]
    Backward,
    /// The new schema can read data written with every version.
    BackwardTransitive,
    /// The latest version can read data written with the new schema.
    Forward,
    /// Every version can read data written with the new schema.
    ForwardTransitive,
    /// Backward and forward against the latest version.
    Full,
    /// Backward and forward against every version.
    FullTransitive,
}

impl CompatibilityLevel {
    /// Upper-case name, as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "NONE",
            Self::Backward => "BACKWARD",
            Self::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Self::Forward => "FORWARD",
            Self::ForwardTransitive => "FORWARD_TRANSITIVE",
            Self::Full => "FULL",
            Self::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    fn transitive(self) -> bool {
        matches!(
            self,
            Self::BackwardTransitive | Self::ForwardTransitive | Self::FullTransitive
        )
    }

    fn backward(self) -> bool {
        matches!(
            self,
            Self::Backward | Self::BackwardTransitive | Self::Full | Self::FullTransitive
        )
    }

    fn forward(self) -> bool {
        matches!(
            self,
            Self::Forward | Self::ForwardTransitive | Self::Full | Self::FullTransitive
        )
    }
}

/// Checks `new` against `existing` (`(version, schema)`, oldest first) at
/// `level`. Returns the reasons it is incompatible; empty means compatible.
/// Non-transitive levels only look at the last (latest) entry.
pub fn check(level: CompatibilityLevel, new: &Schema, existing: &[(u32, &Schema)]) -> Vec<String> {
    let against: &[(u32, &Schema)] = if level.transitive() {
        existing
    } else {
        existing.last().map_or(&[], std::slice::from_ref)
    };
    let mut messages = Vec::new();
    for (version, old) in against {
        if level.backward() {
            messages.extend(direction(old, new, *version, Direction::Backward));
        }
        if level.forward() {
            messages.extend(direction(new, old, *version, Direction::Forward));
        }
    }
    messages
}

#[derive(Clone, Copy)]
enum Direction {
    /// Reader = new schema, writer = old version.
    Backward,
    /// Reader = old version, writer = new schema.
    Forward,
}

fn direction(writer: &Schema, reader: &Schema, version: u32, dir: Direction) -> Vec<String> {
    let who = match dir {
        Direction::Backward => {
            format!("readers using the new schema cannot read data written with version {version}")
        }
        Direction::Forward => {
            format!("readers using version {version} cannot read data written with the new schema")
        }
    };
    let error = match SchemaCompatibility::can_read(writer, reader) {
        Ok(Compatibility::Full) => return Vec::new(),
        Ok(Compatibility::Partial) => {
            "some values cannot be resolved (enum symbols or union branches missing on the reading side)".to_string()
        }
        Err(e) => e.to_string(),
    };
    let mut reasons = Vec::new();
    field_reasons(writer, reader, "", &mut reasons);
    if reasons.is_empty() {
        reasons.push(error);
    }
    reasons
        .into_iter()
        .map(|reason| format!("{reason}: {who}"))
        .collect()
}

/// Field-level reasons why `reader` cannot read `writer`, for records found at
/// the same place in both schemas.
fn field_reasons(writer: &Schema, reader: &Schema, path: &str, out: &mut Vec<String>) {
    let (Some(w), Some(r)) = (record_of(writer), record_of(reader)) else {
        return;
    };
    let writer_fields: BTreeMap<&str, &Schema> = w
        .fields
        .iter()
        .map(|f| (f.name.as_str(), &f.schema))
        .collect();
    for field in &r.fields {
        let name = format!("{path}{}", field.name);
        match writer_fields.get(field.name.as_str()) {
            None if field.default.is_none() => {
                out.push(format!(
                    "field `{name}` is missing on the writing side and has no default on the reading side"
                ));
            }
            None => {}
            Some(writer_schema) => {
                if let Err(e) = SchemaCompatibility::can_read(writer_schema, &field.schema) {
                    if record_of(writer_schema).is_some() && record_of(&field.schema).is_some() {
                        field_reasons(writer_schema, &field.schema, &format!("{name}."), out);
                    } else {
                        out.push(format!(
                            "field `{name}` changed type from {} to {} ({e})",
                            kind(writer_schema),
                            kind(&field.schema)
                        ));
                    }
                }
            }
        }
    }
}

fn record_of(schema: &Schema) -> Option<&RecordSchema> {
    match schema {
        Schema::Record(record) => Some(record),
        _ => None,
    }
}

fn kind(schema: &Schema) -> String {
    match schema {
        Schema::Record(r) => format!("record {}", r.name.fullname(None)),
        Schema::Enum(e) => format!("enum {}", e.name.fullname(None)),
        Schema::Union(u) => format!(
            "[{}]",
            u.variants().iter().map(kind).collect::<Vec<_>>().join(", ")
        ),
        other => format!("{:?}", apache_avro::schema::SchemaKind::from(other)).to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(fields: &str) -> Schema {
        Schema::parse_str(&format!(
            r#"{{"type":"record","name":"R","namespace":"t","fields":[{fields}]}}"#
        ))
        .unwrap()
    }

    #[test]
    fn adding_optional_field_is_backward_compatible() {
        let v1 = schema(r#"{"name":"a","type":"long"}"#);
        let v2 = schema(
            r#"{"name":"a","type":"long"},{"name":"b","type":["null","string"],"default":null}"#,
        );
        assert!(check(CompatibilityLevel::Full, &v2, &[(1, &v1)]).is_empty());
    }

    #[test]
    fn adding_required_field_is_not_backward_compatible() {
        let v1 = schema(r#"{"name":"a","type":"long"}"#);
        let v2 = schema(r#"{"name":"a","type":"long"},{"name":"total_cents","type":"long"}"#);
        let messages = check(CompatibilityLevel::Backward, &v2, &[(1, &v1)]);
        assert_eq!(
            messages,
            vec![
                "field `total_cents` is missing on the writing side and has no default on the reading side: readers using the new schema cannot read data written with version 1"
            ]
        );
        assert!(check(CompatibilityLevel::Forward, &v2, &[(1, &v1)]).is_empty());
        assert!(check(CompatibilityLevel::None, &v2, &[(1, &v1)]).is_empty());
    }

    #[test]
    fn removing_field_without_default_is_not_forward_compatible() {
        let v1 = schema(r#"{"name":"a","type":"long"},{"name":"total_cents","type":"long"}"#);
        let v2 = schema(r#"{"name":"a","type":"long"}"#);
        let messages = check(CompatibilityLevel::Forward, &v2, &[(3, &v1)]);
        assert_eq!(messages.len(), 1);
        assert!(messages[0].contains("`total_cents`"), "{messages:?}");
        assert!(messages[0].contains("version 3"), "{messages:?}");
    }

    #[test]
    fn type_change_is_reported_with_both_types() {
        let v1 = schema(r#"{"name":"a","type":"long"}"#);
        let v2 = schema(r#"{"name":"a","type":"string"}"#);
        let messages = check(CompatibilityLevel::Backward, &v2, &[(1, &v1)]);
        assert!(
            messages[0].starts_with("field `a` changed type from long to string"),
            "{messages:?}"
        );
    }

    #[test]
    fn transitive_checks_every_version() {
        let v1 = schema(r#"{"name":"a","type":"long"}"#);
        let v2 = schema(r#"{"name":"a","type":"long"},{"name":"b","type":"long","default":0}"#);
        let v3 = schema(r#"{"name":"b","type":"long","default":0}"#);
        // v3 drops `a` (fine backward) – compatible with v2 and v1 backward.
        assert!(
            check(
                CompatibilityLevel::BackwardTransitive,
                &v3,
                &[(1, &v1), (2, &v2)]
            )
            .is_empty()
        );
        let v4 = schema(r#"{"name":"b","type":"long"}"#);
        assert!(check(CompatibilityLevel::Backward, &v4, &[(1, &v1), (2, &v2)]).is_empty());
        assert_eq!(
            check(
                CompatibilityLevel::BackwardTransitive,
                &v4,
                &[(1, &v1), (2, &v2)]
            )
            .len(),
            1
        );
    }
}
