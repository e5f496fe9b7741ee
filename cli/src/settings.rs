//! The platform's configuration: defaults, then an optional TOML file, then
//! environment variables (`DATABASE_URL`, `KAFKA_BROKERS`, and `ORDERS_<KEY>`
//! for every other key, such as `ORDERS_LISTEN=0.0.0.0:8080`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use config::{Config, Environment, File, FileFormat};
use platform::telemetry::LogFormat;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// Everything a process of the platform can be told.
#[derive(Debug, Deserialize)]
pub struct Settings {
    /// PostgreSQL, for example `postgres://user:password@host:5432/orders`.
    /// Kept secret: it may hold a password.
    pub database_url: SecretString,
    /// Connections each process keeps open to PostgreSQL.
    pub database_pool_size: u32,
    /// Seconds a request waits for a free connection before it fails.
    pub database_acquire_timeout_secs: u64,
    /// Comma-separated `host:port` list.
    pub kafka_brokers: String,
    /// Where the HTTP API listens.
    pub listen: SocketAddr,
    /// In a process without the API role, serve `/metrics` and `/healthz`
    /// here (empty: not at all; the API serves them itself).
    pub metrics_listen: String,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// A `tracing` filter, used when `RUST_LOG` is not set.
    pub log_filter: String,
    /// Where to send traces, over OTLP/HTTP (`http://127.0.0.1:4318`;
    /// empty: nowhere). Spans get trace ids either way, and log lines name them.
    pub otlp_endpoint: String,
    /// `service.name` of this process's spans (empty: `orders`, or
    /// `orders-<role>` for a process of one role, `payment-gateway` for the
    /// gateway alone).
    pub otlp_service_name: String,
    /// Share of new traces kept, from 0 to 1; a request with a `traceparent`
    /// follows its caller's decision.
    pub trace_sample_ratio: f64,
    /// How long idempotency keys are remembered.
    pub idempotency_ttl_secs: u64,
    /// Requests running longer are answered with 503.
    pub request_timeout_secs: u64,
    /// How often a command that lost a race for an aggregate is tried before
    /// the API answers 409.
    pub command_attempts: u32,
    /// Append statements in flight at once; concurrent commands beyond that
    /// share one statement and one commit.
    pub append_workers: usize,
    /// Events between two snapshots of an aggregate (0: no snapshots): a
    /// command loads the newest snapshot and fewer than this many events.
    pub snapshot_every: u64,
    /// Put before every topic and consumer group name (empty: the contract's
    /// names, `orders.events` ...).
    pub kafka_topic_prefix: String,
    /// Names this host in the consumer groups' static member ids, so that a
    /// restarted process takes its partitions back at once (empty: the host
    /// name; `off`: dynamic membership, a rebalance on every restart).
    pub kafka_instance_id: String,
    /// How long a consumer group waits for a silent member before it gives
    /// that member's partitions to the others.
    pub kafka_session_timeout_ms: u64,
    /// Partitions of the topics the platform creates.
    pub kafka_partitions: i32,
    /// Replication factor of the topics the platform creates.
    pub kafka_replication: i32,
    /// Events the relay publishes per round.
    pub relay_batch_size: i64,
    /// Milliseconds the relay waits for a commit notification before looking anyway.
    pub relay_poll_interval_ms: u64,
    /// Messages a projection applies in one transaction at most.
    pub projection_batch_size: usize,
    /// Milliseconds the payment gateway has to answer a charge, retries included.
    pub saga_payment_deadline_ms: u64,
    /// Milliseconds any other saga step may take.
    pub saga_step_deadline_ms: u64,
    /// Failures in a row of a forward saga step before it is undone.
    pub saga_step_attempts: u32,
    /// Failures in a row of an undo before the saga is flagged as needing attention.
    pub saga_attention_after: u32,
    /// First wait in milliseconds before a failed saga step is tried again;
    /// it doubles with every failure up to `saga_max_backoff_ms`.
    pub saga_first_backoff_ms: u64,
    pub saga_max_backoff_ms: u64,
    /// Milliseconds between looks for sagas with work due (retries, and sagas
    /// a stopped process left).
    pub saga_scan_interval_ms: u64,
    /// Milliseconds between looks in the store for placed orders whose saga
    /// never started (their message lost).
    pub saga_sweep_interval_ms: u64,
    /// Milliseconds a placement waits for its message before the sweep
    /// starts its saga.
    pub saga_sweep_grace_ms: u64,
    /// Sagas one process drives at once.
    pub saga_concurrency: usize,
    /// The payment gateway the saga charges through. Empty: the gateway
    /// service at `gateway_listen` (this process's own with `--role all`).
    pub payment_gateway_url: String,
    /// Milliseconds one request to the gateway may take.
    pub payment_gateway_timeout_ms: u64,
    /// Where the payment gateway service listens (`--role gateway`).
    pub gateway_listen: SocketAddr,
    /// The gateway service's own database, created when missing. Empty: the
    /// database `payment_gateway` on the server of `database_url`.
    pub gateway_database_url: SecretString,
    /// Milliseconds a `tok_slow` charge takes to answer.
    pub gateway_slow_answer_ms: u64,
    /// The token the saga sends the payment gateway and the gateway
    /// requires (at least 32 bytes): only the saga may call it. Kept secret.
    pub gateway_token: SecretString,
    /// Host names (comma-separated, without ports) the gateway answers to;
    /// others get 421. Empty: 127.0.0.1, localhost, ::1 and its listening
    /// address. Set it to the name the saga reaches it by (a service name).
    pub gateway_hosts: String,
    /// Charges the gateway holds at once while their card network is slow
    /// or silent (`tok_slow`, `tok_timeout`); more are answered 503.
    pub gateway_max_held: usize,
    /// Seconds a charge whose card network never answers is held before 504.
    pub gateway_hold_secs: u64,
    /// Seconds a `tok_expiring` authorization holds before it expires.
    pub gateway_authorization_ttl_secs: u64,
    /// Days after their delivery within which units may be returned.
    pub return_window_days: u32,
    /// HS256 secret that signs callers' tokens (development and tests; at
    /// least 32 bytes). Kept secret.
    pub auth_hs256_secret: SecretString,
    /// An identity provider's JWKS URL (RS256/ES256 keys), instead of a secret.
    pub auth_jwks_url: String,
    /// Checked against the tokens' `iss` when not empty.
    pub auth_issuer: String,
    /// Checked against the tokens' `aud` when not empty.
    pub auth_audience: String,
    /// Shortest time in seconds between two fetches of the JWKS.
    pub auth_jwks_min_refetch_secs: u64,
    /// Seconds between two fetches of the JWKS in the background.
    pub auth_jwks_refresh_secs: u64,
    /// Seconds a JWKS is trusted since it was last fetched; past them,
    /// while the provider cannot be reached, tokens get 503.
    pub auth_jwks_max_key_age_secs: u64,
    /// The claim that grants `admin`: `scope` for the platform's own HS256
    /// tokens; with a JWKS it must name one the provider's administrators
    /// assign (`roles`, `groups`, `realm_access.roles`, a namespaced claim).
    pub auth_admin_claim: String,
    /// The value of that claim that grants `admin`.
    pub auth_admin_value: String,
    /// Every caller is an administrator. Only for a trusted network.
    pub auth_disabled: bool,
    /// Per-caller REST command rate (requests per second; 0 switches it off)
    /// and burst.
    pub rate_limit_commands_per_sec: u32,
    pub rate_limit_commands_burst: u32,
    /// Per-caller GraphQL rate (requests and WebSocket upgrades per second;
    /// 0 switches it off) and burst.
    pub rate_limit_graphql_per_sec: u32,
    pub rate_limit_graphql_burst: u32,
    /// Per-caller rate of every other request on the API's port (health,
    /// readiness, metrics, documents, unknown routes; 0 switches it off)
    /// and burst.
    pub rate_limit_meta_per_sec: u32,
    pub rate_limit_meta_burst: u32,
    /// Proxies (addresses or networks, comma-separated) whose
    /// `X-Forwarded-For` names the client; empty believes no such header.
    pub trusted_proxies: String,
    /// Operations in one batched GraphQL request.
    pub graphql_max_batch: usize,
    /// Fields one GraphQL document may select, and aliases among them.
    pub graphql_max_fields: usize,
    pub graphql_max_aliases: usize,
    /// Root fields of one GraphQL operation (each runs its own statement).
    pub graphql_max_root_fields: usize,
    /// Open subscription connections in all, and per caller.
    pub ws_max_connections: usize,
    pub ws_max_connections_per_caller: usize,
    /// Subscriptions one connection may run.
    pub ws_max_subscriptions: usize,
    /// Seconds a subscription connection may stay silent (no message, not
    /// even a ping) before it is closed.
    pub ws_idle_timeout_secs: u64,
    /// Seconds a subscription connection has to send `connection_init` with
    /// a valid token.
    pub ws_init_timeout_secs: u64,
    /// Milliseconds a query with `afterPosition` waits at most for the read
    /// models to apply it.
    pub graphql_after_position_wait_ms: u64,
    /// Queries waiting for `afterPosition` at once (more are refused at once).
    pub graphql_after_position_waiters: usize,
    /// Queries of one caller waiting for `afterPosition` at once.
    pub graphql_after_position_waiters_per_caller: usize,
    /// Subscription connections of one address not signed in yet.
    pub ws_max_unsigned_per_address: usize,
    /// Origins (comma-separated, such as `https://shop.example`) of other
    /// sites whose pages may open a subscription connection; a page of this
    /// host's own always may.
    pub ws_allowed_origins: String,
}

impl Settings {
    /// Loads the settings from the process's environment. `file` must exist
    /// when given; without it, `orders.toml` in the working directory is read
    /// if present.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        Self::load_with_env(file, std::env::vars().collect())
    }

    /// Loads the settings with `env` standing for the environment.
    pub fn load_with_env(
        file: Option<&Path>,
        env: HashMap<String, String>,
    ) -> anyhow::Result<Self> {
        let source = match file {
            Some(path) => File::from(path).format(FileFormat::Toml).required(true),
            None => File::with_name("orders.toml")
                .format(FileFormat::Toml)
                .required(false),
        };
        Config::builder()
            .set_default("database_url", "postgres://127.0.0.1:5432/orders")?
            .set_default("database_pool_size", 32)?
            .set_default("database_acquire_timeout_secs", 10)?
            .set_default("kafka_brokers", "127.0.0.1:9092")?
            .set_default("listen", "127.0.0.1:8080")?
            .set_default("metrics_listen", "")?
            .set_default("log_format", "text")?
            .set_default("log_filter", "info,sqlx=warn")?
            .set_default("otlp_endpoint", "")?
            .set_default("otlp_service_name", "")?
            .set_default("trace_sample_ratio", 1.0)?
            .set_default("idempotency_ttl_secs", 24 * 60 * 60)?
            .set_default("request_timeout_secs", 30)?
            .set_default("command_attempts", 10)?
            .set_default("append_workers", 2)?
            .set_default(
                "snapshot_every",
                command_bus::dispatch::DEFAULT_SNAPSHOT_EVERY,
            )?
            .set_default("kafka_topic_prefix", "")?
            .set_default("kafka_instance_id", "")?
            .set_default("kafka_session_timeout_ms", 10_000)?
            .set_default("kafka_partitions", 3)?
            .set_default("kafka_replication", 1)?
            .set_default("relay_batch_size", 2000)?
            .set_default("relay_poll_interval_ms", 500)?
            .set_default("projection_batch_size", 2000)?
            .set_default("saga_payment_deadline_ms", 10_000)?
            .set_default("saga_step_deadline_ms", 10_000)?
            .set_default("saga_step_attempts", 5)?
            .set_default("saga_attention_after", 5)?
            .set_default("saga_first_backoff_ms", 50)?
            .set_default("saga_max_backoff_ms", 30_000)?
            .set_default("saga_scan_interval_ms", 500)?
            .set_default("saga_sweep_interval_ms", 30_000)?
            .set_default("saga_sweep_grace_ms", 60_000)?
            .set_default("saga_concurrency", 256)?
            .set_default("payment_gateway_url", "")?
            .set_default("payment_gateway_timeout_ms", 5_000)?
            .set_default("gateway_listen", "127.0.0.1:8081")?
            .set_default("gateway_database_url", "")?
            .set_default("gateway_slow_answer_ms", 3_000)?
            .set_default("gateway_token", "")?
            .set_default("gateway_hosts", "")?
            .set_default("gateway_max_held", 64)?
            .set_default("gateway_hold_secs", 30)?
            .set_default("gateway_authorization_ttl_secs", 5)?
            .set_default("return_window_days", 30)?
            .set_default("auth_hs256_secret", "")?
            .set_default("auth_jwks_url", "")?
            .set_default("auth_issuer", "")?
            .set_default("auth_audience", "")?
            .set_default("auth_jwks_min_refetch_secs", 10)?
            .set_default("auth_jwks_refresh_secs", 300)?
            .set_default("auth_jwks_max_key_age_secs", 3600)?
            .set_default("auth_admin_claim", "")?
            .set_default("auth_admin_value", "admin")?
            .set_default("auth_disabled", false)?
            .set_default("rate_limit_commands_per_sec", 20)?
            .set_default("rate_limit_commands_burst", 40)?
            .set_default("rate_limit_graphql_per_sec", 50)?
            .set_default("rate_limit_graphql_burst", 100)?
            .set_default("rate_limit_meta_per_sec", 20)?
            .set_default("rate_limit_meta_burst", 40)?
            .set_default("trusted_proxies", "")?
            .set_default("graphql_max_batch", 10)?
            .set_default("graphql_max_fields", 500)?
            .set_default("graphql_max_aliases", 30)?
            .set_default("graphql_max_root_fields", 10)?
            .set_default("ws_max_connections", 1_000)?
            .set_default("ws_max_connections_per_caller", 5)?
            .set_default("ws_max_subscriptions", 20)?
            .set_default("ws_idle_timeout_secs", 120)?
            .set_default("ws_init_timeout_secs", 10)?
            .set_default("graphql_after_position_wait_ms", 5_000)?
            .set_default("graphql_after_position_waiters", 1_000)?
            .set_default("graphql_after_position_waiters_per_caller", 10)?
            .set_default("ws_max_unsigned_per_address", 4)?
            .set_default("ws_allowed_origins", "")?
            .add_source(source)
            .add_source(
                Environment::with_prefix("ORDERS")
                    .try_parsing(true)
                    .source(Some(env.clone().into_iter().collect())),
            )
            .set_override_option("database_url", env.get("DATABASE_URL").cloned())?
            .set_override_option("kafka_brokers", env.get("KAFKA_BROKERS").cloned())?
            .build()
            .context("reading configuration")?
            .try_deserialize::<Self>()
            .context("invalid configuration")?
            .checked()
    }

    /// Refuses settings no broker or process would work with.
    fn checked(self) -> anyhow::Result<Self> {
        if !self.otlp_endpoint.trim().is_empty() {
            platform::telemetry::traces_url(&self.otlp_endpoint)?;
        }
        let wait = self.graphql_after_position_wait_ms;
        anyhow::ensure!(
            (1..=60_000).contains(&wait),
            "graphql_after_position_wait_ms is {wait}: between 1 and 60000"
        );
        let ratio = self.trace_sample_ratio;
        anyhow::ensure!(
            (0.0..=1.0).contains(&ratio),
            "trace_sample_ratio is {ratio}: between 0 and 1"
        );
        // What brokers accept unless told otherwise (group.min/max.session.timeout.ms);
        // outside it a consumer's join is refused and it never gets a partition.
        let session = self.kafka_session_timeout_ms;
        anyhow::ensure!(
            (6_000..=1_800_000).contains(&session),
            "kafka_session_timeout_ms is {session}: between 6000 and 1800000, the range brokers accept by default"
        );
        // Brokers take an instance id of these characters only.
        let instance = self.kafka_instance_id.trim();
        anyhow::ensure!(
            instance.len() <= 200
                && instance
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')),
            "kafka_instance_id is {instance:?}: at most 200 of a-z, A-Z, 0-9, '.', '_' and '-' (or off)"
        );
        Ok(self)
    }

    /// Where this process's traces go; `roles` name the process.
    pub fn tracing(&self, roles: &[crate::assembly::Role]) -> platform::telemetry::Tracing {
        use crate::assembly::Role;
        let service_name = match (self.otlp_service_name.trim(), roles) {
            (name, _) if !name.is_empty() => name.to_owned(),
            (_, [Role::Gateway]) => "payment-gateway".to_owned(),
            (_, [one]) if *one != Role::All => format!(
                "orders-{}",
                clap::ValueEnum::to_possible_value(one)
                    .map_or_else(|| "orders".to_owned(), |value| value.get_name().to_owned())
            ),
            _ => "orders".to_owned(),
        };
        let endpoint = self.otlp_endpoint.trim();
        platform::telemetry::Tracing {
            otlp_endpoint: (!endpoint.is_empty()).then(|| endpoint.to_owned()),
            service_name,
            sample_ratio: self.trace_sample_ratio,
        }
    }

    pub fn api(&self) -> anyhow::Result<command_api::ApiConfig> {
        for (name, rate) in [
            (
                "rate_limit_commands_per_sec",
                self.rate_limit_commands_per_sec,
            ),
            (
                "rate_limit_graphql_per_sec",
                self.rate_limit_graphql_per_sec,
            ),
            ("rate_limit_meta_per_sec", self.rate_limit_meta_per_sec),
        ] {
            // Beyond this a bucket's period rounds to nothing.
            anyhow::ensure!(
                rate <= 1_000_000,
                "{name} is {rate}: at most 1,000,000 per second, or 0 to switch the limit off"
            );
        }
        Ok(command_api::ApiConfig {
            listen: self.listen,
            idempotency_ttl: Duration::from_secs(self.idempotency_ttl_secs),
            request_timeout: Duration::from_secs(self.request_timeout_secs),
            kafka_brokers: Some(self.kafka_brokers.clone()),
            command_attempts: self.command_attempts,
            append_workers: self.append_workers,
            snapshot_every: self.snapshot_every,
            authenticator: self.authenticator()?,
            command_rate: http_edge::auth::Rate {
                per_second: self.rate_limit_commands_per_sec,
                burst: self.rate_limit_commands_burst,
            },
            graphql_rate: http_edge::auth::Rate {
                per_second: self.rate_limit_graphql_per_sec,
                burst: self.rate_limit_graphql_burst,
            },
            meta_rate: http_edge::auth::Rate {
                per_second: self.rate_limit_meta_per_sec,
                burst: self.rate_limit_meta_burst,
            },
            trusted_proxies: http_edge::auth::TrustedProxies::parse(&self.trusted_proxies)
                .map_err(|error| anyhow::anyhow!("trusted_proxies: {error}"))?,
            return_window_days: self.return_window_days,
        })
    }

    /// How the API checks its callers.
    pub fn authenticator(&self) -> anyhow::Result<identity::Authenticator> {
        identity::Authenticator::new(&identity::AuthConfig {
            hs256_secret: Some(self.auth_hs256_secret.expose_secret().to_owned()),
            jwks_url: Some(self.auth_jwks_url.clone()),
            issuer: Some(self.auth_issuer.clone()),
            audience: Some(self.auth_audience.clone()),
            jwks_min_refetch: Duration::from_secs(self.auth_jwks_min_refetch_secs),
            jwks_refresh: Duration::from_secs(self.auth_jwks_refresh_secs.max(1)),
            jwks_max_key_age: Duration::from_secs(self.auth_jwks_max_key_age_secs.max(1)),
            admin_claim: Some(self.auth_admin_claim.clone()),
            admin_value: Some(self.auth_admin_value.clone()),
            disabled: self.auth_disabled,
        })
        .map_err(anyhow::Error::new)
    }

    /// The GraphQL endpoint's limits.
    pub fn graphql_limits(&self) -> query_api::limits::GraphqlLimits {
        query_api::limits::GraphqlLimits {
            body_bytes: http_edge::extract::BODY_LIMIT,
            batch: self.graphql_max_batch.max(1),
            fields: self.graphql_max_fields,
            aliases: self.graphql_max_aliases,
            root_fields: self.graphql_max_root_fields.max(1),
            ws_connections: self.ws_max_connections,
            ws_connections_per_caller: self.ws_max_connections_per_caller,
            ws_subscriptions: self.ws_max_subscriptions,
            ws_idle_timeout: Duration::from_secs(self.ws_idle_timeout_secs.max(1)),
            ws_init_timeout: Duration::from_secs(self.ws_init_timeout_secs.max(1)),
            after_position_wait: Duration::from_millis(self.graphql_after_position_wait_ms),
            after_position_waiters: self.graphql_after_position_waiters,
            after_position_waiters_per_caller: self.graphql_after_position_waiters_per_caller,
            ws_unsigned_per_address: self.ws_max_unsigned_per_address.max(1),
        }
    }

    /// Who may open GraphQL subscription connections, beyond their tokens.
    pub fn graphql_access(&self) -> anyhow::Result<query_api::http::Access> {
        Ok(query_api::http::Access {
            proxies: http_edge::auth::TrustedProxies::parse(&self.trusted_proxies)
                .map_err(|error| anyhow::anyhow!("trusted_proxies: {error}"))?,
            allowed_origins: self
                .ws_allowed_origins
                .split(',')
                .map(str::trim)
                .filter(|origin| !origin.is_empty())
                .map(str::to_owned)
                .collect(),
        })
    }

    pub fn relay(&self) -> relay::RelayConfig {
        relay::RelayConfig {
            brokers: self.kafka_brokers.clone(),
            topics: event_contract::Topics::with_prefix(&self.kafka_topic_prefix),
            partitions: self.kafka_partitions,
            replication: self.kafka_replication,
            batch_size: self.relay_batch_size,
            poll_interval: Duration::from_millis(self.relay_poll_interval_ms),
            ..relay::RelayConfig::default()
        }
    }

    pub fn saga(&self) -> saga_orchestrator::orchestrator::OrchestratorConfig {
        saga_orchestrator::orchestrator::OrchestratorConfig {
            brokers: self.kafka_brokers.clone(),
            topics: event_contract::Topics::with_prefix(&self.kafka_topic_prefix),
            group_prefix: self.kafka_topic_prefix.clone(),
            partitions: self.kafka_partitions,
            replication: self.kafka_replication,
            policy: saga_orchestrator::driver::Policy {
                payment_deadline: Duration::from_millis(self.saga_payment_deadline_ms),
                step_deadline: Duration::from_millis(self.saga_step_deadline_ms),
                forward_attempts: self.saga_step_attempts,
                attention_after: self.saga_attention_after,
                first_backoff: Duration::from_millis(self.saga_first_backoff_ms),
                max_backoff: Duration::from_millis(self.saga_max_backoff_ms),
            },
            scan_interval: Duration::from_millis(self.saga_scan_interval_ms.max(1)),
            concurrency: self.saga_concurrency,
            snapshot_every: self.snapshot_every,
            membership: self.kafka_membership(),
            sweep_interval: Duration::from_millis(self.saga_sweep_interval_ms.max(1)),
            sweep_grace: Duration::from_millis(self.saga_sweep_grace_ms),
        }
    }

    /// The saga's client of the gateway at `base_url` (see
    /// [`payment_gateway_url`](Self::payment_gateway_url)).
    pub fn payment_gateway(
        &self,
        base_url: String,
    ) -> saga_orchestrator::gateway::http::HttpGatewayConfig {
        saga_orchestrator::gateway::http::HttpGatewayConfig {
            base_url,
            token: self.gateway_token.expose_secret().to_owned(),
            request_timeout: Duration::from_millis(self.payment_gateway_timeout_ms),
            ..saga_orchestrator::gateway::http::HttpGatewayConfig::default()
        }
    }

    /// Where the saga reaches the gateway: `payment_gateway_url`, or the
    /// gateway service at `gateway` (this process's, or `gateway_listen`).
    pub fn payment_gateway_url(&self, gateway: Option<SocketAddr>) -> String {
        if !self.payment_gateway_url.is_empty() {
            return self.payment_gateway_url.clone();
        }
        let address = gateway.unwrap_or(self.gateway_listen);
        let ip = match address.ip() {
            ip if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
            ip => ip,
        };
        format!("http://{}", SocketAddr::new(ip, address.port()))
    }

    /// The payment gateway service (`--role gateway`).
    pub fn gateway(&self) -> payment_gateway::GatewayConfig {
        let database_url = match self.gateway_database_url.expose_secret() {
            "" => platform::postgres::with_database(
                self.database_url.expose_secret(),
                "payment_gateway",
            ),
            url => url.to_owned(),
        };
        payment_gateway::GatewayConfig {
            listen: self.gateway_listen,
            database_url,
            pool_size: self.database_pool_size.clamp(2, 16),
            slow_answer: Duration::from_millis(self.gateway_slow_answer_ms),
            token: self.gateway_token.expose_secret().to_owned(),
            hosts: self
                .gateway_hosts
                .split(',')
                .map(str::trim)
                .filter(|host| !host.is_empty())
                .map(str::to_owned)
                .collect(),
            max_held: self.gateway_max_held.max(1),
            hold_for: Duration::from_secs(self.gateway_hold_secs.max(1)),
            authorization_ttl: Duration::from_secs(self.gateway_authorization_ttl_secs.max(1)),
        }
    }

    /// How operators' tools (`orders audit`, `orders status`) read the
    /// gateway's ledger: its URL (see
    /// [`payment_gateway_url`](Self::payment_gateway_url)) and token.
    pub fn gateway_access(&self, gateway: Option<SocketAddr>) -> crate::audit::GatewayAccess {
        crate::audit::GatewayAccess {
            url: self.payment_gateway_url(gateway),
            token: self.gateway_token.expose_secret().to_owned(),
        }
    }

    pub fn projections(&self) -> projections::worker::WorkerConfig {
        projections::worker::WorkerConfig {
            brokers: self.kafka_brokers.clone(),
            topics: event_contract::Topics::with_prefix(&self.kafka_topic_prefix),
            group_prefix: self.kafka_topic_prefix.clone(),
            partitions: self.kafka_partitions,
            replication: self.kafka_replication,
            max_batch: self.projection_batch_size,
            membership: self.kafka_membership(),
        }
    }

    /// How the consumers join their groups: as static members named after
    /// this host unless `kafka_instance_id` is `off`.
    fn kafka_membership(&self) -> platform::kafka::Membership {
        let instance = match self.kafka_instance_id.trim() {
            "off" => None,
            "" => Some(platform::kafka::host_name()),
            name => Some(name.to_owned()),
        };
        platform::kafka::Membership {
            instance,
            session_timeout: Duration::from_millis(self.kafka_session_timeout_ms.max(1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn a_file_overrides_the_defaults_and_secrets_do_not_print() {
        let mut file = tempfile_in_target("settings.toml");
        writeln!(
            file.1,
            r#"
database_url = "postgres://app:s3cret@db:5432/orders"
listen = "0.0.0.0:9000"
log_format = "json"
"#
        )
        .unwrap();
        let settings = Settings::load_with_env(Some(&file.0), HashMap::new()).unwrap();
        assert_eq!(settings.listen, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(settings.log_format, LogFormat::Json);
        assert_eq!(settings.database_pool_size, 32);
        assert!(settings.database_url.expose_secret().contains("s3cret"));
        assert!(!format!("{settings:?}").contains("s3cret"));
    }

    #[test]
    fn the_environment_overrides_the_file() {
        let mut file = tempfile_in_target("env.toml");
        writeln!(file.1, "listen = \"0.0.0.0:9000\"\ndatabase_pool_size = 5").unwrap();
        let env = HashMap::from([
            (
                "DATABASE_URL".to_owned(),
                "postgres://elsewhere/orders".to_owned(),
            ),
            (
                "KAFKA_BROKERS".to_owned(),
                "kafka-1:9092,kafka-2:9092".to_owned(),
            ),
            ("ORDERS_DATABASE_POOL_SIZE".to_owned(), "64".to_owned()),
            ("ORDERS_LOG_FORMAT".to_owned(), "json".to_owned()),
        ]);

        let settings = Settings::load_with_env(Some(&file.0), env).unwrap();

        assert_eq!(
            settings.database_url.expose_secret(),
            "postgres://elsewhere/orders"
        );
        assert_eq!(settings.kafka_brokers, "kafka-1:9092,kafka-2:9092");
        assert_eq!(settings.database_pool_size, 64);
        assert_eq!(settings.log_format, LogFormat::Json);
        assert_eq!(settings.listen, "0.0.0.0:9000".parse().unwrap());
    }

    #[test]
    fn api_settings_that_cannot_work_are_refused_with_their_name() {
        let with = |key: &str, value: &str| {
            let env = HashMap::from([
                (key.to_owned(), value.to_owned()),
                ("ORDERS_AUTH_HS256_SECRET".to_owned(), "x".repeat(40)),
            ]);
            Settings::load_with_env(None, env).unwrap().api()
        };
        let error = with("ORDERS_RATE_LIMIT_COMMANDS_PER_SEC", "2000000000").unwrap_err();
        assert!(
            error.to_string().contains("rate_limit_commands_per_sec"),
            "{error}"
        );
        let error = with("ORDERS_TRUSTED_PROXIES", "10.0.0.0/8, proxy").unwrap_err();
        assert!(error.to_string().contains("trusted_proxies"), "{error}");
        assert!(with("ORDERS_TRUSTED_PROXIES", "10.0.0.0/8, ::1").is_ok());
        assert!(with("ORDERS_RATE_LIMIT_GRAPHQL_PER_SEC", "0").is_ok());
    }

    #[test]
    fn kafka_membership_settings_brokers_would_refuse_are_refused_with_their_name() {
        for bad in ["0", "5999", "1800001"] {
            let env =
                HashMap::from([("ORDERS_KAFKA_SESSION_TIMEOUT_MS".to_owned(), bad.to_owned())]);
            let error = Settings::load_with_env(None, env).unwrap_err();
            assert!(
                format!("{error:#}").contains("kafka_session_timeout_ms"),
                "{error:#}"
            );
        }
        let error = Settings::load_with_env(
            None,
            HashMap::from([("ORDERS_KAFKA_INSTANCE_ID".to_owned(), "box 1/a".to_owned())]),
        )
        .unwrap_err();
        assert!(
            format!("{error:#}").contains("kafka_instance_id"),
            "{error:#}"
        );
        let env = HashMap::from([(
            "ORDERS_KAFKA_SESSION_TIMEOUT_MS".to_owned(),
            "30000".to_owned(),
        )]);
        let settings = Settings::load_with_env(None, env).unwrap();
        assert_eq!(
            settings.saga().membership.session_timeout,
            Duration::from_secs(30)
        );
        assert!(settings.projections().membership.instance.is_some());
    }

    #[test]
    fn a_missing_explicit_file_is_an_error() {
        assert!(Settings::load(Some(Path::new("/nonexistent/orders.toml"))).is_err());
    }

    fn tempfile_in_target(name: &str) -> (std::path::PathBuf, std::fs::File) {
        let dir = std::env::temp_dir().join(format!("orders-settings-{}", uuid_like()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        let file = std::fs::File::create(&path).unwrap();
        (path, file)
    }

    fn uuid_like() -> String {
        format!("{}-{:?}", std::process::id(), std::thread::current().id()).replace(['(', ')'], "")
    }
}
