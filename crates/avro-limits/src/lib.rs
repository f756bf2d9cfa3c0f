//! Limits on Avro writer schemas.
//!
//! A writer schema comes from whoever registered it. `apache-avro` accepts a
//! `fixed` of size 2^64-1 and allocates it when it decodes a value of it, so
//! every schema Sagaflow reads values with, or stores, is checked here first:
//! the codec checks each writer schema it fetches, the bundled registry each
//! schema it is asked to register. One checker, so both agree.
//!
//! ```
//! use sagaflow_avro_limits::{SchemaLimits, check_schema};
//! let text = r#"{"type":"record","name":"R","fields":[{"name":"f","type":{"type":"fixed","name":"F","size":18446744073709551615}}]}"#;
//! let schema = apache_avro::Schema::parse_str(text).unwrap();
//! let refused = check_schema(text.len(), &schema, &SchemaLimits::default()).unwrap_err();
//! assert!(refused.to_string().contains("max-fixed-bytes"));
//! ```

use apache_avro::Schema;
use apache_avro::schema::{InnerDecimalSchema, UuidSchema};
use serde::Deserialize;

/// How big and how complex a writer schema may be. Every field has a safe
/// default; configuration may lower or raise each one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct SchemaLimits {
    /// Length of the schema's JSON text, in bytes (default 512 KiB).
    pub max_schema_bytes: usize,
    /// Nesting of records, arrays, maps and unions inside each other
    /// (default 32; the top-level type is depth 1).
    pub max_depth: usize,
    /// Fields of one record (default 1,024).
    pub max_fields: usize,
    /// Symbols of one enum (default 10,000).
    pub max_symbols: usize,
    /// Branches of one union (default 128).
    pub max_union_branches: usize,
    /// Size of one `fixed` (also under `decimal`, `uuid`, `duration`), in
    /// bytes (default 64 KiB).
    pub max_fixed_bytes: usize,
    /// Types in the whole schema, every occurrence counted (default 100,000).
    pub max_types: usize,
}

impl Default for SchemaLimits {
    fn default() -> Self {
        Self {
            max_schema_bytes: 512 * 1024,
            max_depth: 32,
            max_fields: 1024,
            max_symbols: 10_000,
            max_union_branches: 128,
            max_fixed_bytes: 64 * 1024,
            max_types: 100_000,
        }
    }
}

/// Which limit a schema is over, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("schema over limit `{limit}` = {max}: {found} at {place}")]
pub struct LimitExceeded {
    /// The limit's configuration name, e.g. `max-fixed-bytes`.
    pub limit: &'static str,
    /// The limit's value.
    pub max: usize,
    /// What the schema has (a size or a count).
    pub found: u128,
    /// Where in the schema: a path of type and field names, e.g.
    /// `io.example.Order.items[]`.
    pub place: String,
}

/// Checks `schema` (whose JSON text is `text_len` bytes long) against
/// `limits`. Named types are walked where they are defined; a reference to
/// one is not followed again, so a recursive schema terminates here (its
/// values are bounded when they are decoded).
pub fn check_schema(
    text_len: usize,
    schema: &Schema,
    limits: &SchemaLimits,
) -> Result<(), LimitExceeded> {
    if text_len > limits.max_schema_bytes {
        return Err(LimitExceeded {
            limit: "max-schema-bytes",
            max: limits.max_schema_bytes,
            found: text_len as u128,
            place: "the schema text".into(),
        });
    }
    let mut walk = Walk {
        limits,
        types: 0,
        path: Vec::new(),
    };
    walk.visit(schema, 1)
}

struct Walk<'a> {
    limits: &'a SchemaLimits,
    types: usize,
    path: Vec<String>,
}

impl Walk<'_> {
    fn place(&self) -> String {
        if self.path.is_empty() {
            "the top-level type".into()
        } else {
            self.path.concat()
        }
    }

    fn over(&self, limit: &'static str, max: usize, found: usize) -> Result<(), LimitExceeded> {
        if found > max {
            Err(LimitExceeded {
                limit,
                max,
                found: found as u128,
                place: self.place(),
            })
        } else {
            Ok(())
        }
    }

    fn fixed(&self, size: usize) -> Result<(), LimitExceeded> {
        self.over("max-fixed-bytes", self.limits.max_fixed_bytes, size)
    }

    /// Visits `schema` at nesting `depth`; `path` says how we got here.
    fn visit(&mut self, schema: &Schema, depth: usize) -> Result<(), LimitExceeded> {
        self.types += 1;
        self.over("max-types", self.limits.max_types, self.types)?;
        self.over("max-depth", self.limits.max_depth, depth)?;
        match schema {
            Schema::Null
            | Schema::Boolean
            | Schema::Int
            | Schema::Long
            | Schema::Float
            | Schema::Double
            | Schema::Bytes
            | Schema::String
            | Schema::BigDecimal
            | Schema::Date
            | Schema::TimeMillis
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos
            | Schema::Ref { .. }
            | Schema::Uuid(UuidSchema::String | UuidSchema::Bytes)
            | Schema::Decimal(apache_avro::schema::DecimalSchema {
                inner: InnerDecimalSchema::Bytes,
                ..
            }) => Ok(()),
            Schema::Fixed(f) | Schema::Duration(f) | Schema::Uuid(UuidSchema::Fixed(f)) => {
                self.path.push(format!("<{}>", f.name));
                let r = self.fixed(f.size);
                self.path.pop();
                r
            }
            Schema::Decimal(apache_avro::schema::DecimalSchema {
                inner: InnerDecimalSchema::Fixed(f),
                ..
            }) => {
                self.path.push(format!("<{}>", f.name));
                let r = self.fixed(f.size);
                self.path.pop();
                r
            }
            Schema::Enum(e) => {
                self.path.push(format!("<{}>", e.name));
                let r = self.over("max-symbols", self.limits.max_symbols, e.symbols.len());
                self.path.pop();
                r
            }
            Schema::Array(a) => {
                self.path.push("[]".into());
                let r = self.visit(&a.items, depth + 1);
                self.path.pop();
                r
            }
            Schema::Map(m) => {
                self.path.push("{}".into());
                let r = self.visit(&m.types, depth + 1);
                self.path.pop();
                r
            }
            Schema::Union(u) => {
                self.over(
                    "max-union-branches",
                    self.limits.max_union_branches,
                    u.variants().len(),
                )?;
                for (i, variant) in u.variants().iter().enumerate() {
                    self.path.push(format!("|{i}"));
                    let r = self.visit(variant, depth + 1);
                    self.path.pop();
                    r?;
                }
                Ok(())
            }
            Schema::Record(r) => {
                self.path.push(if self.path.is_empty() {
                    r.name.to_string()
                } else {
                    format!("<{}>", r.name)
                });
                let result = self
                    .over("max-fields", self.limits.max_fields, r.fields.len())
                    .and_then(|()| {
                        for field in &r.fields {
                            self.path.push(format!(".{}", field.name));
                            let res = self.visit(&field.schema, depth + 1);
                            self.path.pop();
                            res?;
                        }
                        Ok(())
                    });
                self.path.pop();
                result
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<(), LimitExceeded> {
        let schema = Schema::parse_str(text).unwrap();
        check_schema(text.len(), &schema, &SchemaLimits::default())
    }

    fn nested_arrays(depth: usize) -> String {
        let mut s = "\"int\"".to_string();
        for _ in 0..depth {
            s = format!("{{\"type\":\"array\",\"items\":{s}}}");
        }
        s
    }

    #[test]
    fn repository_schemas_pass() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas");
        let mut seen = 0;
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(d).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "avsc") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    check(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                    seen += 1;
                }
            }
        }
        assert!(seen >= 4, "found {seen} schemas");
    }

    #[test]
    fn huge_fixed_is_refused_and_named() {
        let e = check(
            r#"{"type":"record","name":"Evil","namespace":"x","fields":[{"name":"blob","type":{"type":"fixed","name":"Huge","size":18446744073709551615}}]}"#,
        )
        .unwrap_err();
        assert_eq!(e.limit, "max-fixed-bytes");
        assert_eq!(e.found, u128::from(u64::MAX));
        assert_eq!(e.place, "x.Evil.blob<x.Huge>");
        // Under decimal and duration too.
        let e = check(
            r#"{"type":"fixed","name":"D","size":1000000,"logicalType":"decimal","precision":4}"#,
        )
        .unwrap_err();
        assert_eq!(e.limit, "max-fixed-bytes");
    }

    #[test]
    fn depth_and_counts_are_limited() {
        assert!(check(&nested_arrays(31)).is_ok());
        let e = check(&nested_arrays(32)).unwrap_err();
        assert_eq!(e.limit, "max-depth");
        assert_eq!(e.max, 32);

        let symbols: Vec<String> = (0..10_001).map(|i| format!("\"S{i}\"")).collect();
        let e = check(&format!(
            r#"{{"type":"enum","name":"E","symbols":[{}]}}"#,
            symbols.join(",")
        ))
        .unwrap_err();
        assert_eq!(e.limit, "max-symbols");

        let fields: Vec<String> = (0..1025)
            .map(|i| format!(r#"{{"name":"f{i}","type":"null"}}"#))
            .collect();
        let e = check(&format!(
            r#"{{"type":"record","name":"R","fields":[{}]}}"#,
            fields.join(",")
        ))
        .unwrap_err();
        assert_eq!((e.limit, e.found), ("max-fields", 1025));

        let branches: Vec<String> = (0..129)
            .map(|i| format!(r#"{{"type":"fixed","name":"F{i}","size":1}}"#))
            .collect();
        let e = check(&format!("[{}]", branches.join(","))).unwrap_err();
        assert_eq!(e.limit, "max-union-branches");
    }

    #[test]
    fn text_size_and_type_count_are_limited() {
        let text = nested_arrays(3);
        let schema = Schema::parse_str(&text).unwrap();
        let small = SchemaLimits {
            max_schema_bytes: text.len() - 1,
            ..SchemaLimits::default()
        };
        assert_eq!(
            check_schema(text.len(), &schema, &small).unwrap_err().limit,
            "max-schema-bytes"
        );
        let few = SchemaLimits {
            max_types: 3,
            ..SchemaLimits::default()
        };
        assert_eq!(
            check_schema(text.len(), &schema, &few).unwrap_err().limit,
            "max-types"
        );
    }

    #[test]
    fn recursive_schema_terminates() {
        check(
            r#"{"type":"record","name":"Node","fields":[{"name":"next","type":["null","Node"]}]}"#,
        )
        .unwrap();
    }

    #[test]
    fn limits_deserialize_kebab_case_with_defaults() {
        let l: SchemaLimits = serde_json::from_str(r#"{"max-fixed-bytes": 16}"#).unwrap();
        assert_eq!(l.max_fixed_bytes, 16);
        assert_eq!(l.max_depth, SchemaLimits::default().max_depth);
        assert!(serde_json::from_str::<SchemaLimits>(r#"{"max-fixd-bytes": 16}"#).is_err());
    }
}
