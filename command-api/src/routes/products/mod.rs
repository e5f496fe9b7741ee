//! `POST /api/products` and `POST /api/products/{sku}/stock`.

pub mod add_stock;
pub mod create;

use domain::ProductError;
use serde::Serialize;
use utoipa::ToSchema;

use super::Refusal;
use crate::problem::ApiError;

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
            refusal @ (Self::AlreadyExists { .. }
            | Self::StockLimitExceeded { .. }
            | Self::InsufficientStock { .. }
            | Self::AlreadyReserved { .. }
            | Self::NoReservation { .. }
            | Self::NothingToReturn { .. }) => ApiError::Refused(refusal.to_string()),
        }
    }
}
