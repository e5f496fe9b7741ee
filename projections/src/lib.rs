//! Read models for the GraphQL query API, kept up to date from the event
//! topics in Kafka, and the replay that rebuilds them from the event store.
//!
//! Empty for now: the read side is the next slice of work. It must not write
//! to the event store, and its read models must never be a source of truth:
//! everything here can be dropped and rebuilt from the events.
