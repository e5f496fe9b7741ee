//! The sagas table against a real PostgreSQL: new sagas stored leased, and
//! saves that share a statement but are each checked on their own.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::time::Duration;

use chrono::Utc;
use domain::order::{OrderLine, OrderPlaced};
use domain::values::{Currency, CustomerId, OrderId, PaymentMethod, Sku};
use order_saga::saga::{Action, OrderSaga, Outcome};
use order_saga::store::{self, Save, Saved, Saves};
use platform::testing::TestDatabase;
use sqlx::PgPool;

const LEASE: Duration = Duration::from_secs(30);

async fn database() -> (TestDatabase, PgPool) {
    let database = TestDatabase::create().await.unwrap();
    let pool = database.pool(8).await.unwrap();
    event_store::migrate(&pool).await.unwrap();
    order_saga::migrate(&pool).await.unwrap();
    (database, pool)
}

fn saga(n: u128) -> OrderSaga {
    let placed = OrderPlaced {
        order_id: OrderId::new(uuid::Uuid::from_u128(n)),
        customer_id: CustomerId::parse("c-1").unwrap(),
        lines: vec![OrderLine {
            sku: Sku::parse("MUG").unwrap(),
            quantity: 1,
            unit_price_cents: 100,
        }],
        currency: Currency::parse("EUR").unwrap(),
        total_cents: 100,
        payment_method: PaymentMethod::parse("tok_visa").unwrap(),
        shipping_address: None,
        email: None,
    };
    OrderSaga::start(&placed, "corr", Utc::now())
}

fn save(saga: &OrderSaga, expected: i64, waits: bool) -> Save {
    Save {
        saga: saga.clone(),
        expected,
        retry_after: Duration::ZERO,
        needs_attention: false,
        waits,
    }
}

/// The saga with every step done: it has ended.
fn ended(mut saga: OrderSaga) -> OrderSaga {
    while let Some(action) = saga.next_action() {
        let outcome = match action {
            Action::Charge => Outcome::Approved {
                reference: "ch_1".into(),
            },
            _ => Outcome::Done,
        };
        saga.record(&action, outcome, Utc::now());
    }
    saga
}

async fn row(pool: &PgPool, saga: &OrderSaga) -> (i64, bool, bool) {
    sqlx::query_as("SELECT version, done, leased_until IS NULL FROM sagas WHERE order_id = $1")
        .bind(&saga.order_id)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn new_sagas_are_stored_leased_once_and_the_scan_leaves_them_to_their_driver() {
    let (_db, pool) = database().await;
    let (one, two) = (saga(1), saga(2));
    // A batch may hold one placement twice (a redelivery).
    let new = store::insert_leased(&pool, &[one.clone(), two.clone(), one.clone()], "me", LEASE)
        .await
        .unwrap();
    assert_eq!(new.len(), 2);
    let again = store::insert_leased(&pool, std::slice::from_ref(&one), "someone else", LEASE)
        .await
        .unwrap();
    assert!(again.is_empty(), "a redelivered placement stores nothing");
    // The same driver storing it again (its first answer was lost) gets it
    // back to drive, as long as nothing was saved since.
    let retried = store::insert_leased(&pool, std::slice::from_ref(&one), "me", LEASE)
        .await
        .unwrap();
    assert_eq!(retried, vec![one.order_id.clone()]);
    assert!(
        store::due(&pool, 10).await.unwrap().is_empty(),
        "leased sagas are their driver's"
    );
    assert!(
        store::claim(&pool, &one.order_id, "someone else", LEASE)
            .await
            .unwrap()
            .is_none()
    );
    let mine = store::claim(&pool, &one.order_id, "me", LEASE)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((mine.saga, mine.version), (one, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saves_sent_together_are_each_checked_on_their_own() {
    let (_db, pool) = database().await;
    let sagas: Vec<OrderSaga> = (1..=20).map(saga).collect();
    store::insert_leased(&pool, &sagas, "me", LEASE)
        .await
        .unwrap();
    let saves = Saves::new(pool.clone(), "me".into(), LEASE);
    // Every other save expects a version the row is not at.
    let sent: Vec<_> = sagas
        .iter()
        .enumerate()
        .map(|(n, saga)| {
            let (saves, save) = (saves.clone(), save(saga, 1 + (n % 2) as i64, false));
            tokio::spawn(async move { saves.save(save).await })
        })
        .collect();
    for (n, saved) in sent.into_iter().enumerate() {
        let saved = saved.await.unwrap().unwrap();
        if n % 2 == 0 {
            assert_eq!(
                saved,
                Saved::Saved {
                    version: 2,
                    cancel_reason: None,
                    order_version: 0,
                    released: false
                }
            );
            assert_eq!(row(&pool, &sagas[n]).await, (2, false, false));
        } else {
            assert_eq!(saved, Saved::Stale);
            assert_eq!(row(&pool, &sagas[n]).await, (1, false, false));
        }
    }
    // A driver whose lease went to another saves nothing.
    let theirs = Saves::new(pool.clone(), "someone else".into(), LEASE);
    let stale = theirs.save(save(&sagas[0], 2, false)).await.unwrap();
    assert_eq!(stale, Saved::Stale);
}

#[tokio::test]
async fn a_save_gives_the_lease_up_when_the_driver_stops_after_it() {
    let (_db, pool) = database().await;
    let (waiting, finished, cancelled) = (saga(1), saga(2), saga(3));
    store::insert_leased(
        &pool,
        &[waiting.clone(), finished.clone(), cancelled.clone()],
        "me",
        LEASE,
    )
    .await
    .unwrap();
    let saves = Saves::new(pool.clone(), "me".into(), LEASE);

    // Waiting for a retry: the scan takes it up once it is due.
    let saved = saves.save(save(&waiting, 1, true)).await.unwrap();
    assert!(
        matches!(saved, Saved::Saved { released: true, .. }),
        "{saved:?}"
    );
    assert_eq!(row(&pool, &waiting).await, (2, false, true));
    assert_eq!(
        store::due(&pool, 10).await.unwrap(),
        vec![waiting.order_id.clone()]
    );

    // Ended, with no cancel to take in: done and free.
    let saved = saves
        .save(save(&ended(finished.clone()), 1, false))
        .await
        .unwrap();
    assert!(
        matches!(saved, Saved::Saved { released: true, .. }),
        "{saved:?}"
    );
    assert_eq!(row(&pool, &finished).await, (2, true, true));

    // Ended, but the customer's cancel arrived meanwhile: not done, and the
    // driver keeps it to take the cancel in.
    assert!(
        store::request_cancel(&pool, &cancelled.order_id, "changed my mind")
            .await
            .unwrap()
    );
    let saved = saves
        .save(save(&ended(cancelled.clone()), 1, false))
        .await
        .unwrap();
    assert_eq!(
        saved,
        Saved::Saved {
            version: 2,
            cancel_reason: Some("changed my mind".into()),
            order_version: 0,
            released: false
        }
    );
    assert_eq!(row(&pool, &cancelled).await, (2, false, false));
}

#[tokio::test]
async fn saves_of_one_saga_in_one_batch_go_in_turn() {
    // One driver task per saga and process makes this rare, but three saves
    // of one saga queued at once must each be checked against the row as
    // the one before left it.
    let (_db, pool) = database().await;
    let one = saga(1);
    store::insert_leased(&pool, std::slice::from_ref(&one), "me", LEASE)
        .await
        .unwrap();
    let saves = Saves::new(pool.clone(), "me".into(), LEASE);
    // Polled in order on this one thread before the batch worker runs:
    // they form one batch.
    let (first, second, third) = tokio::join!(
        saves.save(save(&one, 1, false)),
        saves.save(save(&one, 1, false)),
        saves.save(save(&one, 2, false)),
    );
    let version = |saved: sqlx::Result<Saved>| match saved.unwrap() {
        Saved::Saved { version, .. } => Some(version),
        Saved::Stale => None,
    };
    assert_eq!(
        (version(first), version(second), version(third)),
        (Some(2), None, Some(3))
    );
    assert_eq!(row(&pool, &one).await, (3, false, false));
}

#[tokio::test]
async fn a_saga_waiting_for_a_retry_is_due_by_the_databases_clock() {
    let (_db, pool) = database().await;
    let one = saga(1);
    store::insert_leased(&pool, std::slice::from_ref(&one), "me", LEASE)
        .await
        .unwrap();
    let saves = Saves::new(pool.clone(), "me".into(), LEASE);
    let mut waiting = save(&one, 1, true);
    waiting.retry_after = Duration::from_secs(90);
    saves.save(waiting).await.unwrap();
    // The wait is added by the database to its own clock: what the saving
    // process's clock says does not come into it.
    let due_in: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM next_attempt_at - now())::float8 FROM sagas WHERE order_id = $1",
    )
    .bind(&one.order_id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!((85.0..=90.5).contains(&due_in), "due in {due_in} s");
    assert!(store::due(&pool, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_shipment_or_a_return_wakes_an_ended_saga_until_it_takes_the_order_in() {
    let (_db, pool) = database().await;
    let (woken, racing) = (saga(11), saga(12));
    store::insert_leased(&pool, &[woken.clone(), racing.clone()], "me", LEASE)
        .await
        .unwrap();
    let saves = Saves::new(pool.clone(), "me".into(), LEASE);
    let saved = saves
        .save(save(&ended(woken.clone()), 1, false))
        .await
        .unwrap();
    assert!(matches!(saved, Saved::Saved { released: true, .. }));
    assert_eq!(row(&pool, &woken).await, (2, true, true));

    // The order's version 4 asks for work: the saga is due again, once.
    assert!(store::wake(&pool, &woken.order_id, 4).await.unwrap());
    assert!(!store::wake(&pool, &woken.order_id, 4).await.unwrap());
    assert!(!store::wake(&pool, &woken.order_id, 3).await.unwrap());
    assert_eq!(row(&pool, &woken).await, (2, false, true));
    assert!(
        store::due(&pool, 10)
            .await
            .unwrap()
            .contains(&woken.order_id)
    );
    let loaded = store::claim(&pool, &woken.order_id, "me", LEASE)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(loaded.order_version, 4);

    // A saga that ends without having taken version 4 in is not done: its
    // driver keeps it (as it would a cancel that came meanwhile).
    assert!(store::wake(&pool, &racing.order_id, 4).await.unwrap());
    let saved = saves
        .save(save(&ended(racing.clone()), 1, false))
        .await
        .unwrap();
    assert_eq!(
        saved,
        Saved::Saved {
            version: 2,
            cancel_reason: None,
            order_version: 4,
            released: false
        }
    );
    assert_eq!(row(&pool, &racing).await, (2, false, false));
    let mut took_it_in = ended(racing.clone());
    took_it_in.order_version = 4;
    let saved = saves.save(save(&took_it_in, 2, false)).await.unwrap();
    assert!(
        matches!(saved, Saved::Saved { released: true, .. }),
        "{saved:?}"
    );
    assert_eq!(row(&pool, &racing).await, (3, true, true));
}
