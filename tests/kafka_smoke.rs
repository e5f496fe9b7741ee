//! The local broker works with rdkafka: one message produced, the same message
//! consumed.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::time::Duration;

use platform::kafka::client_config;
use platform::testing::kafka_brokers;
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};

#[tokio::test]
async fn a_message_produced_to_the_local_broker_is_consumed_back() {
    let brokers = kafka_brokers();
    let run = uuid::Uuid::new_v4().simple().to_string();
    let topic = format!("smoke-{run}");

    let producer: FutureProducer = client_config(&brokers, "smoke-producer")
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    let delivered = producer
        .send(
            FutureRecord::to(&topic).key("key-1").payload("hello"),
            Duration::from_secs(30),
        )
        .await;
    assert!(delivered.is_ok(), "delivery failed: {delivered:?}");

    let consumer: StreamConsumer = client_config(&brokers, "smoke-consumer")
        .set("group.id", format!("smoke-{run}"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[&topic]).unwrap();
    let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .expect("a message within 30 s")
        .expect("no consumer error");

    assert_eq!(message.key(), Some(&b"key-1"[..]));
    assert_eq!(message.payload(), Some(&b"hello"[..]));
    assert_eq!(message.topic(), topic);
    drop(message);
    platform::kafka::close(consumer).await;

    // Leave nothing behind on the shared broker.
    let admin: AdminClient<DefaultClientContext> =
        client_config(&brokers, "smoke-admin").create().unwrap();
    let deleted = admin
        .delete_topics(&[&topic], &AdminOptions::new())
        .await
        .unwrap();
    assert!(deleted.iter().all(Result::is_ok), "{deleted:?}");
}
