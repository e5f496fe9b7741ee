//! What happens to a confirmed order's goods: shipments (each `PENDING`
//! until its capture succeeds, then `SHIPPED`, `DELIVERED`, or `FAILED`)
//! and returns (`REQUESTED`, then `RECEIVED`), with the rules that keep
//! their quantities within what was ordered, shipped and delivered.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{OrderError, OrderEvent, OrderLine, OrderStatus};
use crate::values::{Carrier, Reason, ReturnId, ShipmentId, Sku, TrackingNumber};

/// Units of one SKU, in a shipment or a return.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ItemLine {
    pub sku: Sku,
    pub quantity: u32,
}

/// Where a shipment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ShipmentStatus {
    /// Asked for; its capture is in flight. Its units are spoken for.
    Pending,
    /// Its capture succeeded and its stock left the warehouse.
    Shipped,
    Delivered,
    /// Its capture was refused; its units may ship again.
    Failed,
}

impl ShipmentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Shipped => "SHIPPED",
            Self::Delivered => "DELIVERED",
            Self::Failed => "FAILED",
        }
    }
}

/// One shipment of an order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Shipment {
    pub id: ShipmentId,
    pub lines: Vec<ItemLine>,
    pub carrier: Carrier,
    pub tracking_number: TrackingNumber,
    /// What its lines are worth at the order's prices: what it captures.
    pub value_cents: i64,
    pub status: ShipmentStatus,
    pub requested_at: DateTime<Utc>,
    pub shipped_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    /// Why it failed.
    pub failure: Option<String>,
}

/// Where a return stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReturnStatus {
    Requested,
    /// The goods came back; the refund follows.
    Received,
}

impl ReturnStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requested => "REQUESTED",
            Self::Received => "RECEIVED",
        }
    }
}

/// One return of an order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Return {
    pub id: ReturnId,
    pub lines: Vec<ItemLine>,
    pub reason: Reason,
    /// What its lines are worth at the order's prices: what it refunds.
    pub refund_cents: i64,
    pub status: ReturnStatus,
    pub requested_at: DateTime<Utc>,
    pub received_at: Option<DateTime<Utc>>,
    /// Whether its units went back on hand (`None` until received).
    pub restocked: Option<bool>,
}

/// What an order's goods have come to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Fulfilment {
    pub shipments: Vec<Shipment>,
    pub returns: Vec<Return>,
}

impl Fulfilment {
    /// Takes in a shipment's or a return's event; others change nothing.
    /// The order aggregate and the read models fold with it alike.
    pub fn fold(&mut self, event: OrderEvent) {
        match event {
            OrderEvent::ShipmentRequested(requested) => self.shipments.push(Shipment {
                id: requested.shipment_id,
                lines: requested.lines,
                carrier: requested.carrier,
                tracking_number: requested.tracking_number,
                value_cents: requested.value_cents,
                status: ShipmentStatus::Pending,
                requested_at: requested.requested_at,
                shipped_at: None,
                delivered_at: None,
                failure: None,
            }),
            OrderEvent::ShipmentShipped(shipped) => {
                if let Some(shipment) = self.shipment_mut(shipped.shipment_id) {
                    shipment.status = ShipmentStatus::Shipped;
                    shipment.shipped_at = Some(shipped.shipped_at);
                }
            }
            OrderEvent::ShipmentFailed(failed) => {
                if let Some(shipment) = self.shipment_mut(failed.shipment_id) {
                    shipment.status = ShipmentStatus::Failed;
                    shipment.failure = Some(failed.reason.to_string());
                }
            }
            OrderEvent::ShipmentDelivered(delivered) => {
                if let Some(shipment) = self.shipment_mut(delivered.shipment_id) {
                    shipment.status = ShipmentStatus::Delivered;
                    shipment.delivered_at = Some(delivered.delivered_at);
                }
            }
            OrderEvent::ReturnRequested(requested) => self.returns.push(Return {
                id: requested.return_id,
                lines: requested.lines,
                reason: requested.reason,
                refund_cents: requested.refund_cents,
                status: ReturnStatus::Requested,
                requested_at: requested.requested_at,
                received_at: None,
                restocked: None,
            }),
            OrderEvent::ReturnReceived(received) => {
                if let Some(found) = self.return_mut(received.return_id) {
                    found.status = ReturnStatus::Received;
                    found.received_at = Some(received.received_at);
                    found.restocked = Some(received.restock);
                }
            }
            OrderEvent::OrderPlaced(_)
            | OrderEvent::OrderConfirmed(_)
            | OrderEvent::OrderCancelled(_) => {}
        }
    }

    /// The status an order of `status` with `lines` has after its
    /// shipments changed: a confirmed order's follows its shipments; a
    /// placed or cancelled one stays as it is.
    pub fn status_after(&self, status: OrderStatus, lines: &[OrderLine]) -> OrderStatus {
        if status.is_confirmed() {
            self.status(lines)
        } else {
            status
        }
    }

    pub fn shipment(&self, id: ShipmentId) -> Option<&Shipment> {
        self.shipments.iter().find(|shipment| shipment.id == id)
    }

    pub fn shipment_mut(&mut self, id: ShipmentId) -> Option<&mut Shipment> {
        self.shipments.iter_mut().find(|shipment| shipment.id == id)
    }

    pub fn return_of(&self, id: ReturnId) -> Option<&Return> {
        self.returns.iter().find(|found| found.id == id)
    }

    pub fn return_mut(&mut self, id: ReturnId) -> Option<&mut Return> {
        self.returns.iter_mut().find(|found| found.id == id)
    }

    /// Units of `sku` in shipments of the given statuses.
    fn units(&self, sku: &Sku, statuses: &[ShipmentStatus]) -> u32 {
        self.shipments
            .iter()
            .filter(|shipment| statuses.contains(&shipment.status))
            .map(|shipment| quantity_of(&shipment.lines, sku))
            .sum()
    }

    /// Units of `sku` shipped (delivered or not).
    pub fn shipped(&self, sku: &Sku) -> u32 {
        self.units(sku, &[ShipmentStatus::Shipped, ShipmentStatus::Delivered])
    }

    /// Units of `sku` shipped or on their way to it: not free to ship again.
    fn spoken_for(&self, sku: &Sku) -> u32 {
        self.units(
            sku,
            &[
                ShipmentStatus::Pending,
                ShipmentStatus::Shipped,
                ShipmentStatus::Delivered,
            ],
        )
    }

    /// Units of `sku` in returns, requested or received.
    fn returned(&self, sku: &Sku) -> u32 {
        self.returns
            .iter()
            .map(|found| quantity_of(&found.lines, sku))
            .sum()
    }

    /// What the shipped (and delivered) shipments are worth: what the order
    /// must have captured.
    pub fn shipped_value_cents(&self) -> i64 {
        self.shipments
            .iter()
            .filter(|s| {
                matches!(
                    s.status,
                    ShipmentStatus::Shipped | ShipmentStatus::Delivered
                )
            })
            .map(|s| s.value_cents)
            .sum()
    }

    /// What the received returns are worth: what the order must have refunded.
    pub fn received_value_cents(&self) -> i64 {
        self.returns
            .iter()
            .filter(|found| found.status == ReturnStatus::Received)
            .map(|found| found.refund_cents)
            .sum()
    }

    pub fn has_pending(&self) -> bool {
        self.shipments
            .iter()
            .any(|shipment| shipment.status == ShipmentStatus::Pending)
    }

    /// Whether every unit of `lines` has shipped.
    pub fn all_shipped(&self, lines: &[OrderLine]) -> bool {
        lines
            .iter()
            .all(|line| self.shipped(&line.sku) >= line.quantity)
    }

    /// The status the shipments give an order that was confirmed: shipped in
    /// part, in whole, or delivered in whole.
    pub fn status(&self, lines: &[OrderLine]) -> OrderStatus {
        let any_shipped = self.shipments.iter().any(|shipment| {
            matches!(
                shipment.status,
                ShipmentStatus::Shipped | ShipmentStatus::Delivered
            )
        });
        if !any_shipped {
            OrderStatus::Confirmed
        } else if !self.all_shipped(lines) {
            OrderStatus::PartiallyShipped
        } else if self
            .shipments
            .iter()
            .all(|shipment| shipment.status != ShipmentStatus::Shipped)
        {
            OrderStatus::Delivered
        } else {
            OrderStatus::Shipped
        }
    }

    /// Checks a shipment's lines against what is left to ship, and values
    /// them at the order's prices.
    pub fn check_shipment(
        &self,
        ordered: &[OrderLine],
        lines: &[ItemLine],
    ) -> Result<i64, OrderError> {
        let value = checked_lines(ordered, lines)?;
        for (line, item) in lines.iter().enumerate() {
            let ordered_units = quantity_of_order(ordered, &item.sku);
            let left = ordered_units - self.spoken_for(&item.sku).min(ordered_units);
            if item.quantity > left {
                return Err(OrderError::NotShippable {
                    line,
                    sku: item.sku.clone(),
                    asked: item.quantity,
                    left,
                });
            }
        }
        Ok(value)
    }

    /// Checks a return's lines against what was delivered within
    /// `window_days` of `at` and not returned yet, and values them at the
    /// order's prices.
    pub fn check_return(
        &self,
        ordered: &[OrderLine],
        lines: &[ItemLine],
        at: DateTime<Utc>,
        window_days: u32,
    ) -> Result<i64, OrderError> {
        let value = checked_lines(ordered, lines)?;
        let window = chrono::Duration::days(i64::from(window_days));
        for (line, item) in lines.iter().enumerate() {
            let delivered = self.units(&item.sku, &[ShipmentStatus::Delivered]);
            let not_returned = delivered - self.returned(&item.sku).min(delivered);
            let in_window: u32 = self
                .shipments
                .iter()
                .filter(|shipment| {
                    shipment.status == ShipmentStatus::Delivered
                        && shipment
                            .delivered_at
                            .is_some_and(|delivered_at| at <= delivered_at + window)
                })
                .map(|shipment| quantity_of(&shipment.lines, &item.sku))
                .sum();
            let returnable = not_returned.min(in_window);
            if item.quantity > not_returned {
                return Err(OrderError::NotReturnable {
                    line,
                    sku: item.sku.clone(),
                    asked: item.quantity,
                    returnable: not_returned,
                });
            }
            if item.quantity > returnable {
                return Err(OrderError::ReturnWindowClosed {
                    line,
                    sku: item.sku.clone(),
                    window_days,
                });
            }
        }
        Ok(value)
    }
}

/// Checks that `lines` are not empty, name only SKUs of the order, each
/// once, with at least one unit; their value at the order's prices.
fn checked_lines(ordered: &[OrderLine], lines: &[ItemLine]) -> Result<i64, OrderError> {
    if lines.is_empty() {
        return Err(OrderError::NoLines);
    }
    let mut value = 0;
    for (line, item) in lines.iter().enumerate() {
        if lines[..line].iter().any(|earlier| earlier.sku == item.sku) {
            return Err(OrderError::DuplicateSku {
                line,
                sku: item.sku.clone(),
            });
        }
        let Some(ordered_line) = ordered.iter().find(|ordered| ordered.sku == item.sku) else {
            return Err(OrderError::SkuNotOrdered {
                line,
                sku: item.sku.clone(),
            });
        };
        if item.quantity == 0 {
            return Err(OrderError::QuantityOutOfRange {
                line,
                quantity: item.quantity,
                max: super::MAX_SKU_QUANTITY,
            });
        }
        // More than ordered is refused by the caller's rule (left to ship,
        // left to return) before this value is used; below that it is at
        // most the order's own total, which fits an i64.
        value +=
            ordered_line.unit_price_cents * i64::from(item.quantity.min(ordered_line.quantity));
    }
    Ok(value)
}

fn quantity_of(lines: &[ItemLine], sku: &Sku) -> u32 {
    lines
        .iter()
        .filter(|line| &line.sku == sku)
        .map(|line| line.quantity)
        .sum()
}

fn quantity_of_order(lines: &[OrderLine], sku: &Sku) -> u32 {
    lines
        .iter()
        .filter(|line| &line.sku == sku)
        .map(|line| line.quantity)
        .sum()
}

#[cfg(test)]
mod tests;
