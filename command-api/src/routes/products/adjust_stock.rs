//! `POST /api/products/{sku}/stock/adjustments`: correct the count on hand.

use axum::extract::State;
use domain::ProductCommand;
use domain::product::MAX_STOCK_ADDITION;
use domain::values::Reason;
use serde::Deserialize;
use utoipa::ToSchema;

use super::ProductVersion;
use crate::routes::{Accepted, CommandHeaderParams, CommandProblems, SkuPath, Validation, schema};
use crate::state::AppState;
use http_edge::auth::Admin;
use http_edge::extract::{CommandHeaders, JsonBody, PathId};
use http_edge::problem::ApiError;

/// A correction of the units on hand, with why (a count, breakage, loss).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdjustStock {
    #[schema(schema_with = schema::stock_delta)]
    #[serde(deserialize_with = "http_edge::extract::whole_number")]
    pub delta: i64,
    #[schema(schema_with = schema::reason)]
    pub reason: String,
}

/// Adjust a product's stock.
#[utoipa::path(
    post,
    path = "/api/products/{sku}/stock/adjustments",
    tag = "products",
    request_body = AdjustStock,
    params(SkuPath, CommandHeaderParams),
    security(("bearer" = ["admin"])),
    responses(
        (status = 202, description = "Units on hand changed by `delta`. `409` when fewer would be \
         left on hand than orders hold reserved. Needs the `admin` scope.",
         body = ProductVersion,
         headers(("ETag" = String, description = "The product's version, quoted"))),
        CommandProblems,
    )
)]
pub async fn adjust_stock(
    State(app): State<AppState>,
    Admin(caller): Admin,
    PathId(sku): PathId,
    headers: CommandHeaders,
    body: JsonBody<AdjustStock>,
) -> Result<Accepted<ProductVersion>, ApiError> {
    let mut validation = Validation::default();
    let max = i64::from(MAX_STOCK_ADDITION);
    let delta = match body.value.delta {
        0 => {
            validation.reject("delta", "must not be 0");
            None
        }
        delta => validation.in_range("delta", delta, -max, max),
    };
    let reason = validation.check("reason", Reason::parse(&body.value.reason));
    let (delta, reason) = validation.finish(delta.zip(reason))?;
    let command = ProductCommand::AdjustStock { delta, reason };
    let fingerprint = body.fingerprint.as_deref();
    super::on_product(&app, &caller, sku, &headers, fingerprint, command).await
}
