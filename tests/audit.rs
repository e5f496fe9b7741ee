//! `orders audit` on a real platform: clean books pass, and each kind of
//! broken book is reported.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::time::Duration;

use orders_cli::audit::{audit, audit_settled};
use platform_tests::{TestGateway, TestPlatform};
use saga_orchestrator::driver::authorization_key;
use serde_json::json;

async fn all_sagas_done(platform: &TestPlatform, orders: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let done: i64 = sqlx::query_scalar("SELECT count(*) FROM sagas WHERE done")
            .fetch_one(&platform.pool)
            .await
            .unwrap();
        if done == orders {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{done} of {orders} sagas done"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A platform whose orders all ended: confirmed, declined, cancelled after
/// confirmation. Returns it with the ids of one confirmed and one cancelled order.
async fn settled_books() -> (TestPlatform, TestGateway, String, String) {
    let (platform, gateway) = TestPlatform::start_with_saga(platform_tests::quick_policy()).await;
    platform.create_product("MUG", 1250, 20).await;
    platform.create_product("TEA", 400, 20).await;
    let mut ids = Vec::new();
    for token in [
        "tok_visa",
        "tok_visa",
        "tok_declined",
        "tok_visa",
        "tok_flaky",
    ] {
        let body = json!({"customer_id": "c-1", "lines": [{"sku": "MUG", "quantity": 1}, {"sku": "TEA", "quantity": 2}], "payment_method": token});
        let placed = platform.command("/api/orders", &body, 202).await;
        ids.push(placed["order_id"].as_str().unwrap().to_owned());
    }
    all_sagas_done(&platform, 5).await;
    platform
        .command(
            &format!("/api/orders/{}/cancel", ids[3]),
            &json!({"reason": "arrived broken"}),
            202,
        )
        .await;
    // The cancel reopens the saga; wait for it to be taken in and finished.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let state: String = sqlx::query_scalar("SELECT state FROM sagas WHERE order_id = $1")
            .bind(&ids[3])
            .fetch_one(&platform.pool)
            .await
            .unwrap();
        if state == "CANCELLED" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    all_sagas_done(&platform, 5).await;
    let (confirmed, cancelled) = (ids[0].clone(), ids[3].clone());
    (platform, gateway, confirmed, cancelled)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balanced_books_pass_and_every_kind_of_broken_book_is_reported() {
    let (platform, gateway, confirmed, cancelled) = settled_books().await;
    let report = audit_settled(&platform.pool, &gateway.access(), Duration::from_secs(15))
        .await
        .unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(
        (
            report.orders,
            report.confirmed,
            report.cancelled,
            report.open
        ),
        (5, 3, 2, 0),
        "{report}"
    );
    assert!(report.rows > 0 && report.charges == 5, "{report}");

    let broken = |pattern: &'static str| {
        let pool = platform.pool.clone();
        let access = gateway.access();
        async move {
            let report = audit(&pool, &access).await.unwrap();
            assert!(
                report.violations.iter().any(|v| v.contains(pattern)),
                "no violation mentions {pattern:?}: {report}"
            );
        }
    };

    // The gateway took money of a confirmed order that nothing shipped.
    let gateway_pool = gateway.database.pool(1).await.unwrap();
    sqlx::query("UPDATE authorizations SET captured_cents = 100 WHERE key = $1")
        .bind(authorization_key(&confirmed, 1))
        .execute(&gateway_pool)
        .await
        .unwrap();
    broken("the gateway captured 100 and refunded 0, the ledger 0 and 0").await;

    // The gateway still holds the authorization of a cancelled order.
    sqlx::query("UPDATE authorizations SET status = 'authorized' WHERE key = $1")
        .bind(authorization_key(&cancelled, 1))
        .execute(&gateway_pool)
        .await
        .unwrap();
    broken("still has authorization").await;

    // A read model row that is not the fold of its events.
    sqlx::query("UPDATE product_stock SET on_hand = on_hand + 1 WHERE sku = 'MUG'")
        .execute(&platform.pool)
        .await
        .unwrap();
    broken("product_stock row MUG differs").await;

    // A unit reserved for a cancelled order, and an approval recorded twice,
    // written behind the domain's back.
    for (aggregate, id, event_type, payload) in [
        (
            "Product",
            "TEA",
            "StockReserved",
            json!({"StockReserved": {"order_id": cancelled, "quantity": 1}}),
        ),
        (
            "Payment",
            confirmed.as_str(),
            "PaymentAuthorized",
            json!({"PaymentAuthorized": {"attempt": 1, "provider_reference": "again", "expires_at": null}}),
        ),
    ] {
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
             SELECT $1, $2, max(sequence) + 1, $3, '1.0', $4, '{}' FROM events
              WHERE aggregate_type = $1 AND aggregate_id = $2",
        )
        .bind(aggregate)
        .bind(id)
        .bind(event_type)
        .bind(payload)
        .execute(&platform.pool)
        .await
        .unwrap();
    }
    broken("holds 1 reserved units of TEA, expected 0").await;
    broken("recorded authorization 1 2 times").await;
    platform.stop().await;
}
