//! The saga's HTTP client of the payment gateway against the gateway service
//! itself (its own database, real HTTP): the contract between the two.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use payment_gateway::ledger::FLAKY_FAILURES;
use payment_gateway::{Gateway, GatewayConfig};
use platform::testing::TestDatabase;
use saga_orchestrator::gateway::http::{CircuitBreaker, HttpGateway, HttpGatewayConfig};
use saga_orchestrator::gateway::{ChargeAnswer, ChargeRequest, PaymentGateway, RefundAnswer};
use tokio_util::sync::CancellationToken;

/// Serves a gateway on a free port with a fresh database; stops with the token.
async fn serve() -> (String, TestDatabase, CancellationToken) {
    let database = TestDatabase::create().await.unwrap();
    let (url, stop) = serve_on(SocketAddr::from(([127, 0, 0, 1], 0)), &database).await;
    (url, database, stop)
}

/// Serves a gateway at `listen` on `database`.
async fn serve_on(listen: SocketAddr, database: &TestDatabase) -> (String, CancellationToken) {
    let gateway = Gateway::build(GatewayConfig {
        listen,
        database_url: database.url.clone(),
        pool_size: 4,
        slow_answer: Duration::from_millis(200),
        token: platform::testing::gateway_token().into(),
        ..GatewayConfig::default()
    })
    .await
    .unwrap();
    let url = format!("http://{}", gateway.local_addr().unwrap());
    let stop = CancellationToken::new();
    tokio::spawn(gateway.run_until(stop.clone().cancelled_owned()));
    (url, stop)
}

fn config(base_url: String, threshold: u32) -> HttpGatewayConfig {
    HttpGatewayConfig {
        base_url,
        token: platform::testing::gateway_token().into(),
        request_timeout: Duration::from_millis(300),
        window: threshold,
        failure_ratio: 1.0,
        open_for: Duration::from_millis(500),
    }
}

fn client(base_url: String, threshold: u32) -> HttpGateway {
    HttpGateway::new(config(base_url, threshold)).unwrap()
}

fn request(key: &str, token: &str) -> ChargeRequest {
    ChargeRequest {
        key: key.into(),
        amount_cents: 1250,
        currency: "EUR".into(),
        payment_method: token.into(),
    }
}

#[tokio::test]
async fn charges_and_refunds_go_over_http_once_per_key() {
    let (url, _database, stop) = serve().await;
    let gateway = client(url, 5);

    let first = gateway.charge(&request("a", "tok_visa")).await.unwrap();
    let again = gateway.charge(&request("a", "tok_visa")).await.unwrap();
    assert!(matches!(first, ChargeAnswer::Approved { .. }));
    assert_eq!(first, again);
    assert_eq!(
        gateway.charge(&request("b", "tok_declined")).await.unwrap(),
        ChargeAnswer::Declined {
            reason: "card declined".into()
        }
    );
    for _ in 0..FLAKY_FAILURES {
        assert!(gateway.charge(&request("c", "tok_flaky")).await.is_err());
    }
    assert!(matches!(
        gateway.charge(&request("c", "tok_flaky")).await.unwrap(),
        ChargeAnswer::Approved { .. }
    ));
    let ChargeAnswer::Approved { reference } = first else {
        unreachable!()
    };
    assert_eq!(
        gateway.refund("a").await.unwrap(),
        RefundAnswer::Refunded {
            reference: Some(reference),
            amount_cents: Some(1250),
        }
    );
    // Asked again after its refund, the charge says it was undone.
    assert_eq!(
        gateway.charge(&request("a", "tok_visa")).await.unwrap(),
        ChargeAnswer::Undone
    );
    assert_eq!(
        gateway.refund("never-charged").await.unwrap(),
        RefundAnswer::NothingCaptured
    );
    assert_eq!(
        gateway.refund("b").await.unwrap(),
        RefundAnswer::NothingCaptured
    );
    // A charge the gateway's rules refuse is a decline, not an outage.
    let mut huge = request("d", "tok_visa");
    huge.amount_cents = payment_gateway::ledger::MAX_AMOUNT_CENTS + 1;
    assert!(matches!(
        gateway.charge(&huge).await.unwrap(),
        ChargeAnswer::Declined { .. }
    ));
    stop.cancel();
}

#[tokio::test]
async fn charges_that_never_answer_time_out_without_opening_the_circuit() {
    // A customer's card network that never answers is that charge's
    // failure: a stream of such orders must not stop everyone's payments.
    let (url, _database, stop) = serve().await;
    let gateway = client(url, 2);
    for n in 0..4 {
        let started = Instant::now();
        assert!(
            gateway
                .charge(&request(&format!("t{n}"), "tok_timeout"))
                .await
                .is_err()
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    assert!(gateway.charge(&request("v", "tok_visa")).await.is_ok());
    stop.cancel();
}

#[tokio::test]
async fn a_gateway_that_is_down_opens_the_circuit_until_it_answers_again() {
    let (url, database, stop) = serve().await;
    let address: SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    let gateway = client(url, 2);
    assert!(gateway.charge(&request("a", "tok_visa")).await.is_ok());
    stop.cancel();
    // The port closes once the gateway has stopped.
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(address).await.is_ok() {
        assert!(Instant::now() < deadline, "the gateway did not stop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    for _ in 0..2 {
        assert!(gateway.charge(&request("v", "tok_visa")).await.is_err());
    }
    // Open: refused at once, without a request.
    let started = Instant::now();
    let refused = gateway.charge(&request("v", "tok_visa")).await.unwrap_err();
    assert!(refused.0.contains("circuit open"), "{refused}");
    assert!(started.elapsed() < Duration::from_millis(100));

    // Back on its port: after the pause one call goes through, and its
    // success closes the circuit.
    let (_, stop) = serve_on(address, &database).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(gateway.charge(&request("v", "tok_visa")).await.is_ok());
    assert!(gateway.charge(&request("w", "tok_visa")).await.is_ok());
    stop.cancel();
}

#[tokio::test]
async fn a_gateway_that_refuses_the_clients_token_is_failing_and_opens_the_circuit() {
    let (url, _database, stop) = serve().await;
    let gateway = HttpGateway::new(HttpGatewayConfig {
        token: "a-token-the-gateway-was-not-given-0123456789".into(),
        ..config(url.clone(), 2)
    })
    .unwrap();
    for _ in 0..2 {
        let refused = gateway.charge(&request("v", "tok_visa")).await.unwrap_err();
        assert!(refused.0.contains("401"), "{refused}");
    }
    let refused = gateway.charge(&request("v", "tok_visa")).await.unwrap_err();
    assert!(refused.0.contains("circuit open"), "{refused}");
    // Nothing was charged: the gateway's own client finds no charge.
    assert!(matches!(
        client(url, 2).refund("v").await.unwrap(),
        RefundAnswer::NothingCaptured
    ));
    // A client without a token is refused before it starts.
    assert!(
        HttpGateway::new(HttpGatewayConfig {
            token: String::new(),
            ..config("http://127.0.0.1:1".into(), 2)
        })
        .is_err()
    );
    stop.cancel();
}

#[tokio::test]
async fn an_unreachable_gateway_is_unavailable_not_a_decline() {
    // Nothing listens on this port once the listener is dropped.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let gateway = client(url, 5);
    assert!(gateway.charge(&request("x", "tok_visa")).await.is_err());
    assert!(gateway.refund("x").await.is_err());
}

#[test]
fn the_breaker_opens_after_the_threshold_and_a_success_closes_it() {
    let breaker = CircuitBreaker::new(3, 1.0, Duration::from_secs(60));
    breaker.failure();
    breaker.failure();
    assert!(breaker.allow());
    breaker.failure();
    assert!(breaker.is_open());
    assert!(!breaker.allow());
    breaker.success();
    assert!(!breaker.is_open());
    assert!(breaker.allow());
}

#[test]
fn single_charges_failing_among_successes_do_not_open_the_breaker() {
    // A charge whose card network never answers, another that fails twice
    // first: the gateway itself answers most calls.
    let breaker = CircuitBreaker::new(20, 0.8, Duration::from_secs(60));
    for call in 0..200 {
        if call % 7 < 3 {
            breaker.failure();
        } else {
            breaker.success();
        }
        assert!(!breaker.is_open(), "opened at call {call}");
    }
    for _ in 0..16 {
        breaker.failure();
    }
    assert!(
        breaker.is_open(),
        "a gateway failing most calls is left alone"
    );
}

#[test]
fn a_half_open_circuit_is_not_held_shut_by_calls_that_time_out() {
    // After an outage, the calls let through to test the gateway may be
    // charges whose card network never answers: their timeouts say nothing
    // of the gateway, and must not keep everyone else's calls out.
    let breaker = CircuitBreaker::new(2, 1.0, Duration::from_millis(50));
    breaker.failure();
    breaker.failure();
    assert!(!breaker.allow());
    std::thread::sleep(Duration::from_millis(60));
    // Half open: a call goes through and times out (no verdict) ...
    assert!(breaker.allow());
    // ... and the next caller is not kept out by it.
    assert!(breaker.allow(), "a timed-out trial held the circuit shut");
    breaker.success();
    assert!(!breaker.is_open());
    // A failure while half open opens it again at once.
    breaker.failure();
    breaker.failure();
    std::thread::sleep(Duration::from_millis(60));
    assert!(breaker.allow());
    breaker.failure();
    assert!(!breaker.allow());
}
