//! What every request shares (the command bus, the catalogue, readiness)
//! and the configuration it is built from.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use command_bus::dispatch::RetryPolicy;
use command_bus::{Catalog, CommandBus};
use http_edge::auth::{Rate, TrustedProxies};
use identity::Authenticator;
use platform::kafka::KafkaProbe;
use platform::readiness::Readiness;
use sqlx::PgPool;

/// What the API needs to know beyond its database.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Where to listen; port 0 picks a free port.
    pub listen: SocketAddr,
    /// How long idempotency keys are remembered.
    pub idempotency_ttl: Duration,
    /// Requests running longer are answered with 503.
    pub request_timeout: Duration,
    /// Kafka brokers to check in `/readyz`; `None` leaves Kafka out.
    pub kafka_brokers: Option<String>,
    /// How often a command that lost a race is tried before answering 409.
    pub command_attempts: u32,
    /// Append statements in flight at once; concurrent commands beyond that
    /// share a statement and a commit.
    pub append_workers: usize,
    /// Events between two snapshots of an aggregate (0: none); see
    /// `CommandBus::with_snapshots`.
    pub snapshot_every: u64,
    /// Checks the bearer token of every request.
    pub authenticator: Authenticator,
    /// Per-caller rate of REST commands.
    pub command_rate: Rate,
    /// Per-caller rate of GraphQL requests (and WebSocket upgrades and
    /// subscriptions).
    pub graphql_rate: Rate,
    /// Per-caller rate of every other request: health, readiness, metrics,
    /// the OpenAPI document, problem types, unknown routes.
    pub meta_rate: Rate,
    /// Proxies whose `X-Forwarded-For` names the client of a request
    /// without a valid token.
    pub trusted_proxies: TrustedProxies,
    /// Days after their delivery within which units may be returned.
    pub return_window_days: u32,
}

/// The bare API: no authentication, no rate limits. `orders run` configures
/// both from its settings (on by default); embedders must do the same.
impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            idempotency_ttl: Duration::from_secs(24 * 60 * 60),
            request_timeout: Duration::from_secs(30),
            kafka_brokers: None,
            command_attempts: RetryPolicy::default().max_attempts,
            append_workers: command_bus::dispatch::DEFAULT_APPEND_WORKERS,
            snapshot_every: command_bus::dispatch::DEFAULT_SNAPSHOT_EVERY,
            authenticator: Authenticator::disabled(),
            command_rate: Rate::UNLIMITED,
            graphql_rate: Rate::UNLIMITED,
            meta_rate: Rate::UNLIMITED,
            trusted_proxies: TrustedProxies::default(),
            return_window_days: domain::order::RETURN_WINDOW_DAYS,
        }
    }
}

/// Shared by every request.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    bus: CommandBus,
    catalog: Catalog,
    idempotency_ttl: Duration,
    readiness: Readiness,
    return_window_days: u32,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

impl AppState {
    pub fn new(pool: PgPool, config: &ApiConfig) -> anyhow::Result<Self> {
        // Install the metrics recorder before the first request records anything.
        platform::telemetry::metrics();
        let kafka = config
            .kafka_brokers
            .as_deref()
            .map(KafkaProbe::new)
            .transpose()?;
        Ok(Self(Arc::new(Inner {
            bus: CommandBus::new(pool.clone())
                .with_retry(RetryPolicy {
                    max_attempts: config.command_attempts.max(1),
                    ..RetryPolicy::default()
                })
                .with_append_workers(config.append_workers)
                .with_snapshots(config.snapshot_every),
            readiness: Readiness::new(Some(pool.clone()), kafka, false),
            catalog: Catalog::new(pool),
            idempotency_ttl: config.idempotency_ttl,
            return_window_days: config.return_window_days,
        })))
    }

    pub fn bus(&self) -> &CommandBus {
        &self.0.bus
    }

    pub fn catalog(&self) -> &Catalog {
        &self.0.catalog
    }

    pub fn idempotency_ttl(&self) -> Duration {
        self.0.idempotency_ttl
    }

    /// Days after their delivery within which units may be returned.
    pub fn return_window_days(&self) -> u32 {
        self.0.return_window_days
    }

    /// What `/readyz` checks.
    pub fn readiness(&self) -> &Readiness {
        &self.0.readiness
    }
}
