//! `POST /api/products/{sku}/price`: sell at a new price from now on.

use axum::extract::State;
use domain::ProductCommand;
use domain::values::Money;
use serde::Deserialize;
use utoipa::ToSchema;

use super::ProductVersion;
use crate::routes::{Accepted, CommandHeaderParams, CommandProblems, SkuPath, Validation, schema};
use crate::state::AppState;
use http_edge::auth::Admin;
use http_edge::extract::{CommandHeaders, JsonBody, PathId};
use http_edge::problem::ApiError;

/// A new unit price, in the product's currency.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePrice {
    #[schema(schema_with = schema::new_price_cents)]
    #[serde(deserialize_with = "http_edge::extract::whole_number")]
    pub price_cents: i64,
}

/// Change a product's price.
#[utoipa::path(
    post,
    path = "/api/products/{sku}/price",
    tag = "products",
    request_body = ChangePrice,
    params(SkuPath, CommandHeaderParams),
    security(("bearer" = ["admin"])),
    responses(
        (status = 202, description = "Orders placed from now on pay the new price; orders placed \
         before keep theirs. `409` when the product already sells at it. Needs the `admin` scope.",
         body = ProductVersion,
         headers(("ETag" = String, description = "The product's version, quoted"))),
        CommandProblems,
    )
)]
pub async fn change_price(
    State(app): State<AppState>,
    Admin(caller): Admin,
    PathId(sku): PathId,
    headers: CommandHeaders,
    body: JsonBody<ChangePrice>,
) -> Result<Accepted<ProductVersion>, ApiError> {
    let mut validation = Validation::default();
    let price_cents = validation.in_range(
        "price_cents",
        body.value.price_cents,
        1,
        Money::MAX_PRICE_CENTS,
    );
    let price_cents = validation.finish(price_cents)?;
    let command = ProductCommand::ChangePrice { price_cents };
    let fingerprint = body.fingerprint.as_deref();
    super::on_product(&app, &caller, sku, &headers, fingerprint, command).await
}
