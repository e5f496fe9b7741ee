//! Command dispatch: load an aggregate, let it decide, append what it decided.
//!
//! This is cqrs-es's `CqrsFramework::execute` with what a service needs on top:
//! the resulting version (for ETags), an expected version (If-Match), retries
//! when a concurrent writer wins, idempotency keys recorded with the events,
//! and correlation metadata on every event.

use std::time::{Duration, Instant};

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, AggregateError, DomainEvent, EventEnvelope};
use sqlx::PgPool;
use tokio::sync::oneshot;
use tracing::Instrument;
use uuid::Uuid;

use crate::batch::AppendBatcher;
use crate::streams::{Boxed, Serving, Streams};
use event_store::idempotency::{self, RememberedOutcome};
use event_store::repository::{AppendError, IdempotencyClaim, NewEvent, PgEventRepository};

pub use event_store::metadata;

/// Where a command comes from and what it may assume.
#[derive(Debug, Clone, Default)]
pub struct CommandContext {
    /// Ties together everything one request or one saga set off.
    pub correlation_id: String,
    /// The message that caused this command (a request id, an event id).
    pub causation_id: String,
    /// Record the outcome under this key; a repeat returns it instead of running again.
    pub idempotency: Option<IdempotencyClaim>,
    /// Refuse unless the aggregate is at exactly this version (0: does not exist).
    pub expected_version: Option<u64>,
}

/// A command that was carried out, or an earlier outcome remembered by key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub aggregate_id: String,
    /// The aggregate's version (its last sequence number) after the command.
    pub version: u64,
    /// True when the idempotency key had been used before and nothing ran.
    pub replayed: bool,
}

impl Outcome {
    /// Where the command left its aggregate (of type `aggregate_type`).
    pub fn position(&self, aggregate_type: &str) -> event_store::Position {
        event_store::Position::new(aggregate_type, &self.aggregate_id, self.version)
    }
}

/// Why a command did not append anything. `Refused`, `VersionMismatch`,
/// `Conflict` and `KeyReused` are answers about the command; `Store` is a
/// failure of the platform.
#[derive(Debug, thiserror::Error)]
pub enum CommandError<E: std::error::Error> {
    /// The aggregate said no. Tell the caller why; retrying will not help.
    #[error(transparent)]
    Refused(E),
    /// The aggregate is not at the version the caller expected. The caller
    /// should read it again and decide whether to retry.
    #[error("expected version {expected}, but the aggregate is at version {actual}")]
    VersionMismatch { expected: u64, actual: u64 },
    /// Concurrent writers kept winning the race for this aggregate. Retrying
    /// later may succeed.
    #[error("the aggregate was changed concurrently {attempts} times in a row")]
    Conflict { attempts: u32 },
    /// The idempotency key was used before for a different request.
    #[error("the idempotency key was already used for a different request")]
    KeyReused,
    /// The event store failed or holds events that cannot be read.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What [`CommandBus::settle`] learned about a keyed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// It landed, with this outcome.
    Landed(Outcome),
    /// It has not landed and now never will.
    Never,
}

/// A failure of the event store itself.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or failed; nothing was written.
    #[error("event store database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Stored events could not be read back into the aggregate.
    #[error("stored events cannot be read: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Whether the database is out of reach for now (down, restarting,
    /// saturated, the connection lost): the caller should answer "try again
    /// later" rather than report a fault.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Database(error) => database_unavailable(error),
            Self::Corrupt(_) => false,
        }
    }
}

/// See [`StoreError::is_unavailable`]: connection failures, pool exhaustion,
/// and the SQLSTATE classes of a server that cannot serve now (08 connection
/// exception, 53 insufficient resources, 57 operator intervention such as a
/// shutdown, 58 system error).
pub fn database_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| ["08", "53", "57", "58"].iter().any(|c| code.starts_with(c))),
        _ => false,
    }
}

/// How often and how patiently to retry a command that lost a race.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 10,
            first_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(50),
        }
    }
}

impl RetryPolicy {
    /// Exponential backoff with full jitter, so that writers who collided
    /// once do not collide again in lockstep.
    fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self
            .first_backoff
            .saturating_mul(1 << attempt.min(16))
            .min(self.max_backoff);
        ceiling.mul_f64(fastrand::f64())
    }
}

/// Whether the aggregate is expected to exist yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Load the aggregate first (the usual case).
    Existing,
    /// The command creates the aggregate: skip the first load, since a new id
    /// has no events. If the id is taken after all, the append conflicts and the
    /// retry loads the aggregate, which then refuses the command.
    New,
}

/// Statements a bus keeps in flight by default; see [`AppendBatcher`].
pub const DEFAULT_APPEND_WORKERS: usize = 2;

/// Events between two snapshots of an aggregate by default; see
/// [`CommandBus::with_snapshots`].
pub const DEFAULT_SNAPSHOT_EVERY: u64 = 100;

/// Runs commands against the event store.
#[derive(Debug, Clone)]
pub struct CommandBus {
    repository: PgEventRepository,
    batcher: AppendBatcher,
    retry: RetryPolicy,
    streams: Streams,
    snapshot_every: u64,
}

impl CommandBus {
    pub fn new(pool: PgPool) -> Self {
        Self {
            repository: PgEventRepository::new(pool.clone()),
            batcher: AppendBatcher::new(pool, DEFAULT_APPEND_WORKERS),
            retry: RetryPolicy::default(),
            streams: Streams::default(),
            snapshot_every: DEFAULT_SNAPSHOT_EVERY,
        }
    }

    /// Snapshots every aggregate each time its stream grows past a multiple
    /// of `every` events (0: never), so that a load reads the newest
    /// snapshot and at most `every - 1` events after it, however long the
    /// stream. The snapshot is the aggregate the command just left, written
    /// after its events committed; see `snapshot`.
    pub fn with_snapshots(mut self, every: u64) -> Self {
        self.snapshot_every = every;
        self
    }

    /// How many append statements may be in flight at once. Concurrent
    /// commands beyond that share statements; fewer workers, bigger batches.
    pub fn with_append_workers(mut self, workers: usize) -> Self {
        self.batcher = AppendBatcher::new(self.repository.pool().clone(), workers);
        self
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    pub fn pool(&self) -> &PgPool {
        self.repository.pool()
    }

    pub fn repository(&self) -> &PgEventRepository {
        &self.repository
    }

    /// Runs `command` against aggregate `aggregate_id` and appends the events
    /// it decides, with `context` as their metadata.
    ///
    /// Returns once the events are committed. A lost race is retried with a
    /// fresh copy of the aggregate up to the policy's limit; when the caller
    /// gave an expected version, the retry reports the mismatch instead.
    pub async fn execute<A>(
        &self,
        aggregate_id: &str,
        command: A::Command,
        context: &CommandContext,
        expect: Expect,
    ) -> Result<Outcome, CommandError<A::Error>>
    where
        A: Aggregate<Services = ()> + 'static,
        A::Command: Clone + Send + Sync,
        A::Error: Send,
    {
        let started = Instant::now();
        let span = tracing::info_span!(
            "command",
            otel.name = format!("command {}", A::TYPE),
            aggregate = A::TYPE,
            aggregate_id,
            outcome = tracing::field::Empty,
        );
        let result = self
            .run::<A>(aggregate_id, command, context, expect)
            .instrument(span.clone())
            .await;
        let outcome = match &result {
            Ok(outcome) if outcome.replayed => "replayed",
            Ok(_) => "accepted",
            Err(CommandError::Refused(_)) => "refused",
            Err(CommandError::VersionMismatch { .. }) => "version_mismatch",
            Err(CommandError::Conflict { .. }) => "conflict",
            Err(CommandError::KeyReused) => "key_reused",
            Err(CommandError::Store(_)) => "failed",
        };
        span.record("outcome", outcome);
        metrics::counter!("commands_total", "aggregate" => A::TYPE, "outcome" => outcome)
            .increment(1);
        metrics::histogram!("command_duration_seconds", "aggregate" => A::TYPE)
            .record(started.elapsed().as_secs_f64());
        result
    }

    async fn run<A>(
        &self,
        aggregate_id: &str,
        command: A::Command,
        context: &CommandContext,
        expect: Expect,
    ) -> Result<Outcome, CommandError<A::Error>>
    where
        A: Aggregate<Services = ()> + 'static,
        A::Command: Clone + Send + Sync,
        A::Error: Send,
    {
        // A client's key is looked up first: clients repeat requests, and a
        // repeat that got as far as the append would fail a whole shared
        // statement. A key the platform derives (a saga step's) names a step
        // that has almost always not run yet, so the lookup is left to the
        // paths where a repeat shows itself: a refusal, a version mismatch,
        // a lost race or a taken key, each of which looks the key up before
        // answering. The key's row, written with the events, keeps a repeat
        // from appending twice either way.
        if let Some(claim) = &context.idempotency
            && claim.key.is_client()
            && let Some(outcome) = self.remembered::<A>(claim).await?
        {
            return Ok(outcome);
        }
        // The command queues on its stream, and the stream's worker answers
        // it; see `streams`. A caller that stops waiting leaves its command
        // behind, and the worker drops it unless it is already deciding it.
        let (reply, answer) = oneshot::channel();
        let job = Job::<A> {
            command,
            context: context.clone(),
            expect,
            reply,
            span: tracing::Span::current(),
        };
        let stream = format!("{}/{aggregate_id}", A::TYPE);
        if let Some(serving) = self.streams.push(&stream, Box::new(job)) {
            let (bus, aggregate_id) = (self.clone(), aggregate_id.to_owned());
            tokio::spawn(async move { bus.serve::<A>(&aggregate_id, serving).await });
        }
        answer
            .await
            .map_err(|_| CommandError::Store(StoreError::Database(sqlx::Error::WorkerCrashed)))?
    }

    /// A stream's worker: decides what is queued on the stream, round after
    /// round, until nothing is.
    async fn serve<A>(&self, aggregate_id: &str, mut serving: Serving)
    where
        A: Aggregate<Services = ()> + 'static,
        A::Command: Clone + Send + Sync,
        A::Error: Send,
    {
        let mut kept = serving
            .take_kept()
            .and_then(|kept| kept.downcast::<(A, u64)>().ok())
            .map(|kept| *kept);
        // The kept aggregate goes to the stream's cache only when the
        // worker is done; between rounds it stays here.
        while let Some(jobs) = serving.next(MAX_ROUND, || {
            kept.take().map(|kept| Box::new(kept) as Boxed)
        }) {
            let jobs: Vec<Job<A>> = jobs
                .into_iter()
                .filter_map(|job| job.downcast::<Job<A>>().ok().map(|job| *job))
                .filter(|job| !job.reply.is_closed())
                .collect();
            if !jobs.is_empty() {
                kept = self.round(aggregate_id, kept.take(), jobs).await;
            }
        }
    }

    /// Decides `jobs` one after another on the aggregate (`kept`, as the
    /// last round left it, or loaded) and appends what they decided in one
    /// go; answers each. Returns the aggregate to keep for the next round:
    /// the fold of committed events only.
    async fn round<A>(
        &self,
        aggregate_id: &str,
        kept: Option<(A, u64)>,
        jobs: Vec<Job<A>>,
    ) -> Option<(A, u64)>
    where
        A: Aggregate<Services = ()> + 'static,
        A::Command: Clone + Send + Sync,
        A::Error: Send,
    {
        let mut jobs = jobs;
        // A kept copy is the fold of events this process saw commit, but
        // another process may have appended since. An append finds that out
        // by itself (the next sequence is taken: a conflict); a round that
        // appends nothing (refusals, commands that decide nothing, version
        // mismatches) reads the newer events first.
        let mut state = kept.map(|(aggregate, version)| (aggregate, version, false));
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (mut aggregate, version, verified) = match state.take() {
                Some(state) => state,
                None if attempt == 1 && jobs.iter().all(|job| job.expect == Expect::New) => {
                    (A::default(), 0, true)
                }
                None => match self.current::<A>(aggregate_id, None).await {
                    Ok((aggregate, version)) => (aggregate, version, true),
                    Err(error) => {
                        fail_all(jobs, error);
                        return None;
                    }
                },
            };
            let decided = decide_all(aggregate_id, &mut aggregate, version, &jobs).await;
            let later = jobs.split_off(decided.decisions.len());
            let appends = decided
                .decisions
                .iter()
                .any(|decision| matches!(decision, Decision::Append { .. }));
            if !verified && !appends {
                // The answers rest on the kept copy: decide again on the
                // stream as it stands if it moved on since.
                let current = if decided.tainted {
                    self.current::<A>(aggregate_id, None).await
                } else {
                    self.fold_onto(aggregate_id, (aggregate, version)).await
                };
                let Ok((aggregate, current)) = current else {
                    // Answered from the kept copy's view is not safe, and
                    // the store cannot say more: each job alone, afresh.
                    jobs.extend(later);
                    return self.one_by_one(aggregate_id, jobs).await;
                };
                metrics::counter!("kept_aggregate_checks_total", "aggregate" => A::TYPE, "stale" => (current != version).to_string())
                    .increment(1);
                jobs.extend(later);
                state = Some((aggregate, current, true));
                attempt -= 1;
                continue;
            }
            let (commands, traces): (Vec<crate::batch::Command>, Vec<Option<String>>) = decided
                .decisions
                .iter()
                .filter_map(|decision| match decision {
                    Decision::Append {
                        events,
                        claim,
                        trace,
                        ..
                    } => Some((
                        (events.clone(), claim.clone()),
                        platform::trace::traceparent(trace),
                    )),
                    _ => None,
                })
                .unzip();
            let appended = if commands.is_empty() {
                Ok(())
            } else {
                let started = Instant::now();
                let traces = traces.into_iter().flatten().collect();
                let appended = self.batcher.append_together(commands, traces).await;
                metrics::histogram!("append_wait_seconds", "aggregate" => A::TYPE)
                    .record(started.elapsed().as_secs_f64());
                appended
            };
            let error = match appended {
                Ok(()) => {
                    let final_version = decided.version;
                    if appends && self.snapshot_due(version, final_version) && !decided.tainted {
                        self.snapshot(aggregate_id, &aggregate, final_version);
                    }
                    self.answer(aggregate_id, jobs, decided.decisions).await;
                    if !later.is_empty() {
                        // Decided after one that left the aggregate holding
                        // events never stored: a round of their own, on the
                        // stream loaded afresh.
                        return Box::pin(self.round(aggregate_id, None, later)).await;
                    }
                    return (!decided.tainted).then_some((aggregate, final_version));
                }
                Err(error) => error,
            };
            jobs.extend(later);
            if jobs.len() > 1 {
                if let AppendError::Database(error) = error
                    && database_unavailable(&error)
                {
                    // Cut off from the server, the statement may have
                    // committed before its answer was lost: deciding the
                    // commands again on the stream as it then stands would
                    // apply them twice. Each caller learns that the store is
                    // out of reach, as a command alone would.
                    fail_all(jobs, StoreError::from(error));
                    return None;
                }
                // The server refused the statement, so nothing of it
                // committed (another process wrote the stream, a key was
                // taken): each job alone, so that each gets its own answer.
                return self.one_by_one(aggregate_id, jobs).await;
            }
            let job = jobs.pop()?;
            match self.retry_after(&job, error, attempt, verified).await {
                Some(answer) => {
                    let _ = job.reply.send(answer);
                    return None;
                }
                None => jobs.push(job),
            }
        }
    }

    /// What a lone command's failed append means: its answer, or `None` to
    /// try again (after a backoff when a race was lost).
    async fn retry_after<A>(
        &self,
        job: &Job<A>,
        error: AppendError,
        attempt: u32,
        verified: bool,
    ) -> Option<Result<Outcome, CommandError<A::Error>>>
    where
        A: Aggregate,
    {
        let claim = job.context.idempotency.as_ref();
        match error {
            AppendError::Conflict => {
                metrics::counter!("command_conflicts_total", "aggregate" => A::TYPE).increment(1);
                // The writer that won may have been this very request, sent
                // twice.
                if let Some(claim) = claim {
                    match self.remembered::<A>(claim).await {
                        Ok(None) => {}
                        found => {
                            return Some(
                                found.and_then(|outcome| outcome.ok_or(CommandError::KeyReused)),
                            );
                        }
                    }
                }
                if attempt >= self.retry.max_attempts {
                    return Some(Err(CommandError::Conflict { attempts: attempt }));
                }
                // A kept copy that was behind is no race lost: the next try
                // reads the stream at once.
                if verified {
                    tokio::time::sleep(self.retry.backoff(attempt)).await;
                }
                None
            }
            AppendError::KeyTaken => {
                // A request with the same key committed while this one ran,
                // or an expired row still holds the key.
                let Some(claim) = claim else {
                    return Some(Err(
                        StoreError::Corrupt("key taken without a key".into()).into()
                    ));
                };
                match self.remembered::<A>(claim).await {
                    Ok(None) => {}
                    found => {
                        return Some(
                            found.and_then(|outcome| outcome.ok_or(CommandError::KeyReused)),
                        );
                    }
                }
                if let Err(error) =
                    idempotency::forget_if_expired(self.pool(), claim.key.as_str()).await
                {
                    return Some(Err(StoreError::from(error).into()));
                }
                if attempt >= self.retry.max_attempts {
                    return Some(Err(CommandError::Conflict { attempts: attempt }));
                }
                None
            }
            AppendError::Database(error) => Some(Err(StoreError::from(error).into())),
        }
    }

    /// Each job in a round of its own, on the stream loaded afresh.
    async fn one_by_one<A>(&self, aggregate_id: &str, jobs: Vec<Job<A>>) -> Option<(A, u64)>
    where
        A: Aggregate<Services = ()> + 'static,
        A::Command: Clone + Send + Sync,
        A::Error: Send,
    {
        let mut kept = None;
        for job in jobs {
            kept = Box::pin(self.round(aggregate_id, kept, vec![job])).await;
        }
        kept
    }

    /// Answers each job by its decision, once the round's appends committed.
    async fn answer<A>(
        &self,
        aggregate_id: &str,
        jobs: Vec<Job<A>>,
        decisions: Vec<Decision<A::Error>>,
    ) where
        A: Aggregate,
    {
        for (job, decision) in jobs.into_iter().zip(decisions) {
            let answer = match decision {
                Decision::Append { version, .. } | Decision::Unchanged { version } => Ok(Outcome {
                    aggregate_id: aggregate_id.to_owned(),
                    version,
                    replayed: false,
                }),
                // The same request may have landed already (a second sender
                // of one keyed command): its outcome, not a refusal of what
                // it already did, is the answer.
                Decision::Refused(refusal) => match &job.context.idempotency {
                    Some(claim) => match self.remembered::<A>(claim).await {
                        Ok(Some(outcome)) => Ok(outcome),
                        Ok(None) => Err(CommandError::Refused(refusal)),
                        Err(error) => Err(error),
                    },
                    None => Err(CommandError::Refused(refusal)),
                },
                Decision::Failed(error) => Err(CommandError::Store(error)),
                Decision::Mismatch { expected, actual } => match &job.context.idempotency {
                    Some(claim) => match self.remembered::<A>(claim).await {
                        Ok(Some(outcome)) => Ok(outcome),
                        Ok(None) => Err(CommandError::VersionMismatch { expected, actual }),
                        Err(error) => Err(error),
                    },
                    None => Err(CommandError::VersionMismatch { expected, actual }),
                },
            };
            let _ = job.reply.send(answer);
        }
    }

    /// Learns whether the keyed command `claim` names has landed on
    /// `aggregate_id`, and makes sure the answer stays true: if it has not, it
    /// never will (the key is fenced, so a copy still queued or running
    /// appends nothing and answers [`CommandError::KeyReused`]). Callers use it
    /// before undoing work whose last try had no answer.
    pub async fn settle<A: Aggregate>(
        &self,
        aggregate_id: &str,
        claim: &IdempotencyClaim,
    ) -> Result<Settled, CommandError<A::Error>> {
        let holder = idempotency::fence(
            self.pool(),
            claim.key.as_str(),
            A::TYPE,
            aggregate_id,
            claim.ttl,
        )
        .await
        .map_err(StoreError::from)?;
        if holder.request_fingerprint == idempotency::FENCE_FINGERPRINT {
            return Ok(Settled::Never);
        }
        if holder.request_fingerprint != claim.fingerprint || holder.aggregate_type != A::TYPE {
            return Err(CommandError::KeyReused);
        }
        Ok(Settled::Landed(Outcome {
            aggregate_id: holder.aggregate_id,
            version: holder.version,
            replayed: true,
        }))
    }

    /// Hands the bus an aggregate as its events up to `version` leave it,
    /// learned elsewhere (a consumer that just read its first event, say),
    /// so that the next command on it decides without loading the stream.
    /// Like any copy the bus keeps, it is checked by the next append (a
    /// stream that moved on has the next sequence taken) and read up to
    /// date before an answer that appends nothing; it is ignored when the
    /// bus keeps a copy of its own.
    pub fn offer<A>(&self, aggregate_id: &str, aggregate: A, version: u64)
    where
        A: Aggregate + 'static,
    {
        let stream = format!("{}/{aggregate_id}", A::TYPE);
        self.streams
            .offer(&stream, || Box::new((aggregate, version)) as Boxed);
    }

    /// The aggregate as its events leave it, with its version; the default
    /// (version 0) when it has none.
    pub async fn load<A>(&self, aggregate_id: &str) -> Result<(A, u64), StoreError>
    where
        A: Aggregate<Services = ()>,
    {
        self.current(aggregate_id, None).await
    }

    /// The aggregate at its latest version: `kept` (its state at a known
    /// version) or the newest snapshot, brought up to date with the events
    /// since, or a fold of all of them.
    async fn current<A>(
        &self,
        aggregate_id: &str,
        kept: Option<(A, u64)>,
    ) -> Result<(A, u64), StoreError>
    where
        A: Aggregate,
    {
        let started = Instant::now();
        let (from, (aggregate, version)) = match kept {
            Some(kept) => ("kept", self.fold_onto(aggregate_id, kept).await?),
            None if self.snapshot_every > 0 => self.load_snapshot(aggregate_id).await?,
            None => (
                "events",
                self.fold_onto(aggregate_id, Default::default()).await?,
            ),
        };
        metrics::histogram!("aggregate_load_seconds", "aggregate" => A::TYPE, "from" => from)
            .record(started.elapsed().as_secs_f64());
        Ok((aggregate, version))
    }

    /// The newest snapshot with the events after it. A snapshot that no
    /// longer reads as the aggregate (its shape changed) is passed over:
    /// the events are folded from the start instead.
    async fn load_snapshot<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<(&'static str, (A, u64)), StoreError> {
        // One round trip for the snapshot and the events after it, as many
        // as a snapshot interval leaves and then some; a longer stream (no
        // snapshot yet, or one far behind) is folded on as it streams in.
        let limit = i64::try_from(self.snapshot_every.saturating_mul(2))
            .unwrap_or(i64::MAX)
            .max(LOAD_AT_ONCE);
        let (snapshot, events) = self
            .repository
            .snapshot_and_events::<A>(aggregate_id, limit)
            .await?;
        let more = i64::try_from(events.len()).unwrap_or(i64::MAX) >= limit;
        let folded = |start: (A, u64)| async move {
            let folded = apply_all(start, events)?;
            if more {
                self.fold_onto(aggregate_id, folded).await
            } else {
                Ok(folded)
            }
        };
        let Some(snapshot) = snapshot else {
            return Ok(("events", folded((A::default(), 0)).await?));
        };
        match serde_json::from_value::<A>(snapshot.state) {
            Ok(state) => Ok(("snapshot", folded((state, snapshot.sequence)).await?)),
            Err(error) => {
                tracing::warn!(
                    aggregate = A::TYPE,
                    aggregate_id,
                    sequence = snapshot.sequence,
                    %error,
                    "snapshot unreadable, folding all events instead"
                );
                metrics::counter!("snapshots_unreadable_total", "aggregate" => A::TYPE)
                    .increment(1);
                Ok((
                    "events",
                    self.fold_onto(aggregate_id, Default::default()).await?,
                ))
            }
        }
    }

    /// `start` (a state and its version) with the events after it applied.
    async fn fold_onto<A: Aggregate>(
        &self,
        aggregate_id: &str,
        start: (A, u64),
    ) -> Result<(A, u64), StoreError> {
        use futures::TryStreamExt;

        let after = usize::try_from(start.1).unwrap_or(usize::MAX);
        let (mut aggregate, mut version) = start;
        let mut events = std::pin::pin!(self.repository.events_after::<A>(aggregate_id, after));
        while let Some(serialized) = events.try_next().await.map_err(|error| {
            match store_error::<A::Error>(error.into()) {
                CommandError::Store(error) => error,
                other => StoreError::Corrupt(other.to_string()),
            }
        })? {
            (aggregate, version) = apply_all((aggregate, version), vec![serialized])?;
        }
        Ok((aggregate, version))
    }

    /// Whether an append that took the stream from `before` to `after`
    /// passed a multiple of the snapshot interval.
    fn snapshot_due(&self, before: u64, after: u64) -> bool {
        self.snapshot_every > 0 && after / self.snapshot_every > before / self.snapshot_every
    }

    /// Stores `aggregate` as its snapshot at `version`, in the background:
    /// a snapshot is a cache of committed events, so losing one costs a
    /// longer load and nothing else, and no command waits for it.
    ///
    /// `aggregate` is the state the dispatcher holds after its own append
    /// (events applied once, by `handle`), never one rebuilt by cqrs-es's
    /// snapshot paths, which apply each new event a second time.
    fn snapshot<A: Aggregate>(&self, aggregate_id: &str, aggregate: &A, version: u64) {
        let state = match serde_json::to_string(aggregate) {
            Ok(state) => state,
            Err(error) => {
                tracing::warn!(aggregate = A::TYPE, aggregate_id, %error, "snapshot not serializable");
                return;
            }
        };
        let (repository, aggregate_id) = (self.repository.clone(), aggregate_id.to_owned());
        tokio::spawn(async move {
            let started = Instant::now();
            match repository
                .write_snapshot(A::TYPE, &aggregate_id, version, &state)
                .await
            {
                Ok(()) => {
                    metrics::counter!("snapshots_written_total", "aggregate" => A::TYPE)
                        .increment(1);
                    metrics::histogram!("snapshot_write_seconds", "aggregate" => A::TYPE)
                        .record(started.elapsed().as_secs_f64());
                }
                Err(error) => {
                    tracing::warn!(aggregate = A::TYPE, %aggregate_id, version, %error, "snapshot not written");
                }
            }
        });
    }

    /// The outcome remembered under the claim's key, if the same request made it.
    async fn remembered<A>(
        &self,
        claim: &IdempotencyClaim,
    ) -> Result<Option<Outcome>, CommandError<A::Error>>
    where
        A: Aggregate,
    {
        let Some(RememberedOutcome {
            request_fingerprint,
            aggregate_type,
            aggregate_id,
            version,
        }) = idempotency::remembered(self.pool(), claim.key.as_str())
            .await
            .map_err(StoreError::from)?
        else {
            return Ok(None);
        };
        if request_fingerprint != claim.fingerprint || aggregate_type != A::TYPE {
            return Err(CommandError::KeyReused);
        }
        Ok(Some(Outcome {
            aggregate_id,
            version,
            replayed: true,
        }))
    }
}

/// Commands a stream's worker decides in one round at most.
const MAX_ROUND: usize = 64;

/// A command queued on its stream, and where its answer goes.
struct Job<A: Aggregate> {
    command: A::Command,
    context: CommandContext,
    expect: Expect,
    reply: oneshot::Sender<Result<Outcome, CommandError<A::Error>>>,
    /// The caller's command span.
    span: tracing::Span,
}

/// What the aggregate decided on one command of a round.
enum Decision<E> {
    /// Events to append, taking the aggregate to `version`.
    Append {
        events: Vec<NewEvent>,
        claim: Option<IdempotencyClaim>,
        version: u64,
        /// The append's span, a child of the command's, open until the
        /// round has answered; its context is in the events' metadata.
        trace: tracing::Span,
    },
    /// Taken, with nothing to record: the aggregate stays at `version`.
    Unchanged {
        version: u64,
    },
    Refused(E),
    Mismatch {
        expected: u64,
        actual: u64,
    },
    /// Decided, but its events cannot be written.
    Failed(StoreError),
}

/// The decisions of a round, in the order of its jobs.
struct Decided<E> {
    decisions: Vec<Decision<E>>,
    /// The aggregate's version after the last decision.
    version: u64,
    /// The last decision left the aggregate holding events that will not
    /// be stored (a refusal or a version mismatch after `handle` applied
    /// events, or events that cannot be written): the jobs after it were
    /// not decided, and the aggregate is not kept.
    tainted: bool,
}

/// Decides `jobs` in order on `aggregate` (at `version`), each on the state
/// the ones before it left.
async fn decide_all<A>(
    aggregate_id: &str,
    aggregate: &mut A,
    version: u64,
    jobs: &[Job<A>],
) -> Decided<A::Error>
where
    A: Aggregate<Services = ()>,
    A::Command: Clone,
{
    let mut decided = Decided {
        decisions: Vec::with_capacity(jobs.len()),
        version,
        tainted: false,
    };
    for job in jobs {
        // `handle` applies what it decides to the aggregate as it goes
        // (cqrs-es's sink).
        let sink = EventSink::default();
        let decision = aggregate.handle(job.command.clone(), &(), &sink).await;
        let events = sink.collect().await;
        let at = decided.version;
        // A stale version is reported only for a command the aggregate
        // would take: its refusal comes first, so an aggregate that hides
        // itself from this caller (another customer's order reads as a
        // missing one) does not give its version away to a precondition.
        let mismatch = job
            .context
            .expected_version
            .filter(|expected| *expected != at && decision.is_ok());
        let applied = !events.is_empty();
        let next = match (decision, mismatch) {
            (Err(refusal), _) => Decision::Refused(refusal),
            (Ok(()), Some(expected)) => Decision::Mismatch {
                expected,
                actual: at,
            },
            (Ok(()), None) if !applied => Decision::Unchanged { version: at },
            (Ok(()), None) => {
                let trace = tracing::info_span!(
                    parent: &job.span,
                    "append",
                    aggregate = A::TYPE,
                    aggregate_id,
                    events = events.len()
                );
                let traceparent = platform::trace::traceparent(&trace);
                match serialize::<A>(aggregate_id, at, events, &job.context, traceparent) {
                    Ok(serialized) => {
                        decided.version = at + serialized.len() as u64;
                        Decision::Append {
                            events: serialized,
                            claim: job.context.idempotency.clone(),
                            version: decided.version,
                            trace,
                        }
                    }
                    Err(error) => Decision::Failed(error),
                }
            }
        };
        let keeps_events = matches!(next, Decision::Append { .. });
        decided.decisions.push(next);
        if applied && !keeps_events {
            decided.tainted = true;
            return decided;
        }
    }
    decided
}

/// Answers every job with `error` (the first with it, the others with a
/// copy).
fn fail_all<A: Aggregate>(jobs: Vec<Job<A>>, error: StoreError) {
    let copies: Vec<StoreError> = (1..jobs.len()).map(|_| copy_error(&error)).collect();
    for (job, error) in jobs.into_iter().zip(std::iter::once(error).chain(copies)) {
        let _ = job.reply.send(Err(CommandError::Store(error)));
    }
}

/// `error` for one more caller: the same text, and the same answer (a
/// store out of reach, or a failure).
fn copy_error(error: &StoreError) -> StoreError {
    if error.is_unavailable() {
        StoreError::Database(sqlx::Error::Io(std::io::Error::other(error.to_string())))
    } else {
        StoreError::Corrupt(error.to_string())
    }
}

/// `start` (a state and its version) with `events` applied in order.
fn apply_all<A: Aggregate>(
    (mut aggregate, mut version): (A, u64),
    events: Vec<cqrs_es::persist::SerializedEvent>,
) -> Result<(A, u64), StoreError> {
    for serialized in events {
        let envelope = EventEnvelope::<A>::try_from(serialized)
            .map_err(|error| StoreError::Corrupt(error.to_string()))?;
        version = envelope.sequence as u64;
        aggregate.apply(envelope.payload);
    }
    Ok((aggregate, version))
}

/// Events read with an aggregate's snapshot in one round trip, at least.
const LOAD_AT_ONCE: i64 = 1_000;

/// The events as rows: cqrs-es's serialized form (payload through serde, type
/// and version from `DomainEvent`, metadata a map of strings), written
/// straight to JSON text.
fn serialize<A: Aggregate>(
    aggregate_id: &str,
    version: u64,
    events: Vec<A::Event>,
    context: &CommandContext,
    traceparent: Option<String>,
) -> Result<Vec<NewEvent>, StoreError> {
    let mut metadata = serde_json::Map::new();
    metadata.insert(
        metadata::CORRELATION_ID.to_owned(),
        context.correlation_id.clone().into(),
    );
    metadata.insert(
        metadata::CAUSATION_ID.to_owned(),
        context.causation_id.clone().into(),
    );
    if let Some(claim) = &context.idempotency {
        metadata.insert(
            metadata::IDEMPOTENCY_KEY.to_owned(),
            claim.key.as_str().into(),
        );
    }
    if let Some(traceparent) = traceparent {
        metadata.insert(metadata::TRACEPARENT.to_owned(), traceparent.into());
    }
    let metadata = serde_json::Value::Object(metadata).to_string();
    let corrupt = |error: &dyn std::fmt::Display| StoreError::Corrupt(error.to_string());
    events
        .into_iter()
        .zip(version + 1..)
        .map(|(event, sequence)| {
            Ok(NewEvent {
                event_id: Uuid::now_v7(),
                aggregate_type: A::TYPE.to_owned(),
                aggregate_id: aggregate_id.to_owned(),
                sequence: i64::try_from(sequence).map_err(|e| corrupt(&e))?,
                event_type: event.event_type(),
                event_version: event.event_version(),
                payload: serde_json::to_string(&event).map_err(|e| corrupt(&e))?,
                metadata: metadata.clone(),
            })
        })
        .collect()
}

fn store_error<E: std::error::Error>(error: AggregateError<E>) -> CommandError<E> {
    match error {
        AggregateError::UserError(refusal) => CommandError::Refused(refusal),
        AggregateError::AggregateConflict => CommandError::Conflict { attempts: 1 },
        AggregateError::DatabaseConnectionError(error) | AggregateError::UnexpectedError(error) => {
            match error.downcast::<sqlx::Error>() {
                Ok(error) => StoreError::Database(*error).into(),
                Err(other) => StoreError::Corrupt(other.to_string()).into(),
            }
        }
        AggregateError::DeserializationError(error) => {
            StoreError::Corrupt(error.to_string()).into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_but_stays_under_the_ceiling() {
        let policy = RetryPolicy::default();
        for attempt in 1..40 {
            assert!(policy.backoff(attempt) <= policy.max_backoff);
        }
        let early_ceiling = policy.first_backoff * 2;
        assert!((0..100).all(|_| policy.backoff(1) <= early_ceiling));
    }
}
