//! The payment aggregate: the money of one order, as the payment gateway
//! answered it.
//!
//! An order's total is authorized when it is placed; each shipment captures
//! its value from the authorization, and each received return is refunded
//! from the captures. Captures never add up to more than was authorized,
//! nor refunds of a capture to more than it took. An authorization that
//! expired is followed by another for what is left (its `attempt` counts
//! them); a void releases what was not captured.
//!
//! Payments written by the previous release hold one charge, captured at
//! once: `REQUESTED` became `APPROVED` or `DECLINED`, and an approved charge
//! was refunded whole. They still fold, as an authorization captured whole.

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::values::{Currency, Money, OrderId, PaymentMethod, Reason, ReturnId, ShipmentId};

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
    /// Ask the gateway to hold `amount` for an order: the total at
    /// placement (`attempt` 1), what is left to capture after an
    /// authorization expired (the next attempt).
    RequestAuthorization {
        order_id: OrderId,
        attempt: u32,
        amount: Money,
        payment_method: PaymentMethod,
    },
    /// The gateway holds the amount until `expires_at`.
    RecordAuthorization {
        attempt: u32,
        provider_reference: String,
        expires_at: Option<DateTime<Utc>>,
    },
    /// The gateway refused to hold it.
    DeclineAuthorization { attempt: u32, reason: Reason },
    /// The gateway says the authorization expired: nothing more can be
    /// captured from it.
    ExpireAuthorization { attempt: u32 },
    /// What the authorization held and was not captured is released (or it
    /// never will be held, if it was not answered).
    VoidAuthorization { attempt: u32 },
    /// The gateway captured `amount_cents` of the authorization for a shipment.
    RecordCapture {
        shipment_id: ShipmentId,
        attempt: u32,
        amount_cents: i64,
        provider_reference: String,
    },
    /// The card's issuer refused the shipment's capture.
    DeclineCapture {
        shipment_id: ShipmentId,
        attempt: u32,
        reason: Reason,
    },
    /// The gateway gave `amount_cents` of the shipment's capture back for a
    /// received return.
    RecordRefund {
        shipment_id: ShipmentId,
        return_id: ReturnId,
        amount_cents: i64,
        provider_reference: String,
    },
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

/// An amount was asked to be held on the customer's card.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AuthorizationRequested {
    pub order_id: OrderId,
    /// 1 at placement; one more for each authorization that follows an
    /// expired one.
    pub attempt: u32,
    pub amount_cents: i64,
    pub currency: Currency,
    pub payment_method: PaymentMethod,
}

/// The gateway holds the amount.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentAuthorized {
    pub attempt: u32,
    pub provider_reference: String,
    /// After this nothing more can be captured from it.
    pub expires_at: Option<DateTime<Utc>>,
}

/// The gateway refused to hold the amount.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AuthorizationDeclined {
    pub attempt: u32,
    pub reason: Reason,
}

/// The authorization expired: what it held and was not captured is gone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AuthorizationExpired {
    pub attempt: u32,
}

/// What the authorization held and was not captured was released.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AuthorizationVoided {
    pub attempt: u32,
}

/// A shipment's value was captured from the authorization.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentCaptured {
    pub shipment_id: ShipmentId,
    pub attempt: u32,
    pub amount_cents: i64,
    pub provider_reference: String,
}

/// The card's issuer refused a shipment's capture; nothing was taken.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CaptureDeclined {
    pub shipment_id: ShipmentId,
    pub attempt: u32,
    pub reason: Reason,
}

/// Part of a shipment's capture went back to the customer for a return.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CaptureRefunded {
    pub shipment_id: ShipmentId,
    pub return_id: ReturnId,
    pub amount_cents: i64,
    pub provider_reference: String,
}

crate::events! {
    /// Everything that can happen to a payment.
    pub enum PaymentEvent for Payment {
        ChargeRequested,
        ChargeApproved,
        ChargeDeclined,
        PaymentRefunded,
        AuthorizationRequested,
        PaymentAuthorized,
        AuthorizationDeclined,
        AuthorizationExpired,
        AuthorizationVoided,
        PaymentCaptured,
        CaptureDeclined,
        CaptureRefunded,
    }
}

/// Where a payment stands: its latest authorization's state (a charge's,
/// for payments of the previous release).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PaymentStatus {
    /// Asked of the gateway, not answered yet.
    Requested,
    /// A charge captured whole (previous release).
    Approved,
    Declined,
    /// A charge refunded whole (previous release).
    Refunded,
    /// Held: captures may take it.
    Authorized,
    /// Expired: nothing more can be captured from it.
    Expired,
    /// Released: what was not captured never will be.
    Voided,
}

impl PaymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requested => "REQUESTED",
            Self::Approved => "APPROVED",
            Self::Declined => "DECLINED",
            Self::Refunded => "REFUNDED",
            Self::Authorized => "AUTHORIZED",
            Self::Expired => "EXPIRED",
            Self::Voided => "VOIDED",
        }
    }
}

/// Where one authorization stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AuthorizationStatus {
    Requested,
    Authorized,
    Declined,
    Expired,
    Voided,
}

impl AuthorizationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requested => "REQUESTED",
            Self::Authorized => "AUTHORIZED",
            Self::Declined => "DECLINED",
            Self::Expired => "EXPIRED",
            Self::Voided => "VOIDED",
        }
    }
}

/// One authorization of a payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authorization {
    pub attempt: u32,
    pub amount_cents: i64,
    pub status: AuthorizationStatus,
    pub expires_at: Option<DateTime<Utc>>,
    /// What its captures took.
    pub captured_cents: i64,
}

/// One capture: a shipment's (`None`: a charge of the previous release,
/// captured whole).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capture {
    pub shipment_id: Option<ShipmentId>,
    pub attempt: u32,
    pub amount_cents: i64,
    pub refunded_cents: i64,
    /// The returns it was refunded for.
    pub refunds: Vec<ReturnId>,
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
    /// Authorizations are asked for in turn: the first at placement, the
    /// next only once the one before it ended.
    #[error("authorization {attempt} cannot be asked for now: {why}")]
    AuthorizationOutOfTurn { attempt: u32, why: &'static str },
    /// No authorization has that attempt number.
    #[error("the payment has no authorization {attempt}")]
    AuthorizationNotFound { attempt: u32 },
    /// The authorization is not in a state that allows this.
    #[error("authorization {attempt} is {}: {why}", .status.as_str())]
    AuthorizationIs {
        attempt: u32,
        status: AuthorizationStatus,
        why: &'static str,
    },
    /// More than the authorization holds, or than the order's total.
    #[error("{amount_cents} is more than the {capturable_cents} that can still be captured")]
    ExceedsAuthorization {
        amount_cents: i64,
        capturable_cents: i64,
    },
    /// The shipment's value was captured already.
    #[error("the shipment is captured already")]
    AlreadyCaptured,
    /// No capture was made for the shipment.
    #[error("nothing was captured for the shipment")]
    CaptureNotFound,
    /// The return was refunded from this capture already.
    #[error("the return was refunded from this capture already")]
    RefundExists,
    /// More than the capture has left to give back.
    #[error("{amount_cents} is more than the {refundable_cents} left to refund of the capture")]
    ExceedsCapture {
        amount_cents: i64,
        refundable_cents: i64,
    },
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

/// One payment, rebuilt from its events; `None` until a charge or an
/// authorization is requested.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Payment {
    requested: Option<RequestedPayment>,
    /// Its authorizations in turn (a charge of the previous release reads
    /// as one, captured whole).
    #[serde(default)]
    authorizations: Vec<Authorization>,
    #[serde(default)]
    captures: Vec<Capture>,
}

impl Payment {
    pub fn requested(&self) -> Option<&RequestedPayment> {
        self.requested.as_ref()
    }

    pub fn status(&self) -> Option<PaymentStatus> {
        self.requested.as_ref().map(|payment| payment.status)
    }

    pub fn authorizations(&self) -> &[Authorization] {
        &self.authorizations
    }

    pub fn captures(&self) -> &[Capture] {
        &self.captures
    }

    /// The latest authorization.
    pub fn authorization(&self) -> Option<&Authorization> {
        self.authorizations.last()
    }

    /// What the card holds or held for captures: each authorization the
    /// gateway granted that still holds counts whole; one that expired or
    /// was voided counts what was captured from it.
    pub fn authorized_cents(&self) -> i64 {
        self.authorizations
            .iter()
            .map(|authorization| match authorization.status {
                AuthorizationStatus::Authorized => authorization.amount_cents,
                AuthorizationStatus::Expired | AuthorizationStatus::Voided => {
                    authorization.captured_cents
                }
                AuthorizationStatus::Requested | AuthorizationStatus::Declined => 0,
            })
            .sum()
    }

    /// What was captured in all.
    pub fn captured_cents(&self) -> i64 {
        self.captures
            .iter()
            .map(|capture| capture.amount_cents)
            .sum()
    }

    /// What was given back in all.
    pub fn refunded_cents(&self) -> i64 {
        self.captures
            .iter()
            .map(|capture| capture.refunded_cents)
            .sum()
    }

    /// The capture of a shipment.
    pub fn capture_of(&self, shipment_id: ShipmentId) -> Option<&Capture> {
        self.captures
            .iter()
            .find(|capture| capture.shipment_id == Some(shipment_id))
    }

    /// What can still be captured from authorization `attempt`: what it
    /// holds and was not captured, within what the order's total has left.
    pub fn capturable_cents(&self, attempt: u32) -> i64 {
        let total = self
            .requested
            .as_ref()
            .map_or(0, |payment| payment.amount_cents);
        self.authorizations
            .iter()
            .find(|authorization| authorization.attempt == attempt)
            .map_or(0, |authorization| {
                (authorization.amount_cents - authorization.captured_cents)
                    .min(total - self.captured_cents())
            })
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
                PaymentStatus::Authorized | PaymentStatus::Expired | PaymentStatus::Voided => {
                    return Err(PaymentError::NotApproved);
                }
            },
            PaymentCommand::RequestAuthorization {
                order_id,
                attempt,
                amount,
                payment_method,
            } => self.request_authorization(order_id, attempt, amount, payment_method)?,
            PaymentCommand::RecordAuthorization {
                attempt,
                provider_reference,
                expires_at,
            } => {
                self.expect_authorization(
                    attempt,
                    &[AuthorizationStatus::Requested],
                    "answered already",
                )?;
                if provider_reference.trim().is_empty() {
                    return Err(PaymentError::MissingProviderReference);
                }
                PaymentEvent::PaymentAuthorized(PaymentAuthorized {
                    attempt,
                    provider_reference,
                    expires_at,
                })
            }
            PaymentCommand::DeclineAuthorization { attempt, reason } => {
                self.expect_authorization(
                    attempt,
                    &[AuthorizationStatus::Requested],
                    "answered already",
                )?;
                PaymentEvent::AuthorizationDeclined(AuthorizationDeclined { attempt, reason })
            }
            PaymentCommand::ExpireAuthorization { attempt } => {
                self.expect_authorization(
                    attempt,
                    &[AuthorizationStatus::Authorized],
                    "only a held authorization expires",
                )?;
                PaymentEvent::AuthorizationExpired(AuthorizationExpired { attempt })
            }
            PaymentCommand::VoidAuthorization { attempt } => {
                self.expect_authorization(
                    attempt,
                    &[
                        AuthorizationStatus::Requested,
                        AuthorizationStatus::Authorized,
                    ],
                    "it holds nothing to release",
                )?;
                PaymentEvent::AuthorizationVoided(AuthorizationVoided { attempt })
            }
            PaymentCommand::RecordCapture {
                shipment_id,
                attempt,
                amount_cents,
                provider_reference,
            } => {
                // The gateway captured before the expiry it answered later.
                self.expect_authorization(
                    attempt,
                    &[
                        AuthorizationStatus::Authorized,
                        AuthorizationStatus::Expired,
                    ],
                    "nothing can be captured from it",
                )?;
                if self.capture_of(shipment_id).is_some() {
                    return Err(PaymentError::AlreadyCaptured);
                }
                if provider_reference.trim().is_empty() {
                    return Err(PaymentError::MissingProviderReference);
                }
                let capturable_cents = self.capturable_cents(attempt);
                if !(1..=capturable_cents).contains(&amount_cents) {
                    return Err(PaymentError::ExceedsAuthorization {
                        amount_cents,
                        capturable_cents,
                    });
                }
                PaymentEvent::PaymentCaptured(PaymentCaptured {
                    shipment_id,
                    attempt,
                    amount_cents,
                    provider_reference,
                })
            }
            PaymentCommand::DeclineCapture {
                shipment_id,
                attempt,
                reason,
            } => {
                self.expect_authorization(
                    attempt,
                    &[
                        AuthorizationStatus::Authorized,
                        AuthorizationStatus::Expired,
                    ],
                    "nothing can be captured from it",
                )?;
                if self.capture_of(shipment_id).is_some() {
                    return Err(PaymentError::AlreadyCaptured);
                }
                PaymentEvent::CaptureDeclined(CaptureDeclined {
                    shipment_id,
                    attempt,
                    reason,
                })
            }
            PaymentCommand::RecordRefund {
                shipment_id,
                return_id,
                amount_cents,
                provider_reference,
            } => {
                let capture = self
                    .capture_of(shipment_id)
                    .ok_or(PaymentError::CaptureNotFound)?;
                if capture.refunds.contains(&return_id) {
                    return Err(PaymentError::RefundExists);
                }
                if provider_reference.trim().is_empty() {
                    return Err(PaymentError::MissingProviderReference);
                }
                let refundable_cents = capture.amount_cents - capture.refunded_cents;
                if !(1..=refundable_cents).contains(&amount_cents) {
                    return Err(PaymentError::ExceedsCapture {
                        amount_cents,
                        refundable_cents,
                    });
                }
                PaymentEvent::CaptureRefunded(CaptureRefunded {
                    shipment_id,
                    return_id,
                    amount_cents,
                    provider_reference,
                })
            }
        };
        Ok(vec![event])
    }

    fn request_authorization(
        &self,
        order_id: OrderId,
        attempt: u32,
        amount: Money,
        payment_method: PaymentMethod,
    ) -> Result<PaymentEvent, PaymentError> {
        let out_of_turn = |why| PaymentError::AuthorizationOutOfTurn { attempt, why };
        match (&self.requested, self.authorizations.last()) {
            (None, _) if attempt == 1 => {
                if !(0..=MAX_CHARGE_CENTS).contains(&amount.amount_cents) {
                    return Err(PaymentError::AmountOutOfRange);
                }
            }
            (None, _) => return Err(out_of_turn("the first authorization is number 1")),
            (Some(_), _) if self.is_charge() => return Err(PaymentError::AlreadyRequested),
            (Some(_), None) => return Err(PaymentError::AlreadyRequested),
            (Some(payment), Some(last)) => {
                if attempt != last.attempt + 1 {
                    return Err(out_of_turn("authorizations are numbered in turn"));
                }
                if !matches!(
                    last.status,
                    AuthorizationStatus::Expired | AuthorizationStatus::Declined
                ) {
                    return Err(out_of_turn(
                        "the authorization before it has not expired or been declined",
                    ));
                }
                if payment.order_id != order_id || payment.currency != amount.currency {
                    return Err(out_of_turn("it is for another order or currency"));
                }
                let left = payment.amount_cents - self.captured_cents();
                if !(1..=left).contains(&amount.amount_cents) {
                    return Err(PaymentError::ExceedsAuthorization {
                        amount_cents: amount.amount_cents,
                        capturable_cents: left,
                    });
                }
            }
        }
        Ok(PaymentEvent::AuthorizationRequested(
            AuthorizationRequested {
                order_id,
                attempt,
                amount_cents: amount.amount_cents,
                currency: amount.currency,
                payment_method,
            },
        ))
    }

    /// The authorization `attempt`, if its status is one of `allowed`.
    fn expect_authorization(
        &self,
        attempt: u32,
        allowed: &[AuthorizationStatus],
        why: &'static str,
    ) -> Result<&Authorization, PaymentError> {
        let authorization = self
            .authorizations
            .iter()
            .find(|authorization| authorization.attempt == attempt)
            .ok_or(PaymentError::AuthorizationNotFound { attempt })?;
        if !allowed.contains(&authorization.status) {
            return Err(PaymentError::AuthorizationIs {
                attempt,
                status: authorization.status,
                why,
            });
        }
        Ok(authorization)
    }

    fn current_status(&self) -> Result<PaymentStatus, PaymentError> {
        self.status().ok_or(PaymentError::NotFound)
    }

    /// The gateway may only answer a charge that is still waiting for it.
    fn expect_requested(&self) -> Result<(), PaymentError> {
        let status = self.current_status()?;
        if !self.is_charge() {
            // A payment of authorizations has no charge to answer.
            return Err(PaymentError::AlreadyRequested);
        }
        match status {
            PaymentStatus::Requested => Ok(()),
            PaymentStatus::Approved => Err(PaymentError::AlreadyApproved),
            PaymentStatus::Declined => Err(PaymentError::AlreadyDeclined),
            PaymentStatus::Refunded => Err(PaymentError::AlreadyRefunded),
            PaymentStatus::Authorized | PaymentStatus::Expired | PaymentStatus::Voided => {
                Err(PaymentError::AlreadyRequested)
            }
        }
    }

    /// Whether this is a charge of the previous release (captured whole when
    /// approved) rather than a payment of authorizations.
    pub fn is_charge(&self) -> bool {
        self.requested.is_some()
            && (self.authorizations.is_empty()
                || self
                    .captures
                    .iter()
                    .any(|capture| capture.shipment_id.is_none()))
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
        self.fold(event);
    }
}

impl Payment {
    /// Takes in one event: what `apply` does, for folds outside cqrs-es
    /// (the read models, the audit).
    pub fn fold(&mut self, event: PaymentEvent) {
        match event {
            PaymentEvent::ChargeRequested(requested) => {
                self.requested = Some(RequestedPayment {
                    order_id: requested.order_id,
                    amount_cents: requested.amount_cents,
                    currency: requested.currency,
                    payment_method: requested.payment_method,
                    status: PaymentStatus::Requested,
                });
            }
            PaymentEvent::ChargeApproved(_) => {
                // A charge is an authorization captured whole at once.
                let amount_cents = self.requested.as_ref().map_or(0, |p| p.amount_cents);
                self.authorizations.push(Authorization {
                    attempt: 1,
                    amount_cents,
                    status: AuthorizationStatus::Authorized,
                    expires_at: None,
                    captured_cents: amount_cents,
                });
                self.captures.push(Capture {
                    shipment_id: None,
                    attempt: 1,
                    amount_cents,
                    refunded_cents: 0,
                    refunds: Vec::new(),
                });
                self.set_status(PaymentStatus::Approved);
            }
            PaymentEvent::ChargeDeclined(_) => self.set_status(PaymentStatus::Declined),
            PaymentEvent::PaymentRefunded(_) => {
                for capture in &mut self.captures {
                    capture.refunded_cents = capture.amount_cents;
                }
                self.set_status(PaymentStatus::Refunded);
            }
            PaymentEvent::AuthorizationRequested(requested) => {
                if requested.attempt == 1 {
                    self.requested = Some(RequestedPayment {
                        order_id: requested.order_id,
                        amount_cents: requested.amount_cents,
                        currency: requested.currency,
                        payment_method: requested.payment_method,
                        status: PaymentStatus::Requested,
                    });
                }
                self.authorizations.push(Authorization {
                    attempt: requested.attempt,
                    amount_cents: requested.amount_cents,
                    status: AuthorizationStatus::Requested,
                    expires_at: None,
                    captured_cents: 0,
                });
                self.set_status(PaymentStatus::Requested);
            }
            PaymentEvent::PaymentAuthorized(authorized) => {
                if let Some(authorization) = self.authorization_mut(authorized.attempt) {
                    authorization.status = AuthorizationStatus::Authorized;
                    authorization.expires_at = authorized.expires_at;
                }
                self.follow_latest();
            }
            PaymentEvent::AuthorizationDeclined(declined) => {
                self.set_authorization(declined.attempt, AuthorizationStatus::Declined);
            }
            PaymentEvent::AuthorizationExpired(expired) => {
                self.set_authorization(expired.attempt, AuthorizationStatus::Expired);
            }
            PaymentEvent::AuthorizationVoided(voided) => {
                self.set_authorization(voided.attempt, AuthorizationStatus::Voided);
            }
            PaymentEvent::PaymentCaptured(captured) => {
                if let Some(authorization) = self.authorization_mut(captured.attempt) {
                    authorization.captured_cents += captured.amount_cents;
                }
                self.captures.push(Capture {
                    shipment_id: Some(captured.shipment_id),
                    attempt: captured.attempt,
                    amount_cents: captured.amount_cents,
                    refunded_cents: 0,
                    refunds: Vec::new(),
                });
            }
            // Nothing was taken; the order records the shipment's failure.
            PaymentEvent::CaptureDeclined(_) => {}
            PaymentEvent::CaptureRefunded(refunded) => {
                if let Some(capture) = self
                    .captures
                    .iter_mut()
                    .find(|capture| capture.shipment_id == Some(refunded.shipment_id))
                {
                    capture.refunded_cents += refunded.amount_cents;
                    capture.refunds.push(refunded.return_id);
                }
            }
        }
    }

    fn set_status(&mut self, status: PaymentStatus) {
        if let Some(payment) = self.requested.as_mut() {
            payment.status = status;
        }
    }

    fn authorization_mut(&mut self, attempt: u32) -> Option<&mut Authorization> {
        self.authorizations
            .iter_mut()
            .find(|authorization| authorization.attempt == attempt)
    }

    fn set_authorization(&mut self, attempt: u32, status: AuthorizationStatus) {
        if let Some(authorization) = self.authorization_mut(attempt) {
            authorization.status = status;
        }
        self.follow_latest();
    }

    /// A payment of authorizations stands where its latest one does.
    fn follow_latest(&mut self) {
        let Some(latest) = self.authorizations.last().map(|a| a.status) else {
            return;
        };
        self.set_status(match latest {
            AuthorizationStatus::Requested => PaymentStatus::Requested,
            AuthorizationStatus::Authorized => PaymentStatus::Authorized,
            AuthorizationStatus::Declined => PaymentStatus::Declined,
            AuthorizationStatus::Expired => PaymentStatus::Expired,
            AuthorizationStatus::Voided => PaymentStatus::Voided,
        });
    }
}

#[cfg(test)]
mod tests;
