//! The tools users already have, pointed at the platform: a GraphQL client
//! reading the schema by the standard introspection query, the AsyncAPI
//! parser reading `schemas/asyncapi.yaml`, and another team's Kafka consumer
//! reading the events with a CloudEvents SDK. Each tool comes from a package
//! registry (installed by `scripts/test`, see `tests/tools/`), not from this
//! project.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use event_contract::{Envelope, Topics};
use platform::testing::kafka_brokers;
use platform_tests::TestPlatform;
use platform_tests::tools::{node, python};
use rdkafka::Message;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};

const WITHIN: Duration = Duration::from_secs(30);

fn checked_in(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../schemas")
            .join(name),
    )
    .unwrap()
}

#[tokio::test]
async fn a_graphql_client_builds_the_schema_from_the_standard_introspection_query() {
    let platform = TestPlatform::start().await;
    let generated: Value =
        serde_json::from_slice(&node("introspection.cjs", &["query"], b"")).unwrap();
    let query = generated["query"].as_str().unwrap();

    // Anyone may read the schema: no token.
    let anonymous = reqwest::Client::new();
    let answer: Value = anonymous
        .post(platform.url("/graphql"))
        .json(&json!({"query": query, "operationName": "IntrospectionQuery"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(answer.get("errors").is_none(), "{answer:#}");

    let input = json!({"answer": answer, "sdl": checked_in("schema.graphql")});
    let built: Value = serde_json::from_slice(&node(
        "introspection.cjs",
        &["schema"],
        input.to_string().as_bytes(),
    ))
    .unwrap();
    let types: Vec<&str> = built["types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    for wanted in [
        "Query",
        "Subscription",
        "Order",
        "OrderStatus",
        "Product",
        "AsOf",
    ] {
        assert!(types.contains(&wanted), "{wanted} missing from {types:?}");
    }
    // What the client built is what schemas/schema.graphql says.
    assert_eq!(
        built["differences"],
        json!([]),
        "graphql-js {}",
        generated["version"]
    );

    // The same query in a batch with data queries is answered too, and a
    // data query that nests as deep as introspection may is still refused.
    let batch: Value = anonymous
        .post(platform.url("/graphql"))
        .json(&json!([{"query": query}, {"query": "{ products(first: 1) { edges { cursor } } }"}]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(batch[0].get("errors").is_none(), "{batch:#}");
    assert!(batch[1].get("errors").is_none(), "{batch:#}");
    let nested = format!(
        "{{ {}cursor{} }}",
        "products { edges { node { ".repeat(4),
        " } } }".repeat(4)
    );
    let refused = platform.graphql(&nested, json!({})).await;
    let message = refused["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("deep"), "{refused:#}");
    platform.stop().await;
}

#[test]
fn the_asyncapi_parser_reads_every_topic_and_event_from_the_document() {
    let summary: Value = serde_json::from_slice(&node(
        "asyncapi.cjs",
        &[],
        checked_in("asyncapi.yaml").as_bytes(),
    ))
    .unwrap();
    assert_eq!(summary["version"], "3.0.0");
    let channels: BTreeMap<String, BTreeSet<String>> = summary["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|channel| {
            let messages = channel["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m.as_str().unwrap().to_owned())
                .collect();
            (channel["address"].as_str().unwrap().to_owned(), messages)
        })
        .collect();
    let topics = Topics::default();
    let mut expected: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for event in domain::event_types() {
        let topic = topics.for_aggregate(event.aggregate_type).unwrap();
        expected
            .entry(Topics::dead_letter(&topic))
            .or_default()
            .insert("DeadLetter".into());
        expected
            .entry(topic)
            .or_default()
            .insert(event.event_type.into());
    }
    assert_eq!(channels, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_teams_consumer_reads_the_events_and_dead_letters_as_cloud_events() {
    let platform = TestPlatform::start().await;
    platform.create_product("MUG-01", 1250, 5).await;
    let topics = Topics::with_prefix(&platform.topics.prefix);
    let products = topics.for_aggregate("Product").unwrap();
    let published = platform::testing::consume(std::slice::from_ref(&products), 2, WITHIN)
        .await
        .unwrap();

    let read = read_cloud_events(&products, 2).await;
    assert_eq!(read.len(), 2, "{read:#?}");
    for (event, message) in read.iter().zip(&published) {
        let envelope: Envelope = serde_json::from_slice(message.payload().unwrap()).unwrap();
        let attributes = &event["attributes"];
        assert_eq!(attributes["specversion"], "1.0");
        assert_eq!(attributes["id"], envelope.event_id.to_string());
        assert_eq!(attributes["source"], "/orders-platform/Product");
        assert_eq!(
            attributes["type"],
            format!("orders.{}.v1", envelope.event_type)
        );
        assert_eq!(attributes["subject"], "MUG-01");
        assert_eq!(attributes["datacontenttype"], "application/json");
        assert_eq!(attributes["partitionkey"], "MUG-01");
        let time =
            chrono::DateTime::parse_from_rfc3339(attributes["time"].as_str().unwrap()).unwrap();
        assert_eq!(time, envelope.recorded_at);
        // The data is the envelope, as every consumer of the platform reads it.
        let data: Envelope = serde_json::from_value(event["data"].clone()).unwrap();
        assert_eq!(data, envelope);
    }

    // A message that the read side refuses (its sequence runs ahead of the
    // product's) goes to the dead-letter topic with the headers it came with.
    let stock_added = published
        .iter()
        .find(|message| {
            let envelope: Envelope = serde_json::from_slice(message.payload().unwrap()).unwrap();
            envelope.event_type == "StockAdded"
        })
        .unwrap();
    let mut ahead: Value = serde_json::from_slice(stock_added.payload().unwrap()).unwrap();
    ahead["sequence"] = json!(9);
    let mut headers = OwnedHeaders::new();
    for header in stock_added.headers().unwrap().iter() {
        headers = headers.insert(Header {
            key: header.key,
            value: header.value,
        });
    }
    let producer: FutureProducer =
        platform::kafka::client_config(&kafka_brokers(), "test-cloudevents")
            .create()
            .unwrap();
    producer
        .send(
            FutureRecord::to(&products)
                .key("MUG-01")
                .payload(&ahead.to_string())
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let dead = read_cloud_events(&Topics::dead_letter(&products), 1).await;
    let original = read
        .iter()
        .find(|event| event["attributes"]["type"] == "orders.StockAdded.v1")
        .unwrap();
    assert_eq!(dead[0]["attributes"], original["attributes"], "{dead:#?}");
    assert_eq!(dead[0]["data"]["sequence"], 9);
    platform.stop().await;
}

/// The first `count` messages of `topic`, read by `tests/tools/cloudevents_consumer.py`
/// (Confluent's Kafka client and the CloudEvents SDK, from PyPI).
async fn read_cloud_events(topic: &str, count: usize) -> Vec<Value> {
    let args = [
        "--brokers".to_owned(),
        kafka_brokers(),
        "--topic".to_owned(),
        topic.to_owned(),
        "--count".to_owned(),
        count.to_string(),
        "--timeout".to_owned(),
        WITHIN.as_secs().to_string(),
    ];
    let output = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        python("cloudevents_consumer.py", &args, b"")
    })
    .await
    .unwrap();
    String::from_utf8(output)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}
