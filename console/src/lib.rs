//! The operator console: a page at `/console` for `admin` callers, served
//! with every asset it loads (`assets/`), and the operations it calls under
//! `/api/operations/`: the overview, the dead letters, the sagas that need
//! someone. The page reads orders and products through GraphQL like any
//! client; the operations are those of `orders dlq` and `orders saga`
//! (the `operations` crate), each action recorded as the caller's `sub`.
//!
//! The page and its assets hold no data and are served to anyone; every
//! route under `/api/operations/` answers 401 without a token and 403
//! without `admin`, before reading a body.

mod assets;
mod routes;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use operations::dead_letters::DeadLetters;
use operations::overview::ReadModel;
use projections::Projection;
use sqlx::PgPool;
use tokio::sync::Semaphore;

/// What the console's routes work on.
#[derive(Debug, Clone)]
pub struct Console {
    pool: PgPool,
    dead_letters: DeadLetters,
    /// Listings of the dead letters running at once in this process.
    dead_letter_reads: Arc<Semaphore>,
}

impl Console {
    pub fn new(pool: PgPool, dead_letters: DeadLetters) -> Self {
        Self {
            pool,
            dead_letters,
            dead_letter_reads: Arc::new(Semaphore::new(2)),
        }
    }
}

/// The console's page, assets and operations, to serve beside the API.
pub fn router(console: Console) -> Router {
    Router::new()
        .route("/console", get(assets::page))
        .route("/console/", get(assets::page))
        .route("/console/assets/{file}", get(assets::asset))
        .route("/api/operations/overview", get(routes::overview))
        .route("/api/operations/dead-letters", get(routes::dead_letters))
        .route(
            "/api/operations/dead-letters/{id}",
            get(routes::dead_letter),
        )
        .route(
            "/api/operations/dead-letters/{id}/replay",
            post(routes::replay),
        )
        .route(
            "/api/operations/dead-letters/{id}/discard",
            post(routes::discard),
        )
        .route("/api/operations/sagas", get(routes::sagas))
        .route("/api/operations/sagas/{order_id}", get(routes::saga))
        .route(
            "/api/operations/sagas/{order_id}/retry",
            post(routes::retry),
        )
        .route(
            "/api/operations/sagas/{order_id}/abandon",
            post(routes::abandon),
        )
        .with_state(console)
}

/// The platform's read models as the overview reads their progress.
pub fn read_models() -> Vec<ReadModel> {
    Projection::ALL
        .iter()
        .map(|projection| ReadModel {
            name: projection.name(),
            table: projection.table(),
            aggregate_type: projection.aggregate_type(),
        })
        .collect()
}
