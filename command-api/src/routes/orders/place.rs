//! `POST /api/orders`: place an order at the products' current prices.

use std::collections::HashSet;

use axum::extract::State;
use axum::http::StatusCode;
use domain::order::{MAX_LINE_QUANTITY, MAX_LINES, PricedLine};
use domain::values::{CustomerId, OrderId, PaymentMethod, Sku};
use domain::{Order, OrderCommand};
use event_store::Expect;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use identity::Caller;

use crate::auth::Ordering;
use crate::extract::{CommandHeaders, JsonBody};
use crate::problem::{ApiError, FieldError};
use crate::routes::{Accepted, CommandHeaderParams, CommandProblems, Validation, command_failed};
use crate::startup::AppState;

/// An order. Unit prices are not sent: they are the products' prices at placement.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrder {
    /// The shop's id for the customer, 1–128 characters. Optional: it is the
    /// token's `sub`. When sent it must equal `sub` (403 otherwise), unless
    /// the caller is an administrator placing an order for a customer.
    #[schema(example = "customer-42")]
    #[serde(default)]
    pub customer_id: Option<String>,
    /// 1–100 lines, each SKU at most once, all priced in one currency.
    pub lines: Vec<OrderLineRequest>,
    /// A payment token for the gateway, such as `tok_visa`.
    #[schema(example = "tok_visa")]
    pub payment_method: String,
}

/// One line of an order.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderLineRequest {
    #[schema(example = "MUG-01")]
    pub sku: String,
    /// 1 to 10,000.
    #[schema(example = 2, minimum = 1, maximum = 10_000)]
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
    #[schema(example = "PLACED")]
    pub status: String,
}

/// The request's lines, checked but not yet priced.
struct Requested {
    customer_id: CustomerId,
    payment_method: PaymentMethod,
    lines: Vec<(Sku, u32)>,
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
        let mut seen = HashSet::new();
        let mut lines = Vec::with_capacity(self.lines.len());
        for (i, line) in self.lines.iter().enumerate() {
            let sku = validation.check(format!("lines[{i}].sku"), Sku::parse(&line.sku));
            if let Some(sku) = &sku
                && !seen.insert(sku.clone())
            {
                validation.reject(
                    format!("lines[{i}].sku"),
                    format!("{sku} is on an earlier line; put its whole quantity on one line"),
                );
            }
            let quantity = validation.in_range(
                format!("lines[{i}].quantity"),
                line.quantity,
                1,
                i64::from(MAX_LINE_QUANTITY),
            );
            lines.extend(sku.zip(quantity));
        }
        let (customer_id, payment_method) = validation.finish(customer_id.zip(payment_method))?;
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
    responses(
        (status = 202, description = "The order is placed; the saga reserves stock and takes payment.",
         body = OrderPlacedResponse,
         headers(("ETag" = String, description = "The order's version, quoted"))),
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
    let placed = OrderPlacedResponse {
        order_id,
        version: outcome.version,
        status: domain::OrderStatus::Placed.as_str().to_owned(),
    };
    Ok(Accepted::new(StatusCode::ACCEPTED, &outcome, placed))
}

/// Attaches each product's current price; unknown SKUs answer 404.
async fn price(app: &AppState, lines: Vec<(Sku, u32)>) -> Result<Vec<PricedLine>, ApiError> {
    let skus: Vec<Sku> = lines.iter().map(|(sku, _)| sku.clone()).collect();
    let details = app
        .catalog()
        .details(&skus)
        .await
        .map_err(|error| ApiError::Unavailable(error.into()))?;
    let mut priced = Vec::with_capacity(lines.len());
    let mut unknown = Vec::new();
    for (i, ((sku, quantity), details)) in lines.into_iter().zip(details).enumerate() {
        match details {
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
    Ok(priced)
}
