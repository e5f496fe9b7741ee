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
    deliveries: Vec<(Unpublished, DeliveryFuture, tracing::Span)>,
    /// Events that can never be published as they are, and why: they go
    /// to their topic's dead-letter topic instead.
    refused: Vec<(Unpublished, String)>,
    /// The batch's span, linked to the trace of each event in it.
    batch: tracing::Span,
    producer: FutureProducer,
}

/// What is said of an event in a dead letter when the event itself cannot be
/// published: where it is in the store, so that an operator (or a consumer,
/// which reads missed events from the store) finds it there.
#[derive(Debug, Clone, serde::Serialize)]
struct Unpublished {
    event_id: uuid::Uuid,
    aggregate_type: String,
    aggregate_id: String,
    sequence: i64,
    global_position: i64,
    event_type: String,
    #[serde(skip)]
    topic: String,
}

impl Unpublished {
    fn of(event: &RawEvent, topic: &str) -> Self {
        Self {
            event_id: event.event_id,
            aggregate_type: event.aggregate_type.clone(),
            aggregate_id: event.aggregate_id.clone(),
            sequence: event.sequence,
            global_position: event.global_position,
            event_type: event.event_type.clone(),
            topic: topic.to_owned(),
        }
    }
}

/// Whether the broker (or the client) refuses `error` for this record
/// whatever happens: the record is too large or malformed. Sending it again
/// would fail again, and every event after it would wait forever.
fn never_publishable(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::MessageBatchTooLarge
        )
    )
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
    let mut refused = Vec::new();
    let mut parents = Vec::with_capacity(events.len());
    for event in events {
        let Some(topic) = topics.topic_of(&event.aggregate_type) else {
            continue;
        };
        let value = match encode(event) {
            Ok(value) => value,
            Err(error) => {
                refused.push((
                    Unpublished::of(event, topic),
                    format!("cannot be encoded: {error}"),
                ));
                continue;
            }
        };
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
                Ok(delivery) => break Some(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err((error, _)) if never_publishable(&error) => {
                    refused.push((Unpublished::of(event, topic), error.to_string()));
                    break None;
                }
                Err((error, _)) => {
                    return Err(PublishError::NotAcknowledged {
                        event_id: event.event_id,
                        error,
                    });
                }
            }
        };
        if let Some(delivery) = delivery {
            deliveries.push((Unpublished::of(event, topic), delivery, span));
        }
    }
    platform::trace::link_all(&batch, parents.iter().map(String::as_str));
    Ok(InFlight {
        deliveries,
        refused,
        batch,
        producer: producer.clone(),
    })
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
    /// Waits for the broker; fails with the first record it did not take
    /// for now. Records it can never take (too large, malformed) are
    /// written to their topic's dead-letter topic instead, as a note of
    /// where the event is in the store, and count as published: one such
    /// event does not stop every event after it.
    pub async fn acknowledged(self) -> Result<(), PublishError> {
        let _batch = self.batch;
        let mut events = Vec::with_capacity(self.deliveries.len());
        let mut futures = Vec::with_capacity(self.deliveries.len());
        let mut spans = Vec::with_capacity(self.deliveries.len());
        for (event, delivery, span) in self.deliveries {
            events.push(event);
            futures.push(delivery);
            spans.push(span);
        }
        let mut refused = self.refused;
        for (event, outcome) in events.into_iter().zip(join_all(futures).await) {
            match outcome {
                Ok(Ok(_)) => {}
                Ok(Err((error, _))) if never_publishable(&error) => {
                    refused.push((event, error.to_string()));
                }
                Ok(Err((error, _))) => {
                    return Err(PublishError::NotAcknowledged {
                        event_id: event.event_id,
                        error,
                    });
                }
                Err(_canceled) => {
                    return Err(PublishError::NotAcknowledged {
                        event_id: event.event_id,
                        error: KafkaError::Canceled,
                    });
                }
            }
        }
        for (event, why) in refused {
            dead_letter(&self.producer, &event, &why).await?;
        }
        Ok(())
    }
}

/// Writes the note of an event that cannot be published to its topic's
/// dead-letter topic, keyed by the aggregate.
async fn dead_letter(
    producer: &FutureProducer,
    event: &Unpublished,
    why: &str,
) -> Result<(), PublishError> {
    tracing::error!(event_id = %event.event_id, aggregate_id = %event.aggregate_id, sequence = event.sequence, why, "an event cannot be published; its note goes to the dead-letter topic");
    metrics::counter!("relay_dead_letters_total").increment(1);
    let note = serde_json::to_vec(event).map_err(|error| PublishError::Encoding {
        event_id: event.event_id,
        error,
    })?;
    let topic = Topics::dead_letter(&event.topic);
    let event_id = event.event_id.to_string();
    let headers = rdkafka::message::OwnedHeaders::new()
        .insert(rdkafka::message::Header {
            key: event_contract::EVENT_ID_HEADER,
            value: Some(&event_id),
        })
        .insert(rdkafka::message::Header {
            key: event_contract::EVENT_TYPE_HEADER,
            value: Some(&event.event_type),
        })
        .insert(rdkafka::message::Header {
            key: event_contract::dead_letter::ERROR_HEADER,
            value: Some(why),
        })
        .insert(rdkafka::message::Header {
            key: event_contract::dead_letter::CONSUMER_HEADER,
            value: Some("relay"),
        })
        .insert(rdkafka::message::Header {
            key: event_contract::dead_letter::SOURCE_TOPIC_HEADER,
            value: Some(&event.topic),
        });
    let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&topic)
        .key(event.aggregate_id.as_str())
        .payload(note.as_slice())
        .headers(headers);
    producer
        .send(record, Duration::from_secs(30))
        .await
        .map(drop)
        .map_err(|(error, _)| PublishError::NotAcknowledged {
            event_id: event.event_id,
            error,
        })
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
