//! The catalogue's and the warehouse's commands: `POST /api/products` and
//! `POST /api/products/{sku}/...`.

pub mod add_stock;
pub mod adjust_stock;
pub mod change_price;
pub mod create;
pub mod discontinue;
pub mod reactivate;

use axum::http::StatusCode;
use command_bus::Expect;
use domain::{Product, ProductCommand, ProductError};
use identity::Caller;
use serde::Serialize;
use utoipa::ToSchema;

use super::{Accepted, Refusal, command_failed, position_of};
use crate::state::AppState;
use http_edge::extract::CommandHeaders;
use http_edge::problem::ApiError;

/// Runs `command` on the existing product `sku` names: `202` with the
/// product's version, `404` for a SKU no product has (or none could have).
pub async fn on_product(
    app: &AppState,
    caller: &Caller,
    sku: String,
    headers: &CommandHeaders,
    fingerprint: Option<&str>,
    command: ProductCommand,
) -> Result<Accepted<ProductVersion>, ApiError> {
    domain::values::Sku::parse(&sku)
        .map_err(|_| ApiError::not_found(format!("no product has SKU {sku}")))?;
    let context = app.command_context(caller, headers, fingerprint);
    let outcome = app
        .bus()
        .execute::<Product>(&sku, command, &context, Expect::Existing)
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

/// A product's SKU and its version after the command.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProductVersion {
    #[schema(example = "MUG-01")]
    pub sku: String,
    /// Send it back as `If-Match: "<version>"` to update only this version.
    #[schema(example = 1)]
    pub version: u64,
    #[schema(schema_with = super::schema::position)]
    pub position: String,
}

impl Refusal for ProductError {
    fn into_api_error(self, sku: &str) -> ApiError {
        match self {
            Self::NotFound => ApiError::not_found(format!("no product has SKU {sku}")),
            Self::QuantityOutOfRange { min, max, .. } => {
                ApiError::invalid("quantity", format!("must be between {min} and {max}"))
            }
            Self::PriceOutOfRange { max, .. } => {
                ApiError::invalid("price_cents", format!("must be between 1 and {max}"))
            }
            refusal @ (Self::AlreadyExists { .. }
            | Self::PriceUnchanged { .. }
            | Self::AlreadyDiscontinued { .. }
            | Self::NotDiscontinued { .. }
            | Self::Discontinued { .. }
            | Self::AdjustmentBelowReserved { .. }
            | Self::StockLimitExceeded { .. }
            | Self::InsufficientStock { .. }
            | Self::AlreadyReserved { .. }
            | Self::NoReservation { .. }
            | Self::NothingToReturn { .. }) => ApiError::Refused(refusal.to_string()),
        }
    }
}
