//! The order saga itself and its table, without anything that carries it
//! out: what the orchestrator drives, operators inspect and GraphQL shows.
//!
//! - [`saga`]: the saga, a pure state machine: the next action, what an
//!   outcome means, the compensations;
//! - [`store`]: the `sagas` table: sagas with optimistic locking and leases,
//!   what needs someone, and [`store::views`], what others may see of one.
//!
//! It sends no command and calls no gateway: that is `saga-orchestrator`'s.

pub mod saga;
pub mod store;

use sqlx::PgPool;

/// The sagas' schema migrations (versions from 2001 on, beside the event
/// store's and the read models' in the same database).
pub fn migrator() -> sqlx::migrate::Migrator {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_ignore_missing(true);
    migrator
}

/// Applies the sagas' pending migrations.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    migrator().run(pool).await
}

#[cfg(test)]
mod tests;
