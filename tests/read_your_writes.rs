//! Reading one's own writes and reading the past, through the real path:
//! REST commands answer the position of their last event; GraphQL's
//! `afterPosition` waits for the read models (relay, Kafka, projection
//! workers, all real) to apply it; `asOf` folds an order or a product from
//! the event store.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::time::{Duration, Instant};

use platform_tests::{TestPlatform, order_body};
use serde_json::{Value, json};

const ORDER_AFTER: &str = r#"
query Order($id: ID!, $position: String) {
  order(id: $id, afterPosition: $position) { id status version }
}"#;

const ORDERS_AFTER: &str = r#"
query Orders($customer: String, $position: String) {
  orders(customerId: $customer, first: 100, afterPosition: $position) { nodes { id status } }
}"#;

/// The position a command answered, checked against its header.
async fn position_of(response: reqwest::Response) -> (Value, String) {
    let header = response
        .headers()
        .get("x-event-position")
        .expect("a command answers its position")
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["position"],
        header.as_str(),
        "the body repeats the header"
    );
    (body, header)
}

async fn graphql(
    client: &reqwest::Client,
    platform: &TestPlatform,
    query: &str,
    variables: Value,
) -> Value {
    client
        .post(platform.url("/graphql"))
        .json(&json!({"query": query, "variables": variables}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn error_code(response: &Value) -> &str {
    response["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("an error with a code: {response:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_after_a_commands_position_always_sees_that_command() {
    let platform = TestPlatform::start().await;
    platform.create_product("MUG", 1250, 1_000).await;
    let alice = identity::testing::client("customer-1", "orders");

    for _ in 0..20 {
        let placed = alice
            .post(platform.url("/api/orders"))
            .json(&order_body(&[("MUG", 1)]))
            .send()
            .await
            .unwrap();
        assert_eq!(placed.status(), 202);
        let (placed, position) = position_of(placed).await;
        let id = placed["order_id"].as_str().unwrap();

        // At once, with no polling: the order is there, in both read models.
        let read = graphql(
            &alice,
            &platform,
            ORDER_AFTER,
            json!({"id": id, "position": position}),
        )
        .await;
        assert!(read.get("errors").is_none(), "{read:#}");
        assert_eq!(read["data"]["order"]["status"], "PLACED", "{read:#}");
        let listed = graphql(
            &alice,
            &platform,
            ORDERS_AFTER,
            json!({"position": position}),
        )
        .await;
        assert!(listed.get("errors").is_none(), "{listed:#}");
        let ids: Vec<&str> = listed["data"]["orders"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|node| node["id"].as_str().unwrap())
            .collect();
        assert!(ids.contains(&id), "{listed:#}");

        let cancelled = alice
            .post(platform.url(&format!("/api/orders/{id}/cancel")))
            .json(&json!({"reason": "changed my mind"}))
            .send()
            .await
            .unwrap();
        assert_eq!(cancelled.status(), 202);
        let (_, position) = position_of(cancelled).await;
        let read = graphql(
            &alice,
            &platform,
            ORDER_AFTER,
            json!({"id": id, "position": position}),
        )
        .await;
        assert_eq!(read["data"]["order"]["status"], "CANCELLED", "{read:#}");
        assert_eq!(read["data"]["order"]["version"], 2);
    }
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_the_read_side_never_reaches_fails_in_time_with_the_lag_and_holds_no_connection()
{
    // No relay and no projections: nothing reaches the read side. A small
    // pool, which waiting queries must not hold: a command that found it
    // taken would fail after a second.
    let platform = TestPlatform::start_api_only(&[
        ("ORDERS_GRAPHQL_AFTER_POSITION_WAIT_MS", "3000".into()),
        // One caller waits twelve times here, more than a caller's share.
        (
            "ORDERS_GRAPHQL_AFTER_POSITION_WAITERS_PER_CALLER",
            "20".into(),
        ),
        ("ORDERS_DATABASE_POOL_SIZE", "4".into()),
        ("ORDERS_DATABASE_ACQUIRE_TIMEOUT_SECS", "1".into()),
    ])
    .await;
    platform.create_product("MUG", 1250, 100).await;
    let (placed, position) = position_of(
        platform
            .post("/api/orders", &order_body(&[("MUG", 1)]))
            .await,
    )
    .await;
    let id = placed["order_id"].as_str().unwrap().to_owned();

    // More waiting queries than the pool has connections, side by side
    // with commands that need one.
    let client = identity::testing::admin_client();
    let waits: Vec<_> = (0..12)
        .map(|_| {
            let (client, url, id, position) = (client.clone(), platform.url("/graphql"), id.clone(), position.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let answer: Value = client
                    .post(url)
                    .json(&json!({"query": ORDER_AFTER, "variables": {"id": id, "position": position}}))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                (answer, started.elapsed())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..5 {
        platform
            .command("/api/products/MUG/stock", &json!({"quantity": 1}), 202)
            .await;
    }
    for wait in waits {
        let (answer, took) = wait.await.unwrap();
        assert_eq!(error_code(&answer), "NOT_CAUGHT_UP", "{answer:#}");
        assert_eq!(
            answer["errors"][0]["extensions"]["lag"]["orders"], 1,
            "{answer:#}"
        );
        assert!(
            answer["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("3000 ms"),
            "{answer:#}"
        );
        assert!(took >= Duration::from_millis(3000), "{took:?}");
    }
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_that_are_not_the_callers_are_refused_alike() {
    let platform = TestPlatform::start().await;
    platform.create_product("MUG", 1250, 100).await;
    let alice = identity::testing::client("customer-1", "orders");
    let bob = identity::testing::client("customer-2", "orders");
    let placed = alice
        .post(platform.url("/api/orders"))
        .json(&order_body(&[("MUG", 1)]))
        .send()
        .await
        .unwrap();
    let (placed, position) = position_of(placed).await;
    let id = placed["order_id"].as_str().unwrap();

    // Alice's position, a forged one for an order that does not exist, and
    // garbage: Bob learns nothing from the difference.
    let forged = event_store::Position {
        aggregate_type: "Order".into(),
        aggregate_id: uuid::Uuid::now_v7().to_string(),
        sequence: 1,
    }
    .to_string();
    let payment = event_store::Position {
        aggregate_type: "Payment".into(),
        aggregate_id: id.into(),
        sequence: 1,
    }
    .to_string();
    let mut messages = Vec::new();
    for token in [
        position.as_str(),
        forged.as_str(),
        payment.as_str(),
        "not-a-position",
        "",
    ] {
        let answer = graphql(
            &bob,
            &platform,
            ORDER_AFTER,
            json!({"id": id, "position": token}),
        )
        .await;
        assert_eq!(error_code(&answer), "BAD_POSITION", "{token}: {answer:#}");
        assert!(
            answer["data"].is_null() || answer["data"]["order"].is_null(),
            "{answer:#}"
        );
        messages.push(answer["errors"][0]["message"].clone());
    }
    // Alice's own order, but at a version it never reached: a wait that
    // could never end is refused at once.
    let future = event_store::Position {
        aggregate_type: "Order".into(),
        aggregate_id: id.into(),
        sequence: 99,
    }
    .to_string();
    let answer = graphql(
        &alice,
        &platform,
        ORDER_AFTER,
        json!({"id": id, "position": future}),
    )
    .await;
    assert_eq!(error_code(&answer), "BAD_POSITION", "{answer:#}");
    messages.push(answer["errors"][0]["message"].clone());
    messages.dedup();
    assert_eq!(messages.len(), 1, "{messages:?}");

    // A product's position concerns no order model: nothing to wait for.
    let stocked = platform
        .post("/api/products/MUG/stock", &json!({"quantity": 1}))
        .await;
    let (_, product_position) = position_of(stocked).await;
    let answer = graphql(
        &alice,
        &platform,
        ORDER_AFTER,
        json!({"id": id, "position": product_position}),
    )
    .await;
    assert!(answer.get("errors").is_none(), "{answer:#}");
    platform.stop().await;
}

const PRODUCT_AS_OF: &str = r#"
query Product($sku: String!, $asOf: AsOf) {
  product(sku: $sku, asOf: $asOf) { sku onHand version }
}"#;

const ORDER_AS_OF: &str = r#"
query Order($id: ID!, $asOf: AsOf) {
  order(id: $id, asOf: $asOf) { status version cancellationReason history { sequence eventType } saga { state } }
}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_of_folds_a_product_or_an_order_as_it_was() {
    let platform = TestPlatform::start().await;
    let before = chrono::Utc::now() - chrono::Duration::seconds(5);
    platform.create_product("MUG", 1250, 10).await;
    let (_, after_second) = position_of(
        platform
            .post("/api/products/MUG/stock", &json!({"quantity": 5}))
            .await,
    )
    .await;
    let between = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    platform
        .command("/api/products/MUG/stock", &json!({"quantity": 7}), 202)
        .await;
    let _ = after_second;

    let product =
        |as_of: Value| platform.graphql(PRODUCT_AS_OF, json!({"sku": "MUG", "asOf": as_of}));
    let at = |version: i64| json!({"version": version});
    assert_eq!(
        product(at(1)).await["data"]["product"],
        json!({"sku": "MUG", "onHand": 0, "version": 1})
    );
    assert_eq!(
        product(at(2)).await["data"]["product"],
        json!({"sku": "MUG", "onHand": 10, "version": 2})
    );
    assert_eq!(product(at(3)).await["data"]["product"]["onHand"], 15);
    // Beyond the last event: the last state.
    assert_eq!(product(at(99)).await["data"]["product"]["onHand"], 22);
    assert!(product(at(0)).await["data"]["product"].is_null());
    assert!(
        product(json!({"at": before.to_rfc3339()})).await["data"]["product"].is_null(),
        "before it was created"
    );
    assert_eq!(
        product(json!({"at": between.to_rfc3339()})).await["data"]["product"]["onHand"],
        15
    );
    // A product's history needs a token (answered as every missing token is).
    let anonymous = reqwest::Client::new()
        .post(platform.url("/graphql"))
        .json(&json!({"query": PRODUCT_AS_OF, "variables": {"sku": "MUG", "asOf": {"version": 1}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let now: Value = reqwest::Client::new()
        .post(platform.url("/graphql"))
        .json(&json!({"query": PRODUCT_AS_OF, "variables": {"sku": "MUG"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // (Current state is public; the read side may not have it yet.)
    assert!(now.get("errors").is_none(), "{now:#}");
    for bad in [
        json!({}),
        json!({"version": 1, "at": between.to_rfc3339()}),
        json!({"version": -1}),
    ] {
        let answer = product(bad.clone()).await;
        assert!(
            answer["errors"][0]["message"].is_string(),
            "{bad}: {answer:#}"
        );
    }

    // An order, after its cancellation, as it was when placed; and not to
    // another customer.
    let placed = platform
        .command("/api/orders", &order_body(&[("MUG", 1)]), 202)
        .await;
    let id = placed["order_id"].as_str().unwrap();
    platform
        .command(
            &format!("/api/orders/{id}/cancel"),
            &json!({"reason": "too late"}),
            202,
        )
        .await;
    let order = platform
        .graphql(ORDER_AS_OF, json!({"id": id, "asOf": {"version": 1}}))
        .await;
    assert_eq!(
        order["data"]["order"],
        json!({"status": "PLACED", "version": 1, "cancellationReason": null,
               "history": [{"sequence": 1, "eventType": "OrderPlaced"}], "saga": null})
    );
    let now = platform
        .graphql(ORDER_AS_OF, json!({"id": id, "asOf": {"version": 2}}))
        .await;
    assert_eq!(now["data"]["order"]["status"], "CANCELLED");
    assert_eq!(now["data"]["order"]["cancellationReason"], "too late");
    let bob = identity::testing::client("customer-2", "orders");
    let hidden = graphql(
        &bob,
        &platform,
        ORDER_AS_OF,
        json!({"id": id, "asOf": {"version": 1}}),
    )
    .await;
    assert!(hidden["data"]["order"].is_null(), "{hidden:#}");
    platform.stop().await;
}
