//! The command routes (one file per use case) and what they share: the
//! accepted-response shape, the command context built from the headers, and
//! the mapping from command errors to problems.

pub mod meta;
pub mod orders;
pub mod products;
pub mod schema;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use command_bus::{CommandContext, CommandError};
use event_store::{IdempotencyClaim, IdempotencyKey};
use serde::Serialize;
use utoipa::{IntoParams, IntoResponses};

use identity::Caller;

use crate::state::AppState;
use http_edge::extract::CommandHeaders;
use http_edge::problem::{ApiError, FieldError, Problem};

/// A command's success: the status, the resource's new version as `ETag`,
/// the position of its last event as `X-Event-Position` (the body repeats
/// it), and the body. Replays of an idempotent request say so in a header.
#[derive(Debug)]
pub struct Accepted<T> {
    status: StatusCode,
    version: u64,
    position: String,
    replayed: bool,
    body: T,
}

/// The header naming the position of a command's last event.
pub const POSITION_HEADER: &str = "x-event-position";

/// Header set on answers that repeat an earlier request's outcome.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

impl<T: Serialize> Accepted<T> {
    /// `position` is what the body says too (see [`position_of`]).
    pub fn new(
        status: StatusCode,
        outcome: &command_bus::Outcome,
        position: String,
        body: T,
    ) -> Self {
        Self {
            status,
            version: outcome.version,
            position,
            replayed: outcome.replayed,
            body,
        }
    }
}

impl<T: Serialize> IntoResponse for Accepted<T> {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        let headers = response.headers_mut();
        if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", self.version)) {
            headers.insert(header::ETAG, etag);
        }
        if let Ok(position) = HeaderValue::from_str(&self.position) {
            headers.insert(POSITION_HEADER, position);
        }
        if self.replayed {
            headers.insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
        }
        response
    }
}

/// The position of the last event of a command on an `A`, as clients get it.
pub fn position_of<A: cqrs_es::Aggregate>(outcome: &command_bus::Outcome) -> String {
    outcome.position(A::TYPE).to_string()
}

impl AppState {
    /// The command context for a request: the request id correlates the
    /// events, and the idempotency key (if any) is claimed with them, in the
    /// caller's own namespace.
    pub fn command_context(
        &self,
        caller: &Caller,
        headers: &CommandHeaders,
        fingerprint: Option<&str>,
    ) -> CommandContext {
        CommandContext {
            correlation_id: headers.request_id.clone(),
            causation_id: headers.request_id.clone(),
            idempotency: headers.idempotency_key.as_ref().zip(fingerprint).map(
                |(key, fingerprint)| IdempotencyClaim {
                    key: IdempotencyKey::client(caller.customer().as_str(), key),
                    fingerprint: fingerprint.to_owned(),
                    ttl: self.idempotency_ttl(),
                },
            ),
            expected_version: headers.if_match,
        }
    }
}

/// How a domain refusal reads at the HTTP edge. `subject` names what the
/// command was about (a SKU, an order id).
pub trait Refusal: std::error::Error {
    fn into_api_error(self, subject: &str) -> ApiError;
}

/// Maps a failed command to its problem.
pub fn command_failed<E: Refusal>(error: CommandError<E>, subject: &str) -> ApiError {
    match error {
        CommandError::Refused(refusal) => refusal.into_api_error(subject),
        CommandError::VersionMismatch { expected, actual } => {
            ApiError::VersionMismatch { expected, actual }
        }
        CommandError::Conflict { .. } => ApiError::Conflict,
        CommandError::KeyReused => ApiError::IdempotencyKeyReused,
        CommandError::Store(error) if error.is_unavailable() => ApiError::Unavailable(error.into()),
        CommandError::Store(error) => ApiError::Internal(error.into()),
    }
}

/// Collects field errors while a request is turned into a command.
#[derive(Debug, Default)]
pub struct Validation {
    errors: Vec<FieldError>,
}

impl Validation {
    /// The value if it parsed; otherwise records why under `field`.
    pub fn check<T, E: std::fmt::Display>(
        &mut self,
        field: impl Into<String>,
        parsed: Result<T, E>,
    ) -> Option<T> {
        parsed
            .map_err(|error| self.errors.push(FieldError::new(field, error.to_string())))
            .ok()
    }

    pub fn reject(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError::new(field, message));
    }

    /// Whole numbers within `min..=max`.
    pub fn in_range<T: TryFrom<i64>>(
        &mut self,
        field: impl Into<String>,
        value: i64,
        min: i64,
        max: i64,
    ) -> Option<T> {
        let parsed = if (min..=max).contains(&value) {
            T::try_from(value).map_err(|_| ())
        } else {
            Err(())
        };
        self.check(
            field,
            parsed.map_err(|()| format!("must be between {min} and {max}")),
        )
    }

    /// `Ok` with the value when nothing was recorded.
    pub fn finish<T>(self, value: Option<T>) -> Result<T, ApiError> {
        match value {
            Some(value) if self.errors.is_empty() => Ok(value),
            _ => Err(ApiError::Validation(self.errors)),
        }
    }
}

/// The headers every command route reads, for the OpenAPI document.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // Describes headers; the values come from `CommandHeaders`.
pub struct CommandHeaderParams {
    /// Makes the request safe to retry: the same key with the same body returns
    /// the first answer again and appends nothing; with another body it
    /// answers 422. Keys are the caller's own: two callers never share one.
    #[param(rename = "Idempotency-Key", schema_with = schema::idempotency_key, required = false)]
    idempotency_key: Option<String>,
    /// Apply the command only if the resource is at this version, as sent in
    /// `ETag` (for example `"3"`); otherwise answer 412.
    #[param(rename = "If-Match", schema_with = schema::if_match, required = false)]
    if_match: Option<String>,
    /// Correlates the request with the events it records and the logs it
    /// writes. Any value is taken; one of 1–128 visible ASCII characters is
    /// kept, anything else is replaced by a new id. Echoed on every response.
    #[param(rename = "X-Request-Id", value_type = String, required = false)]
    request_id: Option<String>,
    /// W3C trace context: the request, its events and every step they set
    /// off join the caller's trace. A value that is not a valid
    /// `traceparent` is ignored (a new trace starts).
    #[param(rename = "traceparent", value_type = String, required = false)]
    traceparent: Option<String>,
}

/// The path of a product route.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // Describes the path; the value comes from `PathId`.
pub struct SkuPath {
    /// The product's SKU; one that cannot exist answers 404.
    #[param(schema_with = schema::sku, required = true)]
    sku: String,
}

/// The path of an order route.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // Describes the path; the value comes from `PathId`.
pub struct OrderPath {
    /// The order's id; another customer's order answers 404, as an unknown one does.
    #[param(schema_with = schema::order_id, required = true)]
    order_id: String,
}

/// The problems any command route may answer with.
#[derive(Debug, IntoResponses)]
#[allow(dead_code)] // Describes responses; the values come from `ApiError`.
pub enum CommandProblems {
    /// The body is not JSON, or a header is malformed.
    #[response(status = 400, content_type = "application/problem+json")]
    BadRequest(Problem),
    /// No bearer token, or one that is forged, expired, not yet valid, or for
    /// another issuer or audience.
    #[response(
        status = 401,
        content_type = "application/problem+json",
        headers(("WWW-Authenticate" = String, description = "`Bearer`, with `error=\"invalid_token\"` when a token was sent"))
    )]
    Unauthorized(Problem),
    /// The token lacks the scope this needs, or a customer named another
    /// customer in `customer_id`.
    #[response(status = 403, content_type = "application/problem+json")]
    Forbidden(Problem),
    /// The product or order does not exist.
    #[response(status = 404, content_type = "application/problem+json")]
    NotFound(Problem),
    /// The domain refused the command, or concurrent writers kept winning.
    #[response(status = 409, content_type = "application/problem+json")]
    Conflict(Problem),
    /// If-Match named a version the resource is not at.
    #[response(status = 412, content_type = "application/problem+json")]
    PreconditionFailed(Problem),
    /// The body is larger than 64 KiB.
    #[response(status = 413, content_type = "application/problem+json")]
    PayloadTooLarge(Problem),
    /// The body is not sent as application/json.
    #[response(status = 415, content_type = "application/problem+json")]
    UnsupportedMediaType(Problem),
    /// A field is missing, of the wrong type, unknown or out of range; or the
    /// Idempotency-Key was used with a different request.
    #[response(status = 422, content_type = "application/problem+json")]
    UnprocessableEntity(Problem),
    /// This caller sent more requests than its rate allows.
    #[response(
        status = 429,
        content_type = "application/problem+json",
        headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))
    )]
    TooManyRequests(Problem),
    /// Something unexpected failed; it is logged under the X-Request-Id.
    #[response(status = 500, content_type = "application/problem+json")]
    InternalServerError(Problem),
    /// The database or the identity provider's keys are unreachable, or the
    /// service is saturated; retry later.
    #[response(status = 503, content_type = "application/problem+json")]
    ServiceUnavailable(Problem),
}
