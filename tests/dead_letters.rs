//! Dead letters, as an operator handles them (`orders dlq`, through
//! `operations::dead_letters`), on the real path: a consumer refuses a
//! message, it shows among the open dead letters, its cause is fixed and it
//! is replayed into the live projection, or it is discarded with a reason;
//! every action is recorded.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::time::Duration;

use operations::dead_letters::{DeadLetter, DeadLetters, Filter};
use platform_tests::TestPlatform;
use platform_tests::product_envelope as envelope;
use serde_json::json;

const WITHIN: Duration = Duration::from_secs(30);

/// Waits until the open dead letters `filter` lets through are `count`.
async fn open_letters(letters: &DeadLetters, filter: &Filter, count: usize) -> Vec<DeadLetter> {
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let found = letters.list(filter).await.unwrap();
        if found.len() == count {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} open dead letters, not {count}: {found:#?}",
            found.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn on_hand(platform: &TestPlatform, sku: &str, expected: i64) {
    platform
        .eventually(
            "query($sku: String!) { product(sku: $sku) { onHand } }",
            json!({"sku": sku}),
            WITHIN,
            |data| (data["product"]["onHand"] == expected).then_some(()),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_message_is_listed_then_replayed_once_its_cause_is_fixed_or_discarded_with_a_reason()
 {
    let platform = TestPlatform::start().await;
    let topics = event_contract::Topics::with_prefix(&platform.topics.prefix);
    let products = topics.for_aggregate("Product").unwrap();
    let letters = DeadLetters::new(
        &platform::testing::kafka_brokers(),
        topics.clone(),
        platform.pool.clone(),
    );

    // Stock for a product, published before the store the projection reads
    // shows it (a replica behind its primary): the projection refuses what
    // the store does not hold.
    platform.create_product("GHOST", 100, 0).await;
    on_hand(&platform, "GHOST", 0).await;
    let stock = envelope("GHOST", 2, "StockAdded", json!({"quantity": 7}));
    platform::testing::produce_poison(&products, "GHOST", &[&stock])
        .await
        .unwrap();
    let ghost = Filter {
        aggregate: Some("GHOST".into()),
        ..Filter::default()
    };
    let found = open_letters(&letters, &ghost, 1).await;
    let letter = &found[0];
    assert_eq!(letter.consumer(), "products");
    assert_eq!(letter.source_topic(), Some(products.as_str()));
    assert!(letter.error().contains("holds no such event"), "{letter:?}");
    assert_eq!(
        letters.find(&letter.id).await.unwrap().as_ref(),
        Some(letter)
    );
    // Filters by topic and reason find it too; others do not.
    for (filter, count) in [
        (
            Filter {
                topic: Some(products.clone()),
                ..ghost.clone()
            },
            1,
        ),
        (
            Filter {
                reason: Some("HOLDS NO SUCH EVENT".into()),
                ..ghost.clone()
            },
            1,
        ),
        (
            Filter {
                reason: Some("cannot decode".into()),
                ..ghost.clone()
            },
            0,
        ),
        (
            Filter {
                topic: Some(topics.for_aggregate("Order").unwrap()),
                ..ghost.clone()
            },
            0,
        ),
    ] {
        assert_eq!(
            letters.list(&filter).await.unwrap().len(),
            count,
            "{filter:?}"
        );
    }

    // The store shows the event now; the dead letter, replayed, applies.
    platform_tests::store_envelope(&platform.pool, &stock).await;
    on_hand(&platform, "GHOST", 0).await;
    letters.replay(letter, "alice").await.unwrap();
    on_hand(&platform, "GHOST", 7).await;
    assert!(
        letters.list(&ghost).await.unwrap().is_empty(),
        "no longer open"
    );
    let handled = letters
        .list(&Filter {
            include_handled: true,
            ..ghost.clone()
        })
        .await
        .unwrap();
    assert_eq!(handled.len(), 1);
    assert_eq!(handled[0].state(), Some("replayed"));
    assert_eq!(handled[0].actions[0].actor, "alice");

    // Garbage is discarded, with a reason, which is required.
    platform::testing::produce_poison(&products, "JUNK", &["not json"])
        .await
        .unwrap();
    let junk = Filter {
        aggregate: Some("JUNK".into()),
        ..Filter::default()
    };
    let found = open_letters(&letters, &junk, 1).await;
    assert!(letters.discard(&found[0], "  ", "bob").await.is_err());
    letters
        .discard(&found[0], "a test wrote garbage", "bob")
        .await
        .unwrap();
    assert!(letters.list(&junk).await.unwrap().is_empty());
    let recorded: Vec<(String, Option<String>, String)> =
        sqlx::query_as("SELECT action, reason, actor FROM dead_letter_actions ORDER BY id")
            .fetch_all(&platform.pool)
            .await
            .unwrap();
    assert_eq!(
        recorded,
        [
            ("replayed".to_owned(), None, "alice".to_owned()),
            (
                "discarded".to_owned(),
                Some("a test wrote garbage".to_owned()),
                "bob".to_owned()
            ),
        ]
    );
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_the_brokers_do_not_take_fails_in_bounded_time_and_records_nothing() {
    let platform = TestPlatform::start().await;
    let topics = event_contract::Topics::with_prefix(&platform.topics.prefix);
    let products = topics.for_aggregate("Product").unwrap();
    platform::testing::produce_poison(&products, "JUNK", &["not json"])
        .await
        .unwrap();
    let letters = DeadLetters::new(
        &platform::testing::kafka_brokers(),
        topics.clone(),
        platform.pool.clone(),
    );
    let junk = Filter {
        aggregate: Some("JUNK".into()),
        ..Filter::default()
    };
    let letter = open_letters(&letters, &junk, 1).await.remove(0);

    // The brokers are gone when the replay is sent: it fails within the
    // broker timeout (not librdkafka's five minutes, while a transaction and
    // a connection stay open), and no replay is recorded.
    let unreachable = DeadLetters::new("127.0.0.1:1", topics, platform.pool.clone());
    let replaying = tokio::spawn(async move {
        tokio::time::timeout(
            Duration::from_secs(40),
            unreachable.replay(&letter, "alice"),
        )
        .await
    });
    // While the broker keeps it waiting, the replay holds no transaction
    // that has written: such a one would hold back the relay's reader.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writing: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
          WHERE datname = current_database() AND backend_xid IS NOT NULL
            AND state LIKE 'idle in transaction%'",
    )
    .fetch_one(&platform.pool)
    .await
    .unwrap();
    assert_eq!(
        writing, 0,
        "a transaction that has written waits on the broker"
    );
    let replayed = replaying.await.unwrap();
    assert!(
        matches!(replayed, Ok(Err(_))),
        "the replay fails in time: {replayed:?}"
    );
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letter_actions")
        .fetch_one(&platform.pool)
        .await
        .unwrap();
    assert_eq!(recorded, 0);
    assert_eq!(letters.list(&junk).await.unwrap().len(), 1, "still open");
    platform.stop().await;
}
