//! `POST /api/products/{sku}/stock`: receive units into stock.

use axum::extract::State;
use domain::ProductCommand;
use domain::product::MAX_STOCK_ADDITION;
use serde::Deserialize;
use utoipa::ToSchema;

use super::ProductVersion;
use crate::routes::{Accepted, CommandHeaderParams, CommandProblems, SkuPath, Validation, schema};
use crate::state::AppState;
use http_edge::auth::Admin;
use http_edge::extract::{CommandHeaders, JsonBody, PathId};
use http_edge::problem::ApiError;

/// Units received into stock.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddStock {
    #[schema(schema_with = schema::stock_quantity)]
    #[serde(deserialize_with = "http_edge::extract::whole_number")]
    pub quantity: i64,
}

/// Add stock to a product.
#[utoipa::path(
    post,
    path = "/api/products/{sku}/stock",
    tag = "products",
    request_body = AddStock,
    params(SkuPath, CommandHeaderParams),
    security(("bearer" = ["admin"])),
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
    let command = ProductCommand::AddStock { quantity };
    let fingerprint = body.fingerprint.as_deref();
    super::on_product(&app, &caller, sku, &headers, fingerprint, command).await
}
