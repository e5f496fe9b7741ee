//! The `orders` command: runs the platform (every role in one process, or
//! some of them) and its maintenance tasks. `main.rs` only parses the command
//! line; [`assembly`] builds the roles, the same way for `orders run`, the
//! tests and the benchmarks.
//!
//! This crate wires the other crates together; it holds no business rules
//! and no SQL of its own beyond status queries and the [`audit`], which reads
//! everything the others wrote to check that it adds up.

pub mod assembly;
pub mod audit;
pub mod commands;
pub mod dlq;
pub mod schemas;
pub mod settings;

pub use settings::Settings;
