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

/// Who took an action: at most this many characters.
pub const ACTOR_LIMIT: usize = 200;
/// Why: at most this many characters.
pub const REASON_LIMIT: usize = 500;

/// `text` trimmed, as recorded and printed: `None` when empty; an error
/// when it is longer than `limit` characters or holds a control character
/// (a line break in a reason would forge lines of the audit's report).
pub fn clean_text<'a>(what: &str, text: &'a str, limit: usize) -> Result<Option<&'a str>, String> {
    let text = text.trim();
    if text.chars().count() > limit {
        return Err(format!("{what} has at most {limit} characters"));
    }
    if text.chars().any(char::is_control) {
        return Err(format!(
            "{what} must be one line of text, without control characters"
        ));
    }
    Ok((!text.is_empty()).then_some(text))
}

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
