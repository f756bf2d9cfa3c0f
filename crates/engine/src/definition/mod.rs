//! Saga definitions: raw YAML shape, validation, and the validated form.
//!
//! * `raw`: the YAML shape serde reads;
//! * `validate` and `steps`: raw → validated, one function per step kind;
//! * `validated`: the compiled definition the engine runs;
//! * `services`: the service catalog;
//! * `registry`: definitions by (type, version).

mod raw;
mod registry;
mod services;
mod steps;
mod validate;
mod validated;

pub use raw::RetryOn;
pub use registry::{DefinitionRegistry, DeploymentTopics};
pub use services::{ServiceCatalog, ServiceInfo};
pub use validate::RawSagaDefinition;
pub(crate) use validated::ListOwner;
pub use validated::{
    AwaitStep, CallStep, Compensation, EmitStep, OnDeadline, RetryPolicy, SagaDeadline,
    SagaDefinition, SagaOnDeadline, Step, StepKind, Trigger,
};

/// Index of a step inside its definition.
pub type NodeId = u16;

/// The step kinds a step mapping may start with.
pub const STEP_KINDS: &[&str] = &[
    "call", "parallel", "choice", "await", "emit", "reject", "finish",
];

#[cfg(test)]
mod tests;
