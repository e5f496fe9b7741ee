//! The payment gateway simulator: a service of its own, standing in for a
//! real payment provider, with its own PostgreSQL database, so that a restart
//! forgets no charge.
//!
//! - [`ledger`]: charges, refunds and voids by idempotency key;
//! - [`routes`]: the HTTP API the saga calls, as it would call a provider;
//! - [`Gateway`]: builds the service from its configuration (`orders run
//!   --role gateway` and the tests start it the same way).
//!
//! It knows nothing of orders, events or the platform's database: it depends
//! on no workspace crate but the shared plumbing, and the platform reaches it
//! over HTTP only.

pub mod ledger;
pub mod routes;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How the gateway runs.
#[derive(Clone)]
pub struct GatewayConfig {
    /// Where to listen; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Its own database, created when missing.
    pub database_url: String,
    pub pool_size: u32,
    /// How long a `tok_slow` charge takes to answer.
    pub slow_answer: Duration,
}

impl std::fmt::Debug for GatewayConfig {
    // The URL may hold a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("listen", &self.listen)
            .field("pool_size", &self.pool_size)
            .field("slow_answer", &self.slow_answer)
            .finish_non_exhaustive()
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            database_url: "postgres://127.0.0.1:5432/payment_gateway".into(),
            pool_size: 8,
            slow_answer: Duration::from_secs(3),
        }
    }
}

/// The gateway's schema migrations.
pub fn migrator() -> sqlx::migrate::Migrator {
    sqlx::migrate!("./migrations")
}

/// A bound, ready-to-run gateway.
pub struct Gateway {
    listener: TcpListener,
    pool: PgPool,
    config: GatewayConfig,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Connects to the gateway's database (creating it if the server has
    /// none of that name), applies its migrations and binds the listener.
    pub async fn build(config: GatewayConfig) -> anyhow::Result<Self> {
        let pool = connect(&config.database_url, config.pool_size).await?;
        migrator().run(&pool).await?;
        let listener = TcpListener::bind(config.listen).await.map_err(|error| {
            anyhow::anyhow!(
                "the payment gateway cannot listen on {}: {error}",
                config.listen
            )
        })?;
        Ok(Self {
            listener,
            pool,
            config,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Serves until `shutdown` completes. Requests still waiting then (a
    /// `tok_timeout` charge that never answers, a slow one) are answered 503,
    /// so that stopping never hangs.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let stopping = CancellationToken::new();
        let state = routes::State {
            pool: self.pool,
            slow_answer: self.config.slow_answer,
            stopping: stopping.clone(),
        };
        tracing::info!(addr = %self.listener.local_addr()?, "payment gateway listening");
        let stopped = stopping.clone();
        tokio::spawn(async move {
            shutdown.await;
            stopping.cancel();
        });
        axum::serve(self.listener, routes::router(state))
            .with_graceful_shutdown(stopped.cancelled_owned())
            .await
    }
}

/// A pool on `url`, creating the database first if the server lacks it.
/// The server may still be starting (the gateway starting beside it): a
/// connection it refuses is tried again for up to a minute.
pub async fn connect(url: &str, size: u32) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = url.parse()?;
    let options = options.application_name("orders-payment-gateway");
    let open = || {
        PgPoolOptions::new()
            .max_connections(size)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.clone())
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut delay = Duration::from_millis(200);
    loop {
        match open().await {
            Ok(pool) => return Ok(pool),
            Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("3D000") => {
                create_database(&options).await?;
                return Ok(open().await?);
            }
            Err(error) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(%error, "the gateway's database is not reachable yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(error) => {
                return Err(anyhow::Error::from(error)
                    .context("cannot connect to the payment gateway's database"));
            }
        }
    }
}

/// Creates the database `options` names, from the server's `postgres` database.
async fn create_database(options: &PgConnectOptions) -> anyhow::Result<()> {
    let name = options
        .get_database()
        .ok_or_else(|| anyhow::anyhow!("the gateway's database URL names no database"))?
        .to_owned();
    anyhow::ensure!(
        name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "cannot create a database named {name:?}: use letters, digits and '_'"
    );
    let mut admin = options.clone().database("postgres").connect().await?;
    match sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
    {
        Ok(_) => tracing::info!(database = %name, "created the payment gateway's database"),
        // Another process created it at the same moment (42P04; 23505 when
        // both got past the catalog's check together).
        Err(sqlx::Error::Database(error))
            if matches!(error.code().as_deref(), Some("42P04" | "23505")) => {}
        Err(error) => return Err(error.into()),
    }
    admin.close().await?;
    Ok(())
}
