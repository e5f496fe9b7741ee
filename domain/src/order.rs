//! The order aggregate: what a customer bought, at which prices, and where the
//! order stands (`PLACED`, `CONFIRMED`, `CANCELLED`).
//!
//! Prices arrive in the command: the write side looks them up from the products
//! when the order is placed, so an order keeps the prices it was placed at.
//! `CANCELLED` is final.

use std::collections::BTreeSet;

use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::values::{
    Currency, CustomerId, Email, Money, OrderId, PaymentMethod, Reason, ShippingAddress, Sku,
};

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
    /// The order's stock is reserved and its payment captured.
    ConfirmOrder,
    /// Cancel a placed or confirmed order. With `customer`, only that
    /// customer's order: anyone else's is as unknown as a missing one.
    CancelOrder {
        reason: Reason,
        customer: Option<CustomerId>,
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

/// The order's stock is reserved and its payment captured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OrderConfirmed {}

/// The order was cancelled; `reason` says why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OrderCancelled {
    pub reason: Reason,
    /// The status the order had when it was cancelled.
    pub previous_status: OrderStatus,
}

crate::events! {
    /// Everything that can happen to an order.
    pub enum OrderEvent for Order {
        OrderPlaced,
        OrderConfirmed,
        OrderCancelled,
    }
}

/// Where an order stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    Placed,
    Confirmed,
    Cancelled,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Placed => "PLACED",
            Self::Confirmed => "CONFIRMED",
            Self::Cancelled => "CANCELLED",
        }
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
    /// The order was confirmed already.
    /// The total is more than the payment gateway can charge at once.
    #[error("the total of {total_cents} is more than the {max} that can be charged at once")]
    TotalTooLarge { total_cents: i64, max: i64 },
    #[error("the order is already confirmed")]
    AlreadyConfirmed,
    /// The order was cancelled; `CANCELLED` is final.
    #[error("the order is already cancelled")]
    AlreadyCancelled,
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
                OrderStatus::Confirmed => return Err(OrderError::AlreadyConfirmed),
                OrderStatus::Cancelled => return Err(OrderError::AlreadyCancelled),
            },
            OrderCommand::CancelOrder { reason, customer } => match self.status_for(customer)? {
                previous_status @ (OrderStatus::Placed | OrderStatus::Confirmed) => {
                    OrderEvent::OrderCancelled(OrderCancelled {
                        reason,
                        previous_status,
                    })
                }
                OrderStatus::Cancelled => return Err(OrderError::AlreadyCancelled),
            },
        };
        Ok(vec![event])
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
                });
            }
            OrderEvent::OrderConfirmed(OrderConfirmed {}) => {
                self.set_status(OrderStatus::Confirmed)
            }
            OrderEvent::OrderCancelled(_) => self.set_status(OrderStatus::Cancelled),
        }
    }
}

impl Order {
    fn set_status(&mut self, status: OrderStatus) {
        if let Some(order) = self.placed.as_mut() {
            order.status = status;
        }
    }
}

#[cfg(test)]
mod tests;
