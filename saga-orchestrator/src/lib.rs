//! The order saga: drives each placed order through stock reservation and
//! payment, and undoes finished steps when a later one fails or times out.
//!
//! Empty for now: the saga is a later slice of work. It will send commands
//! through the event store's dispatch, never over HTTP, and it must not read
//! the projections' tables.
