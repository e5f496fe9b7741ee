//! `POST /api/orders/{order_id}/cancel`: cancel a placed or confirmed order.

use axum::extract::State;
use axum::http::StatusCode;
use command_bus::Expect;
use domain::values::{OrderId, Reason};
use domain::{Order, OrderCommand};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::routes::{
    Accepted, CommandHeaderParams, CommandProblems, OrderPath, Validation, command_failed,
    position_of, schema,
};
use crate::state::AppState;
use http_edge::auth::Ordering;
use http_edge::extract::{CommandHeaders, JsonBody, PathId};
use http_edge::problem::ApiError;

/// Why the order is cancelled.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelOrder {
    #[schema(schema_with = schema::reason)]
    pub reason: String,
}

/// The cancelled order's id and version.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderVersion {
    pub order_id: Uuid,
    #[schema(example = 2)]
    pub version: u64,
    #[schema(schema_with = crate::routes::schema::position)]
    pub position: String,
}

/// Cancel an order. The saga refunds the payment and returns the stock. A
/// customer (scope `orders`) cancels only their own orders: another
/// customer's order answers 404, as an unknown one does.
#[utoipa::path(
    post,
    path = "/api/orders/{order_id}/cancel",
    tag = "orders",
    request_body = CancelOrder,
    params(OrderPath, CommandHeaderParams),
    security(("bearer" = ["orders"]), ("bearer" = ["admin"])),
    responses(
        (status = 202, description = "The order is cancelled.", body = OrderVersion,
         headers(("ETag" = String, description = "The order's version, quoted")),
         links(
             ("CancelAgain" = (operation_id = "cancel_order", parameters(("order_id" = "$response.body#/order_id")),
                               description = "A cancelled order cannot be cancelled again (409)")),
         )),
        CommandProblems,
    )
)]
pub async fn cancel_order(
    State(app): State<AppState>,
    Ordering(caller): Ordering,
    PathId(order_id): PathId,
    headers: CommandHeaders,
    body: JsonBody<CancelOrder>,
) -> Result<Accepted<OrderVersion>, ApiError> {
    let mut validation = Validation::default();
    let reason = validation.check("reason", Reason::parse(&body.value.reason));
    let reason = validation.finish(reason)?;
    // Orders have UUIDs; anything else names no order.
    let order_id = OrderId::parse(&order_id)
        .map_err(|_| ApiError::not_found(format!("no order has id {order_id}")))?;
    let id = order_id.to_string();
    let context = app.command_context(&caller, &headers, body.fingerprint.as_deref());
    let outcome = app
        .bus()
        .execute::<Order>(
            &id,
            OrderCommand::CancelOrder {
                reason,
                // An administrator cancels any order; a customer only their own.
                customer: (!caller.is_admin()).then(|| caller.customer().clone()),
            },
            &context,
            Expect::Existing,
        )
        .await
        .map_err(|error| command_failed(error, &id))?;
    let position = position_of::<Order>(&outcome);
    let cancelled = OrderVersion {
        order_id: order_id.as_uuid(),
        version: outcome.version,
        position: position.clone(),
    };
    Ok(Accepted::new(
        StatusCode::ACCEPTED,
        &outcome,
        position,
        cancelled,
    ))
}
