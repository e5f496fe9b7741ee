//! REST commands become GraphQL reads: through the event store, the relay,
//! Kafka and the projection workers, all real.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::time::Duration;

use platform_tests::{TestPlatform, order_body};
use serde_json::{Value, json};

const WITHIN: Duration = Duration::from_secs(30);

const ORDER: &str = r#"
query Order($id: ID!) {
  order(id: $id) {
    id customerId status totalCents currency version placedAt updatedAt cancellationReason
    lines { sku quantity unitPriceCents }
    history { sequence globalPosition eventType recordedAt payload }
  }
}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_placed_over_rest_is_read_over_graphql_then_its_cancellation() {
    let platform = TestPlatform::start().await;
    platform.create_product("MUG", 1250, 10).await;
    platform.create_product("TEA", 499, 10).await;
    let placed = platform
        .command("/api/orders", &order_body(&[("MUG", 2), ("TEA", 1)]), 202)
        .await;
    let id = placed["order_id"].as_str().unwrap().to_owned();

    let order = platform
        .eventually(ORDER, json!({"id": id}), WITHIN, |data| {
            data["order"].is_object().then(|| data["order"].clone())
        })
        .await;

    assert_eq!(order["customerId"], "customer-1");
    assert_eq!(order["status"], "PLACED");
    assert_eq!(order["totalCents"], 2 * 1250 + 499);
    assert_eq!(order["currency"], "EUR");
    assert_eq!(order["version"], 1);
    assert_eq!(
        order["lines"],
        json!([{"sku": "MUG", "quantity": 2, "unitPriceCents": 1250},
               {"sku": "TEA", "quantity": 1, "unitPriceCents": 499}])
    );
    assert_eq!(order["history"][0]["eventType"], "OrderPlaced");
    assert_eq!(order["history"][0]["payload"]["total_cents"], 2999);
    assert!(order["cancellationReason"].is_null());

    platform
        .command(
            &format!("/api/orders/{id}/cancel"),
            &json!({"reason": "changed my mind"}),
            202,
        )
        .await;
    let cancelled = platform
        .eventually(ORDER, json!({"id": id}), WITHIN, |data| {
            (data["order"]["status"] == "CANCELLED").then(|| data["order"].clone())
        })
        .await;

    assert_eq!(cancelled["cancellationReason"], "changed my mind");
    assert_eq!(cancelled["version"], 2);
    let types: Vec<&str> = cancelled["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["eventType"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["OrderPlaced", "OrderCancelled"]);
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn products_show_stock_and_customers_their_orders_page_by_page() {
    let platform = TestPlatform::start().await;
    for (sku, stock) in [("A-1", 5), ("B-2", 0), ("C-3", 7)] {
        platform.create_product(sku, 100, stock).await;
    }
    let mut placed = Vec::new();
    for _ in 0..5 {
        let answer = platform
            .command("/api/orders", &order_body(&[("A-1", 1)]), 202)
            .await;
        placed.push(answer["order_id"].as_str().unwrap().to_owned());
    }
    let mut other = order_body(&[("C-3", 1)]);
    other["customer_id"] = json!("someone-else");
    platform.command("/api/orders", &other, 202).await;

    let products = platform
        .eventually(
            "{ products(first: 2) { edges { cursor node { sku onHand reserved available priceCents } } pageInfo { hasNextPage endCursor } } }",
            json!({}),
            WITHIN,
            |data| {
                let edges = data["products"]["edges"].as_array()?;
                (edges.len() == 2 && edges[0]["node"]["onHand"] == 5).then(|| data["products"].clone())
            },
        )
        .await;
    assert_eq!(products["edges"][0]["node"]["sku"], "A-1");
    assert_eq!(products["edges"][0]["node"]["available"], 5);
    assert_eq!(products["edges"][1]["node"]["sku"], "B-2");
    assert_eq!(products["pageInfo"]["hasNextPage"], true);
    let rest = platform
        .graphql(
            "query($after: String) { products(after: $after) { edges { node { sku onHand } } pageInfo { hasNextPage } } }",
            json!({"after": products["pageInfo"]["endCursor"]}),
        )
        .await;
    assert_eq!(rest["data"]["products"]["edges"][0]["node"]["sku"], "C-3");
    assert_eq!(rest["data"]["products"]["pageInfo"]["hasNextPage"], false);

    // customer-1's five orders, newest first, two per page.
    let page_query = "query($after: String) { orders(customerId: \"customer-1\", first: 2, after: $after) { edges { node { id status history { eventType } } } pageInfo { hasNextPage endCursor } } }";
    platform
        .eventually(
            "{ orders(customerId: \"customer-1\", first: 10) { edges { node { id } } } }",
            json!({}),
            WITHIN,
            |data| (data["orders"]["edges"].as_array()?.len() == 5).then_some(()),
        )
        .await;
    let mut seen = Vec::new();
    let mut after = Value::Null;
    loop {
        let page = platform.graphql(page_query, json!({"after": after})).await;
        assert!(page.get("errors").is_none(), "{page:#}");
        let orders = &page["data"]["orders"];
        for edge in orders["edges"].as_array().unwrap() {
            assert_eq!(edge["node"]["history"][0]["eventType"], "OrderPlaced");
            seen.push(edge["node"]["id"].as_str().unwrap().to_owned());
        }
        if orders["pageInfo"]["hasNextPage"] == false {
            break;
        }
        after = orders["pageInfo"]["endCursor"].clone();
    }
    placed.reverse();
    assert_eq!(seen, placed, "newest first, each once");
    let placed_only = platform
        .graphql(
            "{ orders(status: CANCELLED) { edges { node { id } } } }",
            json!({}),
        )
        .await;
    assert_eq!(placed_only["data"]["orders"]["edges"], json!([]));
    platform.stop().await;
}

#[tokio::test]
async fn database_texts_never_reach_a_graphql_client() {
    let platform = TestPlatform::start().await;
    sqlx::query("ALTER TABLE product_stock RENAME TO product_stock_away")
        .execute(&platform.pool)
        .await
        .unwrap();
    // A root list and a batched lookup.
    for query in [
        "{ products { edges { node { sku } } } }",
        "{ product(sku: \"MUG\") { sku } }",
    ] {
        let answer = platform.graphql(query, json!({})).await;
        let text = answer.to_string();
        assert_eq!(
            answer["errors"][0]["extensions"]["code"], "UNAVAILABLE",
            "{text}"
        );
        assert!(
            !text.contains("product_stock") && !text.contains("relation"),
            "{text}"
        );
    }
    // And within a batch request.
    let batch = platform
        .client
        .post(platform.url("/graphql"))
        .json(&json!([{"query": "{ products { edges { node { sku } } } }"}, {"query": "{ __typename }"}]))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        batch.contains("UNAVAILABLE") && !batch.contains("product_stock"),
        "{batch}"
    );
    platform.stop().await;
}

#[tokio::test]
async fn bad_queries_get_graphql_errors_and_limits_hold() {
    let platform = TestPlatform::start().await;

    let too_big = platform
        .graphql("{ products(first: 1000) { edges { cursor } } }", json!({}))
        .await;
    assert!(
        too_big["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("first"),
        "{too_big:#}"
    );
    let bad_cursor = platform
        .graphql(
            "{ products(after: \"nonsense\") { edges { cursor } } }",
            json!({}),
        )
        .await;
    assert!(bad_cursor["errors"].is_array(), "{bad_cursor:#}");
    // Introspection may nest as deep as client tools ask (a type's
    // wrappers), but not without end, and its lists not more than three
    // deep: each list nested in another multiplies the answer.
    let deep = format!(
        "{{ __schema {{ types {{ fields {{ type {} name {} }} }} }} }}",
        "{ ofType ".repeat(40),
        "}".repeat(40)
    );
    let refused = platform.graphql(&deep, json!({})).await;
    assert!(
        refused["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("deep"),
        "{refused:#}"
    );
    let multiplied = platform
        .graphql(
            "{ __schema { types { fields { type { fields { type { fields { name } } } } } } } }",
            json!({}),
        )
        .await;
    assert!(
        multiplied["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("4 lists"),
        "{multiplied:#}"
    );
    // Ten full pages of orders with their histories cost more than allowed.
    let page =
        "orders(first: 100) { edges { node { id status history { payload } lines { sku } } } }";
    let aliased: Vec<String> = (0..10).map(|n| format!("p{n}: {page}")).collect();
    let costly = platform
        .graphql(&format!("{{ {} }}", aliased.join(" ")), json!({}))
        .await;
    assert!(
        costly["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("complex"),
        "{costly:#}"
    );
    let unknown = platform
        .graphql("{ order(id: \"not-a-uuid\") { id } }", json!({}))
        .await;
    assert_eq!(unknown["data"]["order"], Value::Null);
    let page = platform
        .client
        .get(platform.url("/graphql"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("graphiql"));
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_see_each_change_of_their_order_over_websocket() {
    use platform_tests::websocket;

    let platform = TestPlatform::start().await;
    platform.create_product("MUG", 1250, 10).await;
    let placed = platform
        .command("/api/orders", &order_body(&[("MUG", 1)]), 202)
        .await;
    let id = placed["order_id"].as_str().unwrap().to_owned();
    platform
        .eventually(ORDER, json!({"id": id}), WITHIN, |data| {
            data["order"].is_object().then_some(())
        })
        .await;

    let mut socket = websocket::connect(platform.address).await;
    websocket::send(
        &mut socket,
        &json!({
            "type": "connection_init",
            "payload": {"Authorization": format!("Bearer {}", identity::testing::admin_token())},
        }),
    )
    .await;
    let ack = websocket::next_where(&mut socket, WITHIN, |_| true).await;
    assert_eq!(ack["type"], "connection_ack");
    websocket::send(
        &mut socket,
        &json!({
            "id": "1",
            "type": "subscribe",
            "payload": {"query": format!("subscription {{ orderUpdated(id: \"{id}\") {{ id status version cancellationReason }} }}")},
        }),
    )
    .await;
    // No wait is needed: the subscription is registered as soon as the
    // message is read, and the change reaches the read side through the
    // relay and Kafka, well after.

    platform
        .command(
            &format!("/api/orders/{id}/cancel"),
            &json!({"reason": "too slow"}),
            202,
        )
        .await;

    let update = websocket::next_where(&mut socket, WITHIN, |value| value["type"] == "next").await;
    let order = &update["payload"]["data"]["orderUpdated"];
    assert_eq!(order["id"], id.as_str());
    assert_eq!(order["status"], "CANCELLED");
    assert_eq!(order["version"], 2);
    assert_eq!(order["cancellationReason"], "too slow");
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphiql_needs_no_internet_its_page_and_every_file_it_loads_come_from_the_platform() {
    let platform = TestPlatform::start().await;
    let client = reqwest::Client::new();
    let page = client
        .get(platform.url("/graphql"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let policy = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(policy.starts_with("default-src 'self'"), "{policy}");
    let html = page.text().await.unwrap();
    assert!(
        !html.contains("://"),
        "the page names no other site: {html}"
    );
    let mut files = 0;
    for attribute in ["src=\"", "href=\""] {
        for part in html.split(attribute).skip(1) {
            let path = part.split('"').next().unwrap();
            let asset = client.get(platform.url(path)).send().await.unwrap();
            assert_eq!(asset.status(), 200, "{path}");
            let kind = asset.headers()["content-type"].to_str().unwrap().to_owned();
            assert!(
                kind.starts_with("text/javascript") || kind.starts_with("text/css"),
                "{path}: {kind}"
            );
            assert!(!asset.bytes().await.unwrap().is_empty(), "{path}");
            files += 1;
        }
    }
    assert_eq!(
        files, 5,
        "React, ReactDOM, GraphiQL's script and styles, the start script"
    );
    let missing = client
        .get(platform.url("/graphql/assets/../../etc/passwd"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    platform.stop().await;
}
