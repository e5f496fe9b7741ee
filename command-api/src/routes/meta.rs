//! Routes about the service itself: health, readiness, metrics, the OpenAPI
//! document, problem type descriptions, and the answers for unknown routes.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::state::AppState;
use http_edge::auth::Admin;
use http_edge::problem::{ApiError, PROBLEM_TYPES};

/// `GET /healthz`: the process is up and serving.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

pub use platform::readiness::Readiness;

/// The readiness answer: 200, or 503 naming the failing checks.
pub async fn answer(readiness: &Readiness) -> Response {
    let (ready, checks) = readiness.check().await;
    let (status, word) = if ready {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    };
    (status, Json(json!({ "status": word, "checks": checks }))).into_response()
}

/// `GET /readyz`: whether the API takes commands (see [`Readiness`]); 503
/// with the failing checks otherwise, so a load balancer stops sending
/// traffic.
pub async fn readyz(State(app): State<AppState>) -> Response {
    answer(app.readiness()).await
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
                async move { answer(&readiness).await }
            }),
        )
}
