//! The gateway's HTTP API, as a provider would publish it. Bodies are JSON;
//! errors are `application/problem+json` (RFC 9457).
//!
//! - `POST /charges` `{"key","amount_cents","currency","payment_method"}`:
//!   takes the charge once per key and answers the charge (below); `503`
//!   means "try again", `409` that the key was used for another charge.
//! - `POST /charges/{key}/refund`: refunds a captured charge, voids one not
//!   captured (or not seen yet); answers the charge.
//! - `GET /charges/{key}`: the charge, or `404`.
//! - `GET /charges?after=<key>&limit=<n>`: charges in key order, for
//!   operators (`{"charges":[...],"next_after":<key or null>}`).
//! - authorizations, their captures and the captures' refunds: see
//!   [`authorizations`];
//! - `GET /healthz`, `GET /readyz`.
//!
//! The gateway answers only its client: every route but the two probes needs
//! `Authorization: Bearer <gateway token>` (`401` otherwise), and a request
//! whose `Host` names a host the gateway does not serve is answered `421`
//! whatever its token, so that a web page that rebinds its own name to the
//! gateway's address reaches nothing. Charges held while their card network
//! answers slowly or never are bounded in number and time.
//!
//! A charge: `{"key","status","amount_cents","currency","payment_method",
//! "reference","reason","created_at","updated_at"}` with `status` one of
//! `pending`, `approved`, `declined`, `refunded`, `voided`.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_edge::problem::{FieldError, Problem, problem_response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::ledger::{self, Answer, ChargeRequest, LedgerError, MAX_AMOUNT_CENTS};

mod authorizations;

/// Largest request body accepted.
const BODY_LIMIT: usize = 16 * 1024;

#[derive(Clone)]
pub(crate) struct State {
    pub(crate) pool: PgPool,
    /// The database's answer, checked at most once a second however often
    /// `/readyz` is asked (the probes need no token).
    pub(crate) readiness: platform::readiness::Readiness,
    pub(crate) slow_answer: Duration,
    pub(crate) stopping: CancellationToken,
    pub(crate) access: Access,
    /// Permits of charges held while their card network is slow or silent.
    pub(crate) held: Arc<Semaphore>,
    /// How long a charge whose card network never answers is held.
    pub(crate) hold_for: Duration,
    /// How long a `tok_expiring` authorization holds.
    pub(crate) expiring: Duration,
}

/// Who may call the gateway: the token's digest (compared digest to digest,
/// so the comparison's time says nothing of the token) and the hosts served.
#[derive(Clone)]
pub(crate) struct Access {
    token: Arc<[u8; 32]>,
    hosts: Arc<Vec<String>>,
}

impl Access {
    pub(crate) fn new(token: &str, hosts: Vec<String>) -> Self {
        Self {
            token: Arc::new(Sha256::digest(token.as_bytes()).into()),
            hosts: Arc::new(hosts),
        }
    }

    /// Whether `host` (a `Host` header's value) names a host served.
    fn serves(&self, host: Option<&str>) -> bool {
        let Some(host) = host else {
            return false;
        };
        // `name:port`, `[v6]:port`, `name`, `[v6]`.
        let name = match host.rsplit_once(':') {
            Some((name, port))
                if port.bytes().all(|b| b.is_ascii_digit()) && !name.ends_with(':') =>
            {
                name
            }
            _ => host,
        };
        let name = crate::normalized_host(name);
        self.hosts.contains(&name)
    }

    /// Whether `authorization` carries the gateway's token.
    fn admits(&self, authorization: Option<&[u8]>) -> bool {
        let Some(token) = authorization
            .and_then(|value| std::str::from_utf8(value).ok())
            .and_then(|value| value.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
        else {
            return false;
        };
        let given: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        given == *self.token
    }
}

impl State {
    /// `work`, unless the gateway starts stopping first (`None`): a handler
    /// waiting on a database that hangs must not hold the shutdown. A
    /// transaction cut short rolls back; the caller retries under its key.
    pub(crate) async fn unless_stopping<T>(
        &self,
        work: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        tokio::select! {
            () = self.stopping.cancelled() => None,
            done = work => Some(done),
        }
    }
}

pub(crate) fn router(state: State) -> axum::Router {
    let guarded = axum::Router::new()
        .route("/charges", post(charge).get(list))
        .route("/charges/{key}", get(find))
        .route("/charges/{key}/refund", post(refund))
        .merge(authorizations::routes())
        .fallback(|| async { problem(StatusCode::NOT_FOUND, "not-found", "no such route".into()) })
        .layer(axum::middleware::from_fn_with_state(
            state.access.clone(),
            guard,
        ));
    axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .merge(guarded)
        .route_layer(axum::middleware::from_fn(http_edge::observe::observe))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// Middleware of every route but the probes: an unknown `Host` is answered
/// 421, a missing or wrong token 401, before anything else is read.
async fn guard(
    axum::extract::State(access): axum::extract::State<Access>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let headers = request.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .or_else(|| {
            request
                .uri()
                .authority()
                .map(|authority| authority.as_str())
        });
    if !access.serves(host) {
        return problem(
            StatusCode::MISDIRECTED_REQUEST,
            "misdirected-request",
            "this gateway does not serve that host".into(),
        );
    }
    if !access.admits(
        headers
            .get(header::AUTHORIZATION)
            .map(|value| value.as_bytes()),
    ) {
        let mut refused = problem(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "the payment gateway answers its client only: send Authorization: Bearer <gateway token>".into(),
        );
        refused.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return refused;
    }
    next.run(request).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChargeBody {
    pub(crate) key: String,
    pub(crate) amount_cents: i64,
    pub(crate) currency: String,
    pub(crate) payment_method: String,
}

async fn charge(
    axum::extract::State(state): axum::extract::State<State>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let body: ChargeBody = match json_body(&headers, body, validate) {
        Ok(body) => body,
        Err(refused) => return *refused,
    };
    let request = ChargeRequest {
        key: body.key,
        amount_cents: body.amount_cents,
        currency: body.currency,
        payment_method: body.payment_method,
    };
    let Some(charged) = state
        .unless_stopping(
            ledger::charge(&state.pool, &request).instrument(tracing::info_span!("ledger charge")),
        )
        .await
    else {
        return stopping();
    };
    match charged {
        Ok(answer) => answered(&state, answer).await,
        Err(LedgerError::KeyReused(key)) => key_reused(&key),
        Err(LedgerError::Database(error)) => unavailable(&error),
    }
}

/// The body as `T`, checked by `validate`, or the problem to answer: 415
/// unless it is JSON, 400 for JSON that does not parse, 422 naming each
/// field that breaks a rule.
pub(crate) fn json_body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
    validate: fn(&T) -> Vec<(&'static str, String)>,
) -> Result<T, Box<Response>> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().unwrap_or_default().trim() == "application/json");
    if !is_json {
        return Err(Box::new(problem(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "send the body as application/json".into(),
        )));
    }
    let body =
        body.map_err(|rejection| problem(rejection.status(), "bad-body", rejection.body_text()))?;
    let body: T = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(error) if error.is_syntax() || error.is_eof() => {
            return Err(Box::new(problem(
                StatusCode::BAD_REQUEST,
                "malformed-json",
                error.to_string(),
            )));
        }
        Err(error) => {
            return Err(Box::new(problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation-failed",
                error.to_string(),
            )));
        }
    };
    let errors = validate(&body);
    if !errors.is_empty() {
        let errors = errors
            .iter()
            .map(|(field, message)| FieldError::new(*field, message.as_str()))
            .collect();
        return Err(Box::new(problem_with(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation-failed",
            "the request breaks the gateway's rules".into(),
            errors,
        )));
    }
    Ok(body)
}

/// Answers what a card network's answer came to: now, after the token's
/// delay, never (504 after the hold), or "try again" (503). Requests held
/// while their network is slow or silent are bounded in number.
pub(crate) async fn answered<T: Serialize>(state: &State, answer: Answer<T>) -> Response {
    match answer {
        Answer::Now(found) => Json(found).into_response(),
        Answer::Later(found) => {
            let Ok(_held) = Arc::clone(&state.held).try_acquire_owned() else {
                return too_many_held();
            };
            tokio::select! {
                () = tokio::time::sleep(state.slow_answer) => Json(found).into_response(),
                () = state.stopping.cancelled() => stopping(),
            }
        }
        Answer::Never => {
            let Ok(_held) = Arc::clone(&state.held).try_acquire_owned() else {
                return too_many_held();
            };
            tokio::select! {
                () = tokio::time::sleep(state.hold_for) => problem(StatusCode::GATEWAY_TIMEOUT, "no-answer", "the card network never answered".into()),
                () = state.stopping.cancelled() => stopping(),
            }
        }
        Answer::TryAgain => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily-unavailable",
            "the card network failed for now; try again with the same key".into(),
        ),
    }
}

pub(crate) fn key_reused(key: &str) -> Response {
    problem(
        StatusCode::CONFLICT,
        "key-reused",
        format!("the key {key} was used for a different request; use a new key"),
    )
}

pub(crate) fn validate(body: &ChargeBody) -> Vec<(&'static str, String)> {
    let mut errors = Vec::new();
    if !valid_key(&body.key) {
        errors.push((
            "key",
            "must be 1-255 characters of A-Z, a-z, 0-9, '-', '_', '.' or ':'".into(),
        ));
    }
    if !(0..=MAX_AMOUNT_CENTS).contains(&body.amount_cents) {
        errors.push((
            "amount_cents",
            format!("must be between 0 and {MAX_AMOUNT_CENTS}"),
        ));
    }
    if body.currency.len() != 3 || !body.currency.bytes().all(|b| b.is_ascii_uppercase()) {
        errors.push((
            "currency",
            "must be three upper-case letters (ISO 4217)".into(),
        ));
    }
    let method = &body.payment_method;
    if method.is_empty()
        || method.len() > 64
        || !method
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        errors.push((
            "payment_method",
            "must be 1-64 characters of A-Z, a-z, 0-9 or '_'".into(),
        ));
    }
    errors
}

pub(crate) fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 255
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

async fn refund(
    axum::extract::State(state): axum::extract::State<State>,
    Path(key): Path<String>,
) -> Response {
    if !valid_key(&key) {
        return problem(
            StatusCode::NOT_FOUND,
            "not-found",
            "no charge can have that key".into(),
        );
    }
    let Some(refunded) = state
        .unless_stopping(
            ledger::refund(&state.pool, &key).instrument(tracing::info_span!("ledger refund")),
        )
        .await
    else {
        return stopping();
    };
    match refunded {
        Ok(charge) => Json(charge).into_response(),
        Err(error) => unavailable(&error),
    }
}

async fn find(
    axum::extract::State(state): axum::extract::State<State>,
    Path(key): Path<String>,
) -> Response {
    let Some(found) = state.unless_stopping(ledger::find(&state.pool, &key)).await else {
        return stopping();
    };
    match found {
        Ok(Some(charge)) => Json(charge).into_response(),
        Ok(None) => problem(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("no charge has key {key}"),
        ),
        Err(error) => unavailable(&error),
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct Page {
    #[serde(default)]
    after: String,
    limit: Option<i64>,
}

impl Page {
    /// The key to list after and how many to list, or the problem to answer.
    pub(crate) fn checked(
        page: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
    ) -> Result<(String, i64), Box<Response>> {
        let Ok(Query(page)) = page else {
            return Err(Box::new(problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation-failed",
                "after is a key, limit a number of 1-1000".into(),
            )));
        };
        let limit = page.limit.unwrap_or(100);
        if !(1..=1000).contains(&limit) {
            return Err(Box::new(problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation-failed",
                "limit must be between 1 and 1000".into(),
            )));
        }
        Ok((page.after, limit))
    }
}

/// The key to pass as `after` for the page that follows `listed`, `None`
/// on the last page.
pub(crate) fn next_after<T>(listed: &[T], limit: i64, key: impl Fn(&T) -> &str) -> Option<String> {
    (listed.len() as i64 == limit)
        .then(|| listed.last().map(|last| key(last).to_owned()))
        .flatten()
}

#[derive(Debug, Serialize)]
struct Listed {
    charges: Vec<ledger::Charge>,
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
        .unless_stopping(ledger::list(&state.pool, &after, limit))
        .await
    else {
        return stopping();
    };
    match listed {
        Ok(charges) => {
            let next_after = next_after(&charges, limit, |charge| &charge.key);
            Json(Listed {
                charges,
                next_after,
            })
            .into_response()
        }
        Err(error) => unavailable(&error),
    }
}

async fn ready(axum::extract::State(state): axum::extract::State<State>) -> Response {
    let Some((ready, checks)) = state.unless_stopping(state.readiness.check()).await else {
        return stopping();
    };
    if ready {
        Json(json!({"status": "ready", "checks": checks})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "checks": checks})),
        )
            .into_response()
    }
}

/// As many charges as the gateway holds are waiting for their card network.
pub(crate) fn too_many_held() -> Response {
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily-unavailable",
        "too many charges are waiting for their card network; try again with the same key".into(),
    )
}

pub(crate) fn stopping() -> Response {
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "shutting-down",
        "the gateway is stopping; try again".into(),
    )
}

/// The database failed: the caller may try again; the cause is logged, not sent.
pub(crate) fn unavailable(error: &sqlx::Error) -> Response {
    tracing::error!(%error, "payment gateway database error");
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "service-unavailable",
        "the gateway cannot reach its ledger now; try again with the same key".into(),
    )
}

pub(crate) fn problem(status: StatusCode, slug: &str, detail: String) -> Response {
    problem_with(status, slug, detail, Vec::new())
}

/// A problem+json answer (the platform's one shape, `http_edge::problem`);
/// `errors` name the invalid fields, when any.
pub(crate) fn problem_with(
    status: StatusCode,
    slug: &str,
    detail: String,
    errors: Vec<FieldError>,
) -> Response {
    let problem = Problem {
        problem_type: format!("/problems/{slug}"),
        title: status.canonical_reason().unwrap_or("Error").to_owned(),
        status: status.as_u16(),
        detail,
        errors,
    };
    problem_response(status, &problem)
}
