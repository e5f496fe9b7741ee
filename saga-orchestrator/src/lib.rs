//! The order saga: drives each placed order through stock reservation and
//! payment, and undoes finished steps when a later one fails or times out.
//!
//! [`saga`] is the saga itself as a pure state machine. It sends commands
//! through the event store's dispatch, never over HTTP, and it does not read
//! the projections' tables.

pub mod saga;

#[cfg(test)]
mod tests;
