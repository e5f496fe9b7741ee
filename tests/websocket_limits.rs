//! The GraphQL WebSocket endpoint's limits on the running platform:
//! connections per caller and in total, subscriptions per connection, the
//! idle timeout, the token's expiry, and what a customer hears of another
//! customer's order.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::time::{Duration, Instant};

use identity::testing;
use identity::{Claims, mint_hs256};
use platform_tests::TestPlatform;
use platform_tests::websocket::{
    self, SignIn, closed_within, next_for, sign_in, signed_in, subscribe_order,
};
use serde_json::{Value, json};

const WITHIN: Duration = Duration::from_secs(30);

/// Places an order as `customer` and waits until the read side shows it.
async fn placed_by(platform: &TestPlatform, customer: &str) -> String {
    let client = testing::client(customer, "orders");
    let answer = client
        .post(platform.url("/api/orders"))
        .json(&json!({"lines": [{"sku": "MUG", "quantity": 1}], "payment_method": "tok_visa"}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    let id = answer.json::<Value>().await.unwrap()["order_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let query = json!({"query": format!("{{ order(id: \"{id}\") {{ id }} }}")});
    let deadline = Instant::now() + WITHIN;
    loop {
        let seen: Value = client
            .post(platform.url("/graphql"))
            .json(&query)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if !seen["data"]["order"].is_null() {
            return id;
        }
        assert!(
            Instant::now() < deadline,
            "order {id} never reached the read side"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn cancel(platform: &TestPlatform, customer: &str, id: &str) {
    let answer = testing::client(customer, "orders")
        .post(platform.url(&format!("/api/orders/{id}/cancel")))
        .json(&json!({"reason": "changed my mind"}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
}

async fn platform_with(settings: &[(&str, &str)]) -> TestPlatform {
    let settings: Vec<(&str, String)> = settings
        .iter()
        .map(|(name, value)| (*name, (*value).to_owned()))
        .collect();
    let platform = TestPlatform::start_with(&settings).await;
    platform.create_product("MUG", 1250, 100).await;
    platform
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped_per_caller_and_in_total() {
    let platform = platform_with(&[
        ("ORDERS_WS_MAX_CONNECTIONS", "3"),
        ("ORDERS_WS_MAX_CONNECTIONS_PER_CALLER", "2"),
    ])
    .await;
    let alice = testing::token("alice", "orders");
    let address = platform.address;
    let first = signed_in(address, &alice).await;
    let _second = signed_in(address, &alice).await;
    // A third of alice's is refused at connection_init; bob still gets in.
    assert!(matches!(sign_in(address, &alice).await, SignIn::Closed));
    let _bob = signed_in(address, &testing::token("bob", "orders")).await;
    // Three connections are open: a fourth caller is refused at the upgrade.
    let carol = testing::token("carol", "orders");
    assert!(matches!(
        sign_in(address, &carol).await,
        SignIn::Refused(429)
    ));
    // A closed connection gives its places back.
    drop(first);
    let deadline = Instant::now() + WITHIN;
    loop {
        match sign_in(address, &carol).await {
            SignIn::Accepted(_) => break,
            refused => assert!(
                Instant::now() < deadline,
                "carol still refused: {refused:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_per_connection_are_capped() {
    let platform = platform_with(&[("ORDERS_WS_MAX_SUBSCRIPTIONS", "2")]).await;
    let id = placed_by(&platform, "alice").await;
    let mut socket = signed_in(platform.address, &testing::token("alice", "orders")).await;
    for sub in ["s1", "s2", "s3"] {
        subscribe_order(&mut socket, sub, &id).await;
    }
    // One of the three is refused (whichever started last), with an error
    // in its one answer.
    let refused = websocket::next_where(&mut socket, WITHIN, |reply| {
        !reply["payload"]["errors"].is_null()
    })
    .await;
    assert!(
        refused.to_string().contains("already runs 2 subscriptions"),
        "{refused}"
    );
    let refused_id = refused["id"].as_str().unwrap().to_owned();
    // Ending one gives its place back to a new one; both running ones hear
    // of the change.
    let running: Vec<&str> = ["s1", "s2", "s3"]
        .into_iter()
        .filter(|sub| *sub != refused_id)
        .collect();
    websocket::send(&mut socket, &json!({"id": running[0], "type": "complete"})).await;
    subscribe_order(&mut socket, "s4", &id).await;
    cancel(&platform, "alice", &id).await;
    let mut heard = Vec::new();
    while heard.len() < 2 {
        let reply = websocket::next_where(&mut socket, WITHIN, |reply| {
            reply["type"] == "next" || reply["type"] == "error"
        })
        .await;
        assert!(reply["payload"]["errors"].is_null(), "{reply}");
        assert_eq!(
            reply["payload"]["data"]["orderUpdated"]["status"],
            "CANCELLED"
        );
        heard.push(reply["id"].as_str().unwrap().to_owned());
    }
    heard.sort();
    let mut expected = vec![running[1].to_owned(), "s4".to_owned()];
    expected.sort();
    assert_eq!(heard, expected);
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_closes_but_a_listening_one_stays() {
    let platform = platform_with(&[("ORDERS_WS_IDLE_TIMEOUT_SECS", "1")]).await;
    let id = placed_by(&platform, "alice").await;
    let token = testing::token("alice", "orders");
    let mut idle = signed_in(platform.address, &token).await;
    let mut listening = signed_in(platform.address, &token).await;
    subscribe_order(&mut listening, "s", &id).await;
    let started = Instant::now();
    assert!(
        closed_within(&mut idle, WITHIN).await,
        "the idle connection stayed open"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed before its time"
    );
    // A subscriber need not send anything to stay: three idle timeouts on,
    // it is open and hears of the change.
    assert!(!closed_within(&mut listening, Duration::from_secs(3)).await);
    cancel(&platform, "alice", &id).await;
    let update = next_for(&mut listening, "s", WITHIN)
        .await
        .expect("an update");
    assert_eq!(
        update["payload"]["data"]["orderUpdated"]["status"],
        "CANCELLED"
    );
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_ends_when_its_token_expires() {
    let platform = platform_with(&[]).await;
    let id = placed_by(&platform, "alice").await;
    let short = mint_hs256(
        testing::secret(),
        &Claims::new("alice", "orders", Duration::from_secs(3)),
    )
    .unwrap();
    let started = Instant::now();
    let mut socket = signed_in(platform.address, &short).await;
    subscribe_order(&mut socket, "s", &id).await;
    assert!(
        closed_within(&mut socket, WITHIN).await,
        "the connection outlived its token"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "closed before the token expired"
    );
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_customers_order_is_as_silent_as_an_unknown_one() {
    let platform = platform_with(&[]).await;
    let id = placed_by(&platform, "alice").await;
    let mut alice = signed_in(platform.address, &testing::token("alice", "orders")).await;
    let mut bob = signed_in(platform.address, &testing::token("bob", "orders")).await;
    subscribe_order(&mut alice, "mine", &id).await;
    subscribe_order(&mut bob, "hers", &id).await;
    subscribe_order(&mut bob, "nobodys", &uuid::Uuid::now_v7().to_string()).await;
    cancel(&platform, "alice", &id).await;
    let update = next_for(&mut alice, "mine", WITHIN)
        .await
        .expect("alice hears");
    assert_eq!(
        update["payload"]["data"]["orderUpdated"]["status"],
        "CANCELLED"
    );
    // Alice heard of it, so the change has been published: bob hears nothing
    // of either subscription, no error that would tell them apart.
    let heard = tokio::time::timeout(Duration::from_secs(2), async {
        websocket::next_where(&mut bob, WITHIN, |_| true).await
    })
    .await;
    assert!(heard.is_err(), "bob heard {heard:?}");
    platform.stop().await;
}
