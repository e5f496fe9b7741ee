//! The catalogue's and the warehouse's commands on the running platform:
//! price changes, discontinuing and reactivating products, and stock
//! adjustments, seen through REST and GraphQL.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::time::Duration;

use platform_tests::TestPlatform;
use serde_json::{Value, json};

const WITHIN: Duration = Duration::from_secs(30);

const PRODUCT: &str = "query($sku: String!) { product(sku: $sku) { priceCents onHand reserved available active version } }";
const ORDER: &str = "query($id: ID!) { order(id: $id) { status totalCents lines { sku quantity unitPriceCents } } }";

fn order(lines: &[(&str, i64)]) -> Value {
    json!({
        "customer_id": "customer-1",
        "lines": lines.iter().map(|(sku, quantity)| json!({"sku": sku, "quantity": quantity})).collect::<Vec<_>>(),
        "payment_method": "tok_visa",
    })
}

async fn events(platform: &TestPlatform) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&platform.pool)
        .await
        .unwrap()
}

/// Waits until the product's row shows `version`, and returns it.
async fn product_at(platform: &TestPlatform, sku: &str, version: i64) -> Value {
    platform
        .eventually(PRODUCT, json!({"sku": sku}), WITHIN, |data| {
            (data["product"]["version"] == version).then(|| data["product"].clone())
        })
        .await
}

/// A refusal: the status, a problem+json body, and nothing appended.
async fn refused(platform: &TestPlatform, path: &str, body: &Value, status: u16) -> Value {
    let before = events(platform).await;
    let answer = platform.post(path, body).await;
    assert_eq!(answer.status(), status, "{path} {body}");
    assert_eq!(
        answer.headers()["content-type"],
        "application/problem+json",
        "{path}"
    );
    let problem: Value = answer.json().await.unwrap();
    assert_eq!(events(platform).await, before, "{path} {body} appended");
    problem
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_placed_after_a_price_change_pay_the_new_price_and_earlier_ones_keep_theirs() {
    let platform = TestPlatform::start().await;
    platform.create_product("MUG", 1250, 10).await;
    let before = platform
        .command("/api/orders", &order(&[("MUG", 2)]), 202)
        .await;

    let changed = platform
        .command(
            "/api/products/MUG/price",
            &json!({"price_cents": 1490}),
            202,
        )
        .await;
    assert_eq!(changed["sku"], "MUG");
    assert_eq!(changed["version"], 3);
    // At once, without waiting for anything: the next order pays it.
    let after = platform
        .command("/api/orders", &order(&[("MUG", 2)]), 202)
        .await;

    for (placed, unit, total) in [(&before, 1250, 2500), (&after, 1490, 2980)] {
        let id = placed["order_id"].as_str().unwrap();
        let shown = platform
            .eventually(ORDER, json!({"id": id}), WITHIN, |data| {
                (!data["order"].is_null()).then(|| data["order"].clone())
            })
            .await;
        assert_eq!(shown["lines"][0]["unitPriceCents"], unit, "{shown}");
        assert_eq!(shown["totalCents"], total, "{shown}");
    }
    let product = product_at(&platform, "MUG", 3).await;
    assert_eq!(product["priceCents"], 1490);

    // The same price again, a price that is not a whole number of at least
    // one cent, an unknown field, an unknown product: refused, nothing kept.
    let same = refused(
        &platform,
        "/api/products/MUG/price",
        &json!({"price_cents": 1490}),
        409,
    )
    .await;
    assert!(same["detail"].as_str().unwrap().contains("1490"), "{same}");
    for body in [
        json!({"price_cents": 0}),
        json!({"price_cents": -5}),
        json!({"price_cents": 12.5}),
        json!({"price_cents": "1490"}),
        json!({"price_cents": 10_000_000_001_i64}),
        json!({}),
        json!({"price_cents": 1500, "currency": "USD"}),
    ] {
        let problem = refused(&platform, "/api/products/MUG/price", &body, 422).await;
        assert!(problem["errors"].is_array(), "{body}: {problem}");
    }
    refused(
        &platform,
        "/api/products/NOPE/price",
        &json!({"price_cents": 100}),
        404,
    )
    .await;
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discontinued_product_takes_no_new_orders_until_it_is_reactivated() {
    let platform = TestPlatform::start().await;
    platform.create_product("MUG", 1250, 10).await;
    platform.create_product("TEA", 499, 10).await;

    platform
        .command(
            "/api/products/MUG/discontinue",
            &json!({"reason": "end of line"}),
            202,
        )
        .await;
    let problem = refused(
        &platform,
        "/api/orders",
        &order(&[("TEA", 1), ("MUG", 1)]),
        409,
    )
    .await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("MUG is discontinued"),
        "{problem}"
    );
    assert_eq!(product_at(&platform, "MUG", 3).await["active"], false);
    assert_eq!(product_at(&platform, "TEA", 2).await["active"], true);
    // Other products sell on.
    platform
        .command("/api/orders", &order(&[("TEA", 1)]), 202)
        .await;

    refused(
        &platform,
        "/api/products/MUG/discontinue",
        &json!({"reason": "again"}),
        409,
    )
    .await;
    for body in [json!({}), json!({"reason": ""}), json!({"reason": "  "})] {
        refused(&platform, "/api/products/MUG/discontinue", &body, 422).await;
    }

    platform
        .command("/api/products/MUG/reactivate", &json!({}), 202)
        .await;
    assert_eq!(product_at(&platform, "MUG", 4).await["active"], true);
    platform
        .command("/api/orders", &order(&[("MUG", 1)]), 202)
        .await;
    refused(&platform, "/api/products/MUG/reactivate", &json!({}), 409).await;
    refused(
        &platform,
        "/api/products/MUG/reactivate",
        &json!({"reason": "x"}),
        422,
    )
    .await;
    refused(&platform, "/api/products/NOPE/reactivate", &json!({}), 404).await;
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_adjustments_move_what_is_on_hand_but_never_below_what_is_reserved() {
    let platform = TestPlatform::start().await;
    platform.create_product("MUG", 1250, 10).await;
    let path = "/api/products/MUG/stock/adjustments";

    platform
        .command(
            path,
            &json!({"delta": -3, "reason": "broken in the warehouse"}),
            202,
        )
        .await;
    platform
        .command(
            path,
            &json!({"delta": 1, "reason": "found on the shelf"}),
            202,
        )
        .await;
    let product = product_at(&platform, "MUG", 4).await;
    assert_eq!(
        (product["onHand"].clone(), product["available"].clone()),
        (json!(8), json!(8))
    );

    let below = refused(
        &platform,
        path,
        &json!({"delta": -9, "reason": "lost"}),
        409,
    )
    .await;
    assert!(
        below["detail"].as_str().unwrap().contains("reserved"),
        "{below}"
    );
    for body in [
        json!({"delta": 0, "reason": "nothing"}),
        json!({"delta": 1.5, "reason": "half"}),
        json!({"delta": 1_000_001, "reason": "too many"}),
        json!({"delta": -1_000_001, "reason": "too many"}),
        json!({"delta": 1}),
        json!({"delta": 1, "reason": ""}),
        json!({"reason": "no delta"}),
        json!({"delta": 1, "reason": "x", "quantity": 1}),
    ] {
        let problem = refused(&platform, path, &body, 422).await;
        assert!(problem["errors"].is_array(), "{body}: {problem}");
    }
    refused(
        &platform,
        "/api/products/NOPE/stock/adjustments",
        &json!({"delta": 1, "reason": "x"}),
        404,
    )
    .await;
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_placed_before_a_product_was_discontinued_go_on_and_the_books_balance() {
    let (platform, gateway) = TestPlatform::start_with_saga(platform_tests::quick_policy()).await;
    platform.create_product("MUG", 1250, 10).await;
    let placed = platform
        .command("/api/orders", &order(&[("MUG", 2)]), 202)
        .await;
    platform
        .command(
            "/api/products/MUG/discontinue",
            &json!({"reason": "end of line"}),
            202,
        )
        .await;
    platform
        .command(
            "/api/products/MUG/stock/adjustments",
            &json!({"delta": -1, "reason": "broken"}),
            202,
        )
        .await;
    let id = placed["order_id"].as_str().unwrap();
    platform
        .eventually(ORDER, json!({"id": id}), WITHIN, |data| {
            (data["order"]["status"] == "CONFIRMED").then_some(())
        })
        .await;
    let report = orders_cli::audit::audit_settled(&platform.pool, &gateway.access(), WITHIN)
        .await
        .unwrap();
    assert!(report.is_clean(), "{report}");
    platform.stop().await;
}
