//! Starting the platform for end-to-end tests: a throwaway database, the real
//! application on a free port, and an HTTP client pointed at it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test support: a panic is the failure report.

pub mod browser;
mod platform_under_test;
pub mod tools;
pub mod websocket;

pub use platform_under_test::{Seed, TestGateway, TestPlatform, settings};

/// A saga policy for tests: a payment in doubt after 2 s, retries from 20 ms
/// backing off to 200 ms.
pub fn quick_policy() -> saga_orchestrator::driver::Policy {
    saga_orchestrator::driver::Policy {
        payment_deadline: std::time::Duration::from_secs(2),
        first_backoff: std::time::Duration::from_millis(20),
        max_backoff: std::time::Duration::from_millis(200),
        ..saga_orchestrator::driver::Policy::default()
    }
}

/// Writes the event of `envelope` (as [`product_envelope`] makes it) into
/// the store under its own id: published before the store a consumer reads
/// showed it (a replica that lagged), it was refused; now it is there.
pub async fn store_envelope(pool: &sqlx::PgPool, envelope: &str) {
    let envelope: serde_json::Value = serde_json::from_str(envelope).expect("an envelope");
    let event_type = envelope["event_type"].as_str().expect("event_type");
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                             payload, metadata, event_id)
         VALUES ($1, $2, $3, $4, $5, $6::json, $7::json, $8::uuid)",
    )
    .bind(envelope["aggregate_type"].as_str())
    .bind(envelope["aggregate_id"].as_str())
    .bind(envelope["sequence"].as_i64())
    .bind(event_type)
    .bind(envelope["event_version"].as_str())
    .bind(serde_json::json!({ event_type: envelope["payload"] }).to_string())
    .bind(envelope["metadata"].to_string())
    .bind(envelope["event_id"].as_str())
    .execute(pool)
    .await
    .expect("the event is stored");
}

/// A message as the relay publishes it, for an event of a product that the
/// store does not hold: what a forged publication looks like to the
/// consumers (`platform::testing::produce_poison` sends it).
pub fn product_envelope(
    sku: &str,
    sequence: i64,
    event_type: &str,
    payload: serde_json::Value,
) -> String {
    serde_json::json!({
        "event_id": uuid::Uuid::now_v7(),
        "aggregate_type": "Product",
        "aggregate_id": sku,
        "sequence": sequence,
        "global_position": 1_000_000 + sequence,
        "event_type": event_type,
        "event_version": "1.0",
        "recorded_at": chrono::Utc::now(),
        "payload": payload,
        "metadata": {"correlation_id": "dead-letter-test", "causation_id": "dead-letter-test"},
    })
    .to_string()
}

use std::net::SocketAddr;

use command_api::{ApiConfig, Application};
use platform::testing::TestDatabase;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The command API running in this process on 127.0.0.1 and a free port.
pub struct TestApp {
    pub address: SocketAddr,
    pub client: reqwest::Client,
    pub pool: PgPool,
    pub database: TestDatabase,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestApp {
    /// A fresh database, migrated, and the API serving it.
    pub async fn spawn() -> Self {
        let database = TestDatabase::create().await.expect("test database");
        let pool = database.pool(20).await.expect("pool");
        event_store::migrate(&pool).await.expect("migrations");
        Self::serve(database, pool).await
    }

    async fn serve(database: TestDatabase, pool: PgPool) -> Self {
        platform::telemetry::init_logging(platform::telemetry::LogFormat::Text, "warn,sqlx=error");
        let (address, stop, server) = start(pool.clone()).await;
        Self {
            address,
            client: identity::testing::admin_client(),
            pool,
            database,
            stop: Some(stop),
            server: Some(server),
        }
    }

    /// Stops the server abruptly (no draining) and starts a new one, with new
    /// connections, on the same database: nothing in memory survives, as
    /// after a crash. The new server listens on a new port.
    pub async fn restart(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
            let _ = server.await;
        }
        self.pool.close().await;
        self.pool = self.database.pool(20).await.expect("pool");
        let (address, stop, server) = start(self.pool.clone()).await;
        self.address = address;
        self.stop = Some(stop);
        self.server = Some(server);
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

    pub async fn create_product(&self, sku: &str, price_cents: i64) {
        let response = self
            .post(
                "/api/products",
                &json!({"sku": sku, "name": sku, "price_cents": price_cents, "currency": "EUR"}),
            )
            .await;
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    }

    pub async fn event_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

type Server = (
    SocketAddr,
    oneshot::Sender<()>,
    JoinHandle<std::io::Result<()>>,
);

/// Builds the application on a free port and serves it until told to stop.
async fn start(pool: PgPool) -> Server {
    let config = ApiConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        authenticator: identity::Authenticator::new(&identity::AuthConfig {
            hs256_secret: Some(identity::testing::secret().into()),
            ..identity::AuthConfig::default()
        })
        .expect("a valid configuration"),
        ..ApiConfig::default()
    };
    let application = Application::build(&config, pool)
        .await
        .expect("application");
    let address = application.local_addr().expect("address");
    let (stop, stopped) = oneshot::channel();
    let server = tokio::spawn(application.run_until(async {
        stopped.await.ok();
    }));
    (address, stop, server)
}

pub fn order_body(lines: &[(&str, i64)]) -> Value {
    json!({
        "customer_id": "customer-1",
        "lines": lines.iter().map(|(sku, quantity)| json!({"sku": sku, "quantity": quantity})).collect::<Vec<_>>(),
        "payment_method": "tok_visa",
    })
}

/// A command route as the API declares it in its OpenAPI document, which is
/// built from the route declarations themselves: tests that must reach
/// every route take them from here, never from a list of their own.
#[derive(Debug, Clone)]
pub struct DeclaredRoute {
    /// `POST`, ...
    pub method: String,
    /// The path with its `{parameters}`.
    pub template: String,
    /// The scopes of which any one lets a caller in.
    pub scopes: Vec<String>,
}

impl DeclaredRoute {
    /// The path with every parameter filled by `fill(name)`.
    pub fn path_with(&self, fill: impl Fn(&str) -> String) -> String {
        let mut path = String::new();
        let mut rest = self.template.as_str();
        while let Some(open) = rest.find('{') {
            let close = rest[open..].find('}').expect("a closed parameter") + open;
            path.push_str(&rest[..open]);
            path.push_str(&fill(&rest[open + 1..close]));
            rest = &rest[close + 1..];
        }
        path.push_str(rest);
        path
    }

    /// The path with an existing product's SKU (`MUG`) and fresh ids.
    pub fn path(&self) -> String {
        self.path_with(|name| match name {
            "sku" => "MUG".to_owned(),
            _ => uuid::Uuid::now_v7().to_string(),
        })
    }

    /// Whether a caller holding `scope` (space-separated) gets in.
    pub fn admits(&self, scope: &str) -> bool {
        scope
            .split_whitespace()
            .any(|held| self.scopes.iter().any(|needed| needed == held))
    }
}

/// Every operation of the command API's OpenAPI document.
pub fn declared_routes() -> Vec<DeclaredRoute> {
    let document = serde_json::to_value(command_api::openapi()).expect("the document");
    let mut routes = Vec::new();
    for (template, item) in document["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("a path item") {
            let Some(security) = operation.get("security") else {
                panic!("{method} {template} declares no security requirement");
            };
            let scopes = security
                .as_array()
                .expect("requirements")
                .iter()
                .flat_map(|requirement| requirement["bearer"].as_array().cloned())
                .flatten()
                .map(|scope| scope.as_str().expect("a scope").to_owned())
                .collect();
            routes.push(DeclaredRoute {
                method: method.to_uppercase(),
                template: template.clone(),
                scopes,
            });
        }
    }
    routes
}
