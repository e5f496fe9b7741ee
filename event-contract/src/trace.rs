//! The trace context a message carries: a W3C `traceparent` header.
//!
//! The relay publishes each event in a span of the trace that wrote it (the
//! append's context, kept in the event's metadata) and the header names that
//! span, so a consumer's span for the message is its child. An event written
//! without trace context (by SQL, or before traces were recorded) gets one
//! derived from it: the request that caused it (its correlation id) as the
//! trace, the event itself as the parent span.

use std::borrow::Cow;

use rdkafka::message::{Headers, Message};

use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

/// The header that carries the trace context.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// The metadata entries naming the request that caused an event and the
/// trace context of its append, as the command bus writes them.
pub use event_store::metadata::{CORRELATION_ID, TRACEPARENT};

#[derive(Deserialize)]
struct Metadata<'a> {
    #[serde(borrow)]
    correlation_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    traceparent: Option<Cow<'a, str>>,
}

fn read(metadata: &RawValue) -> Option<Metadata<'_>> {
    serde_json::from_str::<Metadata<'_>>(metadata.get()).ok()
}

/// The trace context of the append that wrote the event, from its stored
/// metadata, if it is a valid `traceparent`.
pub fn stored(metadata: &RawValue) -> Option<String> {
    read(metadata)
        .and_then(|m| m.traceparent)
        .filter(|header| platform::trace::parse(header).is_some())
        .map(Cow::into_owned)
}

/// The trace context of a stored event to publish it with: the append's
/// when it was recorded, else one derived from the event (see
/// [`traceparent`]).
pub fn of_stored(metadata: &RawValue, event_id: uuid::Uuid) -> String {
    match read(metadata) {
        Some(Metadata {
            traceparent: Some(header),
            ..
        }) if platform::trace::parse(&header).is_some() => header.into_owned(),
        found => traceparent(
            found
                .and_then(|m| m.correlation_id)
                .as_deref()
                .unwrap_or_default(),
            event_id,
        ),
    }
}

/// A span for `consumer` handling `message`, a child of the span that
/// published it; none when the message carries no trace context. Keep it
/// open while the message is handled.
pub fn consume_span<M: Message>(message: &M, consumer: &str) -> tracing::Span {
    let Some(parent) = of_message(message) else {
        return tracing::Span::none();
    };
    let event_type = message
        .headers()
        .and_then(|headers| {
            headers
                .iter()
                .find(|header| header.key == crate::EVENT_TYPE_HEADER)
        })
        .and_then(|header| header.value)
        .and_then(|value| std::str::from_utf8(value).ok())
        .unwrap_or("message");
    let span = tracing::info_span!(
        parent: None,
        "consume",
        otel.name = format!("{consumer} {event_type}"),
        otel.kind = "consumer",
        consumer,
        event_type,
        messaging.destination.name = message.topic(),
        messaging.kafka.partition = message.partition(),
        messaging.kafka.offset = message.offset(),
    );
    platform::trace::follow(&span, Some(parent));
    span
}

/// A span for `consumer` handling a batch of messages at once, linked to
/// the trace of each message (up to [`platform::trace::MAX_LINKS`] traces).
pub fn batch_span<M: Message>(messages: &[M], consumer: &str) -> tracing::Span {
    let span = tracing::info_span!(
        parent: None,
        "consume batch",
        otel.name = format!("{consumer} batch"),
        consumer,
        messages = messages.len(),
    );
    platform::trace::link_all(&span, messages.iter().filter_map(of_message));
    span
}

/// The `traceparent` header of a consumed message, if it has one.
pub fn of_message<M: Message>(message: &M) -> Option<&str> {
    message.headers().and_then(|headers| {
        headers
            .iter()
            .find(|header| header.key == TRACEPARENT_HEADER)
            .and_then(|header| header.value)
            .and_then(|value| std::str::from_utf8(value).ok())
    })
}

/// The `traceparent` of an event: the correlation id as the trace id (a UUID
/// as is, anything else hashed), the event id's last 8 bytes as the span id.
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
    use super::*;

    const EVENT_ID: &str = "0190a0b0-1111-7222-8333-444455556666";

    #[test]
    fn a_uuid_request_is_the_trace_and_the_event_the_span() {
        let metadata = RawValue::from_string(
            r#"{"correlation_id":"0190a0b0-aaaa-7bbb-8ccc-dddddddddddd"}"#.into(),
        )
        .unwrap();
        let header = of_stored(&metadata, uuid::Uuid::parse_str(EVENT_ID).unwrap());
        assert_eq!(
            header,
            "00-0190a0b0aaaa7bbb8cccdddddddddddd-8333444455556666-01"
        );
    }

    #[test]
    fn request_ids_that_are_not_uuids_still_give_a_valid_trace_id() {
        let id = uuid::Uuid::parse_str(EVENT_ID).unwrap();
        for request in ["req-42", "", "00000000-0000-0000-0000-000000000000"] {
            let header = traceparent(request, id);
            let parts: Vec<&str> = header.split('-').collect();
            assert_eq!(parts.len(), 4, "{header}");
            assert_eq!(parts[1].len(), 32);
            assert!(parts[1].bytes().all(|b| b.is_ascii_hexdigit()));
            assert_ne!(parts[1], "0".repeat(32), "an all-zero trace id is invalid");
            assert_eq!(traceparent(request, id), header, "deterministic");
        }
    }

    #[test]
    fn a_recorded_trace_context_is_published_as_is_and_a_bad_one_is_replaced() {
        let id = uuid::Uuid::parse_str(EVENT_ID).unwrap();
        let recorded = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let metadata = RawValue::from_string(format!(
            r#"{{"correlation_id":"r-1","traceparent":"{recorded}"}}"#
        ))
        .unwrap();
        assert_eq!(stored(&metadata).as_deref(), Some(recorded));
        assert_eq!(of_stored(&metadata, id), recorded);

        let forged =
            RawValue::from_string(r#"{"correlation_id":"r-1","traceparent":"00-zz"}"#.into())
                .unwrap();
        assert_eq!(stored(&forged), None);
        assert_eq!(of_stored(&forged, id), traceparent("r-1", id));
    }

    #[test]
    fn an_event_id_ending_in_zeros_still_gives_a_valid_span_id() {
        let id = uuid::Uuid::parse_str("0190a0b0-1111-7222-0000-000000000000").unwrap();
        assert!(traceparent("r", id).ends_with("-0000000000000001-01"));
    }
}
