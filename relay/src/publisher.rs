//! Turning stored events into Kafka records and waiting for the broker to
//! acknowledge them.

use std::time::Duration;

use std::borrow::Cow;

use event_store::{RecordedEvent, Topics};
use futures::future::join_all;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
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

/// An event as the relay reads it: its JSON as checked text, passed on as is.
pub type RawEvent = RecordedEvent<Box<RawValue>>;

/// The envelope as it goes on the wire: the same JSON as [`Envelope`], built
/// from the stored text without parsing the payload into a tree.
#[derive(Serialize)]
struct WireEnvelope<'a> {
    event_id: uuid::Uuid,
    aggregate_type: &'a str,
    aggregate_id: &'a str,
    sequence: i64,
    global_position: i64,
    event_type: &'a str,
    event_version: &'a str,
    recorded_at: chrono::DateTime<chrono::Utc>,
    payload: &'a RawValue,
    metadata: &'a RawValue,
}

/// The event's own fields inside the stored `{"<event_type>": {...}}`; the
/// whole payload if it is not wrapped that way.
fn fields<'a>(payload: &'a RawValue, event_type: &str) -> &'a RawValue {
    match serde_json::from_str::<Wrapped<'a>>(payload.get()) {
        Ok(Wrapped(Some((key, inner)))) if key == event_type => inner,
        _ => payload,
    }
}

/// A JSON object of exactly one entry, borrowed from the text.
struct Wrapped<'a>(Option<(Cow<'a, str>, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Wrapped<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OneEntry;
        impl<'de> serde::de::Visitor<'de> for OneEntry {
            type Value = Wrapped<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object of one entry")
            }

            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<Self::Value, M::Error> {
                let Some(entry) = map.next_entry::<Cow<'de, str>, &'de RawValue>()? else {
                    return Ok(Wrapped(None));
                };
                let more = map.next_key::<serde::de::IgnoredAny>()?.is_some();
                Ok(Wrapped((!more).then_some(entry)))
            }
        }
        deserializer.deserialize_map(OneEntry)
    }
}

/// The request that caused the event, from its metadata.
fn correlation_id(metadata: &RawValue) -> String {
    #[derive(Deserialize)]
    struct Metadata<'a> {
        #[serde(borrow)]
        correlation_id: Option<Cow<'a, str>>,
    }
    serde_json::from_str::<Metadata<'_>>(metadata.get())
        .ok()
        .and_then(|m| m.correlation_id)
        .map(|id| id.into_owned())
        .unwrap_or_default()
}

/// The JSON value of the envelope.
pub fn encode(event: &RawEvent) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&WireEnvelope {
        event_id: event.event_id,
        aggregate_type: &event.aggregate_type,
        aggregate_id: &event.aggregate_id,
        sequence: event.sequence,
        global_position: event.global_position,
        event_type: &event.event_type,
        event_version: &event.event_version,
        recorded_at: event.recorded_at,
        payload: fields(&event.payload, &event.event_type),
        metadata: &event.metadata,
    })
}

/// Records handed to the producer, not yet known to be acknowledged.
pub struct InFlight {
    deliveries: Vec<(uuid::Uuid, DeliveryFuture)>,
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
pub async fn enqueue(
    producer: &FutureProducer,
    topics: &Topics,
    events: &[RawEvent],
) -> Result<InFlight, PublishError> {
    let mut deliveries = Vec::with_capacity(events.len());
    for event in events {
        let Some(topic) = topics.topic_of(&event.aggregate_type) else {
            continue;
        };
        let value = encode(event).map_err(|error| PublishError::Encoding {
            event_id: event.event_id,
            error,
        })?;
        let event_id = event.event_id.to_string();
        let traceparent = traceparent(&correlation_id(&event.metadata), event.event_id);
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
        let mut record = FutureRecord::to(topic)
            .key(&event.aggregate_id)
            .payload(&value)
            .headers(headers);
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
        deliveries.push((event.event_id, delivery));
    }
    Ok(InFlight { deliveries })
}

impl InFlight {
    /// Waits for the broker; fails with the first record it did not take.
    pub async fn acknowledged(self) -> Result<(), PublishError> {
        let (ids, futures): (Vec<_>, Vec<_>) = self.deliveries.into_iter().unzip();
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

/// A W3C `traceparent` for an event: the trace is the request that caused it
/// (its correlation id), the parent span the event itself.
pub fn traceparent(correlation_id: &str, event_id: uuid::Uuid) -> String {
    let mut header = String::with_capacity(55);
    header.push_str("00-");
    match uuid::Uuid::parse_str(correlation_id) {
        Ok(id) if !id.is_nil() => hex(&mut header, id.as_bytes()),
        _ => hex(
            &mut header,
            &Sha256::digest(correlation_id.as_bytes())[..16],
        ),
    }
    header.push('-');
    let span = &event_id.as_bytes()[8..];
    if span.iter().all(|b| *b == 0) {
        // An all-zero span id is invalid.
        header.push_str("0000000000000001");
    } else {
        hex(&mut header, span);
    }
    header.push_str("-01");
    header
}

fn hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use event_store::Envelope;
    use serde_json::json;

    use super::*;

    const EVENT_ID: &str = "0190a0b0-1111-7222-8333-444455556666";

    fn event<J>(payload: J, metadata: J) -> RecordedEvent<J> {
        let recorded_at = chrono::DateTime::parse_from_rfc3339("2026-11-25T12:00:00.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        RecordedEvent {
            event_id: uuid::Uuid::parse_str(EVENT_ID).unwrap(),
            aggregate_type: "Order".into(),
            aggregate_id: "o-1".into(),
            sequence: 3,
            event_type: "OrderCancelled".into(),
            event_version: "1.0".into(),
            payload,
            metadata,
            global_position: 42,
            transaction_id: 7,
            recorded_at,
        }
    }

    fn raw(value: &serde_json::Value) -> Box<RawValue> {
        RawValue::from_string(value.to_string()).unwrap()
    }

    #[test]
    fn the_wire_envelope_is_the_contract_envelope() {
        let payload = json!({"OrderCancelled": {"reason": "late", "previous_status": "PLACED"}});
        let metadata = json!({"correlation_id": "r-1", "causation_id": "r-1"});
        let parsed = event(payload.clone(), metadata.clone());
        let raw_event = event(raw(&payload), raw(&metadata));

        let on_the_wire: Envelope = serde_json::from_slice(&encode(&raw_event).unwrap()).unwrap();

        assert_eq!(on_the_wire, Envelope::from(&parsed));
        assert_eq!(
            on_the_wire.payload,
            json!({"reason": "late", "previous_status": "PLACED"})
        );
    }

    #[test]
    fn only_a_single_entry_named_after_the_event_is_unwrapped() {
        let cases = [
            (json!({"OrderConfirmed": {"a": 1}}), json!({"a": 1})),
            (json!({"Other": {"a": 1}}), json!({"Other": {"a": 1}})),
            (
                json!({"OrderConfirmed": {}, "extra": 1}),
                json!({"OrderConfirmed": {}, "extra": 1}),
            ),
            (json!({}), json!({})),
            (json!([1, 2]), json!([1, 2])),
        ];
        for (stored, published) in cases {
            let raw_payload = raw(&stored);
            let inner: serde_json::Value =
                serde_json::from_str(fields(&raw_payload, "OrderConfirmed").get()).unwrap();
            assert_eq!(inner, published, "{stored}");
        }
    }

    #[test]
    fn traceparents_carry_the_request_as_trace_and_the_event_as_span() {
        let metadata = raw(&json!({"correlation_id": "0190a0b0-aaaa-7bbb-8ccc-dddddddddddd"}));
        let header = traceparent(
            &correlation_id(&metadata),
            uuid::Uuid::parse_str(EVENT_ID).unwrap(),
        );
        assert_eq!(
            header,
            "00-0190a0b0aaaa7bbb8cccdddddddddddd-8333444455556666-01"
        );
    }

    #[test]
    fn request_ids_that_are_not_uuids_still_give_a_valid_trace_id() {
        let id = uuid::Uuid::parse_str(EVENT_ID).unwrap();
        let header = traceparent("req-42", id);
        let parts: Vec<&str> = header.split('-').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!(parts[1].len(), 32);
        assert!(parts[1].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(traceparent("req-42", id), header, "deterministic");
    }
}
