//! `POST /api/orders`, `POST /api/orders/{order_id}/cancel`, and the
//! order's shipments and returns.

pub mod cancel;
pub mod fulfilment;
pub mod place;

use domain::OrderError;

use super::Refusal;
use http_edge::problem::{ApiError, FieldError};

impl Refusal for OrderError {
    fn into_api_error(self, order_id: &str) -> ApiError {
        let invalid = |field: String, message: String| {
            ApiError::Validation(vec![FieldError::new(field, message)])
        };
        match self {
            Self::NotFound => ApiError::not_found(format!("no order has id {order_id}")),
            Self::NoLines => invalid("lines".into(), "must have at least one line".into()),
            Self::TooManyLines { max, .. } => {
                invalid("lines".into(), format!("must have at most {max} lines"))
            }
            Self::QuantityOutOfRange { line, max, .. } => invalid(
                format!("lines[{line}].quantity"),
                format!("must be between 1 and {max}"),
            ),
            Self::DuplicateSku { line, sku } => invalid(
                format!("lines[{line}].sku"),
                format!("{sku} is on an earlier line; put its whole quantity on one line"),
            ),
            // Well-formed orders that the products' prices rule out: the
            // request is valid by the document, and the domain refuses it
            // in the state it finds (a 409, as every refusal).
            Self::MixedCurrencies {
                line,
                expected,
                found,
                ..
            } => ApiError::Refused(format!(
                "lines[{line}].sku: is priced in {found}, but the order is in {expected}; an order has one currency"
            )),
            Self::TotalTooLarge { total_cents, max } => ApiError::Refused(format!(
                "lines: the order's total of {total_cents} minor units is more than the {max} the payment gateway can charge at once; split the order"
            )),
            Self::ShipmentNotFound => {
                ApiError::not_found(format!("order {order_id} has no such shipment"))
            }
            Self::ReturnNotFound => {
                ApiError::not_found(format!("order {order_id} has no such return"))
            }
            // Lines that the order's state rules out, named as in the request.
            refusal @ (Self::SkuNotOrdered { line, .. }
            | Self::NotShippable { line, .. }
            | Self::NotReturnable { line, .. }
            | Self::ReturnWindowClosed { line, .. }) => {
                let text = refusal.to_string();
                let rule = text
                    .split_once(": ")
                    .map_or(text.as_str(), |(_, rule)| rule);
                ApiError::Refused(format!("lines[{line}]: {rule}"))
            }
            refusal @ (Self::AlreadyPlaced
            | Self::AlreadyConfirmed
            | Self::AlreadyCancelled
            | Self::NotConfirmed
            | Self::FullyShipped
            | Self::ShipmentPending
            | Self::ShipmentExists
            | Self::TooManyShipments { .. }
            | Self::TooManyReturns { .. }
            | Self::ShipmentNotPending { .. }
            | Self::NotShipped { .. }
            | Self::ReturnExists
            | Self::ReturnAlreadyReceived) => ApiError::Refused(refusal.to_string()),
        }
    }
}
