//! Identity and abuse limits on the running platform: who may call what, what
//! a customer sees of other customers, idempotency keys per caller, rate
//! limits per caller, and the GraphQL endpoint's size, batch and alias limits.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use identity::testing;
use identity::{Claims, mint_hs256};
use platform_tests::{DeclaredRoute, TestPlatform, declared_routes};
use serde_json::{Value, json};

const WITHIN: Duration = Duration::from_secs(30);

async fn events(platform: &TestPlatform) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&platform.pool)
        .await
        .unwrap()
}

fn order(sku: &str) -> Value {
    json!({"lines": [{"sku": sku, "quantity": 1}], "payment_method": "tok_visa"})
}

async fn post_as(
    platform: &TestPlatform,
    authorization: Option<&str>,
    path: &str,
    body: &Value,
) -> reqwest::Response {
    let mut request = reqwest::Client::new().post(platform.url(path)).json(body);
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    request.send().await.unwrap()
}

/// Calls `path` of `route` with an empty object for a body.
async fn call_as(
    platform: &TestPlatform,
    authorization: Option<&str>,
    route: &DeclaredRoute,
    path: &str,
) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .request(route.method.parse().unwrap(), platform.url(path))
        .json(&json!({}));
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    request.send().await.unwrap()
}

async fn graphql_as(client: &reqwest::Client, platform: &TestPlatform, query: &str) -> Value {
    let response = client
        .post(platform.url("/graphql"))
        .json(&json!({ "query": query }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn unsigned(claims: &Claims) -> String {
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap());
    format!("{header}.{payload}.")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_valid_token_gets_in_and_a_refusal_changes_nothing() {
    let platform = TestPlatform::start().await;
    platform.create_product("MUG", 1250, 10).await;
    let before = events(&platform).await;

    let hour = Duration::from_secs(3600);
    let claims = Claims::new("mallory", "orders admin", hour);
    let mut expired = claims.clone();
    expired.exp = identity::now() - 3600;
    let mut premature = claims.clone();
    premature.nbf = Some(identity::now() + 3600);
    let cases: Vec<(String, Option<String>)> = vec![
        ("missing".into(), None),
        (
            "forged".into(),
            Some(mint_hs256("another-secret-that-is-long-enough-to-sign", &claims).unwrap()),
        ),
        (
            "expired".into(),
            Some(mint_hs256(testing::secret(), &expired).unwrap()),
        ),
        (
            "premature".into(),
            Some(mint_hs256(testing::secret(), &premature).unwrap()),
        ),
        ("alg none".into(), Some(unsigned(&claims))),
        ("garbage".into(), Some("not.a.token".into())),
    ];
    for (case, token) in &cases {
        let header = token.as_ref().map(|t| format!("Bearer {t}"));
        for route in declared_routes() {
            let path = route.path();
            let answer = call_as(&platform, header.as_deref(), &route, &path).await;
            assert_eq!(answer.status(), 401, "{case} {path}");
            let challenge = answer.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .to_owned();
            if token.is_some() {
                assert!(
                    challenge.starts_with(r#"Bearer error="invalid_token""#),
                    "{case}: {challenge}"
                );
            } else {
                assert_eq!(challenge, "Bearer", "{case}");
            }
            assert_eq!(answer.headers()["content-type"], "application/problem+json");
        }
        // GraphQL: a bad token is refused even for public fields.
        if let Some(header) = &header {
            let answer = reqwest::Client::new()
                .post(platform.url("/graphql"))
                .header("authorization", header)
                .json(&json!({"query": "{ products { edges { node { sku } } } }"}))
                .send()
                .await
                .unwrap();
            assert_eq!(answer.status(), 401, "{case} /graphql");
        }
    }
    // Another scheme is no token either.
    let basic = post_as(
        &platform,
        Some("Basic b3BzOm9wcw=="),
        "/api/orders",
        &order("MUG"),
    )
    .await;
    assert_eq!(basic.status(), 401);
    assert_eq!(
        events(&platform).await,
        before,
        "a refused request appended events"
    );

    // Products stay public; orders need a caller.
    let anonymous = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let products = graphql_as(&anonymous, &platform, "{ product(sku: \"MUG\") { sku } }").await;
        assert!(products.get("errors").is_none(), "{products}");
        if products["data"]["product"]["sku"] == "MUG" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{products}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let orders = anonymous
        .post(platform.url("/graphql"))
        .json(&json!({"query": "{ orders { edges { node { id } } } }"}))
        .send()
        .await
        .unwrap();
    assert_eq!(orders.status(), 401);
    assert_eq!(orders.headers()["www-authenticate"], "Bearer");
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_decide_what_a_caller_may_do() {
    let platform = TestPlatform::start().await;
    platform.create_product("MUG", 1250, 10).await;
    let before = events(&platform).await;
    let customer = testing::client("alice", "orders");
    let nobody = testing::client("bob", "profile");

    // Every declared route, with a caller of each scope it does not admit;
    // the body is refused unread.
    let mut refused = 0;
    for route in declared_routes() {
        for (client, scope) in [(&customer, "orders"), (&nobody, "profile")] {
            if route.admits(scope) {
                continue;
            }
            let path = route.path();
            let answer = client
                .request(route.method.parse().unwrap(), platform.url(&path))
                .json(&json!({"nonsense": true}))
                .send()
                .await
                .unwrap();
            assert_eq!(answer.status(), 403, "{scope} {path}");
            let problem: Value = answer.json().await.unwrap();
            assert_eq!(problem["type"], "/problems/forbidden");
            refused += 1;
        }
    }
    assert!(refused >= 3, "{refused}");
    // A route that admits a scope lets its caller on to the body.
    for route in declared_routes().iter().filter(|r| r.admits("orders")) {
        let answer = customer
            .request(route.method.parse().unwrap(), platform.url(&route.path()))
            .json(&json!({"nonsense": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 422, "orders {}", route.template);
    }
    // Scope is checked before the body: a bad body from the wrong caller is still 403.
    let answer = customer
        .post(platform.url("/api/products"))
        .json(&json!({"nonsense": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 403);
    let answer = nobody
        .post(platform.url("/graphql"))
        .json(&json!({"query": "{ orders { edges { node { id } } } }"}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 403);
    assert_eq!(events(&platform).await, before);
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_sees_and_changes_only_their_own_orders() {
    let platform = TestPlatform::start().await;
    platform.create_product("MUG", 1250, 10).await;
    let alice = testing::client("alice", "orders");
    let bob = testing::client("bob", "orders");

    let place = |client: &reqwest::Client, body: Value| {
        client.post(platform.url("/api/orders")).json(&body).send()
    };
    let placed_id = |answer: reqwest::Response| async move {
        assert_eq!(answer.status(), 202);
        let placed: Value = answer.json().await.unwrap();
        placed["order_id"].as_str().unwrap().to_owned()
    };

    // customer_id is optional and, when sent, must be the caller.
    let id = placed_id(place(&alice, order("MUG")).await.unwrap()).await;
    let mut as_alice = order("MUG");
    as_alice["customer_id"] = json!("alice");
    let impostor = place(&bob, as_alice).await.unwrap();
    assert_eq!(impostor.status(), 403);
    let bobs_id = placed_id(place(&bob, order("MUG")).await.unwrap()).await;

    // Wait for the read side.
    let seen = |client: &reqwest::Client, id: &str| {
        let query =
            format!("{{ order(id: \"{id}\") {{ id customerId history {{ eventType }} }} }}");
        let client = client.clone();
        let url = platform.url("/graphql");
        async move {
            let response: Value = client
                .post(url)
                .json(&json!({ "query": query }))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            response["data"]["order"].clone()
        }
    };
    // Lists read other projections than `order(id)` (an administrator's
    // every order, a customer's own): wait for all of them.
    async fn listed(client: &reqwest::Client, platform: &TestPlatform) -> usize {
        let all = graphql_as(client, platform, "{ orders { edges { node { id } } } }").await;
        all["data"]["orders"]["edges"]
            .as_array()
            .map_or(0, Vec::len)
    }
    let deadline = tokio::time::Instant::now() + WITHIN;
    while seen(&alice, &id).await.is_null()
        || seen(&bob, &bobs_id).await.is_null()
        || listed(&platform.client, &platform).await < 2
        || listed(&bob, &platform).await < 1
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "orders not on the read side"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen(&alice, &id).await["customerId"], "alice");
    assert!(seen(&bob, &id).await.is_null(), "bob reads alice's order");
    assert_eq!(seen(&platform.client, &id).await["customerId"], "alice");

    let list = |customer: &str| {
        format!(
            "{{ orders(customerId: \"{customer}\") {{ edges {{ node {{ id customerId }} }} }} }}"
        )
    };
    let bob_on_alice = graphql_as(&bob, &platform, &list("alice")).await;
    assert_eq!(bob_on_alice["data"]["orders"]["edges"], json!([]));
    let own = graphql_as(
        &bob,
        &platform,
        "{ orders { edges { node { id customerId } } } }",
    )
    .await;
    let own: Vec<&Value> = own["data"]["orders"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    assert_eq!(own.len(), 1);
    assert_eq!(own[0]["node"]["id"], bobs_id.as_str());
    let all = graphql_as(
        &platform.client,
        &platform,
        "{ orders { edges { node { id } } } }",
    )
    .await;
    assert_eq!(all["data"]["orders"]["edges"].as_array().unwrap().len(), 2);

    // Bob cannot cancel Alice's order: it is as unknown as a missing one.
    let cancel = |client: &reqwest::Client, id: &str| {
        client
            .post(platform.url(&format!("/api/orders/{id}/cancel")))
            .json(&json!({"reason": "mine now"}))
            .send()
    };
    let theirs = cancel(&bob, &id).await.unwrap();
    assert_eq!(theirs.status(), 404);
    let theirs: Value = theirs.json().await.unwrap();
    let missing: Value = cancel(&bob, "0197a1b2-0000-7000-8000-000000000000")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(theirs["type"], missing["type"]);
    // A version precondition does not tell them apart either: neither the
    // order's version nor that it exists comes back.
    for version in ["\"0\"", "\"1\"", "\"7\""] {
        for target in [id.as_str(), "0197a1b2-0000-7000-8000-000000000000"] {
            let response = bob
                .post(platform.url(&format!("/api/orders/{target}/cancel")))
                .header("if-match", version)
                .json(&json!({"reason": "mine now"}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 404, "If-Match {version} on {target}");
            let problem: Value = response.json().await.unwrap();
            assert_eq!(problem["type"], missing["type"]);
        }
    }
    assert_eq!(cancel(&alice, &id).await.unwrap().status(), 202);
    // Even cancelled, it stays unknown to bob (not "already cancelled").
    assert_eq!(cancel(&bob, &id).await.unwrap().status(), 404);
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_belong_to_their_caller() {
    let platform = TestPlatform::start().await;
    platform.create_product("MUG", 1250, 10).await;
    let place = |client: reqwest::Client| {
        let url = platform.url("/api/orders");
        async move {
            let answer = client
                .post(url)
                .header("idempotency-key", "order-1")
                .json(&order("MUG"))
                .send()
                .await
                .unwrap();
            let replayed = answer.headers().contains_key("idempotent-replayed");
            assert_eq!(answer.status(), 202);
            let body: Value = answer.json().await.unwrap();
            (body["order_id"].as_str().unwrap().to_owned(), replayed)
        }
    };
    let (alices, _) = place(testing::client("alice", "orders")).await;
    let (bobs, bob_replayed) = place(testing::client("bob", "orders")).await;
    assert_ne!(alices, bobs, "bob got alice's answer");
    assert!(!bob_replayed);
    let (again, replayed) = place(testing::client("alice", "orders")).await;
    assert_eq!(again, alices);
    assert!(replayed);

    // A key shaped like the platform's own reaches nothing of the platform.
    let answer = platform
        .client
        .post(platform.url("/api/products/MUG/stock"))
        .header("idempotency-key", "saga:x:reserve:MUG")
        .json(&json!({"quantity": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    assert!(!answer.headers().contains_key("idempotent-replayed"));
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_noisy_caller_is_limited_while_another_goes_on() {
    let platform = TestPlatform::start_with(&[
        ("ORDERS_RATE_LIMIT_COMMANDS_PER_SEC", "1".into()),
        ("ORDERS_RATE_LIMIT_COMMANDS_BURST", "3".into()),
    ])
    .await;
    // The administrator's setup counts against the administrator only.
    platform.create_product("MUG", 1250, 0).await;
    let noisy = testing::client("noisy", "orders");
    let mut limited = None;
    for _ in 0..10 {
        let answer = noisy
            .post(platform.url("/api/orders"))
            .json(&order("MUG"))
            .send()
            .await
            .unwrap();
        if answer.status() == 429 {
            limited = Some(answer);
            break;
        }
        assert_eq!(answer.status(), 202);
    }
    let limited = limited.expect("ten requests at once from one caller were never limited");
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    let problem: Value = limited.json().await.unwrap();
    assert_eq!(problem["type"], "/problems/too-many-requests");

    let quiet = testing::client("quiet", "orders");
    let answer = quiet
        .post(platform.url("/api/orders"))
        .json(&order("MUG"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        answer.status(),
        202,
        "another caller was slowed by the noisy one"
    );
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_operation_of_a_graphql_batch_counts_against_the_rate() {
    let platform = TestPlatform::start_with(&[
        ("ORDERS_RATE_LIMIT_GRAPHQL_PER_SEC", "1".into()),
        ("ORDERS_RATE_LIMIT_GRAPHQL_BURST", "10".into()),
    ])
    .await;
    let alice = testing::client("alice", "orders");
    let one = json!({"query": "{ products { edges { node { sku } } } }"});
    let batch: Vec<Value> = (0..10).map(|_| one.clone()).collect();
    let answer = alice
        .post(platform.url("/graphql"))
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    // The batch spent the whole burst of ten: of two more requests right
    // after it, at most one fits what refilled meanwhile.
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let answer = alice
            .post(platform.url("/graphql"))
            .json(&one)
            .send()
            .await
            .unwrap();
        statuses.push(answer.status().as_u16());
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_callers_behind_a_trusted_proxy_are_limited_one_by_one() {
    // The test client is the proxy (127.0.0.1); X-Forwarded-For names who
    // sent each public read through it.
    let platform = TestPlatform::start_with(&[
        ("ORDERS_RATE_LIMIT_GRAPHQL_PER_SEC", "1".into()),
        ("ORDERS_RATE_LIMIT_GRAPHQL_BURST", "2".into()),
        ("ORDERS_TRUSTED_PROXIES", "127.0.0.1, ::1".into()),
    ])
    .await;
    let anonymous = reqwest::Client::new();
    let read = |client_address: &'static str| {
        anonymous
            .post(platform.url("/graphql"))
            .header("x-forwarded-for", client_address)
            .json(&json!({"query": "{ products { edges { node { sku } } } }"}))
            .send()
    };
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(read("203.0.113.9").await.unwrap().status().as_u16());
    }
    assert!(
        statuses.contains(&429),
        "one address was never limited: {statuses:?}"
    );
    assert_eq!(read("198.51.100.7").await.unwrap().status(), 200);
    // Another address in the same IPv6 /64 is the same caller.
    let mut v6 = Vec::new();
    for n in 0..6 {
        let address: &'static str = ["2001:db8::1", "2001:db8::2", "2001:db8::3"][n % 3];
        v6.push(read(address).await.unwrap().status().as_u16());
    }
    assert!(v6.contains(&429), "a /64 was never limited: {v6:?}");
    platform.stop().await;
}

/// `bytes` of JSON whitespace sent chunked (no declared length), 4 KiB a
/// chunk, as fast as the connection takes them.
fn chunked_body(bytes: usize) -> reqwest::Body {
    let chunks = (0..bytes.div_ceil(4096))
        .map(move |n| Ok::<_, std::io::Error>(vec![b' '; (bytes - n * 4096).min(4096)]));
    reqwest::Body::wrap_stream(futures::stream::iter(chunks))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphql_requests_are_bounded() {
    let platform = TestPlatform::start().await;
    let client = &platform.client;

    // A large body is refused by its declared length, before it is read.
    let huge = vec![b' '; 300 * 1024 * 1024];
    let started = std::time::Instant::now();
    let answer = client
        .post(platform.url("/graphql"))
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await;
    if let Ok(answer) = answer {
        assert_eq!(answer.status(), 413);
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the body was read to its end"
    );

    // Over the limit without a declared length (chunked), still being sent
    // when the limit is reached: the client finishes sending and reads a
    // 413, on GraphQL and on the commands alike. (The server once closed the
    // connection under the client's last writes: a broken pipe instead of
    // an answer, now and then; hence the repeats.)
    for path in ["/graphql", "/api/orders"] {
        for _ in 0..20 {
            let answer = client
                .post(platform.url(path))
                .header("content-type", "application/json")
                .body(chunked_body(400 * 1024))
                .send()
                .await
                .unwrap_or_else(|error| panic!("{path}: no answer to a large body: {error:?}"));
            assert_eq!(answer.status(), 413, "{path}");
        }
    }

    let one = json!({"query": "{ products { edges { node { sku } } } }"});
    let batch = |n: usize| Value::Array(vec![one.clone(); n]);
    let ok = client
        .post(platform.url("/graphql"))
        .json(&batch(10))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let refused = client
        .post(platform.url("/graphql"))
        .json(&batch(11))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 422);

    let aliases: String = (0..31)
        .map(|i| format!("p{i}: product(sku: \"S{i}\") {{ sku }} "))
        .collect();
    let answer = graphql_as(client, &platform, &format!("{{ {aliases} }}")).await;
    assert!(
        answer["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("root fields"),
        "{answer}"
    );
    let nested: String = (0..31).map(|i| format!("s{i}: sku ")).collect();
    let answer = graphql_as(
        client,
        &platform,
        &format!("{{ product(sku: \"A\") {{ {nested} }} }}"),
    )
    .await;
    assert!(
        answer["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("aliases"),
        "{answer}"
    );
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_connection_needs_a_token_in_connection_init() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let platform = TestPlatform::start().await;
    let connect = |payload: Value| {
        let url = format!("ws://{}/graphql", platform.address);
        async move {
            let mut request = url.into_client_request().unwrap();
            request.headers_mut().insert(
                "sec-websocket-protocol",
                "graphql-transport-ws".parse().unwrap(),
            );
            let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
            socket
                .send(Message::Text(
                    json!({"type": "connection_init", "payload": payload})
                        .to_string()
                        .into(),
                ))
                .await
                .unwrap();
            let first = tokio::time::timeout(WITHIN, socket.next()).await.unwrap();
            (socket, first)
        }
    };
    for payload in [
        json!({}),
        json!({"Authorization": "Bearer forged.token.here"}),
        json!({"Authorization": format!("Bearer {}", unsigned(&Claims::new("x", "admin", Duration::from_secs(60))))}),
    ] {
        let (_socket, first) = connect(payload.clone()).await;
        match first {
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {}
            other => panic!("{payload}: connection not closed: {other:?}"),
        }
    }
    let token = format!("Bearer {}", testing::token("alice", "orders"));
    let (mut socket, first) = connect(json!({"Authorization": token})).await;
    let Some(Ok(Message::Text(text))) = first else {
        panic!("no ack: {first:?}");
    };
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["type"],
        "connection_ack"
    );
    // A signed-in connection carries subscriptions, not queries: those go
    // through POST /graphql and its rate limit.
    platform_tests::websocket::send(
        &mut socket,
        &json!({"id": "q", "type": "subscribe",
                "payload": {"query": "{ products { edges { node { sku } } } }"}}),
    )
    .await;
    let reply =
        platform_tests::websocket::next_where(&mut socket, WITHIN, |reply| reply["id"] == "q")
            .await;
    let text = reply.to_string();
    assert!(text.contains("SUBSCRIPTIONS_ONLY"), "{text}");
    assert!(reply["payload"]["data"].is_null(), "{text}");
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_signs_in_is_closed_though_it_pings() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let platform = TestPlatform::start_with(&[("ORDERS_WS_INIT_TIMEOUT_SECS", "1".into())]).await;
    let mut request = format!("ws://{}/graphql", platform.address)
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let started = std::time::Instant::now();
    let closed = loop {
        // A ping resets the idle timer, but must not keep an unsigned connection.
        if socket
            .send(Message::Text(json!({"type": "ping"}).to_string().into()))
            .await
            .is_err()
        {
            break true;
        }
        match tokio::time::timeout(Duration::from_millis(200), socket.next()).await {
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => break true,
            _ if started.elapsed() > WITHIN => break false,
            _ => {}
        }
    };
    assert!(closed, "an unsigned connection stayed open for {WITHIN:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed before its time"
    );
    platform.stop().await;
}
