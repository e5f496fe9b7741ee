//! The command bus against a real PostgreSQL: versions, refusals, races,
//! idempotency keys and metadata.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.
mod common;

use std::sync::Arc;
use std::time::Duration;

use command_bus::{Catalog, CommandBus, CommandContext, CommandError, Expect, Settled};
use common::{context, create_product, migrated_database};
use cqrs_es::persist::PersistedEventRepository;
use domain::values::{OrderId, Sku};
use domain::{Product, ProductCommand, ProductError};
use event_store::{IdempotencyClaim, IdempotencyKey, PgEventRepository};
use sqlx::{PgPool, Row};

async fn event_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await
        .unwrap()
}

fn add_stock(quantity: u32) -> ProductCommand {
    ProductCommand::AddStock { quantity }
}

fn keyed(key: &str, fingerprint: &str) -> CommandContext {
    CommandContext {
        idempotency: Some(IdempotencyClaim {
            key: IdempotencyKey::internal(key),
            fingerprint: fingerprint.into(),
            ttl: Duration::from_secs(3600),
        }),
        ..context("keyed")
    }
}

#[tokio::test]
async fn commands_append_events_with_versions_positions_and_metadata() {
    let (_db, pool) = migrated_database().await;
    let bus = CommandBus::new(pool.clone());
    create_product(&bus, "MUG", 1250, "EUR").await;

    let outcome = bus
        .execute::<Product>("MUG", add_stock(5), &context("req-1"), Expect::Existing)
        .await
        .unwrap();

    assert_eq!(outcome.version, 2);
    assert!(!outcome.replayed);
    let rows = sqlx::query(
        "SELECT sequence, global_position, event_id, metadata::jsonb AS metadata, recorded_at
           FROM events ORDER BY sequence",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 2);
    let positions: Vec<i64> = rows.iter().map(|r| r.get("global_position")).collect();
    assert!(positions[0] < positions[1]);
    let metadata: serde_json::Value = rows[1].get("metadata");
    assert_eq!(metadata["correlation_id"], "corr-req-1");
    assert_eq!(metadata["causation_id"], "cause-req-1");
    assert!(metadata.get("idempotency_key").is_none());
    let first_id: uuid::Uuid = rows[0].get("event_id");
    let second_id: uuid::Uuid = rows[1].get("event_id");
    assert_ne!(first_id, second_id);
}

#[tokio::test]
async fn a_refused_command_appends_nothing() {
    let (_db, pool) = migrated_database().await;
    let bus = CommandBus::new(pool.clone());

    let result = bus
        .execute::<Product>("NOPE", add_stock(5), &context("r"), Expect::Existing)
        .await;

    assert!(matches!(
        result,
        Err(CommandError::Refused(ProductError::NotFound))
    ));
    assert_eq!(event_count(&pool).await, 0);
}

#[tokio::test]
async fn creating_an_aggregate_that_exists_is_refused_after_the_conflict() {
    let (_db, pool) = migrated_database().await;
    let bus = CommandBus::new(pool.clone());
    create_product(&bus, "MUG", 1250, "EUR").await;

    let again = ProductCommand::CreateProduct {
        sku: Sku::parse("MUG").unwrap(),
        name: domain::values::ProductName::parse("Other").unwrap(),
        price: domain::values::Money::price(1, domain::values::Currency::parse("EUR").unwrap())
            .unwrap(),
    };
    let result = bus
        .execute::<Product>("MUG", again, &context("r"), Expect::New)
        .await;

    assert!(matches!(
        result,
        Err(CommandError::Refused(ProductError::AlreadyExists { .. }))
    ));
    assert_eq!(event_count(&pool).await, 1);
}

#[tokio::test]
async fn a_stale_expected_version_is_refused_and_appends_nothing() {
    let (_db, pool) = migrated_database().await;
    let bus = CommandBus::new(pool.clone());
    create_product(&bus, "MUG", 1250, "EUR").await;
    let stale = CommandContext {
        expected_version: Some(3),
        ..context("r")
    };

    let result = bus
        .execute::<Product>("MUG", add_stock(1), &stale, Expect::Existing)
        .await;

    assert!(matches!(
        result,
        Err(CommandError::VersionMismatch {
            expected: 3,
            actual: 1
        })
    ));
    assert_eq!(event_count(&pool).await, 1);
}

#[tokio::test]
async fn a_refusal_comes_before_a_stale_expected_version() {
    // A precondition must not reveal the version of an aggregate the command
    // is refused on (an order hidden from this caller reads as missing).
    let (_db, pool) = migrated_database().await;
    let bus = CommandBus::new(pool.clone());
    for expected in [0, 3] {
        let stale = CommandContext {
            expected_version: Some(expected),
            ..context("r")
        };
        let result = bus
            .execute::<Product>("NOPE", add_stock(1), &stale, Expect::Existing)
            .await;
        assert!(
            matches!(result, Err(CommandError::Refused(ProductError::NotFound))),
            "expected {expected}: {result:?}"
        );
    }
    assert_eq!(event_count(&pool).await, 0);
}

#[tokio::test]
async fn concurrent_writers_of_one_aggregate_all_land_by_retrying() {
    let (_db, pool) = migrated_database().await;
    let bus = Arc::new(CommandBus::new(pool.clone()));
    create_product(&bus, "MUG", 1250, "EUR").await;

    let writers: Vec<_> = (0..16)
        .map(|i| {
            let bus = Arc::clone(&bus);
            tokio::spawn(async move {
                bus.execute::<Product>(
                    "MUG",
                    add_stock(1),
                    &context(&i.to_string()),
                    Expect::Existing,
                )
                .await
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap().expect("every writer lands");
    }

    let events = PgEventRepository::new(pool.clone())
        .get_events::<Product>("MUG")
        .await
        .unwrap();
    assert_eq!(events.len(), 17);
    let sequences: Vec<usize> = events.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, (1..=17).collect::<Vec<_>>());
}

#[tokio::test]
async fn with_an_expected_version_exactly_one_concurrent_writer_wins() {
    let (_db, pool) = migrated_database().await;
    let bus = Arc::new(CommandBus::new(pool.clone()));
    create_product(&bus, "MUG", 1250, "EUR").await;

    let writers: Vec<_> = (0..16)
        .map(|_| {
            let bus = Arc::clone(&bus);
            tokio::spawn(async move {
                let at_one = CommandContext {
                    expected_version: Some(1),
                    ..context("w")
                };
                bus.execute::<Product>("MUG", add_stock(1), &at_one, Expect::Existing)
                    .await
            })
        })
        .collect();
    let mut wins = 0;
    for writer in writers {
        match writer.await.unwrap() {
            Ok(outcome) => {
                assert_eq!(outcome.version, 2);
                wins += 1;
            }
            Err(CommandError::VersionMismatch { expected: 1, .. }) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(wins, 1);
    assert_eq!(event_count(&pool).await, 2);
}

#[tokio::test]
async fn a_repeated_idempotency_key_returns_the_first_outcome_and_appends_nothing() {
    let (_db, pool) = migrated_database().await;
    let bus = CommandBus::new(pool.clone());
    create_product(&bus, "MUG", 1250, "EUR").await;

    let first = bus
        .execute::<Product>("MUG", add_stock(2), &keyed("k-1", "f-1"), Expect::Existing)
        .await
        .unwrap();
    let second = bus
        .execute::<Product>("MUG", add_stock(2), &keyed("k-1", "f-1"), Expect::Existing)
        .await
        .unwrap();

    assert!(!first.replayed);
    assert!(second.replayed);
    assert_eq!(second.version, first.version);
    assert_eq!(second.aggregate_id, "MUG");
    assert_eq!(event_count(&pool).await, 2);
    let metadata: serde_json::Value =
        sqlx::query_scalar("SELECT metadata::jsonb FROM events WHERE sequence = 2")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(metadata["idempotency_key"], "k-1");
}

#[tokio::test]
async fn a_key_reused_for_a_different_request_is_refused() {
    let (_db, pool) = migrated_database().await;
    let bus = CommandBus::new(pool.clone());
    create_product(&bus, "MUG", 1250, "EUR").await;
    bus.execute::<Product>("MUG", add_stock(2), &keyed("k-1", "f-1"), Expect::Existing)
        .await
        .unwrap();

    let result = bus
        .execute::<Product>("MUG", add_stock(3), &keyed("k-1", "f-2"), Expect::Existing)
        .await;

    assert!(matches!(result, Err(CommandError::KeyReused)));
    assert_eq!(event_count(&pool).await, 2);
}

#[tokio::test]
async fn concurrent_requests_with_one_key_append_once() {
    let (_db, pool) = migrated_database().await;
    let bus = Arc::new(CommandBus::new(pool.clone()));
    create_product(&bus, "MUG", 1250, "EUR").await;

    let requests: Vec<_> = (0..12)
        .map(|_| {
            let bus = Arc::clone(&bus);
            tokio::spawn(async move {
                bus.execute::<Product>("MUG", add_stock(1), &keyed("same", "f"), Expect::Existing)
                    .await
            })
        })
        .collect();
    let mut versions = Vec::new();
    for request in requests {
        versions.push(
            request
                .await
                .unwrap()
                .expect("every request answers")
                .version,
        );
    }

    assert!(versions.iter().all(|v| *v == 2), "{versions:?}");
    assert_eq!(event_count(&pool).await, 2);
}

#[tokio::test]
async fn an_expired_key_is_forgotten_and_can_be_used_again() {
    let (_db, pool) = migrated_database().await;
    let bus = CommandBus::new(pool.clone());
    create_product(&bus, "MUG", 1250, "EUR").await;
    let short_lived = |fingerprint: &str| CommandContext {
        idempotency: Some(IdempotencyClaim {
            key: IdempotencyKey::internal("k"),
            fingerprint: fingerprint.into(),
            ttl: Duration::ZERO,
        }),
        ..context("r")
    };
    bus.execute::<Product>("MUG", add_stock(1), &short_lived("a"), Expect::Existing)
        .await
        .unwrap();

    let again = bus
        .execute::<Product>("MUG", add_stock(1), &short_lived("b"), Expect::Existing)
        .await
        .unwrap();
    assert!(!again.replayed);
    assert_eq!(again.version, 3);

    // The second use expired as well; cleanup removes it.
    let deleted = event_store::idempotency::forget_expired(&pool, 100)
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM idempotency_keys")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
}

#[tokio::test]
async fn the_catalog_reads_prices_from_the_products_and_misses_unknown_skus() {
    let (_db, pool) = migrated_database().await;
    let bus = CommandBus::new(pool.clone());
    create_product(&bus, "MUG", 1250, "EUR").await;
    create_product(&bus, "TEA", 499, "EUR").await;
    let catalog = Catalog::new(pool.clone());
    let skus = ["TEA", "NOPE", "MUG"].map(|s| Sku::parse(s).unwrap());

    let found = catalog.details(&skus).await.unwrap();
    let prices: Vec<Option<i64>> = found
        .iter()
        .map(|d| d.as_ref().map(|d| d.price.amount_cents))
        .collect();
    assert_eq!(prices, vec![Some(499), None, Some(1250)]);
    assert!(found[0].as_ref().unwrap().active);
}

#[tokio::test]
async fn the_catalog_follows_price_changes_and_discontinuation_at_once() {
    let (_db, pool) = migrated_database().await;
    let bus = CommandBus::new(pool.clone());
    create_product(&bus, "MUG", 1250, "EUR").await;
    let catalog = Catalog::new(pool.clone());
    let mug = [Sku::parse("MUG").unwrap()];
    let price = |details: &[Option<domain::product::ProductDetails>]| {
        let details = details[0].as_ref().unwrap();
        (details.price.amount_cents, details.active)
    };
    assert_eq!(price(&catalog.details(&mug).await.unwrap()), (1250, true));

    // Another process's bus changes it; the next lookup here sees it.
    let elsewhere = CommandBus::new(pool.clone());
    for command in [
        ProductCommand::ChangePrice { price_cents: 1490 },
        add_stock(3),
        ProductCommand::Discontinue {
            reason: domain::values::Reason::parse("end of line").unwrap(),
        },
    ] {
        elsewhere
            .execute::<Product>("MUG", command, &context("c"), Expect::Existing)
            .await
            .unwrap();
    }
    assert_eq!(price(&catalog.details(&mug).await.unwrap()), (1490, false));
    elsewhere
        .execute::<Product>(
            "MUG",
            ProductCommand::Reactivate,
            &context("c"),
            Expect::Existing,
        )
        .await
        .unwrap();
    assert_eq!(price(&catalog.details(&mug).await.unwrap()), (1490, true));
}

#[tokio::test]
async fn lookups_at_once_share_a_statement_and_each_gets_its_own_answer() {
    let (_db, pool) = migrated_database().await;
    let bus = CommandBus::new(pool.clone());
    for (i, sku) in ["A", "B", "C", "D"].iter().enumerate() {
        create_product(&bus, sku, 100 * (i as i64 + 1), "EUR").await;
    }
    let catalog = Catalog::new(pool.clone());
    let asks: Vec<Vec<&str>> = (0..64)
        .map(|i| match i % 4 {
            0 => vec!["A", "NOPE"],
            1 => vec!["B"],
            2 => vec!["C", "A"],
            _ => vec!["D", "B", "C"],
        })
        .collect();
    let answers = futures::future::join_all(asks.iter().map(|skus| {
        let catalog = catalog.clone();
        let skus: Vec<Sku> = skus.iter().map(|s| Sku::parse(s).unwrap()).collect();
        async move { catalog.details(&skus).await.unwrap() }
    }))
    .await;
    for (skus, answer) in asks.iter().zip(answers) {
        let prices: Vec<Option<i64>> = answer
            .iter()
            .map(|d| d.as_ref().map(|d| d.price.amount_cents))
            .collect();
        let expected: Vec<Option<i64>> = skus
            .iter()
            .map(|sku| match *sku {
                "A" => Some(100),
                "B" => Some(200),
                "C" => Some(300),
                "D" => Some(400),
                _ => None,
            })
            .collect();
        assert_eq!(prices, expected, "{skus:?}");
    }
}

#[tokio::test]
async fn a_product_whose_catalogue_does_not_decode_fails_only_its_own_lookups() {
    let (_db, pool) = migrated_database().await;
    let bus = CommandBus::new(pool.clone());
    create_product(&bus, "MUG", 1250, "EUR").await;
    create_product(&bus, "BAD", 100, "EUR").await;
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                             payload, metadata)
         VALUES ('Product', 'BAD', 2, 'ProductPriceChanged', '1.0',
                 '{\"ProductPriceChanged\": {\"price\": \"free\"}}', '{}')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let catalog = Catalog::new(pool.clone());
    let sku = |s: &str| vec![Sku::parse(s).unwrap()];
    let (bad_only, mixed, mug_only) = (sku("BAD"), [sku("MUG"), sku("BAD")].concat(), sku("MUG"));
    let (bad, both, good) = tokio::join!(
        catalog.details(&bad_only),
        catalog.details(&mixed),
        catalog.details(&mug_only),
    );
    assert!(
        matches!(bad, Err(command_bus::CatalogError::Decode(_))),
        "{bad:?}"
    );
    assert!(both.is_err());
    assert_eq!(good.unwrap()[0].as_ref().unwrap().price.amount_cents, 1250);
}

#[tokio::test]
async fn the_catalogue_index_covers_exactly_the_catalogue_events() {
    // The catalogue reads through the partial index of migration 0007; its
    // predicate must name exactly ProductEvent::CATALOGUE, or the lookup
    // scans every event of a product. A new catalogue event needs a
    // migration that replaces the index.
    let (_db, pool) = migrated_database().await;
    let definition: String = sqlx::query_scalar(
        "SELECT indexdef FROM pg_indexes WHERE indexname = 'events_catalogue_idx'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    for name in domain::ProductEvent::TYPES {
        let named = definition.contains(&format!("'{name}'"));
        let catalogue = domain::ProductEvent::CATALOGUE.contains(name);
        assert_eq!(
            named, catalogue,
            "{name}: the index (event-store/migrations/0007) and ProductEvent::CATALOGUE differ: {definition}"
        );
    }
    // And the planner takes it for a lookup.
    sqlx::query("SET enable_seqscan = off")
        .execute(&pool)
        .await
        .unwrap();
    let plan: Vec<String> = sqlx::query_scalar(&format!(
        "EXPLAIN {}",
        command_bus::catalog::lookup_statement()
    ))
    .bind(vec!["MUG"])
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        plan.iter()
            .any(|line| line.contains("events_catalogue_idx")),
        "{plan:?}"
    );
}

#[tokio::test]
async fn postgres_es_and_this_store_read_each_others_events() {
    use cqrs_es::EventStore;
    use cqrs_es::persist::PersistedEventStore;

    let (_db, pool) = migrated_database().await;
    // Written by postgres-es's own repository...
    let theirs = PersistedEventStore::<_, Product>::new_event_store(
        postgres_es::PostgresEventRepository::new(pool.clone()),
    );
    let context_theirs = theirs.load_aggregate("MUG").await.unwrap();
    let created = domain::ProductEvent::ProductCreated(domain::product::ProductCreated {
        sku: Sku::parse("MUG").unwrap(),
        name: domain::values::ProductName::parse("Mug").unwrap(),
        price: domain::values::Money::price(1, domain::values::Currency::parse("EUR").unwrap())
            .unwrap(),
    });
    theirs
        .commit(vec![created], context_theirs, Default::default())
        .await
        .unwrap();

    // ...read and extended through ours...
    let bus = CommandBus::new(pool.clone());
    let order = OrderId::new(uuid::Uuid::from_u128(1));
    bus.execute::<Product>("MUG", add_stock(4), &context("r"), Expect::Existing)
        .await
        .unwrap();
    let reserved = bus
        .execute::<Product>(
            "MUG",
            ProductCommand::ReserveStock {
                order_id: order,
                quantity: 3,
            },
            &context("r"),
            Expect::Existing,
        )
        .await
        .unwrap();
    assert_eq!(reserved.version, 3);

    // ...and read back by postgres-es, with the global columns filled in.
    let loaded = theirs.load_aggregate("MUG").await.unwrap();
    assert_eq!(loaded.current_sequence, 3);
    assert_eq!(loaded.aggregate.available(), 1);
    let unpositioned: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE global_position IS NULL OR transaction_id IS NULL",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(unpositioned, 0);
}

fn reserve(order: u128) -> ProductCommand {
    ProductCommand::ReserveStock {
        order_id: OrderId::new(uuid::Uuid::from_u128(order)),
        quantity: 1,
    }
}

#[tokio::test]
async fn every_sender_of_one_keyed_command_learns_that_it_landed() {
    // Two processes driving one saga send the same step at once. The one that
    // loses the race must not read the winner's work as a refusal ("already
    // reserved") or a conflict: the key says the command is done.
    let (_db, pool) = migrated_database().await;
    let bus = Arc::new(CommandBus::new(pool.clone()));
    create_product(&bus, "MUG", 1250, "EUR").await;
    bus.execute::<Product>("MUG", add_stock(100), &context("stock"), Expect::Existing)
        .await
        .unwrap();

    for round in 0..10u128 {
        let key = format!("saga:{round}:reserve:MUG");
        let senders: Vec<_> = (0..6)
            .map(|_| {
                let (bus, context) = (Arc::clone(&bus), keyed(&key, &key));
                tokio::spawn(async move {
                    bus.execute::<Product>("MUG", reserve(round), &context, Expect::Existing)
                        .await
                })
            })
            .collect();
        for sender in senders {
            let outcome = sender.await.unwrap();
            assert!(outcome.is_ok(), "round {round}: {outcome:?}");
        }
    }
    let reserved: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'StockReserved'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(reserved, 10);
}

#[tokio::test]
async fn a_client_key_never_reaches_a_key_of_the_platform() {
    let (_db, pool) = migrated_database().await;
    let bus = CommandBus::new(pool.clone());
    create_product(&bus, "MUG", 1250, "EUR").await;
    let name = "saga:0197:refund";
    let client = CommandContext {
        idempotency: Some(IdempotencyClaim {
            key: IdempotencyKey::client("customer-1", name),
            fingerprint: "client request".into(),
            ttl: Duration::from_secs(3600),
        }),
        ..context("client")
    };
    bus.execute::<Product>("MUG", add_stock(1), &client, Expect::Existing)
        .await
        .unwrap();

    // The platform's own command under the same name is untouched by it.
    let internal = bus
        .execute::<Product>("MUG", add_stock(2), &keyed(name, name), Expect::Existing)
        .await
        .unwrap();
    assert!(!internal.replayed);
    assert_eq!(internal.version, 3);
    assert_ne!(
        IdempotencyKey::internal("client:x"),
        IdempotencyKey::client("c", "x")
    );
}

#[test]
fn two_callers_never_share_a_key() {
    // Splitting the same text differently between caller and key.
    assert_ne!(
        IdempotencyKey::client("a:b", "c"),
        IdempotencyKey::client("a", "b:c")
    );
    assert_ne!(
        IdempotencyKey::client("alice", "k"),
        IdempotencyKey::client("bob", "k")
    );
    assert_eq!(
        IdempotencyKey::client("alice", "k"),
        IdempotencyKey::client("alice", "k")
    );
}

#[tokio::test]
async fn settling_a_command_still_on_its_way_makes_sure_it_never_lands() {
    let (_db, pool) = migrated_database().await;
    let bus = Arc::new(CommandBus::new(pool.clone()));
    create_product(&bus, "MUG", 1250, "EUR").await;
    let before = event_count(&pool).await;

    // Every write to the events table waits behind this lock, so the command
    // is stuck in its append statement, as under an overloaded database.
    let mut locker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE events IN EXCLUSIVE MODE")
        .execute(&mut *locker)
        .await
        .unwrap();
    let key = "saga:o-1:commit:MUG";
    let stuck = {
        let (bus, context) = (Arc::clone(&bus), keyed(key, key));
        tokio::spawn(async move {
            bus.execute::<Product>("MUG", add_stock(3), &context, Expect::Existing)
                .await
        })
    };
    platform::testing::lock_waiter(&pool, None, Duration::from_secs(10))
        .await
        .expect("the append waits for the lock");

    let claim = keyed(key, key).idempotency.unwrap();
    let settled = bus.settle::<Product>("MUG", &claim).await.unwrap();
    assert_eq!(settled, Settled::Never);
    locker.rollback().await.unwrap();

    let late = stuck.await.unwrap();
    assert!(matches!(late, Err(CommandError::KeyReused)), "{late:?}");
    assert_eq!(event_count(&pool).await, before);
    // Asking again gives the same answer.
    assert_eq!(
        bus.settle::<Product>("MUG", &claim).await.unwrap(),
        Settled::Never
    );

    // A command that landed is found, with its version.
    let landed = "saga:o-2:commit:MUG";
    bus.execute::<Product>(
        "MUG",
        add_stock(1),
        &keyed(landed, landed),
        Expect::Existing,
    )
    .await
    .unwrap();
    let claim = keyed(landed, landed).idempotency.unwrap();
    match bus.settle::<Product>("MUG", &claim).await.unwrap() {
        Settled::Landed(outcome) => assert_eq!(outcome.version, 2),
        Settled::Never => panic!("a landed command was not found"),
    }
}

#[tokio::test]
async fn the_bus_loads_an_aggregate_with_its_version() {
    let (_db, pool) = migrated_database().await;
    let bus = CommandBus::new(pool.clone());
    create_product(&bus, "MUG", 1250, "EUR").await;
    bus.execute::<Product>("MUG", add_stock(4), &context("s"), Expect::Existing)
        .await
        .unwrap();
    let (product, version) = bus.load::<Product>("MUG").await.unwrap();
    assert_eq!((product.on_hand(), version), (4, 2));
    let (missing, version) = bus.load::<Product>("NOPE").await.unwrap();
    assert_eq!((missing.details().is_none(), version), (true, 0));
}

#[tokio::test]
async fn keys_stored_before_the_namespaces_move_into_the_clients_one() {
    let database = platform::testing::TestDatabase::create().await.unwrap();
    let pool = database.pool(2).await.unwrap();
    let mut before = event_store::migrator();
    before.migrations = before
        .migrations
        .iter()
        .filter(|migration| migration.version < 4)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    before.run(&pool).await.unwrap();
    // A client's key (fingerprint: a hash of its request), one squatting a
    // saga's key, and a saga's own (fingerprint: the key itself).
    for (key, fingerprint) in [
        ("checkout-1", "9f86d081"),
        // The same name, once more with the prefix it is about to get.
        ("client:checkout-1", "e3b0c442"),
        ("saga:o:refund", "2c26b46b"),
        ("saga:o:reserve:MUG", "saga:o:reserve:MUG"),
    ] {
        sqlx::query(
            "INSERT INTO idempotency_keys
                 (key, request_fingerprint, aggregate_type, aggregate_id, version, expires_at)
             VALUES ($1, $2, 'Product', 'MUG', 1, now() + interval '1 hour')",
        )
        .bind(key)
        .bind(fingerprint)
        .execute(&pool)
        .await
        .unwrap();
    }
    event_store::migrate(&pool).await.unwrap();
    let keys: Vec<String> = sqlx::query_scalar("SELECT key FROM idempotency_keys ORDER BY key")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        keys,
        [
            "client:checkout-1",
            "client:client:checkout-1",
            "client:saga:o:refund",
            "saga:o:reserve:MUG"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_queueing_on_one_stream_never_decide_on_a_stale_copy() {
    // Each bus is a process: its writers take turns on the stream and pass
    // the aggregate along, while the other process appends in between. Every
    // decision must see every unit sold by either, or the stock oversells.
    let (_db, pool) = migrated_database().await;
    let buses = [
        Arc::new(CommandBus::new(pool.clone())),
        Arc::new(CommandBus::new(pool.clone())),
    ];
    create_product(&buses[0], "MUG", 1250, "EUR").await;
    buses[0]
        .execute::<Product>("MUG", add_stock(50), &context("stock"), Expect::Existing)
        .await
        .unwrap();

    let writers: Vec<_> = (0..80u128)
        .map(|order| {
            let bus = Arc::clone(&buses[order as usize % 2]);
            tokio::spawn(async move {
                bus.execute::<Product>(
                    "MUG",
                    reserve(order),
                    &context(&order.to_string()),
                    Expect::Existing,
                )
                .await
            })
        })
        .collect();
    let (mut reserved, mut refused) = (0, 0);
    for writer in writers {
        match writer.await.unwrap() {
            Ok(_) => reserved += 1,
            Err(CommandError::Refused(_)) => refused += 1,
            Err(other) => panic!("neither reserved nor refused: {other:?}"),
        }
    }
    assert_eq!((reserved, refused), (50, 30));

    // Each bus's own view, read fresh, agrees with the stream.
    for bus in &buses {
        let (product, version) = bus.load::<Product>("MUG").await.unwrap();
        assert_eq!(version, 52);
        assert_eq!(product.available(), 0);
    }
}

#[tokio::test]
async fn a_keyed_command_repeated_with_its_old_expected_version_gets_its_outcome() {
    // Platform keys are not looked up before the command runs, client keys
    // are; a repeat must find its outcome either way, also when the version
    // it expected has moved on because of its own first run.
    for key in [
        IdempotencyKey::internal("saga:o1:stock"),
        IdempotencyKey::client("alice", "k1"),
    ] {
        let (_db, pool) = migrated_database().await;
        let bus = CommandBus::new(pool.clone());
        create_product(&bus, "MUG", 1250, "EUR").await;
        let context = CommandContext {
            expected_version: Some(1),
            idempotency: Some(IdempotencyClaim {
                key: key.clone(),
                fingerprint: "add 5".into(),
                ttl: Duration::from_secs(3600),
            }),
            ..context("repeat")
        };
        let first = bus
            .execute::<Product>("MUG", add_stock(5), &context, Expect::Existing)
            .await
            .unwrap();
        assert_eq!((first.version, first.replayed), (2, false), "{key}");
        let again = bus
            .execute::<Product>("MUG", add_stock(5), &context, Expect::Existing)
            .await
            .unwrap();
        assert_eq!((again.version, again.replayed), (2, true), "{key}");
        // Without the precondition the repeat reaches the append, which the
        // key's row stops.
        let unconditional = CommandContext {
            expected_version: None,
            ..context.clone()
        };
        let third = bus
            .execute::<Product>("MUG", add_stock(5), &unconditional, Expect::Existing)
            .await
            .unwrap();
        assert_eq!((third.version, third.replayed), (2, true), "{key}");
        assert_eq!(event_count(&pool).await, 2, "{key}");
    }
}

#[tokio::test]
async fn a_bus_that_kept_an_aggregate_still_sees_what_another_process_appended_since() {
    // Two processes: `here` keeps the product in memory after its commands,
    // `elsewhere` adds stock behind its back.
    let (_db, pool) = migrated_database().await;
    let here = CommandBus::new(pool.clone());
    let elsewhere = CommandBus::new(pool.clone());
    create_product(&here, "MUG", 1250, "EUR").await;
    here.execute::<Product>("MUG", add_stock(2), &context("here"), Expect::Existing)
        .await
        .unwrap();
    for _ in 0..3 {
        elsewhere
            .execute::<Product>("MUG", add_stock(1), &context("elsewhere"), Expect::Existing)
            .await
            .unwrap();
    }
    // Five on hand: a reservation of five needs all three additions.
    let five = ProductCommand::ReserveStock {
        order_id: OrderId::new(uuid::Uuid::from_u128(1)),
        quantity: 5,
    };
    let outcome = here
        .execute::<Product>("MUG", five, &context("here"), Expect::Existing)
        .await
        .unwrap();
    assert_eq!(outcome.version, 6);
    let (product, version) = here.load::<Product>("MUG").await.unwrap();
    assert_eq!((product.on_hand(), product.available(), version), (5, 0, 6));

    // And `elsewhere`, whose copy is three events old, is refused on the
    // stock as it stands, not as it kept it.
    let refused = elsewhere
        .execute::<Product>("MUG", reserve(2), &context("elsewhere"), Expect::Existing)
        .await;
    assert!(
        matches!(
            refused,
            Err(CommandError::Refused(ProductError::InsufficientStock {
                available: 0,
                ..
            }))
        ),
        "{refused:?}"
    );
}

/// Distinct transactions the events of `event_type` were written in.
async fn transactions(pool: &PgPool, event_type: &str) -> i64 {
    sqlx::query_scalar("SELECT count(DISTINCT transaction_id) FROM events WHERE event_type = $1")
        .bind(event_type)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_queued_on_one_stream_are_decided_together_and_appended_in_one_go() {
    // A sale on one product: forty reservations at once for thirty units.
    // They queue on the stream and are decided one after another on the
    // aggregate, each on what the ones before it left, and what a round
    // decided is appended in one statement. Each caller gets its own answer.
    let (_db, pool) = migrated_database().await;
    let bus = Arc::new(CommandBus::new(pool.clone()));
    create_product(&bus, "MUG", 1250, "EUR").await;
    bus.execute::<Product>("MUG", add_stock(30), &context("stock"), Expect::Existing)
        .await
        .unwrap();

    let writers: Vec<_> = (0..40u128)
        .map(|order| {
            let bus = Arc::clone(&bus);
            tokio::spawn(async move {
                bus.execute::<Product>("MUG", reserve(order), &context("sale"), Expect::Existing)
                    .await
            })
        })
        .collect();
    let mut versions = Vec::new();
    let mut refused = 0;
    for writer in writers {
        match writer.await.unwrap() {
            Ok(outcome) => versions.push(outcome.version),
            Err(CommandError::Refused(ProductError::InsufficientStock {
                available: 0, ..
            })) => {
                refused += 1;
            }
            Err(other) => panic!("neither reserved nor refused: {other:?}"),
        }
    }
    versions.sort_unstable();
    assert_eq!(versions, (3..=32).collect::<Vec<u64>>(), "one version each");
    assert_eq!(refused, 10);
    let rounds = transactions(&pool, "StockReserved").await;
    assert!(
        rounds < 10,
        "30 reservations took {rounds} transactions: they were not appended together"
    );
    let (product, version) = bus.load::<Product>("MUG").await.unwrap();
    assert_eq!(
        (product.available(), product.reserved(), version),
        (0, 30, 32)
    );
}

#[tokio::test]
async fn a_round_goes_on_without_a_command_whose_precondition_failed() {
    // Three commands queued at once, the first with a stale If-Match: the
    // aggregate takes its reservation (and applies it) before the version
    // is compared. The other two must not be decided on a state holding an
    // event that is never stored.
    let (_db, pool) = migrated_database().await;
    let bus = CommandBus::new(pool.clone());
    create_product(&bus, "MUG", 1250, "EUR").await;
    bus.execute::<Product>("MUG", add_stock(2), &context("stock"), Expect::Existing)
        .await
        .unwrap();
    let stale = CommandContext {
        expected_version: Some(1),
        ..context("stale")
    };
    // One task polls all three before the stream's worker runs: they are
    // queued in this order and taken in one round.
    let (two, three) = (context("2"), context("3"));
    let (first, second, third) = tokio::join!(
        bus.execute::<Product>("MUG", reserve(1), &stale, Expect::Existing),
        bus.execute::<Product>("MUG", reserve(2), &two, Expect::Existing),
        bus.execute::<Product>("MUG", reserve(3), &three, Expect::Existing),
    );
    assert!(
        matches!(
            first,
            Err(CommandError::VersionMismatch {
                expected: 1,
                actual: 2
            })
        ),
        "{first:?}"
    );
    assert_eq!(second.unwrap().version, 3);
    assert_eq!(third.unwrap().version, 4);
    let (product, version) = bus.load::<Product>("MUG").await.unwrap();
    assert_eq!(
        (product.available(), product.reserved(), version),
        (0, 2, 4)
    );
}

#[tokio::test]
async fn a_repeat_in_a_round_gets_its_outcome_and_the_others_land() {
    // A keyed command that landed before is sent again together with two
    // new ones: the round's statement fails on the taken key, and each
    // command is then run alone.
    let (_db, pool) = migrated_database().await;
    let bus = CommandBus::new(pool.clone());
    create_product(&bus, "MUG", 1250, "EUR").await;
    bus.execute::<Product>("MUG", add_stock(5), &context("stock"), Expect::Existing)
        .await
        .unwrap();
    let key = keyed("saga:o1:reserve:MUG", "saga:o1:reserve:MUG");
    let landed = bus
        .execute::<Product>("MUG", reserve(1), &key, Expect::Existing)
        .await
        .unwrap();
    assert_eq!(landed.version, 3);
    // Another process's command moved the stream past the kept copy too.
    CommandBus::new(pool.clone())
        .execute::<Product>("MUG", add_stock(1), &context("elsewhere"), Expect::Existing)
        .await
        .unwrap();

    let (two, three) = (context("2"), context("3"));
    let (repeat, second, third) = tokio::join!(
        bus.execute::<Product>("MUG", reserve(1), &key, Expect::Existing),
        bus.execute::<Product>("MUG", reserve(2), &two, Expect::Existing),
        bus.execute::<Product>("MUG", reserve(3), &three, Expect::Existing),
    );
    let repeat = repeat.unwrap();
    assert_eq!((repeat.version, repeat.replayed), (3, true));
    let mut versions = vec![second.unwrap().version, third.unwrap().version];
    versions.sort_unstable();
    assert_eq!(versions, vec![5, 6]);
    assert_eq!(event_count(&pool).await, 6);
}

#[tokio::test]
async fn a_refusal_on_a_kept_copy_is_checked_against_the_stream_first() {
    // `here` kept the product with nothing available; another process adds
    // stock. A reservation refused on the kept copy would be refused for
    // stock that is there.
    let (_db, pool) = migrated_database().await;
    let here = CommandBus::new(pool.clone());
    create_product(&here, "MUG", 1250, "EUR").await;
    let empty = here
        .execute::<Product>("MUG", reserve(1), &context("here"), Expect::Existing)
        .await;
    assert!(matches!(empty, Err(CommandError::Refused(_))), "{empty:?}");
    CommandBus::new(pool.clone())
        .execute::<Product>("MUG", add_stock(3), &context("elsewhere"), Expect::Existing)
        .await
        .unwrap();

    let reserved = here
        .execute::<Product>("MUG", reserve(1), &context("here"), Expect::Existing)
        .await
        .unwrap();
    assert_eq!(reserved.version, 3);
    let (product, version) = here.load::<Product>("MUG").await.unwrap();
    assert_eq!((product.available(), version), (2, 3));
}

#[tokio::test]
async fn the_next_command_decides_on_the_aggregate_kept_in_memory_without_reading_the_stream() {
    // Seen from outside by changing a stored event behind the bus's back
    // (nothing does that in earnest): a bus that read the stream again for
    // its next command would see one unit on hand and refuse five.
    let (_db, pool) = migrated_database().await;
    let bus = CommandBus::new(pool.clone());
    create_product(&bus, "MUG", 1250, "EUR").await;
    bus.execute::<Product>("MUG", add_stock(5), &context("stock"), Expect::Existing)
        .await
        .unwrap();
    sqlx::query(
        r#"UPDATE events SET payload = '{"StockAdded":{"quantity":1}}'
            WHERE aggregate_id = 'MUG' AND sequence = 2"#,
    )
    .execute(&pool)
    .await
    .unwrap();
    let five = ProductCommand::ReserveStock {
        order_id: OrderId::new(uuid::Uuid::from_u128(1)),
        quantity: 5,
    };
    let kept = bus
        .execute::<Product>("MUG", five, &context("reserve"), Expect::Existing)
        .await;
    assert_eq!(kept.unwrap().version, 3);
    // A bus of its own reads the stream as stored.
    let (product, _) = CommandBus::new(pool.clone())
        .load::<Product>("MUG")
        .await
        .unwrap();
    assert_eq!(product.on_hand(), 1);
}

#[tokio::test]
async fn an_aggregate_handed_to_the_bus_is_used_and_checked_like_one_it_kept() {
    // A consumer that read a product's first event hands the product to
    // the bus. Up to date, it saves the bus a load (seen, as above, by a
    // stored event changed behind its back); behind the stream, the next
    // append finds the next sequence taken and decides on the stream as
    // stored.
    let (_db, pool) = migrated_database().await;
    let writer = CommandBus::new(pool.clone());
    create_product(&writer, "MUG", 1250, "EUR").await;
    let (mug, _) = writer.load::<Product>("MUG").await.unwrap();

    let bus = CommandBus::new(pool.clone());
    bus.offer("MUG", mug, 1);
    // A second offer does not replace the first.
    bus.offer("MUG", Product::default(), 0);
    // The handed copy says 5 on hand; the stream, once changed, says 1.
    writer
        .execute::<Product>("MUG", add_stock(5), &context("w"), Expect::Existing)
        .await
        .unwrap();
    let (stocked, _) = writer.load::<Product>("MUG").await.unwrap();
    sqlx::query(
        r#"UPDATE events SET payload = '{"StockAdded":{"quantity":1}}'
            WHERE aggregate_id = 'MUG' AND sequence = 2"#,
    )
    .execute(&pool)
    .await
    .unwrap();
    let five = ProductCommand::ReserveStock {
        order_id: OrderId::new(uuid::Uuid::from_u128(1)),
        quantity: 5,
    };
    // The copy at version 1 is behind: the append conflicts, and the stream
    // as stored (one on hand) refuses five.
    let behind = bus
        .execute::<Product>("MUG", five.clone(), &context("r"), Expect::Existing)
        .await;
    assert!(
        matches!(
            behind,
            Err(CommandError::Refused(
                ProductError::InsufficientStock { .. }
            ))
        ),
        "{behind:?}"
    );

    // Up to date: handed the product as it stood before the change (five
    // on hand at version 2), the bus decides on it without a load.
    let fresh = CommandBus::new(pool.clone());
    fresh.offer("MUG", stocked, 2);
    let outcome = fresh
        .execute::<Product>("MUG", five, &context("r"), Expect::Existing)
        .await
        .unwrap();
    assert_eq!(outcome.version, 3);
}

#[tokio::test]
async fn an_event_that_would_not_follow_one_the_store_holds_is_never_appended() {
    use domain::order::{OrderLine, OrderPlaced};
    use domain::values::{Currency, CustomerId, PaymentMethod};
    use domain::{Order, OrderCommand, OrderEvent};

    let (_db, pool) = migrated_database().await;
    let bus = CommandBus::new(pool.clone());
    // A copy of an order the store never held (taken, say, from a message
    // somebody produced) is offered to the bus as if its placement had
    // just been appended.
    let order_id = OrderId::parse("0190a0b0-1111-7222-8333-444455556666").unwrap();
    let mut forged = Order::default();
    cqrs_es::Aggregate::apply(
        &mut forged,
        OrderEvent::OrderPlaced(OrderPlaced {
            order_id,
            customer_id: CustomerId::parse("mallory").unwrap(),
            lines: vec![OrderLine {
                sku: Sku::parse("MUG").unwrap(),
                quantity: 1,
                unit_price_cents: 1,
            }],
            currency: Currency::parse("EUR").unwrap(),
            total_cents: 1,
            payment_method: PaymentMethod::parse("tok_visa").unwrap(),
            shipping_address: None,
            email: None,
        }),
    );
    bus.offer(&order_id.to_string(), forged, 1);

    let confirmed = bus
        .execute::<Order>(
            &order_id.to_string(),
            OrderCommand::ConfirmOrder,
            &context("forged"),
            Expect::Existing,
        )
        .await;

    // The append of event 2 is refused (there is no event 1); the bus then
    // decides on the order as the store holds it: there is none.
    assert!(
        matches!(confirmed, Err(CommandError::Refused(_))),
        "{confirmed:?}"
    );
    assert_eq!(event_count(&pool).await, 0);
    // By hand, too: a stream cannot start in the middle.
    let inserted = sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                             payload, metadata, event_id)
         VALUES ('Order', 'x', 2, 'OrderConfirmed', '1.0', '{}', '{}', gen_random_uuid())",
    )
    .execute(&pool)
    .await;
    assert!(inserted.is_err());
    assert_eq!(event_count(&pool).await, 0);
}

#[tokio::test]
async fn checking_each_events_predecessor_never_scans_the_store() {
    // The check's plan is made once per session: made while the store was
    // small (and analyzed so), it must still take the key when the store has
    // grown (a bulk append of a long history took hours when it scanned the
    // table for every event).
    let (_db, pool) = migrated_database().await;
    let mut connection = pool.acquire().await.unwrap();
    let mut tx = sqlx::Connection::begin(&mut *connection).await.unwrap();
    for (from, to) in [(1, 1), (2, 3_000)] {
        if from == 2 {
            tx.commit().await.unwrap();
            sqlx::query("VACUUM ANALYZE events")
                .execute(&mut *connection)
                .await
                .unwrap();
            tx = sqlx::Connection::begin(&mut *connection).await.unwrap();
        }
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                 event_version, payload, metadata)
             SELECT 'Product', 'MUG', n, 'StockAdded', '1.0',
                    json_build_object('StockAdded', json_build_object('quantity', 1)), '{}'::json
               FROM generate_series($1::bigint, $2::bigint) AS n ORDER BY n",
        )
        .bind(from)
        .bind(to)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    let scans: i64 = sqlx::query_scalar(
        "SELECT coalesce(seq_scan, 0) FROM pg_stat_xact_user_tables WHERE relname = 'events'",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert_eq!(scans, 0, "the predecessor check scanned the events table");
}

#[tokio::test]
async fn a_long_stream_without_a_recent_snapshot_loads_whole_a_page_at_a_time() {
    // Longer than one round trip reads with the snapshot: the rest is
    // folded on as it streams in, and none of it is missed or applied twice.
    let (_db, pool) = migrated_database().await;
    let bus = CommandBus::new(pool.clone());
    create_product(&bus, "MUG", 1250, "EUR").await;
    let added = |from: i64, to: i64| {
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                 event_version, payload, metadata)
             SELECT 'Product', 'MUG', n, 'StockAdded', '1.0',
                    json_build_object('StockAdded', json_build_object('quantity', 1)), '{}'::json
               FROM generate_series($1::bigint, $2::bigint) AS n ORDER BY n",
        )
        .bind(from)
        .bind(to)
        .execute(&pool)
    };
    added(2, 2_499).await.unwrap();
    let fresh = CommandBus::new(pool.clone());
    let (product, version) = fresh.load::<Product>("MUG").await.unwrap();
    assert_eq!((product.on_hand(), version), (2_498, 2_499));
    // A snapshot (at 2,500) far behind the stream's end: the same.
    fresh
        .execute::<Product>("MUG", add_stock(1), &context("snap"), Expect::Existing)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sqlx::query_scalar::<_, i64>("SELECT count(*) FROM snapshots")
        .fetch_one(&pool)
        .await
        .unwrap()
        == 0
    {
        assert!(std::time::Instant::now() < deadline, "no snapshot written");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    added(2_501, 5_000).await.unwrap();
    let (product, version) = CommandBus::new(pool.clone())
        .load::<Product>("MUG")
        .await
        .unwrap();
    assert_eq!((product.on_hand(), version), (4_999, 5_000));
}

#[tokio::test]
async fn the_platforms_connections_compile_no_code_for_a_statement() {
    // A hot aggregate's events after its snapshot are estimated at a third
    // of its stream: with JIT on, loading it spent 200 ms compiling code.
    let (db, _pool) = migrated_database().await;
    let pool = event_store::connect(&db.url, 1, Duration::from_secs(5))
        .await
        .unwrap();
    let jit: String = sqlx::query_scalar("SHOW jit")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(jit, "off");
}

#[tokio::test]
async fn a_hot_aggregate_loads_from_its_snapshot_without_scanning_the_store() {
    // One product is the whole store, snapshotted at its last event: the
    // load reads the snapshot and the (no) events after it through the key.
    let (db, _pool) = migrated_database().await;
    let pool = db.pool(1).await.unwrap();
    let bus = CommandBus::new(pool.clone());
    create_product(&bus, "MUG", 1250, "EUR").await;
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                             event_version, payload, metadata)
         SELECT 'Product', 'MUG', n, 'StockAdded', '1.0',
                json_build_object('StockAdded', json_build_object('quantity', 1)), '{}'::json
           FROM generate_series(2::bigint, 50000::bigint) AS n ORDER BY n",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("VACUUM ANALYZE events")
        .execute(&pool)
        .await
        .unwrap();
    // (This small store's rows are narrow enough for the planner to pick a
    // bitmap of the key over a scan; the store's real rows are not.)
    sqlx::query("SET enable_bitmapscan = off")
        .execute(&pool)
        .await
        .unwrap();
    let (product, _) = bus.load::<Product>("MUG").await.unwrap();
    sqlx::query(
        "INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence, current_snapshot, payload)
         VALUES ('Product', 'MUG', 50000, 1, $1::json)",
    )
    .bind(serde_json::to_string(&product).unwrap())
    .execute(&pool)
    .await
    .unwrap();
    // The table's scans so far, counted by the server once this (only)
    // connection's statistics are flushed.
    let scans = || async {
        sqlx::query("SELECT pg_stat_force_next_flush()")
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query_scalar::<_, i64>(
            "SELECT seq_scan FROM pg_stat_user_tables WHERE relname = 'events'",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let before = scans().await;
    let (loaded, version) = CommandBus::new(pool.clone())
        .load::<Product>("MUG")
        .await
        .unwrap();
    assert_eq!((loaded.on_hand(), version), (49_999, 50_000));
    assert_eq!(scans().await, before, "the load scanned the events table");
}
