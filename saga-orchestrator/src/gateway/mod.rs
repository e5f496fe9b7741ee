//! The payment gateway port: what the saga asks of a payment provider.
//!
//! Every charge carries a key; the gateway answers a repeated key with what
//! became of the first charge and never charges twice. A refund names the
//! charge's key and works whatever happened to the charge: a captured charge
//! is refunded, and a charge not captured yet is voided so that it never will
//! be. [`http::HttpGateway`] speaks this to the platform's gateway service
//! (`payment-gateway`, `orders run --role gateway`) or to a real provider.

pub mod http;

use std::future::Future;

/// A charge to take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeRequest {
    /// Idempotency key: the same key is the same charge.
    pub key: String,
    pub amount_cents: i64,
    pub currency: String,
    /// The customer's payment token, such as `tok_visa`.
    pub payment_method: String,
}

/// The gateway's answer to a charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeAnswer {
    /// The money is captured.
    Approved { reference: String },
    /// Refused; nothing was captured.
    Declined { reason: String },
    /// The charge was refunded or voided before this answer (by an undo
    /// that got there first): nothing is held.
    Undone,
}

/// The gateway's answer to a refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundAnswer {
    /// The charge had been captured; the money (`amount_cents`, as the
    /// gateway says) went back to the customer.
    Refunded {
        reference: Option<String>,
        amount_cents: Option<i64>,
    },
    /// Nothing was captured under the key; nothing ever will be.
    NothingCaptured,
}

/// The gateway could not answer now; trying again may work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("payment gateway unavailable: {0}")]
pub struct Unavailable(pub String);

/// Takes and gives back money.
pub trait PaymentGateway: Send + Sync + 'static {
    /// Charges once per key. May never answer: callers bound it with a deadline.
    fn charge(
        &self,
        request: &ChargeRequest,
    ) -> impl Future<Output = Result<ChargeAnswer, Unavailable>> + Send;

    /// Refunds or voids the charge made under `key`.
    fn refund(&self, key: &str) -> impl Future<Output = Result<RefundAnswer, Unavailable>> + Send;
}
