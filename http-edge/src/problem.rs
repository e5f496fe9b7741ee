//! Errors at the HTTP edge, answered as `application/problem+json` (RFC 9457).
//!
//! Every way a request can go wrong is one [`ApiError`] variant with one status
//! and one problem type. Refusals (4xx) tell the client what to change; failures
//! (5xx) are logged with their cause and answered without it.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem details object.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// Identifies the kind of problem; `GET` it for a description.
    #[schema(example = "/problems/validation-failed")]
    #[serde(rename = "type")]
    pub problem_type: String,
    /// A short summary of the kind of problem.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong with this request.
    pub detail: String,
    /// For validation failures: each invalid field and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(required = false)]
    pub errors: Vec<FieldError>,
}

/// One invalid field of a request body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    /// Where the field is in the body, such as `lines[0].quantity`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Everything a request can end in other than success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON.
    #[error("the body is not valid JSON: {0}")]
    MalformedJson(String),
    /// A header has a value this API cannot use.
    #[error("header {header}: {message}")]
    BadHeader {
        header: &'static str,
        message: String,
    },
    /// The body is not `application/json`.
    #[error("the body must be sent as Content-Type: application/json")]
    UnsupportedMediaType,
    /// The body is over the size limit.
    #[error("the body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// The body is JSON but breaks the contract's rules.
    #[error("{}", describe_fields(.0))]
    Validation(Vec<FieldError>),
    /// The Idempotency-Key was first used with a different request.
    #[error("this Idempotency-Key was already used with a different request; use a new key")]
    IdempotencyKeyReused,
    /// The product, order or route does not exist.
    #[error("{detail}")]
    NotFound {
        detail: String,
        errors: Vec<FieldError>,
    },
    /// The route exists but not for this method.
    #[error("{method} is not allowed here")]
    MethodNotAllowed { method: String },
    /// The domain refused the command in the aggregate's current state.
    #[error("{0}")]
    Refused(String),
    /// Concurrent writers kept winning; the command was retried and gave up.
    #[error("the resource was changed concurrently too often; retry the request")]
    Conflict,
    /// If-Match named a version the resource is not at.
    #[error("If-Match expected version {expected}, but the resource is at version {actual}")]
    VersionMismatch { expected: u64, actual: u64 },
    /// No caller could be identified: no token (`None`) or one that is not
    /// accepted (why).
    #[error("{}", .0.as_deref().unwrap_or("this request needs Authorization: Bearer <token>"))]
    Unauthenticated(Option<String>),
    /// The caller is known but its token lacks the scope this needs.
    #[error("{0}")]
    Forbidden(String),
    /// The caller sent more requests than its rate allows.
    #[error("too many requests from this caller; retry in {retry_after} s")]
    TooManyRequests { retry_after: u64 },
    /// The database is unreachable or saturated; retrying later may succeed.
    #[error("the service is temporarily unavailable; retry the request")]
    Unavailable(#[source] anyhow::Error),
    /// Anything unexpected. The cause is logged, not returned.
    #[error("an unexpected error occurred")]
    Internal(#[source] anyhow::Error),
}

fn describe_fields(errors: &[FieldError]) -> String {
    match errors {
        [one] => format!("{}: {}", one.field, one.message),
        many => format!("{} fields are invalid", many.len()),
    }
}

/// The catalogue of problem types: slug, title and what a client should do.
pub const PROBLEM_TYPES: &[(&str, &str, &str)] = &[
    (
        "malformed-json",
        "Malformed JSON",
        "The body could not be parsed as JSON. Send a valid JSON document.",
    ),
    (
        "bad-header",
        "Bad header",
        "A header such as Idempotency-Key, If-Match or X-Request-Id has a value this API does not accept. Fix the header.",
    ),
    (
        "unsupported-media-type",
        "Unsupported media type",
        "Commands take JSON bodies. Send Content-Type: application/json.",
    ),
    (
        "payload-too-large",
        "Payload too large",
        "Bodies are limited to 64 KiB. Send a smaller body.",
    ),
    (
        "validation-failed",
        "Validation failed",
        "The body is JSON but a field is missing, of the wrong type, unknown or out of range. The errors list names each field.",
    ),
    (
        "idempotency-key-reused",
        "Idempotency key reused",
        "The Idempotency-Key was used before with a different request. Use a new key for a new request.",
    ),
    (
        "not-found",
        "Not found",
        "The product, order or route does not exist.",
    ),
    (
        "method-not-allowed",
        "Method not allowed",
        "The route exists but does not accept this HTTP method.",
    ),
    (
        "command-refused",
        "Command refused",
        "The request is valid but the resource's current state does not allow it (a duplicate SKU, an order that is already cancelled). Retrying will get the same answer.",
    ),
    (
        "concurrent-update",
        "Concurrent update",
        "Other requests kept changing the resource while this one was applied. Retry the request.",
    ),
    (
        "version-mismatch",
        "Version mismatch",
        "If-Match named a version the resource is no longer at. Read the resource again and decide whether to retry.",
    ),
    (
        "unauthenticated",
        "Unauthenticated",
        "The request carries no bearer token, or one that is forged, expired, not yet valid, or for another issuer or audience. Send Authorization: Bearer <token> with a valid token.",
    ),
    (
        "forbidden",
        "Forbidden",
        "The token is valid but lacks the scope this needs (orders for one's own orders, admin for products, stock and other customers' orders).",
    ),
    (
        "too-many-requests",
        "Too many requests",
        "This caller sent more requests than its rate allows. Wait the seconds named in Retry-After.",
    ),
    (
        "service-unavailable",
        "Service unavailable",
        "The service cannot reach its database or is saturated. Retry later; with an Idempotency-Key a retry is safe.",
    ),
    (
        "internal-error",
        "Internal error",
        "Something unexpected failed. It has been logged; the X-Request-Id header identifies it.",
    ),
];

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MalformedJson(_) | Self::BadHeader { .. } => StatusCode::BAD_REQUEST,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Validation(_) | Self::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::Refused(_) | Self::Conflict => StatusCode::CONFLICT,
            Self::VersionMismatch { .. } => StatusCode::PRECONDITION_FAILED,
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn slug(&self) -> &'static str {
        match self {
            Self::MalformedJson(_) => "malformed-json",
            Self::BadHeader { .. } => "bad-header",
            Self::UnsupportedMediaType => "unsupported-media-type",
            Self::PayloadTooLarge { .. } => "payload-too-large",
            Self::Validation(_) => "validation-failed",
            Self::IdempotencyKeyReused => "idempotency-key-reused",
            Self::NotFound { .. } => "not-found",
            Self::MethodNotAllowed { .. } => "method-not-allowed",
            Self::Refused(_) => "command-refused",
            Self::Conflict => "concurrent-update",
            Self::VersionMismatch { .. } => "version-mismatch",
            Self::Unauthenticated(_) => "unauthenticated",
            Self::Forbidden(_) => "forbidden",
            Self::TooManyRequests { .. } => "too-many-requests",
            Self::Unavailable(_) => "service-unavailable",
            Self::Internal(_) => "internal-error",
        }
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::NotFound {
            detail: detail.into(),
            errors: Vec::new(),
        }
    }

    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Validation(vec![FieldError::new(field, message)])
    }

    /// The problem body for this error.
    pub fn problem(&self) -> Problem {
        let slug = self.slug();
        let title = PROBLEM_TYPES
            .iter()
            .find(|(s, _, _)| *s == slug)
            .map_or("Error", |(_, title, _)| title);
        let errors = match self {
            Self::Validation(errors) | Self::NotFound { errors, .. } => errors.clone(),
            _ => Vec::new(),
        };
        Problem {
            problem_type: format!("/problems/{slug}"),
            title: title.to_owned(),
            status: self.status().as_u16(),
            detail: self.to_string(),
            errors,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            Self::Internal(cause) | Self::Unavailable(cause) => {
                tracing::error!(error = ?cause, status = self.status().as_u16(), "request failed");
            }
            refusal => {
                tracing::info!(status = refusal.status().as_u16(), %refusal, "request refused")
            }
        }
        let status = self.status();
        let mut response = problem_response(status, &self.problem());
        let headers = response.headers_mut();
        match &self {
            Self::Unauthenticated(reason) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    www_authenticate(reason.as_deref()),
                );
            }
            Self::TooManyRequests { retry_after } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            _ => {}
        }
        response
    }
}

/// The RFC 6750 challenge: `error="invalid_token"` only when a token was sent.
fn www_authenticate(reason: Option<&str>) -> HeaderValue {
    let Some(reason) = reason else {
        return HeaderValue::from_static("Bearer");
    };
    // A quoted-string holds printable ASCII other than `"` and `\`; the
    // reason may quote parts of the token, so anything else is dropped.
    let description: String = reason
        .chars()
        .filter(|c| (' '..='~').contains(c) && !matches!(c, '"' | '\\'))
        .take(200)
        .collect();
    HeaderValue::from_str(&format!(
        "Bearer error=\"invalid_token\", error_description=\"{description}\""
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("Bearer error=\"invalid_token\""))
}

/// Serializes a problem with the problem+json media type.
pub fn problem_response(status: StatusCode, problem: &Problem) -> Response {
    let body = serde_json::to_vec(problem).unwrap_or_default();
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_has_a_documented_problem_type() {
        let samples = [
            ApiError::MalformedJson("x".into()),
            ApiError::BadHeader {
                header: "If-Match",
                message: "x".into(),
            },
            ApiError::UnsupportedMediaType,
            ApiError::PayloadTooLarge { limit: 1 },
            ApiError::invalid("a", "b"),
            ApiError::IdempotencyKeyReused,
            ApiError::not_found("x"),
            ApiError::MethodNotAllowed {
                method: "GET".into(),
            },
            ApiError::Refused("x".into()),
            ApiError::Conflict,
            ApiError::VersionMismatch {
                expected: 1,
                actual: 2,
            },
            ApiError::Unauthenticated(None),
            ApiError::Forbidden("x".into()),
            ApiError::TooManyRequests { retry_after: 1 },
            ApiError::Unavailable(anyhow::anyhow!("x")),
            ApiError::Internal(anyhow::anyhow!("x")),
        ];
        for error in samples {
            let slug = error.slug();
            assert!(
                PROBLEM_TYPES.iter().any(|(s, _, _)| *s == slug),
                "{slug} is not in PROBLEM_TYPES"
            );
            assert_eq!(error.problem().status, error.status().as_u16());
        }
    }

    #[test]
    fn internal_errors_do_not_leak_their_cause() {
        let problem = ApiError::Internal(anyhow::anyhow!("password=hunter2")).problem();
        assert!(!problem.detail.contains("hunter2"));
    }

    #[test]
    fn a_challenge_never_carries_what_breaks_a_quoted_string() {
        let response =
            ApiError::Unauthenticated(Some("no key has kid \"a\\b\"\u{7f}\u{e9}x".into()))
                .into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let challenge = response.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .expect("ASCII");
        assert_eq!(
            challenge,
            r#"Bearer error="invalid_token", error_description="no key has kid abx""#
        );
        let bare = ApiError::Unauthenticated(None).into_response();
        assert_eq!(bare.headers()[header::WWW_AUTHENTICATE], "Bearer");
        let limited = ApiError::TooManyRequests { retry_after: 3 }.into_response();
        assert_eq!(limited.headers()[header::RETRY_AFTER], "3");
    }

    #[test]
    fn validation_problems_list_their_fields() {
        let problem = ApiError::Validation(vec![
            FieldError::new("sku", "must not be blank"),
            FieldError::new("quantity", "must be at least 1"),
        ])
        .problem();
        assert_eq!(problem.status, 422);
        assert_eq!(problem.detail, "2 fields are invalid");
        assert_eq!(problem.errors.len(), 2);
        assert_eq!(problem.problem_type, "/problems/validation-failed");
    }
}
