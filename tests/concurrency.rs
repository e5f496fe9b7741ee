//! Many clients race for one order at one expected version: exactly one wins.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use platform_tests::{TestApp, order_body};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_clients_cancelling_one_order_at_one_version_exactly_one_wins() {
    let app = TestApp::spawn().await;
    app.create_product("MUG", 1250).await;
    let placed = app.post("/api/orders", &order_body(&[("MUG", 1)])).await;
    assert_eq!(placed.status(), 202);
    let etag = placed.headers()["etag"].to_str().unwrap().to_owned();
    let order_id = placed.json::<serde_json::Value>().await.unwrap()["order_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let clients: Vec<_> = (0..32)
        .map(|i| {
            let client = app.client.clone();
            let url = app.url(&format!("/api/orders/{order_id}/cancel"));
            let etag = etag.clone();
            tokio::spawn(async move {
                client
                    .post(url)
                    .header("if-match", etag)
                    .json(&json!({"reason": format!("client {i}")}))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for client in clients {
        statuses.push(client.await.unwrap());
    }

    let wins = statuses.iter().filter(|s| **s == 202).count();
    assert_eq!(wins, 1, "{statuses:?}");
    // The losers either saw the new version (412) or lost the append race (409).
    assert!(
        statuses.iter().all(|s| [202, 409, 412].contains(s)),
        "{statuses:?}"
    );
    let cancellations: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE event_type = 'OrderCancelled' AND aggregate_id = $1",
    )
    .bind(&order_id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(cancellations, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_stock_additions_without_if_match_all_land() {
    let app = TestApp::spawn().await;
    app.create_product("MUG", 1250).await;

    let clients: Vec<_> = (0..24)
        .map(|_| {
            let client = app.client.clone();
            let url = app.url("/api/products/MUG/stock");
            tokio::spawn(async move {
                client
                    .post(url)
                    .json(&json!({"quantity": 2}))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    for client in clients {
        assert_eq!(client.await.unwrap(), 202);
    }

    let added: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum((payload->'StockAdded'->>'quantity')::bigint), 0)::bigint FROM events WHERE aggregate_id = 'MUG'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(added, 48);
}
