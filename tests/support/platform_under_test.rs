//! The whole platform in this process: the HTTP API with GraphQL, the relay,
//! the projection workers and, when asked, the saga orchestrator, on a
//! database and Kafka topics of its own.

use std::net::SocketAddr;
use std::time::Duration;

use command_api::{ApiConfig, Application};
use event_store::Topics;
use platform::testing::{TestDatabase, TestTopics, kafka_brokers};
use projections::model::customer_orders::CustomerOrders;
use projections::model::orders::OrderSummary;
use projections::model::products::ProductStock;
use projections::worker::{self, WorkerConfig};
use relay::RelayConfig;
use saga_orchestrator::driver::Policy;
use saga_orchestrator::gateway::Simulator;
use saga_orchestrator::orchestrator::{self, OrchestratorConfig};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub struct TestPlatform {
    pub address: SocketAddr,
    pub client: reqwest::Client,
    pub pool: PgPool,
    pub topics: TestTopics,
    stop: CancellationToken,
    roles: JoinSet<anyhow::Result<()>>,
    pub database: TestDatabase,
}

impl TestPlatform {
    /// Every role but the saga: orders stay as the tests' commands leave them.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// Every role, the saga included, with `policy` and a payment gateway
    /// simulator that the test can inspect.
    pub async fn start_with_saga(policy: Policy) -> (Self, Simulator) {
        let gateway = Simulator::new();
        let platform = Self::start_with(Some((policy, gateway.clone()))).await;
        (platform, gateway)
    }

    async fn start_with(saga: Option<(Policy, Simulator)>) -> Self {
        platform::telemetry::init_logging(platform::telemetry::LogFormat::Text, "warn,sqlx=error");
        let database = TestDatabase::create().await.expect("test database");
        let pool = database.pool(30).await.expect("pool");
        event_store::migrate(&pool)
            .await
            .expect("event store migrations");
        projections::migrate(&pool)
            .await
            .expect("read model migrations");
        saga_orchestrator::migrate(&pool)
            .await
            .expect("saga migrations");
        let topics = TestTopics::new();
        let stop = CancellationToken::new();
        let mut roles = JoinSet::new();

        let updates = projections::graphql::updates::Updates::listen(pool.clone());
        let graphql =
            projections::graphql::router(projections::graphql::schema(pool.clone(), updates));
        let config = ApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..ApiConfig::default()
        };
        let api = Application::build_with(&config, pool.clone(), graphql)
            .await
            .expect("api");
        let address = api.local_addr().expect("address");
        let stopped = stop.clone().cancelled_owned();
        roles.spawn(async move { Ok(api.run_until(stopped).await?) });

        let relay = RelayConfig {
            brokers: kafka_brokers(),
            topics: Topics::with_prefix(&topics.prefix),
            poll_interval: Duration::from_millis(100),
            ..RelayConfig::default()
        };
        roles.spawn(relay::run(
            pool.clone(),
            relay,
            stop.clone().cancelled_owned(),
        ));
        let workers = WorkerConfig {
            brokers: kafka_brokers(),
            topics: Topics::with_prefix(&topics.prefix),
            group_prefix: topics.prefix.clone(),
            ..WorkerConfig::default()
        };
        roles.spawn(worker::run::<OrderSummary>(
            pool.clone(),
            workers.clone(),
            stop.clone().cancelled_owned(),
        ));
        roles.spawn(worker::run::<ProductStock>(
            pool.clone(),
            workers.clone(),
            stop.clone().cancelled_owned(),
        ));
        roles.spawn(worker::run::<CustomerOrders>(
            pool.clone(),
            workers,
            stop.clone().cancelled_owned(),
        ));
        if let Some((policy, gateway)) = saga {
            let config = OrchestratorConfig {
                brokers: kafka_brokers(),
                topics: Topics::with_prefix(&topics.prefix),
                group_prefix: topics.prefix.clone(),
                policy,
                scan_interval: Duration::from_millis(100),
                ..OrchestratorConfig::default()
            };
            roles.spawn(orchestrator::run(
                pool.clone(),
                config,
                gateway,
                stop.clone().cancelled_owned(),
            ));
        }
        Self {
            address,
            client: reqwest::Client::new(),
            pool,
            topics,
            stop,
            roles,
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
        self.stop.cancel();
        while let Some(role) = self.roles.join_next().await {
            role.expect("role did not panic")
                .expect("role ended cleanly");
        }
    }
}

impl Drop for TestPlatform {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
