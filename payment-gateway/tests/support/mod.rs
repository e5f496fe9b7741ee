//! The gateway started for a test, and a client that speaks to it as the
//! saga does.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // Each test file uses part of it.

use std::net::SocketAddr;
use std::time::Duration;

use payment_gateway::{Gateway, GatewayConfig};
use platform::testing::TestDatabase;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub struct Running {
    pub base: String,
    pub client: reqwest::Client,
    stop: CancellationToken,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// The gateway's token in these tests.
pub fn token() -> &'static str {
    platform::testing::gateway_token()
}

pub fn config(database: &TestDatabase, listen: SocketAddr) -> GatewayConfig {
    GatewayConfig {
        listen,
        database_url: database.url.clone(),
        pool_size: 4,
        slow_answer: Duration::from_millis(300),
        token: token().into(),
        ..GatewayConfig::default()
    }
}

/// A client that sends the gateway's token, as the saga does.
pub fn its_client() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {}", token()).parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

impl Running {
    pub async fn start(database: &TestDatabase, listen: SocketAddr) -> Self {
        Self::start_with(config(database, listen)).await
    }

    pub async fn start_with(config: GatewayConfig) -> Self {
        let gateway = Gateway::build(config).await.unwrap();
        let base = format!("http://{}", gateway.local_addr().unwrap());
        let stop = CancellationToken::new();
        let served = tokio::spawn(gateway.run_until(stop.clone().cancelled_owned()));
        Self {
            base,
            client: its_client(),
            stop,
            served,
        }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        self.served.await.unwrap().unwrap();
    }

    pub async fn charge(&self, key: &str, token: &str, amount: i64) -> (u16, Value) {
        let body =
            json!({"key": key, "amount_cents": amount, "currency": "EUR", "payment_method": token});
        let response = self
            .client
            .post(format!("{}/charges", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    pub async fn refund(&self, key: &str) -> Value {
        let response = self
            .client
            .post(format!("{}/charges/{key}/refund", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    pub async fn find(&self, key: &str) -> (u16, Value) {
        let response = self
            .client
            .get(format!("{}/charges/{key}", self.base))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }
}

pub fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

impl Running {
    /// `POST path` with `body` as JSON: the status and the answer.
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    /// `GET path`: the status and the answer.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    pub async fn authorize(&self, key: &str, token: &str, amount: i64) -> (u16, Value) {
        self.post(
            "/authorizations",
            json!({"key": key, "amount_cents": amount, "currency": "EUR", "payment_method": token}),
        )
        .await
    }

    pub async fn capture(&self, authorization: &str, key: &str, amount: i64) -> (u16, Value) {
        self.post(
            &format!("/authorizations/{authorization}/captures"),
            json!({"key": key, "amount_cents": amount}),
        )
        .await
    }

    pub async fn void(&self, authorization: &str) -> (u16, Value) {
        self.post(&format!("/authorizations/{authorization}/void"), json!({}))
            .await
    }

    pub async fn refund_capture(&self, capture: &str, key: &str, amount: i64) -> (u16, Value) {
        self.post(
            &format!("/captures/{capture}/refunds"),
            json!({"key": key, "amount_cents": amount}),
        )
        .await
    }
}
