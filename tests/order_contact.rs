//! An order's shipping address and e-mail: taken when the order is placed,
//! checked field by field, and read back only by the order's customer and
//! administrators.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::time::Duration;

use identity::testing;
use platform_tests::TestPlatform;
use serde_json::{Value, json};

const WITHIN: Duration = Duration::from_secs(30);

const CONTACT: &str = "query($id: ID!) { order(id: $id) { id email \
     shippingAddress { name line1 line2 city postalCode country } } }";

fn address() -> Value {
    json!({"name": "Ada Lovelace", "line1": "12 St James's Square", "city": "London",
           "postal_code": "SW1Y 4JH", "country": "GB"})
}

fn order_with(contact: &[(&str, Value)]) -> Value {
    let mut body = json!({"lines": [{"sku": "MUG", "quantity": 1}], "payment_method": "tok_visa"});
    for (field, value) in contact {
        body[*field] = value.clone();
    }
    body
}

async fn events(platform: &TestPlatform) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&platform.pool)
        .await
        .unwrap()
}

async fn contact_as(client: &reqwest::Client, platform: &TestPlatform, id: &str) -> Value {
    let answer: Value = client
        .post(platform.url("/graphql"))
        .json(&json!({"query": CONTACT, "variables": {"id": id}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(answer.get("errors").is_none(), "{answer}");
    answer["data"]["order"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_address_and_email_go_to_the_customer_and_administrators_only() {
    let platform = TestPlatform::start().await;
    platform.create_product("MUG", 1250, 10).await;
    let alice = testing::client("alice", "orders");
    let bob = testing::client("bob", "orders");

    let mut with_line2 = address();
    with_line2["line2"] = json!("Flat 2");
    let placed: Value = alice
        .post(platform.url("/api/orders"))
        .json(&order_with(&[
            ("shipping_address", with_line2),
            ("email", json!("ada@example.com")),
        ]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = placed["order_id"].as_str().unwrap().to_owned();
    platform
        .eventually(CONTACT, json!({"id": id}), WITHIN, |data| {
            (!data["order"].is_null()).then_some(())
        })
        .await;

    let expected = json!({"name": "Ada Lovelace", "line1": "12 St James's Square",
        "line2": "Flat 2", "city": "London", "postalCode": "SW1Y 4JH", "country": "GB"});
    for (who, client) in [("alice", &alice), ("admin", &platform.client)] {
        let order = contact_as(client, &platform, &id).await;
        assert_eq!(order["email"], "ada@example.com", "{who}");
        assert_eq!(order["shippingAddress"], expected, "{who}");
    }
    // Another customer does not see the order at all, let alone its address.
    assert!(contact_as(&bob, &platform, &id).await.is_null());

    // Both stay optional: without them, and with them null.
    for body in [
        order_with(&[]),
        order_with(&[("shipping_address", Value::Null), ("email", Value::Null)]),
    ] {
        let placed = platform.command("/api/orders", &body, 202).await;
        let id = placed["order_id"].as_str().unwrap().to_owned();
        let order = platform
            .eventually(CONTACT, json!({"id": id}), WITHIN, |data| {
                (!data["order"].is_null()).then(|| data["order"].clone())
            })
            .await;
        assert!(order["email"].is_null() && order["shippingAddress"].is_null());
    }
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_address_or_email_is_refused_field_by_field_and_nothing_is_kept() {
    let platform = TestPlatform::start().await;
    platform.create_product("MUG", 1250, 10).await;
    let before = events(&platform).await;
    let with = |field: &str, value: Value| {
        let mut address = address();
        address[field] = value;
        address
    };
    let mut without_city = address();
    without_city.as_object_mut().unwrap().remove("city");
    let cases = [
        (with("country", json!("XX")), "shipping_address.country"),
        (with("country", json!("gb")), "shipping_address.country"),
        (with("name", json!("")), "shipping_address.name"),
        (with("line1", json!("   ")), "shipping_address.line1"),
        (with("line2", json!("")), "shipping_address.line2"),
        (
            with("postal_code", json!("x".repeat(21))),
            "shipping_address.postal_code",
        ),
        (with("city", json!("Lon\u{0}don")), "shipping_address.city"),
        (with("city", json!(7)), "shipping_address.city"),
        (with("extra", json!("x")), "shipping_address"),
        (without_city, "shipping_address"),
    ];
    for (address, field) in cases {
        let body = order_with(&[("shipping_address", address.clone())]);
        let answer = platform.post("/api/orders", &body).await;
        assert_eq!(answer.status(), 422, "{address}");
        let problem: Value = answer.json().await.unwrap();
        let fields: Vec<&str> = problem["errors"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|error| error["field"].as_str())
            .collect();
        assert!(
            fields.iter().any(|f| f.starts_with(field)),
            "{address}: {problem}"
        );
    }
    for email in [
        json!("no-at-sign"),
        json!("two@at@signs"),
        json!("a space@example.com"),
        json!("@example.com"),
        json!("ada@"),
        json!(format!("{}@example.com", "a".repeat(65))),
        json!(42),
    ] {
        let answer = platform
            .post("/api/orders", &order_with(&[("email", email.clone())]))
            .await;
        assert_eq!(answer.status(), 422, "{email}");
        let problem: Value = answer.json().await.unwrap();
        assert!(problem.to_string().contains("email"), "{email}: {problem}");
    }
    assert_eq!(events(&platform).await, before, "a refused order appended");
    platform.stop().await;
}
