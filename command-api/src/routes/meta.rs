//! Routes about the service itself: health, readiness, metrics, the OpenAPI
//! document, problem type descriptions, and the answers for unknown routes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use platform::kafka::KafkaProbe;
use serde_json::json;
use sqlx::PgPool;

use crate::auth::Admin;
use crate::problem::{ApiError, PROBLEM_TYPES};
use crate::startup::AppState;

/// How long a readiness check waits for each dependency.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a readiness answer is reused: probes arrive as often as callers
/// send them, checks run at most once this often.
const READINESS_TTL: Duration = Duration::from_secs(1);

/// `GET /healthz`: the process is up and serving.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// What a process needs to be ready, checked at most once a second however
/// many ask (one check at a time; the others wait for it and share it).
///
/// The API takes commands whenever its database answers: Kafka carries
/// events to the read side later, so a broker outage is reported but does
/// not take the API out of a load balancer. A process of the relay, the
/// projections or the saga needs Kafka too.
#[derive(Clone)]
pub struct Readiness(Arc<ReadinessInner>);

struct ReadinessInner {
    pool: Option<PgPool>,
    kafka: Option<KafkaProbe>,
    kafka_required: bool,
    last: tokio::sync::Mutex<Option<(Instant, bool, serde_json::Value)>>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("kafka_required", &self.0.kafka_required)
            .finish_non_exhaustive()
    }
}

impl Readiness {
    /// Checks `pool` (when given) and `kafka` (when given; it fails the
    /// check only when `kafka_required`).
    pub fn new(pool: Option<PgPool>, kafka: Option<KafkaProbe>, kafka_required: bool) -> Self {
        Self(Arc::new(ReadinessInner {
            pool,
            kafka,
            kafka_required,
            last: tokio::sync::Mutex::new(None),
        }))
    }

    /// Whether the process is ready, and each check's word.
    pub async fn check(&self) -> (bool, serde_json::Value) {
        let mut last = self.0.last.lock().await;
        if let Some((at, ready, checks)) = last.as_ref()
            && at.elapsed() < READINESS_TTL
        {
            return (*ready, checks.clone());
        }
        let (ready, checks) = self.probe().await;
        *last = Some((Instant::now(), ready, checks.clone()));
        (ready, checks)
    }

    async fn probe(&self) -> (bool, serde_json::Value) {
        let mut checks = serde_json::Map::new();
        let mut ready = true;
        if let Some(pool) = &self.0.pool {
            let probed =
                tokio::time::timeout(PROBE_TIMEOUT, sqlx::query("SELECT 1").execute(pool)).await;
            let word = match probed {
                Ok(Ok(_)) => "ok".to_owned(),
                Ok(Err(error)) => {
                    // The driver's text is for the log: it can name hosts and users.
                    tracing::warn!(%error, "readiness: the database is unreachable");
                    "unavailable".to_owned()
                }
                Err(_) => "no answer within 2 s".to_owned(),
            };
            ready &= word == "ok";
            checks.insert("database".into(), json!(word));
        }
        if let Some(probe) = &self.0.kafka {
            let word = match probe.check(PROBE_TIMEOUT).await {
                Ok(()) => "ok",
                Err(error) => {
                    tracing::warn!(%error, "readiness: Kafka is unreachable");
                    if self.0.kafka_required {
                        ready = false;
                        "unavailable"
                    } else {
                        "unavailable (commands are still taken)"
                    }
                }
            };
            checks.insert("kafka".into(), json!(word));
        }
        (ready, serde_json::Value::Object(checks))
    }

    /// The readiness answer: 200, or 503 naming the failing checks.
    pub async fn answer(&self) -> Response {
        let (ready, checks) = self.check().await;
        let (status, word) = if ready {
            (StatusCode::OK, "ready")
        } else {
            (StatusCode::SERVICE_UNAVAILABLE, "not ready")
        };
        (status, Json(json!({ "status": word, "checks": checks }))).into_response()
    }
}

/// `GET /readyz`: whether the API takes commands (see [`Readiness`]); 503
/// with the failing checks otherwise, so a load balancer stops sending
/// traffic.
pub async fn readyz(State(app): State<AppState>) -> Response {
    app.readiness().answer().await
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        platform::telemetry::metrics().render(),
    )
        .into_response()
}

/// `GET /metrics` on the API's public port: administrators only, since
/// the figures tell much about the business. A scraper inside the network
/// reads them at `metrics_listen`, without a token.
pub async fn admin_metrics(_admin: Admin) -> Response {
    metrics().await
}

/// `GET /problems/{slug}`: what a problem type means and what to do about it.
pub async fn problem_type(Path(slug): Path<String>) -> Result<Response, ApiError> {
    let (_, title, description) = PROBLEM_TYPES
        .iter()
        .find(|(s, _, _)| *s == slug)
        .ok_or_else(|| ApiError::not_found(format!("no problem type {slug}")))?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{title}\n\n{description}\n"),
    )
        .into_response())
}

/// Any route that does not exist.
pub async fn no_route() -> ApiError {
    ApiError::not_found("no such route; see /api/openapi.json")
}

/// A route that exists, called with the wrong method.
pub async fn wrong_method(method: Method) -> ApiError {
    ApiError::MethodNotAllowed {
        method: method.to_string(),
    }
}

/// `/metrics`, `/healthz` and `/readyz` (as `readiness` says), for the
/// listener `metrics_listen` names: a scraper's and probes' port inside the
/// network, beside the API's public one or in a process without an API.
pub fn metrics_only(readiness: Readiness) -> axum::Router {
    // Install the recorder before anything records.
    platform::telemetry::metrics();
    axum::Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .route("/healthz", axum::routing::get(healthz))
        .route(
            "/readyz",
            axum::routing::get(move || {
                let readiness = readiness.clone();
                async move { readiness.answer().await }
            }),
        )
}
