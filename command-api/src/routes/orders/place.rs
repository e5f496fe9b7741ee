//! `POST /api/orders`: place an order at the products' current prices.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::StatusCode;
use command_bus::Expect;
use domain::order::{MAX_LINE_QUANTITY, MAX_LINES, PricedLine};
use domain::values::{
    AddressLine, Country, CustomerId, Email, OrderId, PaymentMethod, PostalCode, ShippingAddress,
    Sku,
};
use domain::{Order, OrderCommand, ProductError};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use identity::Caller;

use crate::routes::{
    Accepted, CommandHeaderParams, CommandProblems, Validation, command_failed, position_of, schema,
};
use crate::state::AppState;
use http_edge::auth::Ordering;
use http_edge::extract::{CommandHeaders, JsonBody};
use http_edge::problem::{ApiError, FieldError};

/// An order. Unit prices are not sent: they are the products' prices at placement.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrder {
    #[schema(schema_with = schema::customer_id)]
    #[serde(default)]
    pub customer_id: Option<String>,
    /// 1–100 lines, all priced in one currency; lines naming the same SKU
    /// are added together.
    #[schema(min_items = 1, max_items = 100)]
    pub lines: Vec<OrderLineRequest>,
    #[schema(schema_with = schema::payment_method)]
    pub payment_method: String,
    /// Where the goods go; optional (absent or null).
    #[serde(default)]
    pub shipping_address: Option<AddressRequest>,
    /// Where the customer hears about the order; optional (absent or null).
    #[schema(schema_with = schema::email)]
    #[serde(default)]
    pub email: Option<String>,
}

/// A postal address. Every field but `line2` is required and not blank.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddressRequest {
    /// Who receives the goods.
    #[schema(schema_with = schema::address_line)]
    pub name: String,
    #[schema(schema_with = schema::address_line)]
    pub line1: String,
    /// Optional (absent or null).
    #[schema(schema_with = schema::optional_address_line)]
    #[serde(default)]
    pub line2: Option<String>,
    #[schema(schema_with = schema::address_line)]
    pub city: String,
    #[schema(schema_with = schema::postal_code)]
    pub postal_code: String,
    #[schema(schema_with = schema::country)]
    pub country: String,
}

impl AddressRequest {
    /// The address, recording in `validation` each field that breaks the rules.
    fn check(&self, validation: &mut Validation) -> Option<ShippingAddress> {
        let field = |name: &str| format!("shipping_address.{name}");
        let name = validation.check(field("name"), AddressLine::parse(&self.name));
        let line1 = validation.check(field("line1"), AddressLine::parse(&self.line1));
        let line2 = match &self.line2 {
            None => Some(None),
            Some(line2) => validation
                .check(field("line2"), AddressLine::parse(line2))
                .map(Some),
        };
        let city = validation.check(field("city"), AddressLine::parse(&self.city));
        let postal_code =
            validation.check(field("postal_code"), PostalCode::parse(&self.postal_code));
        let country = validation.check(field("country"), Country::parse(&self.country));
        Some(ShippingAddress {
            name: name?,
            line1: line1?,
            line2: line2?,
            city: city?,
            postal_code: postal_code?,
            country: country?,
        })
    }
}

/// One line of an order.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderLineRequest {
    #[schema(schema_with = schema::sku)]
    pub sku: String,
    #[schema(schema_with = schema::line_quantity)]
    #[serde(deserialize_with = "http_edge::extract::whole_number")]
    pub quantity: i64,
}

/// The placed order.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderPlacedResponse {
    pub order_id: Uuid,
    /// Send it back as `If-Match: "<version>"` to update only this version.
    #[schema(example = 1)]
    pub version: u64,
    /// Always `PLACED`: the saga takes it from here.
    #[schema(schema_with = schema::placed)]
    pub status: String,
    #[schema(schema_with = schema::position)]
    pub position: String,
}

/// The request's lines, checked but not yet priced.
struct Requested {
    customer_id: CustomerId,
    payment_method: PaymentMethod,
    lines: Vec<(Sku, u32)>,
    shipping_address: Option<Box<ShippingAddress>>,
    email: Option<Email>,
}

impl PlaceOrder {
    fn check(self, caller: &Caller) -> Result<Requested, ApiError> {
        let mut validation = Validation::default();
        let customer_id = match &self.customer_id {
            None => Some(caller.customer().clone()),
            Some(named) => validation.check("customer_id", CustomerId::parse(named)),
        };
        let payment_method =
            validation.check("payment_method", PaymentMethod::parse(&self.payment_method));
        if self.lines.is_empty() || self.lines.len() > MAX_LINES {
            validation.reject("lines", format!("must have 1 to {MAX_LINES} lines"));
        }
        // Lines naming one SKU become one line: a cart may repeat a product.
        let mut position: HashMap<Sku, usize> = HashMap::new();
        let mut lines: Vec<(Sku, u32)> = Vec::with_capacity(self.lines.len());
        for (i, line) in self.lines.iter().enumerate() {
            let sku = validation.check(format!("lines[{i}].sku"), Sku::parse(&line.sku));
            let quantity = validation.in_range(
                format!("lines[{i}].quantity"),
                line.quantity,
                1,
                i64::from(MAX_LINE_QUANTITY),
            );
            let (Some(sku), Some(quantity)) = (sku, quantity) else {
                continue;
            };
            match position.get(&sku) {
                // At most 100 lines of 10,000: the sum stays within the
                // order's limit for one SKU.
                Some(&earlier) => lines[earlier].1 += quantity,
                None => {
                    position.insert(sku.clone(), lines.len());
                    lines.push((sku, quantity));
                }
            }
        }
        let shipping_address = match &self.shipping_address {
            None => Some(None),
            Some(address) => address
                .check(&mut validation)
                .map(|address| Some(Box::new(address))),
        };
        let email = match &self.email {
            None => Some(None),
            Some(email) => validation.check("email", Email::parse(email)).map(Some),
        };
        let contact = shipping_address.zip(email);
        let ((customer_id, payment_method), (shipping_address, email)) =
            validation.finish(customer_id.zip(payment_method).zip(contact))?;
        if &customer_id != caller.customer() && !caller.is_admin() {
            return Err(ApiError::Forbidden(
                "customer_id must be the token's subject: a customer places orders only for themselves"
                    .into(),
            ));
        }
        Ok(Requested {
            customer_id,
            payment_method,
            lines,
            shipping_address,
            email,
        })
    }
}

/// Place an order.
#[utoipa::path(
    post,
    path = "/api/orders",
    tag = "orders",
    request_body = PlaceOrder,
    params(CommandHeaderParams),
    security(("bearer" = ["orders"]), ("bearer" = ["admin"])),
    responses(
        (status = 202, description = "The order is placed; the saga reserves stock and takes payment. \
                                      Needs the `orders` or the `admin` scope.",
         body = OrderPlacedResponse,
         headers(("ETag" = String, description = "The order's version, quoted")),
         links(
             ("CancelOrder" = (operation_id = "cancel_order", parameters(("order_id" = "$response.body#/order_id")),
                               description = "Cancel the order")),
         )),
        CommandProblems,
    )
)]
pub async fn place_order(
    State(app): State<AppState>,
    Ordering(caller): Ordering,
    headers: CommandHeaders,
    body: JsonBody<PlaceOrder>,
) -> Result<Accepted<OrderPlacedResponse>, ApiError> {
    let requested = body.value.check(&caller)?;
    let lines = price(&app, requested.lines).await?;
    let order_id = OrderId::new(Uuid::now_v7());
    let command = OrderCommand::PlaceOrder {
        order_id,
        customer_id: requested.customer_id,
        lines,
        payment_method: requested.payment_method,
        shipping_address: requested.shipping_address,
        email: requested.email,
    };
    let context = app.command_context(&caller, &headers, body.fingerprint.as_deref());
    let id = order_id.to_string();
    let outcome = app
        .bus()
        .execute::<Order>(&id, command, &context, Expect::New)
        .await
        .map_err(|error| command_failed(error, &id))?;
    // On a replay this is the order the first request placed.
    let order_id =
        Uuid::parse_str(&outcome.aggregate_id).map_err(|error| ApiError::Internal(error.into()))?;
    let position = position_of::<Order>(&outcome);
    let placed = OrderPlacedResponse {
        order_id,
        version: outcome.version,
        status: domain::OrderStatus::Placed.as_str().to_owned(),
        position: position.clone(),
    };
    Ok(Accepted::new(
        StatusCode::ACCEPTED,
        &outcome,
        position,
        placed,
    ))
}

/// Attaches each product's current price; unknown SKUs answer 404, and
/// discontinued ones 409.
async fn price(app: &AppState, lines: Vec<(Sku, u32)>) -> Result<Vec<PricedLine>, ApiError> {
    let skus: Vec<Sku> = lines.iter().map(|(sku, _)| sku.clone()).collect();
    let details = app.catalog().details(&skus).await.map_err(|error| {
        if error.is_unavailable() {
            ApiError::Unavailable(error.into())
        } else {
            ApiError::Internal(error.into())
        }
    })?;
    let mut priced = Vec::with_capacity(lines.len());
    let mut unknown = Vec::new();
    let mut discontinued = Vec::new();
    for (i, ((sku, quantity), details)) in lines.into_iter().zip(details).enumerate() {
        match details {
            Some(details) if !details.active => {
                discontinued.push(ProductError::Discontinued { sku }.to_string());
            }
            Some(details) => priced.push(PricedLine {
                sku,
                quantity,
                unit_price: details.price,
            }),
            None => unknown.push(FieldError::new(
                format!("lines[{i}].sku"),
                format!("no product has SKU {sku}"),
            )),
        }
    }
    if !unknown.is_empty() {
        let skus: Vec<&str> = unknown.iter().map(|e| e.field.as_str()).collect();
        return Err(ApiError::NotFound {
            detail: format!("unknown products at {}", skus.join(", ")),
            errors: unknown,
        });
    }
    if !discontinued.is_empty() {
        return Err(ApiError::Refused(format!(
            "{}: new orders cannot name it",
            discontinued.join("; ")
        )));
    }
    Ok(priced)
}
