//! The payment gateway simulator: a service of its own, standing in for a
//! real payment provider, with its own PostgreSQL database, so that a restart
//! forgets no charge.
//!
//! - [`ledger`]: charges, refunds and voids by idempotency key (what the
//!   previous release's sagas call);
//! - [`authorizations`]: authorize, then capture in parts, void the rest,
//!   refund captures in parts, each by idempotency key;
//! - [`routes`]: the HTTP API the saga calls, as it would call a provider;
//! - [`Gateway`]: builds the service from its configuration (`orders run
//!   --role gateway` and the tests start it the same way).
//!
//! It knows nothing of orders, events or the platform's database: it depends
//! on no workspace crate but the shared plumbing, and the platform reaches it
//! over HTTP only.

pub mod authorizations;
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
    /// The bearer token its one client (the saga) sends; every route but
    /// `/healthz` and `/readyz` answers 401 without it. Required.
    pub token: String,
    /// The host names (a `Host` header's name, without its port) the
    /// gateway answers to; any other is answered 421, so that a page that
    /// rebinds its own name to the gateway's address reaches nothing.
    /// Empty: `127.0.0.1`, `localhost`, `::1` and the listening address.
    pub hosts: Vec<String>,
    /// Charges held at once while their card network answers slowly or
    /// never (`tok_slow`, `tok_timeout`); more are answered 503 at once.
    pub max_held: usize,
    /// How long a charge whose card network never answers is held before
    /// it is answered 504.
    pub hold_for: Duration,
    /// How long a `tok_expiring` authorization holds
    /// (`gateway_authorization_ttl_secs`).
    pub authorization_ttl: Duration,
}

impl std::fmt::Debug for GatewayConfig {
    // The URL may hold a password, and the token is a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("listen", &self.listen)
            .field("pool_size", &self.pool_size)
            .field("slow_answer", &self.slow_answer)
            .field("hosts", &self.hosts)
            .field("max_held", &self.max_held)
            .field("hold_for", &self.hold_for)
            .field("authorization_ttl", &self.authorization_ttl)
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
            token: String::new(),
            hosts: Vec::new(),
            max_held: 64,
            hold_for: Duration::from_secs(30),
            authorization_ttl: Duration::from_secs(5),
        }
    }
}

/// Shortest gateway token accepted.
pub const MIN_TOKEN_BYTES: usize = 32;

impl GatewayConfig {
    /// The host names the gateway answers to (see [`hosts`](Self::hosts)).
    fn served_hosts(&self) -> Vec<String> {
        if !self.hosts.is_empty() {
            return self
                .hosts
                .iter()
                .map(|host| normalized_host(host))
                .collect();
        }
        let mut hosts: Vec<String> = ["127.0.0.1", "localhost", "::1"]
            .iter()
            .map(|host| (*host).to_owned())
            .collect();
        if !self.listen.ip().is_unspecified() {
            hosts.push(normalized_host(&self.listen.ip().to_string()));
        }
        hosts
    }
}

/// A host name as `Host` headers are compared: lower case, without the
/// brackets of an IPv6 literal.
fn normalized_host(host: &str) -> String {
    host.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
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
        anyhow::ensure!(
            config.token.len() >= MIN_TOKEN_BYTES,
            "the payment gateway needs a token of at least {MIN_TOKEN_BYTES} bytes \
             (ORDERS_GATEWAY_TOKEN; scripts/up creates a development one): \
             only the saga, which sends it, may call the gateway"
        );
        anyhow::ensure!(
            config.max_held > 0,
            "the gateway must hold at least one charge"
        );
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
            readiness: platform::readiness::Readiness::new(Some(self.pool.clone()), None, false),
            pool: self.pool,
            slow_answer: self.config.slow_answer,
            stopping: stopping.clone(),
            access: routes::Access::new(&self.config.token, self.config.served_hosts()),
            held: std::sync::Arc::new(tokio::sync::Semaphore::new(self.config.max_held)),
            hold_for: self.config.hold_for,
            expiring: self.config.authorization_ttl,
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
    let options = platform::postgres::tuned(options.application_name("orders-payment-gateway"));
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
