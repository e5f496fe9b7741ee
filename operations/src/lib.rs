//! What operators do to a running platform, for the `orders` command (and
//! anything else that wants to offer it): read the dead letters, replay them
//! into the live path, or discard them with a reason, every action recorded
//! in `dead_letter_actions` (who, when, what, why); list the sagas that need
//! someone, look at one whole, retry it at once or abandon it
//! (`saga_actions`); and the overview of where the platform stands.

pub mod dead_letters;
pub mod overview;
pub mod sagas;

use sqlx::PgPool;

/// This crate's migrations (from version 3001 on), beside the others'.
pub fn migrator() -> sqlx::migrate::Migrator {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_ignore_missing(true);
    migrator
}

/// Applies this crate's pending migrations.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    migrator().run(pool).await
}
