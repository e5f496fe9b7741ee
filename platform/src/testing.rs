//! Throwaway databases for tests against the real PostgreSQL.
//!
//! Each test gets a database of its own, so tests run in parallel and leave
//! nothing behind: the database is dropped when the handle is.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

/// Where the tests' PostgreSQL is: `DATABASE_URL`, or the local default.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://127.0.0.1:5432/orders".into())
}

/// Where the tests' Kafka is: `KAFKA_BROKERS`, or the local default.
pub fn kafka_brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// A database created for one test and dropped with this handle.
#[derive(Debug)]
pub struct TestDatabase {
    pub name: String,
    /// A URL that connects to this database.
    pub url: String,
    admin: PgConnectOptions,
}

impl TestDatabase {
    /// Creates an empty database with a unique name on the tests' server.
    pub async fn create() -> anyhow::Result<Self> {
        let base = database_url();
        let admin = PgConnectOptions::from_str(&base)?;
        let name = format!("test_{}", uuid::Uuid::new_v4().simple());
        let mut connection = PgConnection::connect_with(&admin).await.map_err(|error| {
            anyhow::anyhow!(
                "cannot reach PostgreSQL at {base} ({error}); start it with `scripts/services start`"
            )
        })?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut connection)
            .await?;
        connection.close().await?;
        Ok(Self {
            url: with_database(&base, &name),
            name,
            admin,
        })
    }

    /// A pool of `size` connections to this database.
    pub async fn pool(&self, size: u32) -> anyhow::Result<PgPool> {
        Ok(PgPoolOptions::new()
            .max_connections(size)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(self.admin.clone().database(&self.name))
            .await?)
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let statement = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        // Drop runs inside the test's runtime, which cannot be blocked on; a
        // thread of its own with a small runtime does the cleanup.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let mut connection = PgConnection::connect_with(&admin).await?;
                sqlx::query(&statement).execute(&mut connection).await?;
                connection.close().await?;
                anyhow::Ok(())
            })
        });
        if let Ok(Err(error)) = cleanup.join() {
            eprintln!("could not drop test database {}: {error}", self.name);
        }
    }
}

/// `url` with its database name replaced by `name`.
pub fn with_database(url: &str, name: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (url, None),
    };
    let scheme_end = head.find("://").map_or(0, |i| i + 3);
    let base = match head[scheme_end..].find('/') {
        Some(slash) => &head[..scheme_end + slash],
        None => head,
    };
    match query {
        Some(query) => format!("{base}/{name}?{query}"),
        None => format!("{base}/{name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn replaces_the_database_in_urls() {
        assert_eq!(
            with_database("postgres://127.0.0.1:5432/orders", "t1"),
            "postgres://127.0.0.1:5432/t1"
        );
        assert_eq!(
            with_database("postgres://u:p@h/orders?sslmode=disable", "t1"),
            "postgres://u:p@h/t1?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h:5432", "t1"),
            "postgres://h:5432/t1"
        );
    }
}
