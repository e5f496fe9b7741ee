//! The order aggregate: what a customer bought, at which prices, where its
//! goods went ([`fulfilment`]: shipments and returns) and where the order
//! stands: `PLACED` → `CONFIRMED` → `PARTIALLY_SHIPPED` → `SHIPPED` →
//! `DELIVERED`, or `CANCELLED` from any of the first three.
//!
//! Prices arrive in the command: the write side looks them up from the products
//! when the order is placed, so an order keeps the prices it was placed at.
//! Times arrive in commands too. `CANCELLED` is final; a fully shipped order
//! cannot be cancelled (its goods are returned instead), and returns do not
//! change the status.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};

use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::values::{
    Carrier, Currency, CustomerId, Email, Money, OrderId, PaymentMethod, Reason, ReturnId,
    ShipmentId, ShippingAddress, Sku, TrackingNumber,
};

pub mod fulfilment;

pub use fulfilment::{Fulfilment, ItemLine, Return, ReturnStatus, Shipment, ShipmentStatus};

/// How many days after its delivery a unit may be returned, unless the shop
/// says otherwise (`return_window_days`).
pub const RETURN_WINDOW_DAYS: u32 = 30;

/// Most shipments one order may have (failed ones included): each is kept
/// on the order, and read with it, for good.
pub const MAX_SHIPMENTS: usize = 100;
/// Most returns one order may have: each is kept on the order, and read
/// with it, for good; a customer sends many units back in one return.
pub const MAX_RETURNS: usize = 25;

/// Most lines one order may have.
pub const MAX_LINES: usize = 100;
/// Most units one line of a request may ask for.
pub const MAX_LINE_QUANTITY: u32 = 10_000;
/// Most units of one SKU an order may hold: a request's lines naming the
/// same SKU are added together into one line of the order.
pub const MAX_SKU_QUANTITY: u32 = MAX_LINES as u32 * MAX_LINE_QUANTITY;

/// One line of an order with the unit price taken from the product.
#[derive(Debug, Clone, PartialEq)]
pub struct PricedLine {
    pub sku: Sku,
    pub quantity: u32,
    pub unit_price: Money,
}

/// What a caller may ask of an order.
#[derive(Debug, Clone, PartialEq)]
pub enum OrderCommand {
    /// Place a new order with 1..=100 priced lines of one currency.
    PlaceOrder {
        order_id: OrderId,
        customer_id: CustomerId,
        lines: Vec<PricedLine>,
        payment_method: PaymentMethod,
        /// Where the goods go, and where the customer hears about them;
        /// both optional.
        shipping_address: Option<Box<ShippingAddress>>,
        email: Option<Email>,
    },
    /// The order's stock is reserved and its total authorized.
    ConfirmOrder,
    /// Cancel a placed, confirmed or partly shipped order. With `customer`,
    /// only that customer's order: anyone else's is as unknown as a missing
    /// one.
    CancelOrder {
        reason: Reason,
        customer: Option<CustomerId>,
    },
    /// Ship units not shipped yet (an operator's word); the shipment waits
    /// for its capture.
    RequestShipment {
        shipment_id: ShipmentId,
        lines: Vec<ItemLine>,
        carrier: Carrier,
        tracking_number: TrackingNumber,
        at: DateTime<Utc>,
    },
    /// The shipment's capture succeeded and its stock left (the saga's word).
    MarkShipped {
        shipment_id: ShipmentId,
        at: DateTime<Utc>,
    },
    /// The shipment's capture was refused (the saga's word).
    FailShipment {
        shipment_id: ShipmentId,
        reason: Reason,
    },
    /// The carrier delivered the shipment.
    MarkDelivered {
        shipment_id: ShipmentId,
        at: DateTime<Utc>,
    },
    /// Take delivered units back, within `window_days` of their delivery.
    /// With `customer`, only that customer's order.
    RequestReturn {
        return_id: ReturnId,
        lines: Vec<ItemLine>,
        reason: Reason,
        at: DateTime<Utc>,
        window_days: u32,
        customer: Option<CustomerId>,
    },
    /// The returned goods arrived; `restock` puts them back on hand.
    ReceiveReturn {
        return_id: ReturnId,
        restock: bool,
        at: DateTime<Utc>,
    },
}

/// A line as recorded in an `OrderPlaced` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OrderLine {
    pub sku: Sku,
    pub quantity: u32,
    pub unit_price_cents: i64,
}

/// An order was placed. `total_cents` is the sum of quantity × unit price.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OrderPlaced {
    pub order_id: OrderId,
    pub customer_id: CustomerId,
    pub lines: Vec<OrderLine>,
    pub currency: Currency,
    pub total_cents: i64,
    pub payment_method: PaymentMethod,
    /// Where the goods go. Orders placed before addresses were taken have
    /// none, as do orders placed without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shipping_address: Option<Box<ShippingAddress>>,
    /// Where the customer hears about the order, if anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<Email>,
}

/// The order's stock is reserved and its total authorized (by releases
/// before shipments: its total captured).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OrderConfirmed {}

/// The order was cancelled; `reason` says why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OrderCancelled {
    pub reason: Reason,
    /// The status the order had when it was cancelled.
    pub previous_status: OrderStatus,
}

/// A shipment was asked for: it captures its value, then its stock leaves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ShipmentRequested {
    pub shipment_id: ShipmentId,
    pub lines: Vec<ItemLine>,
    pub carrier: Carrier,
    pub tracking_number: TrackingNumber,
    /// Its lines at the order's unit prices: what it captures.
    pub value_cents: i64,
    pub requested_at: DateTime<Utc>,
}

/// The shipment's value was captured and its stock left the warehouse.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ShipmentShipped {
    pub shipment_id: ShipmentId,
    pub shipped_at: DateTime<Utc>,
    /// The order's status after it: `PARTIALLY_SHIPPED`, `SHIPPED` or
    /// `DELIVERED` (`CANCELLED` stays so).
    pub status: OrderStatus,
}

/// The shipment's capture was refused; its units stay reserved and may
/// ship again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ShipmentFailed {
    pub shipment_id: ShipmentId,
    pub reason: Reason,
}

/// The carrier delivered the shipment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ShipmentDelivered {
    pub shipment_id: ShipmentId,
    pub delivered_at: DateTime<Utc>,
    /// The order's status after it (`DELIVERED` once every unit shipped
    /// and every shipment is delivered).
    pub status: OrderStatus,
}

/// Delivered units are coming back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReturnRequested {
    pub return_id: ReturnId,
    pub lines: Vec<ItemLine>,
    pub reason: Reason,
    /// Its lines at the order's unit prices: what receiving it refunds.
    pub refund_cents: i64,
    pub requested_at: DateTime<Utc>,
}

/// The returned units arrived: they are refunded, and back on hand if
/// `restock` (written off otherwise).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReturnReceived {
    pub return_id: ReturnId,
    pub restock: bool,
    pub received_at: DateTime<Utc>,
}

crate::events! {
    /// Everything that can happen to an order.
    pub enum OrderEvent for Order {
        OrderPlaced,
        OrderConfirmed,
        OrderCancelled,
        ShipmentRequested,
        ShipmentShipped,
        ShipmentFailed,
        ShipmentDelivered,
        ReturnRequested,
        ReturnReceived,
    }
}

/// Where an order stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    Placed,
    /// Every line reserved and the total authorized.
    Confirmed,
    /// Some units shipped, not all.
    PartiallyShipped,
    /// Every unit shipped.
    Shipped,
    /// Every unit shipped and every shipment delivered.
    Delivered,
    Cancelled,
}

impl OrderStatus {
    pub const ALL: [Self; 6] = [
        Self::Placed,
        Self::Confirmed,
        Self::PartiallyShipped,
        Self::Shipped,
        Self::Delivered,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Placed => "PLACED",
            Self::Confirmed => "CONFIRMED",
            Self::PartiallyShipped => "PARTIALLY_SHIPPED",
            Self::Shipped => "SHIPPED",
            Self::Delivered => "DELIVERED",
            Self::Cancelled => "CANCELLED",
        }
    }

    /// Whether the order's stock is reserved and its total authorized: the
    /// statuses a confirmed order moves through as it ships.
    pub fn is_confirmed(self) -> bool {
        matches!(
            self,
            Self::Confirmed | Self::PartiallyShipped | Self::Shipped | Self::Delivered
        )
    }
}

/// Why an order refused a command. Each is a business answer, not a failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    /// No order has this id.
    #[error("no order with this id exists")]
    NotFound,
    /// An order with this id was already placed; ids are never reused.
    #[error("the order was already placed")]
    AlreadyPlaced,
    /// An order needs at least one line.
    #[error("an order needs at least one line")]
    NoLines,
    /// More lines than [`MAX_LINES`].
    #[error("an order has at most {max} lines, got {count}")]
    TooManyLines { count: usize, max: usize },
    /// A line's quantity is outside 1..=[`MAX_SKU_QUANTITY`].
    #[error("line {line}: quantity {quantity} is outside 1..={max}")]
    QuantityOutOfRange {
        line: usize,
        quantity: u32,
        max: u32,
    },
    /// Two lines name the same SKU; put the quantities on one line.
    #[error("line {line}: SKU {sku} appears on more than one line")]
    DuplicateSku { line: usize, sku: Sku },
    /// Lines are priced in different currencies; an order has one currency.
    #[error("line {line}: {sku} is priced in {found}, the order in {expected}")]
    MixedCurrencies {
        line: usize,
        sku: Sku,
        expected: Currency,
        found: Currency,
    },
    /// The total is more than the payment gateway can charge at once.
    #[error("the total of {total_cents} is more than the {max} that can be charged at once")]
    TotalTooLarge { total_cents: i64, max: i64 },
    /// The order was confirmed already.
    #[error("the order is already confirmed")]
    AlreadyConfirmed,
    /// The order was cancelled; `CANCELLED` is final.
    #[error("the order is already cancelled")]
    AlreadyCancelled,
    /// Only a confirmed order ships: its stock reserved, its total authorized.
    #[error(
        "the order is not confirmed yet: it ships once its stock is reserved and its total authorized"
    )]
    NotConfirmed,
    /// Every unit has shipped: nothing more ships, and the order is returned
    /// rather than cancelled.
    #[error("every unit of the order has shipped: return it instead")]
    FullyShipped,
    /// A shipment is waiting for its capture; cancel once it has shipped or failed.
    #[error("a shipment is waiting for its capture: try again once it has shipped or failed")]
    ShipmentPending,
    /// A line names a SKU the order does not hold.
    #[error("line {line}: the order has no {sku}")]
    SkuNotOrdered { line: usize, sku: Sku },
    /// More units than are left to ship.
    #[error("line {line}: {asked} of {sku} asked, {left} left to ship")]
    NotShippable {
        line: usize,
        sku: Sku,
        asked: u32,
        left: u32,
    },
    /// The shipment id is taken.
    #[error("a shipment with this id exists")]
    ShipmentExists,
    /// The order has [`MAX_SHIPMENTS`] shipments already.
    #[error("the order has {max} shipments already, the most it may have")]
    TooManyShipments { max: usize },
    /// The order has [`MAX_RETURNS`] returns already.
    #[error(
        "the order has {max} returns already, the most it may have: send more units back in one return"
    )]
    TooManyReturns { max: usize },
    /// The order has no shipment with this id.
    #[error("the order has no shipment with this id")]
    ShipmentNotFound,
    /// The shipment's capture was answered already.
    #[error("the shipment is {}, not waiting for its capture", .status.as_str())]
    ShipmentNotPending { status: ShipmentStatus },
    /// Only a shipped shipment is delivered.
    #[error("the shipment is {}: only a shipped one is delivered", .status.as_str())]
    NotShipped { status: ShipmentStatus },
    /// More units than were delivered and not returned yet.
    #[error("line {line}: {asked} of {sku} asked, {returnable} delivered and not returned")]
    NotReturnable {
        line: usize,
        sku: Sku,
        asked: u32,
        returnable: u32,
    },
    /// The units were delivered more than the return window ago.
    #[error("line {line}: {sku} was delivered more than {window_days} days ago")]
    ReturnWindowClosed {
        line: usize,
        sku: Sku,
        window_days: u32,
    },
    /// The return id is taken.
    #[error("a return with this id exists")]
    ReturnExists,
    /// The order has no return with this id.
    #[error("the order has no return with this id")]
    ReturnNotFound,
    /// The return was received already.
    #[error("the return was received already")]
    ReturnAlreadyReceived,
}

/// The state of a placed order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlacedOrder {
    pub customer_id: CustomerId,
    pub lines: Vec<OrderLine>,
    pub currency: Currency,
    pub total_cents: i64,
    pub payment_method: PaymentMethod,
    pub status: OrderStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shipping_address: Option<Box<ShippingAddress>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<Email>,
    /// Its shipments and returns.
    #[serde(default)]
    pub fulfilment: Fulfilment,
}

/// One order, rebuilt from its events; `None` until it is placed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Order {
    placed: Option<PlacedOrder>,
}

impl Order {
    pub fn placed(&self) -> Option<&PlacedOrder> {
        self.placed.as_ref()
    }

    pub fn status(&self) -> Option<OrderStatus> {
        self.placed.as_ref().map(|order| order.status)
    }

    /// Decides what a command does to this order, without changing it.
    pub fn decide(&self, command: OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
        let event = match command {
            OrderCommand::PlaceOrder {
                order_id,
                customer_id,
                lines,
                payment_method,
                shipping_address,
                email,
            } => {
                if self.placed.is_some() {
                    return Err(OrderError::AlreadyPlaced);
                }
                let (lines, currency, total_cents) = price_lines(lines)?;
                OrderEvent::OrderPlaced(OrderPlaced {
                    order_id,
                    customer_id,
                    lines,
                    currency,
                    total_cents,
                    payment_method,
                    shipping_address,
                    email,
                })
            }
            OrderCommand::ConfirmOrder => match self.current_status()? {
                OrderStatus::Placed => OrderEvent::OrderConfirmed(OrderConfirmed {}),
                OrderStatus::Cancelled => return Err(OrderError::AlreadyCancelled),
                _ => return Err(OrderError::AlreadyConfirmed),
            },
            OrderCommand::CancelOrder { reason, customer } => match self.status_for(customer)? {
                previous_status @ (OrderStatus::Placed
                | OrderStatus::Confirmed
                | OrderStatus::PartiallyShipped) => {
                    if self.fulfilment().is_some_and(Fulfilment::has_pending) {
                        return Err(OrderError::ShipmentPending);
                    }
                    OrderEvent::OrderCancelled(OrderCancelled {
                        reason,
                        previous_status,
                    })
                }
                OrderStatus::Shipped | OrderStatus::Delivered => {
                    return Err(OrderError::FullyShipped);
                }
                OrderStatus::Cancelled => return Err(OrderError::AlreadyCancelled),
            },
            OrderCommand::RequestShipment {
                shipment_id,
                lines,
                carrier,
                tracking_number,
                at,
            } => {
                let order = self.current()?;
                match order.status {
                    OrderStatus::Confirmed | OrderStatus::PartiallyShipped => {}
                    OrderStatus::Placed => return Err(OrderError::NotConfirmed),
                    OrderStatus::Shipped | OrderStatus::Delivered => {
                        return Err(OrderError::FullyShipped);
                    }
                    OrderStatus::Cancelled => return Err(OrderError::AlreadyCancelled),
                }
                if order.fulfilment.shipment(shipment_id).is_some() {
                    return Err(OrderError::ShipmentExists);
                }
                if order.fulfilment.shipments.len() >= MAX_SHIPMENTS {
                    return Err(OrderError::TooManyShipments { max: MAX_SHIPMENTS });
                }
                let value_cents = order.fulfilment.check_shipment(&order.lines, &lines)?;
                OrderEvent::ShipmentRequested(ShipmentRequested {
                    shipment_id,
                    lines,
                    carrier,
                    tracking_number,
                    value_cents,
                    requested_at: at,
                })
            }
            OrderCommand::MarkShipped { shipment_id, at } => {
                self.pending_shipment(shipment_id)?;
                let mut shipped = ShipmentShipped {
                    shipment_id,
                    shipped_at: at,
                    status: OrderStatus::Placed,
                };
                shipped.status = self.status_after(OrderEvent::ShipmentShipped(shipped.clone()))?;
                OrderEvent::ShipmentShipped(shipped)
            }
            OrderCommand::FailShipment {
                shipment_id,
                reason,
            } => {
                self.pending_shipment(shipment_id)?;
                OrderEvent::ShipmentFailed(ShipmentFailed {
                    shipment_id,
                    reason,
                })
            }
            OrderCommand::MarkDelivered { shipment_id, at } => {
                let shipment = self.shipment(shipment_id)?;
                if shipment.status != ShipmentStatus::Shipped {
                    return Err(OrderError::NotShipped {
                        status: shipment.status,
                    });
                }
                let mut delivered = ShipmentDelivered {
                    shipment_id,
                    delivered_at: at,
                    status: OrderStatus::Placed,
                };
                delivered.status =
                    self.status_after(OrderEvent::ShipmentDelivered(delivered.clone()))?;
                OrderEvent::ShipmentDelivered(delivered)
            }
            OrderCommand::RequestReturn {
                return_id,
                lines,
                reason,
                at,
                window_days,
                customer,
            } => {
                self.status_for(customer)?;
                let order = self.current()?;
                if order.fulfilment.return_of(return_id).is_some() {
                    return Err(OrderError::ReturnExists);
                }
                if order.fulfilment.returns.len() >= MAX_RETURNS {
                    return Err(OrderError::TooManyReturns { max: MAX_RETURNS });
                }
                let refund_cents =
                    order
                        .fulfilment
                        .check_return(&order.lines, &lines, at, window_days)?;
                OrderEvent::ReturnRequested(ReturnRequested {
                    return_id,
                    lines,
                    reason,
                    refund_cents,
                    requested_at: at,
                })
            }
            OrderCommand::ReceiveReturn {
                return_id,
                restock,
                at,
            } => {
                let found = self
                    .current()?
                    .fulfilment
                    .return_of(return_id)
                    .ok_or(OrderError::ReturnNotFound)?;
                if found.status == ReturnStatus::Received {
                    return Err(OrderError::ReturnAlreadyReceived);
                }
                OrderEvent::ReturnReceived(ReturnReceived {
                    return_id,
                    restock,
                    received_at: at,
                })
            }
        };
        Ok(vec![event])
    }

    /// The order's shipments and returns, once it is placed.
    pub fn fulfilment(&self) -> Option<&Fulfilment> {
        self.placed.as_ref().map(|order| &order.fulfilment)
    }

    /// The order's status once `event` (a shipment's) is applied.
    fn status_after(&self, event: OrderEvent) -> Result<OrderStatus, OrderError> {
        let order = self.current()?;
        let mut fulfilment = order.fulfilment.clone();
        fulfilment.fold(event);
        Ok(fulfilment.status_after(order.status, &order.lines))
    }

    fn current(&self) -> Result<&PlacedOrder, OrderError> {
        self.placed.as_ref().ok_or(OrderError::NotFound)
    }

    fn shipment(&self, id: ShipmentId) -> Result<&Shipment, OrderError> {
        self.current()?
            .fulfilment
            .shipment(id)
            .ok_or(OrderError::ShipmentNotFound)
    }

    /// The shipment, if it waits for its capture.
    fn pending_shipment(&self, id: ShipmentId) -> Result<&Shipment, OrderError> {
        let shipment = self.shipment(id)?;
        if shipment.status != ShipmentStatus::Pending {
            return Err(OrderError::ShipmentNotPending {
                status: shipment.status,
            });
        }
        Ok(shipment)
    }

    /// The status, if the order exists and belongs to `customer` (when named).
    fn status_for(&self, customer: Option<CustomerId>) -> Result<OrderStatus, OrderError> {
        match (&self.placed, customer) {
            (Some(order), Some(customer)) if order.customer_id != customer => {
                Err(OrderError::NotFound)
            }
            _ => self.current_status(),
        }
    }

    fn current_status(&self) -> Result<OrderStatus, OrderError> {
        self.status().ok_or(OrderError::NotFound)
    }
}

/// Checks the lines and totals them. Lines are numbered from 0, as in the request.
fn price_lines(lines: Vec<PricedLine>) -> Result<(Vec<OrderLine>, Currency, i64), OrderError> {
    let Some(first) = lines.first() else {
        return Err(OrderError::NoLines);
    };
    if lines.len() > MAX_LINES {
        return Err(OrderError::TooManyLines {
            count: lines.len(),
            max: MAX_LINES,
        });
    }
    let currency = first.unit_price.currency.clone();
    let mut seen = BTreeSet::new();
    let mut total_cents: i64 = 0;
    let mut recorded = Vec::with_capacity(lines.len());
    for (line, priced) in lines.into_iter().enumerate() {
        if priced.quantity == 0 || priced.quantity > MAX_SKU_QUANTITY {
            return Err(OrderError::QuantityOutOfRange {
                line,
                quantity: priced.quantity,
                max: MAX_SKU_QUANTITY,
            });
        }
        if !seen.insert(priced.sku.clone()) {
            return Err(OrderError::DuplicateSku {
                line,
                sku: priced.sku,
            });
        }
        if priced.unit_price.currency != currency {
            return Err(OrderError::MixedCurrencies {
                line,
                sku: priced.sku,
                expected: currency,
                found: priced.unit_price.currency,
            });
        }
        // Prices are at most `Money::MAX_PRICE_CENTS` (1e10), quantities 1e6 and
        // lines 100, so the total stays below 1e19 / 9 and cannot overflow an i64.
        total_cents += priced.unit_price.amount_cents * i64::from(priced.quantity);
        recorded.push(OrderLine {
            sku: priced.sku,
            quantity: priced.quantity,
            unit_price_cents: priced.unit_price.amount_cents,
        });
    }
    if total_cents > crate::payment::MAX_CHARGE_CENTS {
        return Err(OrderError::TotalTooLarge {
            total_cents,
            max: crate::payment::MAX_CHARGE_CENTS,
        });
    }
    Ok((recorded, currency, total_cents))
}

impl Aggregate for Order {
    const TYPE: &'static str = "Order";
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = OrderError;
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
        match event {
            OrderEvent::OrderPlaced(placed) => {
                self.placed = Some(PlacedOrder {
                    customer_id: placed.customer_id,
                    lines: placed.lines,
                    currency: placed.currency,
                    total_cents: placed.total_cents,
                    payment_method: placed.payment_method,
                    status: OrderStatus::Placed,
                    shipping_address: placed.shipping_address,
                    email: placed.email,
                    fulfilment: Fulfilment::default(),
                });
            }
            OrderEvent::OrderConfirmed(OrderConfirmed {}) => {
                self.set_status(OrderStatus::Confirmed)
            }
            OrderEvent::OrderCancelled(_) => self.set_status(OrderStatus::Cancelled),
            event @ (OrderEvent::ShipmentRequested(_)
            | OrderEvent::ShipmentShipped(_)
            | OrderEvent::ShipmentFailed(_)
            | OrderEvent::ShipmentDelivered(_)
            | OrderEvent::ReturnRequested(_)
            | OrderEvent::ReturnReceived(_)) => {
                self.change_fulfilment(|fulfilment| fulfilment.fold(event));
            }
        }
    }
}

impl Order {
    fn set_status(&mut self, status: OrderStatus) {
        if let Some(order) = self.placed.as_mut() {
            order.status = status;
        }
    }

    /// Changes the shipments or returns; a confirmed order's status then
    /// follows its shipments (a cancelled one stays cancelled).
    fn change_fulfilment(&mut self, change: impl FnOnce(&mut Fulfilment)) {
        if let Some(order) = self.placed.as_mut() {
            change(&mut order.fulfilment);
            order.status = order.fulfilment.status_after(order.status, &order.lines);
        }
    }
}

#[cfg(test)]
mod tests;
