//! The REST command API: each request becomes one command, each accepted
//! command is committed as events before the answer.
//!
//! - `routes/`: one file per use case, plus health, metrics and docs.
//! - `auth`: who is calling (bearer tokens), scopes, per-caller rate limits.
//! - `extract`: body and header parsing with precise problems (400/413/415/422).
//! - `problem`: every error as RFC 9457 problem+json.
//! - `observe`: request ids, spans, access logs, HTTP metrics.
//! - `startup`: the application, built the same way by `orders run` and the tests.
//!
//! This crate translates; it holds no business rules (those live in `domain`)
//! and never writes to the database except through `event_store::CommandBus`.

pub mod auth;
pub mod extract;
pub mod observe;
pub mod problem;
pub mod routes;
pub mod startup;

pub use startup::{ApiConfig, AppState, Application, openapi, router};
