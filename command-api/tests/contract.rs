//! The REST contract, row by row: each success and each row of the error
//! table, answered as problem+json, and nothing appended by a refused request.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

mod common;

use axum::http::StatusCode;
use command_api::ApiConfig;
use common::{TestApi, order_body};
use serde_json::json;

// --- successes ---------------------------------------------------------------

#[tokio::test]
async fn creating_a_product_answers_201_with_its_version_and_etag() {
    let api = TestApi::new().await;

    let answer = api
        .post(
            "/api/products",
            &json!({"sku": "MUG-01", "name": "Mug", "price_cents": 1250, "currency": "EUR"}),
            &[],
        )
        .await;

    assert_eq!(answer.status, StatusCode::CREATED);
    assert_eq!(
        answer.body_at("Product", "MUG-01", 1),
        json!({"sku": "MUG-01", "version": 1})
    );
    assert_eq!(answer.etag().as_deref(), Some("\"1\""));
    assert!(answer.headers.contains_key("x-request-id"));
}

#[tokio::test]
async fn adding_stock_answers_202_with_the_new_version() {
    let api = TestApi::new().await;
    api.create_product("MUG", 1250, "EUR").await;

    let answer = api
        .post("/api/products/MUG/stock", &json!({"quantity": 25}), &[])
        .await;

    assert_eq!(answer.status, StatusCode::ACCEPTED);
    assert_eq!(
        answer.body_at("Product", "MUG", 2),
        json!({"sku": "MUG", "version": 2})
    );
    assert_eq!(answer.etag().as_deref(), Some("\"2\""));
}

#[tokio::test]
async fn placing_an_order_takes_unit_prices_from_the_products() {
    let api = TestApi::new().await;
    api.create_product("MUG", 1250, "EUR").await;
    api.create_product("TEA", 499, "EUR").await;

    let answer = api
        .post(
            "/api/orders",
            &order_body(&[("MUG", 2), ("TEA", 1)]),
            &[("x-request-id", "req-42")],
        )
        .await;

    assert_eq!(answer.status, StatusCode::ACCEPTED, "{:#}", answer.body);
    assert_eq!(answer.body["status"], "PLACED");
    assert_eq!(answer.body["version"], 1);
    assert_eq!(answer.etag().as_deref(), Some("\"1\""));
    let order_id = answer.body["order_id"].as_str().unwrap();
    let (payload, metadata): (serde_json::Value, serde_json::Value) = sqlx::query_as(
        "SELECT payload::jsonb, metadata::jsonb FROM events WHERE aggregate_type = 'Order' AND aggregate_id = $1",
    )
    .bind(order_id)
    .fetch_one(&api.pool)
    .await
    .unwrap();
    let placed = &payload["OrderPlaced"];
    assert_eq!(placed["total_cents"], 2 * 1250 + 499);
    assert_eq!(placed["currency"], "EUR");
    assert_eq!(placed["lines"][0]["unit_price_cents"], 1250);
    assert_eq!(placed["lines"][1]["unit_price_cents"], 499);
    // The request id is the events' correlation id.
    assert_eq!(metadata["correlation_id"], "req-42");
    assert_eq!(answer.headers["x-request-id"], "req-42");
}

#[tokio::test]
async fn cancelling_an_order_answers_202_with_the_new_version() {
    let api = TestApi::new().await;
    api.create_product("MUG", 1250, "EUR").await;
    let order_id = api.place_order(&[("MUG", 1)]).await;

    let answer = api
        .post(
            &format!("/api/orders/{order_id}/cancel"),
            &json!({"reason": "changed my mind"}),
            &[],
        )
        .await;

    assert_eq!(answer.status, StatusCode::ACCEPTED);
    assert_eq!(
        answer.body_at("Order", &order_id, 2),
        json!({"order_id": order_id, "version": 2})
    );
}

// --- 400 and 415 ---------------------------------------------------------------

#[tokio::test]
async fn a_body_that_is_not_json_is_a_400() {
    let api = TestApi::new().await;

    let answer = api
        .post_raw(
            "/api/products",
            Some("application/json"),
            b"{\"sku\": ".to_vec(),
        )
        .await;

    answer.assert_problem(400, "malformed-json");
    assert_eq!(api.event_count().await, 0);
}

#[tokio::test]
async fn a_body_sent_as_another_media_type_is_a_415() {
    let api = TestApi::new().await;
    let body = json!({"sku": "MUG", "name": "Mug", "price_cents": 1, "currency": "EUR"})
        .to_string()
        .into_bytes();

    api.post_raw("/api/products", Some("text/plain"), body.clone())
        .await
        .assert_problem(415, "unsupported-media-type");
    api.post_raw("/api/products", None, body)
        .await
        .assert_problem(415, "unsupported-media-type");
    assert_eq!(api.event_count().await, 0);
}

#[tokio::test]
async fn malformed_command_headers_are_a_400() {
    let api = TestApi::new().await;
    let body = json!({"sku": "MUG", "name": "Mug", "price_cents": 1, "currency": "EUR"});

    for if_match in [
        "W/\"3\"",
        "\"3",
        "\"+3\"",
        "\"10000000000000000000\"",
        "three",
    ] {
        api.post("/api/products", &body, &[("if-match", if_match)])
            .await
            .assert_problem(400, "bad-header");
    }
    let long_key = "k".repeat(256);
    api.post(
        "/api/products",
        &body,
        &[("idempotency-key", long_key.as_str())],
    )
    .await
    .assert_problem(400, "bad-header");
    assert_eq!(api.event_count().await, 0);
}

// --- 422 -------------------------------------------------------------------------

#[tokio::test]
async fn a_missing_field_is_a_422_naming_it() {
    let api = TestApi::new().await;

    let answer = api
        .post(
            "/api/products",
            &json!({"sku": "MUG", "name": "Mug", "currency": "EUR"}),
            &[],
        )
        .await;

    answer.assert_problem(422, "validation-failed");
    assert_eq!(answer.error_fields(), ["price_cents"]);
    assert_eq!(api.event_count().await, 0);
}

#[tokio::test]
async fn a_field_of_the_wrong_type_is_a_422_naming_it() {
    let api = TestApi::new().await;
    api.create_product("MUG", 1, "EUR").await;

    let answer = api
        .post("/api/products/MUG/stock", &json!({"quantity": "five"}), &[])
        .await;

    answer.assert_problem(422, "validation-failed");
    assert_eq!(answer.error_fields(), ["quantity"]);
    assert_eq!(api.event_count().await, 1);
}

#[tokio::test]
async fn an_unknown_field_is_a_422_naming_it() {
    let api = TestApi::new().await;
    api.create_product("MUG", 1, "EUR").await;
    let mut body = order_body(&[("MUG", 1)]);
    body["lines"][0]["unit_price_cents"] = json!(1);

    let answer = api.post("/api/orders", &body, &[]).await;

    answer.assert_problem(422, "validation-failed");
    assert_eq!(answer.error_fields(), ["lines[0].unit_price_cents"]);
    assert_eq!(api.event_count().await, 1);
}

#[tokio::test]
async fn values_out_of_range_are_a_422_listing_every_field() {
    let api = TestApi::new().await;

    let answer = api
        .post(
            "/api/products",
            &json!({"sku": "has space", "name": " ", "price_cents": -1, "currency": "eur"}),
            &[],
        )
        .await;

    answer.assert_problem(422, "validation-failed");
    assert_eq!(answer.error_fields(), ["sku", "name", "currency"]);
    let answer = api
        .post(
            "/api/products",
            &json!({"sku": "MUG", "name": "Mug", "price_cents": -1, "currency": "EUR"}),
            &[],
        )
        .await;
    assert_eq!(answer.error_fields(), ["price_cents"]);
    assert_eq!(api.event_count().await, 0);
}

#[tokio::test]
async fn stock_quantities_outside_one_to_a_million_are_a_422() {
    let api = TestApi::new().await;
    api.create_product("MUG", 1, "EUR").await;

    for quantity in [0, -3, 1_000_001] {
        let answer = api
            .post(
                "/api/products/MUG/stock",
                &json!({"quantity": quantity}),
                &[],
            )
            .await;
        answer.assert_problem(422, "validation-failed");
        assert_eq!(answer.error_fields(), ["quantity"]);
    }
    assert_eq!(api.event_count().await, 1);
}

#[tokio::test]
async fn order_lines_breaking_the_rules_are_a_422() {
    let api = TestApi::new().await;
    api.create_product("MUG", 1, "EUR").await;

    let cases = [
        (order_body(&[]), vec!["lines"]),
        (
            order_body(&(0..101).map(|_| ("MUG", 1)).collect::<Vec<_>>()[..]),
            vec!["lines"],
        ),
        (order_body(&[("MUG", 0)]), vec!["lines[0].quantity"]),
        (order_body(&[("MUG", 10_001)]), vec!["lines[0].quantity"]),
    ];
    for (body, fields) in cases {
        let answer = api.post("/api/orders", &body, &[]).await;
        answer.assert_problem(422, "validation-failed");
        let reported = answer.error_fields();
        for field in fields {
            assert!(
                reported.iter().any(|f| f == field),
                "{field} not in {reported:?}"
            );
        }
    }
    let mut no_customer = order_body(&[("MUG", 1)]);
    no_customer["customer_id"] = json!("");
    no_customer["payment_method"] = json!("not a token");
    let answer = api.post("/api/orders", &no_customer, &[]).await;
    assert_eq!(answer.error_fields(), ["customer_id", "payment_method"]);
    assert_eq!(api.event_count().await, 1);
}

#[tokio::test]
async fn orders_the_products_prices_rule_out_are_a_409_naming_the_line() {
    // Well-formed orders that the products' prices make impossible: the
    // request is valid by the API's document, the domain refuses it (as the
    // contract says of refusals), and nothing is appended.
    let api = TestApi::new().await;
    api.create_product("MUG", 1, "EUR").await;
    api.create_product("DOLLAR", 1, "USD").await;
    // 10,000 of it cost more than one charge can take.
    api.create_product("YACHT", 2_000_000, "EUR").await;

    let cases = [
        (order_body(&[("MUG", 1), ("DOLLAR", 1)]), "lines[1].sku"),
        (order_body(&[("YACHT", 10_000)]), "split the order"),
    ];
    for (body, named) in cases {
        let answer = api.post("/api/orders", &body, &[]).await;
        answer.assert_problem(409, "command-refused");
        let detail = answer.body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(named), "{named} not in {detail:?}");
    }
    assert_eq!(api.event_count().await, 3);
}

#[tokio::test]
async fn lines_naming_one_sku_become_one_line_of_the_order() {
    let api = TestApi::new().await;
    api.create_product("MUG", 250, "EUR").await;
    api.create_product("TEA", 100, "EUR").await;
    // A cart may repeat a product, each line within the request's limit;
    // the order holds each SKU once, in the order it was first named.
    let mut lines: Vec<(&str, i64)> = vec![("MUG", 10_000), ("TEA", 1)];
    lines.extend((0..98).map(|_| ("MUG", 10_000)));
    let answer = api.post("/api/orders", &order_body(&lines), &[]).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{:#}", answer.body);
    let order_id = answer.body["order_id"].as_str().unwrap();
    let (payload,): (serde_json::Value,) = sqlx::query_as(
        "SELECT payload::jsonb FROM events WHERE aggregate_type = 'Order' AND aggregate_id = $1",
    )
    .bind(order_id)
    .fetch_one(&api.pool)
    .await
    .unwrap();
    let placed = &payload["OrderPlaced"];
    let recorded: Vec<(String, u64)> = placed["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|line| {
            (
                line["sku"].as_str().unwrap().to_owned(),
                line["quantity"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        recorded,
        [("MUG".to_owned(), 990_000), ("TEA".to_owned(), 1)]
    );
    assert_eq!(placed["total_cents"], 990_000 * 250 + 100);
}

#[tokio::test]
async fn integers_written_with_a_fraction_of_zero_are_integers() {
    // JSON Schema's integer includes 25.0 and 2.5e1; a fraction is refused.
    let api = TestApi::new().await;
    api.create_product("MUG", 1, "EUR").await;
    let answer = api
        .post_raw(
            "/api/products/MUG/stock",
            Some("application/json"),
            br#"{"quantity": 2.5e1}"#.to_vec(),
        )
        .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{:#}", answer.body);
    let answer = api
        .post_raw(
            "/api/products/MUG/stock",
            Some("application/json"),
            br#"{"quantity": 2.5}"#.to_vec(),
        )
        .await;
    answer.assert_problem(422, "validation-failed");
    assert_eq!(answer.error_fields(), ["quantity"]);
    let answer = api
        .post_raw(
            "/api/products/MUG/stock",
            Some("application/json"),
            br#"{"quantity": 1e300}"#.to_vec(),
        )
        .await;
    answer.assert_problem(422, "validation-failed");
    assert_eq!(api.event_count().await, 2);
}

#[tokio::test]
async fn the_same_idempotency_key_with_a_different_body_is_a_422() {
    let api = TestApi::new().await;
    api.create_product("MUG", 1, "EUR").await;
    let key = [("idempotency-key", "stock-1")];
    api.post("/api/products/MUG/stock", &json!({"quantity": 1}), &key)
        .await;

    let answer = api
        .post("/api/products/MUG/stock", &json!({"quantity": 2}), &key)
        .await;

    answer.assert_problem(422, "idempotency-key-reused");
    assert_eq!(api.event_count().await, 2);
}

// --- 404 -------------------------------------------------------------------------

#[tokio::test]
async fn unknown_products_are_a_404() {
    let api = TestApi::new().await;
    api.create_product("MUG", 1, "EUR").await;

    api.post("/api/products/NOPE/stock", &json!({"quantity": 1}), &[])
        .await
        .assert_problem(404, "not-found");
    let answer = api
        .post("/api/orders", &order_body(&[("MUG", 1), ("NOPE", 1)]), &[])
        .await;
    answer.assert_problem(404, "not-found");
    assert_eq!(answer.error_fields(), ["lines[1].sku"]);
    assert_eq!(api.event_count().await, 1);
}

#[tokio::test]
async fn unknown_orders_are_a_404() {
    let api = TestApi::new().await;
    let reason = json!({"reason": "x"});

    api.post(
        "/api/orders/0190a0b0-0000-7000-8000-000000000000/cancel",
        &reason,
        &[],
    )
    .await
    .assert_problem(404, "not-found");
    api.post("/api/orders/not-a-uuid/cancel", &reason, &[])
        .await
        .assert_problem(404, "not-found");
    assert_eq!(api.event_count().await, 0);
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_as_problems() {
    let api = TestApi::new().await;

    api.get("/api/nothing-here")
        .await
        .assert_problem(404, "not-found");
    api.get("/api/products")
        .await
        .assert_problem(405, "method-not-allowed");
}

// --- 409 -------------------------------------------------------------------------

#[tokio::test]
async fn a_duplicate_sku_is_a_409() {
    let api = TestApi::new().await;
    api.create_product("MUG", 1, "EUR").await;

    let answer = api
        .post(
            "/api/products",
            &json!({"sku": "MUG", "name": "Other mug", "price_cents": 2, "currency": "EUR"}),
            &[],
        )
        .await;

    answer.assert_problem(409, "command-refused");
    assert_eq!(api.event_count().await, 1);
}

#[tokio::test]
async fn cancelling_a_cancelled_order_is_a_409() {
    let api = TestApi::new().await;
    api.create_product("MUG", 1, "EUR").await;
    let order_id = api.place_order(&[("MUG", 1)]).await;
    let path = format!("/api/orders/{order_id}/cancel");
    api.post(&path, &json!({"reason": "first"}), &[]).await;

    let answer = api.post(&path, &json!({"reason": "second"}), &[]).await;

    answer.assert_problem(409, "command-refused");
    assert!(
        answer.body["detail"]
            .as_str()
            .unwrap()
            .contains("already cancelled")
    );
    assert_eq!(api.event_count().await, 3);
}

#[tokio::test]
async fn a_race_lost_more_often_than_allowed_is_a_409() {
    let api = TestApi::with_config(ApiConfig {
        command_attempts: 1,
        ..ApiConfig::default()
    })
    .await;
    api.create_product("MUG", 1, "EUR").await;

    // Another writer takes version 2 in a transaction it holds open; the API's
    // append of version 2 waits on it, then loses when it commits.
    let mut rival = api.pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         VALUES ('Product', 'MUG', 2, 'StockAdded', '1.0', '{\"StockAdded\":{\"quantity\":5}}', '{}')",
    )
    .execute(&mut *rival)
    .await
    .unwrap();
    let body = json!({"quantity": 1});
    let request = api.post("/api/products/MUG/stock", &body, &[]);
    let commit_later = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        rival.commit().await.unwrap();
    };
    let (answer, ()) = tokio::join!(request, commit_later);

    answer.assert_problem(409, "concurrent-update");
    assert_eq!(api.event_count().await, 2);
}

// --- 412 and 413 -----------------------------------------------------------------

#[tokio::test]
async fn if_match_with_a_stale_version_is_a_412_and_appends_nothing() {
    let api = TestApi::new().await;
    api.create_product("MUG", 1, "EUR").await;
    api.add_stock("MUG", 1).await;

    let answer = api
        .post(
            "/api/products/MUG/stock",
            &json!({"quantity": 1}),
            &[("if-match", "\"1\"")],
        )
        .await;

    answer.assert_problem(412, "version-mismatch");
    assert_eq!(api.event_count().await, 2);
    let current = api
        .post(
            "/api/products/MUG/stock",
            &json!({"quantity": 1}),
            &[("if-match", "\"2\"")],
        )
        .await;
    assert_eq!(current.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn a_body_over_64_kib_is_a_413() {
    let api = TestApi::new().await;
    let name = "x".repeat(65 * 1024);
    let body = json!({"sku": "MUG", "name": name, "price_cents": 1, "currency": "EUR"});

    let answer = api.post("/api/products", &body, &[]).await;

    answer.assert_problem(413, "payload-too-large");
    assert_eq!(api.event_count().await, 0);
}

// --- idempotency -----------------------------------------------------------------

#[tokio::test]
async fn a_retried_request_returns_the_first_answer_and_appends_nothing() {
    let api = TestApi::new().await;
    api.create_product("MUG", 1250, "EUR").await;
    let key = [("idempotency-key", "place-1")];
    let body = order_body(&[("MUG", 2)]);

    let first = api.post("/api/orders", &body, &key).await;
    let again = api.post("/api/orders", &body, &key).await;

    assert_eq!(first.status, StatusCode::ACCEPTED);
    assert_eq!(again.status, StatusCode::ACCEPTED);
    assert_eq!(again.body, first.body);
    assert_eq!(again.etag(), first.etag());
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert!(!first.headers.contains_key("idempotent-replayed"));
    assert_eq!(api.event_count().await, 2);
}

// --- service routes ----------------------------------------------------------------

#[tokio::test]
async fn health_readiness_metrics_openapi_and_problem_types_are_served() {
    let api = TestApi::new().await;
    api.create_product("MUG", 1, "EUR").await;

    assert_eq!(api.get("/healthz").await.body, json!({"status": "ok"}));
    let ready = api.get("/readyz").await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.body["checks"]["database"], "ok");
    let metrics = api.get("/metrics").await;
    let text = metrics.body.as_str().unwrap();
    assert!(text.contains("http_requests_total"), "{text}");
    assert!(text.contains("commands_total"), "{text}");
    let document = api.get("/api/openapi.json").await;
    assert_eq!(document.body["openapi"], "3.1.0");
    assert!(document.body["paths"]["/api/orders"]["post"].is_object());
    let problem = api.get("/problems/version-mismatch").await;
    assert_eq!(problem.status, StatusCode::OK);
}

#[tokio::test]
async fn the_api_stays_ready_without_kafka_and_says_so() {
    // Commands need only the database: a broker outage is reported, and
    // the API stays in its load balancer.
    let api = TestApi::with_config(ApiConfig {
        kafka_brokers: Some("127.0.0.1:1".into()),
        ..ApiConfig::default()
    })
    .await;

    let ready = api.get("/readyz").await;

    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.body["checks"]["database"], "ok");
    assert!(ready.body["checks"]["kafka"].is_string());
    assert_ne!(ready.body["checks"]["kafka"], "ok");
}
