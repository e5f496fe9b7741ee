//! `POST /api/products/{sku}/discontinue`: stop selling a product.

use axum::extract::State;
use domain::ProductCommand;
use domain::values::Reason;
use serde::Deserialize;
use utoipa::ToSchema;

use super::ProductVersion;
use crate::routes::{Accepted, CommandHeaderParams, CommandProblems, SkuPath, Validation, schema};
use crate::state::AppState;
use http_edge::auth::Admin;
use http_edge::extract::{CommandHeaders, JsonBody, PathId};
use http_edge::problem::ApiError;

/// Why the product is no longer sold.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Discontinue {
    #[schema(schema_with = schema::reason)]
    pub reason: String,
}

/// Discontinue a product.
#[utoipa::path(
    post,
    path = "/api/products/{sku}/discontinue",
    tag = "products",
    request_body = Discontinue,
    params(SkuPath, CommandHeaderParams),
    security(("bearer" = ["admin"])),
    responses(
        (status = 202, description = "New orders naming the product are refused with `409`; \
         orders already placed go on. `409` when it is discontinued already. Needs the `admin` scope.",
         body = ProductVersion,
         headers(("ETag" = String, description = "The product's version, quoted"))),
        CommandProblems,
    )
)]
pub async fn discontinue(
    State(app): State<AppState>,
    Admin(caller): Admin,
    PathId(sku): PathId,
    headers: CommandHeaders,
    body: JsonBody<Discontinue>,
) -> Result<Accepted<ProductVersion>, ApiError> {
    let mut validation = Validation::default();
    let reason = validation.check("reason", Reason::parse(&body.value.reason));
    let reason = validation.finish(reason)?;
    let command = ProductCommand::Discontinue { reason };
    let fingerprint = body.fingerprint.as_deref();
    super::on_product(&app, &caller, sku, &headers, fingerprint, command).await
}
