//! Turning stored events into Kafka records and waiting for the broker to
//! acknowledge them.

use std::time::Duration;

use event_store::{Envelope, RecordedEvent, Topics};
use futures::future::join_all;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sha2::{Digest, Sha256};

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

/// Sends every event of the batch and waits until each is acknowledged. Order
/// per aggregate is kept: records with one key go to one partition in the
/// order they are enqueued, and the idempotent producer never reorders them.
pub async fn publish(
    producer: &FutureProducer,
    topics: &Topics,
    events: &[RecordedEvent],
) -> Result<(), PublishError> {
    let mut deliveries = Vec::with_capacity(events.len());
    for event in events {
        let Some(topic) = topics.for_aggregate(&event.aggregate_type) else {
            continue;
        };
        let envelope = Envelope::from(event);
        let value = serde_json::to_vec(&envelope).map_err(|error| PublishError::Encoding {
            event_id: event.event_id,
            error,
        })?;
        let event_id = event.event_id.to_string();
        let traceparent = traceparent(event);
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "event_id",
                value: Some(&event_id),
            })
            .insert(Header {
                key: "event_type",
                value: Some(&event.event_type),
            })
            .insert(Header {
                key: "traceparent",
                value: Some(&traceparent),
            });
        let mut record = FutureRecord::to(&topic)
            .key(&event.aggregate_id)
            .payload(&value)
            .headers(headers);
        // The local queue may be full; wait for some deliveries, then retry.
        let delivery = loop {
            match producer.send_result(record) {
                Ok(delivery) => break delivery,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((error, _)) => {
                    return Err(PublishError::NotAcknowledged {
                        event_id: event.event_id,
                        error,
                    });
                }
            }
        };
        deliveries.push((event.event_id, delivery));
    }
    let (ids, futures): (Vec<_>, Vec<_>) = deliveries.into_iter().unzip();
    for (event_id, outcome) in ids.into_iter().zip(join_all(futures).await) {
        match outcome {
            Ok(Ok(_)) => {}
            Ok(Err((error, _))) => return Err(PublishError::NotAcknowledged { event_id, error }),
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

/// A W3C `traceparent` for the event: the trace is the request that caused it
/// (its correlation id), the parent span the event itself.
pub fn traceparent(event: &RecordedEvent) -> String {
    let correlation = event
        .metadata
        .get("correlation_id")
        .and_then(|value| value.as_str())
        .unwrap_or_default();
    let trace_id = match uuid::Uuid::parse_str(correlation) {
        Ok(id) if !id.is_nil() => id.simple().to_string(),
        _ => {
            let digest = Sha256::digest(correlation.as_bytes());
            digest[..16].iter().map(|b| format!("{b:02x}")).collect()
        }
    };
    let span = &event.event_id.as_bytes()[8..];
    let mut span_id: String = span.iter().map(|b| format!("{b:02x}")).collect();
    if span_id.bytes().all(|b| b == b'0') {
        // An all-zero span id is invalid.
        span_id = "0000000000000001".into();
    }
    format!("00-{trace_id}-{span_id}-01")
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use serde_json::json;

    use super::*;

    fn event(correlation: &str) -> RecordedEvent {
        RecordedEvent {
            event_id: uuid::Uuid::parse_str("0190a0b0-1111-7222-8333-444455556666").unwrap(),
            aggregate_type: "Order".into(),
            aggregate_id: "o".into(),
            sequence: 1,
            event_type: "OrderPlaced".into(),
            event_version: "1.0".into(),
            payload: json!({}),
            metadata: json!({"correlation_id": correlation}),
            global_position: 1,
            transaction_id: 1,
            recorded_at: Utc::now(),
        }
    }

    #[test]
    fn traceparents_carry_the_request_as_trace_and_the_event_as_span() {
        let header = traceparent(&event("0190a0b0-aaaa-7bbb-8ccc-dddddddddddd"));
        assert_eq!(
            header,
            "00-0190a0b0aaaa7bbb8cccdddddddddddd-8333444455556666-01"
        );
    }

    #[test]
    fn request_ids_that_are_not_uuids_still_give_a_valid_trace_id() {
        let header = traceparent(&event("req-42"));
        let parts: Vec<&str> = header.split('-').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!(parts[1].len(), 32);
        assert!(parts[1].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(traceparent(&event("req-42")), header, "deterministic");
    }
}
