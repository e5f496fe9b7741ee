//! Routes about the service itself: health, readiness, metrics, the OpenAPI
//! document, problem type descriptions, and the answers for unknown routes.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::problem::{ApiError, PROBLEM_TYPES};
use crate::startup::AppState;

/// How long a readiness check waits for each dependency.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /healthz`: the process is up and serving.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: the database (and Kafka, when configured) answer. 503 with
/// the failing checks otherwise, so a load balancer stops sending traffic.
pub async fn readyz(State(app): State<AppState>) -> Response {
    let database = tokio::time::timeout(
        PROBE_TIMEOUT,
        sqlx::query("SELECT 1").execute(app.bus().pool()),
    )
    .await;
    let database = match database {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => {
            // The driver's text is for the log: it can name hosts and users.
            tracing::warn!(%error, "readiness: the database is unreachable");
            Err("unavailable".to_owned())
        }
        Err(_) => Err("no answer within 2 s".to_owned()),
    };
    let kafka = match app.kafka() {
        None => None,
        Some(probe) => Some(probe.check(PROBE_TIMEOUT).await.map_err(|error| {
            tracing::warn!(%error, "readiness: Kafka is unreachable");
            "unavailable".to_owned()
        })),
    };
    let mut checks = serde_json::Map::new();
    let mut ready = true;
    for (name, result) in [("database", Some(database)), ("kafka", kafka)] {
        let Some(result) = result else { continue };
        ready &= result.is_ok();
        checks.insert(
            name.into(),
            match result {
                Ok(()) => json!("ok"),
                Err(error) => json!(error),
            },
        );
    }
    let (status, word) = if ready {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    };
    (status, Json(json!({ "status": word, "checks": checks }))).into_response()
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

/// `/metrics` and `/healthz` alone, for a process that runs no API (a saga,
/// relay, projections or gateway process) but should still be scraped.
pub fn metrics_only() -> axum::Router {
    // Install the recorder before anything records.
    platform::telemetry::metrics();
    axum::Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .route("/healthz", axum::routing::get(healthz))
}
