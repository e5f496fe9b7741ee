//! Consumers join their groups as static members, and one the group fences
//! (another member took its id) builds its consumer again instead of
//! stopping for good.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::sync::Arc;
use std::time::{Duration, Instant};

use platform::kafka::{GroupMember, Membership, group_consumer_config};
use platform::testing::{TestTopics, kafka_brokers};
use platform_tests::TestPlatform;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use saga_orchestrator::driver::Policy;
use serde_json::json;

const WITHIN: Duration = Duration::from_secs(60);

/// Joins `group` under the static id `instance` (the one a platform process
/// on this host holds), which fences the member that held it, and leaves
/// once the group has handed it that member's partitions.
async fn take_over(group: String, topic: String, instance: String) {
    tokio::task::spawn_blocking(move || {
        let rogue: BaseConsumer = group_consumer_config(&kafka_brokers(), "rogue", &group)
            .set("group.instance.id", &instance)
            .create()
            .unwrap();
        rogue.subscribe(&[&topic]).unwrap();
        let deadline = Instant::now() + WITHIN;
        while rogue.assignment().unwrap().count() == 0 {
            assert!(
                Instant::now() < deadline,
                "{instance} never got the partitions of {group}"
            );
            let _ = rogue.poll(Duration::from_millis(100));
        }
    })
    .await
    .unwrap();
}

/// Waits until `group` has committed to Kafka every message `topic` holds:
/// a member the group has fenced commits nothing more.
async fn everything_committed(group: String, topic: String) {
    tokio::task::spawn_blocking(move || {
        // Reads the group's offsets without joining it.
        let reader: BaseConsumer = group_consumer_config(&kafka_brokers(), "offsets", &group)
            .create()
            .unwrap();
        let timeout = Duration::from_secs(5);
        let metadata = reader.fetch_metadata(Some(&topic), timeout).unwrap();
        let partitions = metadata.topics()[0].partitions().len() as i32;
        let deadline = Instant::now() + WITHIN;
        loop {
            let mut wanted = TopicPartitionList::new();
            for partition in 0..partitions {
                wanted.add_partition(&topic, partition);
            }
            let committed = reader.committed_offsets(wanted, timeout).unwrap();
            let behind: Vec<(i32, Offset, i64)> = (0..partitions)
                .filter_map(|partition| {
                    let (_, high) = reader.fetch_watermarks(&topic, partition, timeout).unwrap();
                    let at = committed
                        .find_partition(&topic, partition)
                        .unwrap()
                        .offset();
                    let done = high == 0 || at == Offset::Offset(high);
                    (!done).then_some((partition, at, high))
                })
                .collect();
            if behind.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{group} never committed {topic} to its end: {behind:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_projection_worker_and_saga_build_their_consumers_again_and_go_on() {
    let (platform, _gateway) = TestPlatform::start_with_saga(Policy::default()).await;
    let prefix = platform.topics.prefix.clone();
    // Each group has one member on this host: slot 0 of the host's name.
    let instance = format!("{}-0", platform::kafka::host_name());
    platform.create_product("FENCE-1", 500, 10).await;
    let product = "query($sku: String!) { product(sku: $sku) { onHand } }";
    platform
        .eventually(product, json!({"sku": "FENCE-1"}), WITHIN, |data| {
            (data["product"]["onHand"] == 10).then_some(())
        })
        .await;

    let products = (
        format!("{prefix}orders-platform.projection.products"),
        format!("{prefix}products.events"),
    );
    let sagas = (
        format!("{prefix}orders-platform.saga"),
        format!("{prefix}orders.events"),
    );
    take_over(products.0.clone(), products.1.clone(), instance.clone()).await;
    take_over(sagas.0.clone(), sagas.1.clone(), instance).await;

    // The fenced members come back: the stock added now reaches the products
    // model, and an order placed now is driven to the end by the saga.
    platform
        .command("/api/products/FENCE-1/stock", &json!({"quantity": 5}), 202)
        .await;
    platform
        .eventually(product, json!({"sku": "FENCE-1"}), WITHIN, |data| {
            (data["product"]["onHand"] == 15).then_some(())
        })
        .await;
    let placed = platform
        .command(
            "/api/orders",
            &json!({
                "customer_id": "customer-1",
                "lines": [{"sku": "FENCE-1", "quantity": 2}],
                "payment_method": "tok_visa",
            }),
            202,
        )
        .await;
    let order = "query($id: ID!) { order(id: $id) { status } }";
    platform
        .eventually(order, json!({"id": placed["order_id"]}), WITHIN, |data| {
            (data["order"]["status"] == "CONFIRMED").then_some(())
        })
        .await;
    // And both are members again: their offsets reach Kafka.
    everything_committed(products.0, products.1).await;
    everything_committed(sagas.0, sagas.1).await;
    platform.stop().await;
}

/// A member stopped at any moment of its join closes, and soon: while the
/// group's answer is on its way, just after its partitions were handed
/// over, or while its topic, created a moment before (as every process
/// creates its topics at start), appears in the brokers' metadata and turns
/// the group over again. A close that met a rebalance event still queued
/// for the application used to hang for good, and with it the shutdown of
/// the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_stopped_at_any_moment_of_its_join_closes_at_once() {
    let topics = TestTopics::new();
    let membership = Membership {
        instance: Some("closing".into()),
        session_timeout: Duration::from_secs(10),
    };
    let mut slowest = Duration::ZERO;
    for round in 0..30u64 {
        let topic = format!("{}closing-{round}.events", topics.prefix);
        platform::kafka::create_topics(&kafka_brokers(), std::slice::from_ref(&topic), 4, 1)
            .await
            .unwrap();
        // Three groups, so most rounds join a group another member just left.
        let group = format!("{}closing-{}", topics.prefix, round % 3);
        let member = GroupMember::new(&kafka_brokers(), "closing", &group, &topic, &membership);
        let consumer = Arc::new(member.consumer().unwrap());
        // Served for a while, as a worker serves it, then stopped.
        let serving = Duration::from_millis(round * 37 % 1500);
        if round % 2 == 0 {
            let _ = tokio::time::timeout(serving, consumer.recv()).await;
        } else {
            // Or not served at all meanwhile (its task waited for a thread).
            tokio::time::sleep(serving).await;
        }
        let started = Instant::now();
        assert!(
            platform::kafka::close(consumer).await,
            "round {round}: the consumer did not close (stopped after {serving:?})"
        );
        slowest = slowest.max(started.elapsed());
    }
    eprintln!("slowest close: {slowest:?}");
}
