//! Mapping between the wire types in [`crate::messages`] and Avro values of
//! the schemas in `schemas/sagaflow/`.

use std::sync::OnceLock;

use apache_avro::Schema;
use apache_avro::types::Value;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::messages::{
    Command, CommandKind, LifecycleKind, Reply, ReplyError, ReplyOutcome, SagaLifecycleEvent,
    SagaResult, SagaStatus,
};

/// Why an Avro value could not be turned into a wire type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldError {
    /// The value does not have the expected shape.
    Shape(String),
    /// A JSON-text field does not hold valid JSON.
    Json {
        /// The Avro field.
        field: &'static str,
        /// The parser's message.
        message: String,
    },
}

/// A Sagaflow message with a compiled-in Avro schema.
pub trait AvroMessage: Sized + Serialize + DeserializeOwned + Send + Sync {
    /// Full name of the record, e.g. `io.sagaflow.v1.Command` (the subject
    /// under the record-name strategy).
    const FULL_NAME: &'static str;
    /// The schema (`.avsc` text) this build reads and writes.
    const SCHEMA_JSON: &'static str;
    /// [`Self::SCHEMA_JSON`], parsed once.
    fn schema() -> &'static Schema;
    /// The message as an Avro record of [`Self::schema`].
    fn to_avro(&self) -> Value;
    /// The message from an Avro record already resolved to [`Self::schema`].
    fn from_avro(value: Value) -> Result<Self, FieldError>;
}

macro_rules! avro_enum {
    ($ty:ty { $($variant:ident => $symbol:literal),+ $(,)? }) => {
        impl $ty {
            /// Avro symbols, in schema order.
            pub const SYMBOLS: &'static [&'static str] = &[$($symbol),+];

            /// The Avro symbol of this value.
            pub fn symbol(self) -> &'static str {
                match self { $(Self::$variant => $symbol),+ }
            }

            /// The value for an Avro symbol.
            pub fn from_symbol(symbol: &str) -> Option<Self> {
                match symbol { $($symbol => Some(Self::$variant),)+ _ => None }
            }

            fn to_avro(self) -> Value {
                let symbol = self.symbol();
                let index = Self::SYMBOLS.iter().position(|s| *s == symbol).unwrap_or(0);
                Value::Enum(index as u32, symbol.to_string())
            }
        }
    };
}

avro_enum!(CommandKind { Action => "ACTION", Compensation => "COMPENSATION" });
avro_enum!(ReplyOutcome {
    Success => "SUCCESS",
    BusinessFailure => "BUSINESS_FAILURE",
    TransientFailure => "TRANSIENT_FAILURE",
});
avro_enum!(SagaStatus { Completed => "COMPLETED", Compensated => "COMPENSATED", Failed => "FAILED" });
avro_enum!(LifecycleKind {
    Unknown => "UNKNOWN",
    Started => "STARTED",
    StepStarted => "STEP_STARTED",
    StepSucceeded => "STEP_SUCCEEDED",
    StepFailed => "STEP_FAILED",
    StepRetrying => "STEP_RETRYING",
    StepTimedOut => "STEP_TIMED_OUT",
    AwaitingEvent => "AWAITING_EVENT",
    EventReceived => "EVENT_RECEIVED",
    EventDeadlineExpired => "EVENT_DEADLINE_EXPIRED",
    Compensating => "COMPENSATING",
    CompensationStepStarted => "COMPENSATION_STEP_STARTED",
    CompensationStepSucceeded => "COMPENSATION_STEP_SUCCEEDED",
    CompensationStepFailed => "COMPENSATION_STEP_FAILED",
    Completed => "COMPLETED",
    Compensated => "COMPENSATED",
    Failed => "FAILED",
    LateReply => "LATE_REPLY",
    CompensationStepRetrying => "COMPENSATION_STEP_RETRYING",
    Resumed => "RESUMED",
    Aborted => "ABORTED",
});

fn parse_once(cell: &'static OnceLock<Schema>, text: &str) -> &'static Schema {
    // The schemas are compiled in and covered by tests; failing here is a build defect.
    cell.get_or_init(|| Schema::parse_str(text).expect("compiled-in Sagaflow schema is valid Avro"))
}

fn shape(what: impl Into<String>) -> FieldError {
    FieldError::Shape(what.into())
}

/// Takes the fields of a resolved record by name.
struct Fields(Vec<(String, Value)>);

impl Fields {
    fn of(value: Value, record: &str) -> Result<Self, FieldError> {
        match value {
            Value::Record(fields) => Ok(Self(fields)),
            other => Err(shape(format!("expected record {record}, found {other:?}"))),
        }
    }

    fn take(&mut self, name: &'static str) -> Result<Value, FieldError> {
        let index = self
            .0
            .iter()
            .position(|(n, _)| n == name)
            .ok_or_else(|| shape(format!("field `{name}` is missing")))?;
        Ok(std::mem::replace(&mut self.0[index].1, Value::Null))
    }

    fn string(&mut self, name: &'static str) -> Result<String, FieldError> {
        match self.take(name)? {
            Value::String(s) => Ok(s),
            other => Err(shape(format!(
                "field `{name}`: expected string, found {other:?}"
            ))),
        }
    }

    fn int(&mut self, name: &'static str) -> Result<i32, FieldError> {
        match self.take(name)? {
            Value::Int(i) => Ok(i),
            other => Err(shape(format!(
                "field `{name}`: expected int, found {other:?}"
            ))),
        }
    }

    fn long(&mut self, name: &'static str) -> Result<i64, FieldError> {
        match self.take(name)? {
            Value::Long(l) | Value::TimestampMillis(l) => Ok(l),
            other => Err(shape(format!(
                "field `{name}`: expected long, found {other:?}"
            ))),
        }
    }

    fn symbol(&mut self, name: &'static str) -> Result<String, FieldError> {
        match self.take(name)? {
            Value::Enum(_, s) => Ok(s),
            other => Err(shape(format!(
                "field `{name}`: expected enum, found {other:?}"
            ))),
        }
    }

    fn json(&mut self, name: &'static str) -> Result<serde_json::Value, FieldError> {
        let text = self.string(name)?;
        serde_json::from_str(&text).map_err(|e| FieldError::Json {
            field: name,
            message: e.to_string(),
        })
    }

    fn optional(&mut self, name: &'static str) -> Result<Option<Value>, FieldError> {
        Ok(match self.take(name)? {
            Value::Null => None,
            Value::Union(_, inner) => match *inner {
                Value::Null => None,
                v => Some(v),
            },
            v => Some(v),
        })
    }

    fn optional_json(
        &mut self,
        name: &'static str,
    ) -> Result<Option<serde_json::Value>, FieldError> {
        self.optional_string(name)?
            .map(|text| {
                serde_json::from_str(&text).map_err(|e| FieldError::Json {
                    field: name,
                    message: e.to_string(),
                })
            })
            .transpose()
    }

    fn optional_string(&mut self, name: &'static str) -> Result<Option<String>, FieldError> {
        self.optional(name)?
            .map(|v| match v {
                Value::String(s) => Ok(s),
                other => Err(shape(format!(
                    "field `{name}`: expected string, found {other:?}"
                ))),
            })
            .transpose()
    }

    fn optional_int(&mut self, name: &'static str) -> Result<Option<i32>, FieldError> {
        self.optional(name)?
            .map(|v| match v {
                Value::Int(i) => Ok(i),
                other => Err(shape(format!(
                    "field `{name}`: expected int, found {other:?}"
                ))),
            })
            .transpose()
    }
}

fn enum_value<T>(symbol: String, name: &str, from: fn(&str) -> Option<T>) -> Result<T, FieldError> {
    from(&symbol).ok_or_else(|| shape(format!("field `{name}`: unknown symbol {symbol}")))
}

fn opt<T>(value: Option<T>, f: impl FnOnce(T) -> Value) -> Value {
    match value {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(v) => Value::Union(1, Box::new(f(v))),
    }
}

fn s(value: &str) -> Value {
    Value::String(value.to_string())
}

fn json_text(value: &serde_json::Value) -> Value {
    Value::String(value.to_string())
}

fn record(fields: Vec<(&'static str, Value)>) -> Value {
    Value::Record(
        fields
            .into_iter()
            .map(|(n, v)| (n.to_string(), v))
            .collect(),
    )
}

impl AvroMessage for Command {
    const FULL_NAME: &'static str = "io.sagaflow.v1.Command";
    const SCHEMA_JSON: &'static str = include_str!("../../../schemas/sagaflow/Command.avsc");

    fn schema() -> &'static Schema {
        static CELL: OnceLock<Schema> = OnceLock::new();
        parse_once(&CELL, Self::SCHEMA_JSON)
    }

    fn to_avro(&self) -> Value {
        record(vec![
            ("command_id", s(&self.command_id)),
            ("saga_id", s(&self.saga_id)),
            ("saga_type", s(&self.saga_type)),
            ("saga_version", Value::Int(self.saga_version)),
            ("step", s(&self.step)),
            ("service", s(&self.service)),
            ("operation", s(&self.operation)),
            ("attempt", Value::Int(self.attempt)),
            ("kind", self.kind.to_avro()),
            ("input_json", Value::String(self.input.to_string())),
            ("timeout_ms", Value::Long(self.timeout_ms)),
            ("issued_at", Value::TimestampMillis(self.issued_at)),
            ("trace_parent", opt(self.trace_parent.as_deref(), s)),
        ])
    }

    fn from_avro(value: Value) -> Result<Self, FieldError> {
        let mut f = Fields::of(value, Self::FULL_NAME)?;
        Ok(Self {
            command_id: f.string("command_id")?,
            saga_id: f.string("saga_id")?,
            saga_type: f.string("saga_type")?,
            saga_version: f.int("saga_version")?,
            step: f.string("step")?,
            service: f.string("service")?,
            operation: f.string("operation")?,
            attempt: f.int("attempt")?,
            kind: enum_value(f.symbol("kind")?, "kind", CommandKind::from_symbol)?,
            input: f.json("input_json")?,
            timeout_ms: f.long("timeout_ms")?,
            issued_at: f.long("issued_at")?,
            trace_parent: f.optional_string("trace_parent")?,
        })
    }
}

impl AvroMessage for Reply {
    const FULL_NAME: &'static str = "io.sagaflow.v1.Reply";
    const SCHEMA_JSON: &'static str = include_str!("../../../schemas/sagaflow/Reply.avsc");

    fn schema() -> &'static Schema {
        static CELL: OnceLock<Schema> = OnceLock::new();
        parse_once(&CELL, Self::SCHEMA_JSON)
    }

    fn to_avro(&self) -> Value {
        record(vec![
            ("command_id", s(&self.command_id)),
            ("saga_id", s(&self.saga_id)),
            ("step", s(&self.step)),
            ("attempt", Value::Int(self.attempt)),
            ("service", s(&self.service)),
            ("operation", s(&self.operation)),
            ("outcome", self.outcome.to_avro()),
            ("data_json", Value::String(self.data.to_string())),
            (
                "error",
                opt(self.error.as_ref(), |e| {
                    record(vec![("code", s(&e.code)), ("message", s(&e.message))])
                }),
            ),
            ("completed_at", Value::TimestampMillis(self.completed_at)),
            ("backend_status", opt(self.backend_status, Value::Int)),
        ])
    }

    fn from_avro(value: Value) -> Result<Self, FieldError> {
        let mut f = Fields::of(value, Self::FULL_NAME)?;
        Ok(Self {
            command_id: f.string("command_id")?,
            saga_id: f.string("saga_id")?,
            step: f.string("step")?,
            attempt: f.int("attempt")?,
            service: f.string("service")?,
            operation: f.string("operation")?,
            outcome: enum_value(f.symbol("outcome")?, "outcome", ReplyOutcome::from_symbol)?,
            data: f.json("data_json")?,
            error: f
                .optional("error")?
                .map(|v| {
                    let mut e = Fields::of(v, "io.sagaflow.v1.ReplyError")?;
                    Ok(ReplyError {
                        code: e.string("code")?,
                        message: e.string("message")?,
                    })
                })
                .transpose()?,
            completed_at: f.long("completed_at")?,
            backend_status: f.optional_int("backend_status")?,
        })
    }
}

impl AvroMessage for SagaLifecycleEvent {
    const FULL_NAME: &'static str = "io.sagaflow.v1.SagaLifecycleEvent";
    const SCHEMA_JSON: &'static str =
        include_str!("../../../schemas/sagaflow/SagaLifecycleEvent.avsc");

    fn schema() -> &'static Schema {
        static CELL: OnceLock<Schema> = OnceLock::new();
        parse_once(&CELL, Self::SCHEMA_JSON)
    }

    fn to_avro(&self) -> Value {
        record(vec![
            ("event_id", s(&self.event_id)),
            ("saga_id", s(&self.saga_id)),
            ("saga_type", s(&self.saga_type)),
            ("saga_version", Value::Int(self.saga_version)),
            ("kind", self.kind.to_avro()),
            ("step", opt(self.step.as_deref(), s)),
            ("attempt", opt(self.attempt, Value::Int)),
            ("detail", opt(self.detail.as_deref(), s)),
            ("at", Value::TimestampMillis(self.at)),
            ("input_json", opt(self.input.as_ref(), json_text)),
            ("output_json", opt(self.output.as_ref(), json_text)),
            ("error_json", opt(self.error.as_ref(), json_text)),
            (
                "attributes",
                if self.attributes.is_empty() {
                    Value::Union(0, Box::new(Value::Null))
                } else {
                    Value::Union(
                        1,
                        Box::new(Value::Map(
                            self.attributes
                                .iter()
                                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                                .collect(),
                        )),
                    )
                },
            ),
        ])
    }

    fn from_avro(value: Value) -> Result<Self, FieldError> {
        let mut f = Fields::of(value, Self::FULL_NAME)?;
        Ok(Self {
            event_id: f.string("event_id")?,
            saga_id: f.string("saga_id")?,
            saga_type: f.string("saga_type")?,
            saga_version: f.int("saga_version")?,
            kind: LifecycleKind::from_symbol(&f.symbol("kind")?).unwrap_or(LifecycleKind::Unknown),
            step: f.optional_string("step")?,
            attempt: f.optional_int("attempt")?,
            detail: f.optional_string("detail")?,
            at: f.long("at")?,
            input: f.optional_json("input_json")?,
            output: f.optional_json("output_json")?,
            error: f.optional_json("error_json")?,
            attributes: match f.optional("attributes")? {
                None => Default::default(),
                Some(Value::Map(m)) => m
                    .into_iter()
                    .map(|(k, v)| match v {
                        Value::String(s) => Ok((k, s)),
                        other => Err(shape(format!(
                            "field `attributes`: expected string values, found {other:?}"
                        ))),
                    })
                    .collect::<Result<_, _>>()?,
                Some(other) => {
                    return Err(shape(format!(
                        "field `attributes`: expected a map, found {other:?}"
                    )));
                }
            },
        })
    }
}

impl AvroMessage for SagaResult {
    const FULL_NAME: &'static str = "io.sagaflow.v1.SagaResult";
    const SCHEMA_JSON: &'static str = include_str!("../../../schemas/sagaflow/SagaResult.avsc");

    fn schema() -> &'static Schema {
        static CELL: OnceLock<Schema> = OnceLock::new();
        parse_once(&CELL, Self::SCHEMA_JSON)
    }

    fn to_avro(&self) -> Value {
        record(vec![
            ("saga_id", s(&self.saga_id)),
            ("saga_type", s(&self.saga_type)),
            ("saga_version", Value::Int(self.saga_version)),
            ("status", self.status.to_avro()),
            ("output_json", Value::String(self.output.to_string())),
            ("error", opt(self.error.as_deref(), s)),
            ("started_at", Value::TimestampMillis(self.started_at)),
            ("ended_at", Value::TimestampMillis(self.ended_at)),
        ])
    }

    fn from_avro(value: Value) -> Result<Self, FieldError> {
        let mut f = Fields::of(value, Self::FULL_NAME)?;
        Ok(Self {
            saga_id: f.string("saga_id")?,
            saga_type: f.string("saga_type")?,
            saga_version: f.int("saga_version")?,
            status: enum_value(f.symbol("status")?, "status", SagaStatus::from_symbol)?,
            output: f.json("output_json")?,
            error: f.optional_string("error")?,
            started_at: f.long("started_at")?,
            ended_at: f.long("ended_at")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn symbols_of(schema: &Schema, field: &str) -> Vec<String> {
        let Schema::Record(r) = schema else {
            panic!("not a record")
        };
        let f = r.fields.iter().find(|f| f.name == field).unwrap();
        let Schema::Enum(e) = &f.schema else {
            panic!("not an enum")
        };
        e.symbols.clone()
    }

    #[test]
    fn rust_enums_match_schema_symbols() {
        assert_eq!(symbols_of(Command::schema(), "kind"), CommandKind::SYMBOLS);
        assert_eq!(
            symbols_of(Reply::schema(), "outcome"),
            ReplyOutcome::SYMBOLS
        );
        assert_eq!(
            symbols_of(SagaLifecycleEvent::schema(), "kind"),
            LifecycleKind::SYMBOLS
        );
        assert_eq!(
            symbols_of(SagaResult::schema(), "status"),
            SagaStatus::SYMBOLS
        );
    }

    #[test]
    fn full_names_match_schemas() {
        fn name<M: AvroMessage>() -> String {
            let Schema::Record(r) = M::schema() else {
                panic!("not a record")
            };
            r.name.fullname(None)
        }
        assert_eq!(name::<Command>(), Command::FULL_NAME);
        assert_eq!(name::<Reply>(), Reply::FULL_NAME);
        assert_eq!(name::<SagaLifecycleEvent>(), SagaLifecycleEvent::FULL_NAME);
        assert_eq!(name::<SagaResult>(), SagaResult::FULL_NAME);
    }

    #[test]
    fn invalid_json_text_is_reported_with_its_field() {
        let reply = Reply {
            command_id: "c".into(),
            saga_id: "s".into(),
            step: "x".into(),
            attempt: 1,
            service: "svc".into(),
            operation: "op".into(),
            outcome: ReplyOutcome::Success,
            data: serde_json::Value::Null,
            error: None,
            completed_at: 0,
            backend_status: None,
        };
        let Value::Record(mut fields) = reply.to_avro() else {
            panic!()
        };
        for (name, value) in &mut fields {
            if name == "data_json" {
                *value = Value::String("{oops".into());
            }
        }
        assert!(matches!(
            Reply::from_avro(Value::Record(fields)),
            Err(FieldError::Json {
                field: "data_json",
                ..
            })
        ));
    }
}
