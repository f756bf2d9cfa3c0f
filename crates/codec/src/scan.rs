//! A walk over an Avro body, before `apache-avro` decodes it, that bounds
//! what the body can make the decoder allocate and how long it can make it
//! loop.
//!
//! `apache-avro` (0.22) allocates a `fixed` of the schema's size without a
//! check, allocates a string's or bytes' length up to `max_allocation_bytes`
//! (512 MiB by default) before reading it, reserves an array block's count
//! before reading its items, and recurses once per nesting level. This walk
//! reads the same encoding without allocating: every length and size must
//! fit in the bytes that are left, the body must end where the value ends,
//! nesting is bounded by `max-depth`, and the number of values (record
//! fields, array items, map entries, union branches: everything that may
//! cost zero bytes) by `max-values`, so a huge block count of nulls or empty
//! records fails here instead of looping.

use std::collections::HashMap;

use apache_avro::Schema;
use apache_avro::schema::{
    DecimalSchema, EnumSchema, FixedSchema, InnerDecimalSchema, Name, NamespaceRef, RecordSchema,
    UuidSchema,
};

use crate::config::ValueLimits;

/// Why a body was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScanError {
    /// The bytes are not a value of the schema (truncated, a length past the
    /// end, a bad union index, bytes after the value).
    Malformed(String),
    /// The value is well-formed so far but over a [`ValueLimits`] limit.
    OverLimit(String),
}

/// The named types of a writer schema that passed the limits, by full name
/// (what a `Schema::Ref` points at).
#[derive(Debug)]
pub(crate) struct Writer {
    pub(crate) names: HashMap<Name, Schema>,
}

impl Writer {
    /// Collects the named types of `schema` as `apache-avro` resolves them;
    /// fails on a name defined twice or a reference to an undefined name.
    pub(crate) fn new(schema: &Schema) -> Result<Self, String> {
        let mut names = HashMap::new();
        collect_names(schema, None, &mut names)?;
        Ok(Self { names })
    }
}

fn collect_names(
    schema: &Schema,
    namespace: NamespaceRef<'_>,
    names: &mut HashMap<Name, Schema>,
) -> Result<(), String> {
    let define = |name: &Name, names: &mut HashMap<Name, Schema>| {
        let full = name.fully_qualified_name(namespace).into_owned();
        if names.contains_key(&full) {
            return Err(format!("`{full}` is defined twice"));
        }
        names.insert(full.clone(), schema.clone());
        Ok(full)
    };
    match schema {
        Schema::Array(a) => collect_names(&a.items, namespace, names),
        Schema::Map(m) => collect_names(&m.types, namespace, names),
        Schema::Union(u) => u
            .variants()
            .iter()
            .try_for_each(|v| collect_names(v, namespace, names)),
        Schema::Enum(EnumSchema { name, .. })
        | Schema::Fixed(FixedSchema { name, .. })
        | Schema::Uuid(UuidSchema::Fixed(FixedSchema { name, .. }))
        | Schema::Decimal(DecimalSchema {
            inner: InnerDecimalSchema::Fixed(FixedSchema { name, .. }),
            ..
        })
        | Schema::Duration(FixedSchema { name, .. }) => define(name, names).map(drop),
        Schema::Record(RecordSchema { name, fields, .. }) => {
            let full = define(name, names)?;
            fields
                .iter()
                .try_for_each(|f| collect_names(&f.schema, full.namespace(), names))
        }
        Schema::Ref { name } => {
            let full = name.fully_qualified_name(namespace);
            if names.contains_key(full.as_ref()) {
                Ok(())
            } else {
                Err(format!("`{full}` is used before it is defined, or never"))
            }
        }
        _ => Ok(()),
    }
}

/// Checks that `body` is exactly one value of `schema` within `limits`.
pub(crate) fn scan(
    schema: &Schema,
    names: &HashMap<Name, Schema>,
    body: &[u8],
    limits: &ValueLimits,
) -> Result<(), ScanError> {
    let mut scanner = Scanner {
        body,
        pos: 0,
        values: 0,
        limits,
        names,
    };
    scanner.value(schema, None, 1)?;
    match body.len() - scanner.pos {
        0 => Ok(()),
        rest => Err(ScanError::Malformed(format!(
            "{rest} bytes after the end of the value (it ends at byte {})",
            scanner.pos
        ))),
    }
}

struct Scanner<'a> {
    body: &'a [u8],
    pos: usize,
    values: usize,
    limits: &'a ValueLimits,
    names: &'a HashMap<Name, Schema>,
}

impl Scanner<'_> {
    fn left(&self) -> usize {
        self.body.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<(), ScanError> {
        if n > self.left() {
            return Err(ScanError::Malformed(format!(
                "{what} of {n} bytes at byte {}, but only {} bytes are left",
                self.pos,
                self.left()
            )));
        }
        self.pos += n;
        Ok(())
    }

    /// A zig-zag varint long, as Avro writes `int`, `long` and lengths.
    fn long(&mut self) -> Result<i64, ScanError> {
        let start = self.pos;
        let mut raw: u64 = 0;
        for i in 0..10 {
            let Some(&byte) = self.body.get(self.pos) else {
                return Err(ScanError::Malformed(format!(
                    "the body ends inside a number that starts at byte {start}"
                )));
            };
            self.pos += 1;
            raw |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64));
            }
        }
        Err(ScanError::Malformed(format!(
            "the number at byte {start} is longer than 10 bytes"
        )))
    }

    /// A length-prefixed `bytes` or `string`.
    fn bytes(&mut self, what: &str) -> Result<(), ScanError> {
        let at = self.pos;
        let len = self.long()?;
        let len = usize::try_from(len).map_err(|_| {
            ScanError::Malformed(format!("{what} at byte {at} has a negative length {len}"))
        })?;
        self.take(len, what)
    }

    /// The blocks of an array or map: a count (negative: followed by the
    /// block's size in bytes), its items, until a zero count.
    fn blocks(
        &mut self,
        what: &str,
        mut item: impl FnMut(&mut Self) -> Result<(), ScanError>,
    ) -> Result<(), ScanError> {
        loop {
            let at = self.pos;
            let count = self.long()?;
            if count == 0 {
                return Ok(());
            }
            let count = if count < 0 {
                self.long()?;
                count.checked_neg().ok_or_else(|| {
                    ScanError::Malformed(format!("{what} block count at byte {at} overflows"))
                })?
            } else {
                count
            };
            // Every item counts against `max-values`, so a huge count ends
            // there even when the items take no bytes.
            for _ in 0..count {
                item(self)?;
            }
        }
    }

    fn value(
        &mut self,
        schema: &Schema,
        namespace: NamespaceRef<'_>,
        depth: usize,
    ) -> Result<(), ScanError> {
        // A reference is the named type it points at, not another value.
        let (schema, namespace) = match schema {
            Schema::Ref { name } => {
                let full = name.fully_qualified_name(namespace);
                match self.names.get(full.as_ref()) {
                    Some(target) => (target, namespace),
                    None => {
                        return Err(ScanError::Malformed(format!(
                            "the schema refers to `{full}`, which it does not define"
                        )));
                    }
                }
            }
            other => (other, namespace),
        };
        // A record's fields live in the record's namespace (its name is
        // qualified when parsed; an unqualified one inherits the enclosing).
        let namespace = match schema {
            Schema::Record(r) => r.name.namespace().or(namespace),
            _ => namespace,
        };
        self.values += 1;
        if self.values > self.limits.max_values {
            return Err(ScanError::OverLimit(format!(
                "more than {} values (limit `max-values`) by byte {}",
                self.limits.max_values, self.pos
            )));
        }
        if depth > self.limits.max_depth {
            return Err(ScanError::OverLimit(format!(
                "values nested deeper than {} (limit `max-depth`) at byte {}",
                self.limits.max_depth, self.pos
            )));
        }
        match schema {
            Schema::Null => Ok(()),
            Schema::Boolean => self.take(1, "a boolean"),
            Schema::Int
            | Schema::Long
            | Schema::Date
            | Schema::TimeMillis
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos
            | Schema::Enum(_) => self.long().map(drop),
            Schema::Float => self.take(4, "a float"),
            Schema::Double => self.take(8, "a double"),
            Schema::Duration(_) => self.take(12, "a duration"),
            Schema::Bytes
            | Schema::BigDecimal
            | Schema::Uuid(UuidSchema::Bytes)
            | Schema::Decimal(DecimalSchema {
                inner: InnerDecimalSchema::Bytes,
                ..
            }) => self.bytes("bytes"),
            Schema::String | Schema::Uuid(UuidSchema::String) => self.bytes("a string"),
            Schema::Fixed(f)
            | Schema::Uuid(UuidSchema::Fixed(f))
            | Schema::Decimal(DecimalSchema {
                inner: InnerDecimalSchema::Fixed(f),
                ..
            }) => self.take(f.size, "a fixed"),
            Schema::Array(a) => {
                self.blocks("an array", |s| s.value(&a.items, namespace, depth + 1))
            }
            Schema::Map(m) => self.blocks("a map", |s| {
                s.bytes("a map key")?;
                s.value(&m.types, namespace, depth + 1)
            }),
            Schema::Union(u) => {
                let at = self.pos;
                let index = self.long()?;
                let variant = usize::try_from(index)
                    .ok()
                    .and_then(|i| u.variants().get(i))
                    .ok_or_else(|| {
                        ScanError::Malformed(format!(
                            "union branch {index} at byte {at}, but the union has {} branches",
                            u.variants().len()
                        ))
                    })?;
                self.value(variant, namespace, depth + 1)
            }
            Schema::Record(r) => {
                for field in &r.fields {
                    self.value(&field.schema, namespace, depth + 1)?;
                }
                Ok(())
            }
            Schema::Ref { name } => Err(ScanError::Malformed(format!(
                "the schema's name `{name}` refers to another reference"
            ))),
        }
    }
}
