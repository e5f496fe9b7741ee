//! The gateway over HTTP against its own real PostgreSQL database: the tokens,
//! one charge per key, refunds and voids, and nothing forgotten by a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

mod support;

use std::time::Duration;

use payment_gateway::{Gateway, GatewayConfig};
use platform::testing::TestDatabase;
use serde_json::{Value, json};
use support::{Running, any_port, config, its_client};

#[tokio::test]
async fn each_token_answers_as_the_contract_says() {
    let database = TestDatabase::create().await.unwrap();
    let gateway = Running::start(&database, any_port()).await;

    let (status, visa) = gateway.charge("k-visa", "tok_visa", 1250).await;
    assert_eq!((status, visa["status"].clone()), (200, json!("approved")));
    assert!(visa["reference"].as_str().unwrap().starts_with("ch_"));
    assert_eq!(visa["amount_cents"], 1250);

    let (_, declined) = gateway.charge("k-declined", "tok_declined", 1250).await;
    assert_eq!(declined["status"], "declined");
    assert_eq!(declined["reason"], "card declined");
    let (_, unknown) = gateway.charge("k-unknown", "tok_nope", 1250).await;
    assert_eq!(unknown["reason"], "unknown payment method");

    for _ in 0..payment_gateway::ledger::FLAKY_FAILURES {
        let (status, problem) = gateway.charge("k-flaky", "tok_flaky", 1250).await;
        assert_eq!(status, 503, "{problem}");
        assert_eq!(problem["type"], "/problems/temporarily-unavailable");
    }
    assert_eq!(
        gateway.charge("k-flaky", "tok_flaky", 1250).await.1["status"],
        "approved"
    );

    let silent = tokio::time::timeout(
        Duration::from_millis(300),
        gateway.charge("k-timeout", "tok_timeout", 1250),
    )
    .await;
    assert!(silent.is_err(), "tok_timeout answered");
    assert_eq!(gateway.find("k-timeout").await.1["status"], "pending");

    let started = std::time::Instant::now();
    let (_, slow) = gateway.charge("k-slow", "tok_slow", 1250).await;
    assert_eq!(slow["status"], "approved");
    assert!(started.elapsed() >= Duration::from_millis(300));
    // A gateway that stops does not wait for answers that never come.
    let hanging = tokio::spawn({
        let base = gateway.base.clone();
        async move {
            its_client()
                .post(format!("{base}/charges"))
                .json(&json!({"key": "k-hang", "amount_cents": 1, "currency": "EUR", "payment_method": "tok_timeout"}))
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    tokio::time::timeout(Duration::from_secs(5), gateway.stop())
        .await
        .expect("the gateway stops despite a hanging charge");
    assert_eq!(hanging.await.unwrap(), 503);
}

#[tokio::test]
async fn a_key_charges_once_and_cannot_be_reused_for_another_charge() {
    let database = TestDatabase::create().await.unwrap();
    let gateway = Running::start(&database, any_port()).await;

    let tries = (0..8).map(|_| gateway.charge("k-1", "tok_visa", 500));
    let answers = futures::future::join_all(tries).await;
    let references: std::collections::HashSet<String> = answers
        .iter()
        .map(|(status, charge)| {
            assert_eq!(*status, 200);
            charge["reference"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(references.len(), 1, "one key, one capture");

    let (status, problem) = gateway.charge("k-1", "tok_visa", 501).await;
    assert_eq!(status, 409);
    assert_eq!(problem["type"], "/problems/key-reused");
    gateway.stop().await;
}

#[tokio::test]
async fn refunds_give_captures_back_and_void_what_was_not_taken() {
    let database = TestDatabase::create().await.unwrap();
    let gateway = Running::start(&database, any_port()).await;

    gateway.charge("k-visa", "tok_visa", 700).await;
    assert_eq!(gateway.refund("k-visa").await["status"], "refunded");
    assert_eq!(gateway.refund("k-visa").await["status"], "refunded");
    // The charge, asked again, says what became of it.
    assert_eq!(
        gateway.charge("k-visa", "tok_visa", 700).await.1["status"],
        "refunded"
    );

    let _ = tokio::time::timeout(
        Duration::from_millis(200),
        gateway.charge("k-timeout", "tok_timeout", 700),
    )
    .await;
    assert_eq!(gateway.refund("k-timeout").await["status"], "voided");

    // Refunded before the charge arrived: the charge is never taken.
    let voided = gateway.refund("k-early").await;
    assert_eq!(voided["status"], "voided");
    assert!(voided["amount_cents"].is_null());
    assert_eq!(
        gateway.charge("k-early", "tok_visa", 700).await.1["status"],
        "voided"
    );

    gateway.charge("k-declined", "tok_declined", 700).await;
    assert_eq!(gateway.refund("k-declined").await["status"], "declined");
    gateway.stop().await;
}

#[tokio::test]
async fn a_restart_forgets_nothing() {
    let database = TestDatabase::create().await.unwrap();
    let gateway = Running::start(&database, any_port()).await;
    let (_, approved) = gateway.charge("k-kept", "tok_visa", 900).await;
    gateway.charge("k-flaky", "tok_flaky", 900).await;
    gateway.stop().await;

    let gateway = Running::start(&database, any_port()).await;
    let (status, found) = gateway.find("k-kept").await;
    assert_eq!(status, 200);
    assert_eq!(found["reference"], approved["reference"]);
    // The flaky charge remembers its first failure.
    assert_eq!(gateway.charge("k-flaky", "tok_flaky", 900).await.0, 503);
    assert_eq!(
        gateway.charge("k-flaky", "tok_flaky", 900).await.1["status"],
        "approved"
    );
    assert_eq!(gateway.refund("k-kept").await["status"], "refunded");
    assert_eq!(gateway.find("nope").await.0, 404);
    gateway.stop().await;
}

#[tokio::test]
async fn bad_charges_are_refused_with_the_fields_named() {
    let database = TestDatabase::create().await.unwrap();
    let gateway = Running::start(&database, any_port()).await;
    let url = format!("{}/charges", gateway.base);

    let body = json!({"key": "has space", "amount_cents": 10_000_000_001i64, "currency": "eur", "payment_method": ""});
    let response = gateway.client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 422);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = response.json().await.unwrap();
    let fields: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        ["key", "amount_cents", "currency", "payment_method"]
    );

    let not_json = gateway
        .client
        .post(&url)
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), 400);
    let text = gateway.client.post(&url).body("{}").send().await.unwrap();
    assert_eq!(text.status(), 415);
    let huge = gateway
        .client
        .post(&url)
        .header("content-type", "application/json")
        .body(vec![b' '; 64 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status(), 413);
    gateway.stop().await;
}

#[tokio::test]
async fn operators_page_through_every_charge() {
    let database = TestDatabase::create().await.unwrap();
    let gateway = Running::start(&database, any_port()).await;
    for n in 0..5 {
        gateway.charge(&format!("k-{n}"), "tok_visa", 100).await;
    }
    let mut keys = Vec::new();
    let mut after = String::new();
    loop {
        let page: Value = gateway
            .client
            .get(format!("{}/charges?limit=2&after={after}", gateway.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for charge in page["charges"].as_array().unwrap() {
            keys.push(charge["key"].as_str().unwrap().to_owned());
        }
        match page["next_after"].as_str() {
            Some(next) => after = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(keys, ["k-0", "k-1", "k-2", "k-3", "k-4"]);
    gateway.stop().await;
}

#[tokio::test]
async fn the_gateway_creates_its_database_when_the_server_has_none() {
    let database = TestDatabase::create().await.unwrap();
    // Drop it, so that only the name is left.
    let admin = TestDatabase::create().await.unwrap();
    let pool = admin.pool(1).await.unwrap();
    sqlx::query(&format!("DROP DATABASE {} WITH (FORCE)", database.name))
        .execute(&pool)
        .await
        .unwrap();

    let gateway = Running::start(&database, any_port()).await;
    assert_eq!(gateway.charge("k", "tok_visa", 1).await.0, 200);
    gateway.stop().await;
}

#[tokio::test]
async fn a_gateway_stops_even_while_its_database_hangs() {
    let database = TestDatabase::create().await.unwrap();
    let gateway = Running::start(&database, any_port()).await;
    gateway.charge("k-first", "tok_visa", 100).await;
    // Another session holds the ledger: every charge waits for it.
    let pool = database.pool(2).await.unwrap();
    let mut locker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE charges IN EXCLUSIVE MODE")
        .execute(&mut *locker)
        .await
        .unwrap();
    let waiting = tokio::spawn({
        let (client, base) = (gateway.client.clone(), gateway.base.clone());
        async move {
            client
                .post(format!("{base}/charges"))
                .json(&json!({"key": "k-stuck", "amount_cents": 1, "currency": "EUR", "payment_method": "tok_visa"}))
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    platform::testing::lock_waiter(&pool, None, Duration::from_secs(10))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), gateway.stop())
        .await
        .expect("the gateway stops while its database hangs");
    assert_eq!(waiting.await.unwrap(), 503);
    locker.rollback().await.unwrap();
}

#[tokio::test]
async fn the_gateway_answers_its_client_only() {
    let database = TestDatabase::create().await.unwrap();
    let gateway = Running::start(&database, any_port()).await;
    gateway.charge("k-mine", "tok_visa", 1250).await;
    gateway.authorize("a-mine", "tok_visa", 1250).await;
    gateway.capture("a-mine", "c-mine", 250).await;
    let stranger = reqwest::Client::new();
    let wrong = |request: reqwest::RequestBuilder| request.bearer_auth("not-the-token");
    let charge = json!({"key": "k-theirs", "amount_cents": 1, "currency": "EUR", "payment_method": "tok_visa"});

    // Without the token, or with another, nothing is listed, found, charged
    // or refunded: 401 problem+json, and the ledger is as it was.
    for client_sends in [|r: reqwest::RequestBuilder| r, wrong] {
        let requests = [
            client_sends(stranger.get(format!("{}/charges", gateway.base))),
            client_sends(stranger.get(format!("{}/charges/k-mine", gateway.base))),
            client_sends(
                stranger
                    .post(format!("{}/charges", gateway.base))
                    .json(&charge),
            ),
            client_sends(stranger.post(format!("{}/charges/k-mine/refund", gateway.base))),
            // What a web page may send to any address without asking: a
            // form's text/plain POST.
            client_sends(
                stranger
                    .post(format!("{}/charges/k-mine/refund", gateway.base))
                    .header("content-type", "text/plain")
                    .body("x"),
            ),
            client_sends(stranger.get(format!("{}/nowhere", gateway.base))),
            client_sends(stranger.get(format!("{}/authorizations", gateway.base))),
            client_sends(
                stranger
                    .post(format!("{}/authorizations", gateway.base))
                    .json(&charge),
            ),
            client_sends(stranger.get(format!("{}/authorizations/a-mine", gateway.base))),
            client_sends(
                stranger
                    .post(format!("{}/authorizations/a-mine/captures", gateway.base))
                    .json(&json!({"key": "c-theirs", "amount_cents": 1})),
            ),
            client_sends(stranger.post(format!("{}/authorizations/a-mine/void", gateway.base))),
            client_sends(stranger.get(format!("{}/captures/c-mine", gateway.base))),
            client_sends(
                stranger
                    .post(format!("{}/captures/c-mine/refunds", gateway.base))
                    .json(&json!({"key": "r-theirs", "amount_cents": 1})),
            ),
            client_sends(stranger.get(format!("{}/refunds/r-theirs", gateway.base))),
        ];
        for request in requests {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 401);
            assert_eq!(response.headers()["www-authenticate"], "Bearer");
            assert_eq!(
                response.headers()["content-type"],
                "application/problem+json"
            );
        }
    }
    assert_eq!(gateway.find("k-mine").await.1["status"], "approved");
    assert_eq!(gateway.find("k-theirs").await.0, 404);
    let (_, mine) = gateway.get("/authorizations/a-mine").await;
    assert_eq!(
        (
            &mine["status"],
            &mine["captured_cents"],
            &mine["refunded_cents"]
        ),
        (&json!("authorized"), &json!(250), &json!(0))
    );
    assert_eq!(gateway.get("/authorizations/k-theirs").await.0, 404);

    // A page that rebinds its own name to the gateway's address sends that
    // name as Host: 421, even with the token.
    for host in [
        "evil.example",
        "evil.example:8081",
        "127.0.0.1.evil.example",
    ] {
        let response = gateway
            .client
            .post(format!("{}/charges/k-mine/refund", gateway.base))
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 421, "{host}");
    }
    assert_eq!(gateway.find("k-mine").await.1["status"], "approved");
    for host in ["localhost", "LOCALHOST:8081", "[::1]:8081", "127.0.0.1"] {
        let response = gateway
            .client
            .get(format!("{}/charges/k-mine", gateway.base))
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{host}");
    }

    // Probes answer anyone, whatever they name.
    for probe in ["healthz", "readyz"] {
        let response = stranger
            .get(format!("{}/{probe}", gateway.base))
            .header("host", "10.1.2.3:8081")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{probe}");
    }
    gateway.stop().await;
}

#[tokio::test]
async fn a_gateway_serves_the_hosts_it_is_told_and_needs_a_token() {
    let database = TestDatabase::create().await.unwrap();
    let gateway = Running::start_with(GatewayConfig {
        hosts: vec!["payments.internal".into()],
        ..config(&database, any_port())
    })
    .await;
    let status = |host: &'static str| {
        let request = gateway
            .client
            .get(format!("{}/charges", gateway.base))
            .header("host", host);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status("payments.internal:8081").await, 200);
    assert_eq!(status("Payments.Internal").await, 200);
    assert_eq!(status("127.0.0.1").await, 421);
    gateway.stop().await;

    for token in ["", "short"] {
        let refused = Gateway::build(GatewayConfig {
            token: token.into(),
            ..config(&database, any_port())
        })
        .await
        .unwrap_err();
        assert!(
            refused.to_string().contains("ORDERS_GATEWAY_TOKEN"),
            "{refused}"
        );
    }
}

#[tokio::test]
async fn charges_waiting_for_their_card_network_are_bounded_in_number_and_time() {
    let database = TestDatabase::create().await.unwrap();
    let gateway = Running::start_with(GatewayConfig {
        max_held: 2,
        hold_for: Duration::from_millis(800),
        ..config(&database, any_port())
    })
    .await;
    let held: Vec<_> = (0..2)
        .map(|n| {
            let (client, base) = (gateway.client.clone(), gateway.base.clone());
            tokio::spawn(async move {
                let body = json!({"key": format!("k-held-{n}"), "amount_cents": 1, "currency": "EUR", "payment_method": "tok_timeout"});
                let response = client.post(format!("{base}/charges")).json(&body).send().await.unwrap();
                (response.status().as_u16(), std::time::Instant::now())
            })
        })
        .collect();
    // Both are held (their charges are pending); a third is answered at once.
    let pool = database.pool(1).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while sqlx::query_scalar::<_, i64>("SELECT count(*) FROM charges WHERE key LIKE 'k-held-%'")
        .fetch_one(&pool)
        .await
        .unwrap()
        < 2
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the charges never arrived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = std::time::Instant::now();
    let (status, problem) = gateway.charge("k-third", "tok_timeout", 1).await;
    assert_eq!(status, 503, "{problem}");
    assert_eq!(problem["type"], "/problems/temporarily-unavailable");
    assert!(started.elapsed() < Duration::from_millis(500));
    // The held ones are let go after the hold: 504, not the two minutes of
    // a network that never answers.
    for answer in held {
        let (status, _) = answer.await.unwrap();
        assert_eq!(status, 504);
    }
    let (status, _) = tokio::time::timeout(
        Duration::from_secs(5),
        gateway.charge("k-after", "tok_visa", 1),
    )
    .await
    .expect("answered");
    assert_eq!(status, 200);
    gateway.stop().await;
}
