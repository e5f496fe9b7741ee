//! Readiness: what a process needs to take work, checked at most once a
//! second however often probes ask.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::PgPool;

use crate::kafka::KafkaProbe;

/// How long a readiness check waits for each dependency.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a readiness answer is reused: probes arrive as often as callers
/// send them, checks run at most once this often.
const READINESS_TTL: Duration = Duration::from_secs(1);

/// What a process needs to be ready, checked at most once a second however
/// many ask (one check at a time; the others wait for it and share it).
///
/// The API takes commands whenever its database answers: Kafka carries
/// events to the read side later, so a broker outage is reported but does
/// not take the API out of a load balancer. A process of the relay, the
/// projections or the saga needs Kafka too.
#[derive(Clone)]
pub struct Readiness(Arc<ReadinessInner>);

struct ReadinessInner {
    pool: Option<PgPool>,
    kafka: Option<KafkaProbe>,
    kafka_required: bool,
    last: tokio::sync::Mutex<Option<(Instant, bool, serde_json::Value)>>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("kafka_required", &self.0.kafka_required)
            .finish_non_exhaustive()
    }
}

impl Readiness {
    /// Checks `pool` (when given) and `kafka` (when given; it fails the
    /// check only when `kafka_required`).
    pub fn new(pool: Option<PgPool>, kafka: Option<KafkaProbe>, kafka_required: bool) -> Self {
        Self(Arc::new(ReadinessInner {
            pool,
            kafka,
            kafka_required,
            last: tokio::sync::Mutex::new(None),
        }))
    }

    /// Whether the process is ready, and each check's word.
    pub async fn check(&self) -> (bool, serde_json::Value) {
        let mut last = self.0.last.lock().await;
        if let Some((at, ready, checks)) = last.as_ref()
            && at.elapsed() < READINESS_TTL
        {
            return (*ready, checks.clone());
        }
        let (ready, checks) = self.probe().await;
        *last = Some((Instant::now(), ready, checks.clone()));
        (ready, checks)
    }

    async fn probe(&self) -> (bool, serde_json::Value) {
        let mut checks = serde_json::Map::new();
        let mut ready = true;
        if let Some(pool) = &self.0.pool {
            let probed =
                tokio::time::timeout(PROBE_TIMEOUT, sqlx::query("SELECT 1").execute(pool)).await;
            let word = match probed {
                Ok(Ok(_)) => "ok".to_owned(),
                Ok(Err(error)) => {
                    // The driver's text is for the log: it can name hosts and users.
                    tracing::warn!(%error, "readiness: the database is unreachable");
                    "unavailable".to_owned()
                }
                Err(_) => "no answer within 2 s".to_owned(),
            };
            ready &= word == "ok";
            checks.insert("database".into(), json!(word));
        }
        if let Some(probe) = &self.0.kafka {
            let word = match probe.check(PROBE_TIMEOUT).await {
                Ok(()) => "ok",
                Err(error) => {
                    tracing::warn!(%error, "readiness: Kafka is unreachable");
                    if self.0.kafka_required {
                        ready = false;
                        "unavailable"
                    } else {
                        "unavailable (commands are still taken)"
                    }
                }
            };
            checks.insert("kafka".into(), json!(word));
        }
        (ready, serde_json::Value::Object(checks))
    }
}
