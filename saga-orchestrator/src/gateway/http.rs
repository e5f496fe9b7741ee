//! The payment gateway over HTTP: the client the saga uses ([`HttpGateway`],
//! with timeouts and a circuit breaker), and the simulator served as HTTP
//! routes ([`simulator_routes`]) that `orders run` mounts under `/gateway`.
//!
//! The wire protocol:
//!
//! - `POST {base}/charges` with `{"key","amount_cents","currency","payment_method"}`
//!   answers `{"status":"approved","reference"}` or `{"status":"declined","reason"}`;
//!   `503` means "try again".
//! - `POST {base}/charges/{key}/refund` answers `{"status":"refunded"}` or
//!   `{"status":"nothing_captured"}`.
//! - `GET {base}/charges` lists every charge the simulator knows, by key.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::{ChargeAnswer, ChargeRequest, PaymentGateway, RefundAnswer, Simulator, Unavailable};

#[derive(Debug, Serialize, Deserialize)]
struct ChargeBody {
    key: String,
    amount_cents: i64,
    currency: String,
    payment_method: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
enum ChargeReply {
    Approved { reference: String },
    Declined { reason: String },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
enum RefundReply {
    Refunded,
    NothingCaptured,
}

/// How the client behaves.
#[derive(Debug, Clone)]
pub struct HttpGatewayConfig {
    /// Such as `http://127.0.0.1:8080/gateway`.
    pub base_url: String,
    /// How long one request may take.
    pub request_timeout: Duration,
    /// Failures in a row that open the circuit.
    pub failure_threshold: u32,
    /// How long an open circuit refuses calls before letting one through.
    pub open_for: Duration,
}

impl Default for HttpGatewayConfig {
    fn default() -> Self {
        Self {
            base_url: "http://127.0.0.1:8080/gateway".into(),
            request_timeout: Duration::from_secs(5),
            failure_threshold: 5,
            open_for: Duration::from_secs(5),
        }
    }
}

/// The saga's client of a gateway speaking the protocol above.
#[derive(Debug, Clone)]
pub struct HttpGateway {
    client: reqwest::Client,
    config: HttpGatewayConfig,
    breaker: Arc<CircuitBreaker>,
}

impl HttpGateway {
    pub fn new(config: HttpGatewayConfig) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .build()?;
        Ok(Self {
            client,
            breaker: Arc::new(CircuitBreaker::new(
                config.failure_threshold,
                config.open_for,
            )),
            config,
        })
    }

    /// Sends `body` to `path` through the breaker; a 503, a timeout or a
    /// connection failure counts against the gateway.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: Option<&ChargeBody>,
    ) -> Result<T, Unavailable> {
        if !self.breaker.allow() {
            return Err(Unavailable(
                "circuit open: the gateway failed repeatedly".into(),
            ));
        }
        let url = format!("{}{path}", self.config.base_url.trim_end_matches('/'));
        let request = self.client.post(url);
        let request = match body {
            Some(body) => request.json(body),
            None => request,
        };
        let result = async {
            let response = request
                .send()
                .await
                .map_err(|error| Unavailable(error.to_string()))?;
            let status = response.status();
            if !status.is_success() {
                return Err(Unavailable(format!("gateway answered {status}")));
            }
            response
                .json::<T>()
                .await
                .map_err(|error| Unavailable(format!("unreadable answer: {error}")))
        }
        .await;
        match &result {
            Ok(_) => self.breaker.success(),
            Err(_) => self.breaker.failure(),
        }
        result
    }
}

impl PaymentGateway for HttpGateway {
    async fn charge(&self, request: &ChargeRequest) -> Result<ChargeAnswer, Unavailable> {
        let body = ChargeBody {
            key: request.key.clone(),
            amount_cents: request.amount_cents,
            currency: request.currency.clone(),
            payment_method: request.payment_method.clone(),
        };
        Ok(
            match self.call::<ChargeReply>("/charges", Some(&body)).await? {
                ChargeReply::Approved { reference } => ChargeAnswer::Approved { reference },
                ChargeReply::Declined { reason } => ChargeAnswer::Declined { reason },
            },
        )
    }

    async fn refund(&self, key: &str) -> Result<RefundAnswer, Unavailable> {
        let path = format!("/charges/{key}/refund");
        Ok(match self.call::<RefundReply>(&path, None).await? {
            RefundReply::Refunded => RefundAnswer::Refunded,
            RefundReply::NothingCaptured => RefundAnswer::NothingCaptured,
        })
    }
}

/// Stops calling a gateway that keeps failing: after `threshold` failures in
/// a row it refuses calls for `open_for`, then lets one through; a success
/// closes it again.
#[derive(Debug)]
pub struct CircuitBreaker {
    threshold: u32,
    open_for: Duration,
    state: Mutex<Breaker>,
}

#[derive(Debug, Default)]
struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
}

impl CircuitBreaker {
    pub fn new(threshold: u32, open_for: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            open_for,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether a call may go out now.
    pub fn allow(&self) -> bool {
        let mut state = self.lock();
        match state.open_until {
            Some(until) if Instant::now() < until => false,
            Some(_) => {
                // Half open: this call is the trial; others wait for its outcome.
                state.open_until = Some(Instant::now() + self.open_for);
                true
            }
            None => true,
        }
    }

    pub fn success(&self) {
        let mut state = self.lock();
        state.failures = 0;
        if state.open_until.take().is_some() {
            metrics::gauge!("payment_gateway_circuit_open").set(0.0);
            tracing::info!("payment gateway answers again; circuit closed");
        }
    }

    pub fn failure(&self) {
        let mut state = self.lock();
        state.failures += 1;
        if state.failures >= self.threshold {
            if state.open_until.is_none() {
                metrics::gauge!("payment_gateway_circuit_open").set(1.0);
                tracing::warn!(
                    failures = state.failures,
                    "payment gateway keeps failing; circuit open"
                );
            }
            state.open_until = Some(Instant::now() + self.open_for);
        }
    }

    pub fn is_open(&self) -> bool {
        self.lock()
            .open_until
            .is_some_and(|until| Instant::now() < until)
    }
}

/// The simulator as HTTP routes, to mount under a prefix such as `/gateway`.
pub fn simulator_routes(simulator: Simulator) -> Router {
    Router::new()
        .route("/charges", post(charge).get(list))
        .route("/charges/{key}/refund", post(refund))
        .with_state(simulator)
}

async fn charge(State(simulator): State<Simulator>, Json(body): Json<ChargeBody>) -> Response {
    let request = ChargeRequest {
        key: body.key,
        amount_cents: body.amount_cents,
        currency: body.currency,
        payment_method: body.payment_method,
    };
    match simulator.charge(&request).await {
        Ok(ChargeAnswer::Approved { reference }) => {
            Json(ChargeReply::Approved { reference }).into_response()
        }
        Ok(ChargeAnswer::Declined { reason }) => {
            Json(ChargeReply::Declined { reason }).into_response()
        }
        Err(unavailable) => (StatusCode::SERVICE_UNAVAILABLE, unavailable.0).into_response(),
    }
}

async fn refund(State(simulator): State<Simulator>, Path(key): Path<String>) -> Response {
    match simulator.refund(&key).await {
        Ok(RefundAnswer::Refunded) => Json(RefundReply::Refunded).into_response(),
        Ok(RefundAnswer::NothingCaptured) => Json(RefundReply::NothingCaptured).into_response(),
        Err(unavailable) => (StatusCode::SERVICE_UNAVAILABLE, unavailable.0).into_response(),
    }
}

async fn list(
    State(simulator): State<Simulator>,
) -> Json<std::collections::BTreeMap<String, String>> {
    Json(simulator.charges().into_iter().collect())
}
