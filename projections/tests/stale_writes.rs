//! A read model row is only ever replaced by a newer one: a consumer that
//! fell behind (a partition moved to another process during a rebalance, a
//! batch retried late) cannot overwrite what a newer event wrote.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::collections::HashMap;

use chrono::{SubsecRound, Utc};
use event_contract::Envelope;
use platform::testing::TestDatabase;
use projections::model::customer_orders::CustomerOrders;
use projections::model::orders::OrderSummary;
use projections::model::products::ProductStock;
use projections::model::{EventRef, ReadModel, fold_all};
use serde_json::{Value, json};

fn envelope(
    aggregate_type: &str,
    id: &str,
    sequence: i64,
    event_type: &str,
    payload: Value,
) -> Envelope {
    Envelope {
        event_id: uuid::Uuid::now_v7(),
        aggregate_type: aggregate_type.into(),
        aggregate_id: id.into(),
        sequence,
        global_position: sequence,
        event_type: event_type.into(),
        event_version: "1.0".into(),
        // PostgreSQL keeps microseconds.
        recorded_at: Utc::now().trunc_subsecs(6),
        payload,
        metadata: json!({}),
    }
}

/// Folds `events` one by one and stores the row after each, newest first:
/// the table must keep the newest.
async fn newest_row_survives_older_writes<M: ReadModel>(events: &[Envelope]) {
    let database = TestDatabase::create().await.unwrap();
    let pool = database.pool(2).await.unwrap();
    event_store::migrate(&pool).await.unwrap();
    projections::migrate(&pool).await.unwrap();
    let mut rows = HashMap::new();
    let mut versions = Vec::new();
    for event in events {
        let fold = fold_all::<M>(&mut rows, [EventRef::from(event)]);
        assert!(fold.poisoned.is_empty(), "{:?}", fold.poisoned);
        versions.push(rows.values().next().unwrap().clone());
    }
    let id = events[0].aggregate_id.as_str();
    let mut connection = pool.acquire().await.unwrap();
    for row in versions.iter().rev() {
        M::store(&mut connection, M::TABLE, std::slice::from_ref(row))
            .await
            .unwrap();
    }
    let stored = M::load(&mut connection, M::TABLE, &[id]).await.unwrap();
    assert_eq!(stored[id], *versions.last().unwrap(), "{}", M::NAME);
}

fn order_events() -> Vec<Envelope> {
    let id = "0197a0b0-0000-7000-8000-000000000001";
    let placed = json!({
        "order_id": id, "customer_id": "c-1", "currency": "EUR", "total_cents": 500,
        "payment_method": "tok_visa",
        "lines": [{"sku": "MUG", "quantity": 2, "unit_price_cents": 250}],
    });
    vec![
        envelope("Order", id, 1, "OrderPlaced", placed),
        envelope("Order", id, 2, "OrderConfirmed", json!({})),
        envelope(
            "Order",
            id,
            3,
            "OrderCancelled",
            json!({"reason": "arrived broken", "previous_status": "CONFIRMED"}),
        ),
    ]
}

#[tokio::test]
async fn order_summary_keeps_its_newest_row() {
    newest_row_survives_older_writes::<OrderSummary>(&order_events()).await;
}

#[tokio::test]
async fn customer_orders_keeps_its_newest_row() {
    newest_row_survives_older_writes::<CustomerOrders>(&order_events()).await;
}

#[tokio::test]
async fn product_stock_keeps_its_newest_row() {
    let created =
        json!({"sku": "MUG", "name": "Mug", "price": {"amount_cents": 250, "currency": "EUR"}});
    newest_row_survives_older_writes::<ProductStock>(&[
        envelope("Product", "MUG", 1, "ProductCreated", created),
        envelope("Product", "MUG", 2, "StockAdded", json!({"quantity": 5})),
        envelope("Product", "MUG", 3, "StockAdded", json!({"quantity": 2})),
    ])
    .await;
}
