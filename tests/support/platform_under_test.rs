//! The whole platform in this process, built by the same assembly as
//! `orders run` (`orders_cli::assembly`): the HTTP API with GraphQL, the
//! relay, the projection workers and, when asked, the saga orchestrator with
//! the payment gateway service, on databases and Kafka topics of their own.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use orders_cli::Settings;
use orders_cli::assembly::{self, Role, Running};
use platform::testing::{TestDatabase, TestTopics, kafka_brokers};
use saga_orchestrator::driver::Policy;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub struct TestPlatform {
    pub address: SocketAddr,
    /// Where `metrics_listen` serves, when a test set it.
    pub metrics: Option<SocketAddr>,
    /// Sends an administrator's token.
    pub client: reqwest::Client,
    pub pool: PgPool,
    pub topics: TestTopics,
    running: Option<Running>,
    stop: CancellationToken,
    pub database: TestDatabase,
}

/// The payment gateway service of a test platform, in a process role of its
/// own so that a test can stop it (an outage) and start it again.
pub struct TestGateway {
    pub url: String,
    pub address: SocketAddr,
    pub database: TestDatabase,
    running: Option<Running>,
}

/// The settings a test platform runs with: defaults, the test's databases and
/// topics, quick polling, then `extra`.
pub fn settings(
    database: &TestDatabase,
    topics: &TestTopics,
    extra: &[(&str, String)],
) -> Settings {
    let mut env: HashMap<String, String> = [
        ("DATABASE_URL", database.url.clone()),
        ("KAFKA_BROKERS", kafka_brokers()),
        ("ORDERS_LISTEN", "127.0.0.1:0".into()),
        ("ORDERS_GATEWAY_LISTEN", "127.0.0.1:0".into()),
        // The scraper's port, as a deployment gives one (`metrics`).
        ("ORDERS_METRICS_LISTEN", "127.0.0.1:0".into()),
        ("ORDERS_KAFKA_TOPIC_PREFIX", topics.prefix.clone()),
        ("ORDERS_DATABASE_POOL_SIZE", "30".into()),
        ("ORDERS_RELAY_POLL_INTERVAL_MS", "100".into()),
        ("ORDERS_SAGA_SCAN_INTERVAL_MS", "100".into()),
        // Callers prove who they are with tokens signed by the test secret;
        // rate limits are off unless a test asks for them.
        (
            "ORDERS_AUTH_HS256_SECRET",
            identity::testing::secret().into(),
        ),
        (
            "ORDERS_GATEWAY_TOKEN",
            platform::testing::gateway_token().into(),
        ),
        ("ORDERS_RATE_LIMIT_COMMANDS_PER_SEC", "0".into()),
        ("ORDERS_RATE_LIMIT_GRAPHQL_PER_SEC", "0".into()),
        ("ORDERS_RATE_LIMIT_META_PER_SEC", "0".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
    Settings::load_with_env(None, env).expect("test settings")
}

/// The saga settings that say `policy`.
fn policy_settings(policy: &Policy) -> Vec<(&'static str, String)> {
    let ms = |d: Duration| d.as_millis().to_string();
    vec![
        (
            "ORDERS_SAGA_PAYMENT_DEADLINE_MS",
            ms(policy.payment_deadline),
        ),
        ("ORDERS_SAGA_STEP_DEADLINE_MS", ms(policy.step_deadline)),
        (
            "ORDERS_SAGA_STEP_ATTEMPTS",
            policy.forward_attempts.to_string(),
        ),
        (
            "ORDERS_SAGA_ATTENTION_AFTER",
            policy.attention_after.to_string(),
        ),
        ("ORDERS_SAGA_FIRST_BACKOFF_MS", ms(policy.first_backoff)),
        ("ORDERS_SAGA_MAX_BACKOFF_MS", ms(policy.max_backoff)),
    ]
}

impl TestPlatform {
    /// Every role but the saga and the gateway: orders stay as the tests'
    /// commands leave them.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Like [`start`](Self::start), with `extra` settings (for example rate limits).
    pub async fn start_with(extra: &[(&str, String)]) -> Self {
        let (database, pool) = migrated().await;
        let topics = TestTopics::new();
        let settings = settings(&database, &topics, extra);
        Self::start_roles(
            database,
            pool,
            topics,
            &settings,
            &[Role::Api, Role::Relay, Role::Projections],
        )
        .await
    }

    /// The API alone, with `extra` settings: commands are stored, and
    /// nothing reaches the read side.
    pub async fn start_api_only(extra: &[(&str, String)]) -> Self {
        let (database, pool) = migrated().await;
        let topics = TestTopics::new();
        let settings = settings(&database, &topics, extra);
        Self::start_roles(database, pool, topics, &settings, &[Role::Api]).await
    }

    /// Every role, the saga with `policy` included, and the payment gateway
    /// service (with a database of its own) that the test can inspect.
    pub async fn start_with_saga(policy: Policy) -> (Self, TestGateway) {
        Self::start_with_saga_and(policy, &[]).await
    }

    /// Like [`start_with_saga`](Self::start_with_saga), with `extra` settings.
    pub async fn start_with_saga_and(
        policy: Policy,
        extra: &[(&str, String)],
    ) -> (Self, TestGateway) {
        Self::start_with_saga_seeded(policy, extra, &Seed::default()).await
    }

    /// Like [`start_with_saga_and`](Self::start_with_saga_and), on
    /// databases that hold `seed`'s rows before any role starts: a store
    /// (and sagas and a ledger) written by an earlier release.
    pub async fn start_with_saga_seeded(
        policy: Policy,
        extra: &[(&str, String)],
        seed: &Seed,
    ) -> (Self, TestGateway) {
        let (database, pool) = migrated().await;
        for (table, rows) in &seed.platform {
            insert_rows(&pool, table, rows).await;
        }
        let topics = TestTopics::new();
        let gateway = TestGateway::start(&database, &topics).await;
        if !seed.gateway.is_empty() {
            let gateway_pool = gateway.database.pool(2).await.expect("gateway pool");
            for (table, rows) in &seed.gateway {
                insert_rows(&gateway_pool, table, rows).await;
            }
        }
        let mut all = policy_settings(&policy);
        all.push(("ORDERS_PAYMENT_GATEWAY_URL", gateway.url.clone()));
        all.extend(extra.iter().cloned());
        let settings = settings(&database, &topics, &all);
        let platform = Self::start_roles(
            database,
            pool,
            topics,
            &settings,
            &[Role::Api, Role::Relay, Role::Projections, Role::Saga],
        )
        .await;
        (platform, gateway)
    }

    async fn start_roles(
        database: TestDatabase,
        pool: PgPool,
        topics: TestTopics,
        settings: &Settings,
        roles: &[Role],
    ) -> Self {
        let stop = CancellationToken::new();
        let running = assembly::start(settings, roles, stop.clone())
            .await
            .expect("platform starts");
        Self {
            address: running.api.expect("the API runs"),
            metrics: running.metrics,
            client: identity::testing::admin_client(),
            pool,
            topics,
            running: Some(running),
            stop,
            database,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.address, path)
    }

    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    /// POSTs and returns the JSON answer, asserting the status.
    pub async fn command(&self, path: &str, body: &Value, status: u16) -> Value {
        let response = self.post(path, body).await;
        assert_eq!(response.status(), status, "{path}");
        response.json().await.expect("JSON answer")
    }

    pub async fn create_product(&self, sku: &str, price_cents: i64, stock: i64) {
        self.command(
            "/api/products",
            &json!({"sku": sku, "name": format!("Product {sku}"), "price_cents": price_cents, "currency": "EUR"}),
            201,
        )
        .await;
        if stock > 0 {
            self.command(
                &format!("/api/products/{sku}/stock"),
                &json!({"quantity": stock}),
                202,
            )
            .await;
        }
    }

    /// Runs a GraphQL request and returns the whole response (`data`, `errors`).
    pub async fn graphql(&self, query: &str, variables: Value) -> Value {
        self.client
            .post(self.url("/graphql"))
            .json(&json!({"query": query, "variables": variables}))
            .send()
            .await
            .expect("request sent")
            .json()
            .await
            .expect("JSON answer")
    }

    /// Repeats a GraphQL query until `accept` takes its `data`, for at most
    /// `within`; returns what `accept` returned.
    pub async fn eventually<T>(
        &self,
        query: &str,
        variables: Value,
        within: Duration,
        accept: impl Fn(&Value) -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let response = self.graphql(query, variables.clone()).await;
            assert!(response.get("errors").is_none(), "{response:#}");
            if let Some(found) = accept(&response["data"]) {
                return found;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not within {within:?}: {response:#}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops every role and waits for them.
    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await.expect("roles ended cleanly");
        }
    }
}

impl Drop for TestPlatform {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Rows to write into a test platform's tables before it starts, as JSON
/// objects of column values (`to_jsonb` of a row), table by table in order.
#[derive(Debug, Default)]
pub struct Seed {
    /// The platform's database: `events`, `sagas`, read model tables.
    pub platform: Vec<(String, Vec<Value>)>,
    /// The payment gateway's database: `charges`.
    pub gateway: Vec<(String, Vec<Value>)>,
}

/// Inserts `rows` into `table` in their order, in one statement: the
/// columns the rows name, the table's defaults for the rest.
async fn insert_rows(pool: &PgPool, table: &str, rows: &[Value]) {
    let Some(Value::Object(first)) = rows.first() else {
        return;
    };
    let columns = first
        .keys()
        .map(|column| format!("\"{column}\""))
        .collect::<Vec<_>>()
        .join(", ");
    sqlx::query(&format!(
        "INSERT INTO {table} ({columns})
         SELECT {columns} FROM jsonb_populate_recordset(NULL::{table}, $1)"
    ))
    .bind(Value::Array(rows.to_vec()))
    .execute(pool)
    .await
    .unwrap_or_else(|error| panic!("seeding {table}: {error}"));
    // As a restored dump would: sequences owned by the columns written go on
    // after the largest value seeded.
    for column in first.keys() {
        let sequence: Option<String> = sqlx::query_scalar("SELECT pg_get_serial_sequence($1, $2)")
            .bind(table)
            .bind(column)
            .fetch_one(pool)
            .await
            .expect("a column's sequence");
        if let Some(sequence) = sequence {
            sqlx::query(&format!(
                "SELECT setval($1::regclass, (SELECT max(\"{column}\") FROM {table}))"
            ))
            .bind(&sequence)
            .execute(pool)
            .await
            .unwrap_or_else(|error| panic!("{sequence}: {error}"));
        }
    }
}

/// A fresh platform database with every migration applied.
async fn migrated() -> (TestDatabase, PgPool) {
    platform::telemetry::init_logging(platform::telemetry::LogFormat::Text, "warn,sqlx=error");
    let database = TestDatabase::create().await.expect("test database");
    let pool = database.pool(30).await.expect("pool");
    orders_cli::commands::apply_migrations(&pool)
        .await
        .expect("migrations");
    (database, pool)
}

impl TestGateway {
    /// A gateway service with a fresh database of its own, for the platform
    /// on `platform` and `topics`.
    pub async fn start(platform: &TestDatabase, topics: &TestTopics) -> Self {
        let database = TestDatabase::create().await.expect("gateway database");
        let mut gateway = Self {
            url: String::new(),
            address: SocketAddr::from(([127, 0, 0, 1], 0)),
            database,
            running: None,
        };
        gateway.serve(platform, topics).await;
        gateway
    }

    /// Starts the gateway role, on the port it had before if it ran already.
    async fn serve(&mut self, platform: &TestDatabase, topics: &TestTopics) {
        let extra = [
            ("ORDERS_GATEWAY_LISTEN", self.address.to_string()),
            ("ORDERS_GATEWAY_DATABASE_URL", self.database.url.clone()),
        ];
        let settings = settings(platform, topics, &extra);
        let running = assembly::start(&settings, &[Role::Gateway], CancellationToken::new())
            .await
            .expect("gateway starts");
        self.address = running.gateway.expect("the gateway runs");
        self.url = format!("http://{}", self.address);
        self.running = Some(running);
    }

    /// Stops the gateway: every call to it fails until [`resume`](Self::resume).
    pub async fn outage(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await.expect("gateway stopped cleanly");
        }
    }

    /// Starts the gateway again on the same port and database.
    pub async fn resume(&mut self, platform: &TestPlatform) {
        self.serve(&platform.database, &platform.topics).await;
    }

    /// How the audit and operators' tools reach this gateway.
    pub fn access(&self) -> orders_cli::audit::GatewayAccess {
        orders_cli::audit::GatewayAccess {
            url: self.url.clone(),
            token: platform::testing::gateway_token().into(),
        }
    }

    /// Every charge's status by key (`approved`, `refunded`, `voided`, ...).
    pub async fn charges(&self) -> HashMap<String, String> {
        orders_cli::audit::gateway_charges(&self.access())
            .await
            .expect("the gateway lists its charges")
            .into_iter()
            .map(|(key, charge)| (key, charge.status))
            .collect()
    }

    /// Every authorization's status by key (`authorized`, `voided`, ...).
    pub async fn authorizations(&self) -> HashMap<String, String> {
        orders_cli::audit::gateway_authorizations(&self.access())
            .await
            .expect("the gateway lists its authorizations")
            .into_iter()
            .map(|(key, authorization)| (key, authorization.status))
            .collect()
    }

    /// Keys of what the gateway holds of the customers' money: charges
    /// captured and not refunded, authorizations still held or captured
    /// beyond what they refunded.
    pub async fn captured(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .charges()
            .await
            .into_iter()
            .filter(|(_, status)| status == "approved")
            .map(|(key, _)| key)
            .collect();
        keys.extend(
            orders_cli::audit::gateway_authorizations(&self.access())
                .await
                .expect("the gateway lists its authorizations")
                .into_values()
                .filter(|a| a.status == "authorized" || a.captured_cents > a.refunded_cents)
                .map(|a| a.key),
        );
        keys.sort();
        keys
    }
}
