//! Plumbing shared by the platform's processes and their tests: telemetry,
//! metrics, shutdown signals, Kafka client settings and probes, and throwaway
//! test databases.
//!
//! Nothing here knows about orders or events; business code does not belong in
//! this crate.

pub mod batch;
pub mod clock;
pub mod kafka;
pub mod postgres;
pub mod readiness;
pub mod shutdown;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod trace;
