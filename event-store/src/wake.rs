//! Waking the relay when events were appended.
//!
//! The relay may run in any process: the append batchers announce their
//! commits with `NOTIFY events_appended` (see `batch`), which reaches it
//! wherever it is, but costs a statement per announcement. When the relay
//! that leads for a database runs in the same process as the appender, it is
//! woken in memory instead: the leading relay registers itself here
//! ([`LocalLead`]) for the time it leads, and the batchers of that database
//! then signal it directly and send no `NOTIFY`.
//!
//! Databases are told apart by host, port and name, so processes holding
//! several (the tests) wake only the relay of the database written to.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, PoisonError};

use sqlx::PgPool;
use tokio::sync::watch;

/// The channel that says events were appended (the relay listens on it).
pub const EVENTS_CHANNEL: &str = "events_appended";

/// Per database: how many relays lead here, and the appends counter they
/// watch.
static LOCAL: LazyLock<Mutex<HashMap<String, Local>>> = LazyLock::new(Mutex::default);

struct Local {
    leaders: usize,
    appended: watch::Sender<u64>,
}

/// Which database `pool` writes to.
pub fn database_key(pool: &PgPool) -> String {
    let options = pool.connect_options();
    format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or_default()
    )
}

/// Events of database `key` were appended: wakes the relays leading for it
/// in this process. Whether one does (then nobody else needs telling).
pub fn appended(key: &str) -> bool {
    let local = LOCAL.lock().unwrap_or_else(PoisonError::into_inner);
    match local.get(key) {
        Some(lead) if lead.leaders > 0 => {
            lead.appended
                .send_modify(|count| *count = count.wrapping_add(1));
            true
        }
        _ => false,
    }
}

/// A relay leading in this process for a database; dropped, it no longer
/// does, and the batchers go back to `NOTIFY`.
#[derive(Debug)]
pub struct LocalLead {
    key: String,
    appended: watch::Receiver<u64>,
}

impl LocalLead {
    /// Registers a relay that leads for the database of `pool`.
    pub fn new(pool: &PgPool) -> Self {
        let key = database_key(pool);
        let mut local = LOCAL.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = local.entry(key.clone()).or_insert_with(|| Local {
            leaders: 0,
            appended: watch::channel(0).0,
        });
        entry.leaders += 1;
        let appended = entry.appended.subscribe();
        Self { key, appended }
    }

    /// Completes when events were appended in this process since the last
    /// time it completed (or since the lead began).
    pub async fn appended(&mut self) {
        if self.appended.changed().await.is_err() {
            // The sender lives as long as the entry, which outlives every
            // lead registered on it; should it go, never complete.
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for LocalLead {
    fn drop(&mut self) {
        let mut local = LOCAL.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = local.get_mut(&self.key) {
            entry.leaders = entry.leaders.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sqlx::postgres::PgPoolOptions;

    use super::*;

    fn pool(database: &str) -> PgPool {
        PgPoolOptions::new()
            .connect_lazy(&format!("postgres://127.0.0.1:5432/{database}"))
            .unwrap()
    }

    #[tokio::test]
    async fn a_relay_leading_here_is_woken_in_memory_and_only_for_its_database() {
        let (mine, other) = (pool("wake_mine"), pool("wake_other"));
        let (key, other_key) = (database_key(&mine), database_key(&other));
        assert!(!appended(&key), "nobody leads yet: NOTIFY it is");

        let mut lead = LocalLead::new(&mine);
        assert!(appended(&key));
        tokio::time::timeout(Duration::from_secs(1), lead.appended())
            .await
            .expect("woken");
        assert!(
            !appended(&other_key),
            "another database's relay is elsewhere"
        );
        let quiet = tokio::time::timeout(Duration::from_millis(50), lead.appended()).await;
        assert!(quiet.is_err(), "no wake-up without an append");

        drop(lead);
        assert!(!appended(&key), "the lead is gone: NOTIFY again");
    }
}
