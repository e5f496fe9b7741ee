//! The order saga: drives each placed order through stock reservation and
//! payment, and undoes finished steps when a later one fails or times out.
//!
//! - [`saga`] and [`store`]: the saga itself and its table, `order-saga`'s
//!   (re-exported here);
//! - [`driver`]: carries out its actions, through the event store's dispatch
//!   (never over HTTP) and the payment [`gateway`] (over HTTP only);
//! - [`orchestrator`]: the Kafka consumer group and the scan that resumes
//!   sagas after failures and crashes;
//! - [`sweep`]: starts the sagas of placements whose message never came.
//!
//! It does not read the projections' tables.

pub mod driver;
pub mod gateway;
pub mod orchestrator;
pub mod sweep;

pub use order_saga::{migrate, migrator, saga, store};
