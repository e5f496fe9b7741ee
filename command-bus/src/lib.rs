//! The command bus: the write side's way to the event store.
//!
//! - [`CommandBus`]: load, decide, append; expected versions, retries on
//!   conflict, idempotency keys and correlation metadata.
//! - [`batch::AppendBatcher`]: group commit of concurrent commands; it wakes
//!   the readers of what it appended (`event_store::wake`).
//! - [`Catalog`]: what new orders read of products.
//!
//! It appends through `event_store`'s repository and nothing else; the read
//! side never depends on it.

pub mod batch;
pub mod catalog;
pub mod dispatch;
mod streams;

pub use catalog::{Catalog, CatalogError};
pub use dispatch::{
    CommandBus, CommandContext, CommandError, Expect, Outcome, Settled, StoreError,
};
