//! Idempotency keys live in the database with the events, so a retry after the
//! API restarted (nothing left in memory) still finds the first answer.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use platform_tests::{TestApp, order_body};
use serde_json::Value;

#[tokio::test]
async fn a_retry_after_a_restart_returns_the_first_answer_and_appends_nothing() {
    let mut app = TestApp::spawn().await;
    app.create_product("MUG", 1250).await;
    let body = order_body(&[("MUG", 3)]);
    let send = |app: &TestApp| {
        app.client
            .post(app.url("/api/orders"))
            .header("idempotency-key", "checkout-7f3a")
            .json(&body)
            .send()
    };

    let first = send(&app).await.unwrap();
    assert_eq!(first.status(), 202);
    let first_etag = first.headers()["etag"].clone();
    let first_body: Value = first.json().await.unwrap();
    let events_before = app.event_count().await;

    app.restart().await;
    let retry = send(&app).await.unwrap();

    assert_eq!(retry.status(), 202);
    assert_eq!(retry.headers()["etag"], first_etag);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    let retry_body: Value = retry.json().await.unwrap();
    assert_eq!(retry_body, first_body);
    assert_eq!(app.event_count().await, events_before);
}
