//! `POST /api/products/{sku}/stock`: receive units into stock.

use axum::extract::State;
use axum::http::StatusCode;
use domain::product::MAX_STOCK_ADDITION;
use domain::{Product, ProductCommand};
use event_store::Expect;
use serde::Deserialize;
use utoipa::ToSchema;

use super::ProductVersion;
use crate::auth::Admin;
use crate::extract::{CommandHeaders, JsonBody, PathId};
use crate::problem::ApiError;
use crate::routes::{Accepted, CommandHeaderParams, CommandProblems, Validation, command_failed};
use crate::startup::AppState;

/// Units received into stock.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddStock {
    /// 1 to 1,000,000.
    #[schema(example = 25, minimum = 1, maximum = 1_000_000)]
    pub quantity: i64,
}

/// Add stock to a product.
#[utoipa::path(
    post,
    path = "/api/products/{sku}/stock",
    tag = "products",
    request_body = AddStock,
    params(("sku" = String, Path, description = "The product's SKU"), CommandHeaderParams),
    responses(
        (status = 202, description = "The stock was added.", body = ProductVersion,
         headers(("ETag" = String, description = "The product's version, quoted"))),
        CommandProblems,
    )
)]
pub async fn add_stock(
    State(app): State<AppState>,
    Admin(caller): Admin,
    PathId(sku): PathId,
    headers: CommandHeaders,
    body: JsonBody<AddStock>,
) -> Result<Accepted<ProductVersion>, ApiError> {
    let mut validation = Validation::default();
    let quantity = validation.in_range(
        "quantity",
        body.value.quantity,
        1,
        i64::from(MAX_STOCK_ADDITION),
    );
    let quantity = validation.finish(quantity)?;
    // A SKU that cannot exist names no product.
    domain::values::Sku::parse(&sku)
        .map_err(|_| ApiError::not_found(format!("no product has SKU {sku}")))?;
    let context = app.command_context(&caller, &headers, body.fingerprint.as_deref());
    let outcome = app
        .bus()
        .execute::<Product>(
            &sku,
            ProductCommand::AddStock { quantity },
            &context,
            Expect::Existing,
        )
        .await
        .map_err(|error| command_failed(error, &sku))?;
    let version = ProductVersion {
        sku,
        version: outcome.version,
    };
    Ok(Accepted::new(StatusCode::ACCEPTED, &outcome, version))
}
