//! Turning stored events into Kafka records and waiting for the broker to
//! acknowledge them.

use std::time::Duration;

use event_contract::{RawEvent, Topics, encode};
use futures::future::join_all;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

/// Why a batch was not acknowledged as a whole.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The broker refused or did not acknowledge a record in time. Nothing
    /// after the last acknowledged checkpoint counts as published; retry.
    #[error("Kafka did not acknowledge event {event_id}: {error}")]
    NotAcknowledged {
        event_id: uuid::Uuid,
        error: KafkaError,
    },
    /// An event could not be encoded; this is a bug, not a broker problem.
    #[error("event {event_id} cannot be encoded: {error}")]
    Encoding {
        event_id: uuid::Uuid,
        error: serde_json::Error,
    },
}

/// The producer settings that make publishing safe: an idempotent producer
/// (which implies `acks=all` and keeps per-partition order through retries).
pub fn producer(brokers: &str, linger: Duration) -> anyhow::Result<FutureProducer> {
    let mut config: ClientConfig = platform::kafka::client_config(brokers, "orders-relay");
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", linger.as_millis().to_string())
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "200000")
        .set("message.timeout.ms", "30000");
    Ok(config.create()?)
}

/// Records handed to the producer, not yet known to be acknowledged, each
/// with its publish span (open until the broker answers).
pub struct InFlight {
    deliveries: Vec<(uuid::Uuid, DeliveryFuture, tracing::Span)>,
    /// The batch's span, linked to the trace of each event in it.
    batch: tracing::Span,
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight")
            .field("records", &self.deliveries.len())
            .finish()
    }
}

/// Hands every event of the batch to the producer, in order, without waiting
/// for the broker. Records with one key go to one partition in the order they
/// are handed over, and the idempotent producer never reorders them.
///
/// An event written in a trace (its metadata holds the append's context) is
/// published in a span of that trace, which its message's `traceparent`
/// names; the batch's own span links those traces.
pub async fn enqueue(
    producer: &FutureProducer,
    topics: &Topics,
    events: &[RawEvent],
) -> Result<InFlight, PublishError> {
    let batch = tracing::info_span!(parent: None, "publish batch", events = events.len());
    let mut deliveries = Vec::with_capacity(events.len());
    let mut parents = Vec::with_capacity(events.len());
    for event in events {
        let Some(topic) = topics.topic_of(&event.aggregate_type) else {
            continue;
        };
        let value = encode(event).map_err(|error| PublishError::Encoding {
            event_id: event.event_id,
            error,
        })?;
        let parent = event_contract::trace::stored(&event.metadata);
        let span = publish_span(event, topic, parent.as_deref());
        // The publish span's context; without one (no exporter layer), the
        // append's as read above, so that the metadata is not read again.
        let traceparent = platform::trace::traceparent(&span).or_else(|| parent.clone());
        parents.extend(parent);
        let mut record = FutureRecord::to(topic)
            .key(&event.aggregate_id)
            .payload(&value)
            .headers(event_contract::headers(event, traceparent.as_deref()));
        // The local queue may be full; give the broker a moment, then retry.
        let delivery = loop {
            match producer.send_result(record) {
                Ok(delivery) => break delivery,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err((error, _)) => {
                    return Err(PublishError::NotAcknowledged {
                        event_id: event.event_id,
                        error,
                    });
                }
            }
        };
        deliveries.push((event.event_id, delivery, span));
    }
    platform::trace::link_all(&batch, parents.iter().map(String::as_str));
    Ok(InFlight { deliveries, batch })
}

/// The span an event is published in: a child of the append that wrote it,
/// or none when it was written outside a trace.
fn publish_span(event: &RawEvent, topic: &str, parent: Option<&str>) -> tracing::Span {
    let Some(parent) = parent else {
        return tracing::Span::none();
    };
    let span = tracing::info_span!(
        parent: None,
        "publish",
        otel.name = format!("publish {}", event.event_type),
        otel.kind = "producer",
        event_type = %event.event_type,
        aggregate_id = %event.aggregate_id,
        global_position = event.global_position,
        messaging.destination.name = topic,
    );
    platform::trace::follow(&span, Some(parent));
    span
}

impl InFlight {
    /// Waits for the broker; fails with the first record it did not take.
    pub async fn acknowledged(self) -> Result<(), PublishError> {
        let _batch = self.batch;
        let mut ids = Vec::with_capacity(self.deliveries.len());
        let mut futures = Vec::with_capacity(self.deliveries.len());
        let mut spans = Vec::with_capacity(self.deliveries.len());
        for (event_id, delivery, span) in self.deliveries {
            ids.push(event_id);
            futures.push(delivery);
            spans.push(span);
        }
        for (event_id, outcome) in ids.into_iter().zip(join_all(futures).await) {
            match outcome {
                Ok(Ok(_)) => {}
                Ok(Err((error, _))) => {
                    return Err(PublishError::NotAcknowledged { event_id, error });
                }
                Err(_canceled) => {
                    return Err(PublishError::NotAcknowledged {
                        event_id,
                        error: KafkaError::Canceled,
                    });
                }
            }
        }
        Ok(())
    }
}

/// Sends a batch and waits until every event is acknowledged.
pub async fn publish(
    producer: &FutureProducer,
    topics: &Topics,
    events: &[RawEvent],
) -> Result<(), PublishError> {
    enqueue(producer, topics, events)
        .await?
        .acknowledged()
        .await
}
