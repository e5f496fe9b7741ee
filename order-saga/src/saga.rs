//! The order saga as a pure state machine: what to do next, and what an
//! outcome means. No IO, no clock: the driver executes each [`Action`], then
//! hands its [`Outcome`] and the time back through [`OrderSaga::record`].
//!
//! Forward path: reserve each line's stock → request the authorization →
//! authorize at the gateway → confirm the order. A refusal or a timeout turns
//! the saga to compensation: void the authorization, release what is
//! reserved, cancel the order with the reason. A customer's cancel stops the
//! forward path the same way; after shipments, it releases what did not ship
//! and voids the rest of the authorization.
//!
//! A confirmed order's saga then carries out its shipments and returns
//! ([`work`]): each shipment captures its value (authorizing again what is
//! left when the authorization expired), commits its units and marks it
//! shipped, or fails it when the capture is declined; each received return
//! is refunded from the captures and restocked.
//!
//! Sagas stored by the previous release charge instead
//! ([`PaymentFlow::Charge`]): request the charge → charge → confirm → commit
//! each reservation; a cancel after confirmation refunds the charge and
//! returns the sold stock.

pub mod work;

pub use work::{CaptureRecord, ReturnWork, ShipmentStage, ShipmentWork, WorkLine, calls_for_work};

use chrono::{DateTime, Utc};
use domain::order::{OrderLine, OrderPlaced};
use serde::{Deserialize, Serialize};

/// Where a saga stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SagaState {
    /// Reserving stock, line by line.
    Reserving,
    /// Asking for and taking the payment.
    Charging,
    /// Confirming the order (and, for charges, committing its reservations).
    Confirming,
    /// Done for now: the order is confirmed, its stock reserved and its
    /// total authorized (a charge: its stock sold and its payment captured).
    Confirmed,
    /// Carrying out a shipment or a return of a confirmed (or cancelled,
    /// partly shipped) order.
    Fulfilling,
    /// Undoing finished steps before the order ends cancelled.
    Compensating,
    /// Done: the order is cancelled and nothing it held is kept.
    Cancelled,
    /// Done by an operator's word (`orders saga abandon`): the saga does
    /// nothing more, whatever it held stays as it was, and why is recorded
    /// (`abandoned`). The books of its order are the operator's from then
    /// on; `orders audit` lists it rather than checking it.
    Abandoned,
}

impl SagaState {
    pub const ALL: [Self; 8] = [
        Self::Reserving,
        Self::Charging,
        Self::Confirming,
        Self::Confirmed,
        Self::Fulfilling,
        Self::Compensating,
        Self::Cancelled,
        Self::Abandoned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reserving => "RESERVING",
            Self::Charging => "CHARGING",
            Self::Confirming => "CONFIRMING",
            Self::Confirmed => "CONFIRMED",
            Self::Fulfilling => "FULFILLING",
            Self::Compensating => "COMPENSATING",
            Self::Cancelled => "CANCELLED",
            Self::Abandoned => "ABANDONED",
        }
    }

    /// Whether the saga has nothing left to do.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Confirmed | Self::Cancelled | Self::Abandoned)
    }
}

/// What happened to one line's stock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Stock {
    /// Not reserved (yet, or ever).
    None,
    /// A reservation was sent and no answer came (a timeout, the store
    /// away): it may still land, even later, from a queue. It is sent again
    /// under the same key while reserving; before an undo goes on, it is
    /// settled (found, or fenced so that it never lands): see
    /// [`OrderSaga::to_settle`].
    InDoubt,
    Reserved,
    /// Reserved, then given back.
    Released,
    /// Sold: the reservation left the stock with the order confirmed.
    Committed,
    /// Sold, then taken back after the customer cancelled.
    Returned,
}

/// How the order's money moves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PaymentFlow {
    /// One charge of the total, captured at once (sagas stored by the
    /// previous release, which have no flow recorded).
    #[default]
    Charge,
    /// The total authorized at placement and captured per shipment.
    Authorize,
}

/// Where the payment stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Charge {
    /// Nothing asked yet.
    None,
    /// The charge is recorded on the payment; the gateway has not answered.
    Requested,
    Approved,
    Declined,
    /// The gateway did not answer within the deadline; any late approval is
    /// refunded.
    TimedOut,
    /// Settled by the undo: refunded if it had been captured, voided if not.
    Refunded,
    /// The authorization expired: nothing more can be captured from it.
    Expired,
}

/// One line of the order and its stock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaLine {
    pub sku: String,
    pub quantity: u32,
    pub stock: Stock,
    /// Units of it shipped (an authorization's order): their reservation
    /// is committed, and a cancel releases only the rest.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub shipped: u32,
}

fn is_zero(count: &u32) -> bool {
    *count == 0
}

/// One entry of the saga's log, as GraphQL shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Such as `reserve MUG-01`, `charge`, `refund`.
    pub name: String,
    /// `DONE`, `REFUSED`, `TIMED_OUT`, `FAILED`.
    pub status: String,
    pub at: DateTime<Utc>,
    /// What operators read: the refusal's or the failure's own text (a
    /// store's or a gateway's error, an operator's name and note).
    pub detail: Option<String>,
    /// What the order's customer reads instead: one of a fixed set of
    /// reasons ([`PUBLIC_REASONS`]), never an error's text. Steps recorded
    /// before it existed have none; [`public_reason`](Self::public_reason)
    /// gives them one by their status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Authorizations that may expire one after the other before a capture
/// took from one: past that, the shipment waiting for them fails (an
/// operator retries or cancels) instead of holding ever new amounts on the
/// customer's card.
pub const MAX_EXPIRIES_IN_A_ROW: u32 = 3;

/// Every reason a customer may read on a step (see [`StepRecord::reason`]).
pub const PUBLIC_REASONS: &[&str] = &[
    "payment approved",
    "payment declined",
    "out of stock",
    "refused",
    "no answer in time",
    "failed for now; tried again",
    "under review",
    "the units were sold",
    "given up: it never happened",
    "settled: it did not happen",
    "cancelled",
    "stopped by an operator",
    "authorization expired",
];

impl StepRecord {
    /// What a customer is shown of this step: its public reason (by its
    /// status for steps recorded without one), `None` for a plain success.
    pub fn public_reason(&self) -> Option<&str> {
        if let Some(reason) = &self.reason {
            return Some(reason);
        }
        match self.status.as_str() {
            "DONE" if self.detail.is_none() => None,
            "DONE" if self.name == "abandoned" => Some("stopped by an operator"),
            "DONE" if self.name == "order cancelled" => Some("cancelled"),
            "DONE" if self.name == "charge" => Some("payment approved"),
            "DONE" => None,
            "REFUSED" => Some("refused"),
            "TIMED_OUT" => Some("no answer in time"),
            _ => Some("failed for now; tried again"),
        }
    }
}

/// The public reason of an outcome (see [`StepRecord::reason`]).
fn public_reason(action: &Action, outcome: &Outcome) -> Option<&'static str> {
    Some(match outcome {
        Outcome::Done => return None,
        Outcome::Approved { .. } => "payment approved",
        Outcome::Refused { detail }
            if matches!(action, Action::ReserveStock { .. }) && detail.contains("out of stock") =>
        {
            "out of stock"
        }
        Outcome::Refused { .. } => "refused",
        Outcome::Declined { .. } => "payment declined",
        Outcome::TimedOut => "no answer in time",
        Outcome::Failed { .. } | Outcome::Contended => "failed for now; tried again",
        Outcome::Inconsistent { .. } => "under review",
        Outcome::AlreadySold => "the units were sold",
        Outcome::NeverDone => "given up: it never happened",
        Outcome::Expired => "authorization expired",
    })
}

/// Something the saga wants done. Each has a stable [`key`](Action::key): the
/// idempotency key of its command, so that doing it again after a crash
/// changes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    ReserveStock {
        sku: String,
        quantity: u32,
    },
    /// Record the charge on the payment aggregate.
    RequestCharge,
    /// Ask the gateway to take the money, and record its answer (under the
    /// keys of [`Action::approval_key`] and [`Action::decline_key`]).
    Charge,
    ConfirmOrder,
    CommitReservation {
        sku: String,
    },
    ReleaseReservation {
        sku: String,
    },
    ReturnStock {
        sku: String,
        quantity: u32,
    },
    /// Give the money back, at the gateway and on the payment (an
    /// authorization: void it).
    Refund,
    CancelOrder {
        reason: String,
    },
    /// Capture a shipment's value from authorization `attempt`, and record
    /// the gateway's answer.
    Capture {
        shipment_id: String,
        attempt: u32,
        amount_cents: i64,
    },
    /// Authorize what is left to capture after authorization `attempt - 1`
    /// expired, and record the gateway's answer.
    Reauthorize {
        attempt: u32,
        amount_cents: i64,
    },
    /// Take a shipment's units of `sku` out of the order's reservation.
    CommitShipment {
        shipment_id: String,
        sku: String,
        quantity: u32,
    },
    MarkShipped {
        shipment_id: String,
    },
    FailShipment {
        shipment_id: String,
        reason: String,
    },
    /// Refund part of a return from one shipment's capture, and record it.
    RefundReturn {
        return_id: String,
        shipment_id: String,
        attempt: u32,
        amount_cents: i64,
    },
    /// Put a return's units of `sku` back on hand.
    Restock {
        return_id: String,
        sku: String,
        quantity: u32,
    },
}

impl Action {
    /// The step's name in the log.
    pub fn name(&self) -> String {
        match self {
            Self::ReserveStock { sku, .. } => format!("reserve {sku}"),
            Self::RequestCharge => "request charge".into(),
            Self::Charge => "charge".into(),
            Self::ConfirmOrder => "confirm order".into(),
            Self::CommitReservation { sku } => format!("commit {sku}"),
            Self::ReleaseReservation { sku } => format!("release {sku}"),
            Self::ReturnStock { sku, .. } => format!("return {sku}"),
            Self::Refund => "refund".into(),
            Self::CancelOrder { .. } => "cancel order".into(),
            Self::Capture { shipment_id, .. } => format!("capture {shipment_id}"),
            Self::Reauthorize { attempt, .. } => format!("authorize again ({attempt})"),
            Self::CommitShipment {
                shipment_id, sku, ..
            } => format!("ship {sku} ({shipment_id})"),
            Self::MarkShipped { shipment_id } => format!("shipped {shipment_id}"),
            Self::FailShipment { shipment_id, .. } => format!("failed {shipment_id}"),
            Self::RefundReturn {
                return_id,
                shipment_id,
                ..
            } => format!("refund {return_id} from {shipment_id}"),
            Self::Restock { return_id, sku, .. } => format!("restock {sku} ({return_id})"),
        }
    }

    /// The idempotency key of the command this action sends for `order_id`.
    pub fn key(&self, order_id: &str) -> String {
        let step = match self {
            Self::ReserveStock { sku, .. } => format!("reserve:{sku}"),
            Self::RequestCharge => "request-charge".into(),
            Self::Charge => "charge".into(),
            Self::ConfirmOrder => "confirm".into(),
            Self::CommitReservation { sku } => format!("commit:{sku}"),
            Self::ReleaseReservation { sku } => format!("release:{sku}"),
            Self::ReturnStock { sku, .. } => format!("return:{sku}"),
            Self::Refund => "refund".into(),
            Self::CancelOrder { .. } => "cancel".into(),
            Self::Capture {
                shipment_id,
                attempt,
                ..
            } => format!("capture:{shipment_id}:{attempt}"),
            Self::Reauthorize { attempt, .. } => format!("authorize:{attempt}"),
            Self::CommitShipment {
                shipment_id, sku, ..
            } => format!("ship:{shipment_id}:{sku}"),
            Self::MarkShipped { shipment_id } => format!("shipped:{shipment_id}"),
            Self::FailShipment { shipment_id, .. } => format!("ship-failed:{shipment_id}"),
            Self::RefundReturn {
                return_id,
                shipment_id,
                ..
            } => format!("refund:{return_id}:{shipment_id}"),
            Self::Restock { return_id, sku, .. } => format!("restock:{return_id}:{sku}"),
        };
        format!("saga:{order_id}:{step}")
    }

    /// Whether this action carries out a shipment or a return: never given
    /// up (retried until it goes through, flagged after repeated failures),
    /// like an undo.
    pub fn is_work(&self) -> bool {
        matches!(
            self,
            Self::Capture { .. }
                | Self::Reauthorize { .. }
                | Self::CommitShipment { .. }
                | Self::MarkShipped { .. }
                | Self::FailShipment { .. }
                | Self::RefundReturn { .. }
                | Self::Restock { .. }
        )
    }

    /// The key under which the payment records the gateway's approval.
    /// Approving and declining have keys of their own, so that the record of
    /// one is never replayed as the other.
    pub fn approval_key(order_id: &str) -> String {
        format!("saga:{order_id}:approve")
    }

    /// The key under which the payment records a decline (the gateway's, or
    /// a void that the undo learned of).
    pub fn decline_key(order_id: &str) -> String {
        format!("saga:{order_id}:decline")
    }

    /// Whether this action undoes an earlier one.
    pub fn is_compensation(&self) -> bool {
        matches!(
            self,
            Self::ReleaseReservation { .. }
                | Self::ReturnStock { .. }
                | Self::Refund
                | Self::CancelOrder { .. }
        )
    }
}

/// How an action went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Carried out (or found carried out before).
    Done,
    /// The aggregate said no; `detail` says why. Doing it again will not help.
    Refused { detail: String },
    /// The gateway took the money.
    Approved { reference: String },
    /// The gateway refused the charge.
    Declined { reason: String },
    /// No answer within the step's deadline.
    TimedOut,
    /// A failure of the platform or the gateway; worth trying again.
    Failed { detail: String },
    /// Like `Failed`, but the records disagree (the payment's ledger and the
    /// gateway): tried again, and someone should look at once.
    Inconsistent { detail: String },
    /// Releasing found the reservation committed: the units are sold, and
    /// the undo must return them instead.
    AlreadySold,
    /// The command lost the race for a busy aggregate every time it was
    /// tried: it did not land. The driver tries again at once, within the
    /// step's deadline; recorded, it counts as a failure.
    Contended,
    /// The command's key was settled as never to run (another driver gave
    /// the step up): it did not happen and never will.
    NeverDone,
    /// The gateway refused a capture because the authorization expired.
    Expired,
}

/// The saga of one order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderSaga {
    pub order_id: String,
    /// The correlation id of the request that placed the order; every
    /// command the saga sends carries it.
    #[serde(default)]
    pub correlation_id: String,
    pub amount_cents: i64,
    pub currency: String,
    pub payment_method: String,
    pub lines: Vec<SagaLine>,
    pub state: SagaState,
    pub charge: Charge,
    /// Whether the order itself is cancelled (by the saga or the customer).
    pub order_cancelled: bool,
    /// Why the order ends cancelled, once it does.
    pub reason: Option<String>,
    /// Failures in a row of the next action.
    pub attempts: u32,
    /// When the next action first started, for its deadline.
    pub action_started_at: Option<DateTime<Utc>>,
    /// Why someone should look now, whatever the count of failures: the
    /// records disagree. Cleared when the step goes through.
    #[serde(default)]
    pub attention: Option<String>,
    pub steps: Vec<StepRecord>,
    pub updated_at: DateTime<Utc>,
    /// When the order was placed (its `OrderPlaced` recorded), for the
    /// time sagas take; absent in sagas stored before it was kept.
    #[serde(default)]
    pub placed_at: Option<DateTime<Utc>>,
    /// The trace context the saga's steps continue (a W3C `traceparent`:
    /// the span that took the order in), so that every step, after any
    /// restart, is part of the order's trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
    /// Who abandoned the saga and why (see [`SagaState::Abandoned`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abandoned: Option<String>,
    /// How the money moves; sagas of the previous release charge.
    #[serde(default)]
    pub flow: PaymentFlow,
    /// The authorization captures take from now (1 at placement, one more
    /// after each that expired); [`charge`](Self::charge) is its state.
    #[serde(default)]
    pub attempt: u32,
    /// Authorizations that expired, one after the other, before a capture
    /// took from them (see [`MAX_EXPIRIES_IN_A_ROW`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub expired_in_a_row: u32,
    /// The order's shipments the saga took in, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shipments: Vec<ShipmentWork>,
    /// The order's received returns the saga took in, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub returns: Vec<ReturnWork>,
    /// What each shipment captured, for refunds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub captures: Vec<CaptureRecord>,
    /// The order's version up to which its shipments and returns were
    /// taken in.
    #[serde(default)]
    pub order_version: i64,
    /// What the saga cannot settle and an operator must (see
    /// [`settle_by_hand`](Self::settle_by_hand)): it needs attention until
    /// an operator abandons it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unsettled: Vec<String>,
}

impl OrderSaga {
    /// A saga for a freshly placed order.
    pub fn start(placed: &OrderPlaced, correlation_id: &str, at: DateTime<Utc>) -> Self {
        Self {
            order_id: placed.order_id.to_string(),
            correlation_id: correlation_id.to_owned(),
            amount_cents: placed.total_cents,
            currency: placed.currency.to_string(),
            payment_method: placed.payment_method.as_str().to_owned(),
            lines: placed.lines.iter().map(line).collect(),
            state: SagaState::Reserving,
            charge: Charge::None,
            order_cancelled: false,
            reason: None,
            attempts: 0,
            action_started_at: None,
            attention: None,
            steps: Vec::new(),
            updated_at: at,
            placed_at: Some(at),
            trace: None,
            abandoned: None,
            flow: PaymentFlow::Authorize,
            attempt: 1,
            expired_in_a_row: 0,
            shipments: Vec::new(),
            returns: Vec::new(),
            captures: Vec::new(),
            order_version: 0,
            unsettled: Vec::new(),
        }
    }

    /// A saga that charges the total at once, as the previous release's
    /// did: what its stored sagas run, and what tests of that path start.
    pub fn start_charging(placed: &OrderPlaced, correlation_id: &str, at: DateTime<Utc>) -> Self {
        Self {
            flow: PaymentFlow::Charge,
            attempt: 0,
            ..Self::start(placed, correlation_id, at)
        }
    }

    /// The saga with its steps in the trace `traceparent` names.
    pub fn in_trace(mut self, traceparent: Option<String>) -> Self {
        self.trace = traceparent;
        self
    }

    /// A span for one step of the saga, in the order's trace: its commands,
    /// their appends and the gateway's calls are its children.
    pub fn step_span(&self, action: &Action) -> tracing::Span {
        let span = tracing::info_span!(
            parent: None,
            "saga step",
            otel.name = format!("saga {}", action.name()),
            order_id = %self.order_id,
            step = %action.name(),
            compensation = action.is_compensation(),
            attempts = self.attempts,
        );
        platform::trace::follow(&span, self.trace.as_deref());
        span
    }

    /// What to do next; `None` once the saga is over.
    pub fn next_action(&self) -> Option<Action> {
        match self.state {
            SagaState::Reserving => Some(self.lines.iter().find(|l| l.unreserved()).map_or(
                Action::RequestCharge,
                |l| Action::ReserveStock {
                    sku: l.sku.clone(),
                    quantity: l.quantity,
                },
            )),
            SagaState::Charging => match self.charge {
                Charge::None => Some(Action::RequestCharge),
                _ => Some(Action::Charge),
            },
            // An authorization keeps the units reserved until they ship.
            SagaState::Confirming if self.flow == PaymentFlow::Authorize => {
                Some(Action::ConfirmOrder)
            }
            SagaState::Confirming => Some(
                self.lines
                    .iter()
                    .find(|l| l.stock == Stock::Reserved)
                    .map_or(Action::ConfirmOrder, |l| Action::CommitReservation {
                        sku: l.sku.clone(),
                    }),
            ),
            SagaState::Compensating => self.next_compensation(),
            SagaState::Fulfilling => self.next_work(),
            SagaState::Confirmed | SagaState::Cancelled | SagaState::Abandoned => None,
        }
    }

    /// What to do next, with the actions that may run beside it: every
    /// line's reservation while reserving, every line's commit while
    /// confirming, one action otherwise (empty once the saga is over). The
    /// first is [`next_action`](Self::next_action); the outcomes of them all
    /// may be taken in, in any order.
    pub fn next_actions(&self) -> Vec<Action> {
        let lines = |wanted: fn(&SagaLine) -> bool, action: fn(&SagaLine) -> Action| {
            self.lines
                .iter()
                .filter(|line| wanted(line))
                .map(action)
                .collect::<Vec<_>>()
        };
        let together = match self.state {
            SagaState::Reserving => lines(SagaLine::unreserved, SagaLine::reserve),
            SagaState::Confirming if self.flow == PaymentFlow::Charge => lines(
                |line| line.stock == Stock::Reserved,
                |line| Action::CommitReservation {
                    sku: line.sku.clone(),
                },
            ),
            _ => Vec::new(),
        };
        if together.is_empty() {
            self.next_action().into_iter().collect()
        } else {
            together
        }
    }

    /// Whether the saga has nothing left to do or to learn.
    pub fn is_over(&self) -> bool {
        self.next_action().is_none() && self.to_settle().is_empty()
    }

    /// Reservations whose outcome must be learned before the undo goes on:
    /// those sent without an answer ([`Stock::InDoubt`]) while the saga is
    /// compensating. The driver settles each one and takes the answer in
    /// with [`settled`](Self::settled): found, the line is reserved and the
    /// undo releases it; fenced, it never lands. Until then the undo stops
    /// short of cancelling the order.
    pub fn to_settle(&self) -> Vec<Action> {
        if self.state != SagaState::Compensating {
            return Vec::new();
        }
        self.lines
            .iter()
            .filter(|line| line.stock == Stock::InDoubt)
            .map(SagaLine::reserve)
            .collect()
    }

    /// Undo in reverse: the payment first, then the stock, then the order. A
    /// charge the gateway may have taken (asked for, timed out) is refunded
    /// too: the gateway refunds by the charge's key whatever it did.
    fn next_compensation(&self) -> Option<Action> {
        if matches!(
            self.charge,
            Charge::Requested | Charge::Approved | Charge::TimedOut
        ) {
            return Some(Action::Refund);
        }
        if self.flow == PaymentFlow::Authorize {
            // What shipped stays shipped: only what is still reserved goes
            // back.
            if let Some(line) = self.lines.iter().rev().find(|l| l.stock == Stock::Reserved) {
                return Some(Action::ReleaseReservation {
                    sku: line.sku.clone(),
                });
            }
            if self.lines.iter().any(|l| l.stock == Stock::InDoubt) {
                return None;
            }
            if !self.order_cancelled {
                return Some(Action::CancelOrder {
                    reason: self.reason.clone().unwrap_or_else(|| "cancelled".into()),
                });
            }
            return None;
        }
        if let Some(line) = self.lines.iter().rev().find(|l| l.stock == Stock::Reserved) {
            return Some(Action::ReleaseReservation {
                sku: line.sku.clone(),
            });
        }
        if let Some(line) = self
            .lines
            .iter()
            .rev()
            .find(|l| l.stock == Stock::Committed)
        {
            return Some(Action::ReturnStock {
                sku: line.sku.clone(),
                quantity: line.quantity,
            });
        }
        if self.lines.iter().any(|l| l.stock == Stock::InDoubt) {
            // Settled first (`to_settle`): what cannot be learned yet is
            // not passed over.
            return None;
        }
        if !self.order_cancelled {
            return Some(Action::CancelOrder {
                reason: self.reason.clone().unwrap_or_else(|| "cancelled".into()),
            });
        }
        None
    }

    /// Takes in how `action` went at `at`. An action that failed stays next;
    /// the driver tries again after a backoff (see [`give_up`](Self::give_up)).
    pub fn record(&mut self, action: &Action, outcome: Outcome, at: DateTime<Utc>) {
        self.updated_at = at;
        let (status, detail) = match &outcome {
            Outcome::Done => ("DONE", None),
            Outcome::Approved { reference } => ("DONE", Some(format!("approved: {reference}"))),
            Outcome::Refused { detail } => ("REFUSED", Some(detail.clone())),
            Outcome::Declined { reason } => ("REFUSED", Some(reason.clone())),
            Outcome::TimedOut => ("TIMED_OUT", None),
            Outcome::Failed { detail } => ("FAILED", Some(detail.clone())),
            Outcome::Inconsistent { detail } => ("FAILED", Some(detail.clone())),
            Outcome::Contended => ("FAILED", Some("the aggregate stayed busy".into())),
            Outcome::AlreadySold => ("DONE", Some("the units were sold".into())),
            Outcome::NeverDone => ("REFUSED", Some("given up: it never happened".into())),
            Outcome::Expired => ("REFUSED", Some("the authorization expired".into())),
        };
        self.steps.push(StepRecord {
            name: action.name(),
            status: status.into(),
            at,
            detail,
            reason: public_reason(action, &outcome).map(str::to_owned),
        });
        if self.state == SagaState::Abandoned {
            // Noted, and nothing more: its books are the operator's.
            return;
        }
        let outcome = match outcome {
            // An undo, a shipment or a return is never abandoned: a timeout
            // is one more failure, and so is a key given up on (only
            // forward steps are given up).
            Outcome::TimedOut | Outcome::NeverDone
                if action.is_compensation() || action.is_work() =>
            {
                Outcome::Failed {
                    detail: "timed out".into(),
                }
            }
            other => other,
        };
        // No answer, or one that leaves the command's fate open: it may
        // still land.
        let unanswered = matches!(
            outcome,
            Outcome::Failed { .. }
                | Outcome::Contended
                | Outcome::Inconsistent { .. }
                | Outcome::TimedOut
        );
        if unanswered
            && let Action::ReserveStock { sku, .. } = action
            && self.stock(sku) == Some(Stock::None)
        {
            self.set_stock(sku, Stock::InDoubt);
        }
        match outcome {
            Outcome::Failed { .. } | Outcome::Contended => {
                self.attempts += 1;
                return;
            }
            Outcome::Inconsistent { detail } => {
                self.attempts += 1;
                self.attention = Some(detail);
                return;
            }
            _ => {}
        }
        self.attempts = 0;
        self.attention = None;
        self.action_started_at = None;
        if action.is_work() {
            self.record_work(action, outcome);
            return;
        }
        match (action, outcome) {
            (Action::ReserveStock { sku, .. }, Outcome::Done) => {
                self.set_stock(sku, Stock::Reserved)
            }
            (Action::ReserveStock { sku, .. }, Outcome::Refused { detail })
                if !detail.contains("out of stock") =>
            {
                self.compensate(format!("cannot reserve {sku}: {detail}"));
            }
            (Action::ReserveStock { sku, .. }, Outcome::TimedOut) => {
                self.compensate(format!("stock reservation timed out: {sku}"));
            }
            (action, Outcome::NeverDone) => self.compensate(format!("{} failed", action.name())),
            (Action::ReserveStock { sku, .. }, _) => {
                self.compensate(format!("out of stock: {sku}"));
            }
            (Action::RequestCharge, Outcome::Done) => {
                self.charge = Charge::Requested;
                self.state = SagaState::Charging;
            }
            (Action::RequestCharge, _) => self.compensate("payment could not be requested".into()),
            (Action::Charge, Outcome::Approved { .. } | Outcome::Done) => {
                self.charge = Charge::Approved;
                // Once the saga is undoing, a late approval is only money to
                // give back (the next compensation).
                if self.state == SagaState::Charging {
                    self.state = SagaState::Confirming;
                }
            }
            (Action::Charge, Outcome::TimedOut) => {
                self.charge = Charge::TimedOut;
                self.compensate("payment timed out".into());
            }
            (Action::Charge, _) => {
                self.charge = Charge::Declined;
                self.compensate("payment declined".into());
            }
            (Action::CommitReservation { sku }, Outcome::Done | Outcome::AlreadySold) => {
                self.set_stock(sku, Stock::Committed);
            }
            (Action::CommitReservation { sku }, _) => {
                self.compensate(format!("stock could not be committed: {sku}"));
            }
            (Action::ConfirmOrder, Outcome::Done) => {
                self.state = SagaState::Confirmed;
                self.resume_work();
            }
            (Action::ConfirmOrder, _) => {
                // Only a cancelled order refuses to be confirmed.
                self.order_cancelled = true;
                self.compensate("cancelled by customer".into());
            }
            // The reservation was committed after all: return the units.
            (Action::ReleaseReservation { sku }, Outcome::AlreadySold) => {
                self.set_stock(sku, Stock::Committed);
            }
            // A refusal of an undo means there was nothing left to undo.
            (Action::ReleaseReservation { sku }, _) => self.set_stock(sku, Stock::Released),
            (Action::ReturnStock { sku, .. }, _) => self.set_stock(sku, Stock::Returned),
            (Action::Refund, _) => self.charge = Charge::Refunded,
            (Action::CancelOrder { .. }, _) => self.order_cancelled = true,
            // Carried out by `record_work`.
            (
                Action::Capture { .. }
                | Action::Reauthorize { .. }
                | Action::CommitShipment { .. }
                | Action::MarkShipped { .. }
                | Action::FailShipment { .. }
                | Action::RefundReturn { .. }
                | Action::Restock { .. },
                _,
            ) => {}
        }
        if self.state == SagaState::Compensating && self.nothing_left_to_undo() {
            self.end_cancelled();
        }
    }

    /// The undo is over: the saga is cancelled, and carries out whatever
    /// shipments' and returns' work is left (a return of what shipped).
    fn end_cancelled(&mut self) {
        self.state = SagaState::Cancelled;
        self.resume_work();
    }

    /// Takes in how actions that ran side by side went (a phase's, in the
    /// order given), as [`record`](Self::record) each, except that their
    /// failures count as one failure in a row, not one each: together they
    /// are one try of the phase, which one stall of the store fails whole.
    /// Returns the first action that failed.
    pub fn record_together(
        &mut self,
        outcomes: Vec<(Action, Outcome)>,
        at: DateTime<Utc>,
    ) -> Option<Action> {
        let mut first_failed = None;
        for (action, outcome) in outcomes {
            let failed = matches!(
                outcome,
                Outcome::Failed { .. } | Outcome::Inconsistent { .. } | Outcome::Contended
            );
            let attempts = self.attempts;
            self.record(&action, outcome, at);
            if failed {
                if first_failed.is_some() {
                    self.attempts = attempts;
                } else {
                    first_failed = Some(action);
                }
            }
        }
        first_failed
    }

    /// What the driver learned of a forward step whose outcome it did not
    /// know (its last try failed or never answered): it `landed`, or it
    /// never will. A landed step is taken in as done; otherwise nothing
    /// changes, and what follows (an undo, a cancel) knows there is nothing of
    /// it to undo.
    pub fn settled(&mut self, action: &Action, landed: bool, at: DateTime<Utc>) {
        if landed {
            self.record(action, Outcome::Done, at);
        } else {
            if let Action::ReserveStock { sku, .. } = action
                && self.stock(sku) == Some(Stock::InDoubt)
            {
                self.set_stock(sku, Stock::None);
            }
            self.updated_at = at;
            self.steps.push(StepRecord {
                name: action.name(),
                status: "REFUSED".into(),
                at,
                detail: Some("settled: it did not happen".into()),
                reason: Some("settled: it did not happen".into()),
            });
            if self.state == SagaState::Compensating && self.nothing_left_to_undo() {
                self.end_cancelled();
            }
        }
    }

    /// The next forward action kept failing and the driver settled that it
    /// did not happen: stop trying and undo, with the step's name as the
    /// reason. Compensations are never given up.
    pub fn give_up(&mut self, action: &Action, at: DateTime<Utc>) {
        if action.is_compensation() || action.is_work() || self.state.is_final() {
            return;
        }
        self.updated_at = at;
        self.compensate(format!("{} failed", action.name()));
    }

    /// Whether someone should look: a step has failed `limit` times in a row
    /// and is still retried (an undo is never given up; a forward step whose
    /// outcome the store cannot settle is not either), or the records
    /// disagree.
    pub fn needs_attention(&self, limit: u32) -> bool {
        self.attention.is_some()
            || !self.unsettled.is_empty()
            || (!self.is_over() && self.attempts >= limit)
    }

    /// The customer cancelled the order (its `OrderCancelled` event, whoever
    /// sent it). A saga in flight stops and undoes; a confirmed order gets its
    /// money and stock back. Seeing it again changes nothing.
    pub fn order_cancelled(&mut self, reason: &str, at: DateTime<Utc>) {
        if self.order_cancelled {
            return;
        }
        self.order_cancelled = true;
        self.updated_at = at;
        self.steps.push(StepRecord {
            name: "order cancelled".into(),
            status: "DONE".into(),
            at,
            detail: Some(reason.to_owned()),
            reason: Some("cancelled".into()),
        });
        match self.state {
            SagaState::Cancelled => {}
            // An abandoned saga undoes nothing: its books are the operator's,
            // who must hear that the customer has been told the order is
            // cancelled (their money and stock are as the saga left them).
            SagaState::Abandoned => {
                self.attention = Some(format!(
                    "the order was cancelled ({reason}) after its saga was abandoned: \
                     settle its stock and payment by hand, then abandon it again to say so"
                ));
            }
            SagaState::Compensating => {
                if self.nothing_left_to_undo() {
                    self.end_cancelled();
                }
            }
            // Charged whole and shipped (in part): refunding the charge and
            // returning every unit would undo what shipped.
            _ if self.flow == PaymentFlow::Charge && !self.shipments.is_empty() => {
                self.settle_by_hand(format!(
                    "the order was cancelled ({reason}) after shipments of a charge taken whole: \
                     refund what did not ship by hand, then abandon the saga to say so"
                ));
            }
            _ => {
                self.reason.get_or_insert_with(|| reason.to_owned());
                self.compensate_keeping_reason();
            }
        }
    }

    /// An operator stops the saga for good: `who` and `why` are recorded,
    /// and nothing it holds is undone (see [`SagaState::Abandoned`]). A
    /// saga that ended already stays as it is (`false`), except an
    /// abandoned one that calls for attention (its order was cancelled
    /// since): abandoning it again says the operator settled that too.
    pub fn abandon(&mut self, who: &str, why: &str, at: DateTime<Utc>) -> bool {
        // What only an operator can settle may flag a saga that ended:
        // abandoning it says the operator did.
        let flagged_again = !self.unsettled.is_empty()
            || (self.state == SagaState::Abandoned && self.attention.is_some());
        if self.state.is_final() && !flagged_again {
            return false;
        }
        let record = format!("by {who}: {why}");
        self.steps.push(StepRecord {
            name: "abandoned".into(),
            status: "DONE".into(),
            at,
            detail: Some(record.clone()),
            reason: Some("stopped by an operator".into()),
        });
        self.abandoned = Some(record);
        self.state = SagaState::Abandoned;
        self.attempts = 0;
        self.attention = None;
        self.unsettled.clear();
        self.action_started_at = None;
        self.updated_at = at;
        true
    }

    fn compensate(&mut self, reason: String) {
        self.reason.get_or_insert(reason);
        self.compensate_keeping_reason();
    }

    fn compensate_keeping_reason(&mut self) {
        self.state = SagaState::Compensating;
        self.attempts = 0;
        self.action_started_at = None;
        if self.nothing_left_to_undo() {
            self.end_cancelled();
        }
    }

    /// Whether the undo is over: nothing to undo, and no reservation left
    /// whose outcome is unknown.
    fn nothing_left_to_undo(&self) -> bool {
        self.next_compensation().is_none() && !self.lines.iter().any(|l| l.stock == Stock::InDoubt)
    }

    /// The stock of the line of `sku`.
    fn stock(&self, sku: &str) -> Option<Stock> {
        self.lines.iter().find(|l| l.sku == sku).map(|l| l.stock)
    }

    fn set_stock(&mut self, sku: &str, stock: Stock) {
        if let Some(line) = self.lines.iter_mut().find(|l| l.sku == sku) {
            line.stock = stock;
        }
        if self.state == SagaState::Reserving
            && self.lines.iter().all(|l| l.stock == Stock::Reserved)
        {
            self.state = SagaState::Charging;
        }
    }
}

impl SagaLine {
    /// Not known to be reserved: never sent, or sent without an answer.
    fn unreserved(&self) -> bool {
        matches!(self.stock, Stock::None | Stock::InDoubt)
    }

    /// The line's reservation, under its one key.
    fn reserve(&self) -> Action {
        Action::ReserveStock {
            sku: self.sku.clone(),
            quantity: self.quantity,
        }
    }
}

fn line(line: &OrderLine) -> SagaLine {
    SagaLine {
        sku: line.sku.to_string(),
        quantity: line.quantity,
        stock: Stock::None,
        shipped: 0,
    }
}
