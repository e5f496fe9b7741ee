//! The order saga on real services: each path from placement to a final
//! state, seen through REST, GraphQL and the payment gateway simulator.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::collections::HashMap;
use std::time::Duration;

use platform_tests::TestGateway;
use platform_tests::TestPlatform;
use saga_orchestrator::driver::{Policy, authorization_key, charge_key};
use serde_json::{Value, json};

const WITHIN: Duration = Duration::from_secs(30);

const ORDER: &str = "query($id: ID!) { order(id: $id) { status cancellationReason } }";
const PRODUCT: &str = "query($sku: String!) { product(sku: $sku) { onHand reserved available } }";

fn order(lines: &[(&str, i64)], token: &str) -> Value {
    json!({
        "customer_id": "customer-1",
        "lines": lines.iter().map(|(sku, quantity)| json!({"sku": sku, "quantity": quantity})).collect::<Vec<_>>(),
        "payment_method": token,
    })
}

async fn place(platform: &TestPlatform, lines: &[(&str, i64)], token: &str) -> String {
    let placed = platform
        .command("/api/orders", &order(lines, token), 202)
        .await;
    placed["order_id"].as_str().unwrap().to_owned()
}

/// The customer cancels the order over REST.
async fn cancel(platform: &TestPlatform, order_id: &str, reason: &str) {
    platform
        .command(
            &format!("/api/orders/{order_id}/cancel"),
            &json!({"reason": reason}),
            202,
        )
        .await;
}

/// Waits until the order's saga has nothing left to do.
async fn settled(platform: &TestPlatform, order_id: &str) {
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let done: Option<bool> = sqlx::query_scalar("SELECT done FROM sagas WHERE order_id = $1")
            .bind(order_id)
            .fetch_optional(&platform.pool)
            .await
            .unwrap();
        if done == Some(true) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "saga of {order_id} not done"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The order's status and cancellation reason, once the read side shows `status`.
async fn order_ends(platform: &TestPlatform, order_id: &str, status: &str) -> Value {
    platform
        .eventually(ORDER, json!({"id": order_id}), WITHIN, |data| {
            (data["order"]["status"] == status).then(|| data["order"]["cancellationReason"].clone())
        })
        .await
}

/// Waits until the product shows `on_hand` and `reserved`.
async fn stock_is(platform: &TestPlatform, sku: &str, on_hand: i64, reserved: i64) {
    platform
        .eventually(PRODUCT, json!({"sku": sku}), WITHIN, |data| {
            let product = &data["product"];
            (product["onHand"] == on_hand && product["reserved"] == reserved).then_some(())
        })
        .await;
}

/// The order's saga as GraphQL shows it.
const SAGA: &str = "query($id: ID!) { order(id: $id) { saga { state needsAttention steps { name status detail } } } }";

/// Waits until the order's saga needs attention, and returns it as GraphQL shows it.
async fn flagged(platform: &TestPlatform, order_id: &str) -> Value {
    platform
        .eventually(SAGA, json!({"id": order_id}), WITHIN, |data| {
            let saga = &data["order"]["saga"];
            (saga["needsAttention"] == true).then(|| saga.clone())
        })
        .await
}

/// The saga ended, the order is cancelled for `reason`, every product is back
/// at its stock with nothing reserved, and the gateway holds no money.
async fn ends_cancelled_holding_nothing(
    platform: &TestPlatform,
    gateway: &TestGateway,
    id: &str,
    reason: &str,
    stock: &[(&str, i64)],
) {
    settled(platform, id).await;
    assert_eq!(order_ends(platform, id, "CANCELLED").await, reason);
    for (sku, on_hand) in stock {
        stock_is(platform, sku, *on_hand, 0).await;
    }
    assert!(gateway.captured().await.is_empty());
}

/// Places a `tok_visa` order and waits until its saga confirmed it.
async fn confirmed(platform: &TestPlatform, lines: &[(&str, i64)]) -> String {
    let id = place(platform, lines, "tok_visa").await;
    settled(platform, &id).await;
    order_ends(platform, &id, "CONFIRMED").await;
    id
}

/// A confirmed order the customer cancelled: the cancel reopens the saga,
/// which releases the stock (`sku` back at `on_hand`, nothing reserved) and
/// voids the authorization.
async fn undone_after_confirmation(
    platform: &TestPlatform,
    gateway: &TestGateway,
    id: &str,
    reason: &str,
    (sku, on_hand): (&str, i64),
) {
    platform
        .eventually(PRODUCT, json!({"sku": sku}), WITHIN, |data| {
            (data["product"]["onHand"] == on_hand).then_some(())
        })
        .await;
    ends_cancelled_holding_nothing(platform, gateway, id, reason, &[(sku, on_hand)]).await;
}

async fn start(policy: Policy) -> (TestPlatform, TestGateway) {
    TestPlatform::start_with_saga(policy).await
}

use platform_tests::quick_policy as quick;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorized_payment_confirms_the_order_and_keeps_the_stock_reserved() {
    let (platform, gateway) = start(quick()).await;
    platform.create_product("MUG", 1250, 10).await;
    platform.create_product("TEA", 499, 10).await;

    let id = place(&platform, &[("MUG", 2), ("TEA", 1)], "tok_visa").await;

    settled(&platform, &id).await;
    assert!(order_ends(&platform, &id, "CONFIRMED").await.is_null());
    // The saga's row was written three times: stored, saved before the
    // charge (whose deadline must outlive a crash) and at the end, which
    // also gave the lease up. The steps between are found again by their
    // keys after a crash.
    let (writes, free): (i64, bool) =
        sqlx::query_as("SELECT version, leased_until IS NULL FROM sagas WHERE order_id = $1")
            .bind(&id)
            .fetch_one(&platform.pool)
            .await
            .unwrap();
    assert_eq!((writes, free), (3, true));
    // Nothing is sold until it ships: the units stay reserved, the total
    // is held and nothing is captured.
    stock_is(&platform, "MUG", 10, 2).await;
    stock_is(&platform, "TEA", 10, 1).await;
    assert_eq!(gateway.captured().await, vec![authorization_key(&id, 1)]);
    assert_eq!(
        payment_events(&platform, &id).await,
        ["AuthorizationRequested", "PaymentAuthorized"]
    );
    // The gateway is a service of its own: the public API has no route to it.
    for path in [
        "/gateway/charges",
        &format!("/gateway/charges/{}/refund", charge_key(&id)),
    ] {
        let answer = platform.post(path, &json!({})).await;
        assert_eq!(answer.status(), 404, "{path}");
    }

    let saga = platform
        .graphql(
            "query($id: ID!) { order(id: $id) { saga { state needsAttention updatedAt steps { name status at detail } } } }",
            json!({"id": id}),
        )
        .await;
    let saga = &saga["data"]["order"]["saga"];
    assert_eq!(saga["state"], "CONFIRMED");
    assert_eq!(saga["needsAttention"], false);
    let steps: Vec<(&str, &str)> = saga["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|step| {
            (
                step["name"].as_str().unwrap(),
                step["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("reserve MUG", "DONE"),
            ("reserve TEA", "DONE"),
            ("request charge", "DONE"),
            ("charge", "DONE"),
            ("confirm order", "DONE"),
        ]
    );
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_payment_cancels_the_order_and_releases_the_stock() {
    let (platform, gateway) = start(quick()).await;
    platform.create_product("MUG", 1250, 10).await;

    let id = place(&platform, &[("MUG", 3)], "tok_declined").await;

    ends_cancelled_holding_nothing(&platform, &gateway, &id, "payment declined", &[("MUG", 10)])
        .await;
    let saga = platform
        .graphql(
            "query($id: ID!) { order(id: $id) { saga { state steps { name status detail } } } }",
            json!({"id": id}),
        )
        .await;
    let saga = &saga["data"]["order"]["saga"];
    assert_eq!(saga["state"], "CANCELLED");
    let steps = saga["steps"].as_array().unwrap();
    assert_eq!(steps[2]["name"], "charge");
    assert_eq!(steps[2]["status"], "REFUSED");
    assert_eq!(steps[2]["detail"], "card declined");
    assert_eq!(steps.last().unwrap()["name"], "cancel order");
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_line_out_of_stock_cancels_and_releases_the_other_lines() {
    let (platform, gateway) = start(quick()).await;
    platform.create_product("MUG", 1250, 10).await;
    platform.create_product("TEA", 499, 1).await;

    let id = place(&platform, &[("MUG", 2), ("TEA", 3)], "tok_visa").await;

    ends_cancelled_holding_nothing(
        &platform,
        &gateway,
        &id,
        "out of stock: TEA",
        &[("MUG", 10), ("TEA", 1)],
    )
    .await;
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flaky_gateway_is_retried_until_it_approves() {
    let (platform, gateway) = start(quick()).await;
    platform.create_product("MUG", 1250, 10).await;

    let id = place(&platform, &[("MUG", 1)], "tok_flaky").await;

    settled(&platform, &id).await;
    order_ends(&platform, &id, "CONFIRMED").await;
    stock_is(&platform, "MUG", 10, 1).await;
    assert_eq!(gateway.captured().await, vec![authorization_key(&id, 1)]);
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_never_answers_times_out_into_compensation() {
    let (platform, gateway) = start(quick()).await;
    platform.create_product("MUG", 1250, 10).await;

    let id = place(&platform, &[("MUG", 4)], "tok_timeout").await;

    ends_cancelled_holding_nothing(
        &platform,
        &gateway,
        &id,
        "payment timed out",
        &[("MUG", 10)],
    )
    .await;
    // Nothing was held: the authorization, voided, is closed as voided.
    assert_eq!(
        payment_events(&platform, &id).await,
        ["AuthorizationRequested", "AuthorizationVoided"]
    );
    assert_eq!(
        gateway.authorizations().await[&authorization_key(&id, 1)],
        "voided"
    );
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_cancel_in_flight_stops_the_saga_and_undoes_it() {
    // The gateway hangs far longer than the test waits: the cancel must not
    // wait for the payment deadline.
    let policy = Policy {
        payment_deadline: Duration::from_secs(600),
        ..quick()
    };
    let (platform, gateway) = start(policy).await;
    platform.create_product("MUG", 1250, 10).await;
    let id = place(&platform, &[("MUG", 2)], "tok_timeout").await;
    stock_is(&platform, "MUG", 10, 2).await;

    cancel(&platform, &id, "found it cheaper").await;

    ends_cancelled_holding_nothing(&platform, &gateway, &id, "found it cheaper", &[("MUG", 10)])
        .await;
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_cancel_after_confirmation_voids_and_releases_the_stock() {
    let (platform, gateway) = start(quick()).await;
    platform.create_product("MUG", 1250, 10).await;
    let id = confirmed(&platform, &[("MUG", 2)]).await;
    stock_is(&platform, "MUG", 10, 2).await;

    cancel(&platform, &id, "arrived broken").await;

    // The cancel reopens the saga; wait for it to pick the cancel up.
    undone_after_confirmation(&platform, &gateway, &id, "arrived broken", ("MUG", 10)).await;
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_orders_for_the_last_five_units_confirm_exactly_five() {
    let (platform, gateway) = start(quick()).await;
    platform.create_product("MUG", 1250, 5).await;

    let placing = (0..20).map(|_| place(&platform, &[("MUG", 1)], "tok_visa"));
    let ids = futures::future::join_all(placing).await;
    for id in &ids {
        settled(&platform, id).await;
    }

    let mut confirmed = 0;
    for id in &ids {
        let status = platform
            .eventually(ORDER, json!({"id": id}), WITHIN, |data| {
                let status = data["order"]["status"].as_str()?;
                (status != "PLACED").then(|| status.to_owned())
            })
            .await;
        if status == "CONFIRMED" {
            confirmed += 1;
        } else {
            assert_eq!(status, "CANCELLED");
        }
    }
    assert_eq!(confirmed, 5);
    stock_is(&platform, "MUG", 5, 5).await;
    assert_eq!(gateway.captured().await.len(), 5);
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorization_that_arrives_after_the_deadline_is_voided() {
    // tok_slow is approved at once, but the answer takes longer than the
    // saga waits.
    let policy = Policy {
        payment_deadline: Duration::from_millis(800),
        ..quick()
    };
    let (platform, gateway) = start(policy).await;
    platform.create_product("MUG", 1250, 10).await;

    let id = place(&platform, &[("MUG", 2)], "tok_slow").await;

    settled(&platform, &id).await;
    assert_eq!(
        order_ends(&platform, &id, "CANCELLED").await,
        "payment timed out"
    );
    stock_is(&platform, "MUG", 10, 0).await;
    let authorizations: HashMap<String, String> = gateway.authorizations().await;
    assert_eq!(authorizations[&authorization_key(&id, 1)], "voided");
    assert!(gateway.captured().await.is_empty());
    // The late hold is released, and the ledger closes it.
    assert_eq!(
        payment_events(&platform, &id).await,
        ["AuthorizationRequested", "AuthorizationVoided"]
    );
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undo_that_keeps_failing_is_flagged_retried_and_finished() {
    let policy = Policy {
        attention_after: 3,
        ..quick()
    };
    let (platform, mut gateway) = start(policy).await;
    platform.create_product("MUG", 1250, 10).await;
    let id = confirmed(&platform, &[("MUG", 2)]).await;

    gateway.outage().await;
    cancel(&platform, &id, "arrived broken").await;
    let flagged = flagged(&platform, &id).await;
    assert_eq!(flagged["state"], "COMPENSATING");
    let failed_refunds = flagged["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|step| step["name"] == "refund" && step["status"] == "FAILED")
        .count();
    assert!(failed_refunds >= 3, "{flagged:#}");
    // The census counts it within a few seconds.
    metrics_show(
        &platform,
        &[
            "sagas_needing_attention 1",
            "sagas{state=\"COMPENSATING\"} 1",
        ],
    )
    .await;

    // The gateway recovers: the saga finishes the undo and the flag clears.
    gateway.resume(&platform).await;
    settled(&platform, &id).await;
    let done = platform.graphql(SAGA, json!({"id": id})).await;
    assert_eq!(done["data"]["order"]["saga"]["state"], "CANCELLED");
    assert_eq!(done["data"]["order"]["saga"]["needsAttention"], false);
    assert_eq!(
        order_ends(&platform, &id, "CANCELLED").await,
        "arrived broken"
    );
    stock_is(&platform, "MUG", 10, 0).await;
    assert!(gateway.captured().await.is_empty());
    // The census counts sagas not done, so a state none is in reads 0; the
    // saga was counted as it ended, confirmed and then cancelled. (Metrics
    // are one registry per test process, which other tests write too.)
    metrics_show(
        &platform,
        &[
            "sagas_needing_attention 0",
            "sagas{state=\"COMPENSATING\"} 0",
            "sagas_ended_total{state=\"CONFIRMED\"}",
            "sagas_ended_total{state=\"CANCELLED\"}",
        ],
    )
    .await;
    platform.stop().await;
}

/// The order's saga steps as its customer (`customer-1`, scope `orders`)
/// reads them over GraphQL.
async fn steps_seen_by_the_customer(platform: &TestPlatform, id: &str) -> Vec<Value> {
    let answer: Value = identity::testing::client("customer-1", "orders")
        .post(platform.url("/graphql"))
        .json(&json!({"query": SAGA, "variables": {"id": id}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["data"]["order"]["saga"]["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("the customer reads the saga: {answer:#}"))
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customers_read_public_reasons_where_operators_read_what_was_recorded() {
    let policy = Policy {
        attention_after: 2,
        ..quick()
    };
    let (platform, mut gateway) = start(policy).await;
    platform.create_product("MUG", 1250, 10).await;

    // A decline: the operator reads the card network's reason, the customer
    // a stable one.
    let declined = place(&platform, &[("MUG", 1)], "tok_declined").await;
    settled(&platform, &declined).await;
    let charge = |steps: &[Value]| {
        steps
            .iter()
            .find(|step| step["name"] == "charge")
            .cloned()
            .unwrap()
    };
    let admin = platform.graphql(SAGA, json!({"id": declined})).await;
    let admin_steps = admin["data"]["order"]["saga"]["steps"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(charge(&admin_steps)["detail"], "card declined");
    let customer_steps = steps_seen_by_the_customer(&platform, &declined).await;
    assert_eq!(charge(&customer_steps)["detail"], "payment declined");

    // An undo that fails while the gateway is down: the operator reads the
    // client's error (the gateway's address, the system's words), the
    // customer only that it is being retried.
    let id = confirmed(&platform, &[("MUG", 2)]).await;
    gateway.outage().await;
    cancel(&platform, &id, "arrived broken").await;
    let flagged = flagged(&platform, &id).await;
    let failed = |steps: &[Value]| -> Vec<Value> {
        steps
            .iter()
            .filter(|step| step["name"] == "refund" && step["status"] == "FAILED")
            .cloned()
            .collect()
    };
    let recorded = failed(flagged["steps"].as_array().unwrap());
    assert!(!recorded.is_empty(), "{flagged:#}");
    assert!(
        recorded
            .iter()
            .all(|step| step["detail"].as_str().unwrap() != "failed for now; tried again"),
        "{recorded:#?}"
    );
    let seen = steps_seen_by_the_customer(&platform, &id).await;
    let seen_failed = failed(&seen);
    assert!(!seen_failed.is_empty(), "{seen:#?}");
    let public: std::collections::HashSet<&str> = saga_orchestrator::saga::PUBLIC_REASONS
        .iter()
        .copied()
        .collect();
    for step in &seen {
        if let Some(detail) = step["detail"].as_str() {
            assert!(
                public.contains(detail),
                "the customer read {detail:?}: {seen:#?}"
            );
        }
    }
    for step in &seen_failed {
        assert_eq!(step["detail"], "failed for now; tried again");
    }

    // An operator abandons it: the customer does not read who or why.
    abandon(
        &platform,
        &id,
        "settled with the provider, ticket 7",
        "dave",
    )
    .await
    .unwrap();
    let seen = steps_seen_by_the_customer(&platform, &id).await;
    let last = seen.last().unwrap();
    assert_eq!(last["name"], "abandoned");
    assert_eq!(last["detail"], "stopped by an operator");
    let text = serde_json::to_string(&seen).unwrap();
    for secret in ["dave", "ticket", "127.0.0.1", "os error", "http"] {
        assert!(
            !text.contains(secret),
            "the customer read {secret:?}: {text}"
        );
    }
    gateway.resume(&platform).await;
    platform.stop().await;
}

/// Waits until the platform's metrics hold every one of `lines`.
async fn metrics_show(platform: &TestPlatform, lines: &[&str]) {
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let metrics = platform
            .client
            .get(platform.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if lines.iter().all(|line| metrics.contains(line)) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{lines:?} in {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The order's Payment events, oldest first.
async fn payment_events(platform: &TestPlatform, order_id: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT event_type FROM events WHERE aggregate_type = 'Payment' AND aggregate_id = $1
          ORDER BY sequence",
    )
    .bind(order_id)
    .fetch_all(&platform.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_after_the_gateway_restarted_voids_on_both_books() {
    let (platform, mut gateway) = start(quick()).await;
    platform.create_product("MUG", 1250, 10).await;
    let id = confirmed(&platform, &[("MUG", 2)]).await;

    // The gateway restarts; it keeps its ledger in its own database.
    gateway.outage().await;
    gateway.resume(&platform).await;
    cancel(&platform, &id, "arrived broken").await;

    undone_after_confirmation(&platform, &gateway, &id, "arrived broken", ("MUG", 10)).await;
    assert_eq!(
        payment_events(&platform, &id).await,
        [
            "AuthorizationRequested",
            "PaymentAuthorized",
            "AuthorizationVoided"
        ]
    );
    assert_eq!(
        gateway.authorizations().await[&authorization_key(&id, 1)],
        "voided"
    );
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_key_named_after_a_saga_step_blocks_nothing() {
    let (platform, gateway) = start(quick()).await;
    platform.create_product("MUG", 1250, 10).await;
    let id = confirmed(&platform, &[("MUG", 2)]).await;

    // Someone squats the keys of this order's void and stock release.
    for step in ["refund", "voided:1", "release:MUG"] {
        let response = platform
            .client
            .post(platform.url("/api/products/MUG/stock"))
            .header("idempotency-key", format!("saga:{id}:{step}"))
            .json(&json!({"quantity": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
    }
    cancel(&platform, &id, "arrived broken").await;

    undone_after_confirmation(&platform, &gateway, &id, "arrived broken", ("MUG", 13)).await;
    assert_eq!(
        payment_events(&platform, &id)
            .await
            .last()
            .map(String::as_str),
        Some("AuthorizationVoided")
    );
    platform.stop().await;
}

/// A confirmed order whose authorization the provider forgets (the ledger
/// holds it authorized), then shipped: its capture cannot pass. Returns once
/// the saga is flagged, with the saga as GraphQL shows it.
async fn a_shipment_the_gateway_cannot_capture() -> (TestPlatform, TestGateway, String, Value) {
    let (platform, gateway) = start(quick()).await;
    platform.create_product("MUG", 1250, 10).await;
    let id = confirmed(&platform, &[("MUG", 2)]).await;
    let ledger = gateway.database.pool(1).await.unwrap();
    sqlx::query("DELETE FROM authorizations WHERE key = $1")
        .bind(authorization_key(&id, 1))
        .execute(&ledger)
        .await
        .unwrap();
    platform
        .command(
            &format!("/api/orders/{id}/shipments"),
            &json!({"lines": [{"sku": "MUG", "quantity": 2}], "carrier": "DHL", "tracking_number": "1"}),
            202,
        )
        .await;
    let saga = flagged(&platform, &id).await;
    (platform, gateway, id, saga)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_lost_an_authorization_flags_the_capture_instead_of_passing_it() {
    let (platform, gateway, id, flagged) = a_shipment_the_gateway_cannot_capture().await;
    assert_eq!(flagged["state"], "FULFILLING");
    let capture = flagged["steps"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|step| step["name"].as_str().unwrap().starts_with("capture "))
        .unwrap();
    assert_eq!(capture["status"], "FAILED");
    assert_eq!(
        payment_events(&platform, &id).await,
        ["AuthorizationRequested", "PaymentAuthorized"],
        "no capture is recorded for money nobody took"
    );
    // Nothing left the stock, and the shipment waits.
    stock_is(&platform, "MUG", 10, 2).await;
    // The audit does not call these books balanced.
    let report = orders_cli::audit::audit(&platform.pool, &gateway.access())
        .await
        .unwrap();
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.contains(&id) && v.contains("needs attention")),
        "{report}"
    );
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_order_message_goes_to_the_dead_letters_and_blocks_nothing() {
    use rdkafka::Message;

    let (platform, _gateway) = start(quick()).await;
    platform.create_product("MUG", 1250, 10).await;
    let topic = event_contract::Topics::with_prefix(&platform.topics.prefix)
        .for_aggregate("Order")
        .unwrap();
    platform::testing::produce_poison(
        &topic,
        "poison",
        &["not json", r#"{"event_type":"OrderPlaced"}"#],
    )
    .await
    .unwrap();

    let id = place(&platform, &[("MUG", 1)], "tok_visa").await;
    settled(&platform, &id).await;
    order_ends(&platform, &id, "CONFIRMED").await;

    let dead = platform::testing::consume(
        &[event_contract::Topics::dead_letter(&topic)],
        // Two poison messages, refused by the saga and by the two order models.
        6,
        WITHIN,
    )
    .await
    .unwrap();
    let by_saga: Vec<_> = dead
        .iter()
        .filter(|message| {
            platform::testing::header(*message, "consumer").as_deref() == Some("saga")
        })
        .collect();
    assert_eq!(by_saga.len(), 2, "{dead:?}");
    assert!(by_saga.iter().all(|m| m.key() == Some(&b"poison"[..])));
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_order_message_sells_nothing_and_confirms_nothing() {
    let (platform, gateway) = start(quick()).await;
    platform.create_product("MUG", 1250, 10).await;
    let topic = event_contract::Topics::with_prefix(&platform.topics.prefix)
        .for_aggregate("Order")
        .unwrap();
    // An OrderPlaced nobody placed, as the relay would publish it: five mugs
    // for a cent.
    let forged_id = uuid::Uuid::now_v7().to_string();
    let forged = json!({
        "event_id": uuid::Uuid::now_v7(),
        "aggregate_type": "Order",
        "aggregate_id": forged_id,
        "sequence": 1,
        "global_position": 1,
        "event_type": "OrderPlaced",
        "event_version": "1.0",
        "recorded_at": chrono::Utc::now(),
        "payload": {
            "order_id": forged_id, "customer_id": "mallory",
            "lines": [{"sku": "MUG", "quantity": 5, "unit_price_cents": 0}],
            "currency": "EUR", "total_cents": 1, "payment_method": "tok_visa"
        },
        "metadata": {"correlation_id": "forged", "causation_id": "forged"},
    });
    platform::testing::produce_poison(&topic, &forged_id, &[&forged.to_string()])
        .await
        .unwrap();
    // A real order after it goes through: the saga read the forged one
    // before it.
    let id = place(&platform, &[("MUG", 1)], "tok_visa").await;
    settled(&platform, &id).await;
    order_ends(&platform, &id, "CONFIRMED").await;

    // Nothing of the forged order happened: no saga, no stock moved for it,
    // no event appended to it, no charge; its message is a dead letter.
    let saga: i64 = sqlx::query_scalar("SELECT count(*) FROM sagas WHERE order_id = $1")
        .bind(&forged_id)
        .fetch_one(&platform.pool)
        .await
        .unwrap();
    assert_eq!(saga, 0);
    let events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE aggregate_id = $1 OR payload::text LIKE '%' || $1 || '%'",
    )
    .bind(&forged_id)
    .fetch_one(&platform.pool)
    .await
    .unwrap();
    assert_eq!(events, 0);
    stock_is(&platform, "MUG", 10, 1).await;
    assert!(
        !gateway
            .authorizations()
            .await
            .contains_key(&authorization_key(&forged_id, 1)),
        "the forged order was authorized"
    );
    let dead =
        platform::testing::consume(&[event_contract::Topics::dead_letter(&topic)], 3, WITHIN)
            .await
            .unwrap();
    let by_saga = dead
        .iter()
        .find(|message| platform::testing::header(*message, "consumer").as_deref() == Some("saga"))
        .expect("the saga dead-lettered the forged message");
    let error = platform::testing::header(by_saga, "error").unwrap();
    assert!(error.contains("holds no such event"), "{error}");
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_whose_message_never_came_is_still_driven_to_its_end() {
    let (platform, gateway) = TestPlatform::start_with_saga_and(
        quick(),
        &[
            ("ORDERS_SAGA_SWEEP_INTERVAL_MS", "200".into()),
            ("ORDERS_SAGA_SWEEP_GRACE_MS", "1000".into()),
        ],
    )
    .await;
    platform.create_product("MUG", 1250, 10).await;
    // The sweep starts from the store's end as it found it first.
    let deadline = tokio::time::Instant::now() + WITHIN;
    while sqlx::query_scalar::<_, i64>("SELECT count(*) FROM saga_sweep")
        .fetch_one(&platform.pool)
        .await
        .unwrap()
        == 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sweep never ran"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Placements Kafka will never take (larger than any message the broker
    // accepts): the relay notes them in the dead letters and publishes on,
    // so no message wakes their sagas. (Written by hand: the API bounds what
    // an order carries. Any lost message is the same to the saga.)
    let place = |order_id: String| {
        let pool = platform.pool.clone();
        async move {
            sqlx::query(
                "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                     event_version, payload, metadata, event_id)
                 VALUES ('Order', $1, 1, 'OrderPlaced', '1.0',
                         json_build_object('OrderPlaced', json_build_object(
                             'order_id', $1, 'customer_id', 'alice', 'currency', 'EUR',
                             'lines', json_build_array(json_build_object(
                                 'sku', 'MUG', 'quantity', 2, 'unit_price_cents', 1250)),
                             'total_cents', 2500, 'payment_method', 'tok_visa',
                             'padding', repeat('x', 2000000))),
                         '{}'::json, gen_random_uuid())",
            )
            .bind(&order_id)
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    // One the customer cancels before any saga started: it ended, and
    // nothing is reserved or charged for it, now or later.
    let cancelled = uuid::Uuid::now_v7().to_string();
    place(cancelled.clone()).await;
    cancel(&platform, &cancelled, "changed my mind").await;
    let order_id = uuid::Uuid::now_v7().to_string();
    place(order_id.clone()).await;
    // The sweep finds it in the store and starts its saga.
    order_ends(&platform, &order_id, "CONFIRMED").await;
    stock_is(&platform, "MUG", 10, 2).await;
    let authorizations = gateway.authorizations().await;
    assert_eq!(
        authorizations
            .get(&authorization_key(&order_id, 1))
            .map(String::as_str),
        Some("authorized")
    );
    // The sweep passed the cancelled order (placed before) and left it be.
    assert_eq!(authorizations.get(&authorization_key(&cancelled, 1)), None);
    let sagas: i64 = sqlx::query_scalar("SELECT count(*) FROM sagas WHERE order_id = $1")
        .bind(&cancelled)
        .fetch_one(&platform.pool)
        .await
        .unwrap();
    assert_eq!(sagas, 0);
    order_ends(&platform, &cancelled, "CANCELLED").await;
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_finds_a_flagged_saga_looks_at_it_and_retries_it_on_the_record() {
    let policy = Policy {
        attention_after: 3,
        ..quick()
    };
    let (platform, mut gateway) = start(policy).await;
    platform.create_product("MUG", 1250, 10).await;
    let id = confirmed(&platform, &[("MUG", 2)]).await;
    gateway.outage().await;
    cancel(&platform, &id, "arrived broken").await;
    flagged(&platform, &id).await;

    let listed = operations::sagas::needing_attention(&platform.pool)
        .await
        .unwrap();
    let found = listed
        .iter()
        .find(|saga| saga.order_id == id)
        .expect("the flagged saga is listed");
    assert!(found.needs_attention);
    assert_eq!(found.state, "COMPENSATING");
    let shown = operations::sagas::show(&platform.pool, &id)
        .await
        .unwrap()
        .unwrap();
    assert!(shown.actions.is_empty());
    assert!(shown.saga.saga["steps"].as_array().unwrap().len() >= 3);
    // Who retries must be named, and what is retried must exist.
    assert!(
        operations::sagas::retry(&platform.pool, &id, None, " ")
            .await
            .is_err()
    );
    assert!(
        operations::sagas::retry(&platform.pool, "no-such-order", None, "carol")
            .await
            .is_err()
    );

    gateway.resume(&platform).await;
    operations::sagas::retry(&platform.pool, &id, Some("the gateway is back"), "carol")
        .await
        .unwrap();
    settled(&platform, &id).await;
    assert_eq!(
        order_ends(&platform, &id, "CANCELLED").await,
        "arrived broken"
    );
    assert!(gateway.captured().await.is_empty());

    let shown = operations::sagas::show(&platform.pool, &id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(shown.actions.len(), 1);
    assert_eq!(shown.actions[0].action, "retried");
    assert_eq!(shown.actions[0].actor, "carol");
    assert_eq!(
        shown.actions[0].reason.as_deref(),
        Some("the gateway is back")
    );
    assert!(shown.saga.done && !shown.saga.needs_attention);
    // Done: nothing left to retry, and no longer listed.
    assert!(
        operations::sagas::retry(&platform.pool, &id, None, "carol")
            .await
            .is_err()
    );
    let listed = operations::sagas::needing_attention(&platform.pool)
        .await
        .unwrap();
    assert!(listed.iter().all(|saga| saga.order_id != id));
    platform.stop().await;
}

/// Abandons the saga as `actor`, trying again while a driver holds it (a
/// retry of its step in flight), for at most [`WITHIN`].
async fn abandon(
    platform: &TestPlatform,
    id: &str,
    reason: &str,
    actor: &str,
) -> Result<(), operations::sagas::ActionError> {
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        match operations::sagas::abandon(&platform.pool, id, reason, actor).await {
            Err(operations::sagas::ActionError::Refused(why))
                if why.contains("at work") && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_saga_stops_for_good_and_the_audit_lists_it_instead_of_failing() {
    use operations::sagas::ActionError;
    // The capture can never pass: someone has to settle it with the provider.
    let (platform, gateway, id, _) = a_shipment_the_gateway_cannot_capture().await;

    // Bad requests change nothing.
    assert!(matches!(
        abandon(&platform, &id, "  ", "dave").await,
        Err(ActionError::Invalid { .. })
    ));
    assert!(matches!(
        abandon(&platform, &id, "why", "").await,
        Err(ActionError::Invalid { .. })
    ));
    assert!(matches!(
        abandon(&platform, "no-such-order", "why", "dave").await,
        Err(ActionError::NotFound(_))
    ));
    let untouched = operations::sagas::show(&platform.pool, &id)
        .await
        .unwrap()
        .unwrap();
    assert!(untouched.actions.is_empty() && !untouched.saga.done);

    abandon(
        &platform,
        &id,
        "refunded by hand at the provider, ticket 42",
        "dave",
    )
    .await
    .unwrap();

    let shown = operations::sagas::show(&platform.pool, &id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(shown.saga.state, "ABANDONED");
    assert!(shown.saga.done && !shown.saga.needs_attention);
    assert_eq!(shown.actions.len(), 1);
    assert_eq!(shown.actions[0].action, "abandoned");
    assert_eq!(shown.actions[0].actor, "dave");
    let saga = platform
        .eventually(SAGA, json!({"id": id}), WITHIN, |data| {
            let saga = &data["order"]["saga"];
            (saga["state"] == "ABANDONED").then(|| saga.clone())
        })
        .await;
    assert_eq!(saga["needsAttention"], false);
    let last = saga["steps"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["name"], "abandoned");
    assert_eq!(
        last["detail"],
        "by dave: refunded by hand at the provider, ticket 42"
    );
    // Nothing left to do, for anyone: not listed, not due, not retried,
    // not abandoned twice.
    let listed = operations::sagas::needing_attention(&platform.pool)
        .await
        .unwrap();
    assert!(listed.iter().all(|saga| saga.order_id != id));
    let due = saga_orchestrator::store::due(&platform.pool, 1000)
        .await
        .unwrap();
    assert!(!due.contains(&id));
    assert!(matches!(
        operations::sagas::retry(&platform.pool, &id, None, "dave").await,
        Err(ActionError::Refused(_))
    ));
    assert!(matches!(
        abandon(&platform, &id, "again", "erin").await,
        Err(ActionError::Refused(_))
    ));
    assert_eq!(
        payment_events(&platform, &id).await,
        ["AuthorizationRequested", "PaymentAuthorized"],
        "abandoning undoes nothing"
    );

    // The books: this order is listed as abandoned, with who and why, and
    // everything else still balances.
    let report = orders_cli::audit::audit(&platform.pool, &gateway.access())
        .await
        .unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(
        report.abandoned,
        [format!(
            "{id}: by dave: refunded by hand at the provider, ticket 42"
        )]
    );
    assert!(report.to_string().contains("1 abandoned"), "{report}");
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_after_an_abandon_is_flagged_until_an_operator_settles_it() {
    let (platform, mut gateway) = start(quick()).await;
    platform.create_product("MUG", 1250, 10).await;
    // The gateway is away: the charge times out, its refund cannot pass.
    gateway.outage().await;
    let id = place(&platform, &[("MUG", 1)], "tok_visa").await;
    flagged(&platform, &id).await;
    abandon(&platform, &id, "the provider's support will look", "dave")
        .await
        .unwrap();

    // The customer, told nothing, cancels the order the saga left placed:
    // it is cancelled, but nothing is undone, so someone must hear of it.
    cancel(&platform, &id, "took too long").await;
    let saga = flagged(&platform, &id).await;
    assert_eq!(saga["state"], "ABANDONED");
    let listed = operations::sagas::needing_attention(&platform.pool)
        .await
        .unwrap();
    assert!(listed.iter().any(|saga| saga.order_id == id));
    gateway.resume(&platform).await;
    let report = orders_cli::audit::audit(&platform.pool, &gateway.access())
        .await
        .unwrap();
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.contains(&id) && v.contains("needs attention")),
        "{report}"
    );

    // The operator settles it by hand and says so: abandoned again.
    abandon(&platform, &id, "stock released by hand", "dave")
        .await
        .unwrap();
    let shown = operations::sagas::show(&platform.pool, &id)
        .await
        .unwrap()
        .unwrap();
    assert!(shown.saga.done && !shown.saga.needs_attention);
    assert_eq!(shown.actions.len(), 2);
    let report = orders_cli::audit::audit(&platform.pool, &gateway.access())
        .await
        .unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(
        report.abandoned,
        [format!("{id}: by dave: stock released by hand")]
    );
    platform.stop().await;
}
