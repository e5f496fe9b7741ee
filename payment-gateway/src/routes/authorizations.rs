//! Authorize, then capture, over HTTP (see [`crate::authorizations`]):
//!
//! - `POST /authorizations` `{"key","amount_cents","currency","payment_method"}`:
//!   holds the amount once per key; answers the authorization (`503`: try
//!   again; `504`: the network never answered, the authorization stays
//!   pending until voided);
//! - `GET /authorizations?after=<key>&limit=<n>`: authorizations in key
//!   order, for operators and the audit;
//! - `GET /authorizations/{key}`: the authorization with its `captures`;
//! - `POST /authorizations/{key}/captures` `{"key","amount_cents"}`: takes
//!   part of it once per capture key; answers the capture with the
//!   `authorization` as it stands after it;
//! - `POST /authorizations/{key}/void`: releases what was not captured;
//!   answers the authorization;
//! - `GET /captures/{key}`: the capture with its `refunds`;
//! - `POST /captures/{key}/refunds` `{"key","amount_cents"}`: gives part of
//!   a capture back once per refund key; answers the refund with the
//!   `capture` as it stands after it;
//! - `GET /refunds/{key}`: the refund.
//!
//! An authorization: `{"key","status","amount_cents","currency",
//! "payment_method","reference","reason","expires_at","captured_cents",
//! "refunded_cents","capturable_cents","created_at","updated_at"}`, `status`
//! one of `pending`, `authorized`, `declined`, `voided`, `expired`. A
//! capture: `{"key","authorization_key","status","amount_cents",
//! "refunded_cents","reference","reason","created_at","updated_at"}`,
//! `status` one of `captured`, `declined` (the issuer refused: `reason`),
//! `expired` (authorize again). A refund: `{"key","capture_key",
//! "amount_cents","reference","created_at"}`.
//!
//! A rule broken is `409` naming it (`key-reused`, `not-capturable`,
//! `exceeds-authorization`, `not-captured`, `exceeds-capture`) and records
//! nothing; an unknown key is `404`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use super::{
    ChargeBody, Page, State, answered, json_body, key_reused, next_after, problem, stopping,
    unavailable, valid_key,
};
use crate::authorizations::{
    self, Authorization, AuthorizationRequest, Capture, CaptureRequest, Refund, RefundRequest,
    Refusal,
};
use crate::ledger::MAX_AMOUNT_CENTS;

pub(super) fn routes() -> axum::Router<State> {
    axum::Router::new()
        .route("/authorizations", post(authorize).get(list))
        .route("/authorizations/{key}", get(find_authorization))
        .route("/authorizations/{key}/captures", post(capture))
        .route("/authorizations/{key}/void", post(void))
        .route("/captures/{key}", get(find_capture))
        .route("/captures/{key}/refunds", post(refund))
        .route("/refunds/{key}", get(find_refund))
}

async fn authorize(
    axum::extract::State(state): axum::extract::State<State>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let body: ChargeBody = match json_body(&headers, body, super::validate) {
        Ok(body) => body,
        Err(refused) => return *refused,
    };
    let request = AuthorizationRequest {
        key: body.key,
        amount_cents: body.amount_cents,
        currency: body.currency,
        payment_method: body.payment_method,
    };
    let Some(authorized) = state
        .unless_stopping(
            authorizations::authorize(&state.pool, &request, state.expiring)
                .instrument(tracing::info_span!("ledger authorize")),
        )
        .await
    else {
        return stopping();
    };
    match authorized {
        Ok(answer) => answered(&state, answer).await,
        Err(refusal) => refused(refusal),
    }
}

/// A part of an authorization or a capture, under a key of its own.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PartBody {
    key: String,
    amount_cents: i64,
}

fn validate_part(body: &PartBody) -> Vec<(&'static str, String)> {
    let mut errors = Vec::new();
    if !valid_key(&body.key) {
        errors.push((
            "key",
            "must be 1-255 characters of A-Z, a-z, 0-9, '-', '_', '.' or ':'".into(),
        ));
    }
    if !(1..=MAX_AMOUNT_CENTS).contains(&body.amount_cents) {
        errors.push((
            "amount_cents",
            format!("must be between 1 and {MAX_AMOUNT_CENTS}"),
        ));
    }
    errors
}

#[derive(Debug, Serialize)]
struct Captured {
    #[serde(flatten)]
    capture: Capture,
    authorization: Authorization,
}

async fn capture(
    axum::extract::State(state): axum::extract::State<State>,
    Path(authorization_key): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let body: PartBody = match json_body(&headers, body, validate_part) {
        Ok(body) => body,
        Err(refused) => return *refused,
    };
    if !valid_key(&authorization_key) {
        return refused(Refusal::NotFound("authorization"));
    }
    let request = CaptureRequest {
        key: body.key,
        amount_cents: body.amount_cents,
    };
    let Some(captured) = state
        .unless_stopping(
            authorizations::capture(&state.pool, &authorization_key, &request)
                .instrument(tracing::info_span!("ledger capture")),
        )
        .await
    else {
        return stopping();
    };
    match captured {
        Ok((capture, authorization)) => Json(Captured {
            capture,
            authorization,
        })
        .into_response(),
        Err(refusal) => refused(refusal),
    }
}

async fn void(
    axum::extract::State(state): axum::extract::State<State>,
    Path(key): Path<String>,
) -> Response {
    if !valid_key(&key) {
        return refused(Refusal::NotFound("authorization"));
    }
    let Some(voided) = state
        .unless_stopping(
            authorizations::void(&state.pool, &key).instrument(tracing::info_span!("ledger void")),
        )
        .await
    else {
        return stopping();
    };
    match voided {
        Ok(authorization) => Json(authorization).into_response(),
        Err(error) => unavailable(&error),
    }
}

#[derive(Debug, Serialize)]
struct Refunded {
    #[serde(flatten)]
    refund: Refund,
    capture: Capture,
}

async fn refund(
    axum::extract::State(state): axum::extract::State<State>,
    Path(capture_key): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let body: PartBody = match json_body(&headers, body, validate_part) {
        Ok(body) => body,
        Err(refused) => return *refused,
    };
    if !valid_key(&capture_key) {
        return refused(Refusal::NotFound("capture"));
    }
    let request = RefundRequest {
        key: body.key,
        amount_cents: body.amount_cents,
    };
    let Some(refunded) = state
        .unless_stopping(
            authorizations::refund(&state.pool, &capture_key, &request)
                .instrument(tracing::info_span!("ledger refund of a capture")),
        )
        .await
    else {
        return stopping();
    };
    match refunded {
        Ok((refund, capture)) => Json(Refunded { refund, capture }).into_response(),
        Err(refusal) => refused(refusal),
    }
}

#[derive(Debug, Serialize)]
struct WithCaptures {
    #[serde(flatten)]
    authorization: Authorization,
    captures: Vec<Capture>,
}

async fn find_authorization(
    axum::extract::State(state): axum::extract::State<State>,
    Path(key): Path<String>,
) -> Response {
    let Some(found) = state
        .unless_stopping(authorizations::find_authorization(&state.pool, &key))
        .await
    else {
        return stopping();
    };
    match found {
        Ok(Some((authorization, captures))) => Json(WithCaptures {
            authorization,
            captures,
        })
        .into_response(),
        Ok(None) => refused(Refusal::NotFound("authorization")),
        Err(error) => unavailable(&error),
    }
}

#[derive(Debug, Serialize)]
struct WithRefunds {
    #[serde(flatten)]
    capture: Capture,
    refunds: Vec<Refund>,
}

async fn find_capture(
    axum::extract::State(state): axum::extract::State<State>,
    Path(key): Path<String>,
) -> Response {
    let Some(found) = state
        .unless_stopping(authorizations::find_capture(&state.pool, &key))
        .await
    else {
        return stopping();
    };
    match found {
        Ok(Some((capture, refunds))) => Json(WithRefunds { capture, refunds }).into_response(),
        Ok(None) => refused(Refusal::NotFound("capture")),
        Err(error) => unavailable(&error),
    }
}

async fn find_refund(
    axum::extract::State(state): axum::extract::State<State>,
    Path(key): Path<String>,
) -> Response {
    let Some(found) = state
        .unless_stopping(authorizations::find_refund(&state.pool, &key))
        .await
    else {
        return stopping();
    };
    match found {
        Ok(Some(refund)) => Json(refund).into_response(),
        Ok(None) => problem(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("no refund has key {key}"),
        ),
        Err(error) => unavailable(&error),
    }
}

#[derive(Debug, Serialize)]
struct Listed {
    authorizations: Vec<Authorization>,
    /// Pass as `after` for the next page; `null` on the last one.
    next_after: Option<String>,
}

async fn list(
    axum::extract::State(state): axum::extract::State<State>,
    page: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let (after, limit) = match Page::checked(page) {
        Ok(page) => page,
        Err(refused) => return *refused,
    };
    let Some(listed) = state
        .unless_stopping(authorizations::list(&state.pool, &after, limit))
        .await
    else {
        return stopping();
    };
    match listed {
        Ok(authorizations) => {
            let next_after = next_after(&authorizations, limit, |found| &found.key);
            Json(Listed {
                authorizations,
                next_after,
            })
            .into_response()
        }
        Err(error) => unavailable(&error),
    }
}

/// The problem a refusal is answered with.
fn refused(refusal: Refusal) -> Response {
    let conflict = |slug: &str, detail: String| problem(StatusCode::CONFLICT, slug, detail);
    match refusal {
        Refusal::KeyReused(key) => key_reused(&key),
        Refusal::NotFound(what) => problem(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("no {what} has that key"),
        ),
        refusal @ Refusal::NotCapturable(_) => conflict("not-capturable", refusal.to_string()),
        refusal @ Refusal::ExceedsAuthorization { .. } => {
            conflict("exceeds-authorization", refusal.to_string())
        }
        refusal @ Refusal::NotCaptured(_) => conflict("not-captured", refusal.to_string()),
        refusal @ Refusal::ExceedsCapture { .. } => {
            conflict("exceeds-capture", refusal.to_string())
        }
        Refusal::Database(error) => unavailable(&error),
    }
}
