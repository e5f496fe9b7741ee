//! The trace context a message carries: a W3C `traceparent` whose trace is
//! the request that caused the event (its correlation id) and whose parent
//! span is the event itself.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

/// The header that carries the trace context.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// The metadata entry naming the request that caused an event, as the
/// command bus writes it.
pub use event_store::dispatch::metadata::CORRELATION_ID;

/// The request that caused the event, from its stored metadata.
pub fn correlation_id(metadata: &RawValue) -> Option<String> {
    #[derive(Deserialize)]
    struct Metadata<'a> {
        #[serde(borrow)]
        correlation_id: Option<Cow<'a, str>>,
    }
    serde_json::from_str::<Metadata<'_>>(metadata.get())
        .ok()
        .and_then(|m| m.correlation_id)
        .map(Cow::into_owned)
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
        let header = traceparent(
            &correlation_id(&metadata).unwrap(),
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
    fn an_event_id_ending_in_zeros_still_gives_a_valid_span_id() {
        let id = uuid::Uuid::parse_str("0190a0b0-1111-7222-0000-000000000000").unwrap();
        assert!(traceparent("r", id).ends_with("-0000000000000001-01"));
    }
}
