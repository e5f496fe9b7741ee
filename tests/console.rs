//! The console's operations over HTTP, as an attacker and a careless
//! operator would call them: only `admin` callers are answered, bad input
//! is a clear problem that changes nothing, and every action is recorded as
//! the caller's. (`browser.rs` drives the page itself.)
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::time::Duration;

use platform_tests::TestPlatform;
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};

const WITHIN: Duration = Duration::from_secs(30);

/// Every operation: method, path, body.
fn operations() -> Vec<(Method, &'static str, Option<Value>)> {
    vec![
        (Method::GET, "/api/operations/overview", None),
        (Method::GET, "/api/operations/dead-letters", None),
        (Method::GET, "/api/operations/dead-letters/x.dlq:0:0", None),
        (
            Method::POST,
            "/api/operations/dead-letters/x.dlq:0:0/replay",
            Some(json!({})),
        ),
        (
            Method::POST,
            "/api/operations/dead-letters/x.dlq:0:0/discard",
            Some(json!({"reason": "r"})),
        ),
        (Method::GET, "/api/operations/sagas", None),
        (Method::GET, "/api/operations/sagas/o-1", None),
        (
            Method::POST,
            "/api/operations/sagas/o-1/retry",
            Some(json!({})),
        ),
        (
            Method::POST,
            "/api/operations/sagas/o-1/abandon",
            Some(json!({"reason": "r"})),
        ),
    ]
}

async fn call(
    client: &Client,
    platform: &TestPlatform,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = client.request(method, platform.url(path));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The open JUNK letters listed with `limit=1`: shown, matching, more.
async fn listed_with_limit(admin: &Client, platform: &TestPlatform) -> (usize, i64, bool) {
    let (status, listed) = call(
        admin,
        platform,
        Method::GET,
        "/api/operations/dead-letters?aggregate=JUNK&limit=1",
        None,
    )
    .await;
    assert_eq!(status, 200, "{listed}");
    (
        listed["dead_letters"].as_array().unwrap().len(),
        listed["matching"].as_i64().unwrap(),
        listed["more"].as_bool().unwrap(),
    )
}

async fn actions_recorded(platform: &TestPlatform) -> i64 {
    sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM dead_letter_actions) + (SELECT count(*) FROM saga_actions)",
    )
    .fetch_one(&platform.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admins_are_answered_and_bad_input_changes_nothing() {
    let platform = TestPlatform::start().await;
    let anonymous = Client::new();
    let customer = identity::testing::client("customer-1", "orders");
    let admin = identity::testing::client("ops-alice", "admin");

    // The page and its files hold no data: anyone may load them, from the
    // platform only.
    let page = anonymous
        .get(platform.url("/console"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let policy = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(policy.contains("default-src 'self'"), "{policy}");
    assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
    assert!(
        page.text()
            .await
            .unwrap()
            .contains("/console/assets/console.js")
    );
    for (file, kind) in [
        ("console.js", "text/javascript"),
        ("console.css", "text/css"),
    ] {
        let asset = anonymous
            .get(platform.url(&format!("/console/assets/{file}")))
            .send()
            .await
            .unwrap();
        assert_eq!(asset.status(), 200, "{file}");
        assert!(
            asset.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with(kind)
        );
    }
    for missing in [
        "/console/assets/other.js",
        "/console/assets/..%2FCargo.toml",
    ] {
        let response = anonymous.get(platform.url(missing)).send().await.unwrap();
        assert_eq!(response.status(), 404, "{missing}");
    }

    // The operations: 401 without a token, 403 without `admin`.
    for (method, path, body) in operations() {
        let (status, problem) =
            call(&anonymous, &platform, method.clone(), path, body.clone()).await;
        assert_eq!(status, 401, "{method} {path}: {problem}");
        assert_eq!(problem["status"], 401);
        let (status, problem) = call(&customer, &platform, method.clone(), path, body).await;
        assert_eq!(status, 403, "{method} {path}: {problem}");
    }

    // An admin: the overview names every read model.
    let (status, overview) = call(
        &admin,
        &platform,
        Method::GET,
        "/api/operations/overview",
        None,
    )
    .await;
    assert_eq!(status, 200, "{overview}");
    let tables: Vec<&str> = overview["projections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|projection| projection["table"].as_str().unwrap())
        .collect();
    assert_eq!(
        tables,
        [
            "order_summary",
            "product_stock",
            "customer_order",
            "order_payment"
        ]
    );
    assert!(overview["sagas"]["needing_attention"].is_number());

    // Bad input: a clear problem each, and nothing recorded.
    let dlq = format!("{}.dlq", platform.topics.prefix);
    let long = "x".repeat(501);
    let bad: Vec<(Method, String, Option<Value>, u16)> = vec![
        (
            Method::GET,
            "/api/operations/dead-letters?all=maybe".into(),
            None,
            422,
        ),
        (
            Method::GET,
            "/api/operations/dead-letters?colour=red".into(),
            None,
            422,
        ),
        (
            Method::GET,
            format!("/api/operations/dead-letters?reason={long}"),
            None,
            422,
        ),
        (
            Method::GET,
            "/api/operations/dead-letters/not-an-id".into(),
            None,
            422,
        ),
        (
            Method::GET,
            "/api/operations/dead-letters/someone-elses.dlq:0:0".into(),
            None,
            404,
        ),
        (
            Method::POST,
            "/api/operations/dead-letters/someone-elses.dlq:0:0/replay".into(),
            Some(json!({"dry_run": true})),
            404,
        ),
        (
            Method::POST,
            format!("/api/operations/dead-letters/{dlq}:0:0/replay"),
            Some(json!({"dry_run": "yes"})),
            422,
        ),
        (
            Method::POST,
            format!("/api/operations/dead-letters/{dlq}:0:0/discard"),
            Some(json!({"reason": "  "})),
            422,
        ),
        (
            Method::POST,
            format!("/api/operations/dead-letters/{dlq}:0:0/discard"),
            Some(json!({"reason": "r", "by": "someone else"})),
            422,
        ),
        (
            Method::POST,
            "/api/operations/sagas/no-such-order/retry".into(),
            Some(json!({})),
            404,
        ),
        (
            Method::POST,
            "/api/operations/sagas/no-such-order/abandon".into(),
            Some(json!({"reason": "r"})),
            404,
        ),
        (
            Method::POST,
            "/api/operations/sagas/no-such-order/abandon".into(),
            Some(json!({})),
            422,
        ),
        (
            Method::POST,
            "/api/operations/sagas/no-such-order/abandon".into(),
            Some(json!({"reason": long})),
            422,
        ),
        (
            Method::GET,
            "/api/operations/sagas/no-such-order".into(),
            None,
            404,
        ),
        // One line each: a line break would forge lines of the audit's report.
        (
            Method::POST,
            "/api/operations/sagas/no-such-order/abandon".into(),
            Some(json!({"reason": "fine\nVIOLATION: forged"})),
            422,
        ),
        (
            Method::POST,
            format!("/api/operations/dead-letters/{dlq}:0:0/discard"),
            Some(json!({"reason": "a\u{1b}[2Jb"})),
            422,
        ),
        (
            Method::GET,
            "/api/operations/dead-letters?reason=a%0Ab".into(),
            None,
            422,
        ),
        (
            Method::GET,
            "/api/operations/dead-letters?limit=0".into(),
            None,
            422,
        ),
        (
            Method::GET,
            "/api/operations/dead-letters?limit=501".into(),
            None,
            422,
        ),
    ];
    for (method, path, body, expected) in bad {
        let (status, problem) = call(&admin, &platform, method.clone(), &path, body).await;
        assert_eq!(status, expected, "{method} {path}: {problem}");
        assert!(
            problem["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{method} {path}: {problem}"
        );
    }
    let wrong_type = admin
        .post(platform.url(&format!("/api/operations/dead-letters/{dlq}:0:0/discard")))
        .body(r#"{"reason": "r"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_type.status(), 415);
    assert_eq!(actions_recorded(&platform).await, 0);

    // A dead letter, listed and discarded over HTTP: recorded as the
    // token's subject, whatever the body says.
    let topics = event_contract::Topics::with_prefix(&platform.topics.prefix);
    let products = topics.for_aggregate("Product").unwrap();
    platform::testing::produce_poison(&products, "JUNK", &["not json", "not json either"])
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WITHIN;
    let letter = loop {
        let (status, listed) = call(
            &admin,
            &platform,
            Method::GET,
            "/api/operations/dead-letters?aggregate=JUNK",
            None,
        )
        .await;
        assert_eq!(status, 200, "{listed}");
        let letters = listed["dead_letters"].as_array().unwrap();
        if letters.len() == 2 {
            break letters[0].clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "two dead letters not listed: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(listed_with_limit(&admin, &platform).await, (1, 2, true));
    assert_eq!(letter["source_topic"], products.as_str());
    assert_eq!(letter["consumer"], "products");
    assert!(letter["state"].is_null());
    let id = letter["id"].as_str().unwrap();
    let (status, shown) = call(
        &admin,
        &platform,
        Method::GET,
        &format!("/api/operations/dead-letters/{id}"),
        None,
    )
    .await;
    assert_eq!(
        (status, &shown["payload"]),
        (StatusCode::OK, &json!("not json"))
    );
    let (status, dry) = call(
        &admin,
        &platform,
        Method::POST,
        &format!("/api/operations/dead-letters/{id}/replay"),
        Some(json!({"dry_run": true})),
    )
    .await;
    assert_eq!(status, 200, "{dry}");
    assert_eq!(dry["to"], products.as_str());
    assert_eq!(
        actions_recorded(&platform).await,
        0,
        "a dry run records nothing"
    );
    let (status, discarded) = call(
        &admin,
        &platform,
        Method::POST,
        &format!("/api/operations/dead-letters/{id}/discard"),
        Some(json!({"reason": "garbage from a test"})),
    )
    .await;
    assert_eq!(status, 200, "{discarded}");
    let recorded: (String, Option<String>, String) =
        sqlx::query_as("SELECT action, reason, actor FROM dead_letter_actions")
            .fetch_one(&platform.pool)
            .await
            .unwrap();
    assert_eq!(
        recorded,
        (
            "discarded".into(),
            Some("garbage from a test".into()),
            "ops-alice".into()
        )
    );
    let (_, open) = call(
        &admin,
        &platform,
        Method::GET,
        "/api/operations/dead-letters?aggregate=JUNK",
        None,
    )
    .await;
    let open = open["dead_letters"].as_array().unwrap();
    assert_eq!(open.len(), 1, "the other one stays open");
    assert_ne!(open[0]["id"], letter["id"]);
    platform.stop().await;
}
