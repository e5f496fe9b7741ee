//! `/api/operations/`: what `orders status`, `orders dlq` and `orders saga`
//! do, over HTTP for `admin` callers. Bad input is a 422 that changes
//! nothing; an unknown letter or saga a 404; an action the saga's state
//! does not allow a 409.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use http_edge::auth::Admin;
use http_edge::extract::JsonBody;
use http_edge::problem::{ApiError, FieldError};
use operations::dead_letters::{DeadLetter, Filter, LetterId};
use operations::sagas::ActionError;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::Console;

fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::Validation(vec![FieldError::new(field, message)])
}

fn unavailable(error: impl Into<anyhow::Error>) -> ApiError {
    ApiError::Unavailable(error.into())
}

/// Who an action is recorded as: the token's subject.
fn actor(admin: &Admin) -> String {
    admin.0.customer().to_string()
}

/// `GET /api/operations/overview`.
pub async fn overview(_: Admin, State(console): State<Console>) -> Result<Json<Value>, ApiError> {
    let overview = operations::overview::overview(&console.pool, &crate::read_models())
        .await
        .map_err(unavailable)?;
    Ok(Json(json!(overview)))
}

/// A dead letter with what the console shows of it at a glance.
#[derive(Serialize)]
struct Letter<'a> {
    #[serde(flatten)]
    letter: &'a DeadLetter,
    error: &'a str,
    consumer: &'a str,
    source_topic: Option<&'a str>,
    state: Option<&'a str>,
}

fn letter(letter: &DeadLetter) -> Letter<'_> {
    Letter {
        letter,
        error: letter.error(),
        consumer: letter.consumer(),
        source_topic: letter.source_topic(),
        state: letter.state(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LetterQuery {
    topic: Option<String>,
    aggregate: Option<String>,
    reason: Option<String>,
    #[serde(default)]
    all: bool,
    /// How many to answer, oldest first (default and most: [`LETTERS_LIMIT`]).
    limit: Option<usize>,
}

/// The most dead letters one listing answers: narrow the filter for others.
const LETTERS_LIMIT: usize = 500;

/// An optional text (a filter, a reason): empty means none; too long, or
/// not one line, is refused.
fn filter_text(field: &str, text: Option<String>) -> Result<Option<String>, ApiError> {
    let Some(text) = text else {
        return Ok(None);
    };
    operations::clean_text(field, &text, operations::REASON_LIMIT)
        .map(|clean| clean.map(str::to_owned))
        .map_err(|message| invalid(field, message))
}

/// `GET /api/operations/dead-letters?topic=&aggregate=&reason=&all=true`.
pub async fn dead_letters(
    _: Admin,
    State(console): State<Console>,
    query: Result<Query<LetterQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|rejection| invalid("query", rejection.body_text()))?;
    let limit = match query.limit {
        None => LETTERS_LIMIT,
        Some(limit @ 1..=LETTERS_LIMIT) => limit,
        Some(_) => {
            return Err(invalid("limit", format!("from 1 to {LETTERS_LIMIT}")));
        }
    };
    let filter = Filter {
        topic: filter_text("topic", query.topic)?,
        aggregate: filter_text("aggregate", query.aggregate)?,
        reason: filter_text("reason", query.reason)?,
        include_handled: query.all,
    };
    // Each listing reads every dead-letter topic on a thread of its own:
    // a few at a time, however many callers ask.
    let _reading = console
        .dead_letter_reads
        .acquire()
        .await
        .map_err(unavailable)?;
    let found = console
        .dead_letters
        .list(&filter)
        .await
        .map_err(unavailable)?;
    let matching = found.len();
    let found: Vec<Letter<'_>> = found.iter().take(limit).map(letter).collect();
    Ok(Json(
        json!({ "dead_letters": found, "matching": matching, "more": matching > limit }),
    ))
}

/// The dead letter `id` names: 422 for an id that is not one, 404 for a
/// topic that is not the platform's or a letter that is not there.
async fn find(console: &Console, id: &str) -> Result<DeadLetter, ApiError> {
    let id: LetterId = id
        .parse()
        .map_err(|error: anyhow::Error| invalid("id", error.to_string()))?;
    let not_found = || ApiError::NotFound {
        detail: format!("no dead letter at {id}"),
        errors: Vec::new(),
    };
    if !console.dead_letters.is_dead_letter_topic(&id.topic) {
        return Err(not_found());
    }
    console
        .dead_letters
        .find(&id)
        .await
        .map_err(unavailable)?
        .ok_or_else(not_found)
}

/// `GET /api/operations/dead-letters/{id}`.
pub async fn dead_letter(
    _: Admin,
    State(console): State<Console>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let found = find(&console, &id).await?;
    Ok(Json(json!(letter(&found))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayBody {
    #[serde(default)]
    dry_run: bool,
}

/// `POST /api/operations/dead-letters/{id}/replay` (`{"dry_run": true}`
/// says where it would go and sends nothing).
pub async fn replay(
    admin: Admin,
    State(console): State<Console>,
    Path(id): Path<String>,
    body: JsonBody<ReplayBody>,
) -> Result<Json<Value>, ApiError> {
    let found = find(&console, &id).await?;
    let to = console
        .dead_letters
        .replay_target(&found)
        .map_err(ApiError::Refused)?
        .to_owned();
    if !body.value.dry_run {
        console
            .dead_letters
            .replay(&found, &actor(&admin))
            .await
            .map_err(unavailable)?;
    }
    Ok(Json(
        json!({ "id": found.id, "to": to, "dry_run": body.value.dry_run }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReasonBody {
    #[serde(default)]
    reason: Option<String>,
}

/// The reason of `body`, required or not (see [`filter_text`]).
fn reason(body: ReasonBody, required: bool) -> Result<Option<String>, ApiError> {
    let reason = filter_text("reason", body.reason)?;
    if required && reason.is_none() {
        return Err(invalid("reason", "say why (a reason is required)"));
    }
    Ok(reason)
}

/// `POST /api/operations/dead-letters/{id}/discard` with `{"reason": ...}`.
pub async fn discard(
    admin: Admin,
    State(console): State<Console>,
    Path(id): Path<String>,
    body: JsonBody<ReasonBody>,
) -> Result<Json<Value>, ApiError> {
    let reason = reason(body.value, true)?.unwrap_or_default();
    let found = find(&console, &id).await?;
    console
        .dead_letters
        .discard(&found, &reason, &actor(&admin))
        .await
        .map_err(unavailable)?;
    Ok(Json(json!({ "id": found.id, "discarded": true })))
}

/// `GET /api/operations/sagas`: those needing someone.
pub async fn sagas(_: Admin, State(console): State<Console>) -> Result<Json<Value>, ApiError> {
    let found = operations::sagas::needing_attention(&console.pool)
        .await
        .map_err(unavailable)?;
    Ok(Json(json!({ "sagas": found })))
}

/// `GET /api/operations/sagas/{order_id}`.
pub async fn saga(
    _: Admin,
    State(console): State<Console>,
    Path(order_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    operations::sagas::show(&console.pool, &order_id)
        .await
        .map_err(unavailable)?
        .map(|report| Json(json!(report)))
        .ok_or_else(|| saga_not_found(&order_id))
}

fn saga_not_found(order_id: &str) -> ApiError {
    ApiError::NotFound {
        detail: format!("order {order_id} has no saga"),
        errors: Vec::new(),
    }
}

fn action_error(error: ActionError) -> ApiError {
    match error {
        ActionError::Invalid { field, message } => invalid(field, message),
        ActionError::NotFound(order_id) => saga_not_found(&order_id),
        ActionError::Refused(why) => ApiError::Refused(why),
        ActionError::Store(error) => unavailable(error),
    }
}

/// `POST /api/operations/sagas/{order_id}/retry` with an optional reason.
pub async fn retry(
    admin: Admin,
    State(console): State<Console>,
    Path(order_id): Path<String>,
    body: JsonBody<ReasonBody>,
) -> Result<Json<Value>, ApiError> {
    let reason = reason(body.value, false)?;
    operations::sagas::retry(&console.pool, &order_id, reason.as_deref(), &actor(&admin))
        .await
        .map_err(action_error)?;
    Ok(Json(json!({ "order_id": order_id, "retried": true })))
}

/// `POST /api/operations/sagas/{order_id}/abandon` with `{"reason": ...}`.
pub async fn abandon(
    admin: Admin,
    State(console): State<Console>,
    Path(order_id): Path<String>,
    body: JsonBody<ReasonBody>,
) -> Result<Json<Value>, ApiError> {
    let reason = reason(body.value, true)?.unwrap_or_default();
    operations::sagas::abandon(&console.pool, &order_id, &reason, &actor(&admin))
        .await
        .map_err(action_error)?;
    Ok(Json(json!({ "order_id": order_id, "abandoned": true })))
}
