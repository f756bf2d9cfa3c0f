//! `#[derive(Coded)]` on the shapes Sagaflow's errors take.

use sagaflow_codes::Coded;

#[derive(Debug, thiserror::Error, Coded)]
#[error("SF-EXAMPLE-002: disk full at {0}")]
struct Inner(u32);

#[derive(Debug, thiserror::Error, Coded)]
#[error(transparent)]
struct Wrapper(#[from] Inner);

#[derive(Debug, thiserror::Error, Coded)]
enum ExampleError {
    #[error("SF-EXAMPLE-001: topic `{topic}` is missing")]
    Missing { topic: String },
    #[error("SF-EXAMPLE-003: unit")]
    Unit,
    #[error("SF-EXAMPLE-004: tuple {0}")]
    Tuple(String),
    #[error(transparent)]
    Inner(#[from] Inner),
    #[error(transparent)]
    Named {
        #[from]
        wrapped: Wrapper,
    },
    #[error("SF-EXAMPLE-005: cannot store: {source}")]
    Store {
        #[source]
        source: Inner,
    },
}

#[test]
fn every_shape_has_its_code_and_displays_it_first() {
    let cases = [
        (
            ExampleError::Missing { topic: "o".into() },
            "SF-EXAMPLE-001",
            "SF-EXAMPLE-001: topic `o` is missing",
        ),
        (ExampleError::Unit, "SF-EXAMPLE-003", "SF-EXAMPLE-003: unit"),
        (
            ExampleError::Tuple("t".into()),
            "SF-EXAMPLE-004",
            "SF-EXAMPLE-004: tuple t",
        ),
        (
            ExampleError::from(Inner(7)),
            "SF-EXAMPLE-002",
            "SF-EXAMPLE-002: disk full at 7",
        ),
        (
            ExampleError::from(Wrapper(Inner(8))),
            "SF-EXAMPLE-002",
            "SF-EXAMPLE-002: disk full at 8",
        ),
        (
            ExampleError::Store { source: Inner(9) },
            "SF-EXAMPLE-005",
            "SF-EXAMPLE-005: cannot store: SF-EXAMPLE-002: disk full at 9",
        ),
    ];
    for (e, code, text) in cases {
        assert_eq!(e.code(), code);
        assert_eq!(Coded::code(&&e), code, "through the trait and a reference");
        assert_eq!(e.to_string(), text);
    }
}

#[test]
fn sources_stay_sources() {
    let e = ExampleError::Store { source: Inner(1) };
    let source = std::error::Error::source(&e).expect("a source");
    assert_eq!(source.to_string(), "SF-EXAMPLE-002: disk full at 1");
}

#[test]
fn a_boxed_error_keeps_its_code() {
    let e: Box<dyn Coded> = Box::new(ExampleError::Unit);
    assert_eq!(e.code(), "SF-EXAMPLE-003");
}
