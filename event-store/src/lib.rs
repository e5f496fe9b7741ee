//! The PostgreSQL event store: storage that the write side appends to and
//! every reader reads from. Deciding commands is `command-bus`'s.
//!
//! - [`PgEventRepository`]: cqrs-es's `PersistedEventRepository` over the
//!   postgres-es events table, with a one-statement append; snapshots.
//! - [`idempotency`]: the outcomes remembered under idempotency keys.
//! - [`Position`]: where a command left its aggregate, handed to clients
//!   to read their own writes.
//! - [`GlobalReader`]: every event in one gap-free commit order, for the relay
//!   and for replays; [`reader::streams`]: aggregates' histories.
//! - [`migrate`]: the schema, applied by `orders migrate` and by tests.
//!
//! This crate owns the events table: nothing else writes to it. It knows the
//! domain's aggregates but nothing of HTTP, Kafka or read models: the
//! published form of events belongs to the `event-contract` crate.

pub mod idempotency;
/// Metadata keys written on every event.
pub mod metadata {
    pub const CORRELATION_ID: &str = "correlation_id";
    pub const CAUSATION_ID: &str = "causation_id";
    pub const IDEMPOTENCY_KEY: &str = "idempotency_key";
    /// The W3C trace context of the append that wrote the event, when it
    /// was traced: the relay's publish span continues that trace.
    pub const TRACEPARENT: &str = "traceparent";
}
pub mod position;
pub mod reader;
pub mod repository;
pub mod wake;

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

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
