//! The product aggregate: catalogue data and the stock of one SKU.
//!
//! Stock moves between three buckets. `on_hand` counts units in the warehouse;
//! `reserved` is the part of `on_hand` promised to orders that are not yet paid;
//! committing a reservation (all of it, or part of it when part of an order
//! ships) sells those units (they leave `on_hand`), and sold
//! units can come back. What must hold after every event:
//!
//! - `reserved <= on_hand`, so `available = on_hand - reserved` is never negative;
//! - `reserved` is the sum of the open reservations, one per order;
//! - `on_hand = added + adjusted - sold + returned`, and no more comes back
//!   than was sold; an adjustment never takes on hand below what is reserved.
//!
//! The catalogue data (name, price, sold or discontinued) is the fold of the
//! catalogue events alone ([`ProductEvent::CATALOGUE`]), which is what new
//! orders read: a price change holds for orders placed after it, and a
//! discontinued product takes no new orders while the ones placed go on.
//!
//! The state grows with what is open (one entry per open reservation), never
//! with history: a product that sold to a million orders keeps one count of
//! units sold, not an entry per order. What one order may return is bounded
//! by the order's own lines (the saga returns a line's units once, under the
//! line's key), not here.

use std::collections::BTreeMap;

use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::values::{Money, OrderId, ProductName, Reason, Sku};

/// Most units one `AddStock` may add.
pub const MAX_STOCK_ADDITION: u32 = 1_000_000;
/// Most units one product may hold on hand.
pub const MAX_ON_HAND: u64 = 1_000_000_000;

/// What a caller may ask of a product.
#[derive(Debug, Clone, PartialEq)]
pub enum ProductCommand {
    /// Add a product to the catalogue, with no stock.
    CreateProduct {
        sku: Sku,
        name: ProductName,
        price: Money,
    },
    /// Receive `quantity` (1..=1,000,000) units into stock.
    AddStock { quantity: u32 },
    /// Set `quantity` available units aside for an order that is not yet paid.
    ReserveStock { order_id: OrderId, quantity: u32 },
    /// Give an order's reservation back to the available stock.
    ReleaseReservation { order_id: OrderId },
    /// The order is paid: its reserved units are sold and leave the stock.
    CommitReservation { order_id: OrderId },
    /// Part of the order shipped: `quantity` of its reserved units are sold
    /// and leave the stock; the rest stays reserved.
    CommitPart { order_id: OrderId, quantity: u32 },
    /// Take back `quantity` units an order bought.
    ReturnSoldStock { order_id: OrderId, quantity: u32 },
    /// Sell at `price` from now on (in the product's currency): orders
    /// placed afterwards pay it, earlier ones keep theirs.
    ChangePrice { price_cents: i64 },
    /// Stop selling the product: new orders naming it are refused, orders
    /// already placed go on.
    Discontinue { reason: Reason },
    /// Sell a discontinued product again.
    Reactivate,
    /// Correct the count on hand by `delta` (not zero; negative for units
    /// lost, broken or found missing), never below what is reserved.
    AdjustStock { delta: i32, reason: Reason },
}

/// A product was added to the catalogue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProductCreated {
    pub sku: Sku,
    pub name: ProductName,
    pub price: Money,
}

/// Units were received into stock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StockAdded {
    pub quantity: u32,
}

/// Units were set aside for an order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StockReserved {
    pub order_id: OrderId,
    pub quantity: u32,
}

/// An order's reservation went back to the available stock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReservationReleased {
    pub order_id: OrderId,
    pub quantity: u32,
}

/// An order's reserved units were sold and left the stock: all of its
/// reservation, or part of it (a partial shipment).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReservationCommitted {
    pub order_id: OrderId,
    pub quantity: u32,
}

/// Units an order bought came back into stock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SoldStockReturned {
    pub order_id: OrderId,
    pub quantity: u32,
}

/// The product sells at a new price from now on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProductPriceChanged {
    pub price: Money,
    /// The price before.
    pub previous_price_cents: i64,
}

/// The product is no longer sold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProductDiscontinued {
    pub reason: Reason,
}

/// A discontinued product is sold again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProductReactivated {}

/// The count on hand was corrected by `delta` units.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StockAdjusted {
    pub delta: i32,
    pub reason: Reason,
}

crate::events! {
    /// Everything that can happen to a product.
    pub enum ProductEvent for Product {
        ProductCreated,
        StockAdded,
        StockReserved,
        ReservationReleased,
        ReservationCommitted,
        SoldStockReturned,
        ProductPriceChanged,
        ProductDiscontinued,
        ProductReactivated,
        StockAdjusted,
    }
}

impl ProductEvent {
    /// The events that change a product's catalogue data (name, price,
    /// whether it is sold), which new orders read: the write side's
    /// catalogue folds only these, through an index of exactly these
    /// (event-store migration 0007; a test of command-bus holds the two equal).
    pub const CATALOGUE: &'static [&'static str] = &[
        "ProductCreated",
        "ProductPriceChanged",
        "ProductDiscontinued",
        "ProductReactivated",
    ];

    /// Whether this event changes the catalogue data ([`Self::CATALOGUE`]).
    pub fn changes_catalogue(&self) -> bool {
        match self {
            Self::ProductCreated(_)
            | Self::ProductPriceChanged(_)
            | Self::ProductDiscontinued(_)
            | Self::ProductReactivated(_) => true,
            Self::StockAdded(_)
            | Self::StockReserved(_)
            | Self::ReservationReleased(_)
            | Self::ReservationCommitted(_)
            | Self::SoldStockReturned(_)
            | Self::StockAdjusted(_) => false,
        }
    }
}

/// Why a product refused a command. Each is a business answer, not a failure:
/// retrying the same command against the same state gets the same answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProductError {
    /// No product has this SKU. Create it first.
    #[error("no product with this SKU exists")]
    NotFound,
    /// The SKU is taken. Pick another SKU or use the existing product.
    #[error("a product with SKU {sku} already exists")]
    AlreadyExists { sku: Sku },
    /// A price outside `0..=max` minor units.
    #[error("price {price_cents} is outside 0..={max}")]
    PriceOutOfRange { price_cents: i64, max: i64 },
    /// The quantity is outside the allowed range.
    #[error("quantity {quantity} is outside {min}..={max}")]
    QuantityOutOfRange { quantity: u32, min: u32, max: u32 },
    /// Adding would put more than [`MAX_ON_HAND`] units on hand.
    #[error("{on_hand} on hand plus {adding} would exceed the limit of {limit} units")]
    StockLimitExceeded {
        on_hand: u64,
        adding: u32,
        limit: u64,
    },
    /// Not enough unreserved units. The caller may wait for stock or give up.
    #[error("out of stock: {sku} has {available} available, {requested} requested")]
    InsufficientStock {
        sku: Sku,
        requested: u32,
        available: u64,
    },
    /// The order already holds a reservation of this product; it is not doubled.
    #[error("order {order_id} already holds a reservation")]
    AlreadyReserved { order_id: OrderId },
    /// The order holds no reservation of this product (never made, released or committed).
    #[error("order {order_id} holds no reservation")]
    NoReservation { order_id: OrderId },
    /// The product already sells at this price.
    #[error("{sku} already sells at {price_cents}")]
    PriceUnchanged { sku: Sku, price_cents: i64 },
    /// The product is discontinued already.
    #[error("{sku} is discontinued already")]
    AlreadyDiscontinued { sku: Sku },
    /// The product is sold; only a discontinued product can be reactivated.
    #[error("{sku} is not discontinued")]
    NotDiscontinued { sku: Sku },
    /// The product is discontinued: new orders cannot name it.
    #[error("{sku} is discontinued")]
    Discontinued { sku: Sku },
    /// An adjustment would leave fewer units on hand than orders hold
    /// reserved (or fewer than none, or more than the limit).
    #[error(
        "{sku}: {on_hand} on hand adjusted by {delta} would leave {reserved} reserved units uncovered"
    )]
    AdjustmentBelowReserved {
        sku: Sku,
        on_hand: u64,
        reserved: u64,
        delta: i32,
    },
    /// More units would come back than the product has sold (and not taken
    /// back already).
    #[error("order {order_id} can return at most {returnable} units, {requested} requested")]
    NothingToReturn {
        order_id: OrderId,
        requested: u32,
        returnable: u32,
    },
}

/// Catalogue data: what new orders of the product pay, and whether they may
/// name it at all.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProductDetails {
    pub sku: Sku,
    pub name: ProductName,
    pub price: Money,
    /// Sold (`true`) or discontinued. Snapshots written before products
    /// could be discontinued read as sold.
    #[serde(default = "sold")]
    pub active: bool,
}

fn sold() -> bool {
    true
}

impl ProductDetails {
    /// The catalogue data after `event`, given the data before it (`None`
    /// before the product was created). Events that do not change the
    /// catalogue ([`ProductEvent::changes_catalogue`]) leave it as it is.
    pub fn fold(details: Option<Self>, event: &ProductEvent) -> Option<Self> {
        let mut details = match event {
            ProductEvent::ProductCreated(created) => {
                return Some(Self {
                    sku: created.sku.clone(),
                    name: created.name.clone(),
                    price: created.price.clone(),
                    active: true,
                });
            }
            _ => details?,
        };
        match event {
            ProductEvent::ProductPriceChanged(changed) => details.price = changed.price.clone(),
            ProductEvent::ProductDiscontinued(_) => details.active = false,
            ProductEvent::ProductReactivated(_) => details.active = true,
            ProductEvent::ProductCreated(_)
            | ProductEvent::StockAdded(_)
            | ProductEvent::StockReserved(_)
            | ProductEvent::ReservationReleased(_)
            | ProductEvent::ReservationCommitted(_)
            | ProductEvent::SoldStockReturned(_)
            | ProductEvent::StockAdjusted(_) => {}
        }
        Some(details)
    }
}

/// The state of one product, rebuilt from its events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Product {
    details: Option<ProductDetails>,
    on_hand: u64,
    reserved: u64,
    /// Open reservations by order.
    reservations: BTreeMap<OrderId, u32>,
    /// Units sold and not returned. (Snapshots written before kept this by
    /// order; they are read as the sum.)
    #[serde(default, deserialize_with = "units_sold")]
    sold: u64,
}

/// Reads `sold` as a count, or as the map by order that earlier snapshots
/// hold (summed).
fn units_sold<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Sold {
        Units(u64),
        ByOrder(BTreeMap<OrderId, u32>),
    }
    Ok(match Sold::deserialize(deserializer)? {
        Sold::Units(units) => units,
        Sold::ByOrder(by_order) => by_order.values().map(|units| u64::from(*units)).sum(),
    })
}

impl Product {
    pub fn details(&self) -> Option<&ProductDetails> {
        self.details.as_ref()
    }

    pub fn on_hand(&self) -> u64 {
        self.on_hand
    }

    pub fn reserved(&self) -> u64 {
        self.reserved
    }

    /// Units that can still be reserved.
    pub fn available(&self) -> u64 {
        self.on_hand - self.reserved
    }

    pub fn reservation_of(&self, order_id: OrderId) -> Option<u32> {
        self.reservations.get(&order_id).copied()
    }

    /// Units sold and not returned.
    pub fn sold(&self) -> u64 {
        self.sold
    }

    /// Decides what a command does to this product, without changing it.
    pub fn decide(&self, command: ProductCommand) -> Result<Vec<ProductEvent>, ProductError> {
        let event = match command {
            ProductCommand::CreateProduct { sku, name, price } => {
                if let Some(existing) = &self.details {
                    return Err(ProductError::AlreadyExists {
                        sku: existing.sku.clone(),
                    });
                }
                ProductEvent::ProductCreated(ProductCreated { sku, name, price })
            }
            ProductCommand::AddStock { quantity } => {
                self.existing()?;
                check_quantity(quantity, MAX_STOCK_ADDITION)?;
                if self.on_hand + u64::from(quantity) > MAX_ON_HAND {
                    return Err(ProductError::StockLimitExceeded {
                        on_hand: self.on_hand,
                        adding: quantity,
                        limit: MAX_ON_HAND,
                    });
                }
                ProductEvent::StockAdded(StockAdded { quantity })
            }
            ProductCommand::ReserveStock { order_id, quantity } => {
                let details = self.existing()?;
                check_quantity(quantity, u32::MAX)?;
                if self.reservations.contains_key(&order_id) {
                    return Err(ProductError::AlreadyReserved { order_id });
                }
                if u64::from(quantity) > self.available() {
                    return Err(ProductError::InsufficientStock {
                        sku: details.sku.clone(),
                        requested: quantity,
                        available: self.available(),
                    });
                }
                ProductEvent::StockReserved(StockReserved { order_id, quantity })
            }
            ProductCommand::ReleaseReservation { order_id } => {
                let quantity = self.open_reservation(order_id)?;
                ProductEvent::ReservationReleased(ReservationReleased { order_id, quantity })
            }
            ProductCommand::CommitReservation { order_id } => {
                let quantity = self.open_reservation(order_id)?;
                ProductEvent::ReservationCommitted(ReservationCommitted { order_id, quantity })
            }
            ProductCommand::CommitPart { order_id, quantity } => {
                let open = self.open_reservation(order_id)?;
                check_quantity(quantity, open)?;
                ProductEvent::ReservationCommitted(ReservationCommitted { order_id, quantity })
            }
            ProductCommand::ReturnSoldStock { order_id, quantity } => {
                self.existing()?;
                check_quantity(quantity, u32::MAX)?;
                if u64::from(quantity) > self.sold {
                    return Err(ProductError::NothingToReturn {
                        order_id,
                        requested: quantity,
                        returnable: u32::try_from(self.sold).unwrap_or(u32::MAX),
                    });
                }
                ProductEvent::SoldStockReturned(SoldStockReturned { order_id, quantity })
            }
            ProductCommand::ChangePrice { price_cents } => {
                let details = self.existing()?;
                if price_cents == details.price.amount_cents {
                    return Err(ProductError::PriceUnchanged {
                        sku: details.sku.clone(),
                        price_cents,
                    });
                }
                let price =
                    Money::price(price_cents, details.price.currency.clone()).map_err(|_| {
                        ProductError::PriceOutOfRange {
                            price_cents,
                            max: Money::MAX_PRICE_CENTS,
                        }
                    })?;
                ProductEvent::ProductPriceChanged(ProductPriceChanged {
                    price,
                    previous_price_cents: details.price.amount_cents,
                })
            }
            ProductCommand::Discontinue { reason } => {
                let details = self.existing()?;
                if !details.active {
                    return Err(ProductError::AlreadyDiscontinued {
                        sku: details.sku.clone(),
                    });
                }
                ProductEvent::ProductDiscontinued(ProductDiscontinued { reason })
            }
            ProductCommand::Reactivate => {
                let details = self.existing()?;
                if details.active {
                    return Err(ProductError::NotDiscontinued {
                        sku: details.sku.clone(),
                    });
                }
                ProductEvent::ProductReactivated(ProductReactivated {})
            }
            ProductCommand::AdjustStock { delta, reason } => {
                let details = self.existing()?;
                let magnitude = delta.unsigned_abs();
                if magnitude == 0 || magnitude > MAX_STOCK_ADDITION {
                    return Err(ProductError::QuantityOutOfRange {
                        quantity: magnitude,
                        min: 1,
                        max: MAX_STOCK_ADDITION,
                    });
                }
                let adjusted = i128::from(self.on_hand) + i128::from(delta);
                if adjusted < i128::from(self.reserved) {
                    return Err(ProductError::AdjustmentBelowReserved {
                        sku: details.sku.clone(),
                        on_hand: self.on_hand,
                        reserved: self.reserved,
                        delta,
                    });
                }
                if adjusted > i128::from(MAX_ON_HAND) {
                    return Err(ProductError::StockLimitExceeded {
                        on_hand: self.on_hand,
                        adding: magnitude,
                        limit: MAX_ON_HAND,
                    });
                }
                ProductEvent::StockAdjusted(StockAdjusted { delta, reason })
            }
        };
        Ok(vec![event])
    }

    fn existing(&self) -> Result<&ProductDetails, ProductError> {
        self.details.as_ref().ok_or(ProductError::NotFound)
    }

    /// The order's open reservation. None (never made, released, or
    /// committed) is refused alike: whether a reservation was committed is
    /// the committer's to know (the saga looks its commit's key up).
    fn open_reservation(&self, order_id: OrderId) -> Result<u32, ProductError> {
        self.existing()?;
        self.reservation_of(order_id)
            .ok_or(ProductError::NoReservation { order_id })
    }
}

fn check_quantity(quantity: u32, max: u32) -> Result<(), ProductError> {
    if quantity == 0 || quantity > max {
        return Err(ProductError::QuantityOutOfRange {
            quantity,
            min: 1,
            max,
        });
    }
    Ok(())
}

impl Aggregate for Product {
    const TYPE: &'static str = "Product";
    type Command = ProductCommand;
    type Event = ProductEvent;
    type Error = ProductError;
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

    // History is trusted: every stored event passed `decide`. The saturating
    // arithmetic only keeps a hand-edited history from crashing the process.
    fn apply(&mut self, event: Self::Event) {
        match event {
            ProductEvent::ProductCreated(_)
            | ProductEvent::ProductPriceChanged(_)
            | ProductEvent::ProductDiscontinued(_)
            | ProductEvent::ProductReactivated(_) => {
                self.details = ProductDetails::fold(self.details.take(), &event);
            }
            ProductEvent::StockAdjusted(StockAdjusted { delta, .. }) => {
                self.on_hand = self.on_hand.saturating_add_signed(i64::from(delta));
            }
            ProductEvent::StockAdded(StockAdded { quantity }) => {
                self.on_hand += u64::from(quantity);
            }
            ProductEvent::StockReserved(StockReserved { order_id, quantity }) => {
                self.reservations.insert(order_id, quantity);
                self.reserved += u64::from(quantity);
            }
            ProductEvent::ReservationReleased(ReservationReleased { order_id, quantity }) => {
                self.reservations.remove(&order_id);
                self.reserved = self.reserved.saturating_sub(u64::from(quantity));
            }
            ProductEvent::ReservationCommitted(ReservationCommitted { order_id, quantity }) => {
                // A commit sells part of a reservation or all of it; what is
                // left stays reserved. (Commits written before parts could be
                // committed always took the whole reservation.)
                if let Some(open) = self.reservations.get_mut(&order_id) {
                    *open = open.saturating_sub(quantity);
                    if *open == 0 {
                        self.reservations.remove(&order_id);
                    }
                }
                self.reserved = self.reserved.saturating_sub(u64::from(quantity));
                self.on_hand = self.on_hand.saturating_sub(u64::from(quantity));
                self.sold += u64::from(quantity);
            }
            ProductEvent::SoldStockReturned(SoldStockReturned { quantity, .. }) => {
                self.on_hand += u64::from(quantity);
                self.sold = self.sold.saturating_sub(u64::from(quantity));
            }
        }
    }
}

#[cfg(test)]
mod tests;
