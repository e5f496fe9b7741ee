//! The GraphQL query API over the read models (async-graphql on axum):
//! queries with Relay cursor pages, the `orderUpdated` subscription over
//! WebSocket, GraphiQL on GET, and depth and complexity limits.

pub mod loaders;
pub mod query;
pub mod subscription;
pub mod types;
pub mod updates;

use async_graphql::dataloader::DataLoader;
use async_graphql::http::GraphiQLSource;
use async_graphql::{EmptyMutation, Schema};
use async_graphql_axum::{GraphQL, GraphQLSubscription};
use axum::Router;
use axum::extract::Request;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::post_service;
use sqlx::PgPool;
use tower::ServiceExt;

use loaders::{HistoryLoader, OrderLoader, SagaLoader};
use query::Query;
use subscription::Subscription;
use updates::Updates;

pub type OrdersSchema = Schema<Query, EmptyMutation, Subscription>;

/// Deepest query accepted.
pub const MAX_DEPTH: usize = 12;
/// Costliest query accepted: a field costs 1, a page `first` times its items.
pub const MAX_COMPLEXITY: usize = 5_000;
/// Largest page.
pub const MAX_PAGE: i32 = 100;

fn builder() -> async_graphql::SchemaBuilder<Query, EmptyMutation, Subscription> {
    Schema::build(Query, EmptyMutation, Subscription)
        .limit_depth(MAX_DEPTH)
        .limit_complexity(MAX_COMPLEXITY)
}

/// The schema, reading from `pool` and announcing changes from `updates`.
pub fn schema(pool: PgPool, updates: Updates) -> OrdersSchema {
    builder()
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
        .data(pool)
        .data(updates)
        .finish()
}

/// The schema in SDL, as checked in at `schemas/schema.graphql`.
pub fn sdl() -> String {
    builder().finish().sdl()
}

/// `POST /graphql` for queries; `GET /graphql` opens GraphiQL in a browser or
/// upgrades to a WebSocket for subscriptions.
pub fn router(schema: OrdersSchema) -> Router {
    let subscriptions = GraphQLSubscription::new(schema.clone());
    Router::new().route(
        "/graphql",
        post_service(GraphQL::new(schema)).get(move |request: Request| {
            let subscriptions = subscriptions.clone();
            async move {
                if request.headers().contains_key(header::UPGRADE) {
                    match subscriptions.oneshot(request).await {
                        Ok(response) => response,
                        Err(never) => match never {},
                    }
                } else {
                    graphiql()
                }
            }
        }),
    )
}

fn graphiql() -> Response {
    Html(
        GraphiQLSource::build()
            .endpoint("/graphql")
            .subscription_endpoint("/graphql")
            .title("Order platform")
            .finish(),
    )
    .into_response()
}
