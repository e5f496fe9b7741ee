//! The envelope, and the one way each between it and the stored form.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use event_store::RecordedEvent;
use rdkafka::message::{Header, OwnedHeaders};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::{EVENT_ID_HEADER, EVENT_TYPE_HEADER, trace};

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
    /// `correlation_id`, `causation_id`, `idempotency_key` when the
    /// command had one, and `traceparent` (the W3C trace context of the
    /// append that wrote the event) when it was traced.
    pub metadata: Value,
}

impl Envelope {
    /// Whether this message is news of `event` as the store holds it: the
    /// same aggregate, sequence and type (consumers look a message's event
    /// up by its id and act on the stored one only when this holds).
    pub fn names<J>(&self, event: &RecordedEvent<J>) -> bool {
        event.aggregate_type == self.aggregate_type
            && event.aggregate_id == self.aggregate_id
            && event.sequence == self.sequence
            && event.event_type == self.event_type
    }

    /// The envelope a stored event is published as.
    pub fn of(event: &RawEvent) -> Result<Self, serde_json::Error> {
        decode(&encode(event)?)
    }

    /// Decodes the payload into an aggregate's event type.
    pub fn decode<E: serde::de::DeserializeOwned>(&self) -> Result<E, serde_json::Error> {
        decode_fields(&self.event_type, &self.payload)
    }

    /// The request that caused the event (`metadata.correlation_id`), if any.
    pub fn correlation_id(&self) -> Option<&str> {
        self.metadata
            .get(trace::CORRELATION_ID)
            .and_then(Value::as_str)
    }
}

/// A stored event with its JSON as the text the store checked, which the
/// relay passes on without parsing it into a tree.
pub type RawEvent = RecordedEvent<Box<RawValue>>;

/// The envelope as it goes on the wire: the same JSON as [`Envelope`], built
/// from the stored text without parsing the payload into a tree.
#[derive(Serialize)]
struct WireEnvelope<'a> {
    event_id: Uuid,
    aggregate_type: &'a str,
    aggregate_id: &'a str,
    sequence: i64,
    global_position: i64,
    event_type: &'a str,
    event_version: &'a str,
    recorded_at: DateTime<Utc>,
    payload: &'a RawValue,
    metadata: &'a RawValue,
}

/// The message value of a stored event: its [`Envelope`] as JSON.
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
        payload: stored_fields(&event.payload, &event.event_type),
        metadata: &event.metadata,
    })
}

/// The envelope in a message value.
pub fn decode(value: &[u8]) -> Result<Envelope, serde_json::Error> {
    serde_json::from_slice(value)
}

/// The headers of a stored event's message: its id, its type and its trace
/// context (`traceparent`): `publish`, the context of the span publishing
/// it, when there is one, else the one the event carries (see
/// [`trace::of_stored`]); and its CloudEvents attributes ([`cloud_event`]),
/// so that the message is a CloudEvent in Kafka's binary mode.
pub fn headers(event: &RawEvent, publish: Option<&str>) -> OwnedHeaders {
    let event_id = event.event_id.to_string();
    let traceparent = match publish {
        Some(publish) => publish.to_owned(),
        None => trace::of_stored(&event.metadata, event.event_id),
    };
    let headers = OwnedHeaders::new_with_capacity(10)
        .insert(Header {
            key: EVENT_ID_HEADER,
            value: Some(&event_id),
        })
        .insert(Header {
            key: EVENT_TYPE_HEADER,
            value: Some(&event.event_type),
        })
        .insert(Header {
            key: trace::TRACEPARENT_HEADER,
            value: Some(&traceparent),
        });
    cloud_event(event)
        .iter()
        .fold(headers, |headers, (key, value)| {
            headers.insert(Header {
                key,
                value: Some(value),
            })
        })
}

/// The CloudEvents 1.0 attributes of a stored event as Kafka headers (the
/// binary content mode of the CloudEvents Kafka binding): `ce_specversion`,
/// `ce_id` (the event id), `ce_source` (`/orders-platform/<aggregate
/// type>`), `ce_type` (`orders.<event type>.v<major event version>`),
/// `ce_time` (when it was recorded), `ce_subject` (the aggregate id) and
/// `content-type` (of the value, which is the [`Envelope`]).
pub fn cloud_event(event: &RawEvent) -> [(&'static str, String); 7] {
    let major = event
        .event_version
        .split('.')
        .next()
        .unwrap_or(&event.event_version);
    [
        (
            cloud_events::SPECVERSION,
            cloud_events::SPEC_VERSION.to_owned(),
        ),
        (cloud_events::ID, event.event_id.to_string()),
        (
            cloud_events::SOURCE,
            format!("{}/{}", cloud_events::SOURCE_PREFIX, event.aggregate_type),
        ),
        (
            cloud_events::TYPE,
            format!(
                "{}.{}.v{major}",
                cloud_events::TYPE_PREFIX,
                event.event_type
            ),
        ),
        (
            cloud_events::TIME,
            event
                .recorded_at
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        ),
        (cloud_events::SUBJECT, event.aggregate_id.clone()),
        (cloud_events::CONTENT_TYPE, cloud_events::JSON.to_owned()),
    ]
}

/// The names and fixed values of the CloudEvents headers.
pub mod cloud_events {
    pub const SPECVERSION: &str = "ce_specversion";
    pub const ID: &str = "ce_id";
    pub const SOURCE: &str = "ce_source";
    pub const TYPE: &str = "ce_type";
    pub const TIME: &str = "ce_time";
    pub const SUBJECT: &str = "ce_subject";
    pub const CONTENT_TYPE: &str = "content-type";
    /// The CloudEvents version the headers follow.
    pub const SPEC_VERSION: &str = "1.0";
    /// `ce_source` is this, a slash and the aggregate type.
    pub const SOURCE_PREFIX: &str = "/orders-platform";
    /// `ce_type` is this, a dot, the event type, `.v` and its major version.
    pub const TYPE_PREFIX: &str = "orders";
    /// The value's media type.
    pub const JSON: &str = "application/json";
}

/// The event's own fields inside a stored payload `{"<event_type>": {...}}`;
/// the whole payload if it is not wrapped that way.
pub fn stored_fields<'a>(payload: &'a RawValue, event_type: &str) -> &'a RawValue {
    match serde_json::from_str::<Wrapped<'a>>(payload.get()) {
        Ok(Wrapped(Some((key, inner)))) if key == event_type => inner,
        _ => payload,
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

/// Decodes a stored payload, as the store keeps it, into an aggregate's
/// event enum: the wrapper object is how serde writes that enum.
pub fn decode_stored<E: serde::de::DeserializeOwned>(
    payload: &str,
) -> Result<E, serde_json::Error> {
    serde_json::from_str(payload)
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

#[cfg(test)]
mod tests {
    use rdkafka::message::Headers;
    use serde_json::json;

    use super::*;

    const EVENT_ID: &str = "0190a0b0-1111-7222-8333-444455556666";

    fn raw(value: &Value) -> Box<RawValue> {
        RawValue::from_string(value.to_string()).unwrap()
    }

    fn stored(event_type: &str, payload: &Value, metadata: &Value) -> RawEvent {
        RecordedEvent {
            event_id: Uuid::parse_str(EVENT_ID).unwrap(),
            aggregate_type: "Order".into(),
            aggregate_id: "o-1".into(),
            sequence: 3,
            event_type: event_type.into(),
            event_version: "1.0".into(),
            payload: raw(payload),
            metadata: raw(metadata),
            global_position: 42,
            transaction_id: 7,
            recorded_at: DateTime::parse_from_rfc3339("2026-11-25T12:00:00.123456Z")
                .unwrap()
                .with_timezone(&Utc),
        }
    }

    #[test]
    fn a_stored_event_is_published_with_its_own_fields_and_decodes_into_its_enum() {
        let event = stored(
            "OrderCancelled",
            &json!({"OrderCancelled": {"reason": "customer_request", "previous_status": "PLACED"}}),
            &json!({"correlation_id": "r-1", "causation_id": "r-1"}),
        );
        let envelope = decode(&encode(&event).unwrap()).unwrap();
        assert_eq!(
            envelope,
            Envelope {
                event_id: event.event_id,
                aggregate_type: "Order".into(),
                aggregate_id: "o-1".into(),
                sequence: 3,
                global_position: 42,
                event_type: "OrderCancelled".into(),
                event_version: "1.0".into(),
                recorded_at: event.recorded_at,
                payload: json!({"reason": "customer_request", "previous_status": "PLACED"}),
                metadata: json!({"correlation_id": "r-1", "causation_id": "r-1"}),
            }
        );
        assert_eq!(envelope.correlation_id(), Some("r-1"));
        let decoded: domain::OrderEvent = envelope.decode().unwrap();
        let from_store: domain::OrderEvent = decode_stored(event.payload.get()).unwrap();
        assert_eq!(decoded, from_store);
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
            let inner: Value =
                serde_json::from_str(stored_fields(&raw_payload, "OrderConfirmed").get()).unwrap();
            assert_eq!(inner, published, "{stored}");
        }
    }

    #[test]
    fn the_headers_name_the_event_and_carry_the_request_as_its_trace() {
        let event = stored(
            "OrderConfirmed",
            &json!({"OrderConfirmed": {}}),
            &json!({"correlation_id": "0190a0b0-aaaa-7bbb-8ccc-dddddddddddd"}),
        );
        let headers = headers(&event, None);
        assert_eq!(value(&headers, EVENT_ID_HEADER).as_deref(), Some(EVENT_ID));
        assert_eq!(
            value(&headers, EVENT_TYPE_HEADER).as_deref(),
            Some("OrderConfirmed")
        );
        assert_eq!(
            value(&headers, trace::TRACEPARENT_HEADER).as_deref(),
            Some("00-0190a0b0aaaa7bbb8cccdddddddddddd-8333444455556666-01")
        );
    }

    #[test]
    fn the_headers_make_the_message_a_cloud_event_in_binary_mode() {
        let event = stored(
            "OrderConfirmed",
            &json!({"OrderConfirmed": {}}),
            &json!({"correlation_id": "r-1"}),
        );
        let headers = headers(&event, None);
        let expected = [
            ("ce_specversion", "1.0"),
            ("ce_id", EVENT_ID),
            ("ce_source", "/orders-platform/Order"),
            ("ce_type", "orders.OrderConfirmed.v1"),
            ("ce_time", "2026-11-25T12:00:00.123456Z"),
            ("ce_subject", "o-1"),
            ("content-type", "application/json"),
        ];
        for (key, wanted) in expected {
            assert_eq!(value(&headers, key).as_deref(), Some(wanted), "{key}");
        }
        let named: Vec<&str> = headers.iter().map(|header| header.key).collect();
        let cloud_events: Vec<&str> = named
            .iter()
            .copied()
            .filter(|key| key.starts_with("ce_") || *key == "content-type")
            .collect();
        assert_eq!(cloud_events.len(), expected.len(), "{named:?}");
    }

    #[test]
    fn the_publishing_span_is_the_parent_a_consumer_sees() {
        let publish = "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01";
        let event = stored(
            "OrderConfirmed",
            &json!({"OrderConfirmed": {}}),
            &json!({
                "correlation_id": "r-1",
                "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            }),
        );
        let headers = headers(&event, Some(publish));
        assert_eq!(
            value(&headers, trace::TRACEPARENT_HEADER).as_deref(),
            Some(publish)
        );
    }

    fn value(headers: &OwnedHeaders, key: &str) -> Option<String> {
        headers
            .iter()
            .find(|header| header.key == key)
            .and_then(|header| header.value)
            .map(|value| std::str::from_utf8(value).unwrap().to_owned())
    }
}
