//! The published event, the contract between the relay and every consumer.
//!
//! The event store keeps an event's payload wrapped in an object named after
//! its type (`{"OrderPlaced": {...}}`, as serde writes the aggregate's event
//! enum). What goes to Kafka is an [`Envelope`] whose `payload` holds the
//! event's own fields (what `schemas/events/<type>.json` describes), keyed by
//! the aggregate id, on the aggregate type's topic ([`Topics`]), with headers
//! that name the event and carry its trace context ([`trace`]), and that make
//! every message a CloudEvent in Kafka's binary mode ([`cloud_event`]). A message that
//! a consumer cannot process goes on to the topic's dead-letter topic
//! ([`dead_letter`]) with why.
//!
//! This crate is the only place that knows those shapes: the relay encodes
//! with [`encode`] and [`headers`], consumers decode with [`decode`] and
//! [`Envelope::decode`], and readers of the store that show events (GraphQL's
//! history) unwrap them with [`stored_fields`].

pub mod asyncapi;
pub mod dead_letter;
mod envelope;
mod topics;
pub mod trace;

pub use envelope::{
    Envelope, RawEvent, cloud_event, cloud_events, decode, decode_fields, decode_stored, encode,
    headers, stored_fields,
};
pub use topics::Topics;

/// The header naming the event (its `event_id`, a UUID).
pub const EVENT_ID_HEADER: &str = "event_id";
/// The header naming the event's type, such as `OrderPlaced`.
pub const EVENT_TYPE_HEADER: &str = "event_type";
