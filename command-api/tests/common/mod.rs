//! Calls the API's router directly (no socket) against a real, throwaway
//! PostgreSQL database.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // Shared by several test files.

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use command_api::{ApiConfig, AppState};
use http_body_util::BodyExt;
use platform::testing::TestDatabase;
use serde_json::{Value, json};
use sqlx::PgPool;
use tower::ServiceExt;

pub struct TestApi {
    pub router: Router,
    pub pool: PgPool,
    _database: TestDatabase,
}

#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Answer {
    pub fn content_type(&self) -> &str {
        self.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    /// Asserts a problem+json answer with this status and problem type.
    pub fn assert_problem(&self, status: u16, slug: &str) {
        assert_eq!(self.status.as_u16(), status, "{:#}", self.body);
        assert_eq!(self.content_type(), "application/problem+json");
        assert_eq!(
            self.body["type"],
            format!("/problems/{slug}"),
            "{:#}",
            self.body
        );
        assert_eq!(self.body["status"], status);
        assert!(self.body["title"].as_str().is_some_and(|t| !t.is_empty()));
        assert!(self.body["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }

    /// The `field` of each entry in the problem's `errors`.
    pub fn error_fields(&self) -> Vec<String> {
        self.body["errors"]
            .as_array()
            .map(|errors| {
                errors
                    .iter()
                    .map(|e| e["field"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn etag(&self) -> Option<String> {
        self.headers
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    /// The body without its `position`, after checking that the position is
    /// the header's and names the command's aggregate at `version`.
    pub fn body_at(&self, aggregate_type: &str, aggregate_id: &str, version: u64) -> Value {
        let header = self
            .headers
            .get("x-event-position")
            .and_then(|v| v.to_str().ok())
            .expect("a command's answer names its position");
        assert_eq!(self.body["position"], header, "the body repeats the header");
        let position: event_store::Position = header.parse().unwrap();
        assert_eq!(
            position,
            event_store::Position {
                aggregate_type: aggregate_type.into(),
                aggregate_id: aggregate_id.into(),
                sequence: version,
            }
        );
        let mut body = self.body.clone();
        body.as_object_mut().unwrap().remove("position");
        body
    }
}

impl TestApi {
    pub async fn new() -> Self {
        Self::with_config(ApiConfig::default()).await
    }

    pub async fn with_config(config: ApiConfig) -> Self {
        let database = TestDatabase::create().await.expect("test database");
        let pool = database.pool(10).await.expect("pool");
        event_store::migrate(&pool).await.expect("migrations");
        let state = AppState::new(pool.clone(), &config).expect("state");
        Self {
            router: command_api::router(state, &config, axum::Router::new()).0,
            pool,
            _database: database,
        }
    }

    pub async fn send(&self, request: Request<Body>) -> Answer {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Answer {
            status,
            headers,
            body,
        }
    }

    /// POSTs `body` as JSON with extra headers.
    pub async fn post(&self, path: &str, body: &Value, headers: &[(&str, &str)]) -> Answer {
        let mut request = Request::post(path).header("content-type", "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.send(request.body(Body::from(body.to_string())).unwrap())
            .await
    }

    /// POSTs raw bytes with the given content type (or none).
    pub async fn post_raw(&self, path: &str, content_type: Option<&str>, body: Vec<u8>) -> Answer {
        let mut request = Request::post(path);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        self.send(request.body(Body::from(body)).unwrap()).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send(Request::get(path).body(Body::empty()).unwrap())
            .await
    }

    pub async fn create_product(&self, sku: &str, price_cents: i64, currency: &str) {
        let answer = self
            .post(
                "/api/products",
                &json!({"sku": sku, "name": format!("Product {sku}"), "price_cents": price_cents, "currency": currency}),
                &[],
            )
            .await;
        assert_eq!(answer.status, StatusCode::CREATED, "{:#}", answer.body);
    }

    pub async fn add_stock(&self, sku: &str, quantity: i64) {
        let answer = self
            .post(
                &format!("/api/products/{sku}/stock"),
                &json!({"quantity": quantity}),
                &[],
            )
            .await;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{:#}", answer.body);
    }

    /// Places an order for `lines` (SKU, quantity) and returns its id.
    pub async fn place_order(&self, lines: &[(&str, i64)]) -> String {
        let answer = self.post("/api/orders", &order_body(lines), &[]).await;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{:#}", answer.body);
        answer.body["order_id"].as_str().unwrap().to_owned()
    }

    pub async fn event_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}

pub fn order_body(lines: &[(&str, i64)]) -> Value {
    json!({
        "customer_id": "customer-1",
        "lines": lines.iter().map(|(sku, quantity)| json!({"sku": sku, "quantity": quantity})).collect::<Vec<_>>(),
        "payment_method": "tok_visa",
    })
}
