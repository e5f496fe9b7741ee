//! `orders audit`: do the books of a running platform balance?
//!
//! It reads everything the platform wrote (every event, the sagas, the read
//! models) and the payment gateway's ledger, and checks what must hold:
//!
//! - every order is at rest (confirmed or further, or `CANCELLED`) or has
//!   a live saga;
//! - per product, on hand = added + adjustments − shipped + restocked, and
//!   nothing stays reserved for an order that has ended;
//! - an order that authorized its total: the units of its unshipped lines
//!   stay reserved (none once cancelled), exactly what shipped left the
//!   stock and exactly what its received returns restock came back;
//!   captured = value of what shipped, refunded = value of received
//!   returns, captured ≤ authorized, in the Payment stream and at the
//!   gateway; a cancelled one holds no authorization in either;
//! - an order of the previous release, charged whole: a confirmed one
//!   bought exactly its lines and holds one captured charge equal to its
//!   total, in the Payment stream and at the gateway; a `CANCELLED` one
//!   holds no stock and no money in either;
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
//!
//! It holds a bounded part of the books in memory, however large they are:
//! the events are streamed one aggregate at a time along the store's key,
//! orders are checked a thousand at a time with their payments, sagas,
//! stock moves and charges looked up for those orders only, and what needs
//! all of the store at once (the stock each order moved on each product,
//! summed; the gateway's ledger) is staged in temporary tables of the
//! audit's own database session.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::Context;
use cqrs_es::Aggregate;
use domain::payment::AuthorizationStatus;
use domain::{
    Order, OrderEvent, OrderStatus, Payment, PaymentEvent, PaymentStatus, Product, ProductEvent,
};
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

/// Where the payment gateway is, and the token it requires.
#[derive(Clone)]
pub struct GatewayAccess {
    /// Such as `http://127.0.0.1:8081`.
    pub url: String,
    pub token: String,
}

impl std::fmt::Debug for GatewayAccess {
    // The token is a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayAccess")
            .field("url", &self.url)
            .finish_non_exhaustive()
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
    gateway: &GatewayAccess,
    settle: Duration,
) -> anyhow::Result<Report> {
    let deadline = tokio::time::Instant::now() + settle;
    loop {
        let report = audit(pool, gateway).await?;
        if report.is_clean() || tokio::time::Instant::now() >= deadline {
            return Ok(report);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Orders checked at once, with what is looked up for them.
const ORDERS_AT_ONCE: usize = 1_000;

/// One pass over the books.
pub async fn audit(pool: &PgPool, gateway: &GatewayAccess) -> anyhow::Result<Report> {
    // The temporary tables live in this session.
    let mut session = pool.acquire().await.context("connecting for the audit")?;
    let staged = async {
        let charges = stage_charges(&mut session, gateway).await?
            + stage_authorizations(&mut session, gateway).await?;
        stage_moves(&mut session).await?;
        let mut report = Report {
            charges,
            events: sqlx::query_scalar::<_, i64>("SELECT count(*) FROM events")
                .fetch_one(&mut *session)
                .await?
                .try_into()
                .unwrap_or_default(),
            ..Report::default()
        };
        stalled_sagas(&mut session, &mut report).await?;
        check_products(pool, &mut report).await?;
        check_orders(pool, &mut session, &mut report).await?;
        unowned(&mut session, &mut report).await?;
        for projection in Projection::ALL {
            let comparison = projection.compare(pool).await?;
            report.rows += comparison.compared;
            let described = comparison.wrong.len();
            report.violations.extend(comparison.wrong);
            if comparison.wrong_count > described {
                report.violations.push(format!(
                    "read model {}: {} rows differ from the fold of their events in all",
                    projection.table(),
                    comparison.wrong_count
                ));
            }
            if comparison.behind_count > 0 {
                report.violations.push(format!(
                    "read model {} lags behind the events for {} aggregates (first: {})",
                    projection.table(),
                    comparison.behind_count,
                    comparison.behind.first().map_or("", String::as_str)
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
        anyhow::Ok(report)
    }
    .await;
    // Whatever happened, the staging goes (the session returns to the pool).
    let _ = sqlx::query(
        "DROP TABLE IF EXISTS pg_temp.audit_charges, pg_temp.audit_authorizations, \
         pg_temp.audit_moves",
    )
    .execute(&mut *session)
    .await;
    staged
}

/// The gateway's ledger, page by page into `audit_charges`; returns how many
/// charges it holds.
async fn stage_charges(
    session: &mut sqlx::PgConnection,
    gateway: &GatewayAccess,
) -> anyhow::Result<usize> {
    sqlx::raw_sql(
        "CREATE TEMPORARY TABLE IF NOT EXISTS audit_charges
            (key text PRIMARY KEY, status text NOT NULL, amount_cents bigint);
         TRUNCATE audit_charges",
    )
    .execute(&mut *session)
    .await?;
    let mut staged = 0;
    let mut pages = GatewayPages::<GatewayCharge>::new(gateway, "charges")?;
    while let Some(page) = pages.next().await? {
        staged += page.len();
        let (keys, statuses, amounts): (Vec<String>, Vec<String>, Vec<Option<i64>>) = page
            .into_iter()
            .map(|charge| (charge.key, charge.status, charge.amount_cents))
            .fold(
                (Vec::new(), Vec::new(), Vec::new()),
                |mut columns, (k, s, a)| {
                    columns.0.push(k);
                    columns.1.push(s);
                    columns.2.push(a);
                    columns
                },
            );
        sqlx::query(
            "INSERT INTO audit_charges SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[])
             ON CONFLICT (key) DO NOTHING",
        )
        .bind(keys)
        .bind(statuses)
        .bind(amounts)
        .execute(&mut *session)
        .await?;
    }
    Ok(staged)
}

/// An authorization as the gateway lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct GatewayAuthorization {
    pub key: String,
    pub status: String,
    pub amount_cents: Option<i64>,
    pub captured_cents: i64,
    pub refunded_cents: i64,
}

/// The gateway's authorizations, page by page into `audit_authorizations`
/// (with the order each belongs to); returns how many it holds.
async fn stage_authorizations(
    session: &mut sqlx::PgConnection,
    gateway: &GatewayAccess,
) -> anyhow::Result<usize> {
    sqlx::raw_sql(
        "CREATE TEMPORARY TABLE IF NOT EXISTS audit_authorizations
            (key text PRIMARY KEY, order_id text, status text NOT NULL, amount_cents bigint,
             captured_cents bigint NOT NULL, refunded_cents bigint NOT NULL);
         TRUNCATE audit_authorizations;
         CREATE INDEX IF NOT EXISTS audit_authorizations_order ON audit_authorizations (order_id)",
    )
    .execute(&mut *session)
    .await?;
    let mut staged = 0;
    let mut pages = GatewayPages::<GatewayAuthorization>::new(gateway, "authorizations")?;
    while let Some(page) = pages.next().await? {
        staged += page.len();
        let order_of = |key: &str| {
            key.strip_prefix("order-")
                .and_then(|rest| rest.rsplit_once("-auth-"))
                .map(|(order, _)| order.to_owned())
        };
        sqlx::query(
            "INSERT INTO audit_authorizations
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[],
                                  $6::bigint[])
             ON CONFLICT (key) DO NOTHING",
        )
        .bind(page.iter().map(|a| a.key.clone()).collect::<Vec<_>>())
        .bind(page.iter().map(|a| order_of(&a.key)).collect::<Vec<_>>())
        .bind(page.iter().map(|a| a.status.clone()).collect::<Vec<_>>())
        .bind(page.iter().map(|a| a.amount_cents).collect::<Vec<_>>())
        .bind(page.iter().map(|a| a.captured_cents).collect::<Vec<_>>())
        .bind(page.iter().map(|a| a.refunded_cents).collect::<Vec<_>>())
        .execute(&mut *session)
        .await?;
    }
    Ok(staged)
}

/// Events of the store summed into `audit_moves` by one statement.
const MOVES_AT_ONCE: i64 = 50_000;

/// What each order moved on each product, summed by the database into
/// `audit_moves` (indexed by order; an order and product may have a row per
/// batch, summed when looked up). Each batch is a transaction of its own:
/// one statement over the whole store would hold a transaction id for as
/// long as it runs, and the relay publishes nothing newer than the oldest
/// writing transaction.
async fn stage_moves(session: &mut sqlx::PgConnection) -> anyhow::Result<()> {
    sqlx::raw_sql(
        "CREATE TEMPORARY TABLE IF NOT EXISTS audit_moves
            (order_id text, sku text, reserved bigint, released bigint,
             committed bigint, returned bigint);
         TRUNCATE audit_moves;
         CREATE INDEX IF NOT EXISTS audit_moves_order ON audit_moves (order_id)",
    )
    .execute(&mut *session)
    .await?;
    let last: i64 = sqlx::query_scalar("SELECT coalesce(max(global_position), 0) FROM events")
        .fetch_one(&mut *session)
        .await?;
    let mut from = 0;
    while from < last {
        let to = from.saturating_add(MOVES_AT_ONCE).min(last);
        sqlx::query(include_str!("audit_moves.sql"))
            .bind(from)
            .bind(to)
            .execute(&mut *session)
            .await
            .context("summing the stock moves")?;
        from = to;
    }
    Ok(())
}

/// Sagas that cannot get on alone: flagged, or with work long due that no
/// process does.
async fn stalled_sagas(
    session: &mut sqlx::PgConnection,
    report: &mut Report,
) -> anyhow::Result<()> {
    let rows: Vec<(String, bool)> = sqlx::query_as(
        "SELECT order_id, needs_attention FROM sagas
          WHERE needs_attention
             OR (NOT done AND next_attempt_at < now() - interval '5 minutes'
                 AND (leased_until IS NULL OR leased_until < now()))
          ORDER BY order_id",
    )
    .fetch_all(&mut *session)
    .await
    .context("reading the sagas")?;
    for (id, attention) in rows {
        report.violations.push(if attention {
            format!("the saga of order {id} needs attention (see order.saga in GraphQL)")
        } else {
            format!(
                "the saga of order {id} has had work due for over 5 minutes that no process does"
            )
        });
    }
    Ok(())
}

/// Every product, one at a time, against its own events.
async fn check_products(pool: &PgPool, report: &mut Report) -> anyhow::Result<()> {
    let mut events = Box::pin(event_store::reader::stream_aggregates(pool, Product::TYPE));
    let mut held = None;
    while let Some(stream) = event_store::reader::next_aggregate(&mut events, &mut held)
        .await
        .context("reading the products' events")?
    {
        report.products += 1;
        let sku = stream[0].aggregate_id.clone();
        let mut product = Product::default();
        let (mut added, mut adjusted, mut sold, mut returned, mut open) =
            (0i64, 0i64, 0i64, 0i64, 0i64);
        for event in folded(&stream, report) {
            let event: ProductEvent = event;
            match &event {
                ProductEvent::StockAdded(e) => added += i64::from(e.quantity),
                ProductEvent::StockReserved(e) => open += i64::from(e.quantity),
                ProductEvent::ReservationReleased(e) => open -= i64::from(e.quantity),
                ProductEvent::ReservationCommitted(e) => {
                    open -= i64::from(e.quantity);
                    sold += i64::from(e.quantity);
                }
                ProductEvent::SoldStockReturned(e) => returned += i64::from(e.quantity),
                ProductEvent::StockAdjusted(e) => adjusted += i64::from(e.delta),
                ProductEvent::ProductCreated(_)
                | ProductEvent::ProductPriceChanged(_)
                | ProductEvent::ProductDiscontinued(_)
                | ProductEvent::ProductReactivated(_) => {}
            }
            product.apply(event);
        }
        let expected = added + adjusted - sold + returned;
        if i64::try_from(product.on_hand()).ok() != Some(expected) {
            report.violations.push(format!(
                "{sku} has {} on hand, but added + adjusted - sold + returned is {expected}",
                product.on_hand()
            ));
        }
        if i64::try_from(product.reserved()).ok() != Some(open) {
            report.violations.push(format!(
                "{sku} has {} reserved, but its open reservations add up to {open}",
                product.reserved()
            ));
        }
    }
    Ok(())
}

/// The decoded events of one aggregate's stream, noting in `report` a
/// sequence out of order and an event that does not decode.
fn folded<E: serde::de::DeserializeOwned>(
    stream: &[event_store::RecordedEvent<String>],
    report: &mut Report,
) -> Vec<E> {
    let mut decoded = Vec::with_capacity(stream.len());
    for (expected, event) in (1..).zip(stream) {
        if event.sequence != expected {
            report.violations.push(format!(
                "{} {}: event {} follows {}",
                event.aggregate_type,
                event.aggregate_id,
                event.sequence,
                expected - 1
            ));
        }
        match serde_json::from_str::<E>(&event.payload) {
            Ok(event) => decoded.push(event),
            Err(error) => report.violations.push(format!(
                "{} {} event {}: cannot decode: {error}",
                event.aggregate_type, event.aggregate_id, event.sequence
            )),
        }
    }
    decoded
}

/// What the books say of one order besides its own events.
#[derive(Default)]
struct Around {
    payment: Option<Payment>,
    approvals: u32,
    refunds: u32,
    /// (done, abandoned why) of its saga.
    saga: Option<(bool, Option<String>)>,
    /// Stock it moved, by product.
    moved: BTreeMap<String, Moved>,
    charge: Option<GatewayCharge>,
    /// Its authorizations at the gateway.
    authorizations: Vec<GatewayAuthorization>,
    /// How often its payment recorded each authorization, capture and
    /// refund: each once.
    recorded: BTreeMap<String, u32>,
}

/// Every order, a thousand at a time.
async fn check_orders(
    pool: &PgPool,
    session: &mut sqlx::PgConnection,
    report: &mut Report,
) -> anyhow::Result<()> {
    let mut events = Box::pin(event_store::reader::stream_aggregates(pool, Order::TYPE));
    let mut held = None;
    let mut chunk: Vec<(String, Order)> = Vec::with_capacity(ORDERS_AT_ONCE);
    loop {
        let next = event_store::reader::next_aggregate(&mut events, &mut held)
            .await
            .context("reading the orders' events")?;
        let ended = next.is_none();
        if let Some(stream) = next {
            let id = stream[0].aggregate_id.clone();
            let mut order = Order::default();
            for event in folded::<OrderEvent>(&stream, report) {
                order.apply(event);
            }
            chunk.push((id, order));
        }
        if chunk.len() >= ORDERS_AT_ONCE || (ended && !chunk.is_empty()) {
            let mut around = around(pool, session, &chunk, report).await?;
            for (id, order) in &chunk {
                check_order(id, order, around.remove(id).unwrap_or_default(), report);
            }
            chunk.clear();
        }
        if ended {
            return Ok(());
        }
    }
}

/// What the books say around `orders`: their payments, sagas, stock moves
/// and charges.
async fn around(
    pool: &PgPool,
    session: &mut sqlx::PgConnection,
    orders: &[(String, Order)],
    report: &mut Report,
) -> anyhow::Result<HashMap<String, Around>> {
    let ids: Vec<String> = orders.iter().map(|(id, _)| id.clone()).collect();
    let mut around: HashMap<String, Around> = HashMap::new();
    let payments = event_store::reader::streams::<String>(pool, Payment::TYPE, &ids)
        .await
        .context("reading the payments")?;
    for stream in payments.chunk_by(|a, b| a.aggregate_id == b.aggregate_id) {
        let id = stream[0].aggregate_id.clone();
        let entry = around.entry(id.clone()).or_default();
        let mut payment = Payment::default();
        for event in folded::<PaymentEvent>(stream, report) {
            match &event {
                PaymentEvent::ChargeApproved(_) => entry.approvals += 1,
                PaymentEvent::PaymentRefunded(_) => entry.refunds += 1,
                PaymentEvent::PaymentAuthorized(e) => {
                    *entry
                        .recorded
                        .entry(format!("authorization {}", e.attempt))
                        .or_default() += 1;
                }
                PaymentEvent::PaymentCaptured(e) => {
                    *entry
                        .recorded
                        .entry(format!("the capture of shipment {}", e.shipment_id))
                        .or_default() += 1;
                }
                PaymentEvent::CaptureRefunded(e) => {
                    *entry
                        .recorded
                        .entry(format!(
                            "the refund of return {} from shipment {}",
                            e.return_id, e.shipment_id
                        ))
                        .or_default() += 1;
                }
                _ => {}
            }
            payment.apply(event);
        }
        if let Some(requested) = payment.requested()
            && requested.order_id.to_string() != id
        {
            report
                .violations
                .push(format!("payment {id} is for order {}", requested.order_id));
        }
        entry.payment = Some(payment);
    }
    let sagas: Vec<(String, bool, Option<String>)> = sqlx::query_as(
        "SELECT order_id, done,
                CASE WHEN state = 'ABANDONED' THEN coalesce(saga ->> 'abandoned', '') END
           FROM sagas WHERE order_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&mut *session)
    .await
    .context("reading the sagas")?;
    for (id, done, abandoned) in sagas {
        around.entry(id).or_default().saga = Some((done, abandoned));
    }
    let moves: Vec<(String, String, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT order_id, sku, sum(reserved)::bigint, sum(released)::bigint,
                sum(committed)::bigint, sum(returned)::bigint
           FROM audit_moves WHERE order_id = ANY($1) GROUP BY order_id, sku",
    )
    .bind(&ids)
    .fetch_all(&mut *session)
    .await?;
    for (id, sku, reserved, released, committed, returned) in moves {
        around.entry(id).or_default().moved.insert(
            sku,
            Moved {
                reserved,
                released,
                committed,
                returned,
            },
        );
    }
    let keys: Vec<String> = ids.iter().map(|id| charge_key(id)).collect();
    let charges: Vec<(String, String, Option<i64>)> =
        sqlx::query_as("SELECT key, status, amount_cents FROM audit_charges WHERE key = ANY($1)")
            .bind(&keys)
            .fetch_all(&mut *session)
            .await?;
    let authorizations: Vec<(String, String, String, Option<i64>, i64, i64)> = sqlx::query_as(
        "SELECT order_id, key, status, amount_cents, captured_cents, refunded_cents
           FROM audit_authorizations WHERE order_id = ANY($1) ORDER BY key",
    )
    .bind(&ids)
    .fetch_all(&mut *session)
    .await?;
    for (id, key, status, amount_cents, captured_cents, refunded_cents) in authorizations {
        around
            .entry(id)
            .or_default()
            .authorizations
            .push(GatewayAuthorization {
                key,
                status,
                amount_cents,
                captured_cents,
                refunded_cents,
            });
    }
    for (key, status, amount_cents) in charges {
        if let Some(id) = key.strip_prefix("order-") {
            around.entry(id.to_owned()).or_default().charge = Some(GatewayCharge {
                key: key.clone(),
                status,
                amount_cents,
            });
        }
    }
    Ok(around)
}

/// What belongs to no order: captures the gateway holds, payments, stock
/// moved for orders that do not exist.
async fn unowned(session: &mut sqlx::PgConnection, report: &mut Report) -> anyhow::Result<()> {
    let no_order = "NOT EXISTS (SELECT 1 FROM events o
                     WHERE o.aggregate_type = 'Order' AND o.aggregate_id = {id} AND o.sequence = 1)";
    let captures: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT key FROM audit_charges c WHERE status = 'approved' AND {} ORDER BY key LIMIT 100",
        no_order.replace("{id}", "substr(c.key, 7)")
    ))
    .fetch_all(&mut *session)
    .await?;
    for key in captures {
        report.violations.push(format!(
            "the gateway holds a capture {key} that belongs to no order"
        ));
    }
    let held: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT key FROM audit_authorizations a
          WHERE (status = 'authorized' OR captured_cents > refunded_cents)
            AND (a.order_id IS NULL OR {}) ORDER BY key LIMIT 100",
        no_order.replace("{id}", "a.order_id")
    ))
    .fetch_all(&mut *session)
    .await?;
    for key in held {
        report.violations.push(format!(
            "the gateway holds authorization {key}, which belongs to no order"
        ));
    }
    let payments: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT DISTINCT p.aggregate_id FROM events p
          WHERE p.aggregate_type = 'Payment' AND p.sequence = 1 AND {} LIMIT 100",
        no_order.replace("{id}", "p.aggregate_id")
    ))
    .fetch_all(&mut *session)
    .await?;
    for id in payments {
        report
            .violations
            .push(format!("payment {id} belongs to no order"));
    }
    let moves: Vec<(String, String)> = sqlx::query_as(&format!(
        "SELECT DISTINCT m.sku, m.order_id FROM audit_moves m WHERE {} LIMIT 100",
        no_order.replace("{id}", "m.order_id")
    ))
    .fetch_all(&mut *session)
    .await?;
    for (sku, order) in moves {
        report.violations.push(format!(
            "{sku} moved stock for order {order}, which did not order it"
        ));
    }
    Ok(())
}

fn check_order(id: &str, order: &Order, around: Around, report: &mut Report) {
    report.orders += 1;
    let Some(placed) = order.placed() else {
        report
            .violations
            .push(format!("order {id} has events but was never placed"));
        return;
    };
    if around.approvals > 1 {
        report.violations.push(format!(
            "payment {id} was approved {} times",
            around.approvals
        ));
    }
    if around.refunds > 1 {
        report.violations.push(format!(
            "payment {id} was refunded {} times",
            around.refunds
        ));
    }
    for (what, times) in &around.recorded {
        if *times > 1 {
            report
                .violations
                .push(format!("payment {id} recorded {what} {times} times"));
        }
    }
    for sku in around.moved.keys() {
        if !placed.lines.iter().any(|line| line.sku.as_str() == sku) {
            report.violations.push(format!(
                "{sku} moved stock for order {id}, which did not order it"
            ));
        }
    }
    if let Some((_, Some(why))) = &around.saga {
        report.abandoned.push(format!("{id}: {why}"));
        return;
    }
    if around.saga.as_ref().is_some_and(|(done, _)| !done) {
        report.open += 1;
        return;
    }
    // Orders of the previous release charged their total at once.
    let charged = around
        .payment
        .as_ref()
        .map_or(around.charge.is_some(), Payment::is_charge);
    if !charged {
        check_lifecycle(id, placed, &around, report);
        return;
    }
    let violations = &mut report.violations;
    let confirmed = match placed.status {
        OrderStatus::Placed => {
            violations.push(format!(
                "order {id} is PLACED, but no saga is at work on it"
            ));
            return;
        }
        // Charged whole and sold when confirmed: shipping it moves no money
        // and no stock.
        OrderStatus::Confirmed
        | OrderStatus::PartiallyShipped
        | OrderStatus::Shipped
        | OrderStatus::Delivered => {
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
        let moved = around.moved.get(&sku).copied().unwrap_or_default();
        // Units its received returns put back are no longer bought.
        let bought = if confirmed {
            i64::from(line.quantity) - restocked(&placed.fulfilment, &line.sku)
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
    let ledger = around.payment.as_ref();
    let ledger_status = ledger.and_then(Payment::status);
    let charge = around.charge.as_ref();
    if confirmed {
        let amount = ledger.and_then(Payment::requested).map(|p| p.amount_cents);
        if ledger_status != Some(PaymentStatus::Approved) || amount != Some(placed.total_cents) {
            violations.push(format!(
                "confirmed order {id} of {} has its payment {ledger_status:?} of {amount:?} in the ledger",
                placed.total_cents
            ));
        }
        match charge {
            Some(c) if c.status == "approved" && c.amount_cents == Some(placed.total_cents) => {}
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
    // A capture the gateway gave back is on the record, and only then, and
    // it was this order's total.
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

/// The books of an order that authorized its total and captures what
/// ships: its stock, its payment and the gateway's authorizations against
/// its shipments and returns.
fn check_lifecycle(
    id: &str,
    placed: &domain::order::PlacedOrder,
    around: &Around,
    report: &mut Report,
) {
    let cancelled = match placed.status {
        OrderStatus::Placed => {
            report.violations.push(format!(
                "order {id} is PLACED, but no saga is at work on it"
            ));
            return;
        }
        OrderStatus::Cancelled => {
            report.cancelled += 1;
            true
        }
        OrderStatus::Confirmed
        | OrderStatus::PartiallyShipped
        | OrderStatus::Shipped
        | OrderStatus::Delivered => {
            report.confirmed += 1;
            false
        }
    };
    let violations = &mut report.violations;
    let status = placed.status.as_str();
    let fulfilment = &placed.fulfilment;
    if fulfilment.has_pending() {
        violations.push(format!(
            "order {id} has a shipment waiting for its capture, but its saga is done"
        ));
    }
    for line in &placed.lines {
        let sku = line.sku.to_string();
        let moved = around.moved.get(&sku).copied().unwrap_or_default();
        let shipped = i64::from(fulfilment.shipped(&line.sku));
        let restocked = restocked(fulfilment, &line.sku);
        if moved.committed != shipped {
            violations.push(format!(
                "order {id} ({status}) took {} units of {sku} out of stock, but {shipped} shipped",
                moved.committed
            ));
        }
        if moved.returned != restocked {
            violations.push(format!(
                "order {id} ({status}) put {} units of {sku} back on hand, but its received returns restock {restocked}",
                moved.returned
            ));
        }
        let reserved = if cancelled {
            0
        } else {
            i64::from(line.quantity) - shipped
        };
        if moved.open() != reserved {
            violations.push(format!(
                "order {id} ({status}) holds {} reserved units of {sku}, expected {reserved}",
                moved.open()
            ));
        }
    }
    let shipped_value = fulfilment.shipped_value_cents();
    let returned_value = fulfilment.received_value_cents();
    let payment = around.payment.as_ref();
    let (authorized, captured, refunded) = payment.map_or((0, 0, 0), |p| {
        (p.authorized_cents(), p.captured_cents(), p.refunded_cents())
    });
    if captured != shipped_value {
        violations.push(format!(
            "order {id} ({status}) captured {captured}, but what shipped is worth {shipped_value}"
        ));
    }
    if refunded != returned_value {
        violations.push(format!(
            "order {id} ({status}) refunded {refunded}, but its received returns are worth {returned_value}"
        ));
    }
    if captured > authorized {
        violations.push(format!(
            "order {id} captured {captured}, more than the {authorized} authorized"
        ));
    }
    let first = payment.and_then(|p| p.authorizations().first());
    let granted = first.is_some_and(|first| {
        first.amount_cents == placed.total_cents
            && !matches!(
                first.status,
                AuthorizationStatus::Requested | AuthorizationStatus::Declined
            )
    });
    if !cancelled && !granted {
        violations.push(format!(
            "confirmed order {id} ({status}) of {} has no authorization of its total: {first:?}",
            placed.total_cents
        ));
    }
    let latest = payment.and_then(Payment::authorization);
    if cancelled
        && let Some(latest) = latest
        && matches!(
            latest.status,
            AuthorizationStatus::Requested | AuthorizationStatus::Authorized
        )
    {
        violations.push(format!(
            "cancelled order {id} holds authorization {} {} in the ledger",
            latest.attempt,
            latest.status.as_str()
        ));
    }
    let at_gateway = |field: fn(&GatewayAuthorization) -> i64| -> i64 {
        around.authorizations.iter().map(field).sum()
    };
    let (gateway_captured, gateway_refunded) = (
        at_gateway(|a| a.captured_cents),
        at_gateway(|a| a.refunded_cents),
    );
    if (gateway_captured, gateway_refunded) != (captured, refunded) {
        violations.push(format!(
            "order {id}: the gateway captured {gateway_captured} and refunded {gateway_refunded}, the ledger {captured} and {refunded}"
        ));
    }
    if cancelled {
        for held in around
            .authorizations
            .iter()
            .filter(|a| matches!(a.status.as_str(), "authorized" | "pending"))
        {
            violations.push(format!(
                "cancelled order {id} still has authorization {} {} at the gateway",
                held.key, held.status
            ));
        }
    }
}

/// Units of `sku` the order's received returns put back on hand.
fn restocked(fulfilment: &domain::order::Fulfilment, sku: &domain::values::Sku) -> i64 {
    fulfilment
        .returns
        .iter()
        .filter(|found| {
            found.status == domain::order::ReturnStatus::Received && found.restocked == Some(true)
        })
        .flat_map(|found| &found.lines)
        .filter(|item| &item.sku == sku)
        .map(|item| i64::from(item.quantity))
        .sum()
}

fn status_name(confirmed: bool) -> &'static str {
    if confirmed { "CONFIRMED" } else { "CANCELLED" }
}

/// One of the gateway's lists (`charges`, `authorizations`), a page at a
/// time.
struct GatewayPages<'a, T> {
    gateway: &'a GatewayAccess,
    /// The list's path and the field of a page that holds it.
    list: &'static str,
    client: reqwest::Client,
    after: Option<String>,
    items: std::marker::PhantomData<T>,
}

impl<'a, T: serde::de::DeserializeOwned> GatewayPages<'a, T> {
    fn new(gateway: &'a GatewayAccess, list: &'static str) -> anyhow::Result<Self> {
        Ok(Self {
            gateway,
            list,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
            after: Some(String::new()),
            items: std::marker::PhantomData,
        })
    }

    /// The next page, `None` after the last.
    async fn next(&mut self) -> anyhow::Result<Option<Vec<T>>> {
        let Some(after) = self.after.take() else {
            return Ok(None);
        };
        let base = &self.gateway.url;
        let list = self.list;
        let mut page: serde_json::Value = self
            .client
            // Keys are URL-safe (the gateway allows A-Z a-z 0-9 - _ . :).
            .get(format!(
                "{}/{list}?limit=1000&after={after}",
                base.trim_end_matches('/')
            ))
            .bearer_auth(&self.gateway.token)
            .send()
            .await
            .and_then(|response| response.error_for_status())
            .with_context(|| format!("reading the payment gateway's {list} at {base}"))?
            .json()
            .await
            .with_context(|| format!("reading the payment gateway's {list}"))?;
        self.after = page["next_after"].as_str().map(str::to_owned);
        let items = serde_json::from_value(page[list].take())
            .with_context(|| format!("reading the payment gateway's {list}"))?;
        Ok(Some(items))
    }
}

/// Every charge the gateway lists, by key (for tools that look at a few).
pub async fn gateway_charges(
    gateway: &GatewayAccess,
) -> anyhow::Result<HashMap<String, GatewayCharge>> {
    let mut charges = HashMap::new();
    let mut pages = GatewayPages::<GatewayCharge>::new(gateway, "charges")?;
    while let Some(page) = pages.next().await? {
        charges.extend(page.into_iter().map(|c| (c.key.clone(), c)));
    }
    Ok(charges)
}

/// Every authorization the gateway lists, by key (for tools that look at a
/// few).
pub async fn gateway_authorizations(
    gateway: &GatewayAccess,
) -> anyhow::Result<HashMap<String, GatewayAuthorization>> {
    let mut authorizations = HashMap::new();
    let mut pages = GatewayPages::<GatewayAuthorization>::new(gateway, "authorizations")?;
    while let Some(page) = pages.next().await? {
        authorizations.extend(page.into_iter().map(|a| (a.key.clone(), a)));
    }
    Ok(authorizations)
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
