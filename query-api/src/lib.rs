//! The GraphQL query API over the read models (async-graphql on axum):
//! queries with Relay cursor pages, the `orderUpdated` subscription over
//! WebSocket, GraphiQL on GET; callers identified by bearer token, and
//! depth, complexity, size, batch, alias and connection limits.

pub mod access;
pub mod consistency;
pub mod graphiql;
pub mod http;
mod introspection;
pub mod limits;
pub mod loaders;
pub mod query;
pub mod slots;
pub mod subscription;
pub mod types;
pub mod updates;

use async_graphql::dataloader::DataLoader;
use async_graphql::{EmptyMutation, Schema};
use axum::Router;
use axum::extract::Request;
use axum::http::header;
use axum::routing::{get, post};
use identity::Authenticator;
use sqlx::PgPool;

use http::Endpoint;
use limits::GraphqlLimits;
use loaders::{HistoryLoader, OrderLoader, PaymentLoader, ProductLoader, SagaLoader};
use query::Query;
use subscription::Subscription;
use updates::Updates;

pub type OrdersSchema = Schema<Query, EmptyMutation, Subscription>;

/// Deepest data query accepted, in fields (introspection is bounded by
/// [`MAX_INTROSPECTION_LISTS`] and [`MAX_NESTING`] instead; see [`limits`]).
pub const MAX_DEPTH: usize = 12;
/// Introspection lists (`types`, `fields`, `args`, ...) nested in one
/// selection: the standard introspection query nests three
/// (`types { fields { args } }`).
pub const MAX_INTROSPECTION_LISTS: usize = 3;
/// Selection sets nested, fragments spread out, as async-graphql's
/// recursion limit counts them: the standard introspection query nests 17
/// with its type references 9 `ofType` deep, so client tools may ask for
/// about 30 deep.
pub const MAX_NESTING: usize = 40;
/// Selections in one document with its fragments spread out.
pub const MAX_SELECTIONS: usize = 5_000;
/// Costliest query accepted: a field costs 1, a page `first` times its items.
pub const MAX_COMPLEXITY: usize = 5_000;
/// Largest page.
pub const MAX_PAGE: i32 = 100;

/// Most directives on one field.
pub const MAX_DIRECTIVES: usize = 5;

fn builder() -> async_graphql::SchemaBuilder<Query, EmptyMutation, Subscription> {
    Schema::build(Query, EmptyMutation, Subscription)
        .limit_recursive_depth(MAX_NESTING)
        .limit_complexity(MAX_COMPLEXITY)
        .limit_directives(MAX_DIRECTIVES)
}

/// The schema, reading from `pool` and announcing changes from `updates`,
/// refusing documents over `limits`.
pub fn schema(pool: PgPool, updates: Updates, limits: GraphqlLimits) -> OrdersSchema {
    builder()
        .extension(limits)
        .extension(introspection::DirectiveDeprecation)
        .extension(http::Guard)
        .data(DataLoader::new(
            ProductLoader { pool: pool.clone() },
            tokio::spawn,
        ))
        .data(DataLoader::new(
            HistoryLoader { pool: pool.clone() },
            tokio::spawn,
        ))
        .data(DataLoader::new(
            OrderLoader { pool: pool.clone() },
            tokio::spawn,
        ))
        .data(DataLoader::new(
            SagaLoader { pool: pool.clone() },
            tokio::spawn,
        ))
        .data(DataLoader::new(
            PaymentLoader { pool: pool.clone() },
            tokio::spawn,
        ))
        .data(consistency::Waits::new(&limits))
        .data(pool)
        .data(updates)
        .finish()
}

/// The schema in SDL, as checked in at `schemas/schema.graphql`.
pub fn sdl() -> String {
    builder().finish().sdl()
}

/// `POST /graphql` for queries; `GET /graphql` opens GraphiQL in a browser or
/// upgrades to a WebSocket for subscriptions. The caller's identity comes
/// from the request (the command API's authentication layer records it) or,
/// on a WebSocket, from `connection_init`, checked by `authenticator`.
pub fn router(
    schema: OrdersSchema,
    authenticator: Authenticator,
    limits: GraphqlLimits,
    access: http::Access,
) -> Router {
    let endpoint = Endpoint::new(schema, authenticator, limits, access);
    let subscriptions = endpoint.clone();
    Router::new()
        .route(
            "/graphql",
            post(move |request: Request| async move { endpoint.execute(request).await }).get(
                move |request: Request| async move {
                    if request.headers().contains_key(header::UPGRADE) {
                        subscriptions.subscribe(request).await
                    } else {
                        graphiql::page()
                    }
                },
            ),
        )
        .route("/graphql/assets/{file}", get(graphiql::asset))
}
