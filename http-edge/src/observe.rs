//! Per-request observability: a request id, a tracing span that carries it
//! (the root of the request's trace, or a child of the caller's `traceparent`),
//! an access log line, and Prometheus metrics.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use crate::problem::ApiError;

/// The request id: the client's `X-Request-Id` when it is usable (1–128
/// visible ASCII characters), a new UUID otherwise. Commands record it as the
/// correlation id of their events, and every response echoes it.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Every response names the trace its request is part of, so that a caller
/// can open it in the tracing backend.
pub const TRACE_ID_HEADER: &str = "x-trace-id";

fn usable(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
}

/// Middleware: assigns the request id, runs the request in a span and records
/// how it went.
pub async fn observe(mut request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        .filter(|id| usable(id))
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned);
    request.extensions_mut().insert(RequestId(id.clone()));
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = request.method().clone();
    // Health checks and scrapes are logged like any request, but not traced.
    macro_rules! request_span {
        ($($target:tt)*) => {
            tracing::info_span!(
                $($target)*
                "request",
                otel.name = format!("{method} {route}"),
                otel.kind = "server",
                request_id = %id,
                method = %method,
                route = %route,
                http.response.status_code = tracing::field::Empty,
            )
        };
    }
    let span = if matches!(route.as_str(), "/healthz" | "/readyz" | "/metrics") {
        request_span!(target: platform::telemetry::PROBE_TARGET,)
    } else {
        request_span!()
    };
    let caller = request.headers().get(platform::trace::TRACEPARENT);
    platform::trace::follow_header(&span, caller.map(|value| value.as_bytes()));
    let started = Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    if let Some(trace_id) = platform::trace::trace_id(&span)
        && let Ok(value) = HeaderValue::from_str(&trace_id)
    {
        response.headers_mut().insert(TRACE_ID_HEADER, value);
    }
    span.in_scope(|| {
        tracing::info!(
            status,
            elapsed_ms = elapsed.as_secs_f64() * 1000.0,
            "answered"
        );
    });
    let labels = [
        ("method", method.as_str().to_owned()),
        ("route", route),
        ("status", status.to_string()),
    ];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels[..2])
        .record(elapsed.as_secs_f64());
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

/// Middleware: answers 503 when the request takes longer than `limit`. A
/// command already handed to the event store may still commit; a client that
/// retries with the same Idempotency-Key gets its outcome.
pub async fn time_limit(limit: std::time::Duration, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Unavailable(anyhow::anyhow!(
            "the request took longer than {} s",
            limit.as_secs_f64()
        ))
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;

    #[tokio::test]
    async fn a_request_over_the_time_limit_gets_a_503_problem() {
        let limit = Duration::from_millis(50);
        let app = Router::new()
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "late"
                }),
            )
            .layer(axum::middleware::from_fn(move |request, next| {
                time_limit(limit, request, next)
            }));

        let response = app
            .oneshot(
                axum::http::Request::get("/slow")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();

        assert_eq!(response.status(), 503);
        assert_eq!(
            response.headers()["content-type"],
            crate::problem::PROBLEM_JSON
        );
    }

    #[test]
    fn request_ids_from_clients_are_bounded_visible_ascii() {
        assert!(usable("req-123"));
        assert!(!usable(""));
        assert!(!usable("has space"));
        assert!(!usable(&"x".repeat(129)));
    }
}
