//! Sagaflow's orchestrator: consumes domain events, replies and operator
//! requests, drives the sans-IO saga engine, and carries out its effects,
//! completing every saga exactly once without broker transactions (see
//! [`runtime`] for the protocol and `docs/orchestrator.md`).

pub mod app;
pub mod changelog;
pub mod config;
pub mod core;
mod effects;
pub mod events;
pub mod handoff;
pub mod health;
pub mod http;
pub mod ingest;
mod intake;
pub mod metrics;
mod outbound;
pub mod refusal;
mod routing;
pub mod runtime;
pub mod store;
pub mod tick;
pub mod view;
pub mod wire;
