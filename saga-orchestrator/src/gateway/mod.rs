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

/// The gateway's answer to an authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorizationAnswer {
    /// The amount is held until `expires_at` (a repeated key may find it
    /// expired already).
    Authorized {
        reference: String,
        expires_at: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// Refused; nothing is held.
    Declined { reason: String },
    /// Voided before this answer (by an undo that got there first):
    /// nothing is held.
    Voided,
}

/// The gateway's answer to a capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaptureAnswer {
    Captured {
        reference: String,
    },
    /// The card's issuer refused it; nothing was taken.
    Declined {
        reason: String,
    },
    /// The authorization expired; nothing was taken.
    Expired,
}

/// Takes and gives back money.
pub trait PaymentGateway: Send + Sync + 'static {
    /// Charges once per key. May never answer: callers bound it with a deadline.
    fn charge(
        &self,
        request: &ChargeRequest,
    ) -> impl Future<Output = Result<ChargeAnswer, Unavailable>> + Send;

    /// Refunds or voids the charge made under `key`.
    fn refund(&self, key: &str) -> impl Future<Output = Result<RefundAnswer, Unavailable>> + Send;

    /// Holds `request.amount_cents` once per key. May never answer.
    fn authorize(
        &self,
        request: &ChargeRequest,
    ) -> impl Future<Output = Result<AuthorizationAnswer, Unavailable>> + Send;

    /// Captures `amount_cents` of the authorization `authorization_key`,
    /// once per `key`.
    fn capture(
        &self,
        authorization_key: &str,
        key: &str,
        amount_cents: i64,
    ) -> impl Future<Output = Result<CaptureAnswer, Unavailable>> + Send;

    /// Releases what the authorization holds and was not captured (or
    /// fences a key never authorized); afterwards nothing more is held.
    fn void(&self, authorization_key: &str)
    -> impl Future<Output = Result<(), Unavailable>> + Send;

    /// Gives `amount_cents` of the capture `capture_key` back, once per
    /// `key`; answers the refund's reference.
    fn refund_capture(
        &self,
        capture_key: &str,
        key: &str,
        amount_cents: i64,
    ) -> impl Future<Output = Result<String, Unavailable>> + Send;
}
