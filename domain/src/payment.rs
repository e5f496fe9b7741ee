//! The payment aggregate: one charge for one order, as the payment gateway
//! answered it. `REQUESTED` becomes `APPROVED` or `DECLINED`; only an approved
//! charge can be refunded, and only once.

use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::values::{Currency, Money, OrderId, PaymentMethod, Reason};

/// The largest charge the payment gateway takes, in minor units: 100 million
/// major units. An order whose total is larger could never be paid, so it is
/// refused when placed ([`crate::OrderError::TotalTooLarge`]).
pub const MAX_CHARGE_CENTS: i64 = 10_000_000_000;

/// What a caller may ask of a payment.
#[derive(Debug, Clone, PartialEq)]
pub enum PaymentCommand {
    /// Ask the gateway to charge `amount` for an order.
    RequestCharge {
        order_id: OrderId,
        amount: Money,
        payment_method: PaymentMethod,
    },
    /// The gateway captured the charge.
    ApproveCharge { provider_reference: String },
    /// The gateway refused the charge.
    DeclineCharge { reason: Reason },
    /// Give an approved charge back to the customer.
    RefundPayment { reason: Reason },
}

/// A charge was asked of the gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ChargeRequested {
    pub order_id: OrderId,
    pub amount_cents: i64,
    pub currency: Currency,
    pub payment_method: PaymentMethod,
}

/// The gateway captured the charge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ChargeApproved {
    pub provider_reference: String,
}

/// The gateway refused the charge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ChargeDeclined {
    pub reason: Reason,
}

/// The captured amount went back to the customer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentRefunded {
    pub amount_cents: i64,
    pub reason: Reason,
}

crate::events! {
    /// Everything that can happen to a payment.
    pub enum PaymentEvent for Payment {
        ChargeRequested,
        ChargeApproved,
        ChargeDeclined,
        PaymentRefunded,
    }
}

/// Where a payment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PaymentStatus {
    Requested,
    Approved,
    Declined,
    Refunded,
}

/// Why a payment refused a command. Each is a business answer, not a failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    /// No charge was requested under this payment id.
    #[error("no payment with this id exists")]
    NotFound,
    /// A charge was already requested under this payment id.
    #[error("a charge was already requested for this payment")]
    AlreadyRequested,
    /// Charges are for zero to [`MAX_CHARGE_CENTS`] minor units.
    #[error("the amount must be between 0 and {MAX_CHARGE_CENTS}")]
    AmountOutOfRange,
    /// The gateway's reference must not be empty.
    #[error("the provider reference must not be empty")]
    MissingProviderReference,
    /// The charge was approved already.
    #[error("the charge is already approved")]
    AlreadyApproved,
    /// The charge was declined; a declined charge is final.
    #[error("the charge was declined")]
    AlreadyDeclined,
    /// The charge was refunded already.
    #[error("the payment is already refunded")]
    AlreadyRefunded,
    /// Only an approved charge can be refunded.
    #[error("the charge is not approved, so there is nothing to refund")]
    NotApproved,
}

/// The state of a requested payment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestedPayment {
    pub order_id: OrderId,
    pub amount_cents: i64,
    pub currency: Currency,
    pub payment_method: PaymentMethod,
    pub status: PaymentStatus,
}

/// One payment, rebuilt from its events; `None` until a charge is requested.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Payment {
    requested: Option<RequestedPayment>,
}

impl Payment {
    pub fn requested(&self) -> Option<&RequestedPayment> {
        self.requested.as_ref()
    }

    pub fn status(&self) -> Option<PaymentStatus> {
        self.requested.as_ref().map(|payment| payment.status)
    }

    /// Decides what a command does to this payment, without changing it.
    pub fn decide(&self, command: PaymentCommand) -> Result<Vec<PaymentEvent>, PaymentError> {
        let event = match command {
            PaymentCommand::RequestCharge {
                order_id,
                amount,
                payment_method,
            } => {
                if self.requested.is_some() {
                    return Err(PaymentError::AlreadyRequested);
                }
                if !(0..=MAX_CHARGE_CENTS).contains(&amount.amount_cents) {
                    return Err(PaymentError::AmountOutOfRange);
                }
                PaymentEvent::ChargeRequested(ChargeRequested {
                    order_id,
                    amount_cents: amount.amount_cents,
                    currency: amount.currency,
                    payment_method,
                })
            }
            PaymentCommand::ApproveCharge { provider_reference } => {
                self.expect_requested()?;
                if provider_reference.trim().is_empty() {
                    return Err(PaymentError::MissingProviderReference);
                }
                PaymentEvent::ChargeApproved(ChargeApproved { provider_reference })
            }
            PaymentCommand::DeclineCharge { reason } => {
                self.expect_requested()?;
                PaymentEvent::ChargeDeclined(ChargeDeclined { reason })
            }
            PaymentCommand::RefundPayment { reason } => match self.current_status()? {
                PaymentStatus::Approved => PaymentEvent::PaymentRefunded(PaymentRefunded {
                    amount_cents: self.requested.as_ref().map_or(0, |p| p.amount_cents),
                    reason,
                }),
                PaymentStatus::Requested | PaymentStatus::Declined => {
                    return Err(PaymentError::NotApproved);
                }
                PaymentStatus::Refunded => return Err(PaymentError::AlreadyRefunded),
            },
        };
        Ok(vec![event])
    }

    fn current_status(&self) -> Result<PaymentStatus, PaymentError> {
        self.status().ok_or(PaymentError::NotFound)
    }

    /// The gateway may only answer a charge that is still waiting for it.
    fn expect_requested(&self) -> Result<(), PaymentError> {
        match self.current_status()? {
            PaymentStatus::Requested => Ok(()),
            PaymentStatus::Approved => Err(PaymentError::AlreadyApproved),
            PaymentStatus::Declined => Err(PaymentError::AlreadyDeclined),
            PaymentStatus::Refunded => Err(PaymentError::AlreadyRefunded),
        }
    }
}

impl Aggregate for Payment {
    const TYPE: &'static str = "Payment";
    type Command = PaymentCommand;
    type Event = PaymentEvent;
    type Error = PaymentError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let decided = self.decide(command);
        crate::record(self, decided, sink).await
    }

    fn apply(&mut self, event: Self::Event) {
        let status = match event {
            PaymentEvent::ChargeRequested(requested) => {
                self.requested = Some(RequestedPayment {
                    order_id: requested.order_id,
                    amount_cents: requested.amount_cents,
                    currency: requested.currency,
                    payment_method: requested.payment_method,
                    status: PaymentStatus::Requested,
                });
                return;
            }
            PaymentEvent::ChargeApproved(_) => PaymentStatus::Approved,
            PaymentEvent::ChargeDeclined(_) => PaymentStatus::Declined,
            PaymentEvent::PaymentRefunded(_) => PaymentStatus::Refunded,
        };
        if let Some(payment) = self.requested.as_mut() {
            payment.status = status;
        }
    }
}

#[cfg(test)]
mod tests;
