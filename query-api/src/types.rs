//! The GraphQL object types, wrapping the read models' rows.

use async_graphql::dataloader::DataLoader;
use async_graphql::{Context, Enum, ID, Json, Object, Result, SimpleObject};
use chrono::{DateTime, Utc};
use identity::Identity;
use order_saga::store::SagaView;

use super::loaders::{HistoryLoader, PaymentLoader, SagaLoader};
use projections::model::orders::OrderRow;
use projections::model::products::ProductRow;

// The domain's statuses as a GraphQL enum: the generated conversions both
// ways stop compiling if the two ever differ.
/// Where an order stands.
#[derive(Debug, Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(remote = "domain::OrderStatus")]
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
    /// The status as the read models store it.
    pub fn as_str(self) -> &'static str {
        domain::OrderStatus::from(self).as_str()
    }

    fn parse(status: &str) -> Self {
        domain::OrderStatus::ALL
            .into_iter()
            .find(|known| known.as_str() == status)
            .unwrap_or(domain::OrderStatus::Placed)
            .into()
    }
}

/// Where a shipment stands.
#[derive(Debug, Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(remote = "domain::order::ShipmentStatus")]
pub enum ShipmentStatus {
    /// Its capture is in flight.
    Pending,
    Shipped,
    Delivered,
    /// Its capture was refused (`failure` says why).
    Failed,
}

/// Where a return stands.
#[derive(Debug, Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(remote = "domain::order::ReturnStatus")]
pub enum ReturnStatus {
    Requested,
    /// The goods came back and were refunded.
    Received,
}

/// Units of one SKU in a shipment or a return.
#[derive(Debug, Clone, SimpleObject)]
pub struct ItemLine {
    pub sku: String,
    pub quantity: u32,
}

fn item_lines(lines: &[domain::order::ItemLine]) -> Vec<ItemLine> {
    lines
        .iter()
        .map(|line| ItemLine {
            sku: line.sku.to_string(),
            quantity: line.quantity,
        })
        .collect()
}

/// One shipment of an order.
#[derive(Debug, Clone, SimpleObject)]
pub struct Shipment {
    pub id: ID,
    pub lines: Vec<ItemLine>,
    pub carrier: String,
    pub tracking_number: String,
    pub status: ShipmentStatus,
    pub shipped_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    /// Why its capture was refused: an administrator reads the reason
    /// recorded (the payment provider's own text); the order's customer
    /// reads `payment declined`.
    pub failure: Option<String>,
}

/// What a customer reads of a failed shipment's reason.
const PUBLIC_SHIPMENT_FAILURE: &str = "payment declined";

/// Whether the caller holds the `admin` scope.
fn is_admin(ctx: &Context<'_>) -> bool {
    matches!(ctx.data_opt::<Identity>(), Some(Identity::Caller(caller)) if caller.is_admin())
}

/// An event as the order's customer reads it: a failed shipment's reason
/// (the payment provider's own words) becomes the public one, as on
/// `Shipment.failure`.
fn public_payload(event: &mut EventRecord) {
    if event.event_type == "ShipmentFailed"
        && let Some(reason) = event.payload.0.get_mut("reason")
    {
        *reason = serde_json::Value::from(PUBLIC_SHIPMENT_FAILURE);
    }
}

/// One return of an order.
#[derive(Debug, Clone, SimpleObject)]
pub struct Return {
    pub id: ID,
    pub lines: Vec<ItemLine>,
    pub reason: String,
    pub status: ReturnStatus,
    pub requested_at: DateTime<Utc>,
    pub received_at: Option<DateTime<Utc>>,
    /// What receiving it refunds (refunded once it is received), in minor
    /// units of the order's currency.
    pub refund_cents: i64,
    /// Whether its units went back on hand; `null` until it is received.
    pub restocked: Option<bool>,
}

/// An order as the read side knows it, or as it was (`asOf`).
#[derive(Debug, Clone)]
pub struct Order(pub OrderRow, pub View);

/// Whether an order is the read model's row or a view of its past.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Live,
    /// Folded from the events up to the row's version: its history stops
    /// there too.
    AsOf,
}

impl Order {
    pub fn live(row: OrderRow) -> Self {
        Self(row, View::Live)
    }

    /// The order's money as its payment's read model holds it (nothing
    /// yet: zero), `None` in an `asOf` view.
    async fn money(&self, ctx: &Context<'_>) -> Result<Option<Money>> {
        if self.1 == View::AsOf {
            return Ok(None);
        }
        let loader = ctx.data::<DataLoader<PaymentLoader>>()?;
        let row = loader.load_one(self.0.order_id).await?;
        Ok(Some(row.map_or(Money::default(), |row| Money {
            authorized_cents: row.authorized_cents,
            captured_cents: row.captured_cents,
            refunded_cents: row.refunded_cents,
        })))
    }

    /// The row, when the caller is the order's customer or an
    /// administrator: what a contact field may show.
    fn contact_for(&self, ctx: &Context<'_>) -> Option<&OrderRow> {
        match ctx.data_opt::<Identity>() {
            Some(Identity::Caller(caller))
                if caller.is_admin() || caller.customer().as_str() == self.0.customer_id =>
            {
                Some(&self.0)
            }
            _ => None,
        }
    }
}

/// What an order's payment holds, took and gave back.
#[derive(Debug, Clone, Copy, Default)]
struct Money {
    authorized_cents: i64,
    captured_cents: i64,
    refunded_cents: i64,
}

/// A postal address, as the order was placed with it.
#[derive(Debug, Clone, SimpleObject)]
pub struct ShippingAddress {
    pub name: String,
    pub line1: String,
    pub line2: Option<String>,
    pub city: String,
    pub postal_code: String,
    /// ISO 3166-1 alpha-2.
    pub country: String,
}

#[Object]
impl Order {
    async fn id(&self) -> ID {
        ID(self.0.order_id.to_string())
    }

    async fn customer_id(&self) -> &str {
        &self.0.customer_id
    }

    async fn status(&self) -> OrderStatus {
        OrderStatus::parse(&self.0.status)
    }

    async fn lines(&self) -> Vec<OrderLine> {
        self.0
            .lines
            .iter()
            .map(|line| OrderLine {
                sku: line.sku.to_string(),
                quantity: line.quantity,
                unit_price_cents: line.unit_price_cents,
            })
            .collect()
    }

    /// In minor units of `currency`. Totals can exceed 2^31; the value is
    /// sent as a JSON integer either way.
    async fn total_cents(&self) -> i64 {
        self.0.total_cents
    }

    async fn currency(&self) -> &str {
        &self.0.currency
    }

    /// The order's version: what `ETag` and `If-Match` carry on the REST side.
    async fn version(&self) -> i64 {
        self.0.version
    }

    async fn placed_at(&self) -> DateTime<Utc> {
        self.0.placed_at
    }

    async fn updated_at(&self) -> DateTime<Utc> {
        self.0.updated_at
    }

    async fn cancellation_reason(&self) -> Option<&str> {
        self.0.cancellation_reason.as_deref()
    }

    /// Where the customer hears about the order, if it was given; only the
    /// order's customer and administrators read it (`null` for anyone else).
    async fn email(&self, ctx: &Context<'_>) -> Option<&str> {
        self.contact_for(ctx).and_then(|row| row.email.as_deref())
    }

    /// Where the goods go, if it was given; only the order's customer and
    /// administrators read it (`null` for anyone else).
    async fn shipping_address(&self, ctx: &Context<'_>) -> Option<ShippingAddress> {
        let address = self.contact_for(ctx)?.shipping_address.as_ref()?;
        Some(ShippingAddress {
            name: address.name.to_string(),
            line1: address.line1.to_string(),
            line2: address.line2.as_ref().map(ToString::to_string),
            city: address.city.to_string(),
            postal_code: address.postal_code.to_string(),
            country: address.country.as_str().to_owned(),
        })
    }

    /// Its shipments, oldest first.
    async fn shipments(&self, ctx: &Context<'_>) -> Vec<Shipment> {
        let admin = is_admin(ctx);
        self.0
            .fulfilment
            .shipments
            .iter()
            .map(|shipment| Shipment {
                id: ID(shipment.id.to_string()),
                lines: item_lines(&shipment.lines),
                carrier: shipment.carrier.to_string(),
                tracking_number: shipment.tracking_number.to_string(),
                status: shipment.status.into(),
                shipped_at: shipment.shipped_at,
                delivered_at: shipment.delivered_at,
                // The provider's own words are the shop's to read.
                failure: shipment.failure.as_ref().map(|reason| {
                    if admin {
                        reason.clone()
                    } else {
                        PUBLIC_SHIPMENT_FAILURE.to_owned()
                    }
                }),
            })
            .collect()
    }

    /// Its returns, oldest first.
    async fn returns(&self) -> Vec<Return> {
        self.0
            .fulfilment
            .returns
            .iter()
            .map(|found| Return {
                id: ID(found.id.to_string()),
                lines: item_lines(&found.lines),
                reason: found.reason.to_string(),
                status: found.status.into(),
                requested_at: found.requested_at,
                received_at: found.received_at,
                refund_cents: found.refund_cents,
                restocked: found.restocked,
            })
            .collect()
    }

    /// What the customer's card holds for the order in all (every
    /// authorization the gateway granted), in minor units; `null` in an
    /// `asOf` view.
    async fn authorized_cents(&self, ctx: &Context<'_>) -> Result<Option<i64>> {
        Ok(self.money(ctx).await?.map(|money| money.authorized_cents))
    }

    /// What was captured: the value of what shipped (orders of the previous
    /// release: their total, once charged); `null` in an `asOf` view.
    async fn captured_cents(&self, ctx: &Context<'_>) -> Result<Option<i64>> {
        Ok(self.money(ctx).await?.map(|money| money.captured_cents))
    }

    /// What was given back: the value of received returns (orders of the
    /// previous release: their total, once refunded); `null` in an `asOf`
    /// view.
    async fn refunded_cents(&self, ctx: &Context<'_>) -> Result<Option<i64>> {
        Ok(self.money(ctx).await?.map(|money| money.refunded_cents))
    }

    /// The order's own events from the event store, oldest first (for an
    /// `asOf` view, up to its version). The order's customer reads a failed
    /// shipment's reason as `payment declined`, as on `Shipment.failure`.
    async fn history(&self, ctx: &Context<'_>) -> Result<Vec<EventRecord>> {
        let loader = ctx.data::<DataLoader<HistoryLoader>>()?;
        let mut history = loader
            .load_one(self.0.order_id.to_string())
            .await?
            .unwrap_or_default();
        if self.1 == View::AsOf {
            history.retain(|event| event.sequence <= self.0.version);
        }
        if !is_admin(ctx) {
            for event in &mut history {
                public_payload(event);
            }
        }
        Ok(history)
    }

    /// The orchestrator's view of this order: where its saga stands and each
    /// step it took. `null` until the saga has started, and in an `asOf`
    /// view (the saga keeps no history).
    async fn saga(&self, ctx: &Context<'_>) -> Result<Option<SagaState>> {
        if self.1 == View::AsOf {
            return Ok(None);
        }
        let loader = ctx.data::<DataLoader<SagaLoader>>()?;
        let admin = is_admin(ctx);
        Ok(loader
            .load_one(self.0.order_id.to_string())
            .await?
            .map(|view| SagaState::seen_by(view, admin)))
    }
}

/// Where an order's saga stands.
#[derive(Debug, Clone, SimpleObject)]
pub struct SagaState {
    /// `RESERVING`, `CHARGING` (authorizing the total, or for orders of
    /// the previous release charging it), `CONFIRMING`, `CONFIRMED`,
    /// `FULFILLING` (carrying out a shipment or a received return: a
    /// capture, a new authorization, a refund, a restock; back to
    /// `CONFIRMED` when done, or `CANCELLED` for a cancelled order),
    /// `COMPENSATING`, `CANCELLED`, or `ABANDONED`
    /// (an operator stopped it; its last step says who and why).
    pub state: String,
    /// Every step taken, oldest first.
    pub steps: Vec<SagaStep>,
    pub updated_at: DateTime<Utc>,
    /// An undo has failed repeatedly; it is still retried, but someone
    /// should look.
    pub needs_attention: bool,
    /// The id of the order's trace (32 hex digits), from `POST /api/orders`
    /// to its end: look it up in the tracing backend.
    pub trace_id: Option<String>,
}

impl SagaState {
    /// The saga as `admin` or the order's customer sees it (see [`SagaStep::detail`]).
    pub fn seen_by(view: SagaView, admin: bool) -> Self {
        Self {
            state: view.state.as_str().to_owned(),
            steps: view
                .steps
                .into_iter()
                .map(|step| SagaStep::seen_by(step, admin))
                .collect(),
            updated_at: view.updated_at,
            needs_attention: view.needs_attention,
            trace_id: view.trace_id,
        }
    }
}

/// One step a saga took.
#[derive(Debug, Clone, SimpleObject)]
pub struct SagaStep {
    /// Such as `reserve MUG-01`, `charge`, `release MUG-01`, `refund`.
    pub name: String,
    /// `DONE`, `REFUSED`, `TIMED_OUT` or `FAILED`.
    pub status: String,
    pub at: DateTime<Utc>,
    /// Why, when there is more to say than the status. An administrator
    /// reads what the platform recorded (a refusal's or a failure's own
    /// text, an operator's name and note); the order's customer reads one
    /// of a fixed set of public reasons (`out of stock`, `payment declined`,
    /// `no answer in time`, `failed for now; tried again`, ...).
    pub detail: Option<String>,
}

impl SagaStep {
    /// The step as `admin` (everything recorded) or the order's customer
    /// (public reasons only) sees it.
    pub fn seen_by(step: order_saga::saga::StepRecord, admin: bool) -> Self {
        let detail = if admin {
            step.detail.clone()
        } else {
            step.public_reason().map(str::to_owned)
        };
        Self {
            name: step.name,
            status: step.status,
            at: step.at,
            detail,
        }
    }
}

/// One line of an order, at the price it was placed at.
#[derive(Debug, Clone, SimpleObject)]
pub struct OrderLine {
    pub sku: String,
    pub quantity: u32,
    pub unit_price_cents: i64,
}

/// A product and its stock.
#[derive(Debug, Clone)]
pub struct Product(pub ProductRow);

#[Object]
impl Product {
    async fn sku(&self) -> &str {
        &self.0.sku
    }

    async fn name(&self) -> &str {
        &self.0.name
    }

    async fn price_cents(&self) -> i64 {
        self.0.price_cents
    }

    async fn currency(&self) -> &str {
        &self.0.currency
    }

    async fn on_hand(&self) -> i64 {
        self.0.on_hand
    }

    async fn reserved(&self) -> i64 {
        self.0.reserved
    }

    /// `onHand - reserved`, never negative.
    async fn available(&self) -> i64 {
        self.0.available()
    }

    /// Sold (`true`), or discontinued: new orders naming it are refused.
    async fn active(&self) -> bool {
        self.0.active
    }

    /// The product's version: what `ETag` and `If-Match` carry on the REST
    /// side.
    async fn version(&self) -> i64 {
        self.0.version
    }
}

/// One stored event.
#[derive(Debug, Clone, SimpleObject)]
pub struct EventRecord {
    /// The aggregate's version after this event.
    pub sequence: i64,
    pub global_position: i64,
    pub event_type: String,
    pub recorded_at: DateTime<Utc>,
    /// The event's fields, as described in `schemas/events/`.
    pub payload: Json<serde_json::Value>,
}
