//! A rebuild during live traffic hands over to the live workers with nothing
//! missed or doubled: afterwards every read model equals a fresh fold of the
//! whole event store, whatever the commands were.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::collections::HashMap;
use std::time::Duration;

use event_contract::Envelope;
use event_store::{GlobalCheckpoint, GlobalReader};
use indicatif::ProgressBar;
use platform_tests::TestPlatform;
use projections::model::customer_orders::CustomerOrders;
use projections::model::orders::OrderSummary;
use projections::model::products::ProductStock;
use projections::model::{ReadModel, fold_all};
use projections::rebuild::{Mode, Pauses, rebuild, rebuild_as, rebuild_pausing};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::json;
use sqlx::PgPool;

#[derive(Debug, Clone)]
enum Step {
    CreateProduct { product: u8, price_cents: i64 },
    AddStock { product: u8, quantity: i64 },
    PlaceOrder { customer: u8, lines: Vec<(u8, i64)> },
    CancelOrder { nth: usize },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => (0u8..6, 1i64..5_000).prop_map(|(product, price_cents)| Step::CreateProduct { product, price_cents }),
        2 => (0u8..6, 1i64..50).prop_map(|(product, quantity)| Step::AddStock { product, quantity }),
        4 => (0u8..3, prop::collection::vec((0u8..6, 1i64..4), 1..4))
            .prop_map(|(customer, lines)| Step::PlaceOrder { customer, lines }),
        1 => (0usize..20).prop_map(|nth| Step::CancelOrder { nth }),
    ]
}

/// Sends one step as a REST command. Refusals are part of the game.
async fn send(platform: &TestPlatform, step: &Step, orders: &mut Vec<String>) {
    match step {
        Step::CreateProduct {
            product,
            price_cents,
        } => {
            let body = json!({"sku": format!("P{product}"), "name": "p", "price_cents": price_cents, "currency": "EUR"});
            platform.post("/api/products", &body).await;
        }
        Step::AddStock { product, quantity } => {
            platform
                .post(
                    &format!("/api/products/P{product}/stock"),
                    &json!({"quantity": quantity}),
                )
                .await;
        }
        Step::PlaceOrder { customer, lines } => {
            let lines: Vec<_> = lines
                .iter()
                .map(|(product, quantity)| json!({"sku": format!("P{product}"), "quantity": quantity}))
                .collect();
            let body = json!({"customer_id": format!("c{customer}"), "lines": lines, "payment_method": "tok_visa"});
            let response = platform.post("/api/orders", &body).await;
            if response.status() == 202 {
                let answer: serde_json::Value = response.json().await.unwrap();
                orders.push(answer["order_id"].as_str().unwrap().to_owned());
            }
        }
        Step::CancelOrder { nth } => {
            if let Some(id) = orders.get(*nth % orders.len().max(1)) {
                platform
                    .post(
                        &format!("/api/orders/{id}/cancel"),
                        &json!({"reason": "random"}),
                    )
                    .await;
            }
        }
    }
}

/// Waits until every aggregate's row in the model's table is at the
/// aggregate's last sequence.
async fn caught_up<M: ReadModel>(pool: &PgPool, key: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let behind: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM (
                SELECT aggregate_id, max(sequence) AS last FROM events
                 WHERE aggregate_type = $1 GROUP BY aggregate_id) e
             LEFT JOIN {table} t ON t.{key}::text = e.aggregate_id
             WHERE t.version IS DISTINCT FROM e.last",
            table = M::TABLE
        ))
        .bind(M::AGGREGATE_TYPE)
        .fetch_one(pool)
        .await
        .unwrap();
        if behind == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} still {behind} behind",
            M::NAME
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The model as a fresh fold of the whole event store.
async fn folded<M: ReadModel>(pool: &PgPool) -> HashMap<String, M::Row> {
    let reader = GlobalReader::new(pool.clone());
    let mut checkpoint = GlobalCheckpoint::default();
    let mut rows = HashMap::new();
    loop {
        let batch = reader
            .read_raw(checkpoint, 1000, &Default::default())
            .await
            .unwrap();
        let Some(last) = batch.last() else {
            return rows;
        };
        checkpoint = last.checkpoint();
        let envelopes: Vec<Envelope> = batch.iter().map(|e| Envelope::of(e).unwrap()).collect();
        let fold = fold_all::<M>(&mut rows, &envelopes);
        assert!(fold.poisoned.is_empty(), "{:?}", fold.poisoned);
    }
}

async fn live<M: ReadModel>(pool: &PgPool) -> HashMap<String, M::Row> {
    let ids: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT aggregate_id FROM events WHERE aggregate_type = $1")
            .bind(M::AGGREGATE_TYPE)
            .fetch_all(pool)
            .await
            .unwrap();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let mut connection = pool.acquire().await.unwrap();
    M::load(&mut connection, M::TABLE, &ids).await.unwrap()
}

async fn assert_equal_to_a_fresh_fold<M: ReadModel>(pool: &PgPool) {
    let live = live::<M>(pool).await;
    let folded = folded::<M>(pool).await;
    assert_eq!(live, folded, "{}", M::NAME);
}

#[test]
fn a_rebuild_during_live_traffic_equals_the_live_model() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut runner = TestRunner::new(Config {
        cases: 4,
        // Each case starts a whole platform; shrinking a failure stays short.
        max_shrink_iters: 8,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&prop::collection::vec(step(), 20..60), |steps| {
            runtime.block_on(async {
                let platform = TestPlatform::start().await;
                let mut orders = Vec::new();
                let third = steps.len() / 3;
                for step in &steps[..third] {
                    send(&platform, step, &mut orders).await;
                }
                // The next third goes in while the orders model is rebuilt...
                let pool = platform.pool.clone();
                let hidden = ProgressBar::hidden();
                let (sent, all_sent) = tokio::sync::oneshot::channel();
                let concurrently = async {
                    for step in &steps[third..2 * third] {
                        send(&platform, step, &mut orders).await;
                    }
                    sent.send(()).unwrap();
                };
                // ...and the last third while the fresh table waits to be
                // swapped in, applied by the live workers to the old one.
                let before_swap = async {
                    all_sent.await.unwrap();
                    for step in &steps[2 * third..] {
                        send(&platform, step, &mut Vec::new()).await;
                    }
                    caught_up::<OrderSummary>(&pool, "order_id").await;
                };
                let (rebuilt, ()) = tokio::join!(
                    rebuild_pausing::<OrderSummary>(
                        &pool,
                        &hidden,
                        Pauses {
                            while_writing: async {},
                            before_swap
                        }
                    ),
                    concurrently
                );
                rebuilt.unwrap();
                rebuild::<ProductStock>(&pool, &hidden).await.unwrap();
                rebuild::<CustomerOrders>(&pool, &hidden).await.unwrap();

                caught_up::<OrderSummary>(&platform.pool, "order_id").await;
                caught_up::<ProductStock>(&platform.pool, "sku").await;
                caught_up::<CustomerOrders>(&platform.pool, "order_id").await;
                assert_equal_to_a_fresh_fold::<OrderSummary>(&platform.pool).await;
                assert_equal_to_a_fresh_fold::<ProductStock>(&platform.pool).await;
                assert_equal_to_a_fresh_fold::<CustomerOrders>(&platform.pool).await;
                platform.stop().await;
            });
            Ok(())
        })
        .unwrap();
}

/// The live table's keys and indexes, by name and definition.
async fn indexes(pool: &PgPool, table: &str) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT indexname::text, indexdef FROM pg_indexes
          WHERE schemaname = current_schema() AND tablename = $1 ORDER BY indexname",
    )
    .bind(table)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// One product with stock and one order for it, projected into the orders model.
async fn one_order_projected(platform: &TestPlatform) {
    let mut orders = Vec::new();
    for step in [
        Step::CreateProduct {
            product: 1,
            price_cents: 250,
        },
        Step::AddStock {
            product: 1,
            quantity: 10,
        },
        Step::PlaceOrder {
            customer: 1,
            lines: vec![(1, 2)],
        },
    ] {
        send(platform, &step, &mut orders).await;
    }
    caught_up::<OrderSummary>(&platform.pool, "order_id").await;
    caught_up::<ProductStock>(&platform.pool, "sku").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilt_table_keeps_its_keys_indexes_and_their_names() {
    let platform = TestPlatform::start().await;
    one_order_projected(&platform).await;
    let before = indexes(&platform.pool, OrderSummary::TABLE).await;
    assert_eq!(before.len(), 3, "{before:?}");

    let hidden = ProgressBar::hidden();
    for _ in 0..2 {
        let report = rebuild::<OrderSummary>(&platform.pool, &hidden)
            .await
            .unwrap();
        assert_eq!((report.rows, report.events), (1, 1));
        assert_eq!(indexes(&platform.pool, OrderSummary::TABLE).await, before);
    }
    let leftovers: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_class WHERE relname LIKE 'order_summary_re%'")
            .fetch_one(&platform.pool)
            .await
            .unwrap();
    assert_eq!(leftovers, 0);
    assert_equal_to_a_fresh_fold::<OrderSummary>(&platform.pool).await;
    platform.stop().await;
}

/// The gap-safe reader (and so the relay) reads only below every transaction
/// that has written and is still open: a rebuild must not keep one open while
/// it writes its table, nor build an index over the loaded rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_committed_while_a_rebuild_writes_its_table_are_read_at_once() {
    let platform = TestPlatform::start().await;
    one_order_projected(&platform).await;
    let live_indexes = indexes(&platform.pool, OrderSummary::TABLE).await.len();

    let pool = platform.pool.clone();
    let while_writing = async {
        let fresh = indexes(&pool, "order_summary_rebuild").await;
        assert_eq!(
            fresh.len(),
            live_indexes,
            "the fresh table gets its keys and indexes before its rows: {fresh:?}"
        );
        let response = platform
            .post(
                "/api/products",
                &json!({"sku": "DURING-REBUILD", "name": "p", "price_cents": 1, "currency": "EUR"}),
            )
            .await;
        assert_eq!(response.status(), 201);
        let reader = GlobalReader::new(pool.clone());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let events = reader
                .read_batch(GlobalCheckpoint::default(), 10_000)
                .await
                .unwrap();
            if events.iter().any(|e| e.aggregate_id == "DURING-REBUILD") {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the reader is held back while the rebuild writes"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let report = rebuild_pausing::<OrderSummary>(
        &pool,
        &ProgressBar::hidden(),
        Pauses {
            while_writing,
            before_swap: async {},
        },
    )
    .await
    .unwrap();
    assert_eq!(report.rows, 1);
    assert_eq!(
        indexes(&platform.pool, OrderSummary::TABLE).await.len(),
        live_indexes
    );
    assert_equal_to_a_fresh_fold::<OrderSummary>(&platform.pool).await;
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_with_diff_reports_the_rows_a_changed_fold_changes_and_swaps_nothing() {
    let platform = TestPlatform::start().await;
    for (sku, stock) in [("DIFF-A", 5), ("DIFF-B", 7), ("DIFF-C", 9)] {
        platform.create_product(sku, 100, stock).await;
    }
    platform
        .eventually(
            "{ a: product(sku: \"DIFF-A\") { onHand } b: product(sku: \"DIFF-B\") { onHand } c: product(sku: \"DIFF-C\") { onHand } }",
            json!({}),
            Duration::from_secs(30),
            |data| (data["a"]["onHand"] == 5 && data["b"]["onHand"] == 7 && data["c"]["onHand"] == 9).then_some(()),
        )
        .await;
    // What a change to the products' fold would do to one row.
    sqlx::query("UPDATE product_stock SET on_hand = 107 WHERE sku = 'DIFF-B'")
        .execute(&platform.pool)
        .await
        .unwrap();
    let live_b = "SELECT on_hand FROM product_stock WHERE sku = 'DIFF-B'";

    let hidden = ProgressBar::hidden();
    let report = rebuild_as::<ProductStock>(&platform.pool, &hidden, Mode::Diff)
        .await
        .unwrap();
    let diff = report.diff.expect("a diff");
    assert_eq!(diff.differing, 1, "{diff:?}");
    assert_eq!(
        (diff.missing_live, diff.only_live, diff.other_version),
        (0, 0, 0),
        "{diff:?}"
    );
    assert_eq!(diff.examples.len(), 1);
    assert!(
        diff.examples[0].starts_with("DIFF-B: live") && diff.examples[0].contains("on_hand: 107"),
        "{}",
        diff.examples[0]
    );
    // Nothing swapped: the live row is as it was, the rebuilt one beside it.
    let live: i64 = sqlx::query_scalar(live_b)
        .fetch_one(&platform.pool)
        .await
        .unwrap();
    assert_eq!(live, 107);
    let rebuilt: i64 =
        sqlx::query_scalar("SELECT on_hand FROM product_stock_rebuild WHERE sku = 'DIFF-B'")
            .fetch_one(&platform.pool)
            .await
            .unwrap();
    assert_eq!(rebuilt, 7);

    // --swap applies it.
    let report = rebuild_as::<ProductStock>(&platform.pool, &hidden, Mode::Swap)
        .await
        .unwrap();
    assert!(report.diff.is_none());
    let live: i64 = sqlx::query_scalar(live_b)
        .fetch_one(&platform.pool)
        .await
        .unwrap();
    assert_eq!(live, 7);
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_that_lost_its_lock_swaps_nothing() {
    let platform = TestPlatform::start().await;
    one_order_projected(&platform).await;
    let pool = platform.pool.clone();
    let before = live::<ProductStock>(&pool).await;
    // The connection that holds the rebuild's lock dies before the swap
    // (a terminated backend, an idle timeout): another rebuild may now run
    // and share the fresh table, so this one must not swap it in.
    let before_swap = async {
        let killed: bool = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_locks
              WHERE locktype = 'advisory' AND granted AND objsubid = 1
                AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                AND classid::bigint = (hashtextextended('rebuild:products', 0) >> 32) & 4294967295
                AND objid::bigint = hashtextextended('rebuild:products', 0) & 4294967295",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert!(killed, "the rebuild's lock holder was found");
    };
    let lost = rebuild_pausing::<ProductStock>(
        &pool,
        &ProgressBar::hidden(),
        Pauses {
            while_writing: async {},
            before_swap,
        },
    )
    .await;
    assert!(lost.is_err(), "{lost:?}");
    assert_eq!(live::<ProductStock>(&pool).await, before);
    // The lock went with its connection: the next rebuild runs.
    rebuild::<ProductStock>(&pool, &ProgressBar::hidden())
        .await
        .unwrap();
    assert_equal_to_a_fresh_fold::<ProductStock>(&pool).await;
    platform.stop().await;
}
