//! Yesterday's events keep working. `tests/corpus/<release>/` holds what a
//! release wrote through its own REST API, saga and gateway (see the README
//! there): the events, the sagas, the gateway's ledger and the read models.
//! Every build loads, folds and projects them with today's code, and runs
//! the whole platform on a store seeded with them.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use domain::{Order, Payment, Product};
use event_store::RecordedEvent;
use platform_tests::{Seed, TestPlatform};
use projections::Projection;
use projections::model::customer_orders::CustomerOrders;
use projections::model::orders::OrderSummary;
use projections::model::products::ProductStock;
use projections::model::{ReadModel, fold_all};
use serde_json::{Value, json};

/// The releases whose stores this one must run on, oldest first.
const RELEASES: &[&str] = &["0.1.0"];

const WITHIN: Duration = Duration::from_secs(30);

fn corpus_file(release: &str, name: &str) -> Vec<Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(release)
        .join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// The release's events as the store hands them out, in the order they were
/// written.
fn recorded(release: &str) -> Vec<RecordedEvent<String>> {
    corpus_file(release, "events")
        .into_iter()
        .map(|row| {
            let text = |field: &str| row[field].as_str().expect(field).to_owned();
            let position = row["global_position"].as_i64().unwrap();
            RecordedEvent {
                event_id: text("event_id").parse().unwrap(),
                aggregate_type: text("aggregate_type"),
                aggregate_id: text("aggregate_id"),
                sequence: row["sequence"].as_i64().unwrap(),
                event_type: text("event_type"),
                event_version: text("event_version"),
                payload: row["payload"].to_string(),
                metadata: row["metadata"].to_string(),
                global_position: position,
                transaction_id: position,
                recorded_at: text("recorded_at").parse::<DateTime<Utc>>().unwrap(),
            }
        })
        .collect()
}

/// Folds every stream of aggregate `A` with the domain's own `apply`, from
/// payloads decoded as every reader of the store decodes them.
fn fold_streams<A>(events: &[RecordedEvent<String>]) -> BTreeMap<String, A>
where
    A: Aggregate + Default,
{
    let mut streams: BTreeMap<String, (A, i64)> = BTreeMap::new();
    for event in events.iter().filter(|e| e.aggregate_type == A::TYPE) {
        let decoded: A::Event =
            event_contract::decode_stored(&event.payload).unwrap_or_else(|error| {
                panic!(
                    "{} {} #{}: {error}",
                    event.event_type, event.aggregate_id, event.sequence
                )
            });
        let (aggregate, sequence) = streams.entry(event.aggregate_id.clone()).or_default();
        assert_eq!(event.sequence, *sequence + 1, "{}", event.aggregate_id);
        aggregate.apply(decoded);
        *sequence = event.sequence;
    }
    streams
        .into_iter()
        .map(|(id, (aggregate, _))| (id, aggregate))
        .collect()
}

/// The release's read model rows of `table`, by key column.
fn rows_by(release: &str, table: &str, key: &str) -> HashMap<String, Value> {
    corpus_file(release, table)
        .into_iter()
        .map(|row| (row[key].as_str().unwrap().to_owned(), row))
        .collect()
}

fn project<M: ReadModel>(events: &[RecordedEvent<String>]) -> HashMap<String, M::Row> {
    let mut rows = HashMap::new();
    let batch = fold_all::<M>(&mut rows, events);
    assert!(
        batch.poisoned.is_empty(),
        "{}: {:?}",
        M::NAME,
        batch.poisoned
    );
    rows
}

#[test]
fn every_event_of_the_corpus_is_one_the_catalogue_still_knows() {
    let catalogue: BTreeSet<(&str, &str)> = domain::event_types()
        .iter()
        .map(|e| (e.aggregate_type, e.event_type))
        .collect();
    for release in RELEASES {
        let events = recorded(release);
        let types: BTreeSet<(&str, &str)> = events
            .iter()
            .map(|e| (e.aggregate_type.as_str(), e.event_type.as_str()))
            .collect();
        for kind in &types {
            assert!(catalogue.contains(kind), "{release}: {kind:?} is gone");
        }
        assert!(events.iter().all(|e| e.event_version == "1.0"));
    }
    // 0.1.0's catalogue had thirteen event types; its corpus samples each.
    let first: BTreeSet<String> = recorded("0.1.0")
        .into_iter()
        .map(|e| e.event_type)
        .collect();
    assert_eq!(first.len(), 13, "{first:?}");
}

#[test]
fn the_corpus_folds_into_the_aggregates_its_release_showed() {
    for release in RELEASES {
        let events = recorded(release);
        let orders = fold_streams::<Order>(&events);
        let summaries = rows_by(release, "order_summary", "order_id");
        assert_eq!(orders.len(), summaries.len(), "{release}");
        for (id, order) in &orders {
            let status = order.status().expect("placed").as_str();
            assert_eq!(status, summaries[id]["status"], "{release} order {id}");
        }

        let products = fold_streams::<Product>(&events);
        let stock = rows_by(release, "product_stock", "sku");
        assert_eq!(products.len(), stock.len(), "{release}");
        for (sku, product) in &products {
            let row = &stock[sku];
            assert_eq!(json!(product.on_hand()), row["on_hand"], "{release} {sku}");
            assert_eq!(
                json!(product.reserved()),
                row["reserved"],
                "{release} {sku}"
            );
            let details = product.details().expect("created");
            assert_eq!(json!(details.price.amount_cents), row["price_cents"]);
        }

        // Each payment stands as the gateway's ledger says (a charge voided
        // while in doubt was recorded as declined).
        let payments = fold_streams::<Payment>(&events);
        let ledger = rows_by(release, "charges", "key");
        assert_eq!(payments.len(), ledger.len(), "{release}");
        for (id, payment) in &payments {
            let status = serde_json::to_value(payment.status().expect("requested")).unwrap();
            let expected = match ledger[&format!("order-{id}")]["status"].as_str().unwrap() {
                "approved" => "APPROVED",
                "refunded" => "REFUNDED",
                "declined" | "voided" => "DECLINED",
                other => panic!("{release}: ledger status {other}"),
            };
            assert_eq!(status, expected, "{release} payment {id}");
        }
    }
}

#[test]
fn the_corpus_projects_into_the_rows_its_release_showed() {
    let same = |ours: Value, theirs: &Value, what: &str| {
        for (column, value) in ours.as_object().unwrap() {
            assert_eq!(value, &theirs[column], "{what}: {column}");
        }
    };
    for release in RELEASES {
        let events = recorded(release);
        let stock = rows_by(release, "product_stock", "sku");
        let products = project::<ProductStock>(&events);
        assert_eq!(products.len(), stock.len());
        for (sku, row) in products {
            let ours = json!({
                "sku": row.sku, "name": row.name, "price_cents": row.price_cents,
                "currency": row.currency, "on_hand": row.on_hand, "reserved": row.reserved,
                "version": row.version, "global_position": row.global_position,
            });
            same(ours, &stock[&sku], &format!("{release} product {sku}"));
        }

        let summaries = rows_by(release, "order_summary", "order_id");
        let orders = project::<OrderSummary>(&events);
        assert_eq!(orders.len(), summaries.len());
        for (id, row) in orders {
            let ours = json!({
                "customer_id": row.customer_id, "status": row.status,
                "total_cents": row.total_cents, "currency": row.currency,
                "payment_method": row.payment_method,
                "cancellation_reason": row.cancellation_reason,
                "lines": serde_json::to_value(&row.lines).unwrap(),
                "version": row.version, "global_position": row.global_position,
            });
            same(ours, &summaries[&id], &format!("{release} order {id}"));
        }

        let listed = rows_by(release, "customer_order", "order_id");
        let customer_orders = project::<CustomerOrders>(&events);
        assert_eq!(customer_orders.len(), listed.len());
        for (id, row) in customer_orders {
            let ours = json!({
                "customer_id": row.customer_id, "status": row.status,
                "total_cents": row.total_cents, "version": row.version,
            });
            same(
                ours,
                &listed[&id],
                &format!("{release} customer order {id}"),
            );
        }
    }
}

/// The release's tables, to seed a platform with.
fn seed(release: &str) -> Seed {
    let tables = |names: &[&str]| {
        names
            .iter()
            .map(|table| ((*table).to_owned(), corpus_file(release, table)))
            .collect()
    };
    Seed {
        platform: tables(&[
            "events",
            "sagas",
            "product_stock",
            "order_summary",
            "customer_order",
        ]),
        gateway: tables(&["charges"]),
    }
}

use platform_tests::quick_policy as quick;

async fn saga_done(platform: &TestPlatform, order_id: &str, state: &str) {
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let row: Option<(String, bool)> =
            sqlx::query_as("SELECT state, done FROM sagas WHERE order_id = $1")
                .bind(order_id)
                .fetch_optional(&platform.pool)
                .await
                .unwrap();
        if row.as_ref().is_some_and(|(s, done)| s == state && *done) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "saga of {order_id}: {row:?}, not {state}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (bounded) until the projection's table equals the fold of the
/// store, and says how it differs if it never does.
async fn compares_clean(platform: &TestPlatform, projection: Projection, release: &str) {
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let comparison = projection.compare(&platform.pool).await.unwrap();
        let clean = comparison.wrong.is_empty()
            && comparison.behind.is_empty()
            && comparison.orphans == 0
            && comparison.refused == 0;
        if clean {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{release} {}: {comparison:?}",
            projection.name()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn audit_clean(platform: &TestPlatform, gateway: &platform_tests::TestGateway) {
    let report = orders_cli::audit::audit_settled(&platform.pool, &gateway.access(), WITHIN)
        .await
        .unwrap();
    assert!(report.is_clean(), "{report}");
}

/// A database written by an earlier release, its events republished from
/// the start (as after a lost relay checkpoint), runs on this one: the read
/// models it holds are what today's fold makes of its events, the books
/// balance, and its aggregates and sagas take new commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_written_by_an_earlier_release_runs_on_this_one() {
    for release in RELEASES {
        let (platform, gateway) =
            TestPlatform::start_with_saga_seeded(quick(), &[], &seed(release)).await;
        // The release's read models are seeded; one it did not have
        // (`order_payment`) fills from the republished events.
        for projection in Projection::ALL {
            compares_clean(&platform, projection, release).await;
        }
        audit_clean(&platform, &gateway).await;

        // A confirmed order of the release is cancelled: its saga, as the
        // release stored it, gives the money and the stock back.
        let summaries = corpus_file(release, "order_summary");
        let confirmed = summaries
            .iter()
            .find(|row| row["status"] == "CONFIRMED")
            .expect("a confirmed order");
        let order_id = confirmed["order_id"].as_str().unwrap();
        platform
            .command(
                &format!("/api/orders/{order_id}/cancel"),
                &json!({"reason": "after the upgrade"}),
                202,
            )
            .await;
        saga_done(&platform, order_id, "CANCELLED").await;

        // Its products take stock and new orders.
        let sku = confirmed["lines"][0]["sku"].as_str().unwrap();
        platform
            .command(
                &format!("/api/products/{sku}/stock"),
                &json!({"quantity": 5}),
                202,
            )
            .await;
        let placed = platform
            .command(
                "/api/orders",
                &json!({"customer_id": "customer-1", "lines": [{"sku": sku, "quantity": 1}],
                        "payment_method": "tok_visa"}),
                202,
            )
            .await;
        saga_done(&platform, placed["order_id"].as_str().unwrap(), "CONFIRMED").await;
        audit_clean(&platform, &gateway).await;
        platform.stop().await;
    }
}

/// A confirmed order of the earlier release, charged and sold whole then,
/// ships and is delivered on this one without capturing again, and the
/// books still balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_of_an_earlier_release_ships_without_being_charged_again() {
    for release in RELEASES {
        let (platform, gateway) =
            TestPlatform::start_with_saga_seeded(quick(), &[], &seed(release)).await;
        let summaries = corpus_file(release, "order_summary");
        let confirmed = summaries
            .iter()
            .find(|row| row["status"] == "CONFIRMED")
            .expect("a confirmed order");
        let order_id = confirmed["order_id"].as_str().unwrap();
        let lines: Vec<Value> = confirmed["lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|line| json!({"sku": line["sku"], "quantity": line["quantity"]}))
            .collect();
        let shipped = platform
            .command(
                &format!("/api/orders/{order_id}/shipments"),
                &json!({"lines": lines, "carrier": "DHL", "tracking_number": "OLD-1"}),
                202,
            )
            .await;
        let shipment_id = shipped["shipment_id"].as_str().unwrap();
        platform
            .eventually(
                "query($id: ID!) { order(id: $id) { status } }",
                json!({"id": order_id}),
                WITHIN,
                |data| (data["order"]["status"] == "SHIPPED").then_some(()),
            )
            .await;
        platform
            .command(
                &format!("/api/orders/{order_id}/shipments/{shipment_id}/delivered"),
                &json!({}),
                202,
            )
            .await;
        saga_done(&platform, order_id, "CONFIRMED").await;
        let payment: Vec<String> = sqlx::query_scalar(
            "SELECT event_type FROM events WHERE aggregate_type = 'Payment' AND aggregate_id = $1
              ORDER BY sequence",
        )
        .bind(order_id)
        .fetch_all(&platform.pool)
        .await
        .unwrap();
        assert_eq!(
            payment,
            ["ChargeRequested", "ChargeApproved"],
            "charged once"
        );
        audit_clean(&platform, &gateway).await;
        platform.stop().await;
    }
}
