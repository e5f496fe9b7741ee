//! A confirmed order's shipments and returns, as its saga carries them out.
//!
//! The saga takes in, from the order as stored ([`OrderSaga::take_in`]),
//! each shipment waiting for its capture and each received return, then
//! works through them one at a time:
//!
//! - a shipment captures its value from the current authorization
//!   (authorizing again what is left when the gateway says it expired),
//!   commits its units out of the order's reservation and marks it shipped;
//!   a declined capture, or a declined new authorization, fails it instead;
//! - a return is refunded from the shipments' captures (each part under a
//!   key of its own, never more than a capture took) and, when asked,
//!   restocked.
//!
//! Every step is a command or a gateway call under a key of its own, so a
//! repeat after a crash finds the first result; none is ever given up.

use domain::order::{Fulfilment, ReturnStatus, ShipmentStatus};
use serde::{Deserialize, Serialize};

use super::{
    Action, Charge, MAX_EXPIRIES_IN_A_ROW, OrderSaga, Outcome, PaymentFlow, SagaState, Stock,
};

/// Units of one SKU in a shipment or a return, and whether the saga's step
/// for them is done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkLine {
    pub sku: String,
    pub quantity: u32,
    #[serde(default)]
    pub done: bool,
}

/// Where a shipment's work stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ShipmentStage {
    Capturing,
    /// Captured: taking its units out of the reservation.
    Committing,
    /// Committed: marking the order's shipment shipped.
    Marking,
    /// Its capture was declined: marking the order's shipment failed.
    Failing,
    Shipped,
    Failed,
}

/// One shipment the saga carries out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipmentWork {
    pub shipment_id: String,
    pub lines: Vec<WorkLine>,
    /// What it captures.
    pub value_cents: i64,
    pub stage: ShipmentStage,
    /// Why it fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

impl ShipmentWork {
    fn is_done(&self) -> bool {
        matches!(self.stage, ShipmentStage::Shipped | ShipmentStage::Failed)
    }
}

/// What one shipment captured, and what was refunded of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureRecord {
    pub shipment_id: String,
    /// The authorization it was captured from.
    pub attempt: u32,
    pub amount_cents: i64,
    pub refunded_cents: i64,
}

/// The part of a return refunded from one capture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundPart {
    pub shipment_id: String,
    pub attempt: u32,
    pub amount_cents: i64,
    #[serde(default)]
    pub done: bool,
}

/// One received return the saga carries out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReturnWork {
    pub return_id: String,
    pub lines: Vec<WorkLine>,
    pub refund_cents: i64,
    pub restock: bool,
    /// Its refund, split over the captures it comes from.
    pub refunds: Vec<RefundPart>,
}

impl ReturnWork {
    fn is_done(&self) -> bool {
        self.refunds.iter().all(|part| part.done)
            && (!self.restock || self.lines.iter().all(|line| line.done))
    }
}

/// Whether an order event of this type calls for its saga's work: a
/// shipment asked for, a return received (the saga then reads them from
/// the order).
pub fn calls_for_work(event_type: &str) -> bool {
    matches!(event_type, "ShipmentRequested" | "ReturnReceived")
}

impl OrderSaga {
    /// Takes in the shipments waiting for their capture and the received
    /// returns of the order as it stands at `version`, unless the saga took
    /// in that version (or a later one) already.
    pub fn take_in(&mut self, fulfilment: &Fulfilment, version: i64) {
        if version <= self.order_version {
            return;
        }
        self.order_version = version;
        if self.state == SagaState::Abandoned {
            // Its books are the operator's, who must hear of work that came
            // after all (a shipment waits for a capture nobody will take).
            let waiting = fulfilment
                .shipments
                .iter()
                .any(|s| s.status == ShipmentStatus::Pending)
                || fulfilment.returns.iter().any(|found| {
                    found.status == ReturnStatus::Received
                        && !self
                            .returns
                            .iter()
                            .any(|t| t.return_id == found.id.to_string())
                });
            if waiting {
                self.settle_by_hand(
                    "a shipment or a return came after the saga was abandoned: settle it by \
                     hand, then abandon the saga again to say so"
                        .into(),
                );
            }
            return;
        }
        for shipment in &fulfilment.shipments {
            let id = shipment.id.to_string();
            if shipment.status != ShipmentStatus::Pending
                || self.shipments.iter().any(|taken| taken.shipment_id == id)
            {
                continue;
            }
            // A charge took the money and sold the units when the order was
            // confirmed: its shipments only need marking.
            // A shipment worth nothing (free goods) has nothing to capture.
            let stage = match self.flow {
                PaymentFlow::Authorize if shipment.value_cents > 0 => ShipmentStage::Capturing,
                PaymentFlow::Authorize => ShipmentStage::Committing,
                PaymentFlow::Charge => ShipmentStage::Marking,
            };
            self.shipments.push(ShipmentWork {
                shipment_id: id,
                lines: work_lines(&shipment.lines),
                value_cents: shipment.value_cents,
                stage,
                failure: None,
            });
        }
        for found in &fulfilment.returns {
            let id = found.id.to_string();
            if found.status != ReturnStatus::Received
                || self.returns.iter().any(|taken| taken.return_id == id)
            {
                continue;
            }
            let refunds = self.allocate(found.refund_cents);
            if refunds.is_none() {
                self.settle_by_hand(format!(
                    "return {id} refunds {} that the captures cannot give back \
                     (an order charged whole is refunded by hand): refund it, then abandon \
                     the saga to say so",
                    found.refund_cents
                ));
            }
            self.returns.push(ReturnWork {
                return_id: id,
                lines: work_lines(&found.lines),
                refund_cents: found.refund_cents,
                restock: found.restocked.unwrap_or(false),
                refunds: refunds.unwrap_or_default(),
            });
        }
        self.resume_work();
    }

    /// Splits a refund over the captures, oldest first, each within what
    /// it has left after the refunds already planned; `None` if they cannot
    /// give it back.
    fn allocate(&self, refund_cents: i64) -> Option<Vec<RefundPart>> {
        let mut left = refund_cents;
        let mut parts = Vec::new();
        for capture in &self.captures {
            if left == 0 {
                break;
            }
            let planned: i64 = self
                .returns
                .iter()
                .flat_map(|work| &work.refunds)
                .filter(|part| part.shipment_id == capture.shipment_id)
                .map(|part| part.amount_cents)
                .sum();
            let part = (capture.amount_cents - planned).min(left);
            if part > 0 {
                parts.push(RefundPart {
                    shipment_id: capture.shipment_id.clone(),
                    attempt: capture.attempt,
                    amount_cents: part,
                    done: false,
                });
                left -= part;
            }
        }
        (left == 0).then_some(parts)
    }

    /// What was captured in all.
    pub fn captured_cents(&self) -> i64 {
        self.captures.iter().map(|c| c.amount_cents).sum()
    }

    /// Notes something the saga cannot do and an operator must: flagged
    /// until the operator abandons the saga, whatever steps go through
    /// meanwhile.
    pub(super) fn settle_by_hand(&mut self, what: String) {
        if !self.unsettled.contains(&what) {
            self.unsettled.push(what);
        }
    }

    /// An ended saga with shipments or returns to carry out works on them.
    pub(super) fn resume_work(&mut self) {
        if matches!(self.state, SagaState::Confirmed | SagaState::Cancelled) && self.has_work() {
            self.state = SagaState::Fulfilling;
        }
    }

    fn has_work(&self) -> bool {
        self.shipments.iter().any(|work| !work.is_done())
            || self.returns.iter().any(|work| !work.is_done())
    }

    /// The next step of the oldest shipment, then of the oldest return, not
    /// carried out yet.
    pub(super) fn next_work(&self) -> Option<Action> {
        if let Some(work) = self.shipments.iter().find(|work| !work.is_done()) {
            let shipment_id = work.shipment_id.clone();
            return Some(match work.stage {
                ShipmentStage::Capturing => match self.charge {
                    Charge::Approved => Action::Capture {
                        shipment_id,
                        attempt: self.attempt,
                        amount_cents: work.value_cents,
                    },
                    // Expired, or a new one declined for an earlier
                    // shipment: ask again (the card may have changed).
                    Charge::Expired | Charge::Declined => Action::Reauthorize {
                        attempt: self.attempt + 1,
                        amount_cents: self.amount_cents - self.captured_cents(),
                    },
                    _ => Action::FailShipment {
                        shipment_id,
                        reason: "nothing is authorized to capture".into(),
                    },
                },
                ShipmentStage::Committing => match work.lines.iter().find(|line| !line.done) {
                    Some(line) => Action::CommitShipment {
                        shipment_id,
                        sku: line.sku.clone(),
                        quantity: line.quantity,
                    },
                    None => Action::MarkShipped { shipment_id },
                },
                ShipmentStage::Marking | ShipmentStage::Shipped => {
                    Action::MarkShipped { shipment_id }
                }
                ShipmentStage::Failing | ShipmentStage::Failed => Action::FailShipment {
                    shipment_id,
                    reason: work
                        .failure
                        .clone()
                        .unwrap_or_else(|| "capture declined".into()),
                },
            });
        }
        let work = self.returns.iter().find(|work| !work.is_done())?;
        if let Some(part) = work.refunds.iter().find(|part| !part.done) {
            return Some(Action::RefundReturn {
                return_id: work.return_id.clone(),
                shipment_id: part.shipment_id.clone(),
                attempt: part.attempt,
                amount_cents: part.amount_cents,
            });
        }
        let line = work.lines.iter().find(|line| !line.done)?;
        Some(Action::Restock {
            return_id: work.return_id.clone(),
            sku: line.sku.clone(),
            quantity: line.quantity,
        })
    }

    /// Takes in how a step of a shipment or a return went (not a failure:
    /// those count as attempts in [`record`](Self::record)).
    pub(super) fn record_work(&mut self, action: &Action, outcome: Outcome) {
        match (action, outcome) {
            (
                Action::Capture {
                    shipment_id,
                    attempt,
                    amount_cents,
                },
                Outcome::Approved { .. } | Outcome::Done,
            ) => {
                self.expired_in_a_row = 0;
                if !self.captures.iter().any(|c| &c.shipment_id == shipment_id) {
                    self.captures.push(CaptureRecord {
                        shipment_id: shipment_id.clone(),
                        attempt: *attempt,
                        amount_cents: *amount_cents,
                        refunded_cents: 0,
                    });
                }
                self.set_stage(shipment_id, ShipmentStage::Committing, None);
            }
            (Action::Capture { shipment_id, .. }, Outcome::Declined { reason }) => {
                self.set_stage(shipment_id, ShipmentStage::Failing, Some(reason));
            }
            (
                Action::Capture {
                    shipment_id,
                    attempt,
                    ..
                },
                Outcome::Expired,
            ) if *attempt == self.attempt => {
                self.charge = Charge::Expired;
                self.expired_in_a_row += 1;
                if self.expired_in_a_row >= MAX_EXPIRIES_IN_A_ROW {
                    let reason = format!(
                        "{} authorizations in a row expired before the capture",
                        self.expired_in_a_row
                    );
                    self.set_stage(shipment_id, ShipmentStage::Failing, Some(reason));
                }
            }
            (Action::Reauthorize { attempt, .. }, Outcome::Approved { .. } | Outcome::Done) => {
                self.attempt = *attempt;
                self.charge = Charge::Approved;
            }
            (Action::Reauthorize { attempt, .. }, Outcome::Declined { reason }) => {
                self.attempt = *attempt;
                self.charge = Charge::Declined;
                if let Some(work) = self.shipments.iter().find(|work| !work.is_done()) {
                    let id = work.shipment_id.clone();
                    self.set_stage(
                        &id,
                        ShipmentStage::Failing,
                        Some(format!("a new authorization was declined: {reason}")),
                    );
                }
            }
            (
                Action::CommitShipment {
                    shipment_id,
                    sku,
                    quantity,
                },
                Outcome::Done | Outcome::AlreadySold,
            ) => {
                if let Some(work) = self
                    .shipments
                    .iter_mut()
                    .find(|work| &work.shipment_id == shipment_id)
                    && let Some(line) = work.lines.iter_mut().find(|line| &line.sku == sku)
                    && !line.done
                {
                    line.done = true;
                    if let Some(ordered) = self.lines.iter_mut().find(|line| &line.sku == sku) {
                        ordered.shipped += quantity;
                        if ordered.shipped >= ordered.quantity {
                            ordered.stock = Stock::Committed;
                        }
                    }
                }
            }
            (Action::MarkShipped { shipment_id }, Outcome::Done) => {
                self.set_stage(shipment_id, ShipmentStage::Shipped, None);
            }
            (Action::FailShipment { shipment_id, .. }, Outcome::Done) => {
                self.set_stage(shipment_id, ShipmentStage::Failed, None);
            }
            (
                Action::RefundReturn {
                    return_id,
                    shipment_id,
                    amount_cents,
                    ..
                },
                Outcome::Approved { .. } | Outcome::Done,
            ) => {
                if let Some(part) = self
                    .returns
                    .iter_mut()
                    .find(|work| &work.return_id == return_id)
                    .and_then(|work| {
                        work.refunds
                            .iter_mut()
                            .find(|part| &part.shipment_id == shipment_id && !part.done)
                    })
                {
                    part.done = true;
                    if let Some(capture) = self
                        .captures
                        .iter_mut()
                        .find(|capture| &capture.shipment_id == shipment_id)
                    {
                        capture.refunded_cents += amount_cents;
                    }
                }
            }
            (Action::Restock { return_id, sku, .. }, Outcome::Done) => {
                if let Some(line) = self
                    .returns
                    .iter_mut()
                    .find(|work| &work.return_id == return_id)
                    .and_then(|work| work.lines.iter_mut().find(|line| &line.sku == sku))
                {
                    line.done = true;
                }
            }
            // Anything else is an answer the records should not give (a
            // refusal of the ledger, a stale expiry): tried again, and
            // someone should look.
            (action, outcome) => {
                self.attempts += 1;
                self.attention = Some(format!("{}: {outcome:?}", action.name()));
                return;
            }
        }
        if self.state == SagaState::Fulfilling && !self.has_work() {
            self.state = if self.order_cancelled {
                SagaState::Cancelled
            } else {
                SagaState::Confirmed
            };
        }
    }

    fn set_stage(&mut self, shipment_id: &str, stage: ShipmentStage, failure: Option<String>) {
        if let Some(work) = self
            .shipments
            .iter_mut()
            .find(|work| work.shipment_id == shipment_id)
        {
            work.stage = stage;
            if failure.is_some() {
                work.failure = failure;
            }
            // A shipment that fails takes its expiries with it: the next
            // one gets tries of its own.
            if stage == ShipmentStage::Failing {
                self.expired_in_a_row = 0;
            }
            if stage == ShipmentStage::Committing && work.lines.is_empty() {
                work.stage = ShipmentStage::Marking;
            }
        }
    }
}

fn work_lines(lines: &[domain::order::ItemLine]) -> Vec<WorkLine> {
    lines
        .iter()
        .map(|line| WorkLine {
            sku: line.sku.to_string(),
            quantity: line.quantity,
            done: false,
        })
        .collect()
}
