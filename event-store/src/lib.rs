//! The write model: the PostgreSQL event store behind every command.
//!
//! - [`PgEventRepository`]: cqrs-es's `PersistedEventRepository` over the
//!   postgres-es events table, with a one-statement append.
//! - [`CommandBus`]: load, decide, append; expected versions, retries on
//!   conflict, idempotency keys and correlation metadata.
//! - [`batch::AppendBatcher`]: group commit of concurrent commands.
//! - [`Catalog`]: product prices for new orders.
//! - [`Position`]: where a command left its aggregate, handed to clients
//!   to read their own writes.
//! - [`GlobalReader`]: every event in one gap-free commit order, for the relay
//!   and for replays; [`reader::streams`]: aggregates' histories.
//! - [`migrate`]: the schema, applied by `orders migrate` and by tests.
//!
//! This crate owns the events table: nothing else writes to it. It knows the
//! domain's aggregates but nothing of HTTP, Kafka or read models: the
//! published form of events belongs to the `event-contract` crate.

pub mod batch;
pub mod catalog;
pub mod dispatch;
pub mod idempotency;
pub mod position;
pub mod reader;
pub mod repository;
mod streams;
pub mod wake;

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

pub use catalog::{Catalog, CatalogError};
pub use dispatch::{
    CommandBus, CommandContext, CommandError, Expect, Outcome, Settled, StoreError,
};
pub use position::Position;
pub use reader::{GlobalCheckpoint, GlobalReader, ReadFilter, RecordedEvent};
pub use repository::{AppendError, IdempotencyClaim, IdempotencyKey, NewEvent, PgEventRepository};

/// The event store's schema migrations, embedded from `event-store/migrations`.
/// Other crates keep migrations of their own in the same database (the read
/// models from version 1001 on), so migrations this one does not know are
/// expected.
pub fn migrator() -> sqlx::migrate::Migrator {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_ignore_missing(true);
    migrator
}

/// Opens a pool of `size` connections to `url`, waiting at most `acquire_timeout`
/// for a free connection before a query fails.
pub async fn connect(
    url: &str,
    size: u32,
    acquire_timeout: Duration,
) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = url.parse()?;
    PgPoolOptions::new()
        .max_connections(size)
        .acquire_timeout(acquire_timeout)
        .connect_with(platform::postgres::tuned(
            options.application_name("orders-platform"),
        ))
        .await
}

/// Applies the schema migrations that have not run yet.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    migrator().run(pool).await
}
