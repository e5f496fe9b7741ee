//! Every request counts against its caller, whatever it asks for: each
//! operation of a GraphQL batch before any runs, each subscription started
//! on an open WebSocket, every service route (readiness, metrics, documents,
//! unknown routes); connections not signed in are few per address, pages
//! of other sites open none; one caller cannot take every `afterPosition`
//! wait; `/readyz` is cheap and says what the API needs to take commands.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::time::{Duration, Instant};

use identity::testing;
use platform_tests::TestPlatform;
use platform_tests::websocket::{self, SignIn, sign_in, signed_in};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const PRODUCTS: &str = "{ products { edges { node { sku } } } }";

async fn platform_with(settings: &[(&str, &str)]) -> TestPlatform {
    let settings: Vec<(&str, String)> = settings
        .iter()
        .map(|(name, value)| (*name, (*value).to_owned()))
        .collect();
    TestPlatform::start_with(&settings).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graphql_batch_pays_for_every_operation_before_any_runs() {
    let platform = platform_with(&[
        ("ORDERS_RATE_LIMIT_GRAPHQL_PER_SEC", "1"),
        ("ORDERS_RATE_LIMIT_GRAPHQL_BURST", "10"),
    ])
    .await;
    let alice = testing::client("alice", "orders");
    let one = json!({"query": PRODUCTS});
    let batch: Vec<Value> = (0..10).map(|_| one.clone()).collect();
    let first = alice
        .post(platform.url("/graphql"))
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    // A second later one request's worth has come back: a batch of ten
    // does not fit it, and is refused whole (it used to run on an overdraft
    // that was then forgiven).
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let second = alice
        .post(platform.url("/graphql"))
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 429);
    assert!(second.headers().contains_key("retry-after"));
    // A batch larger than a caller's whole burst can never fit: said so.
    let platform_small = platform_with(&[
        ("ORDERS_RATE_LIMIT_GRAPHQL_PER_SEC", "1"),
        ("ORDERS_RATE_LIMIT_GRAPHQL_BURST", "3"),
    ])
    .await;
    let too_big = alice
        .post(platform_small.url("/graphql"))
        .json(&batch[..5])
        .send()
        .await
        .unwrap();
    assert_eq!(too_big.status(), 422);
    platform_small.stop().await;
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_subscription_on_an_open_connection_counts_against_its_caller() {
    let platform = platform_with(&[
        ("ORDERS_RATE_LIMIT_GRAPHQL_PER_SEC", "1"),
        ("ORDERS_RATE_LIMIT_GRAPHQL_BURST", "4"),
    ])
    .await;
    let token = testing::token("alice", "orders");
    // Signed in, the connection is Alice's: four subscriptions take her
    // burst, a fifth is refused.
    let mut socket = signed_in(platform.address, &token).await;
    let subscribe = |id: String| {
        json!({"id": id, "type": "subscribe", "payload": {"query":
            "subscription { orderUpdated(id: \"0190a0b0-1111-7222-8333-444455556666\") { id } }"}})
    };
    // Eight at once from a burst of four (one more a second comes back):
    // some are refused, each with the caller's rate named.
    for n in 0..8 {
        websocket::send(&mut socket, &subscribe(format!("s{n}"))).await;
    }
    let mut refused = Vec::new();
    while let Some(answer) = next_where_any(&mut socket, Duration::from_secs(3)).await {
        if answer["type"] == "next" {
            assert!(answer["payload"]["data"].is_null(), "{answer}");
            assert_eq!(
                answer["payload"]["errors"][0]["extensions"]["code"], "RATE_LIMITED",
                "{answer}"
            );
            refused.push(answer["id"].as_str().unwrap().to_owned());
        }
    }
    assert!(
        (2..=4).contains(&refused.len()),
        "refused {refused:?} of eight subscriptions"
    );
    platform.stop().await;
}

/// The next JSON message within `within`, if any.
async fn next_where_any(socket: &mut websocket::Socket, within: Duration) -> Option<Value> {
    use futures::StreamExt;
    let message = tokio::time::timeout(within, socket.next())
        .await
        .ok()??
        .ok()?;
    match message {
        tokio_tungstenite::tungstenite::Message::Text(text) => serde_json::from_str(&text).ok(),
        _ => Some(json!({"type": "other"})),
    }
}

/// Opens a WebSocket that never signs in: the upgrade's HTTP status.
async fn upgrade(
    address: std::net::SocketAddr,
    origin: Option<&str>,
) -> (u16, Option<websocket::Socket>) {
    let mut request = format!("ws://{address}/graphql")
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", origin.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, response)) => (response.status().as_u16(), Some(socket)),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            (response.status().as_u16(), None)
        }
        Err(error) => panic!("{error}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_not_signed_in_are_few_per_address_and_other_sites_open_none() {
    let platform = platform_with(&[
        ("ORDERS_WS_MAX_UNSIGNED_PER_ADDRESS", "2"),
        ("ORDERS_WS_MAX_CONNECTIONS", "10"),
    ])
    .await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let (status, socket) = upgrade(platform.address, None).await;
        assert_eq!(status, 101);
        held.push(socket);
    }
    let (status, _) = upgrade(platform.address, None).await;
    assert_eq!(status, 429, "a third unsigned connection of one address");
    // Once one signs in, it is its caller's and no longer its address's.
    match sign_in(platform.address, &testing::token("alice", "orders")).await {
        SignIn::Refused(429) => {}
        other => panic!("signing in while two wait unsigned: {other:?}"),
    }
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    let socket = loop {
        match sign_in(platform.address, &testing::token("alice", "orders")).await {
            SignIn::Accepted(socket) => break socket,
            SignIn::Refused(429) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("{other:?}"),
        }
    };
    let (status, _) = upgrade(platform.address, None).await;
    assert_eq!(
        status, 101,
        "the signed-in connection holds no unsigned slot"
    );

    // A page of another site: refused before the upgrade. Pages of this
    // host, and clients that send no origin, are not.
    let (status, _) = upgrade(platform.address, Some("https://evil.example")).await;
    assert_eq!(status, 403);
    drop(held);
    drop(socket);
    // (The server frees the slots of the closed connections as it notices.)
    let own = format!("http://{}", platform.address);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match upgrade(platform.address, Some(&own)).await.0 {
            101 => break,
            429 if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("a page of this host: {other}"),
        }
    }
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_routes_count_against_their_caller_too() {
    let platform = platform_with(&[
        ("ORDERS_RATE_LIMIT_META_PER_SEC", "1"),
        ("ORDERS_RATE_LIMIT_META_BURST", "2"),
    ])
    .await;
    let anonymous = reqwest::Client::new();
    for path in [
        "/readyz",
        "/healthz",
        "/metrics",
        "/api/openapi.json",
        "/problems/%0Aforged",
        "/no/such/route",
    ] {
        let mut statuses = Vec::new();
        for _ in 0..4 {
            statuses.push(
                anonymous
                    .get(platform.url(path))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16(),
            );
        }
        assert!(statuses.contains(&429), "{path}: {statuses:?}");
        // Another caller is not held up by this one.
        let other = testing::client("bob", "orders")
            .get(platform.url("/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(other.status(), 200, "{path}");
        tokio::time::sleep(Duration::from_millis(2_100)).await;
    }
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_on_the_public_port_are_for_administrators() {
    let platform = platform_with(&[("ORDERS_METRICS_LISTEN", "127.0.0.1:0")]).await;
    let status = |client: reqwest::Client| {
        let url = platform.url("/metrics");
        async move { client.get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status(reqwest::Client::new()).await, 401);
    assert_eq!(status(testing::client("alice", "orders")).await, 403);
    assert_eq!(status(testing::admin_client()).await, 200);
    // The scraper's port inside the network needs no token.
    let metrics = platform.metrics.expect("metrics_listen serves");
    let scraped = reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .unwrap();
    assert_eq!(scraped.status(), 200);
    assert!(
        scraped
            .text()
            .await
            .unwrap()
            .contains("http_requests_total")
    );
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_is_cheap_and_the_api_stays_ready_without_kafka() {
    // The API's Kafka is unreachable; its database answers. Commands are
    // still taken, so the API stays in its load balancer.
    let platform = TestPlatform::start_api_only(&[("KAFKA_BROKERS", "127.0.0.1:1".into())]).await;
    let client = reqwest::Client::new();
    let started = Instant::now();
    for _ in 0..50 {
        let answer = client.get(platform.url("/readyz")).send().await.unwrap();
        assert_eq!(answer.status(), 200);
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["checks"]["database"], "ok", "{body}");
        assert_ne!(body["checks"]["kafka"], "ok", "{body}");
    }
    // Fifty probes share a check a second: not fifty broker timeouts.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let placed = testing::admin_client()
        .post(platform.url("/api/products"))
        .json(&json!({"sku": "MUG", "name": "Mug", "price_cents": 100, "currency": "EUR"}))
        .send()
        .await
        .unwrap();
    assert_eq!(placed.status(), 201);
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_caller_cannot_take_every_after_position_wait() {
    // Nothing reaches the read side: every wait lasts its bound.
    let platform = TestPlatform::start_api_only(&[
        (
            "ORDERS_GRAPHQL_AFTER_POSITION_WAITERS_PER_CALLER",
            "2".into(),
        ),
        ("ORDERS_GRAPHQL_AFTER_POSITION_WAIT_MS", "3000".into()),
    ])
    .await;
    platform.create_product("MUG", 1250, 10).await;
    let place = |customer: &'static str| {
        let url = platform.url("/api/orders");
        async move {
            let answer: Value = testing::client(customer, "orders")
                .post(url)
                .json(&json!({"lines": [{"sku": "MUG", "quantity": 1}], "payment_method": "tok_visa"}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (
                answer["order_id"].as_str().unwrap().to_owned(),
                answer["position"].as_str().unwrap().to_owned(),
            )
        }
    };
    let wait = |customer: &'static str, id: String, position: String| {
        let url = platform.url("/graphql");
        async move {
            let answer: Value = testing::client(customer, "orders")
                .post(url)
                .json(&json!({"query": "query($id: ID!, $p: String) { order(id: $id, afterPosition: $p) { id } }",
                              "variables": {"id": id, "p": position}}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            answer["errors"][0]["extensions"]["code"]
                .as_str()
                .unwrap_or("none")
                .to_owned()
        }
    };
    let (mine, my_position) = place("mallory").await;
    let (theirs, their_position) = place("alice").await;
    let waits: Vec<_> = (0..3)
        .map(|_| tokio::spawn(wait("mallory", mine.clone(), my_position.clone())))
        .collect();
    // Alice still gets a wait of her own (it times out: nothing applies it).
    let alices = wait("alice", theirs, their_position).await;
    assert_ne!(alices, "TOO_MANY_WAITING");
    let mut codes = Vec::new();
    for wait in waits {
        codes.push(wait.await.unwrap());
    }
    assert_eq!(
        codes
            .iter()
            .filter(|code| *code == "TOO_MANY_WAITING")
            .count(),
        1,
        "{codes:?}"
    );
    platform.stop().await;
}
