//! The orchestrator: a Kafka consumer group on the orders topic that starts a
//! saga for each placed order and hands each cancel to its saga, plus a scan
//! that resumes every saga with something due (retries after a backoff, and
//! sagas a crash left in the middle).
//!
//! An event is stored in the `sagas` table before its offset is committed, so
//! a crash loses none; a redelivered event changes nothing.

use std::collections::HashSet;
use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use domain::OrderEvent;
use event_store::{Envelope, Topics};
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use sqlx::PgPool;

use crate::driver::{Driver, Policy};
use crate::gateway::PaymentGateway;
use crate::saga::OrderSaga;
use crate::store;

/// How the orchestrator runs.
#[derive(Debug, Clone)]
pub struct OrchestratorConfig {
    pub brokers: String,
    pub topics: Topics,
    /// Put before the consumer group's name; tests use one per run.
    pub group_prefix: String,
    pub partitions: i32,
    pub replication: i32,
    pub policy: Policy,
    /// How often to look for sagas with something due.
    pub scan_interval: Duration,
    /// Sagas this process drives at once; more wait their turn, so that a
    /// burst of orders does not queue hundreds of commands on the pool.
    pub concurrency: usize,
}

impl Default for OrchestratorConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            topics: Topics::default(),
            group_prefix: String::new(),
            partitions: 3,
            replication: 1,
            policy: Policy::default(),
            scan_interval: Duration::from_millis(500),
            concurrency: 32,
        }
    }
}

/// Runs the orchestrator until `shutdown` completes.
pub async fn run<G: PaymentGateway + Clone>(
    pool: PgPool,
    config: OrchestratorConfig,
    gateway: G,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let topic = config
        .topics
        .for_aggregate("Order")
        .context("orders have no topic")?;
    let mut shutdown = pin!(shutdown);
    // The broker may not be up yet; the orchestrator waits for it.
    let topic_list = std::slice::from_ref(&topic);
    let (partitions, replication) = (config.partitions, config.replication);
    if !platform::kafka::create_topics_when_up(
        &config.brokers,
        topic_list,
        partitions,
        replication,
        shutdown.as_mut(),
    )
    .await
    {
        return Ok(());
    }
    let group = format!("{}orders-platform.saga", config.group_prefix);
    let consumer: StreamConsumer =
        platform::kafka::group_consumer_config(&config.brokers, "orders-saga", &group).create()?;
    consumer.subscribe(&[&topic])?;
    let sagas = Sagas {
        driver: Arc::new(Driver::new(pool.clone(), gateway, config.policy.clone())),
        running: Arc::default(),
        permits: Arc::new(tokio::sync::Semaphore::new(config.concurrency.max(1))),
    };
    let mut scan = tokio::time::interval(config.scan_interval);
    let mut census = tokio::time::interval(Duration::from_secs(5));
    tracing::info!(%topic, "saga orchestrator started");
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            message = consumer.recv() => {
                let message = match message {
                    Ok(message) => message,
                    Err(error) => {
                        tracing::debug!(%error, "consumer error");
                        continue;
                    }
                };
                let envelope = message
                    .payload()
                    .map(serde_json::from_slice::<Envelope>);
                match envelope {
                    Some(Ok(envelope)) => take_in(&pool, &sagas, &envelope, &mut shutdown).await,
                    other => tracing::warn!(offset = message.offset(), error = ?other.map(|r| r.err()), "skipping a message that is not an envelope"),
                }
                consumer.commit_message(&message, CommitMode::Async)?;
            }
            _ = scan.tick() => {
                match store::due(&pool, 200).await {
                    Ok(due) => due.into_iter().for_each(|order_id| sagas.drive(order_id)),
                    Err(error) => tracing::warn!(%error, "cannot look for due sagas"),
                }
            }
            _ = census.tick() => census_metrics(&pool).await,
        }
    }
    Ok(())
}

/// The sagas this process drives, each by at most one task at a time.
#[derive(Clone)]
struct Sagas<G> {
    driver: Arc<Driver<G>>,
    running: Arc<Mutex<HashSet<String>>>,
    permits: Arc<tokio::sync::Semaphore>,
}

impl<G: PaymentGateway + Clone> Sagas<G> {
    fn drive(&self, order_id: String) {
        let fresh = self
            .running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(order_id.clone());
        if !fresh {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let permit = this.permits.acquire().await;
            if let Err(error) = this.driver.drive(&order_id).await {
                tracing::warn!(%order_id, error = %format!("{error:#}"), "saga interrupted; the scan resumes it");
            }
            this.running
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .remove(&order_id);
            drop(permit);
        });
    }
}

/// Stores what an order event means for its saga (retrying until the
/// database takes it), then sets the saga going.
async fn take_in<G: PaymentGateway + Clone>(
    pool: &PgPool,
    sagas: &Sagas<G>,
    envelope: &Envelope,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) {
    let event = match envelope.decode::<OrderEvent>() {
        Ok(event) => event,
        Err(error) => {
            tracing::warn!(event_id = %envelope.event_id, %error, "skipping an order event that does not decode");
            return;
        }
    };
    let mut delay = Duration::from_millis(100);
    loop {
        let stored = match &event {
            OrderEvent::OrderPlaced(placed) => {
                let correlation = envelope
                    .metadata
                    .get(event_store::dispatch::metadata::CORRELATION_ID)
                    .and_then(|value| value.as_str())
                    .unwrap_or_default();
                let saga = OrderSaga::start(placed, correlation, envelope.recorded_at);
                store::insert(pool, &saga).await.map(|_| true)
            }
            OrderEvent::OrderCancelled(cancelled) => {
                store::request_cancel(pool, &envelope.aggregate_id, cancelled.reason.as_str()).await
            }
            OrderEvent::OrderConfirmed(_) => return,
        };
        match stored {
            Ok(true) => {
                sagas.drive(envelope.aggregate_id.clone());
                return;
            }
            Ok(false) => return,
            Err(error) => {
                tracing::warn!(%error, "cannot store an order event for its saga; retrying");
                tokio::select! {
                    () = shutdown.as_mut() => return,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Sagas by state and those needing attention, as gauges.
async fn census_metrics(pool: &PgPool) {
    match store::counts(pool).await {
        Ok((by_state, attention)) => {
            for (state, count) in by_state {
                metrics::gauge!("sagas", "state" => state).set(count as f64);
            }
            metrics::gauge!("sagas_needing_attention").set(attention as f64);
        }
        Err(error) => tracing::debug!(%error, "cannot count sagas"),
    }
}
