//! The `orders` command: runs the platform (every role in one process, or one
//! role) and its maintenance tasks. `main.rs` only parses the command line.
//!
//! This crate wires the other crates together; it holds no business rules and
//! no SQL of its own beyond status queries.

pub mod assembly;
pub mod audit;
pub mod commands;
pub mod schemas;
pub mod settings;

pub use settings::Settings;
