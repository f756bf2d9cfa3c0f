//! One way to say an error: every user-facing error in Sagaflow has a stable
//! code `SF-AREA-NNN` (documented once, in docs/errors.md), states it once,
//! and displays as `SF-AREA-NNN: message`.
//!
//! ```
//! use sagaflow_codes::Coded;
//!
//! #[derive(Debug, thiserror::Error, Coded)]
//! enum BusError {
//!     #[error("SF-BUS-003: topic `{topic}` is invalid")]
//!     BadTopic { topic: String },
//! }
//!
//! let e = BusError::BadTopic { topic: "x".into() };
//! assert_eq!(e.code(), "SF-BUS-003");
//! assert_eq!(e.to_string(), "SF-BUS-003: topic `x` is invalid");
//! ```
//!
//! A message that does not start with its code does not compile:
//!
//! ```compile_fail
//! #[derive(Debug, thiserror::Error, sagaflow_codes::Coded)]
//! enum E {
//!     #[error("something went wrong")]
//!     NoCode,
//! }
//! ```
//!
//! (More in `tests/derive.rs`.)
//!
//! Why `SF-AREA-NNN: message` and not `[SF-AREA-NNN] message`: it reads as
//! a sentence in a log line, in a JSON `message` and on a terminal alike,
//! starts with the code so `grep '^SF-ORCH-014'` finds it, and is what
//! rustc-style tools print after `error:`. The positioned diagnostics of
//! definitions (`error[SF-DEF-001]: …` with `--> file:line:col`) are a
//! report layout around such an error, not a second format.
//!
//! `#[derive(Coded)]` reads the code from the start of the `thiserror`
//! message (a message without one does not compile) and gives a transparent
//! variant the code of the error it wraps. Sources stay sources
//! (`#[source]`, `#[from]`), not strings.

pub use sagaflow_codes_derive::Coded;

/// An error (or refusal) with a stable code.
pub trait Coded {
    /// The stable code, `SF-AREA-NNN`.
    fn code(&self) -> &'static str;
}

impl<T: Coded + ?Sized> Coded for &T {
    fn code(&self) -> &'static str {
        (**self).code()
    }
}

impl<T: Coded + ?Sized> Coded for Box<T> {
    fn code(&self) -> &'static str {
        (**self).code()
    }
}
