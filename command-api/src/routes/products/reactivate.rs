//! `POST /api/products/{sku}/reactivate`: sell a discontinued product again.

use axum::extract::State;
use domain::ProductCommand;
use serde::Deserialize;
use utoipa::ToSchema;

use super::ProductVersion;
use crate::routes::{Accepted, CommandHeaderParams, CommandProblems, SkuPath};
use crate::state::AppState;
use http_edge::auth::Admin;
use http_edge::extract::{CommandHeaders, JsonBody, PathId};
use http_edge::problem::ApiError;

/// An empty object: reactivating takes nothing but the product.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Reactivate {}

/// Reactivate a discontinued product.
#[utoipa::path(
    post,
    path = "/api/products/{sku}/reactivate",
    tag = "products",
    request_body = Reactivate,
    params(SkuPath, CommandHeaderParams),
    security(("bearer" = ["admin"])),
    responses(
        (status = 202, description = "New orders may name the product again. `409` when it is \
         not discontinued. Needs the `admin` scope.",
         body = ProductVersion,
         headers(("ETag" = String, description = "The product's version, quoted"))),
        CommandProblems,
    )
)]
pub async fn reactivate(
    State(app): State<AppState>,
    Admin(caller): Admin,
    PathId(sku): PathId,
    headers: CommandHeaders,
    body: JsonBody<Reactivate>,
) -> Result<Accepted<ProductVersion>, ApiError> {
    let Reactivate {} = body.value;
    let fingerprint = body.fingerprint.as_deref();
    let command = ProductCommand::Reactivate;
    super::on_product(&app, &caller, sku, &headers, fingerprint, command).await
}
