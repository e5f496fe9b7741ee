//! `POST /api/products`: add a product to the catalogue.

use axum::extract::State;
use axum::http::StatusCode;
use command_bus::Expect;
use domain::values::{Currency, Money, ProductName, Sku};
use domain::{Product, ProductCommand};
use serde::Deserialize;
use utoipa::ToSchema;

use super::ProductVersion;
use crate::routes::{
    Accepted, CommandHeaderParams, CommandProblems, Validation, command_failed, position_of, schema,
};
use crate::state::AppState;
use http_edge::auth::Admin;
use http_edge::extract::{CommandHeaders, JsonBody};
use http_edge::problem::ApiError;

/// A new product. It starts with no stock.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProduct {
    #[schema(schema_with = schema::sku)]
    pub sku: String,
    #[schema(schema_with = schema::product_name)]
    pub name: String,
    #[schema(schema_with = schema::price_cents)]
    #[serde(deserialize_with = "http_edge::extract::whole_number")]
    pub price_cents: i64,
    #[schema(schema_with = schema::currency)]
    pub currency: String,
}

impl CreateProduct {
    fn into_command(self) -> Result<(Sku, ProductCommand), ApiError> {
        let mut validation = Validation::default();
        let sku = validation.check("sku", Sku::parse(&self.sku));
        let name = validation.check("name", ProductName::parse(&self.name));
        let currency = validation.check("currency", Currency::parse(&self.currency));
        let price = currency.and_then(|currency| {
            validation.check("price_cents", Money::price(self.price_cents, currency))
        });
        let parts = sku.zip(name).zip(price);
        let ((sku, name), price) = validation.finish(parts)?;
        let command = ProductCommand::CreateProduct {
            sku: sku.clone(),
            name,
            price,
        };
        Ok((sku, command))
    }
}

/// Create a product.
#[utoipa::path(
    post,
    path = "/api/products",
    tag = "products",
    request_body = CreateProduct,
    params(CommandHeaderParams),
    security(("bearer" = ["admin"])),
    responses(
        (status = 201, description = "The product exists now. Needs the `admin` scope.", body = ProductVersion,
         headers(("ETag" = String, description = "The product's version, quoted")),
         links(
             ("AddStock" = (operation_id = "add_stock", parameters(("sku" = "$response.body#/sku")),
                            description = "Receive stock into the new product")),
             ("PlaceOrder" = (operation_id = "place_order",
                              request_body = json!({"lines": [{"sku": "$response.body#/sku", "quantity": 1}]}),
                              description = "Order the new product")),
         )),
        CommandProblems,
    )
)]
pub async fn create_product(
    State(app): State<AppState>,
    Admin(caller): Admin,
    headers: CommandHeaders,
    body: JsonBody<CreateProduct>,
) -> Result<Accepted<ProductVersion>, ApiError> {
    let (sku, command) = body.value.into_command()?;
    let context = app.command_context(&caller, &headers, body.fingerprint.as_deref());
    let outcome = app
        .bus()
        .execute::<Product>(sku.as_str(), command, &context, Expect::New)
        .await
        .map_err(|error| command_failed(error, sku.as_str()))?;
    let position = position_of::<Product>(&outcome);
    let version = ProductVersion {
        sku: outcome.aggregate_id.clone(),
        version: outcome.version,
        position: position.clone(),
    };
    Ok(Accepted::new(
        StatusCode::CREATED,
        &outcome,
        position,
        version,
    ))
}
