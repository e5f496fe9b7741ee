//! The published form of a stored event: the envelope that goes to Kafka, and
//! the topic each aggregate type's events go to.
//!
//! The envelope is the contract between the relay and every consumer. Its
//! `payload` holds the event's own fields (what `schemas/events/<type>.json`
//! describes), not the wrapper object the store keeps them in.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::RecordedEvent;

/// One event as published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Envelope {
    /// Unique per event; consumers deduplicate on it or on
    /// (aggregate_id, sequence).
    pub event_id: Uuid,
    /// `Order`, `Product` or `Payment`.
    pub aggregate_type: String,
    /// The Kafka key: every event of one aggregate lands in one partition, in order.
    pub aggregate_id: String,
    /// The aggregate's version after this event, from 1.
    pub sequence: i64,
    /// Position in the store's global order (ascending, with gaps).
    pub global_position: i64,
    /// The event's name, such as `OrderPlaced`.
    pub event_type: String,
    pub event_version: String,
    pub recorded_at: DateTime<Utc>,
    /// The event's fields, as described by its schema in `schemas/events/`.
    pub payload: Value,
    /// `correlation_id`, `causation_id`, and `idempotency_key` when the
    /// command had one.
    pub metadata: Value,
}

impl From<&RecordedEvent> for Envelope {
    fn from(event: &RecordedEvent) -> Self {
        Self {
            event_id: event.event_id,
            aggregate_type: event.aggregate_type.clone(),
            aggregate_id: event.aggregate_id.clone(),
            sequence: event.sequence,
            global_position: event.global_position,
            event_type: event.event_type.clone(),
            event_version: event.event_version.clone(),
            recorded_at: event.recorded_at,
            payload: event.fields().clone(),
            metadata: event.metadata.clone(),
        }
    }
}

impl Envelope {
    /// Decodes the payload into an aggregate's event type.
    pub fn decode<E: serde::de::DeserializeOwned>(&self) -> Result<E, serde_json::Error> {
        decode_fields(&self.event_type, &self.payload)
    }
}

/// Decodes an event's own fields, as published, into an aggregate's event
/// enum (externally tagged by the event type), without copying them into the
/// stored wrapper object first.
pub fn decode_fields<E: serde::de::DeserializeOwned>(
    event_type: &str,
    fields: &Value,
) -> Result<E, serde_json::Error> {
    use serde::de::value::{MapAccessDeserializer, MapDeserializer};
    let entry = std::iter::once((event_type, fields));
    E::deserialize(MapAccessDeserializer::new(MapDeserializer::new(entry)))
}

/// The topic of each aggregate type, under an optional prefix (tests use one
/// per run to keep apart on a shared broker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// (aggregate type, topic), with the prefix applied.
    names: Vec<(&'static str, String)>,
}

impl Default for Topics {
    fn default() -> Self {
        Self::with_prefix("")
    }
}

/// Aggregate types and their topics, as the contract names them.
const TOPICS: &[(&str, &str)] = &[
    ("Order", "orders.events"),
    ("Product", "products.events"),
    ("Payment", "payments.events"),
];

impl Topics {
    pub fn with_prefix(prefix: impl AsRef<str>) -> Self {
        Self {
            names: TOPICS
                .iter()
                .map(|(aggregate, topic)| (*aggregate, format!("{}{topic}", prefix.as_ref())))
                .collect(),
        }
    }

    /// The topic for an aggregate type; `None` for types that are not published.
    pub fn for_aggregate(&self, aggregate_type: &str) -> Option<String> {
        self.topic_of(aggregate_type).map(str::to_owned)
    }

    /// Like [`for_aggregate`](Self::for_aggregate), without allocating.
    pub fn topic_of(&self, aggregate_type: &str) -> Option<&str> {
        self.names
            .iter()
            .find(|(aggregate, _)| *aggregate == aggregate_type)
            .map(|(_, topic)| topic.as_str())
    }

    /// Every event topic.
    pub fn all(&self) -> Vec<String> {
        self.names.iter().map(|(_, topic)| topic.clone()).collect()
    }

    /// Where messages of `topic` that cannot be processed go.
    pub fn dead_letter(topic: &str) -> String {
        format!("{topic}.dlq")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_follow_the_contract_and_take_a_prefix() {
        let plain = Topics::default();
        assert_eq!(
            plain.for_aggregate("Order").as_deref(),
            Some("orders.events")
        );
        assert_eq!(
            plain.for_aggregate("Product").as_deref(),
            Some("products.events")
        );
        assert_eq!(
            plain.for_aggregate("Payment").as_deref(),
            Some("payments.events")
        );
        assert_eq!(plain.for_aggregate("Test"), None);
        let prefixed = Topics::with_prefix("t1.");
        assert_eq!(
            prefixed.for_aggregate("Order").as_deref(),
            Some("t1.orders.events")
        );
        assert_eq!(
            Topics::dead_letter("t1.orders.events"),
            "t1.orders.events.dlq"
        );
    }

    #[test]
    fn the_stored_payload_round_trips_into_domain_events() {
        let envelope = Envelope {
            event_id: Uuid::nil(),
            aggregate_type: "Product".into(),
            aggregate_id: "MUG".into(),
            sequence: 2,
            global_position: 9,
            event_type: "StockAdded".into(),
            event_version: "1.0".into(),
            recorded_at: Utc::now(),
            payload: serde_json::json!({"quantity": 3}),
            metadata: serde_json::json!({}),
        };
        let event: domain::ProductEvent = envelope.decode().unwrap();
        assert_eq!(
            event,
            domain::ProductEvent::StockAdded(domain::product::StockAdded { quantity: 3 })
        );
    }
}
