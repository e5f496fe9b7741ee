//! `orders audit`: do the books of a running platform balance?
//!
//! It reads everything the platform wrote (every event, the sagas, the read
//! models) and the payment gateway's ledger, and checks what must hold:
//!
//! - every order has ended (`CONFIRMED`, `CANCELLED`) or has a live saga;
//! - per product, on hand = added − sold + returned, and nothing stays
//!   reserved for an order that has ended;
//! - a `CONFIRMED` order bought exactly its lines, and holds exactly one
//!   captured charge equal to its total, in the Payment stream and at the
//!   gateway; a `CANCELLED` one holds no stock and no money in either;
//! - the Payment stream records a refund whenever the gateway refunded;
//! - no payment is approved or refunded twice;
//! - every read model row equals the fold of its events.
//!
//! Orders whose saga is still at work are left out of the per-order checks:
//! their books are open. So are orders whose saga an operator abandoned
//! (`orders saga abandon`): their books are the operator's, and the report
//! lists each with who abandoned it and why. Everything else (the products'
//! totals, the payments, the read models) is checked with them in. The
//! tests and the fault suite run this same code.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::Context;
use cqrs_es::Aggregate;
use domain::{
    Order, OrderEvent, OrderStatus, Payment, PaymentEvent, PaymentStatus, Product, ProductEvent,
};
use event_store::{GlobalCheckpoint, GlobalReader, ReadFilter};
use futures::TryStreamExt;
use projections::Projection;
use saga_orchestrator::driver::charge_key;
use sqlx::PgPool;

/// What the audit found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Every rule broken, one line each.
    pub violations: Vec<String>,
    pub events: u64,
    pub orders: usize,
    pub confirmed: usize,
    pub cancelled: usize,
    /// Orders whose saga is still at work.
    pub open: usize,
    /// Orders whose saga an operator abandoned: `<order id>: by <who>: <why>`.
    pub abandoned: Vec<String>,
    pub products: usize,
    pub charges: usize,
    /// Read model rows compared with the fold of their events.
    pub rows: usize,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for violation in &self.violations {
            writeln!(f, "VIOLATION: {violation}")?;
        }
        for abandoned in &self.abandoned {
            writeln!(f, "ABANDONED: order {abandoned} (books not checked)")?;
        }
        write!(
            f,
            "audited {} events: {} orders ({} confirmed, {} cancelled, {} in progress, {} abandoned), {} products, {} gateway charges, {} read model rows; {}",
            self.events,
            self.orders,
            self.confirmed,
            self.cancelled,
            self.open,
            self.abandoned.len(),
            self.products,
            self.charges,
            self.rows,
            match self.violations.len() {
                0 => "the books balance".to_owned(),
                n => format!("{n} violations"),
            }
        )
    }
}

/// A charge as the gateway lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct GatewayCharge {
    pub key: String,
    pub status: String,
    pub amount_cents: Option<i64>,
}

/// Audits until the books balance or `settle` has passed, and returns the
/// last report: a platform still digesting its last events (a projection a
/// few events behind, a saga not yet picked up) gets that long to catch up.
pub async fn audit_settled(
    pool: &PgPool,
    gateway_url: &str,
    settle: Duration,
) -> anyhow::Result<Report> {
    let deadline = tokio::time::Instant::now() + settle;
    loop {
        let report = audit(pool, gateway_url).await?;
        if report.is_clean() || tokio::time::Instant::now() >= deadline {
            return Ok(report);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One pass over the books.
pub async fn audit(pool: &PgPool, gateway_url: &str) -> anyhow::Result<Report> {
    let charges = gateway_charges(gateway_url).await?;
    // A saga is stuck when its work has been due for long and nobody holds it:
    // the scan picks due sagas up within a second.
    let rows: Vec<(String, bool, bool, bool, Option<String>)> = sqlx::query_as(
        "SELECT order_id, done, needs_attention,
                NOT done AND next_attempt_at < now() - interval '5 minutes'
                    AND (leased_until IS NULL OR leased_until < now()),
                CASE WHEN state = 'ABANDONED' THEN coalesce(saga ->> 'abandoned', '') END
           FROM sagas",
    )
    .fetch_all(pool)
    .await
    .context("reading the sagas")?;
    let mut stalled = Vec::new();
    let mut abandoned = HashMap::new();
    for (id, _, attention, stuck, why) in &rows {
        if let Some(why) = why {
            abandoned.insert(id.clone(), why.clone());
        }
        if *attention {
            stalled.push(format!(
                "the saga of order {id} needs attention (see order.saga in GraphQL)"
            ));
        } else if *stuck {
            stalled.push(format!(
                "the saga of order {id} has had work due for over 5 minutes that no process does"
            ));
        }
    }
    let sagas: HashMap<String, bool> = rows.into_iter().map(|(id, done, ..)| (id, done)).collect();
    let store = Store::read(pool).await?;
    let mut report = Report {
        events: store.events,
        orders: store.orders.len(),
        products: store.products.len(),
        charges: charges.len(),
        ..Report::default()
    };
    report.violations.extend(store.violations.iter().cloned());
    // A saga at work is no violation, unless it cannot get on alone.
    report.violations.extend(stalled);
    check_orders(&store, &sagas, &abandoned, &charges, &mut report);
    check_products(&store, &mut report);
    check_payments(&store, &mut report);
    for projection in Projection::ALL {
        let comparison = projection.compare(pool).await?;
        report.rows += comparison.compared;
        report.violations.extend(comparison.wrong);
        if !comparison.behind.is_empty() {
            report.violations.push(format!(
                "read model {} lags behind the events for {} aggregates (first: {})",
                projection.table(),
                comparison.behind.len(),
                comparison.behind[0]
            ));
        }
        if comparison.refused > 0 {
            report.violations.push(format!(
                "read model {} cannot apply {} stored events",
                projection.table(),
                comparison.refused
            ));
        }
        if comparison.orphans > 0 {
            report.violations.push(format!(
                "read model {} holds {} rows no events explain",
                projection.table(),
                comparison.orphans
            ));
        }
    }
    Ok(report)
}

/// Every charge the gateway at `base` lists, by key.
pub async fn gateway_charges(base: &str) -> anyhow::Result<HashMap<String, GatewayCharge>> {
    #[derive(serde::Deserialize)]
    struct Page {
        charges: Vec<GatewayCharge>,
        next_after: Option<String>,
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let mut charges = HashMap::new();
    let mut after = String::new();
    loop {
        let page: Page = client
            // Keys are URL-safe (the gateway allows A-Z a-z 0-9 - _ . :).
            .get(format!(
                "{}/charges?limit=1000&after={after}",
                base.trim_end_matches('/')
            ))
            .send()
            .await
            .and_then(|response| response.error_for_status())
            .with_context(|| format!("reading the payment gateway's charges at {base}"))?
            .json()
            .await
            .context("reading the payment gateway's charges")?;
        charges.extend(page.charges.into_iter().map(|c| (c.key.clone(), c)));
        match page.next_after {
            Some(next) => after = next,
            None => return Ok(charges),
        }
    }
}

/// Stock an order moved on one product, summed over its events.
#[derive(Debug, Clone, Copy, Default)]
struct Moved {
    reserved: i64,
    released: i64,
    committed: i64,
    returned: i64,
}

impl Moved {
    fn open(&self) -> i64 {
        self.reserved - self.released - self.committed
    }

    fn sold(&self) -> i64 {
        self.committed - self.returned
    }
}

/// Every aggregate folded from the events, and sums kept on the side.
#[derive(Default)]
struct Store {
    events: u64,
    orders: BTreeMap<String, Order>,
    products: BTreeMap<String, Product>,
    payments: BTreeMap<String, Payment>,
    /// (product, order) → what the order moved.
    moved: BTreeMap<(String, String), Moved>,
    /// Per product: units added.
    added: HashMap<String, i64>,
    approvals: HashMap<String, u32>,
    refunds: HashMap<String, u32>,
    violations: Vec<String>,
}

impl Store {
    async fn read(pool: &PgPool) -> anyhow::Result<Self> {
        let reader = GlobalReader::new(pool.clone());
        let filter = ReadFilter::default();
        let mut events = reader.stream_text(GlobalCheckpoint::default(), &filter);
        let mut store = Self::default();
        let mut sequences: HashMap<(String, String), i64> = HashMap::new();
        while let Some(event) = events.try_next().await.context("reading the events")? {
            store.events += 1;
            let id = event.aggregate_id.clone();
            let last = sequences
                .entry((event.aggregate_type.clone(), id.clone()))
                .or_default();
            if event.sequence != *last + 1 {
                store.violations.push(format!(
                    "{} {id}: event {} follows {}",
                    event.aggregate_type, event.sequence, last
                ));
            }
            *last = event.sequence;
            let undecodable = |error: serde_json::Error| {
                format!(
                    "{} {id} event {}: cannot decode: {error}",
                    event.aggregate_type, event.sequence
                )
            };
            match event.aggregate_type.as_str() {
                "Order" => match serde_json::from_str::<OrderEvent>(&event.payload) {
                    Ok(decoded) => store.orders.entry(id).or_default().apply(decoded),
                    Err(error) => store.violations.push(undecodable(error)),
                },
                "Product" => match serde_json::from_str::<ProductEvent>(&event.payload) {
                    Ok(decoded) => store.product_event(id, decoded),
                    Err(error) => store.violations.push(undecodable(error)),
                },
                "Payment" => match serde_json::from_str::<PaymentEvent>(&event.payload) {
                    Ok(decoded) => {
                        match &decoded {
                            PaymentEvent::ChargeApproved(_) => {
                                *store.approvals.entry(id.clone()).or_default() += 1
                            }
                            PaymentEvent::PaymentRefunded(_) => {
                                *store.refunds.entry(id.clone()).or_default() += 1
                            }
                            _ => {}
                        }
                        store.payments.entry(id).or_default().apply(decoded);
                    }
                    Err(error) => store.violations.push(undecodable(error)),
                },
                other => store
                    .violations
                    .push(format!("an event of unknown aggregate type {other}")),
            }
        }
        Ok(store)
    }

    fn product_event(&mut self, sku: String, event: ProductEvent) {
        match &event {
            ProductEvent::StockAdded(added) => {
                *self.added.entry(sku.clone()).or_default() += i64::from(added.quantity);
            }
            ProductEvent::StockReserved(e) => {
                self.moved(&sku, &e.order_id).reserved += i64::from(e.quantity);
            }
            ProductEvent::ReservationReleased(e) => {
                self.moved(&sku, &e.order_id).released += i64::from(e.quantity);
            }
            ProductEvent::ReservationCommitted(e) => {
                self.moved(&sku, &e.order_id).committed += i64::from(e.quantity);
            }
            ProductEvent::SoldStockReturned(e) => {
                self.moved(&sku, &e.order_id).returned += i64::from(e.quantity);
            }
            ProductEvent::ProductCreated(_) => {}
        }
        self.products.entry(sku).or_default().apply(event);
    }

    /// What `order` moved on `sku` so far.
    fn moved(&mut self, sku: &str, order: &domain::values::OrderId) -> &mut Moved {
        self.moved
            .entry((sku.to_owned(), order.to_string()))
            .or_default()
    }
}

fn check_orders(
    store: &Store,
    sagas: &HashMap<String, bool>,
    abandoned: &HashMap<String, String>,
    charges: &HashMap<String, GatewayCharge>,
    report: &mut Report,
) {
    for (id, order) in &store.orders {
        let Some(placed) = order.placed() else {
            report
                .violations
                .push(format!("order {id} has events but was never placed"));
            continue;
        };
        if let Some(why) = abandoned.get(id) {
            report.abandoned.push(format!("{id}: {why}"));
            continue;
        }
        let live = sagas.get(id).is_some_and(|done| !done);
        if live {
            report.open += 1;
            continue;
        }
        let violations = &mut report.violations;
        let confirmed = match placed.status {
            OrderStatus::Placed => {
                violations.push(format!(
                    "order {id} is PLACED, but no saga is at work on it"
                ));
                continue;
            }
            OrderStatus::Confirmed => {
                report.confirmed += 1;
                true
            }
            OrderStatus::Cancelled => {
                report.cancelled += 1;
                false
            }
        };
        for line in &placed.lines {
            let sku = line.sku.to_string();
            let moved = store
                .moved
                .get(&(sku.clone(), id.clone()))
                .copied()
                .unwrap_or_default();
            let bought = if confirmed {
                i64::from(line.quantity)
            } else {
                0
            };
            if moved.sold() != bought {
                violations.push(format!(
                    "order {id} ({}) holds {} sold units of {sku}, expected {bought}",
                    status_name(confirmed),
                    moved.sold()
                ));
            }
            if moved.open() != 0 {
                violations.push(format!(
                    "order {id} ({}) still holds {} reserved units of {sku}",
                    status_name(confirmed),
                    moved.open()
                ));
            }
        }
        let ledger = store.payments.get(id);
        let ledger_status = ledger.and_then(Payment::status);
        let charge = charges.get(&charge_key(id));
        if confirmed {
            let amount = ledger.and_then(Payment::requested).map(|p| p.amount_cents);
            if ledger_status != Some(PaymentStatus::Approved) || amount != Some(placed.total_cents)
            {
                violations.push(format!(
                    "confirmed order {id} of {} has its payment {ledger_status:?} of {amount:?} in the ledger",
                    placed.total_cents
                ));
            }
            match charge {
                Some(c) if c.status == "approved" && c.amount_cents == Some(placed.total_cents) => {
                }
                other => violations.push(format!(
                    "confirmed order {id} of {} has no matching capture at the gateway: {other:?}",
                    placed.total_cents
                )),
            }
        } else {
            if matches!(
                ledger_status,
                Some(PaymentStatus::Approved | PaymentStatus::Requested)
            ) {
                violations.push(format!(
                    "cancelled order {id} has its payment {ledger_status:?} in the ledger"
                ));
            }
            if let Some(c) = charge
                && matches!(c.status.as_str(), "approved" | "pending")
            {
                violations.push(format!(
                    "cancelled order {id} has a charge {} at the gateway",
                    c.status
                ));
            }
        }
        // A capture the gateway gave back is on the record, and only then,
        // and it was this order's total.
        let gateway_refunded = charge.is_some_and(|c| c.status == "refunded");
        if let Some(c) = charge
            && gateway_refunded
            && c.amount_cents != Some(placed.total_cents)
        {
            violations.push(format!(
                "order {id}: the gateway refunded {}, not its total of {}",
                c.amount_cents
                    .map_or("an unknown amount".into(), |a| a.to_string()),
                placed.total_cents
            ));
        }
        let ledger_refunded = ledger_status == Some(PaymentStatus::Refunded);
        if gateway_refunded != ledger_refunded {
            violations.push(format!(
                "order {id}: the gateway {} the charge, the ledger holds it {ledger_status:?}",
                if gateway_refunded {
                    "refunded"
                } else {
                    "did not refund"
                }
            ));
        }
    }
    // Money the gateway holds for no order.
    for (key, charge) in charges {
        let known = key
            .strip_prefix("order-")
            .is_some_and(|id| store.orders.contains_key(id));
        if !known && charge.status == "approved" {
            report.violations.push(format!(
                "the gateway holds a capture {key} that belongs to no order"
            ));
        }
    }
}

fn status_name(confirmed: bool) -> &'static str {
    if confirmed { "CONFIRMED" } else { "CANCELLED" }
}

fn check_products(store: &Store, report: &mut Report) {
    let mut sold: HashMap<&str, i64> = HashMap::new();
    let mut returned: HashMap<&str, i64> = HashMap::new();
    let mut reserved: HashMap<&str, i64> = HashMap::new();
    for ((sku, order), moved) in &store.moved {
        *sold.entry(sku).or_default() += moved.committed;
        *returned.entry(sku).or_default() += moved.returned;
        *reserved.entry(sku).or_default() += moved.open();
        let bought = store
            .orders
            .get(order)
            .and_then(Order::placed)
            .is_some_and(|placed| placed.lines.iter().any(|line| line.sku.as_str() == sku));
        if !bought {
            report.violations.push(format!(
                "{sku} moved stock for order {order}, which did not order it"
            ));
        }
    }
    for (sku, product) in &store.products {
        let s = sku.as_str();
        let expected = store.added.get(s).copied().unwrap_or(0) - sold.get(s).copied().unwrap_or(0)
            + returned.get(s).copied().unwrap_or(0);
        if i64::try_from(product.on_hand()).ok() != Some(expected) {
            report.violations.push(format!(
                "{sku} has {} on hand, but added - sold + returned is {expected}",
                product.on_hand()
            ));
        }
        let open = reserved.get(s).copied().unwrap_or(0);
        if i64::try_from(product.reserved()).ok() != Some(open) {
            report.violations.push(format!(
                "{sku} has {} reserved, but its open reservations add up to {open}",
                product.reserved()
            ));
        }
    }
}

fn check_payments(store: &Store, report: &mut Report) {
    for (id, count) in &store.approvals {
        if *count > 1 {
            report
                .violations
                .push(format!("payment {id} was approved {count} times"));
        }
    }
    for (id, count) in &store.refunds {
        if *count > 1 {
            report
                .violations
                .push(format!("payment {id} was refunded {count} times"));
        }
    }
    for (id, payment) in &store.payments {
        if let Some(requested) = payment.requested()
            && requested.order_id.to_string() != *id
        {
            report
                .violations
                .push(format!("payment {id} is for order {}", requested.order_id));
        }
        if !store.orders.contains_key(id) {
            report
                .violations
                .push(format!("payment {id} belongs to no order"));
        }
    }
}
