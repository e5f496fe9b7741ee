//! Carries out a saga's actions: commands through the event store's dispatch,
//! charges and refunds through the payment gateway.
//!
//! The saga records a step as done only when it learned that it happened:
//!
//! - every command carries the step's idempotency key, so doing a step again
//!   (after a crash, or by a second driver) finds the first result;
//! - a step whose outcome is unknown (its last try failed or had no answer,
//!   and may still land from the append queue) is *settled* before the saga
//!   gives it up or undoes around it: the store says whether the key landed,
//!   and fences it if not, so that it never does;
//! - the undo of a charge asks the gateway what it holds under the charge's
//!   key and records exactly that in the payment's ledger.
//!
//! A driver leases a saga while it drives it, so that two processes do not
//! work on one saga at once; the keys and the saga's version keep it right
//! even when a lease runs out under a driver that is still busy.

use std::time::Duration;

use command_bus::{CommandBus, CommandContext, CommandError, Expect, Settled};
use cqrs_es::Aggregate;
use domain::order::{OrderPlaced, ShipmentStatus};
use domain::payment::AuthorizationStatus;
use domain::values::{Currency, Money, OrderId, PaymentMethod, Reason, ReturnId, ShipmentId};
use domain::{
    Order, OrderCommand, OrderError, Payment, PaymentCommand, PaymentError, PaymentStatus, Product,
    ProductCommand, ProductError,
};
use event_store::{IdempotencyClaim, IdempotencyKey};
use platform::clock::DbClock;
use sqlx::PgPool;
use tracing::Instrument;

use crate::gateway::{
    AuthorizationAnswer, CaptureAnswer, ChargeAnswer, ChargeRequest, PaymentGateway, RefundAnswer,
};
use crate::saga::{Action, OrderSaga, Outcome, PaymentFlow};
use crate::store::{self, Saved};

/// How patient the saga is.
#[derive(Debug, Clone)]
pub struct Policy {
    /// How long the gateway has to answer a charge, retries included.
    pub payment_deadline: Duration,
    /// How long any other step may take.
    pub step_deadline: Duration,
    /// Failures in a row before a forward step is given up (and undone).
    pub forward_attempts: u32,
    /// Failures in a row of an undo before the saga needs attention.
    pub attention_after: u32,
    /// First wait before trying a failed step again; doubles up to `max_backoff`.
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            payment_deadline: Duration::from_secs(10),
            step_deadline: Duration::from_secs(10),
            forward_attempts: 5,
            attention_after: 5,
            first_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(30),
        }
    }
}

impl Policy {
    /// Exponential backoff with full jitter after `attempts` failures.
    pub fn backoff(&self, attempts: u32) -> Duration {
        let ceiling = self
            .first_backoff
            .saturating_mul(1 << attempts.min(16))
            .min(self.max_backoff);
        ceiling.mul_f64(0.5 + fastrand::f64() / 2.0)
    }

    /// How long a driver holds a saga: longer than any one step takes, so
    /// that a lease runs out only under a driver that is gone or stuck.
    pub fn lease(&self) -> Duration {
        self.payment_deadline.max(self.step_deadline) * 2 + Duration::from_secs(5)
    }
}

/// How often a charge in flight looks for the customer's cancel.
const CANCEL_POLL: Duration = Duration::from_millis(200);

/// How long the saga's idempotency keys are remembered.
const KEY_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Commands of one phase (an order's reservations, or its commits) in
/// flight at once: an order of many lines sends them a few at a time, not
/// all at once.
pub const SIDE_BY_SIDE: usize = 8;

/// A charge whose deadline passed before the step started (a restart after a
/// crash) still asks the gateway once, this long, for an answer it may hold.
const LAST_LOOK: Duration = Duration::from_secs(2);

/// Runs sagas to their end.
#[derive(Debug, Clone)]
pub struct Driver<G> {
    pool: PgPool,
    bus: CommandBus,
    gateway: G,
    policy: Policy,
    /// Names this driver in the leases it takes.
    owner: String,
    saves: store::Saves,
    /// The database's clock: the times a saga keeps (its steps', its
    /// charge's start) are compared by other processes.
    clock: DbClock,
}

/// Whether a driver's last save gave the saga's lease up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lease {
    Held,
    Released,
}

impl<G: PaymentGateway + Clone> Driver<G> {
    pub fn new(pool: PgPool, gateway: G, policy: Policy) -> Self {
        let owner = format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
        Self {
            bus: CommandBus::new(pool.clone()),
            saves: store::Saves::new(pool.clone(), owner.clone(), policy.lease()),
            pool,
            gateway,
            policy,
            owner,
            clock: DbClock::default(),
        }
    }

    /// Reads times from `clock` (kept in step with the database's by its
    /// owner; see `platform::clock`).
    pub fn with_clock(mut self, clock: DbClock) -> Self {
        self.clock = clock;
        self
    }

    /// Snapshots aggregates every `every` events; see `CommandBus::with_snapshots`.
    pub fn with_snapshots(mut self, every: u64) -> Self {
        self.bus = self.bus.with_snapshots(every);
        self
    }

    /// Hands the driver's command bus the order as its `OrderPlaced` (its
    /// first event) leaves it, so that confirming or cancelling it needs no
    /// load; see `CommandBus::offer`.
    pub fn offer_placed(&self, placed: &OrderPlaced) {
        let mut order = Order::default();
        order.apply(domain::OrderEvent::OrderPlaced(placed.clone()));
        self.bus.offer(&placed.order_id.to_string(), order, 1);
    }

    /// The name this driver's leases carry.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// How long this driver's leases last.
    pub fn lease(&self) -> Duration {
        self.policy.lease()
    }

    /// Runs the order's saga until it ends or waits for a retry. Safe to call
    /// at any time, any number of times, from any process: a saga another
    /// driver holds is left to it.
    pub async fn drive(&self, order_id: &str) -> anyhow::Result<()> {
        self.drive_from(order_id, None).await
    }

    /// Like [`drive`](Self::drive), for a saga this driver leased when it
    /// stored it (`store::insert_leased`): it starts from `leased`, as
    /// stored, without reading the row again.
    /// `leased_at` is when the lease was taken: it runs from then.
    /// `placed`, the order's first event, if the caller has it: the order
    /// is then confirmed or cancelled without loading it (see
    /// [`offer_placed`](Self::offer_placed)).
    pub async fn drive_leased(
        &self,
        leased: store::Loaded,
        leased_at: std::time::Instant,
        placed: Option<&OrderPlaced>,
    ) -> anyhow::Result<()> {
        if let Some(placed) = placed {
            self.offer_placed(placed);
        }
        let order_id = leased.saga.order_id.clone();
        self.drive_from(&order_id, Some((leased, leased_at))).await
    }

    async fn drive_from(
        &self,
        order_id: &str,
        leased: Option<(store::Loaded, std::time::Instant)>,
    ) -> anyhow::Result<()> {
        let result = self.steps(order_id, leased).await;
        if !matches!(result, Ok(Lease::Released)) {
            // Let the next driver in at once rather than when the lease runs out.
            store::release(&self.pool, order_id, &self.owner).await?;
        }
        result.map(drop)
    }

    /// Steps the saga until it ends or waits. A step is saved when a replay
    /// from the last save would not find it: its outcome is not one that its
    /// idempotency key (or the gateway's charge key) gives back the same way
    /// (a refusal, a failure, a timeout), the saga ends or waits, the charge
    /// is about to start (its deadline must survive a restart), or the last
    /// save is a third of a lease old. Steps done in between are taken in
    /// again after a crash by doing them again under their keys.
    async fn steps(
        &self,
        order_id: &str,
        leased: Option<(store::Loaded, std::time::Instant)>,
    ) -> anyhow::Result<Lease> {
        // Claimed once; every save renews the lease, and a save refused
        // (another driver saved, or took the lease) sends us to claim again.
        // A save tells the version and the pending cancel, so the next step
        // starts from the saga in hand without reading the row again.
        let mut held = leased.is_some();
        // Shipments and returns taken in since the last save: the next save
        // is not skipped, or a replay from the last save would find them
        // done on the order and never learn what they captured.
        let mut took_in = false;
        let mut last_save = leased
            .as_ref()
            .map_or_else(std::time::Instant::now, |(_, at)| *at);
        let mut saved: Option<store::Loaded> = leased.map(|(loaded, _)| loaded);
        loop {
            let loaded = if let Some(row) = saved.take() {
                Some(row)
            } else if held {
                store::load(&self.pool, order_id).await?
            } else {
                last_save = std::time::Instant::now();
                store::claim(&self.pool, order_id, &self.owner, self.policy.lease()).await?
            };
            let Some(loaded) = loaded else {
                return Ok(Lease::Held);
            };
            held = true;
            let mut saga = loaded.saga;
            let mut version = loaded.version;
            if let Some(reason) = &loaded.cancel_reason
                && !saga.order_cancelled
            {
                // Steps taken since the last save, and the one the saga
                // was taking when the cancel came, may have landed without
                // being recorded (a crash, a timeout, a queued append).
                // Settle them in order first, so that the undo knows what
                // to undo. (A charge in flight is settled by the refund.)
                loop {
                    // A phase's steps run side by side: any of them may have
                    // landed, so all of them are settled before the undo.
                    let pending: Vec<Action> = saga
                        .next_actions()
                        .into_iter()
                        .filter(|action| {
                            !action.is_compensation()
                                && !action.is_work()
                                && *action != Action::Charge
                        })
                        .collect();
                    if pending.is_empty() {
                        break;
                    }
                    match self.settle_into(&mut saga, pending).await {
                        Ok(true) => {}
                        Ok(false) => break,
                        Err(()) => return self.retry_later(&saga, version).await,
                    }
                }
                saga.order_cancelled(reason, self.clock.now());
            }
            // The order has shipments or returns the saga has not taken in:
            // read them from the order as stored.
            if loaded.order_version > saga.order_version {
                match self.bus.load::<Order>(order_id).await {
                    Ok((order, at)) => {
                        if let Some(fulfilment) = order.fulfilment() {
                            let at = i64::try_from(at).unwrap_or(i64::MAX);
                            saga.take_in(fulfilment, at.max(loaded.order_version));
                            took_in = true;
                        }
                    }
                    Err(error) => {
                        tracing::warn!(order_id, %error, "cannot read the order's shipments and returns; will retry");
                        saga.attempts += 1;
                        return self.retry_later(&saga, version).await;
                    }
                }
            }
            // A reservation sent without an answer may still land (from a
            // queue, after the saga stopped waiting): before the undo goes
            // on, learn whether it did, or fence it so that it never does.
            let doubtful = saga.to_settle();
            if !doubtful.is_empty() && self.settle_into(&mut saga, doubtful).await.is_err() {
                return self.retry_later(&saga, version).await;
            }
            let actions = saga.next_actions();
            let Some(first) = actions.first().cloned() else {
                // Nothing to do, but a cancel may have just been taken in.
                return Ok(self
                    .save(&saga, version, Duration::ZERO)
                    .await
                    .map(|saved| lease_after(&saved))?);
            };
            let mut outcomes = if actions.len() == 1 {
                let span = saga.step_span(&first);
                let Some(outcome) = self
                    .execute(&mut saga, &mut version, &mut last_save, &first)
                    .instrument(span)
                    .await?
                else {
                    // Someone else saved the saga meanwhile: start over from it.
                    held = false;
                    continue;
                };
                vec![(first, outcome)]
            } else {
                // Every line's reservation, or every line's commit: commands
                // on products of their own, side by side.
                use futures::StreamExt;
                let commands: Vec<_> = actions
                    .iter()
                    .map(|action| {
                        self.bounded_command(&saga, action)
                            .instrument(saga.step_span(action))
                    })
                    .collect();
                let done: Vec<Outcome> = futures::stream::iter(commands)
                    .buffered(SIDE_BY_SIDE)
                    .collect()
                    .await;
                actions.into_iter().zip(done).collect::<Vec<_>>()
            };
            // What went through is taken in first, so that the count of
            // failures in a row stands after it.
            outcomes.sort_by_key(|(_, outcome)| {
                !matches!(
                    outcome,
                    Outcome::Done | Outcome::Approved { .. } | Outcome::AlreadySold
                )
            });
            for (action, outcome) in &outcomes {
                if let Outcome::Failed { detail } | Outcome::Inconsistent { detail } = outcome {
                    tracing::warn!(order_id, step = %action.name(), %detail, "saga step failed; will retry");
                }
            }
            let replayable = outcomes
                .iter()
                .all(|(_, outcome)| matches!(outcome, Outcome::Done | Outcome::Approved { .. }));
            // Steps that failed side by side are one failed try, not many.
            if let Some(failed) = saga.record_together(outcomes, self.clock.now())
                && saga.attempts >= self.policy.forward_attempts
            {
                self.give_up(&mut saga, &failed).await;
            }
            let wait = if saga.attempts > 0 {
                self.policy.backoff(saga.attempts)
            } else {
                Duration::ZERO
            };
            let ended = saga.is_over();
            let lease_ageing = last_save.elapsed() > self.policy.lease() / 3;
            if replayable && !ended && wait.is_zero() && !lease_ageing && !took_in {
                // Not saved: a replay from the last save does this step
                // again under its key and finds it done.
                saved = Some(store::Loaded {
                    saga,
                    version,
                    cancel_reason: loaded.cancel_reason,
                    order_version: loaded.order_version,
                });
                continue;
            }
            last_save = std::time::Instant::now();
            took_in = false;
            let Saved::Saved {
                version,
                cancel_reason,
                order_version,
                released,
            } = self.save(&saga, version, wait).await?
            else {
                held = false;
                continue;
            };
            if released {
                if ended {
                    tracing::info!(order_id, state = saga.state.as_str(), reason = ?saga.reason, "saga ended");
                    metrics::counter!("sagas_ended_total", "state" => saga.state.as_str())
                        .increment(1);
                    if let Some(placed_at) = saga.placed_at {
                        let took = (self.clock.now() - placed_at).to_std().unwrap_or_default();
                        metrics::histogram!("saga_duration_seconds", "outcome" => saga.state.as_str())
                            .record(took.as_secs_f64());
                    }
                }
                // The saga waits for a retry (the due-scan comes back for
                // it), or it ended with no cancel left to take in.
                return Ok(Lease::Released);
            }
            saved = Some(store::Loaded {
                saga,
                version,
                cancel_reason,
                order_version,
            });
        }
    }

    /// A forward step failed too often: learn whether it landed after all
    /// (then it is done), else undo. A step that cannot even be settled now
    /// stays next, to be tried again.
    async fn give_up(&self, saga: &mut OrderSaga, action: &Action) {
        if action.is_compensation() {
            return;
        }
        if *action == Action::Charge {
            // The refund asks the gateway what it took.
            saga.give_up(action, self.clock.now());
            return;
        }
        match self.settle(saga, action).await {
            Ok(true) => saga.settled(action, true, self.clock.now()),
            Ok(false) => {
                saga.settled(action, false, self.clock.now());
                saga.give_up(action, self.clock.now());
            }
            Err(detail) => {
                tracing::warn!(order_id = %saga.order_id, step = %action.name(), %detail, "cannot settle a step given up; will retry");
            }
        }
    }

    /// Settles each of `actions` (steps whose outcome is unknown) into
    /// `saga`: whether every one had landed. A step the store cannot settle
    /// now is recorded as failed, and the caller retries later.
    async fn settle_into(&self, saga: &mut OrderSaga, actions: Vec<Action>) -> Result<bool, ()> {
        let mut all_landed = true;
        for action in actions {
            match self.settle(saga, &action).await {
                Ok(landed) => {
                    saga.settled(&action, landed, self.clock.now());
                    all_landed &= landed;
                }
                Err(detail) => {
                    tracing::warn!(order_id = %saga.order_id, step = %action.name(), %detail, "cannot settle a step; will retry");
                    saga.record(&action, Outcome::Failed { detail }, self.clock.now());
                    return Err(());
                }
            }
        }
        Ok(all_landed)
    }

    /// Saves `saga` to be driven again after the backoff its failures call for.
    async fn retry_later(&self, saga: &OrderSaga, version: i64) -> anyhow::Result<Lease> {
        let wait = self.policy.backoff(saga.attempts);
        Ok(self
            .save(saga, version, wait)
            .await
            .map(|saved| lease_after(&saved))?)
    }

    /// Saves `saga` over `version`; it is due again after `wait` (which,
    /// when not zero, means the driver stops after this save).
    async fn save(&self, saga: &OrderSaga, version: i64, wait: Duration) -> sqlx::Result<Saved> {
        self.saves
            .save(store::Save {
                saga: saga.clone(),
                expected: version,
                retry_after: wait,
                needs_attention: saga.needs_attention(self.policy.attention_after),
                waits: !wait.is_zero(),
            })
            .await
    }

    /// Does `action`. `None`: the saga changed under us before a charge
    /// started, so the caller reloads it.
    async fn execute(
        &self,
        saga: &mut OrderSaga,
        version: &mut i64,
        last_save: &mut std::time::Instant,
        action: &Action,
    ) -> anyhow::Result<Option<Outcome>> {
        if *action == Action::Charge {
            // The deadline runs from the first try and survives restarts.
            if saga.action_started_at.is_none() {
                saga.action_started_at = Some(self.clock.now());
                *last_save = std::time::Instant::now();
                match self.save(saga, *version, Duration::ZERO).await? {
                    // A cancel that came while the saga reserved (those steps
                    // are not saved, so it learns of it only now) stops it
                    // before any money moves: the caller reloads the saga,
                    // which then undoes.
                    Saved::Saved {
                        cancel_reason: Some(_),
                        ..
                    } if !saga.order_cancelled => return Ok(None),
                    Saved::Saved { version: saved, .. } => *version = saved,
                    Saved::Stale => return Ok(None),
                }
            } else if let Some(recorded) = self.recorded_answer(saga).await {
                // Asked before (a retry, or a crash after the answer was
                // recorded but not saved, possibly long past the deadline):
                // the ledger's record of the gateway's answer stands.
                return Ok(Some(recorded));
            }
            // A customer's cancel does not wait for a gateway that hangs:
            // the caller reloads the saga, which then undoes (and voids the
            // charge at the gateway).
            return tokio::select! {
                outcome = self.charge_within(saga) => Ok(Some(outcome)),
                cancel = self.cancel_arrives(&saga.order_id) => cancel.map(|()| None),
            };
        }
        Ok(Some(self.bounded_command(saga, action).await))
    }

    /// [`command`](Self::command) within the step deadline. A command that
    /// did not answer in time may still land: its outcome is unknown, so it
    /// is tried again under the same key (which finds it if it landed), or
    /// settled before it is given up.
    ///
    /// A command that keeps losing the race for a busy aggregate (every
    /// order of a sale reserving one product) did not land: it is tried
    /// again at once, until the deadline, rather than counted as a failure
    /// after the bus's own few tries.
    async fn bounded_command(&self, saga: &OrderSaga, action: &Action) -> Outcome {
        let deadline = self.policy.step_deadline;
        let mut contended = false;
        let attempt = async {
            loop {
                match self.command(saga, action).await {
                    Outcome::Contended => {
                        contended = true;
                        tokio::time::sleep(Duration::from_millis(fastrand::u64(5..50))).await;
                    }
                    other => return other,
                }
            }
        };
        let answered = tokio::time::timeout(deadline, attempt).await;
        match answered {
            Ok(outcome) => outcome,
            Err(_) if contended => Outcome::Contended,
            Err(_) => Outcome::Failed {
                detail: format!("no answer within {deadline:?}"),
            },
        }
    }

    /// Whether the forward command `action` landed; afterwards it cannot
    /// land any more. `Err`: the store could not say (try again later).
    async fn settle(&self, saga: &OrderSaga, action: &Action) -> Result<bool, String> {
        let claim = claim(action.key(&saga.order_id));
        let settled = async {
            match action {
                Action::ReserveStock { sku, .. } | Action::CommitReservation { sku } => {
                    self.bus.settle::<Product>(sku, &claim).await.map_err(text)
                }
                Action::RequestCharge => self
                    .bus
                    .settle::<Payment>(&saga.order_id, &claim)
                    .await
                    .map_err(text),
                Action::ConfirmOrder => self
                    .bus
                    .settle::<Order>(&saga.order_id, &claim)
                    .await
                    .map_err(text),
                other => Err(format!("{} is not settled by key", other.name())),
            }
        };
        match tokio::time::timeout(self.policy.step_deadline, settled).await {
            Ok(Ok(Settled::Landed(_))) => Ok(true),
            Ok(Ok(Settled::Never)) => Ok(false),
            Ok(Err(detail)) => Err(detail),
            Err(_) => Err("the store did not answer in time".into()),
        }
    }

    /// Returns once the order's cancel has arrived (polling the saga's row).
    async fn cancel_arrives(&self, order_id: &str) -> anyhow::Result<()> {
        loop {
            tokio::time::sleep(CANCEL_POLL).await;
            let cancel: Option<String> =
                sqlx::query_scalar("SELECT cancel_reason FROM sagas WHERE order_id = $1")
                    .bind(order_id)
                    .fetch_optional(&self.pool)
                    .await?
                    .flatten();
            if cancel.is_some() {
                return Ok(());
            }
        }
    }

    /// The gateway's answer as the payment's ledger recorded it, if it did.
    async fn recorded_answer(&self, saga: &OrderSaga) -> Option<Outcome> {
        let (payment, _) = self.bus.load::<Payment>(&saga.order_id).await.ok()?;
        if saga.flow == PaymentFlow::Authorize {
            let first = payment
                .authorizations()
                .iter()
                .find(|authorization| authorization.attempt == 1)?;
            return match first.status {
                AuthorizationStatus::Authorized | AuthorizationStatus::Expired => {
                    Some(Outcome::Approved {
                        reference: "as recorded in the ledger".into(),
                    })
                }
                AuthorizationStatus::Declined => Some(Outcome::Declined {
                    reason: "declined, as recorded in the ledger".into(),
                }),
                AuthorizationStatus::Requested | AuthorizationStatus::Voided => None,
            };
        }
        match payment.status()? {
            PaymentStatus::Approved => Some(Outcome::Approved {
                reference: "as recorded in the ledger".into(),
            }),
            PaymentStatus::Declined => Some(Outcome::Declined {
                reason: "declined, as recorded in the ledger".into(),
            }),
            // Not answers to a charge: a payment of authorizations.
            PaymentStatus::Requested
            | PaymentStatus::Refunded
            | PaymentStatus::Authorized
            | PaymentStatus::Expired
            | PaymentStatus::Voided => None,
        }
    }

    /// The charge, bounded by what is left of the payment deadline. Only
    /// the gateway's own decision is written to the payment's ledger: no
    /// answer in time is a timeout for the saga (which then undoes, and the
    /// refund learns what the gateway did), never a decline on the record.
    async fn charge_within(&self, saga: &OrderSaga) -> Outcome {
        let started = saga.action_started_at.unwrap_or_else(|| self.clock.now());
        let spent = (self.clock.now() - started).to_std().unwrap_or_default();
        let left = self.policy.payment_deadline.saturating_sub(spent);
        // Past the deadline already (a restart): one last look, for an answer
        // the gateway gave before the crash.
        let window = if left.is_zero() { LAST_LOOK } else { left };
        let answer = tokio::time::timeout(window, self.charge(saga)).await;
        match answer {
            Ok(Ok(Answered::Approved {
                reference,
                expires_at,
            })) => {
                self.bounded(self.record_approval(saga, reference, expires_at))
                    .await
            }
            Ok(Ok(Answered::Declined { reason })) => {
                self.bounded(self.record_decline(saga, reason)).await
            }
            // Refunded or voided first: nothing is held, and the undo settles it.
            Ok(Ok(Answered::Undone)) => Outcome::TimedOut,
            Ok(Err(_)) if left.is_zero() => Outcome::TimedOut,
            Ok(Err(unavailable)) => Outcome::Failed {
                detail: unavailable.to_string(),
            },
            Err(_) => Outcome::TimedOut,
        }
    }

    /// `record` within the step deadline: recording the gateway's answer is a
    /// step of its own.
    async fn bounded(&self, record: impl std::future::Future<Output = Outcome>) -> Outcome {
        let deadline = self.policy.step_deadline;
        tokio::time::timeout(deadline, record)
            .await
            .unwrap_or_else(|_| Outcome::Failed {
                detail: format!("the ledger did not answer within {deadline:?}"),
            })
    }

    /// Records the gateway's decline on the payment, under its own key.
    async fn record_decline(&self, saga: &OrderSaga, reason: String) -> Outcome {
        // A gateway's reason the domain cannot take (blank, say) still ends
        // the payment: the decline is what matters.
        let decline = match reason_of(&reason).or_else(|_| reason_of("declined by the gateway")) {
            Ok(reason) if saga.flow == PaymentFlow::Authorize => {
                PaymentCommand::DeclineAuthorization { attempt: 1, reason }
            }
            Ok(reason) => PaymentCommand::DeclineCharge { reason },
            Err(refused) => return refused,
        };
        let context = context(saga, Action::decline_key(&saga.order_id));
        match self.run::<Payment>(&saga.order_id, decline, &context).await {
            Ok(_)
            | Err(CommandError::Refused(
                PaymentError::AlreadyDeclined
                | PaymentError::AuthorizationIs {
                    status: AuthorizationStatus::Declined,
                    ..
                },
            )) => Outcome::Declined { reason },
            Err(CommandError::Refused(refusal)) => Outcome::Inconsistent {
                detail: format!("the gateway declined, but the ledger says: {refusal}"),
            },
            Err(other) => failed(other),
        }
    }

    /// Records the gateway's approval on the payment, under its own key.
    async fn record_approval(
        &self,
        saga: &OrderSaga,
        reference: String,
        expires_at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Outcome {
        let approve = if saga.flow == PaymentFlow::Authorize {
            PaymentCommand::RecordAuthorization {
                attempt: 1,
                provider_reference: reference.clone(),
                expires_at,
            }
        } else {
            PaymentCommand::ApproveCharge {
                provider_reference: reference.clone(),
            }
        };
        let context = context(saga, Action::approval_key(&saga.order_id));
        match self.run::<Payment>(&saga.order_id, approve, &context).await {
            Ok(_)
            | Err(CommandError::Refused(
                PaymentError::AlreadyApproved
                | PaymentError::AuthorizationIs {
                    status: AuthorizationStatus::Authorized | AuthorizationStatus::Expired,
                    ..
                },
            )) => Outcome::Approved { reference },
            Err(CommandError::Refused(refusal)) => Outcome::Inconsistent {
                detail: format!("the gateway approved, but the ledger says: {refusal}"),
            },
            Err(other) => failed(other),
        }
    }

    /// Asks the gateway for the charge, or the first authorization,
    /// trying again after transient failures with backoff.
    async fn charge(&self, saga: &OrderSaga) -> Result<Answered, crate::gateway::Unavailable> {
        let authorizes = saga.flow == PaymentFlow::Authorize;
        let request = ChargeRequest {
            key: if authorizes {
                authorization_key(&saga.order_id, 1)
            } else {
                charge_key(&saga.order_id)
            },
            amount_cents: saga.amount_cents,
            currency: saga.currency.clone(),
            payment_method: saga.payment_method.clone(),
        };
        let mut attempt = 0;
        loop {
            let answer = if authorizes {
                self.gateway.authorize(&request).await.map(Answered::from)
            } else {
                self.gateway.charge(&request).await.map(Answered::from)
            };
            match answer {
                Ok(answer) => return Ok(answer),
                Err(error) if attempt + 1 >= self.policy.forward_attempts => return Err(error),
                Err(error) => {
                    attempt += 1;
                    tracing::debug!(order_id = %saga.order_id, %error, attempt, "charge failed; retrying");
                    tokio::time::sleep(self.policy.backoff(attempt)).await;
                }
            }
        }
    }

    /// The undo of the payment: the gateway refunds what it captured under
    /// the charge's key (or voids it), and the ledger then records exactly
    /// what the gateway says happened. A disagreement is flagged, not passed.
    async fn refund(&self, saga: &OrderSaga) -> Outcome {
        if saga.flow == PaymentFlow::Authorize {
            return self.void(saga).await;
        }
        let answer = match self.gateway.refund(&charge_key(&saga.order_id)).await {
            Ok(answer) => answer,
            Err(error) => {
                return Outcome::Failed {
                    detail: error.to_string(),
                };
            }
        };
        let ledger = match self.bus.load::<Payment>(&saga.order_id).await {
            Ok((payment, _)) => payment.status(),
            Err(error) => {
                return Outcome::Failed {
                    detail: error.to_string(),
                };
            }
        };
        let why = saga.reason.as_deref().unwrap_or("cancelled");
        // A refund of another amount is not this order's charge (its key was
        // used by someone else first): nothing of it goes on the record.
        if let RefundAnswer::Refunded { amount_cents, .. } = &answer
            && *amount_cents != Some(saga.amount_cents)
        {
            return Outcome::Inconsistent {
                detail: format!(
                    "the gateway refunded {amount_cents:?} under the order's key, not its total of {}",
                    saga.amount_cents
                ),
            };
        }
        match (answer, ledger) {
            (RefundAnswer::Refunded { .. }, Some(PaymentStatus::Refunded)) => Outcome::Done,
            (RefundAnswer::Refunded { .. }, Some(PaymentStatus::Approved)) => {
                self.record_refund(saga, why).await
            }
            // Captured after the saga stopped waiting: the ledger learns of
            // the capture, then of its refund.
            (RefundAnswer::Refunded { reference, .. }, Some(PaymentStatus::Requested)) => {
                let reference = reference.unwrap_or_else(|| "captured late".into());
                match self.record_approval(saga, reference, None).await {
                    Outcome::Approved { .. } => self.record_refund(saga, why).await,
                    other => other,
                }
            }
            (RefundAnswer::Refunded { .. }, ledger) => Outcome::Inconsistent {
                detail: format!(
                    "the gateway refunded a capture, but the ledger holds the payment {}",
                    describe(ledger)
                ),
            },
            (RefundAnswer::NothingCaptured, None | Some(PaymentStatus::Declined)) => Outcome::Done,
            // The charge is voided: the ledger closes it as declined.
            (RefundAnswer::NothingCaptured, Some(PaymentStatus::Requested)) => {
                let decline = match reason_of(&format!("voided: {why}")) {
                    Ok(reason) => PaymentCommand::DeclineCharge { reason },
                    Err(refused) => return refused,
                };
                let context = context(saga, Action::decline_key(&saga.order_id));
                match self.run::<Payment>(&saga.order_id, decline, &context).await {
                    Ok(_) | Err(CommandError::Refused(PaymentError::AlreadyDeclined)) => {
                        Outcome::Done
                    }
                    // Approved meanwhile by a late answer: refund it next time.
                    Err(CommandError::Refused(refusal)) => Outcome::Failed {
                        detail: format!("cannot close the voided charge: {refusal}"),
                    },
                    Err(other) => failed(other),
                }
            }
            (RefundAnswer::NothingCaptured, ledger) => Outcome::Inconsistent {
                detail: format!(
                    "the ledger holds the payment {}, but the gateway says nothing was captured",
                    describe(ledger)
                ),
            },
        }
    }

    /// The undo of an authorization: the gateway voids what it holds (or
    /// fences a key it never authorized), and the ledger closes it.
    async fn void(&self, saga: &OrderSaga) -> Outcome {
        let attempt = saga.attempt.max(1);
        if let Err(error) = self
            .gateway
            .void(&authorization_key(&saga.order_id, attempt))
            .await
        {
            return Outcome::Failed {
                detail: error.to_string(),
            };
        }
        let void = PaymentCommand::VoidAuthorization { attempt };
        let context = context(saga, format!("saga:{}:voided:{attempt}", saga.order_id));
        match self.run::<Payment>(&saga.order_id, void, &context).await {
            // Declined, expired or voided: nothing is held.
            Ok(_) | Err(CommandError::Refused(PaymentError::AuthorizationIs { .. })) => {
                Outcome::Done
            }
            Err(CommandError::Refused(refusal)) => Outcome::Inconsistent {
                detail: format!("the gateway voided, but the ledger says: {refusal}"),
            },
            Err(other) => failed(other),
        }
    }

    async fn record_refund(&self, saga: &OrderSaga, why: &str) -> Outcome {
        let refund = match reason_of(why) {
            Ok(reason) => PaymentCommand::RefundPayment { reason },
            Err(refused) => return refused,
        };
        let context = context(saga, Action::Refund.key(&saga.order_id));
        match self.run::<Payment>(&saga.order_id, refund, &context).await {
            Ok(_) | Err(CommandError::Refused(PaymentError::AlreadyRefunded)) => Outcome::Done,
            Err(CommandError::Refused(refusal)) => Outcome::Inconsistent {
                detail: format!("the gateway refunded, but the ledger says: {refusal}"),
            },
            Err(other) => failed(other),
        }
    }

    /// Every action but the charge: one command (the refund asks the
    /// gateway first). Refusals that say the step's effect is already there
    /// count as done.
    async fn command(&self, saga: &OrderSaga, action: &Action) -> Outcome {
        let order_id = match OrderId::parse(&saga.order_id) {
            Ok(id) => id,
            Err(error) => {
                return Outcome::Refused {
                    detail: error.to_string(),
                };
            }
        };
        let context = context(saga, action.key(&saga.order_id));
        match action {
            Action::ReserveStock { sku, quantity } => {
                let reserve = ProductCommand::ReserveStock {
                    order_id,
                    quantity: *quantity,
                };
                match self.run::<Product>(sku, reserve, &context).await {
                    // The order holds it already: an earlier try landed.
                    Err(CommandError::Refused(ProductError::AlreadyReserved { .. })) => {
                        Outcome::Done
                    }
                    other => outcome_of(other),
                }
            }
            Action::CommitReservation { sku } => {
                let commit = ProductCommand::CommitReservation { order_id };
                outcome_of(self.run::<Product>(sku, commit, &context).await)
            }
            Action::ReleaseReservation { sku } => {
                let release = ProductCommand::ReleaseReservation { order_id };
                match self.run::<Product>(sku, release, &context).await {
                    // Nothing open: released already, never made, or
                    // committed by a commit whose answer was lost. The
                    // commit's key tells (and keeps a late one from landing).
                    Err(CommandError::Refused(ProductError::NoReservation { .. })) => {
                        let commit = Action::CommitReservation { sku: sku.clone() };
                        match self.settle(saga, &commit).await {
                            Ok(true) => Outcome::AlreadySold,
                            Ok(false) => Outcome::Done,
                            Err(detail) => Outcome::Failed { detail },
                        }
                    }
                    other => outcome_of(other),
                }
            }
            Action::ReturnStock { sku, quantity } => {
                let quantity = *quantity;
                let give_back = ProductCommand::ReturnSoldStock { order_id, quantity };
                outcome_of(self.run::<Product>(sku, give_back, &context).await)
            }
            Action::RequestCharge => {
                let amount = match Currency::parse(&saga.currency)
                    .and_then(|currency| Money::price(saga.amount_cents, currency))
                {
                    Ok(amount) => amount,
                    Err(error) => {
                        return Outcome::Refused {
                            detail: error.to_string(),
                        };
                    }
                };
                let payment_method = match PaymentMethod::parse(&saga.payment_method) {
                    Ok(method) => method,
                    Err(error) => {
                        return Outcome::Refused {
                            detail: error.to_string(),
                        };
                    }
                };
                let command = if saga.flow == PaymentFlow::Authorize {
                    PaymentCommand::RequestAuthorization {
                        order_id,
                        attempt: 1,
                        amount,
                        payment_method,
                    }
                } else {
                    PaymentCommand::RequestCharge {
                        order_id,
                        amount,
                        payment_method,
                    }
                };
                match self
                    .bus
                    .execute::<Payment>(&saga.order_id, command, &context, Expect::New)
                    .await
                {
                    // Asked before a crash cut the saga short.
                    Err(CommandError::Refused(PaymentError::AlreadyRequested)) => Outcome::Done,
                    other => outcome_of(other),
                }
            }
            Action::Refund => self.refund(saga).await,
            Action::ConfirmOrder => {
                match self
                    .run::<Order>(&saga.order_id, OrderCommand::ConfirmOrder, &context)
                    .await
                {
                    Err(CommandError::Refused(OrderError::AlreadyConfirmed)) => Outcome::Done,
                    other => outcome_of(other),
                }
            }
            Action::CancelOrder { reason } => {
                let cancel = match reason_of(reason) {
                    Ok(reason) => OrderCommand::CancelOrder {
                        reason,
                        customer: None,
                    },
                    Err(refused) => return refused,
                };
                match self.run::<Order>(&saga.order_id, cancel, &context).await {
                    Err(CommandError::Refused(OrderError::AlreadyCancelled)) => Outcome::Done,
                    other => outcome_of(other),
                }
            }
            Action::Charge => Outcome::Failed {
                detail: "the charge runs on its own path".into(),
            },
            work => self.work(saga, order_id, work, &context).await,
        }
    }

    /// A step of a shipment or a return.
    async fn work(
        &self,
        saga: &OrderSaga,
        order_id: OrderId,
        action: &Action,
        context: &CommandContext,
    ) -> Outcome {
        let id = &saga.order_id;
        match action {
            Action::Capture {
                shipment_id,
                attempt,
                amount_cents,
            } => {
                let Ok(shipment) = ShipmentId::parse(shipment_id) else {
                    return refused_id(shipment_id);
                };
                let answer = self
                    .gateway
                    .capture(
                        &authorization_key(id, *attempt),
                        &capture_key(id, shipment_id, *attempt),
                        *amount_cents,
                    )
                    .await;
                match answer {
                    Err(error) => Outcome::Failed {
                        detail: error.to_string(),
                    },
                    Ok(CaptureAnswer::Captured { reference }) => {
                        let record = PaymentCommand::RecordCapture {
                            shipment_id: shipment,
                            attempt: *attempt,
                            amount_cents: *amount_cents,
                            provider_reference: reference.clone(),
                        };
                        let context =
                            self::context(saga, format!("saga:{id}:captured:{shipment_id}"));
                        match self.run::<Payment>(id, record, &context).await {
                            Ok(_) | Err(CommandError::Refused(PaymentError::AlreadyCaptured)) => {
                                Outcome::Approved { reference }
                            }
                            Err(CommandError::Refused(refusal)) => Outcome::Inconsistent {
                                detail: format!(
                                    "the gateway captured, but the ledger says: {refusal}"
                                ),
                            },
                            Err(other) => failed(other),
                        }
                    }
                    Ok(CaptureAnswer::Declined { reason }) => {
                        let reason_text = reason.clone();
                        let reason = match reason_of(&reason)
                            .or_else(|_| reason_of("declined by the card's issuer"))
                        {
                            Ok(reason) => reason,
                            Err(refused) => return refused,
                        };
                        let record = PaymentCommand::DeclineCapture {
                            shipment_id: shipment,
                            attempt: *attempt,
                            reason,
                        };
                        let context = self::context(
                            saga,
                            format!("saga:{id}:capture-declined:{shipment_id}"),
                        );
                        match self.run::<Payment>(id, record, &context).await {
                            Ok(_) => Outcome::Declined {
                                reason: reason_text,
                            },
                            Err(CommandError::Refused(refusal)) => Outcome::Inconsistent {
                                detail: format!(
                                    "the gateway declined a capture, but the ledger says: {refusal}"
                                ),
                            },
                            Err(other) => failed(other),
                        }
                    }
                    Ok(CaptureAnswer::Expired) => {
                        let record = PaymentCommand::ExpireAuthorization { attempt: *attempt };
                        let context = self::context(saga, format!("saga:{id}:expired:{attempt}"));
                        match self.run::<Payment>(id, record, &context).await {
                            Ok(_)
                            | Err(CommandError::Refused(PaymentError::AuthorizationIs {
                                status: AuthorizationStatus::Expired,
                                ..
                            })) => Outcome::Expired,
                            Err(CommandError::Refused(refusal)) => Outcome::Inconsistent {
                                detail: format!(
                                    "the gateway says the authorization expired, but the ledger says: {refusal}"
                                ),
                            },
                            Err(other) => failed(other),
                        }
                    }
                }
            }
            Action::Reauthorize {
                attempt,
                amount_cents,
            } => {
                self.reauthorize(saga, order_id, *attempt, *amount_cents, context)
                    .await
            }
            Action::CommitShipment { sku, quantity, .. } => {
                let commit = ProductCommand::CommitPart {
                    order_id,
                    quantity: *quantity,
                };
                outcome_of(self.run::<Product>(sku, commit, context).await)
            }
            Action::MarkShipped { shipment_id } => {
                let Ok(shipment_id) = ShipmentId::parse(shipment_id) else {
                    return refused_id(shipment_id);
                };
                let shipped = OrderCommand::MarkShipped {
                    shipment_id,
                    at: self.clock.now(),
                };
                match self.run::<Order>(id, shipped, context).await {
                    Err(CommandError::Refused(OrderError::ShipmentNotPending {
                        status: ShipmentStatus::Shipped | ShipmentStatus::Delivered,
                    })) => Outcome::Done,
                    other => outcome_of(other),
                }
            }
            Action::FailShipment {
                shipment_id,
                reason,
            } => {
                let Ok(shipment_id) = ShipmentId::parse(shipment_id) else {
                    return refused_id(shipment_id);
                };
                let reason = match reason_of(reason) {
                    Ok(reason) => reason,
                    Err(refused) => return refused,
                };
                let failed_shipment = OrderCommand::FailShipment {
                    shipment_id,
                    reason,
                };
                match self.run::<Order>(id, failed_shipment, context).await {
                    Err(CommandError::Refused(OrderError::ShipmentNotPending {
                        status: ShipmentStatus::Failed,
                    })) => Outcome::Done,
                    other => outcome_of(other),
                }
            }
            Action::RefundReturn {
                return_id,
                shipment_id,
                attempt,
                amount_cents,
            } => {
                let (Ok(shipment), Ok(returned)) =
                    (ShipmentId::parse(shipment_id), ReturnId::parse(return_id))
                else {
                    return refused_id(return_id);
                };
                let reference = match self
                    .gateway
                    .refund_capture(
                        &capture_key(id, shipment_id, *attempt),
                        &format!("order-{id}-refund-{return_id}-{shipment_id}"),
                        *amount_cents,
                    )
                    .await
                {
                    Ok(reference) => reference,
                    Err(error) => {
                        return Outcome::Failed {
                            detail: error.to_string(),
                        };
                    }
                };
                let record = PaymentCommand::RecordRefund {
                    shipment_id: shipment,
                    return_id: returned,
                    amount_cents: *amount_cents,
                    provider_reference: reference,
                };
                let context = self::context(
                    saga,
                    format!("saga:{id}:refunded:{return_id}:{shipment_id}"),
                );
                match self.run::<Payment>(id, record, &context).await {
                    Ok(_) | Err(CommandError::Refused(PaymentError::RefundExists)) => Outcome::Done,
                    Err(CommandError::Refused(refusal)) => Outcome::Inconsistent {
                        detail: format!("the gateway refunded, but the ledger says: {refusal}"),
                    },
                    Err(other) => failed(other),
                }
            }
            Action::Restock { sku, quantity, .. } => {
                let restock = ProductCommand::ReturnSoldStock {
                    order_id,
                    quantity: *quantity,
                };
                outcome_of(self.run::<Product>(sku, restock, context).await)
            }
            other => Outcome::Failed {
                detail: format!("{} is not a shipment's or a return's step", other.name()),
            },
        }
    }

    /// Authorizes what is left to capture after authorization
    /// `attempt - 1` expired: asks for it on the payment, at the gateway,
    /// and records the gateway's answer, each under a key of its own.
    async fn reauthorize(
        &self,
        saga: &OrderSaga,
        order_id: OrderId,
        attempt: u32,
        amount_cents: i64,
        context: &CommandContext,
    ) -> Outcome {
        let id = &saga.order_id;
        let (amount, payment_method) = match Currency::parse(&saga.currency)
            .and_then(|currency| Money::price(amount_cents, currency))
            .and_then(|amount| PaymentMethod::parse(&saga.payment_method).map(|m| (amount, m)))
        {
            Ok(parsed) => parsed,
            Err(error) => {
                return Outcome::Refused {
                    detail: error.to_string(),
                };
            }
        };
        let request = PaymentCommand::RequestAuthorization {
            order_id,
            attempt,
            amount,
            payment_method,
        };
        match self.run::<Payment>(id, request, context).await {
            Ok(_) => {}
            Err(CommandError::Refused(refusal)) => {
                return Outcome::Inconsistent {
                    detail: format!("a new authorization cannot be asked for: {refusal}"),
                };
            }
            Err(other) => return failed(other),
        }
        let request = ChargeRequest {
            key: authorization_key(id, attempt),
            amount_cents,
            currency: saga.currency.clone(),
            payment_method: saga.payment_method.clone(),
        };
        let (record, answer) = match self.gateway.authorize(&request).await {
            Err(error) => {
                return Outcome::Failed {
                    detail: error.to_string(),
                };
            }
            Ok(AuthorizationAnswer::Voided) => {
                return Outcome::Inconsistent {
                    detail: "the new authorization was voided before it was answered".into(),
                };
            }
            Ok(AuthorizationAnswer::Authorized {
                reference,
                expires_at,
            }) => (
                PaymentCommand::RecordAuthorization {
                    attempt,
                    provider_reference: reference.clone(),
                    expires_at,
                },
                Outcome::Approved { reference },
            ),
            Ok(AuthorizationAnswer::Declined { reason }) => {
                let recorded =
                    match reason_of(&reason).or_else(|_| reason_of("declined by the gateway")) {
                        Ok(recorded) => recorded,
                        Err(refused) => return refused,
                    };
                (
                    PaymentCommand::DeclineAuthorization {
                        attempt,
                        reason: recorded,
                    },
                    Outcome::Declined { reason },
                )
            }
        };
        let context = self::context(saga, format!("saga:{id}:authorized:{attempt}"));
        match self.run::<Payment>(id, record, &context).await {
            Ok(_) => answer,
            Err(CommandError::Refused(PaymentError::AuthorizationIs { status, .. }))
                if status != AuthorizationStatus::Requested =>
            {
                answer
            }
            Err(CommandError::Refused(refusal)) => Outcome::Inconsistent {
                detail: format!(
                    "the gateway answered the new authorization, but the ledger says: {refusal}"
                ),
            },
            Err(other) => failed(other),
        }
    }

    async fn run<A>(
        &self,
        id: &str,
        command: A::Command,
        context: &CommandContext,
    ) -> Result<command_bus::Outcome, CommandError<A::Error>>
    where
        A: Aggregate<Services = ()> + 'static,
        A::Command: Clone + Send + Sync,
        A::Error: Send,
    {
        self.bus
            .execute::<A>(id, command, context, Expect::Existing)
            .await
    }
}

/// Whether the driver still holds a saga after `saved`.
fn lease_after(saved: &Saved) -> Lease {
    match saved {
        Saved::Saved { released: true, .. } => Lease::Released,
        _ => Lease::Held,
    }
}

/// The command's metadata: the order's correlation id, and the step's key
/// as causation and idempotency key.
fn context(saga: &OrderSaga, key: String) -> CommandContext {
    CommandContext {
        correlation_id: saga.correlation_id.clone(),
        causation_id: key.clone(),
        idempotency: Some(claim(key)),
        expected_version: None,
    }
}

/// The claim of a saga command's key: the key itself is the fingerprint,
/// since every step has a key of its own.
fn claim(key: String) -> IdempotencyClaim {
    IdempotencyClaim {
        fingerprint: key.clone(),
        key: IdempotencyKey::internal(key),
        ttl: KEY_TTL,
    }
}

/// The gateway's key for the order's one charge.
pub fn charge_key(order_id: &str) -> String {
    format!("order-{order_id}")
}

/// The gateway's key for the order's authorization `attempt`.
pub fn authorization_key(order_id: &str, attempt: u32) -> String {
    format!("order-{order_id}-auth-{attempt}")
}

/// The gateway's key for a shipment's capture from authorization `attempt`.
pub fn capture_key(order_id: &str, shipment_id: &str, attempt: u32) -> String {
    format!("order-{order_id}-capture-{shipment_id}-{attempt}")
}

/// What the gateway answered to a charge or an authorization.
enum Answered {
    Approved {
        reference: String,
        expires_at: Option<chrono::DateTime<chrono::Utc>>,
    },
    Declined {
        reason: String,
    },
    /// Refunded or voided first: nothing is held.
    Undone,
}

impl From<ChargeAnswer> for Answered {
    fn from(answer: ChargeAnswer) -> Self {
        match answer {
            ChargeAnswer::Approved { reference } => Self::Approved {
                reference,
                expires_at: None,
            },
            ChargeAnswer::Declined { reason } => Self::Declined { reason },
            ChargeAnswer::Undone => Self::Undone,
        }
    }
}

impl From<AuthorizationAnswer> for Answered {
    fn from(answer: AuthorizationAnswer) -> Self {
        match answer {
            AuthorizationAnswer::Authorized {
                reference,
                expires_at,
            } => Self::Approved {
                reference,
                expires_at,
            },
            AuthorizationAnswer::Declined { reason } => Self::Declined { reason },
            AuthorizationAnswer::Voided => Self::Undone,
        }
    }
}

/// An id the saga recorded that does not parse: nothing to send.
fn refused_id(id: &str) -> Outcome {
    Outcome::Refused {
        detail: format!("{id} is not a UUID"),
    }
}

fn outcome_of<E: std::error::Error>(
    result: Result<command_bus::Outcome, CommandError<E>>,
) -> Outcome {
    match result {
        Ok(_) => Outcome::Done,
        Err(CommandError::Refused(refusal)) => Outcome::Refused {
            detail: refusal.to_string(),
        },
        Err(CommandError::Conflict { .. }) => Outcome::Contended,
        Err(other) => failed(other),
    }
}

fn failed<E: std::error::Error>(error: CommandError<E>) -> Outcome {
    match error {
        // Only a settled (fenced) key is taken by another request.
        CommandError::KeyReused => Outcome::NeverDone,
        other => Outcome::Failed {
            detail: other.to_string(),
        },
    }
}

fn text<E: std::error::Error>(error: CommandError<E>) -> String {
    error.to_string()
}

fn describe(status: Option<PaymentStatus>) -> &'static str {
    match status {
        None => "never requested",
        Some(PaymentStatus::Requested) => "requested",
        Some(PaymentStatus::Approved) => "approved",
        Some(PaymentStatus::Declined) => "declined",
        Some(PaymentStatus::Refunded) => "refunded",
        Some(PaymentStatus::Authorized) => "authorized",
        Some(PaymentStatus::Expired) => "expired",
        Some(PaymentStatus::Voided) => "voided",
    }
}

/// A reason as the domain takes it (at most 500 characters, not blank).
fn reason_of(text: &str) -> Result<Reason, Outcome> {
    let short: String = text.chars().take(500).collect();
    Reason::parse(&short).map_err(|error| Outcome::Refused {
        detail: format!("reason {text:?}: {error}"),
    })
}
