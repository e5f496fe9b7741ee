//! The orchestrator: a Kafka consumer group on the orders topic that starts a
//! saga for each placed order and hands each cancel to its saga, plus a scan
//! that resumes every saga with something due (retries after a backoff, and
//! sagas a crash left in the middle).
//!
//! An event is stored in the `sagas` table before its offset is committed, so
//! a crash or a shutdown loses none; a redelivered event changes nothing. A
//! message that is not an order event goes to `<topic>.dlq` (with the reason
//! in an `error` header) before its offset is committed.

use std::collections::HashSet;
use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;

use anyhow::Context;
use domain::OrderEvent;
use domain::order::OrderPlaced;
use event_contract::{Envelope, Topics};
use platform::kafka::{GroupMember, Membership};
use rdkafka::Message;
use rdkafka::consumer::Consumer;
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::FutureProducer;
use sqlx::PgPool;
use tracing::Instrument;

use crate::driver::{Driver, Policy};
use crate::gateway::PaymentGateway;
use crate::saga::{OrderSaga, SagaState};
use crate::store;

/// Order events taken in together at most.
const MAX_BATCH: usize = 256;

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
    /// Events between two snapshots of an aggregate (0: none); see
    /// `CommandBus::with_snapshots`.
    pub snapshot_every: u64,
    /// How the orchestrator joins its consumer group.
    pub membership: Membership,
    /// How often to look in the store for placements whose saga never
    /// started (see [`crate::sweep`]).
    pub sweep_interval: Duration,
    /// How old a placement must be before the sweep starts its saga: its
    /// message should have done so long before.
    pub sweep_grace: Duration,
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
            snapshot_every: command_bus::dispatch::DEFAULT_SNAPSHOT_EVERY,
            membership: Membership::default(),
            sweep_interval: Duration::from_secs(30),
            sweep_grace: Duration::from_secs(60),
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
    let topic_list = [topic.clone(), Topics::dead_letter(&topic)];
    let (partitions, replication) = (config.partitions, config.replication);
    if !platform::kafka::create_topics_when_up(
        &config.brokers,
        &topic_list,
        partitions,
        replication,
        shutdown.as_mut(),
    )
    .await
    {
        return Ok(());
    }
    let dead_letters = Topics::dead_letter(&topic);
    event_contract::dead_letter::register(&topic, "saga");
    let group = format!("{}orders-platform.saga", config.group_prefix);
    // Every order waits for its saga to take it in: no waiting for fuller
    // fetches.
    let mut member = GroupMember::new(
        &config.brokers,
        "orders-saga",
        &group,
        &topic,
        &config.membership,
    )
    .eager();
    let mut consumer = Arc::new(member.consumer()?);
    let mut lag = platform::kafka::LagGauge::new("saga", |_| {});
    let producer: FutureProducer =
        platform::kafka::client_config(&config.brokers, "orders-saga-dead-letters")
            .set("enable.idempotence", "true")
            .create()?;
    // Saga times are the database's: every process reads one clock.
    // Nothing is taken in before the clock is set: until then it would be
    // this node's own.
    let clock = platform::clock::DbClock::default();
    let Some(()) = until_done(
        "read the database's clock",
        || async { Ok(clock.sync(&pool).await?) },
        &mut shutdown,
    )
    .await
    else {
        return Ok(());
    };
    let synced = tokio::spawn(clock.clone().keep_synced(pool.clone()));
    let sweep_clock = clock.clone();
    let _synced = AbortOnDrop(synced);
    let sagas = Sagas {
        driver: Arc::new(
            Driver::new(pool.clone(), gateway, config.policy.clone())
                .with_snapshots(config.snapshot_every)
                .with_clock(clock),
        ),
        running: Arc::default(),
        permits: Arc::new(tokio::sync::Semaphore::new(config.concurrency.max(1))),
    };
    let mut scan = tokio::time::interval(config.scan_interval);
    let mut census = tokio::time::interval(Duration::from_secs(5));
    // The first sweep waits as long as a placement does: after a stop, the
    // messages that came meanwhile get that long to be taken in first.
    let mut sweep = tokio::time::interval_at(
        tokio::time::Instant::now() + config.sweep_grace,
        config.sweep_interval,
    );
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(%topic, "saga orchestrator started");
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            message = consumer.recv() => {
                let message = match message {
                    Ok(message) => message,
                    Err(error) => {
                        let Some(fatal) = GroupMember::fatal_error(&consumer) else {
                            tracing::debug!(%error, "consumer error");
                            continue;
                        };
                        let delay = member.replacement_delay(&fatal);
                        tokio::select! {
                            () = &mut shutdown => break,
                            () = tokio::time::sleep(delay) => {}
                        }
                        lag.finish().await;
                        platform::kafka::close(consumer).await;
                        consumer = Arc::new(member.consumer()?);
                        continue;
                    }
                };
                // Whatever else has arrived goes in the same batch: new
                // sagas are stored with one statement.
                let mut batch = vec![message];
                while batch.len() < MAX_BATCH {
                    match consumer.recv().now_or_never() {
                        Some(Ok(message)) => batch.push(message),
                        // An error is met again, and dealt with, next time.
                        Some(Err(_)) | None => break,
                    }
                }
                let taken = take_in_batch(&pool, &sagas, &producer, &dead_letters, &batch, &mut shutdown)
                    .instrument(event_contract::trace::batch_span(&batch, "saga"))
                    .await;
                match taken {
                    Taken::Done => {
                        // Stored, the offsets go to Kafka with the next
                        // commit (every second, and when the member leaves).
                        // One that fails only means the events come again,
                        // which changes nothing.
                        for message in last_per_partition(&batch) {
                            if let Err(error) = consumer.store_offset_from_message(message) {
                                tracing::debug!(%error, "cannot store an offset; it will be redelivered");
                            }
                        }
                        lag.update(&consumer);
                    }
                    // Shutting down before the events were stored: their
                    // offsets stay, and the next member of the group takes
                    // them again.
                    Taken::Interrupted => break,
                }
            }
            _ = scan.tick() => {
                // As many as there are free drivers: the scan never waits
                // for one, so it never holds the intake up (a consumer that
                // stops reading for long is put out of its group).
                let free = sagas.permits.available_permits().min(200);
                if free == 0 {
                    continue;
                }
                let due = tokio::select! {
                    () = &mut shutdown => break,
                    due = store::due(&pool, i64::try_from(free).unwrap_or(200)) => due,
                };
                match due {
                    Ok(due) => {
                        for order_id in due {
                            if !sagas.drive(order_id, &mut shutdown).await {
                                break;
                            }
                        }
                    }
                    Err(error) => tracing::warn!(%error, "cannot look for due sagas"),
                }
            }
            _ = sweep.tick() => {
                match sweep_placements(&pool, config.sweep_grace, sweep_clock.now(), &mut shutdown).await {
                    Swept::CaughtUp => {}
                    Swept::More => sweep.reset_immediately(),
                    Swept::ShuttingDown => break,
                }
            }
            _ = census.tick() => {
                tokio::select! {
                    () = &mut shutdown => break,
                    () = census_metrics(&pool) => {}
                }
            }
        }
    }
    lag.finish().await;
    platform::kafka::close(consumer).await;
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
    /// Sets the saga of `order_id` going once a driver is free (see
    /// [`start`](Self::start)). `false`: `shutdown` came first.
    async fn drive(
        &self,
        order_id: String,
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> bool {
        self.start(order_id, None, shutdown).await
    }

    /// Drives a saga this process stored leased to its driver, from the
    /// saga as stored (claiming it afresh if it waited for its turn so long
    /// that its lease may be running out).
    /// `placed` is the order's first event, when the consumer read it.
    async fn drive_leased(
        &self,
        leased: store::Loaded,
        leased_at: std::time::Instant,
        placed: Option<OrderPlaced>,
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> bool {
        let order_id = leased.saga.order_id.clone();
        self.start(order_id, Some((leased, leased_at, placed)), shutdown)
            .await
    }

    /// Waits for one of the process's `saga_concurrency` drivers to be free,
    /// then drives the saga on it: the intake and the scan wait with it, so
    /// a backlog stays in Kafka and in the table, not in this process's
    /// memory. A saga driven here already is left to its driver.
    async fn start(
        &self,
        order_id: String,
        leased: Option<Leased>,
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> bool {
        let fresh = self
            .running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(order_id.clone());
        if !fresh {
            return true;
        }
        // Out of the running set however the task ends (a panic included),
        // or if it never starts, so that the scan can hand the saga out again.
        let running = Running {
            running: Arc::clone(&self.running),
            order_id: order_id.clone(),
        };
        let permit = tokio::select! {
            () = shutdown.as_mut() => return false,
            permit = Arc::clone(&self.permits).acquire_owned() => permit,
        };
        let Ok(permit) = permit else {
            return false;
        };
        let this = self.clone();
        // A lease that waited long for its driver may be running out: the
        // saga is claimed afresh then.
        let leased = match leased {
            Some(leased) if leased.1.elapsed() < this.driver.lease() / 3 => Some(leased),
            _ => None,
        };
        tokio::spawn(async move {
            let _running = running;
            let _permit = permit;
            let driven = match leased {
                Some((leased, at, placed)) => {
                    this.driver.drive_leased(leased, at, placed.as_ref()).await
                }
                None => this.driver.drive(&order_id).await,
            };
            if let Err(error) = driven {
                tracing::warn!(%order_id, error = %format!("{error:#}"), "saga interrupted; the scan resumes it");
            }
        });
        true
    }
}

/// A saga this process stored leased to its driver: as stored, when, and
/// the order's first event.
type Leased = (store::Loaded, std::time::Instant, Option<OrderPlaced>);

/// A saga in the running set while this lives.
struct Running {
    running: Arc<Mutex<HashSet<String>>>,
    order_id: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&self.order_id);
    }
}

/// Whether a message was dealt with, so that its offset may be committed.
enum Taken {
    Done,
    Interrupted,
}

/// Why a message whose event the store does not hold is refused.
pub const NOT_IN_THE_STORE: &str =
    "the event store holds no such event: a saga starts only from what the platform published";

/// The envelope and the order event it carries, or why it is poison.
fn decode(message: &BorrowedMessage<'_>) -> Result<(Envelope, OrderEvent), String> {
    let payload = message.payload().ok_or("the message has no payload")?;
    let envelope = event_contract::decode(payload)
        .map_err(|error| format!("cannot decode the envelope: {error}"))?;
    let event = envelope
        .decode::<OrderEvent>()
        .map_err(|error| format!("cannot decode {}: {error}", envelope.event_type))?;
    Ok((envelope, event))
}

/// Retries `attempt` with backoff until it succeeds or `shutdown` completes.
async fn until_done<T, F: Future<Output = anyhow::Result<T>>>(
    what: &str,
    mut attempt: impl FnMut() -> F,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Option<T> {
    let mut delay = Duration::from_millis(100);
    loop {
        // A shutdown interrupts a try that hangs too (the database blocked):
        // whether or not it went through, the offset is not committed, and
        // taking the message in again changes nothing.
        let tried = tokio::select! {
            () = shutdown.as_mut() => return None,
            tried = attempt() => tried,
        };
        match tried {
            Ok(done) => return Some(done),
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "cannot {what}; retrying");
                tokio::select! {
                    () = shutdown.as_mut() => return None,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Forwards a poison message to the dead-letter topic.
async fn dead_letter(
    producer: &FutureProducer,
    topic: &str,
    message: &BorrowedMessage<'_>,
    error: &str,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Taken {
    metrics::counter!("saga_dead_letters_total").increment(1);
    let sent = until_done(
        "write a dead letter",
        || event_contract::dead_letter::send(producer, topic, message, "saga", error),
        shutdown,
    )
    .await;
    sent.map_or(Taken::Interrupted, |()| Taken::Done)
}

/// Stores what a batch of order events means for their sagas (retrying
/// until the database takes it), then sets the sagas going. A message that
/// is not an order event goes to the dead-letter topic.
async fn take_in_batch<G: PaymentGateway + Clone>(
    pool: &PgPool,
    sagas: &Sagas<G>,
    producer: &FutureProducer,
    dead_letters: &str,
    batch: &[BorrowedMessage<'_>],
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Taken {
    let mut placed = Vec::new();
    let mut first_events = std::collections::HashMap::new();
    let mut cancelled = Vec::new();
    // Orders with a shipment or a return for their saga, at that version.
    let mut woken: Vec<(String, i64)> = Vec::new();
    // Each placement's span, in the order's trace, lasts until its saga is
    // stored; the saga's steps continue that trace.
    let mut intake = Vec::new();
    // The store is the truth: each message is looked up by its event's id,
    // and the saga starts (or stops) from the event the store holds.
    let decoded: Vec<Result<(Envelope, OrderEvent), String>> = batch.iter().map(decode).collect();
    let ids: Vec<uuid::Uuid> = decoded
        .iter()
        .filter_map(|decoded| decoded.as_ref().ok())
        .map(|(envelope, _)| envelope.event_id)
        .collect();
    let Some(stored) = until_done(
        "read the events the messages name",
        || async {
            let mut connection = pool.acquire().await?;
            Ok(event_store::reader::by_ids::<String>(&mut connection, &ids).await?)
        },
        shutdown,
    )
    .await
    .map(|events| {
        events
            .into_iter()
            .map(|event| (event.event_id, event))
            .collect::<std::collections::HashMap<_, _>>()
    }) else {
        return Taken::Interrupted;
    };
    for (message, decoded) in batch.iter().zip(decoded) {
        let decoded = decoded.and_then(|(mut envelope, _)| {
            // (A message twice in one batch is a redelivery: both find it.)
            let event = stored
                .get(&envelope.event_id)
                .filter(|event| envelope.names(event))
                .ok_or_else(|| NOT_IN_THE_STORE.to_owned())?;
            let order_event =
                event_contract::decode_stored::<OrderEvent>(&event.payload).map_err(|error| {
                    format!("cannot decode the stored {}: {error}", event.event_type)
                })?;
            // When it was recorded and the request that caused it, as stored.
            envelope.recorded_at = event.recorded_at;
            if let Ok(metadata) = serde_json::from_str(&event.metadata) {
                envelope.metadata = metadata;
            }
            Ok((envelope, order_event))
        });
        match decoded {
            Ok((envelope, OrderEvent::OrderPlaced(event))) => {
                let correlation = envelope.correlation_id().unwrap_or_default();
                let span = event_contract::trace::consume_span(message, "saga");
                placed.push(
                    OrderSaga::start(&event, correlation, envelope.recorded_at)
                        .in_trace(platform::trace::traceparent(&span)),
                );
                intake.push(span);
                if envelope.sequence == 1 {
                    first_events.insert(envelope.aggregate_id.clone(), event);
                }
            }
            Ok((envelope, OrderEvent::OrderCancelled(event))) => {
                cancelled.push((envelope.aggregate_id, event.reason.as_str().to_owned()));
            }
            Ok((envelope, OrderEvent::ShipmentRequested(_) | OrderEvent::ReturnReceived(_))) => {
                woken.push((envelope.aggregate_id, envelope.sequence));
            }
            // Written by the saga itself, or by commands that ask nothing
            // of it.
            Ok((
                _,
                OrderEvent::OrderConfirmed(_)
                | OrderEvent::ShipmentShipped(_)
                | OrderEvent::ShipmentFailed(_)
                | OrderEvent::ShipmentDelivered(_)
                | OrderEvent::ReturnRequested(_),
            )) => {}
            Err(error) => {
                if let Taken::Interrupted =
                    dead_letter(producer, dead_letters, message, &error, shutdown).await
                {
                    return Taken::Interrupted;
                }
            }
        }
    }
    // A cancel follows its order's placement (one partition per order), so
    // the new sagas are stored first.
    let (owner, lease) = (sagas.driver.owner(), sagas.driver.lease());
    let leased_at = std::time::Instant::now();
    let Some(new) = until_done(
        "store new sagas",
        || async {
            if placed.is_empty() {
                return Ok(Vec::new());
            }
            Ok(store::insert_leased(pool, &placed, owner, lease).await?)
        },
        shutdown,
    )
    .await
    else {
        return Taken::Interrupted;
    };
    drop(intake);
    let new: HashSet<String> = new.into_iter().collect();
    // A redelivered placement stored nothing: its saga is driven already.
    for saga in placed
        .into_iter()
        .filter(|saga| new.contains(&saga.order_id))
    {
        let placed = first_events.remove(&saga.order_id);
        let started = sagas
            .drive_leased(
                store::Loaded {
                    saga,
                    version: 1,
                    cancel_reason: None,
                    order_version: 0,
                },
                leased_at,
                placed,
                shutdown,
            )
            .await;
        if !started {
            // Stored and leased, not driven: the scan takes it once its
            // lease has run out.
            return Taken::Interrupted;
        }
    }
    for (order_id, reason) in cancelled {
        let stored = until_done(
            "store an order's cancel for its saga",
            || async { Ok(store::request_cancel(pool, &order_id, &reason).await?) },
            shutdown,
        )
        .await;
        match stored {
            Some(true) => {
                if !sagas.drive(order_id, shutdown).await {
                    return Taken::Interrupted;
                }
            }
            Some(false) => {}
            None => return Taken::Interrupted,
        }
    }
    for (order_id, order_version) in woken {
        let stored = until_done(
            "wake an order's saga for a shipment or a return",
            || async { Ok(store::wake(pool, &order_id, order_version).await?) },
            shutdown,
        )
        .await;
        match stored {
            Some(true) => {
                if !sagas.drive(order_id, shutdown).await {
                    return Taken::Interrupted;
                }
            }
            Some(false) => {}
            None => return Taken::Interrupted,
        }
    }
    Taken::Done
}

/// Pages of order events one turn of the sweep reads at most: a long
/// history (the first sweep of an older store) is read a few turns at a time
/// between batches of messages.
const SWEEP_PAGES_AT_ONCE: usize = 10;

/// How a turn of the sweep ended.
#[derive(Debug, PartialEq, Eq)]
enum Swept {
    /// Up to the placements too young to sweep.
    CaughtUp,
    /// There is more to read: another turn soon.
    More,
    ShuttingDown,
}

/// Stores the sagas of placements old enough that have none, due for the
/// resume scan, a page of the orders' events at a time (see [`crate::sweep`]).
async fn sweep_placements(
    pool: &PgPool,
    grace: Duration,
    now: chrono::DateTime<chrono::Utc>,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Swept {
    sweep_pages(pool, grace, now, shutdown)
        .await
        .unwrap_or_else(|error| {
            tracing::warn!(error = %format!("{error:#}"), "cannot sweep for placements without a saga; trying again later");
            Swept::CaughtUp
        })
}

async fn sweep_pages(
    pool: &PgPool,
    grace: Duration,
    now: chrono::DateTime<chrono::Utc>,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> anyhow::Result<Swept> {
    let mut after = tokio::select! {
        () = shutdown.as_mut() => return Ok(Swept::ShuttingDown),
        after = crate::sweep::checkpoint(pool) => after?,
    };
    for _ in 0..SWEEP_PAGES_AT_ONCE {
        let found = tokio::select! {
            () = shutdown.as_mut() => return Ok(Swept::ShuttingDown),
            found = crate::sweep::look(pool, after, grace, now) => found?,
        };
        let Some(checkpoint) = found.checkpoint else {
            return Ok(Swept::CaughtUp);
        };
        if !found.sagas.is_empty() {
            let new = tokio::select! {
                () = shutdown.as_mut() => return Ok(Swept::ShuttingDown),
                new = store::insert_due(pool, &found.sagas) => new?,
            };
            metrics::counter!("saga_placements_swept_total").increment(new.len() as u64);
        }
        for (order_id, order_version) in &found.wakes {
            let woke = tokio::select! {
                () = shutdown.as_mut() => return Ok(Swept::ShuttingDown),
                woke = store::wake(pool, order_id, *order_version) => woke?,
            };
            if woke {
                tracing::warn!(%order_id, order_version, "an order's shipment or return never reached its saga (its message never came): waking it from the store");
                metrics::counter!("saga_work_swept_total").increment(1);
            }
        }
        tokio::select! {
            () = shutdown.as_mut() => return Ok(Swept::ShuttingDown),
            saved = crate::sweep::save(pool, checkpoint) => saved?,
        }
        after = checkpoint;
    }
    Ok(Swept::More)
}

/// The last message of each partition in `batch`: committing its offset
/// commits the batch.
fn last_per_partition<'a>(batch: &'a [BorrowedMessage<'a>]) -> Vec<&'a BorrowedMessage<'a>> {
    let mut last: Vec<&BorrowedMessage<'_>> = Vec::new();
    for message in batch {
        match last
            .iter_mut()
            .find(|seen| seen.partition() == message.partition() && seen.topic() == message.topic())
        {
            Some(seen) if seen.offset() < message.offset() => *seen = message,
            Some(_) => {}
            None => last.push(message),
        }
    }
    last
}

/// Sagas not done by state (a state none is in reads 0), and those needing
/// attention, as gauges. Ended sagas are counted as they end
/// (`sagas_ended_total`), not here.
async fn census_metrics(pool: &PgPool) {
    match store::in_progress(pool).await {
        Ok((by_state, attention)) => {
            for state in SagaState::ALL {
                let count = by_state
                    .iter()
                    .find(|(name, _)| name == state.as_str())
                    .map_or(0, |(_, count)| *count);
                metrics::gauge!("sagas", "state" => state.as_str()).set(count as f64);
            }
            metrics::gauge!("sagas_needing_attention").set(attention as f64);
        }
        Err(error) => tracing::debug!(%error, "cannot count sagas"),
    }
}

/// Aborts a task when dropped (when the orchestrator returns, however).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
