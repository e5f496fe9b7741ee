//! Saga steps whose outcome the driver did not see: a crash right after the
//! gateway's approval was recorded, a commit stuck behind a lock when the saga
//! gives it up, an orchestrator stopped while the database holds its event.
//! Each starts from the state such a moment leaves in the real stores, then
//! lets a driver (or orchestrator) carry on, and checks the books.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::time::Duration;

use chrono::Utc;
use command_bus::{CommandBus, CommandContext, Expect};
use domain::order::OrderPlaced;
use domain::values::{Currency, Money, OrderId};
use domain::{Order, Payment, PaymentCommand, Product, ProductCommand};
use event_store::{IdempotencyClaim, IdempotencyKey};
use orders_cli::audit::audit_settled;
use platform_tests::{TestGateway, TestPlatform, settings};
use saga_orchestrator::driver::{Driver, Policy, charge_key};
use saga_orchestrator::gateway::http::HttpGateway;
use saga_orchestrator::gateway::{ChargeAnswer, ChargeRequest, PaymentGateway};
use saga_orchestrator::saga::{Action, OrderSaga, Outcome, SagaState};
use saga_orchestrator::store;
use serde_json::json;
use sqlx::PgPool;

const WITHIN: Duration = Duration::from_secs(30);

/// The platform without its saga role, its gateway, and the saga's tools.
struct Stage {
    platform: TestPlatform,
    gateway: TestGateway,
    bus: CommandBus,
    client: HttpGateway,
}

async fn stage() -> Stage {
    let platform = TestPlatform::start().await;
    let gateway = TestGateway::start(&platform.database, &platform.topics).await;
    let settings = settings(&platform.database, &platform.topics, &[]);
    let client = HttpGateway::new(settings.payment_gateway(gateway.url.clone())).unwrap();
    platform.create_product("MUG", 1250, 10).await;
    Stage {
        bus: CommandBus::new(platform.pool.clone()),
        platform,
        gateway,
        client,
    }
}

/// A step's command context, keyed as the driver keys it.
fn step(key: String) -> CommandContext {
    CommandContext {
        correlation_id: "staged".into(),
        causation_id: key.clone(),
        idempotency: Some(IdempotencyClaim {
            fingerprint: key.clone(),
            key: IdempotencyKey::internal(key),
            ttl: Duration::from_secs(3600),
        }),
        expected_version: None,
    }
}

impl Stage {
    /// Places a `tok_visa` order for two mugs and starts its saga's record
    /// (not stored yet).
    async fn placed(&self) -> OrderSaga {
        self.placed_with(&[("MUG", 2)]).await
    }

    /// Places a `tok_visa` order of `lines` (SKU, quantity) and starts its
    /// saga's record (not stored yet).
    async fn placed_with(&self, lines: &[(&str, u32)]) -> OrderSaga {
        let event = self.placed_event(lines).await;
        // The steps staged here are a charge's, as the sagas the previous
        // release stored take them.
        OrderSaga::start_charging(&event, "staged", Utc::now())
    }

    /// Places a `tok_visa` order of `lines` (SKU, quantity): its event as
    /// the saga starts from it.
    async fn placed_event(&self, lines: &[(&str, u32)]) -> OrderPlaced {
        let lines: Vec<_> = lines
            .iter()
            .map(|(sku, quantity)| json!({"sku": sku, "quantity": quantity}))
            .collect();
        let body = json!({"customer_id": "c-1", "lines": lines, "payment_method": "tok_visa"});
        let placed = self.platform.command("/api/orders", &body, 202).await;
        let id = placed["order_id"].as_str().unwrap();
        let (order, _) = self.bus.load::<Order>(id).await.unwrap();
        let order = order.placed().unwrap().clone();
        OrderPlaced {
            order_id: OrderId::parse(id).unwrap(),
            customer_id: order.customer_id,
            lines: order.lines,
            currency: order.currency,
            total_cents: order.total_cents,
            payment_method: order.payment_method,
            shipping_address: None,
            email: None,
        }
    }

    /// Reserves the stock, requests and takes the charge, and records the
    /// approval: everything up to the moment the saga would save that the
    /// charge is approved.
    async fn charged(&self, saga: &mut OrderSaga) {
        self.requested(saga).await;
        let answer = self
            .client
            .charge(&ChargeRequest {
                key: charge_key(&saga.order_id),
                amount_cents: saga.amount_cents,
                currency: saga.currency.clone(),
                payment_method: saga.payment_method.clone(),
            })
            .await
            .unwrap();
        let ChargeAnswer::Approved { reference } = answer else {
            panic!("tok_visa was not approved: {answer:?}");
        };
        self.bus
            .execute::<Payment>(
                &saga.order_id,
                PaymentCommand::ApproveCharge {
                    provider_reference: reference,
                },
                &step(Action::approval_key(&saga.order_id)),
                Expect::Existing,
            )
            .await
            .unwrap();
    }

    /// Reserves the stock and requests the charge on the payment.
    async fn requested(&self, saga: &mut OrderSaga) {
        let order_id = OrderId::parse(&saga.order_id).unwrap();
        let reserve = Action::ReserveStock {
            sku: "MUG".into(),
            quantity: 2,
        };
        self.bus
            .execute::<Product>(
                "MUG",
                ProductCommand::ReserveStock {
                    order_id,
                    quantity: 2,
                },
                &step(reserve.key(&saga.order_id)),
                Expect::Existing,
            )
            .await
            .unwrap();
        saga.record(&reserve, Outcome::Done, Utc::now());
        let amount = Money::price(saga.amount_cents, Currency::parse("EUR").unwrap()).unwrap();
        self.bus
            .execute::<Payment>(
                &saga.order_id,
                PaymentCommand::RequestCharge {
                    order_id,
                    amount,
                    payment_method: domain::values::PaymentMethod::parse("tok_visa").unwrap(),
                },
                &step(Action::RequestCharge.key(&saga.order_id)),
                Expect::New,
            )
            .await
            .unwrap();
        saga.record(&Action::RequestCharge, Outcome::Done, Utc::now());
    }

    /// Places two mugs and drives the order's saga (one of this release:
    /// it authorizes) to `CONFIRMED`; the order's id, and the driver.
    async fn confirmed_for_two_mugs(&self) -> (String, Driver<HttpGateway>) {
        let event = self.placed_event(&[("MUG", 2)]).await;
        let id = event.order_id.to_string();
        store::insert(
            &self.platform.pool,
            &OrderSaga::start(&event, "staged", Utc::now()),
        )
        .await
        .unwrap();
        let driver = Driver::new(self.platform.pool.clone(), self.client.clone(), quick());
        let confirmed = self.drive_to_the_end(&driver, &id).await;
        assert_eq!(confirmed.state, SagaState::Confirmed, "{confirmed:#?}");
        (id, driver)
    }

    /// Drives the saga until it has nothing left to do.
    async fn drive_to_the_end(&self, driver: &Driver<HttpGateway>, order_id: &str) -> OrderSaga {
        let deadline = tokio::time::Instant::now() + WITHIN;
        loop {
            driver.drive(order_id).await.unwrap();
            let saga = store::load(&self.platform.pool, order_id)
                .await
                .unwrap()
                .unwrap()
                .saga;
            if saga.state.is_final() {
                return saga;
            }
            assert!(tokio::time::Instant::now() < deadline, "{saga:#?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn books_balance(&self) {
        let report = audit_settled(
            &self.platform.pool,
            &self.gateway.access(),
            Duration::from_secs(20),
        )
        .await
        .unwrap();
        assert!(report.is_clean(), "{report}");
    }
}

fn quick() -> Policy {
    Policy {
        payment_deadline: Duration::from_secs(2),
        step_deadline: Duration::from_millis(300),
        forward_attempts: 2,
        first_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(20),
        ..Policy::default()
    }
}

async fn event_types(pool: &PgPool, aggregate_id: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT event_type FROM events WHERE aggregate_id = $1 OR payload::text LIKE '%' || $1 || '%'
          ORDER BY global_position",
    )
    .bind(aggregate_id)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_approved_just_before_a_crash_is_honoured_on_resume() {
    let stage = stage().await;
    let mut saga = stage.placed().await;
    stage.charged(&mut saga).await;
    // The crash: the saga never saved the approval, and by the time it
    // resumes, the payment deadline is long over.
    saga.action_started_at = Some(Utc::now() - chrono::Duration::hours(1));
    assert_eq!(saga.state, SagaState::Charging);
    store::insert(&stage.platform.pool, &saga).await.unwrap();

    let driver = Driver::new(stage.platform.pool.clone(), stage.client.clone(), quick());
    let ended = stage.drive_to_the_end(&driver, &saga.order_id).await;

    assert_eq!(ended.state, SagaState::Confirmed, "{ended:#?}");
    let (order, _) = stage.bus.load::<Order>(&saga.order_id).await.unwrap();
    assert_eq!(order.status(), Some(domain::OrderStatus::Confirmed));
    stage.books_balance().await;
    stage.platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_still_queued_when_the_saga_gives_up_never_lands() {
    let stage = stage().await;
    let mut saga = stage.placed().await;
    stage.charged(&mut saga).await;
    saga.record(
        &Action::Charge,
        Outcome::Approved {
            reference: "staged".into(),
        },
        Utc::now(),
    );
    assert_eq!(
        saga.next_action(),
        Some(Action::CommitReservation { sku: "MUG".into() })
    );
    store::insert(&stage.platform.pool, &saga).await.unwrap();
    let driver = Driver::new(stage.platform.pool.clone(), stage.client.clone(), quick());

    // Every write to the events table waits: the commit times out, is tried
    // again, and given up while its appends still wait in the queue.
    let mut locker = stage.platform.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE events IN EXCLUSIVE MODE")
        .execute(&mut *locker)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        driver.drive(&saga.order_id).await.unwrap();
        let now = store::load(&stage.platform.pool, &saga.order_id)
            .await
            .unwrap()
            .unwrap()
            .saga;
        if now.state == SagaState::Compensating {
            assert_eq!(now.reason.as_deref(), Some("commit MUG failed"));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{now:#?}");
    }
    locker.rollback().await.unwrap();

    let ended = stage.drive_to_the_end(&driver, &saga.order_id).await;
    assert_eq!(ended.state, SagaState::Cancelled, "{ended:#?}");
    let events = event_types(&stage.platform.pool, &saga.order_id).await;
    assert!(
        !events.iter().any(|e| e == "ReservationCommitted"),
        "the given-up commit landed: {events:?}"
    );
    assert!(
        events.iter().any(|e| e == "ReservationReleased"),
        "{events:?}"
    );
    assert!(events.iter().any(|e| e == "PaymentRefunded"), "{events:?}");
    let (mug, _) = stage.bus.load::<Product>("MUG").await.unwrap();
    assert_eq!((mug.on_hand(), mug.reserved()), (10, 0));
    stage.books_balance().await;
    stage.platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orchestrator_stopped_while_its_event_waits_for_the_database_takes_it_in_later() {
    let stage = stage().await;
    let platform = &stage.platform;
    let settings = settings(
        &platform.database,
        &platform.topics,
        &[
            ("ORDERS_PAYMENT_GATEWAY_URL", stage.gateway.url.clone()),
            ("ORDERS_SAGA_PAYMENT_DEADLINE_MS", "2000".into()),
        ],
    );
    let orchestrator = |stop: tokio_util::sync::CancellationToken| {
        let (pool, config) = (platform.pool.clone(), settings.saga());
        let client = stage.client.clone();
        tokio::spawn(saga_orchestrator::orchestrator::run(
            pool,
            config,
            client,
            stop.cancelled_owned(),
        ))
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let first = orchestrator(stop.clone());

    // The sagas table takes no writes: the orchestrator cannot store the
    // order's saga and keeps trying.
    let mut locker = platform.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE sagas IN EXCLUSIVE MODE")
        .execute(&mut *locker)
        .await
        .unwrap();
    let body = json!({"customer_id": "c-1", "lines": [{"sku": "MUG", "quantity": 1}], "payment_method": "tok_visa"});
    let placed = platform.command("/api/orders", &body, 202).await;
    let id = placed["order_id"].as_str().unwrap().to_owned();
    platform::testing::lock_waiter(&platform.pool, Some("INSERT INTO sagas"), WITHIN)
        .await
        .expect("the saga waits for the lock while being stored");

    // Stopping does not wait for the database, and commits no offset for an
    // event it did not store.
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), first)
        .await
        .expect("the orchestrator stops while the database hangs")
        .unwrap()
        .unwrap();
    locker.rollback().await.unwrap();

    let stop = tokio_util::sync::CancellationToken::new();
    let second = orchestrator(stop.clone());
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let state: Option<String> =
            sqlx::query_scalar("SELECT state FROM sagas WHERE order_id = $1")
                .bind(&id)
                .fetch_optional(&platform.pool)
                .await
                .unwrap();
        if state.as_deref() == Some("CONFIRMED") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the order's event was lost: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    second.await.unwrap().unwrap();
    stage.books_balance().await;
    stage.platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_of_another_amount_than_the_order_is_flagged_not_recorded() {
    let stage = stage().await;
    let mut saga = stage.placed().await;
    stage.requested(&mut saga).await;
    // Someone took a charge under the order's key first, for another amount:
    // the saga's own charge is refused (409) until its deadline passes.
    let forged = stage
        .client
        .charge(&ChargeRequest {
            key: charge_key(&saga.order_id),
            amount_cents: 1,
            currency: saga.currency.clone(),
            payment_method: "tok_visa".into(),
        })
        .await
        .unwrap();
    assert!(matches!(forged, ChargeAnswer::Approved { .. }));
    saga.record(&Action::Charge, Outcome::TimedOut, Utc::now());
    assert_eq!(saga.next_action(), Some(Action::Refund));
    store::insert(&stage.platform.pool, &saga).await.unwrap();

    let driver = Driver::new(stage.platform.pool.clone(), stage.client.clone(), quick());
    driver.drive(&saga.order_id).await.unwrap();

    let now = store::load(&stage.platform.pool, &saga.order_id)
        .await
        .unwrap()
        .unwrap()
        .saga;
    assert_eq!(now.state, SagaState::Compensating);
    assert!(now.needs_attention(5), "{now:#?}");
    let events = event_types(&stage.platform.pool, &saga.order_id).await;
    assert!(
        !events
            .iter()
            .any(|e| e == "ChargeApproved" || e == "PaymentRefunded"),
        "a refund of 1 cent was booked as the order's: {events:?}"
    );
    stage.platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_after_steps_that_were_never_saved_undoes_them_all() {
    // A driver reserved the stock and requested the charge, saving neither
    // (a step is saved when a replay could not find it again), and died.
    // The customer cancels: the driver that takes the saga up must learn of
    // both steps before it undoes, or the stock stays reserved and the
    // payment requested.
    let stage = stage().await;
    let saga = stage.placed().await;
    let mut unsaved = saga.clone();
    stage.requested(&mut unsaved).await;
    store::insert(&stage.platform.pool, &saga).await.unwrap();
    stage
        .platform
        .command(
            &format!("/api/orders/{}/cancel", saga.order_id),
            &json!({"reason": "changed my mind"}),
            202,
        )
        .await;
    assert!(
        store::request_cancel(&stage.platform.pool, &saga.order_id, "changed my mind")
            .await
            .unwrap()
    );

    let driver = Driver::new(stage.platform.pool.clone(), stage.client.clone(), quick());
    let ended = stage.drive_to_the_end(&driver, &saga.order_id).await;

    assert_eq!(ended.state, SagaState::Cancelled, "{ended:#?}");
    let (product, _) = stage.bus.load::<Product>("MUG").await.unwrap();
    assert_eq!((product.on_hand(), product.reserved()), (10, 0));
    let (payment, _) = stage.bus.load::<Payment>(&saga.order_id).await.unwrap();
    assert_eq!(payment.status(), Some(domain::PaymentStatus::Declined));
    stage.books_balance().await;
    stage.platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_recorded_before_a_crash_stands_though_the_gateway_is_down_on_resume() {
    // The approval is recorded on the payment but the saga row still says
    // "charging" (approvals are found again, so they are not saved), the
    // deadline is long over, and the gateway cannot be reached: the ledger's
    // record decides, not a last look at the gateway that times out.
    let mut stage = stage().await;
    let mut saga = stage.placed().await;
    stage.charged(&mut saga).await;
    saga.action_started_at = Some(Utc::now() - chrono::Duration::hours(1));
    assert_eq!(saga.state, SagaState::Charging);
    store::insert(&stage.platform.pool, &saga).await.unwrap();
    stage.gateway.outage().await;

    let driver = Driver::new(stage.platform.pool.clone(), stage.client.clone(), quick());
    let ended = stage.drive_to_the_end(&driver, &saga.order_id).await;

    assert_eq!(ended.state, SagaState::Confirmed, "{ended:#?}");
    stage.gateway.resume(&stage.platform).await;
    stage.books_balance().await;
    stage.platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_that_arrives_while_the_saga_reserves_stops_it_before_the_charge() {
    // The order's placement and its cancel arrive together: the saga starts
    // from the placement (leased to its driver) and the cancel lands in its
    // row meanwhile. Its reservations are not saved, so the save just
    // before the charge is where it learns of the cancel: no money moves.
    let stage = stage().await;
    let saga = stage.placed().await;
    let driver = Driver::new(stage.platform.pool.clone(), stage.client.clone(), quick());
    store::insert_leased(
        &stage.platform.pool,
        std::slice::from_ref(&saga),
        driver.owner(),
        driver.lease(),
    )
    .await
    .unwrap();
    stage
        .platform
        .command(
            &format!("/api/orders/{}/cancel", saga.order_id),
            &json!({"reason": "changed my mind"}),
            202,
        )
        .await;
    store::request_cancel(&stage.platform.pool, &saga.order_id, "changed my mind")
        .await
        .unwrap();

    let started = store::Loaded {
        saga: saga.clone(),
        version: 1,
        cancel_reason: None,
        order_version: 0,
    };
    driver
        .drive_leased(started, std::time::Instant::now(), None)
        .await
        .unwrap();
    let ended = stage.drive_to_the_end(&driver, &saga.order_id).await;

    assert_eq!(ended.state, SagaState::Cancelled, "{ended:#?}");
    let charge = stage.gateway.charges().await;
    let charge = charge.get(&charge_key(&saga.order_id)).map(String::as_str);
    assert!(
        matches!(charge, None | Some("voided")),
        "the gateway was asked to charge a cancelled order: {charge:?}"
    );
    stage.books_balance().await;
    stage.platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_finds_a_reservation_that_landed_beside_one_that_did_not() {
    // The lines are reserved side by side: the second line's reservation
    // landed, the first's did not, and nothing was saved. The undo must
    // find the second although the first never happened.
    let stage = stage().await;
    stage.platform.create_product("TEA", 450, 10).await;
    let saga = stage.placed_with(&[("MUG", 2), ("TEA", 1)]).await;
    let id = &saga.order_id.clone();
    let tea = Action::ReserveStock {
        sku: "TEA".into(),
        quantity: 1,
    };
    stage
        .bus
        .execute::<Product>(
            "TEA",
            ProductCommand::ReserveStock {
                order_id: OrderId::parse(id).unwrap(),
                quantity: 1,
            },
            &step(tea.key(id)),
            Expect::Existing,
        )
        .await
        .unwrap();
    store::insert(&stage.platform.pool, &saga).await.unwrap();
    stage
        .platform
        .command(
            &format!("/api/orders/{id}/cancel"),
            &json!({"reason": "changed my mind"}),
            202,
        )
        .await;
    store::request_cancel(&stage.platform.pool, id, "changed my mind")
        .await
        .unwrap();

    let driver = Driver::new(stage.platform.pool.clone(), stage.client.clone(), quick());
    let ended = stage.drive_to_the_end(&driver, id).await;

    assert_eq!(ended.state, SagaState::Cancelled, "{ended:#?}");
    for sku in ["MUG", "TEA"] {
        let (product, _) = stage.bus.load::<Product>(sku).await.unwrap();
        assert_eq!((product.on_hand(), product.reserved()), (10, 0), "{sku}");
    }
    stage.books_balance().await;
    stage.platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_left_without_an_answer_beside_a_refusal_never_outlives_the_cancel() {
    // The lines are reserved side by side. TEA is refused at once (out of
    // stock); MUG's append waits behind a lock past the saga's patience, so
    // the saga hears nothing of it and undoes the order while the append is
    // still queued. The reservation must not outlive the cancel.
    let stage = stage().await;
    stage.platform.create_product("TEA", 450, 1).await;
    let saga = stage.placed_with(&[("MUG", 2), ("TEA", 2)]).await;
    let id = &saga.order_id.clone();
    store::insert(&stage.platform.pool, &saga).await.unwrap();
    let driver = Driver::new(stage.platform.pool.clone(), stage.client.clone(), quick());

    // Reads go on; every write to the events table waits.
    let mut locker = stage.platform.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE events IN EXCLUSIVE MODE")
        .execute(&mut *locker)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        driver.drive(id).await.unwrap();
        let now = store::load(&stage.platform.pool, id)
            .await
            .unwrap()
            .unwrap()
            .saga;
        if now.state == SagaState::Compensating {
            assert_eq!(now.reason.as_deref(), Some("out of stock: TEA"), "{now:#?}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{now:#?}");
    }
    locker.rollback().await.unwrap();
    // The queued append goes ahead (or fails) as soon as the lock is gone.
    let waiting = "SELECT count(*) FROM pg_stat_activity
                    WHERE datname = current_database() AND wait_event_type = 'Lock'";
    let deadline = tokio::time::Instant::now() + WITHIN;
    while sqlx::query_scalar::<_, i64>(waiting)
        .fetch_one(&stage.platform.pool)
        .await
        .unwrap()
        > 0
    {
        assert!(tokio::time::Instant::now() < deadline, "appends still wait");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let ended = stage.drive_to_the_end(&driver, id).await;
    assert_eq!(ended.state, SagaState::Cancelled, "{ended:#?}");
    for (sku, on_hand) in [("MUG", 10), ("TEA", 1)] {
        let (product, _) = CommandBus::new(stage.platform.pool.clone())
            .load::<Product>(sku)
            .await
            .unwrap();
        assert_eq!(
            (product.on_hand(), product.reserved()),
            (on_hand, 0),
            "{sku}: {ended:#?}"
        );
    }
    stage.books_balance().await;
    stage.platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_in_doubt_that_landed_is_found_and_released_before_the_cancel() {
    // The saga heard nothing of MUG's reservation, which landed all the
    // same, and TEA was refused: the undo must find MUG's and release it.
    let stage = stage().await;
    stage.platform.create_product("TEA", 450, 1).await;
    let mut saga = stage.placed_with(&[("MUG", 2), ("TEA", 2)]).await;
    let id = &saga.order_id.clone();
    let mug = Action::ReserveStock {
        sku: "MUG".into(),
        quantity: 2,
    };
    stage
        .bus
        .execute::<Product>(
            "MUG",
            ProductCommand::ReserveStock {
                order_id: OrderId::parse(id).unwrap(),
                quantity: 2,
            },
            &step(mug.key(id)),
            Expect::Existing,
        )
        .await
        .unwrap();
    saga.record(
        &mug,
        Outcome::Failed {
            detail: "no answer within 300ms".into(),
        },
        Utc::now(),
    );
    saga.record(
        &Action::ReserveStock {
            sku: "TEA".into(),
            quantity: 2,
        },
        Outcome::Refused {
            detail: "out of stock".into(),
        },
        Utc::now(),
    );
    assert_eq!(saga.state, SagaState::Compensating);
    store::insert(&stage.platform.pool, &saga).await.unwrap();

    let driver = Driver::new(stage.platform.pool.clone(), stage.client.clone(), quick());
    let ended = stage.drive_to_the_end(&driver, id).await;

    assert_eq!(ended.state, SagaState::Cancelled, "{ended:#?}");
    let steps: Vec<(&str, &str)> = ended
        .steps
        .iter()
        .map(|step| (step.name.as_str(), step.status.as_str()))
        .collect();
    assert!(steps.contains(&("reserve MUG", "DONE")), "{steps:?}");
    assert!(steps.contains(&("release MUG", "DONE")), "{steps:?}");
    let (mug, _) = stage.bus.load::<Product>("MUG").await.unwrap();
    assert_eq!((mug.on_hand(), mug.reserved()), (10, 0));
    stage.books_balance().await;
    stage.platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_whose_clock_runs_ahead_keeps_the_databases_time() {
    fn an_hour_ahead() -> chrono::DateTime<Utc> {
        Utc::now() + chrono::Duration::hours(1)
    }
    let mut stage = stage().await;
    let saga = stage.placed().await;
    store::insert(&stage.platform.pool, &saga).await.unwrap();
    // The charge fails while the gateway is down: the saga waits for a retry.
    stage.gateway.outage().await;
    let clock = platform::clock::DbClock::with_local_clock(an_hour_ahead);
    clock.sync(&stage.platform.pool).await.unwrap();
    let driver =
        Driver::new(stage.platform.pool.clone(), stage.client.clone(), quick()).with_clock(clock);
    driver.drive(&saga.order_id).await.unwrap();

    let (due_in, charge_started, last_step): (f64, f64, f64) = sqlx::query_as(
        "SELECT extract(epoch FROM next_attempt_at - now())::float8,
                extract(epoch FROM (saga ->> 'action_started_at')::timestamptz - now())::float8,
                extract(epoch FROM (saga -> 'steps' -> -1 ->> 'at')::timestamptz - now())::float8
           FROM sagas WHERE order_id = $1",
    )
    .bind(&saga.order_id)
    .fetch_one(&stage.platform.pool)
    .await
    .unwrap();
    // Due after its backoff by the database's clock, not an hour later; the
    // charge's deadline and the steps run on that clock too.
    assert!(due_in < 60.0, "due in {due_in} s");
    assert!(
        charge_started.abs() < 60.0,
        "the charge started {charge_started} s from now"
    );
    assert!(
        last_step.abs() < 60.0,
        "the last step was {last_step} s from now"
    );
    stage.gateway.resume(&stage.platform).await;
    stage.platform.stop().await;
}

/// Refuses, once, the first save of a saga that took in shipments or
/// returns: the process dies right there, and whatever it did since its
/// last save is not recorded.
const CRASH_AT_THE_SAVE_AFTER_A_TAKE_IN: &str = "
    CREATE SEQUENCE crash_point;
    CREATE FUNCTION crash_once() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF nextval('crash_point') = 1 THEN
            RAISE EXCEPTION 'the process died before this save';
        END IF;
        RETURN NEW;
    END $$;
    CREATE TRIGGER crash_once BEFORE UPDATE ON sagas FOR EACH ROW
        WHEN (NEW.saga -> 'order_version' IS DISTINCT FROM OLD.saga -> 'order_version')
        EXECUTE FUNCTION crash_once();";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shipment_taken_in_just_before_a_crash_is_captured_once_and_refundable_on_resume() {
    let stage = stage().await;
    let pool = &stage.platform.pool;
    let (id, driver) = stage.confirmed_for_two_mugs().await;

    sqlx::raw_sql(CRASH_AT_THE_SAVE_AFTER_A_TAKE_IN)
        .execute(pool)
        .await
        .unwrap();
    let shipment = stage
        .platform
        .command(
            &format!("/api/orders/{id}/shipments"),
            &json!({"lines": [{"sku": "MUG", "quantity": 2}], "carrier": "DHL",
                    "tracking_number": "JD0146"}),
            202,
        )
        .await;
    let order_version = shipment["version"].as_i64().unwrap();
    assert!(store::wake(pool, &id, order_version).await.unwrap());
    // The saga takes the shipment in and dies at its next save: had it
    // captured and shipped before saving, its replay from the last save
    // would find the shipment shipped and never learn its capture.
    let died = driver.drive(&id).await;
    assert!(died.is_err(), "the save went through: {died:?}");

    // Restarted: another process carries the shipment out.
    let driver = Driver::new(pool.clone(), stage.client.clone(), quick());
    let at_rest = |driver: &Driver<HttpGateway>| {
        let id = id.clone();
        let driver = driver.clone();
        async move {
            let deadline = tokio::time::Instant::now() + WITHIN;
            loop {
                driver.drive(&id).await.unwrap();
                let done: bool = sqlx::query_scalar("SELECT done FROM sagas WHERE order_id = $1")
                    .bind(&id)
                    .fetch_one(pool)
                    .await
                    .unwrap();
                if done {
                    return;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the saga never came to rest"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    at_rest(&driver).await;
    let (order, _) = stage.bus.load::<Order>(&id).await.unwrap();
    assert_eq!(order.status(), Some(domain::OrderStatus::Shipped));
    let (payment, _) = stage.bus.load::<Payment>(&id).await.unwrap();
    assert_eq!(payment.captured_cents(), 2500);

    // Delivered, and one mug comes back: the refund comes from the capture
    // the restarted saga learned.
    let shipment_id = shipment["shipment_id"].as_str().unwrap();
    stage
        .platform
        .command(
            &format!("/api/orders/{id}/shipments/{shipment_id}/delivered"),
            &json!({}),
            202,
        )
        .await;
    let requested = stage
        .platform
        .command(
            &format!("/api/orders/{id}/returns"),
            &json!({"lines": [{"sku": "MUG", "quantity": 1}], "reason": "chipped"}),
            202,
        )
        .await;
    let return_id = requested["return_id"].as_str().unwrap();
    let received = stage
        .platform
        .command(
            &format!("/api/orders/{id}/returns/{return_id}/receive"),
            &json!({"restock": true}),
            202,
        )
        .await;
    let order_version = received["version"].as_i64().unwrap();
    assert!(store::wake(pool, &id, order_version).await.unwrap());
    at_rest(&driver).await;
    let (payment, _) = stage.bus.load::<Payment>(&id).await.unwrap();
    assert_eq!(
        (payment.captured_cents(), payment.refunded_cents()),
        (2500, 1250)
    );
    let ended = store::load(pool, &id).await.unwrap().unwrap().saga;
    assert!(ended.unsettled.is_empty(), "{ended:#?}");
    assert_eq!(
        stage.gateway.captured().await.len(),
        1,
        "captured once: {:?}",
        stage.gateway.captured().await
    );
    stage.books_balance().await;
    stage.platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shipment_the_saga_was_woken_for_before_an_abandon_is_still_flagged() {
    let stage = stage().await;
    let pool = &stage.platform.pool;
    let (id, driver) = stage.confirmed_for_two_mugs().await;
    // The provider lost the authorization: the first shipment's capture
    // cannot pass, and the saga asks for someone.
    sqlx::query("DELETE FROM authorizations WHERE key = $1")
        .bind(saga_orchestrator::driver::authorization_key(&id, 1))
        .execute(&stage.gateway.database.pool(1).await.unwrap())
        .await
        .unwrap();
    let ship = |tracking: &'static str| {
        let (platform, id) = (&stage.platform, id.clone());
        async move {
            let shipment = platform
                .command(
                    &format!("/api/orders/{id}/shipments"),
                    &json!({"lines": [{"sku": "MUG", "quantity": 1}], "carrier": "DHL",
                            "tracking_number": tracking}),
                    202,
                )
                .await;
            let version = shipment["version"].as_i64().unwrap();
            assert!(store::wake(&platform.pool, &id, version).await.unwrap());
        }
    };
    ship("JD0001").await;
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        driver.drive(&id).await.unwrap();
        let shown = operations::sagas::show(pool, &id).await.unwrap().unwrap();
        if shown.saga.needs_attention {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{shown:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The shop ships the other mug, and an operator, having settled the
    // first shipment by hand, abandons the saga before its driver took the
    // second in: the saga stops, but the shipment is not left unseen.
    ship("JD0002").await;
    operations::sagas::abandon(pool, &id, "first shipment settled by hand", "dave")
        .await
        .unwrap();
    let shown = operations::sagas::show(pool, &id).await.unwrap().unwrap();
    assert!(!shown.saga.done, "{shown:#?}");
    driver.drive(&id).await.unwrap();
    let shown = operations::sagas::show(pool, &id).await.unwrap().unwrap();
    assert_eq!(shown.saga.state, "ABANDONED");
    assert!(shown.saga.needs_attention, "{shown:#?}");
    // It read the second shipment and says what an operator must settle.
    let taken_in = store::load(pool, &id).await.unwrap().unwrap().saga;
    let (_, version) = stage.bus.load::<Order>(&id).await.unwrap();
    assert_eq!(
        taken_in.order_version,
        i64::try_from(version).unwrap(),
        "{taken_in:#?}"
    );
    assert!(
        taken_in
            .unsettled
            .iter()
            .any(|what| what.contains("after the saga was abandoned")),
        "{taken_in:#?}"
    );
    // Nothing was captured behind the operator's back.
    let (payment, _) = stage.bus.load::<Payment>(&id).await.unwrap();
    assert_eq!(payment.captured_cents(), 0);

    // Once the operator settled the second shipment too, and says so, it
    // rests.
    operations::sagas::abandon(pool, &id, "second shipment settled by hand", "dave")
        .await
        .unwrap();
    let shown = operations::sagas::show(pool, &id).await.unwrap().unwrap();
    assert!(shown.saga.done && !shown.saga.needs_attention, "{shown:#?}");
    stage.platform.stop().await;
}
