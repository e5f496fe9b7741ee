//! Authorize, then capture, against the gateway's real database: what each
//! token answers, captures in parts never above the authorization, voids,
//! refunds in parts never above their capture, expiry, and one outcome per
//! key however many callers race.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use payment_gateway::GatewayConfig;
use platform::testing::TestDatabase;
use serde_json::{Value, json};
use support::{Running, any_port, config};

fn at(value: &Value) -> DateTime<Utc> {
    value.as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn each_token_authorizes_as_the_contract_says() {
    let database = TestDatabase::create().await.unwrap();
    let gateway = Running::start_with(GatewayConfig {
        authorization_ttl: Duration::from_millis(400),
        ..config(&database, any_port())
    })
    .await;

    let (status, visa) = gateway.authorize("a-visa", "tok_visa", 1250).await;
    assert_eq!(status, 200, "{visa}");
    assert_eq!(visa["status"], "authorized");
    assert_eq!(visa["amount_cents"], 1250);
    assert_eq!(visa["capturable_cents"], 1250);
    assert_eq!(visa["captured_cents"], 0);
    assert!(visa["reference"].as_str().unwrap().starts_with("au_"));
    let holds = at(&visa["expires_at"]) - Utc::now();
    assert!(
        holds > chrono::Duration::days(6),
        "a card holds a week: {holds}"
    );

    let (_, declined) = gateway.authorize("a-declined", "tok_declined", 1250).await;
    assert_eq!(
        (&declined["status"], &declined["reason"]),
        (&json!("declined"), &json!("card declined"))
    );
    assert_eq!(declined["capturable_cents"], 0);
    let (_, unknown) = gateway.authorize("a-unknown", "tok_nope", 1250).await;
    assert_eq!(unknown["reason"], "unknown payment method");

    for _ in 0..payment_gateway::ledger::FLAKY_FAILURES {
        let (status, problem) = gateway.authorize("a-flaky", "tok_flaky", 1250).await;
        assert_eq!(status, 503, "{problem}");
    }
    assert_eq!(
        gateway.authorize("a-flaky", "tok_flaky", 1250).await.1["status"],
        "authorized"
    );

    let silent = tokio::time::timeout(
        Duration::from_millis(300),
        gateway.authorize("a-timeout", "tok_timeout", 1250),
    )
    .await;
    assert!(silent.is_err(), "tok_timeout answered");
    assert_eq!(
        gateway.get("/authorizations/a-timeout").await.1["status"],
        "pending"
    );
    let started = std::time::Instant::now();
    let (_, slow) = gateway.authorize("a-slow", "tok_slow", 1250).await;
    assert_eq!(slow["status"], "authorized");
    assert!(started.elapsed() >= Duration::from_millis(300));

    // tok_expiring holds for the configured time, then nothing can be
    // captured: the capture is recorded as expired and takes nothing.
    let (_, expiring) = gateway.authorize("a-expiring", "tok_expiring", 1000).await;
    assert_eq!(expiring["status"], "authorized");
    let holds = at(&expiring["expires_at"]) - at(&expiring["updated_at"]);
    assert!(holds <= chrono::Duration::milliseconds(500), "{holds}");
    let (status, first) = gateway.capture("a-expiring", "c-early", 300).await;
    assert_eq!((status, &first["status"]), (200, &json!("captured")));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while gateway.get("/authorizations/a-expiring").await.1["status"] != "expired" {
        assert!(std::time::Instant::now() < deadline, "never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, late) = gateway.capture("a-expiring", "c-late", 300).await;
    assert_eq!(status, 200, "{late}");
    assert_eq!(late["status"], "expired");
    assert!(late["reference"].is_null());
    assert_eq!(late["authorization"]["captured_cents"], 300);
    assert_eq!(late["authorization"]["capturable_cents"], 0);
    // Asked again, the key answers the same.
    assert_eq!(
        gateway.capture("a-expiring", "c-late", 300).await.1["status"],
        "expired"
    );

    // The issuer of tok_capture_declined authorizes and refuses captures.
    gateway
        .authorize("a-refuses", "tok_capture_declined", 500)
        .await;
    let (status, refused) = gateway.capture("a-refuses", "c-refused", 500).await;
    assert_eq!(status, 200);
    assert_eq!(refused["status"], "declined");
    assert_eq!(refused["reason"], "the card's issuer refused the capture");
    assert_eq!(refused["authorization"]["captured_cents"], 0);
    gateway.stop().await;
}

#[tokio::test]
async fn captures_take_parts_of_an_authorization_and_never_more_than_it_holds() {
    let database = TestDatabase::create().await.unwrap();
    let gateway = Running::start(&database, any_port()).await;
    gateway.authorize("a-1", "tok_visa", 1000).await;

    let (status, first) = gateway.capture("a-1", "c-1", 400).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["status"], "captured");
    assert!(first["reference"].as_str().unwrap().starts_with("cp_"));
    assert_eq!(first["authorization"]["captured_cents"], 400);
    assert_eq!(first["authorization"]["capturable_cents"], 600);
    // One key, one capture: asked again, the same reference, nothing more taken.
    let (_, again) = gateway.capture("a-1", "c-1", 400).await;
    assert_eq!(again["reference"], first["reference"]);
    assert_eq!(again["authorization"]["captured_cents"], 400);
    let (status, problem) = gateway.capture("a-1", "c-1", 401).await;
    assert_eq!(
        (status, &problem["type"]),
        (409, &json!("/problems/key-reused"))
    );

    let (status, problem) = gateway.capture("a-1", "c-2", 601).await;
    assert_eq!(status, 409, "{problem}");
    assert_eq!(problem["type"], "/problems/exceeds-authorization");
    assert_eq!(
        gateway.get("/captures/c-2").await.0,
        404,
        "nothing recorded"
    );

    // Eight callers race for what is left, 150 each: four win, and the
    // authorization is never overdrawn.
    let tries = (0..8).map(|n| {
        let gateway = &gateway;
        async move { gateway.capture("a-1", &format!("c-race-{n}"), 150).await }
    });
    let answers = futures::future::join_all(tries).await;
    let won = answers.iter().filter(|(status, _)| *status == 200).count();
    let lost = answers
        .iter()
        .filter(|(status, answer)| {
            *status == 409 && answer["type"] == "/problems/exceeds-authorization"
        })
        .count();
    assert_eq!((won, lost), (4, 4), "{answers:?}");

    let (status, found) = gateway.get("/authorizations/a-1").await;
    assert_eq!(status, 200);
    assert_eq!(found["captured_cents"], 1000);
    assert_eq!(found["capturable_cents"], 0);
    let captures = found["captures"].as_array().unwrap();
    assert_eq!(captures.len(), 5);
    let total: i64 = captures
        .iter()
        .map(|c| c["amount_cents"].as_i64().unwrap())
        .sum();
    assert_eq!(total, 1000);

    // Nothing is captured of what was never authorized, or is not yet.
    let (status, problem) = gateway.capture("a-none", "c-none", 1).await;
    assert_eq!(
        (status, &problem["type"]),
        (404, &json!("/problems/not-found"))
    );
    gateway.authorize("a-no", "tok_declined", 100).await;
    let (status, problem) = gateway.capture("a-no", "c-no", 1).await;
    assert_eq!(
        (status, &problem["type"]),
        (409, &json!("/problems/not-capturable"))
    );
    assert!(problem["detail"].as_str().unwrap().contains("declined"));
    gateway.stop().await;
}

#[tokio::test]
async fn a_void_releases_what_was_not_captured_and_what_was_never_authorized() {
    let database = TestDatabase::create().await.unwrap();
    let gateway = Running::start(&database, any_port()).await;

    gateway.authorize("a-part", "tok_visa", 1000).await;
    gateway.capture("a-part", "c-part", 250).await;
    let (status, voided) = gateway.void("a-part").await;
    assert_eq!(status, 200);
    assert_eq!(voided["status"], "voided");
    assert_eq!(voided["captured_cents"], 250, "a capture stays captured");
    assert_eq!(voided["capturable_cents"], 0);
    let (status, problem) = gateway.capture("a-part", "c-after", 1).await;
    assert_eq!(
        (status, &problem["type"]),
        (409, &json!("/problems/not-capturable"))
    );
    assert_eq!(gateway.void("a-part").await.1["status"], "voided");

    // Voided while its network was silent, or before it arrived: the
    // authorization is never held.
    let _ = tokio::time::timeout(
        Duration::from_millis(200),
        gateway.authorize("a-silent", "tok_timeout", 500),
    )
    .await;
    assert_eq!(gateway.void("a-silent").await.1["status"], "voided");
    let (_, early) = gateway.void("a-early").await;
    assert_eq!(early["status"], "voided");
    assert!(early["amount_cents"].is_null());
    let (status, late) = gateway.authorize("a-early", "tok_visa", 500).await;
    assert_eq!((status, &late["status"]), (200, &json!("voided")));

    // A declined authorization held nothing: it stays declined.
    gateway.authorize("a-declined", "tok_declined", 500).await;
    assert_eq!(gateway.void("a-declined").await.1["status"], "declined");
    gateway.stop().await;
}

#[tokio::test]
async fn refunds_give_parts_of_a_capture_back_and_never_more_than_it_took() {
    let database = TestDatabase::create().await.unwrap();
    let gateway = Running::start(&database, any_port()).await;
    gateway.authorize("a-1", "tok_visa", 1000).await;
    gateway.capture("a-1", "c-1", 600).await;
    gateway.capture("a-1", "c-2", 400).await;

    let (status, refund) = gateway.refund_capture("c-1", "r-1", 200).await;
    assert_eq!(status, 200, "{refund}");
    assert_eq!(refund["capture_key"], "c-1");
    assert_eq!(refund["amount_cents"], 200);
    assert!(refund["reference"].as_str().unwrap().starts_with("re_"));
    assert_eq!(refund["capture"]["refunded_cents"], 200);
    let (_, again) = gateway.refund_capture("c-1", "r-1", 200).await;
    assert_eq!(again["reference"], refund["reference"]);
    assert_eq!(again["capture"]["refunded_cents"], 200, "refunded once");
    let (status, problem) = gateway.refund_capture("c-2", "r-1", 200).await;
    assert_eq!(
        (status, &problem["type"]),
        (409, &json!("/problems/key-reused"))
    );

    let (status, problem) = gateway.refund_capture("c-1", "r-2", 401).await;
    assert_eq!(
        (status, &problem["type"]),
        (409, &json!("/problems/exceeds-capture"))
    );
    let tries = (0..6).map(|n| {
        let gateway = &gateway;
        async move {
            gateway
                .refund_capture("c-1", &format!("r-race-{n}"), 100)
                .await
        }
    });
    let answers = futures::future::join_all(tries).await;
    let won = answers.iter().filter(|(status, _)| *status == 200).count();
    assert_eq!(won, 4, "{answers:?}");

    let (_, capture) = gateway.get("/captures/c-1").await;
    assert_eq!(capture["refunded_cents"], 600);
    assert_eq!(capture["refunds"].as_array().unwrap().len(), 5);
    let (_, authorization) = gateway.get("/authorizations/a-1").await;
    assert_eq!(
        (
            &authorization["captured_cents"],
            &authorization["refunded_cents"]
        ),
        (&json!(1000), &json!(600))
    );
    let (status, found) = gateway.get("/refunds/r-1").await;
    assert_eq!((status, &found["amount_cents"]), (200, &json!(200)));
    assert_eq!(gateway.get("/refunds/r-2").await.0, 404);

    // Only a capture that took money gives any back.
    let (status, _) = gateway.refund_capture("c-nowhere", "r-x", 1).await;
    assert_eq!(status, 404);
    gateway
        .authorize("a-refuses", "tok_capture_declined", 500)
        .await;
    gateway.capture("a-refuses", "c-refused", 500).await;
    let (status, problem) = gateway.refund_capture("c-refused", "r-y", 1).await;
    assert_eq!(
        (status, &problem["type"]),
        (409, &json!("/problems/not-captured"))
    );
    gateway.stop().await;
}

#[tokio::test]
async fn the_ledger_outlives_the_gateway_and_pages_for_operators() {
    let database = TestDatabase::create().await.unwrap();
    let gateway = Running::start(&database, any_port()).await;
    for n in 0..5 {
        gateway
            .authorize(&format!("a-{n}"), "tok_visa", 100 + n)
            .await;
    }
    gateway.capture("a-2", "c-2", 50).await;
    gateway.stop().await;

    let gateway = Running::start(&database, any_port()).await;
    let mut seen = HashSet::new();
    let mut after = String::new();
    loop {
        let (status, page) = gateway
            .get(&format!("/authorizations?limit=2&after={after}"))
            .await;
        assert_eq!(status, 200, "{page}");
        for found in page["authorizations"].as_array().unwrap() {
            assert!(seen.insert(found["key"].as_str().unwrap().to_owned()));
        }
        match page["next_after"].as_str() {
            Some(next) => after = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5);
    let (_, found) = gateway.get("/authorizations/a-2").await;
    assert_eq!(found["captured_cents"], 50);
    assert_eq!(found["captures"][0]["key"], "c-2");
    assert_eq!(gateway.get("/authorizations?limit=0").await.0, 422);
    gateway.stop().await;
}

#[tokio::test]
async fn bad_parts_are_refused_with_the_fields_named() {
    let database = TestDatabase::create().await.unwrap();
    let gateway = Running::start(&database, any_port()).await;
    gateway.authorize("a-1", "tok_visa", 1000).await;
    for path in ["/authorizations/a-1/captures", "/captures/c-1/refunds"] {
        let (status, problem) = gateway
            .post(path, json!({"key": "has space", "amount_cents": 0}))
            .await;
        assert_eq!(status, 422, "{path}: {problem}");
        let fields: Vec<&str> = problem["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert_eq!(fields, ["key", "amount_cents"], "{path}");
        let (status, _) = gateway
            .post(path, json!({"key": "k", "amount_cents": 1, "extra": 1}))
            .await;
        assert_eq!(status, 422, "{path}: unknown fields are refused");
    }
    let (status, problem) = gateway
        .post(
            "/authorizations",
            json!({"key": "a-2", "amount_cents": -1, "currency": "EUR", "payment_method": "tok_visa"}),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(
        gateway.get("/authorizations/a-1").await.1["captured_cents"],
        0,
        "nothing changed"
    );
    gateway.stop().await;
}

#[tokio::test]
async fn a_key_raced_under_two_authorizations_is_refused_as_reused_not_failed() {
    let database = TestDatabase::create().await.unwrap();
    let gateway = Running::start(&database, any_port()).await;
    gateway.authorize("a-1", "tok_visa", 1000).await;
    gateway.authorize("a-2", "tok_visa", 1000).await;
    for round in 0..5 {
        let key = format!("c-raced-{round}");
        let tries = (0..6).map(|n| {
            let (gateway, key) = (&gateway, key.clone());
            async move {
                let parent = if n % 2 == 0 { "a-1" } else { "a-2" };
                gateway.capture(parent, &key, 10).await
            }
        });
        for (status, answer) in futures::future::join_all(tries).await {
            assert!(
                status == 200 || (status == 409 && answer["type"] == "/problems/key-reused"),
                "{status} {answer}"
            );
        }
    }
    gateway.stop().await;
}
