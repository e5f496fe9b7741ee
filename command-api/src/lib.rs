//! The REST command API: each request becomes one command, each accepted
//! command is committed as events before the answer.
//!
//! - `routes/`: one file per use case, plus health, metrics and docs.
//! - `startup`: the application, built the same way by `orders run` and the tests.
//!
//! Who is calling, extraction, problems and observation are the shared
//! HTTP edge's (`http_edge`).
//!
//! This crate translates; it holds no business rules (those live in `domain`)
//! and never writes to the database except through `command_bus::CommandBus`.

pub mod routes;
pub mod startup;
pub mod state;

pub use startup::{Application, openapi, router};
pub use state::{ApiConfig, AppState};
