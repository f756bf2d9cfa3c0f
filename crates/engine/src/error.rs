//! Errors with stable codes (documented in `docs/errors.md`).

use sagaflow_config::Position;

/// Stable codes of definition errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DefCode {
    /// SF-DEF-001: the file is not valid YAML.
    YamlSyntax,
    /// SF-DEF-002: a key is unknown or missing, or a value has the wrong type.
    Schema,
    /// SF-DEF-003: a step has no (or more than one) known step kind.
    UnknownStepKind,
    /// SF-DEF-004: a step names a service that is not in the services list.
    UnknownService,
    /// SF-DEF-005: an expression reads saga data that is not bound there.
    UnboundReference,
    /// SF-DEF-006: a step can never run (it follows a terminal step).
    UnreachableStep,
    /// SF-DEF-007: two steps (or bindings) share a name.
    DuplicateName,
    /// SF-DEF-008: a compensation reads data it cannot have.
    CompensationReference,
    /// SF-DEF-009: a duration is not a valid human duration.
    BadDuration,
    /// SF-DEF-010: an expression or template does not compile.
    BadExpression,
    /// SF-DEF-011: a name is not a valid identifier.
    BadName,
    /// SF-DEF-012: a retry policy is inconsistent.
    BadRetry,
    /// SF-DEF-013: a (type, version) is registered twice.
    DuplicateDefinition,
    /// SF-DEF-014: an expression reads a variable that does not exist there.
    UnknownVariable,
}

impl DefCode {
    /// The stable code, e.g. `SF-DEF-004`.
    pub fn as_str(self) -> &'static str {
        match self {
            DefCode::YamlSyntax => "SF-DEF-001",
            DefCode::Schema => "SF-DEF-002",
            DefCode::UnknownStepKind => "SF-DEF-003",
            DefCode::UnknownService => "SF-DEF-004",
            DefCode::UnboundReference => "SF-DEF-005",
            DefCode::UnreachableStep => "SF-DEF-006",
            DefCode::DuplicateName => "SF-DEF-007",
            DefCode::CompensationReference => "SF-DEF-008",
            DefCode::BadDuration => "SF-DEF-009",
            DefCode::BadExpression => "SF-DEF-010",
            DefCode::BadName => "SF-DEF-011",
            DefCode::BadRetry => "SF-DEF-012",
            DefCode::DuplicateDefinition => "SF-DEF-013",
            DefCode::UnknownVariable => "SF-DEF-014",
        }
    }
}

impl std::fmt::Display for DefCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One problem in a definition file, with where it is and what would be valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{position}: error[{code}]: {message}{}", help.as_deref().map(|h| format!(" (help: {h})")).unwrap_or_default())]
pub struct DefinitionError {
    /// Stable code.
    pub code: DefCode,
    /// File name as given to the loader.
    pub file: String,
    /// Line and column.
    pub position: Position,
    /// What is wrong.
    pub message: String,
    /// What would be valid.
    pub help: Option<String>,
}

/// A definition error's code is its [`DefCode`]. Its Display is the
/// positioned report line (`file:line:col: error[SF-DEF-NNN]: …`, rustc
/// style) rather than `SF-DEF-NNN: …`: the place comes first so editors and
/// terminals can jump to it.
impl sagaflow_codes::Coded for DefinitionError {
    fn code(&self) -> &'static str {
        self.code.as_str()
    }
}

/// All the problems found in one file (never empty).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct DefinitionErrors(pub Vec<DefinitionError>);

impl DefinitionErrors {
    /// Whether any error has `code`.
    pub fn has(&self, code: DefCode) -> bool {
        self.0.iter().any(|e| e.code == code)
    }

    /// The first error with `code`.
    pub fn find(&self, code: DefCode) -> Option<&DefinitionError> {
        self.0.iter().find(|e| e.code == code)
    }
}

/// Errors the engine returns to its caller (not saga failures: those are
/// reported as lifecycle events and a `Failed` status).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, sagaflow_codes::Coded)]
pub enum EngineError {
    /// SF-ENG-001
    #[error("SF-ENG-001: no saga definition `{saga_type}` (version {version:?})")]
    UnknownDefinition {
        saga_type: String,
        version: Option<u32>,
    },
    /// SF-ENG-002
    #[error("SF-ENG-002: saga `{saga_type}` is triggered by `{expected}`, not `{got}`")]
    TriggerMismatch {
        saga_type: String,
        expected: String,
        got: String,
    },
    /// SF-ENG-003
    #[error("SF-ENG-003: cannot start saga `{saga_type}`: {reason}")]
    TriggerExpression { saga_type: String, reason: String },
    /// SF-ENG-004
    #[error("SF-ENG-004: operator request not allowed while the saga is {status}: {reason}")]
    NotAllowed { status: String, reason: String },
    /// SF-ENG-005
    #[error("SF-ENG-005: saga state has schema version {found}, this engine reads {expected}")]
    StateVersion { found: u32, expected: u32 },
    /// SF-ENG-006
    #[error(
        "SF-ENG-006: saga state does not match definition `{saga_type}` version {version} (was the definition changed without bumping its version?)"
    )]
    StateMismatch { saga_type: String, version: u32 },
}
