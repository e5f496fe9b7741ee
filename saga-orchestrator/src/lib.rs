//! The order saga: drives each placed order through stock reservation and
//! payment, and undoes finished steps when a later one fails or times out.
//!
//! - [`saga`]: the saga itself, a pure state machine;
//! - [`driver`]: carries out its actions, through the event store's dispatch
//!   (never over HTTP) and the payment [`gateway`] (over HTTP only);
//! - [`store`]: sagas in PostgreSQL with optimistic locking and leases;
//! - [`orchestrator`]: the Kafka consumer group and the scan that resumes
//!   sagas after failures and crashes;
//! - [`sweep`]: starts the sagas of placements whose message never came.
//!
//! It does not read the projections' tables.

pub mod driver;
pub mod gateway;
pub mod orchestrator;
pub mod saga;
pub mod store;
pub mod sweep;

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
