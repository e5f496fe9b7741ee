//! The read models: kept up to date from the event topics in Kafka, and
//! rebuilt by replaying the event store into fresh tables. The GraphQL API
//! that serves them is `query-api`'s.
//!
//! - `model/`: one read model per file, each a pure fold of one aggregate's
//!   events into rows (so the live worker and the rebuild agree by construction).
//! - `worker`: a Kafka consumer group per projection; each batch is applied,
//!   recorded and checkpointed in one PostgreSQL transaction.
//! - `registry`: the list of read models that everything else goes through
//!   (workers, rebuild, audit).
//!
//! Read models are never a source of truth: everything here can be dropped and
//! rebuilt from the events. This crate never writes to the event store.

pub mod model;
pub mod rebuild;
pub mod registry;
pub mod worker;

pub use registry::Projection;

use sqlx::PgPool;

/// The read models' schema migrations (versions from 1001 on, beside the
/// event store's in the same database).
pub fn migrator() -> sqlx::migrate::Migrator {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_ignore_missing(true);
    migrator
}

/// Applies the read models' pending migrations.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    migrator().run(pool).await
}
