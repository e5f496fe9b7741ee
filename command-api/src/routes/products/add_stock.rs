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
use crate::routes::{
    Accepted, CommandHeaderParams, CommandProblems, SkuPath, Validation, command_failed,
    position_of, schema,
};
use crate::startup::AppState;

/// Units received into stock.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddStock {
    #[schema(schema_with = schema::stock_quantity)]
    #[serde(deserialize_with = "crate::extract::whole_number")]
    pub quantity: i64,
}

/// Add stock to a product.
#[utoipa::path(
    post,
    path = "/api/products/{sku}/stock",
    tag = "products",
    request_body = AddStock,
    params(SkuPath, CommandHeaderParams),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "The stock was added. Needs the `admin` scope.", body = ProductVersion,
         headers(("ETag" = String, description = "The product's version, quoted")),
         links(
             ("PlaceOrder" = (operation_id = "place_order",
                              request_body = json!({"lines": [{"sku": "$response.body#/sku", "quantity": 1}]}),
                              description = "Order the product")),
         )),
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
    let position = position_of::<Product>(&outcome);
    let version = ProductVersion {
        sku,
        version: outcome.version,
        position: position.clone(),
    };
    Ok(Accepted::new(
        StatusCode::ACCEPTED,
        &outcome,
        position,
        version,
    ))
}
