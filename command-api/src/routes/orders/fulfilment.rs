//! What happens to a confirmed order's goods:
//! `POST /api/orders/{order_id}/shipments`,
//! `POST /api/orders/{order_id}/shipments/{shipment_id}/delivered`,
//! `POST /api/orders/{order_id}/returns` and
//! `POST /api/orders/{order_id}/returns/{return_id}/receive`.
//!
//! A new shipment's or return's id is chosen here. With an
//! `Idempotency-Key` it is derived from the caller, the order and the key,
//! so that a retry (answered or not) names the same shipment or return and
//! never makes a second one.

use axum::extract::State;
use axum::http::StatusCode;
use command_bus::Expect;
use domain::order::{ItemLine, MAX_LINES, MAX_SKU_QUANTITY};
use domain::values::{Carrier, OrderId, Reason, ReturnId, ShipmentId, Sku, TrackingNumber};
use domain::{Order, OrderCommand};
use identity::Caller;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::cancel::OrderVersion;
use crate::routes::{
    Accepted, CommandHeaderParams, CommandProblems, OrderPath, Validation, command_failed,
    position_of, schema,
};
use crate::state::AppState;
use http_edge::auth::{Admin, Ordering};
use http_edge::extract::{CommandHeaders, JsonBody, PathId, PathIds};
use http_edge::problem::ApiError;

/// Units of one SKU of the order.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemRequest {
    #[schema(schema_with = schema::sku)]
    pub sku: String,
    #[schema(schema_with = schema::item_quantity)]
    #[serde(deserialize_with = "http_edge::extract::whole_number")]
    pub quantity: i64,
}

/// Units to ship, and who carries them.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShipmentRequest {
    /// 1 to 100 lines, each SKU once, of units ordered and not shipped yet.
    #[schema(min_items = 1, max_items = 100)]
    pub lines: Vec<ItemRequest>,
    #[schema(schema_with = schema::carrier)]
    pub carrier: String,
    #[schema(schema_with = schema::tracking_number)]
    pub tracking_number: String,
}

/// Delivered units to take back.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReturnRequest {
    /// 1 to 100 lines, each SKU once, of units delivered within the return
    /// window and not returned yet.
    #[schema(min_items = 1, max_items = 100)]
    pub lines: Vec<ItemRequest>,
    #[schema(schema_with = schema::reason)]
    pub reason: String,
}

/// Nothing to say: the carrier delivered it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Delivered {}

/// What became of the returned units.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Receive {
    /// `true`: back on hand; `false`: written off.
    pub restock: bool,
}

/// The order's id and version, and the new shipment's id.
#[derive(Debug, Serialize, ToSchema)]
pub struct ShipmentAccepted {
    pub order_id: Uuid,
    pub shipment_id: Uuid,
    #[schema(example = 3)]
    pub version: u64,
    #[schema(schema_with = crate::routes::schema::position)]
    pub position: String,
}

/// The order's id and version, and the new return's id.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReturnAccepted {
    pub order_id: Uuid,
    pub return_id: Uuid,
    #[schema(example = 7)]
    pub version: u64,
    #[schema(schema_with = crate::routes::schema::position)]
    pub position: String,
}

/// The path of a shipment's route.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // Describes the path; the values come from `PathIds`.
pub struct ShipmentPath {
    #[param(schema_with = schema::order_id, required = true)]
    order_id: String,
    /// The shipment's id, as its request answered it.
    #[param(schema_with = schema::shipment_id, required = true)]
    shipment_id: String,
}

/// The path of a return's route.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // Describes the path; the values come from `PathIds`.
pub struct ReturnPath {
    #[param(schema_with = schema::order_id, required = true)]
    order_id: String,
    /// The return's id, as its request answered it.
    #[param(schema_with = schema::return_id, required = true)]
    return_id: String,
}

/// Ship units of a confirmed order. The shipment is `PENDING` until its
/// value is captured from the authorization; then its units leave the
/// stock and it is `SHIPPED` (a declined capture fails it, and its units
/// stay reserved).
#[utoipa::path(
    post,
    path = "/api/orders/{order_id}/shipments",
    tag = "orders",
    request_body = ShipmentRequest,
    params(OrderPath, CommandHeaderParams),
    security(("bearer" = ["admin"])),
    responses(
        (status = 202, description = "The shipment is asked for (`PENDING`). `409` unless the order \
         is `CONFIRMED` or `PARTIALLY_SHIPPED`, or for more units than are left to ship. Needs the \
         `admin` scope.",
         body = ShipmentAccepted,
         headers(("ETag" = String, description = "The order's version, quoted"))),
        CommandProblems,
    )
)]
pub async fn request_shipment(
    State(app): State<AppState>,
    Admin(caller): Admin,
    PathId(order_id): PathId,
    headers: CommandHeaders,
    body: JsonBody<ShipmentRequest>,
) -> Result<Accepted<ShipmentAccepted>, ApiError> {
    let mut validation = Validation::default();
    let lines = items(&body.value.lines, &mut validation);
    let carrier = validation.check("carrier", Carrier::parse(&body.value.carrier));
    let tracking_number = validation.check(
        "tracking_number",
        TrackingNumber::parse(&body.value.tracking_number),
    );
    let (lines, carrier, tracking_number) = validation.finish(
        lines
            .zip(carrier)
            .zip(tracking_number)
            .map(|((lines, carrier), tracking_number)| (lines, carrier, tracking_number)),
    )?;
    let order_id = order(&order_id)?;
    let shipment_id = ShipmentId::new(new_id(&caller, &order_id, "shipment", &headers));
    let command = OrderCommand::RequestShipment {
        shipment_id,
        lines,
        carrier,
        tracking_number,
        at: chrono::Utc::now(),
    };
    let (outcome, position) = on_order(&app, &caller, &order_id, &headers, &body, command).await?;
    let accepted = ShipmentAccepted {
        order_id: order_id.as_uuid(),
        shipment_id: shipment_id.as_uuid(),
        version: outcome.version,
        position: position.clone(),
    };
    Ok(Accepted::new(
        StatusCode::ACCEPTED,
        &outcome,
        position,
        accepted,
    ))
}

/// Record that the carrier delivered a shipment.
#[utoipa::path(
    post,
    path = "/api/orders/{order_id}/shipments/{shipment_id}/delivered",
    tag = "orders",
    request_body = Delivered,
    params(ShipmentPath, CommandHeaderParams),
    security(("bearer" = ["admin"])),
    responses(
        (status = 202, description = "The shipment is `DELIVERED`; once every unit shipped and \
         every shipment is delivered, so is the order. `409` unless the shipment is `SHIPPED`. \
         Needs the `admin` scope.",
         body = OrderVersion,
         headers(("ETag" = String, description = "The order's version, quoted"))),
        CommandProblems,
    )
)]
pub async fn mark_delivered(
    State(app): State<AppState>,
    Admin(caller): Admin,
    PathIds(order_id, shipment_id): PathIds,
    headers: CommandHeaders,
    body: JsonBody<Delivered>,
) -> Result<Accepted<OrderVersion>, ApiError> {
    let order_id = order(&order_id)?;
    let shipment_id = ShipmentId::parse(&shipment_id).map_err(|_| {
        ApiError::not_found(format!("order {order_id} has no shipment {shipment_id}"))
    })?;
    let command = OrderCommand::MarkDelivered {
        shipment_id,
        at: chrono::Utc::now(),
    };
    version_of(&app, &caller, &order_id, &headers, &body, command).await
}

/// Ask to return delivered units, within the return window of their
/// delivery. The order's customer (scope `orders`) returns only their own
/// orders: another customer's order answers 404, as an unknown one does.
#[utoipa::path(
    post,
    path = "/api/orders/{order_id}/returns",
    tag = "orders",
    request_body = ReturnRequest,
    params(OrderPath, CommandHeaderParams),
    security(("bearer" = ["orders"]), ("bearer" = ["admin"])),
    responses(
        (status = 202, description = "The return is `REQUESTED`. `409` for units not delivered, \
         returned already, or delivered longer ago than the return window.",
         body = ReturnAccepted,
         headers(("ETag" = String, description = "The order's version, quoted"))),
        CommandProblems,
    )
)]
pub async fn request_return(
    State(app): State<AppState>,
    Ordering(caller): Ordering,
    PathId(order_id): PathId,
    headers: CommandHeaders,
    body: JsonBody<ReturnRequest>,
) -> Result<Accepted<ReturnAccepted>, ApiError> {
    let mut validation = Validation::default();
    let lines = items(&body.value.lines, &mut validation);
    let reason = validation.check("reason", Reason::parse(&body.value.reason));
    let (lines, reason) = validation.finish(lines.zip(reason))?;
    let order_id = order(&order_id)?;
    let return_id = ReturnId::new(new_id(&caller, &order_id, "return", &headers));
    let command = OrderCommand::RequestReturn {
        return_id,
        lines,
        reason,
        at: chrono::Utc::now(),
        window_days: app.return_window_days(),
        // An administrator returns any order; a customer only their own.
        customer: (!caller.is_admin()).then(|| caller.customer().clone()),
    };
    let (outcome, position) = on_order(&app, &caller, &order_id, &headers, &body, command).await?;
    let accepted = ReturnAccepted {
        order_id: order_id.as_uuid(),
        return_id: return_id.as_uuid(),
        version: outcome.version,
        position: position.clone(),
    };
    Ok(Accepted::new(
        StatusCode::ACCEPTED,
        &outcome,
        position,
        accepted,
    ))
}

/// Record that a return's units arrived: the saga refunds their value at
/// the order's prices, and puts them back on hand if `restock`.
#[utoipa::path(
    post,
    path = "/api/orders/{order_id}/returns/{return_id}/receive",
    tag = "orders",
    request_body = Receive,
    params(ReturnPath, CommandHeaderParams),
    security(("bearer" = ["admin"])),
    responses(
        (status = 202, description = "The return is `RECEIVED`; its refund follows. `409` when it \
         was received already. Needs the `admin` scope.",
         body = OrderVersion,
         headers(("ETag" = String, description = "The order's version, quoted"))),
        CommandProblems,
    )
)]
pub async fn receive_return(
    State(app): State<AppState>,
    Admin(caller): Admin,
    PathIds(order_id, return_id): PathIds,
    headers: CommandHeaders,
    body: JsonBody<Receive>,
) -> Result<Accepted<OrderVersion>, ApiError> {
    let order_id = order(&order_id)?;
    let return_id = ReturnId::parse(&return_id)
        .map_err(|_| ApiError::not_found(format!("order {order_id} has no return {return_id}")))?;
    let command = OrderCommand::ReceiveReturn {
        return_id,
        restock: body.value.restock,
        at: chrono::Utc::now(),
    };
    version_of(&app, &caller, &order_id, &headers, &body, command).await
}

/// The order a path names; anything but a UUID names none.
fn order(order_id: &str) -> Result<OrderId, ApiError> {
    OrderId::parse(order_id).map_err(|_| ApiError::not_found(format!("no order has id {order_id}")))
}

/// Checks a shipment's or a return's lines; `None` once a field is wrong
/// (each named in `validation`).
fn items(lines: &[ItemRequest], validation: &mut Validation) -> Option<Vec<ItemLine>> {
    if lines.is_empty() || lines.len() > MAX_LINES {
        validation.reject("lines", format!("must have 1 to {MAX_LINES} lines"));
        return None;
    }
    // Lines naming one SKU become one line, as an order's do.
    let mut checked: Vec<ItemLine> = Vec::with_capacity(lines.len());
    let mut valid = true;
    for (i, line) in lines.iter().enumerate() {
        let sku = validation.check(format!("lines[{i}].sku"), Sku::parse(&line.sku));
        let quantity = validation.in_range(
            format!("lines[{i}].quantity"),
            line.quantity,
            1,
            i64::from(MAX_SKU_QUANTITY),
        );
        let (Some(sku), Some(quantity)) = (sku, quantity) else {
            valid = false;
            continue;
        };
        // At most 100 lines of a million: the sum fits, and is refused
        // (409) if more than the order holds.
        match checked.iter_mut().find(|earlier| earlier.sku == sku) {
            Some(earlier) => earlier.quantity += quantity,
            None => checked.push(ItemLine { sku, quantity }),
        }
    }
    valid.then_some(checked)
}

/// A new shipment's or return's id: derived from the caller, the order and
/// the idempotency key when there is one (a retry names the same one),
/// fresh otherwise.
fn new_id(caller: &Caller, order_id: &OrderId, what: &str, headers: &CommandHeaders) -> Uuid {
    match &headers.idempotency_key {
        Some(key) => Uuid::new_v5(
            &order_id.as_uuid(),
            format!("{what}\u{0}{}\u{0}{key}", caller.customer().as_str()).as_bytes(),
        ),
        None => Uuid::now_v7(),
    }
}

/// Runs `command` on the existing order: the outcome and its position.
async fn on_order<T>(
    app: &AppState,
    caller: &Caller,
    order_id: &OrderId,
    headers: &CommandHeaders,
    body: &JsonBody<T>,
    command: OrderCommand,
) -> Result<(command_bus::Outcome, String), ApiError> {
    let id = order_id.to_string();
    let context = app.command_context(caller, headers, body.fingerprint.as_deref());
    let outcome = app
        .bus()
        .execute::<Order>(&id, command, &context, Expect::Existing)
        .await
        .map_err(|error| command_failed(error, &id))?;
    let position = position_of::<Order>(&outcome);
    Ok((outcome, position))
}

/// Runs `command` on the existing order and answers its version.
async fn version_of<T>(
    app: &AppState,
    caller: &Caller,
    order_id: &OrderId,
    headers: &CommandHeaders,
    body: &JsonBody<T>,
    command: OrderCommand,
) -> Result<Accepted<OrderVersion>, ApiError> {
    let (outcome, position) = on_order(app, caller, order_id, headers, body, command).await?;
    let version = OrderVersion {
        order_id: order_id.as_uuid(),
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
