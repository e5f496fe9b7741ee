//! A shop's whole order lifecycle through the API, the saga and the real
//! payment gateway: authorize at placement, ship in parts (each capturing
//! what it ships), deliver, return and refund; cancels after a partial
//! shipment, declined captures and expired authorizations. Every case ends
//! with `orders audit` clean.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::time::Duration;

use identity::testing;
use orders_cli::audit::audit_settled;
use platform_tests::{TestGateway, TestPlatform};
use serde_json::{Value, json};

const WITHIN: Duration = Duration::from_secs(30);

const ORDER: &str = "query($id: ID!) { order(id: $id) { status totalCents authorizedCents \
     capturedCents refundedCents \
     shipments { id status carrier trackingNumber failure lines { sku quantity } } \
     returns { id status refundCents restocked lines { sku quantity } } \
     saga { state } } }";

const STOCK: &str = "query($sku: String!) { product(sku: $sku) { onHand reserved available } }";

async fn started() -> (TestPlatform, TestGateway) {
    let (platform, gateway) = TestPlatform::start_with_saga(platform_tests::quick_policy()).await;
    platform.create_product("MUG", 1250, 10).await;
    platform.create_product("TEA", 400, 10).await;
    (platform, gateway)
}

/// Places 2 MUG and 1 TEA (2900) as `client` and waits until it is confirmed.
async fn confirmed(platform: &TestPlatform, client: &reqwest::Client, token: &str) -> String {
    let body = json!({"lines": [{"sku": "MUG", "quantity": 2}, {"sku": "TEA", "quantity": 1}],
                      "payment_method": token});
    let placed: Value = client
        .post(platform.url("/api/orders"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = placed["order_id"].as_str().unwrap().to_owned();
    order_where(platform, &id, |order| order["status"] == "CONFIRMED").await;
    id
}

/// The order once `accept` takes it (bounded).
async fn order_where(platform: &TestPlatform, id: &str, accept: impl Fn(&Value) -> bool) -> Value {
    platform
        .eventually(ORDER, json!({"id": id}), WITHIN, |data| {
            let order = &data["order"];
            (!order.is_null() && accept(order)).then(|| order.clone())
        })
        .await
}

async fn stock(platform: &TestPlatform, sku: &str, on_hand: i64, reserved: i64) {
    platform
        .eventually(STOCK, json!({"sku": sku}), WITHIN, |data| {
            let product = &data["product"];
            (product["onHand"] == on_hand && product["reserved"] == reserved).then_some(())
        })
        .await;
}

async fn ship(platform: &TestPlatform, id: &str, lines: Value) -> String {
    let body = json!({"lines": lines, "carrier": "DHL", "tracking_number": "JD0146"});
    let accepted = platform
        .command(&format!("/api/orders/{id}/shipments"), &body, 202)
        .await;
    accepted["shipment_id"].as_str().unwrap().to_owned()
}

fn shipment<'a>(order: &'a Value, shipment_id: &str) -> &'a Value {
    order["shipments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == shipment_id)
        .unwrap_or(&Value::Null)
}

async fn gateway_authorization(gateway: &TestGateway, key: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{}/authorizations/{key}", gateway.url))
        .bearer_auth(platform::testing::gateway_token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn audit_clean(platform: &TestPlatform, gateway: &TestGateway) {
    let report = audit_settled(&platform.pool, &gateway.access(), Duration::from_secs(15))
        .await
        .unwrap();
    assert!(report.is_clean(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_ships_in_two_parts_is_delivered_returned_and_refunded() {
    let (platform, gateway) = started().await;
    let alice = testing::client("alice", "orders");
    let id = confirmed(&platform, &alice, "tok_visa").await;

    // Confirmed: the total is held, nothing taken, the units reserved.
    let order = order_where(&platform, &id, |o| o["authorizedCents"] == 2900).await;
    assert_eq!(
        (
            order["capturedCents"].clone(),
            order["refundedCents"].clone()
        ),
        (json!(0), json!(0))
    );
    stock(&platform, "MUG", 10, 2).await;

    // The first part captures its value and takes its unit out of stock.
    let first = ship(&platform, &id, json!([{"sku": "MUG", "quantity": 1}])).await;
    let order = order_where(&platform, &id, |o| o["status"] == "PARTIALLY_SHIPPED").await;
    assert_eq!(shipment(&order, &first)["status"], "SHIPPED");
    assert_eq!(order["capturedCents"], 1250);
    stock(&platform, "MUG", 9, 1).await;

    let second = ship(
        &platform,
        &id,
        json!([{"sku": "MUG", "quantity": 1}, {"sku": "TEA", "quantity": 1}]),
    )
    .await;
    let order = order_where(&platform, &id, |o| o["status"] == "SHIPPED").await;
    assert_eq!(order["capturedCents"], 2900);
    assert_eq!(order["saga"]["state"], "CONFIRMED");
    stock(&platform, "MUG", 8, 0).await;
    stock(&platform, "TEA", 9, 0).await;
    // Nothing more is left to ship.
    let more = platform
        .post(
            &format!("/api/orders/{id}/shipments"),
            &json!({"lines": [{"sku": "TEA", "quantity": 1}], "carrier": "DHL", "tracking_number": "X"}),
        )
        .await;
    assert_eq!(more.status(), 409);

    for shipment_id in [&first, &second] {
        platform
            .command(
                &format!("/api/orders/{id}/shipments/{shipment_id}/delivered"),
                &json!({}),
                202,
            )
            .await;
    }
    order_where(&platform, &id, |o| o["status"] == "DELIVERED").await;
    // A fully shipped order is returned, not cancelled.
    let cancel = alice
        .post(platform.url(&format!("/api/orders/{id}/cancel")))
        .json(&json!({"reason": "too late"}))
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 409);

    // Only the customer (or an administrator) returns the order.
    let body = json!({"lines": [{"sku": "MUG", "quantity": 1}], "reason": "chipped"});
    let bob = testing::client("bob", "orders");
    let theirs = bob
        .post(platform.url(&format!("/api/orders/{id}/returns")))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(theirs.status(), 404);
    let requested: Value = alice
        .post(platform.url(&format!("/api/orders/{id}/returns")))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let return_id = requested["return_id"].as_str().unwrap().to_owned();
    // Receiving is the warehouse's: not the customer's.
    let receive = format!("/api/orders/{id}/returns/{return_id}/receive");
    let by_alice = alice
        .post(platform.url(&receive))
        .json(&json!({"restock": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(by_alice.status(), 403);
    platform
        .command(&receive, &json!({"restock": true}), 202)
        .await;
    platform
        .command(&receive, &json!({"restock": true}), 409)
        .await;

    let order = order_where(&platform, &id, |o| o["refundedCents"] == 1250).await;
    assert_eq!(order["status"], "DELIVERED", "returns keep the status");
    assert_eq!(order["returns"][0]["status"], "RECEIVED");
    assert_eq!(order["returns"][0]["restocked"], true);
    stock(&platform, "MUG", 9, 0).await;

    let held = gateway_authorization(&gateway, &format!("order-{id}-auth-1")).await;
    assert_eq!(
        (
            held["captured_cents"].clone(),
            held["refunded_cents"].clone()
        ),
        (json!(2900), json!(1250))
    );
    audit_clean(&platform, &gateway).await;
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_after_a_partial_shipment_keeps_what_shipped_and_voids_the_rest() {
    let (platform, gateway) = started().await;
    let alice = testing::client("alice", "orders");
    let id = confirmed(&platform, &alice, "tok_visa").await;
    ship(&platform, &id, json!([{"sku": "MUG", "quantity": 1}])).await;
    order_where(&platform, &id, |o| o["status"] == "PARTIALLY_SHIPPED").await;

    let cancel = alice
        .post(platform.url(&format!("/api/orders/{id}/cancel")))
        .json(&json!({"reason": "the rest is not needed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 202);
    // What shipped stays paid; the rest of the hold is released.
    let order = order_where(&platform, &id, |o| {
        o["saga"]["state"] == "CANCELLED" && o["authorizedCents"] == 1250
    })
    .await;
    assert_eq!(order["status"], "CANCELLED");
    assert_eq!(order["capturedCents"], 1250);
    stock(&platform, "MUG", 9, 0).await;
    stock(&platform, "TEA", 10, 0).await;
    let held = gateway_authorization(&gateway, &format!("order-{id}-auth-1")).await;
    assert_eq!(held["status"], "voided");
    assert_eq!(held["captured_cents"], 1250);
    audit_clean(&platform, &gateway).await;
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_capture_fails_the_shipment_and_keeps_the_units_reserved() {
    let (platform, gateway) = started().await;
    let alice = testing::client("alice", "orders");
    let id = confirmed(&platform, &alice, "tok_capture_declined").await;
    let shipment_id = ship(&platform, &id, json!([{"sku": "MUG", "quantity": 2}])).await;
    let order = order_where(&platform, &id, |o| {
        shipment(o, &shipment_id)["status"] == "FAILED"
    })
    .await;
    assert_eq!(
        shipment(&order, &shipment_id)["failure"],
        "the card's issuer refused the capture"
    );
    // The customer reads a public reason, not the provider's words.
    let query = "query($id: ID!) { order(id: $id) { \
         shipments { id status failure lines { sku quantity } } \
         history { eventType payload } } }";
    let seen: Value = alice
        .post(platform.url("/graphql"))
        .json(&json!({"query": query, "variables": {"id": id}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        shipment(&seen["data"]["order"], &shipment_id)["failure"],
        "payment declined"
    );
    let history = seen["data"]["order"]["history"].as_array().unwrap();
    let failed = history
        .iter()
        .find(|event| event["eventType"] == "ShipmentFailed")
        .expect("the failure is in the order's history");
    assert_eq!(failed["payload"]["reason"], "payment declined");
    assert!(
        !seen.to_string().contains("issuer"),
        "the provider's words reached the customer: {seen}"
    );
    assert_eq!(order["status"], "CONFIRMED");
    assert_eq!(order["capturedCents"], 0);
    stock(&platform, "MUG", 10, 2).await;
    audit_clean(&platform, &gateway).await;

    // The operator cancels: the reservation goes back, the hold is voided.
    platform
        .command(
            &format!("/api/orders/{id}/cancel"),
            &json!({"reason": "card refused"}),
            202,
        )
        .await;
    order_where(&platform, &id, |o| o["saga"]["state"] == "CANCELLED").await;
    stock(&platform, "MUG", 10, 0).await;
    audit_clean(&platform, &gateway).await;
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_authorization_is_renewed_for_what_is_left_when_the_order_ships() {
    let (platform, gateway) = started().await;
    let id = confirmed(&platform, &platform.client, "tok_expiring").await;
    ship(&platform, &id, json!([{"sku": "TEA", "quantity": 1}])).await;
    order_where(&platform, &id, |o| o["capturedCents"] == 400).await;
    // The first hold expires (the gateway says when).
    let first = format!("order-{id}-auth-1");
    let deadline = tokio::time::Instant::now() + WITHIN;
    while gateway_authorization(&gateway, &first).await["status"] != "expired" {
        assert!(tokio::time::Instant::now() < deadline, "never expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ship(&platform, &id, json!([{"sku": "MUG", "quantity": 2}])).await;
    let order = order_where(&platform, &id, |o| o["status"] == "SHIPPED").await;
    assert_eq!(order["capturedCents"], 2900);
    let second = gateway_authorization(&gateway, &format!("order-{id}-auth-2")).await;
    assert_eq!(second["amount_cents"], 2500, "what was left to capture");
    assert_eq!(second["captured_cents"], 2500);
    audit_clean(&platform, &gateway).await;
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipments_and_returns_are_refused_clearly_and_change_nothing() {
    let (platform, gateway) = started().await;
    let alice = testing::client("alice", "orders");
    let id = confirmed(&platform, &alice, "tok_visa").await;
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&platform.pool)
        .await
        .unwrap();
    let shipments = format!("/api/orders/{id}/shipments");
    let cases = [
        (
            json!({"lines": [], "carrier": "DHL", "tracking_number": "1"}),
            422,
            "lines",
        ),
        (
            json!({"lines": [{"sku": "MUG", "quantity": 0}], "carrier": "DHL", "tracking_number": "1"}),
            422,
            "lines[0].quantity",
        ),
        (
            json!({"lines": [{"sku": "MUG", "quantity": 1}], "carrier": " ", "tracking_number": "1"}),
            422,
            "carrier",
        ),
        (
            json!({"lines": [{"sku": "MUG", "quantity": 1}], "carrier": "DHL"}),
            422,
            "",
        ),
        (
            json!({"lines": [{"sku": "MUG", "quantity": 3}], "carrier": "DHL", "tracking_number": "1"}),
            409,
            "lines[0]",
        ),
        (
            json!({"lines": [{"sku": "CUP", "quantity": 1}], "carrier": "DHL", "tracking_number": "1"}),
            409,
            "lines[0]",
        ),
    ];
    for (body, status, mentions) in cases {
        let answer = platform.post(&shipments, &body).await;
        assert_eq!(answer.status(), status, "{body}");
        let problem: Value = answer.json().await.unwrap();
        assert!(problem.to_string().contains(mentions), "{body}: {problem}");
    }
    // A customer does not ship, nor mark delivered.
    let by_alice = alice
        .post(platform.url(&shipments))
        .json(&json!({"lines": [{"sku": "MUG", "quantity": 1}], "carrier": "DHL", "tracking_number": "1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(by_alice.status(), 403);
    // Unknown orders, shipments and returns are 404.
    let nobody = "0190a0b0-0000-7000-8000-00000000dead";
    for path in [
        format!("/api/orders/{nobody}/shipments/{nobody}/delivered"),
        format!("/api/orders/{id}/shipments/{nobody}/delivered"),
        format!("/api/orders/{id}/shipments/not-a-uuid/delivered"),
        format!("/api/orders/{id}/returns/{nobody}/receive"),
    ] {
        let body = if path.ends_with("receive") {
            json!({"restock": true})
        } else {
            json!({})
        };
        assert_eq!(platform.post(&path, &body).await.status(), 404, "{path}");
    }
    // Nothing was delivered, so nothing can be returned.
    let answer = alice
        .post(platform.url(&format!("/api/orders/{id}/returns")))
        .json(&json!({"lines": [{"sku": "MUG", "quantity": 1}], "reason": "no"}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 409);
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&platform.pool)
        .await
        .unwrap();
    assert_eq!(after, before, "a refused request appended");

    // A retried shipment (same Idempotency-Key) is one shipment.
    let body =
        json!({"lines": [{"sku": "MUG", "quantity": 1}], "carrier": "DHL", "tracking_number": "1"});
    let mut shipped = Vec::new();
    for _ in 0..2 {
        let answer: Value = platform
            .client
            .post(platform.url(&shipments))
            .header("Idempotency-Key", "ship-1")
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        shipped.push(answer["shipment_id"].clone());
    }
    assert_eq!(shipped[0], shipped[1]);
    let order = order_where(&platform, &id, |o| o["status"] == "PARTIALLY_SHIPPED").await;
    assert_eq!(order["shipments"].as_array().unwrap().len(), 1);
    audit_clean(&platform, &gateway).await;
    platform.stop().await;
}
