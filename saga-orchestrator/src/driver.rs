//! Carries out a saga's actions: commands through the event store's dispatch,
//! charges and refunds through the payment gateway.
//!
//! Every command carries the action's idempotency key, and the gateway gets
//! one per charge, so an action done again (a crash before its outcome was
//! saved, two drivers racing) changes nothing. The saga is saved after each
//! action with optimistic locking.

use std::time::Duration;

use chrono::Utc;
use cqrs_es::Aggregate;
use domain::values::{Currency, Money, OrderId, PaymentMethod, Reason};
use domain::{
    Order, OrderCommand, Payment, PaymentCommand, PaymentError, Product, ProductCommand,
    ProductError,
};
use event_store::{
    CommandBus, CommandContext, CommandError, Expect, IdempotencyClaim, IdempotencyKey,
};
use sqlx::PgPool;

use crate::gateway::{ChargeAnswer, ChargeRequest, PaymentGateway, RefundAnswer};
use crate::saga::{Action, OrderSaga, Outcome};
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
}

/// How often a charge in flight looks for the customer's cancel.
const CANCEL_POLL: Duration = Duration::from_millis(200);

/// How long the saga's idempotency keys are remembered.
const KEY_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Runs sagas to their end.
#[derive(Debug, Clone)]
pub struct Driver<G> {
    pool: PgPool,
    bus: CommandBus,
    gateway: G,
    policy: Policy,
}

impl<G: PaymentGateway + Clone> Driver<G> {
    pub fn new(pool: PgPool, gateway: G, policy: Policy) -> Self {
        Self {
            bus: CommandBus::new(pool.clone()),
            pool,
            gateway,
            policy,
        }
    }

    /// Runs the order's saga until it ends or waits for a retry. Safe to call
    /// at any time, any number of times, from any process.
    pub async fn drive(&self, order_id: &str) -> anyhow::Result<()> {
        loop {
            let Some(loaded) = store::load(&self.pool, order_id).await? else {
                return Ok(());
            };
            let mut saga = loaded.saga;
            if let Some(reason) = &loaded.cancel_reason
                && !saga.order_cancelled
            {
                // The step the saga was taking when the cancel came may have
                // landed without being recorded (a crash, a timeout). Learn
                // its outcome first (the same key finds it), so that the undo
                // knows what to undo.
                if let Some(pending) = saga
                    .next_action()
                    .filter(|action| !action.is_compensation() && *action != Action::Charge)
                {
                    let outcome = self.bounded_command(&saga, &pending).await;
                    let failed = matches!(outcome, Outcome::Failed { .. });
                    saga.record(&pending, outcome, Utc::now());
                    if failed {
                        let wait = self.policy.backoff(saga.attempts);
                        self.save(&saga, loaded.version, wait).await?;
                        return Ok(());
                    }
                }
                saga.order_cancelled(reason, Utc::now());
            }
            let Some(action) = saga.next_action() else {
                // Nothing to do, but a cancel may have just been taken in.
                self.save(&saga, loaded.version, Duration::ZERO).await?;
                return Ok(());
            };
            let mut version = loaded.version;
            let Some(outcome) = self.execute(&mut saga, &mut version, &action).await? else {
                // Someone else saved the saga meanwhile: start over from it.
                continue;
            };
            if let Outcome::Failed { detail } = &outcome {
                tracing::warn!(order_id, step = %action.name(), %detail, "saga step failed; will retry");
            }
            let failed = matches!(outcome, Outcome::Failed { .. });
            saga.record(&action, outcome, Utc::now());
            if failed && saga.attempts >= self.policy.forward_attempts {
                saga.give_up(&action, Utc::now());
            }
            let wait = if saga.attempts > 0 {
                self.policy.backoff(saga.attempts)
            } else {
                Duration::ZERO
            };
            if self.save(&saga, version, wait).await? == Saved::Stale {
                continue;
            }
            if saga.next_action().is_none() {
                tracing::info!(order_id, state = saga.state.as_str(), reason = ?saga.reason, "saga ended");
            }
            if wait > Duration::ZERO {
                // The due-scan comes back for it once the wait is over.
                return Ok(());
            }
        }
    }

    async fn save(&self, saga: &OrderSaga, version: i64, wait: Duration) -> sqlx::Result<Saved> {
        let next = Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default();
        let attention = saga.needs_attention(self.policy.attention_after);
        store::save(&self.pool, saga, version, next, attention).await
    }

    /// Does `action`. `None`: the saga changed under us before a charge
    /// started, so the caller reloads it.
    async fn execute(
        &self,
        saga: &mut OrderSaga,
        version: &mut i64,
        action: &Action,
    ) -> anyhow::Result<Option<Outcome>> {
        if *action == Action::Charge {
            // The deadline runs from the first try and survives restarts.
            if saga.action_started_at.is_none() {
                saga.action_started_at = Some(Utc::now());
                match self.save(saga, *version, Duration::ZERO).await? {
                    Saved::Saved { version: saved } => *version = saved,
                    Saved::Stale => return Ok(None),
                }
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
    /// did not answer in time may still land: its outcome is unknown, so it is
    /// tried again under the same key (which finds it if it landed) rather
    /// than taken for a refusal.
    async fn bounded_command(&self, saga: &OrderSaga, action: &Action) -> Outcome {
        let deadline = self.policy.step_deadline;
        tokio::time::timeout(deadline, self.command(saga, action))
            .await
            .unwrap_or_else(|_| Outcome::Failed {
                detail: format!("no answer within {deadline:?}"),
            })
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

    /// The charge, bounded by what is left of the payment deadline.
    async fn charge_within(&self, saga: &OrderSaga) -> Outcome {
        let started = saga.action_started_at.unwrap_or_else(Utc::now);
        let spent = (Utc::now() - started).to_std().unwrap_or_default();
        let left = self.policy.payment_deadline.saturating_sub(spent);
        let answer = tokio::time::timeout(left, self.charge(saga)).await;
        let context = self.context(saga, Action::Charge.key(&saga.order_id));
        let payment = |command| self.run::<Payment>(&saga.order_id, command, &context);
        match answer {
            Ok(Ok(ChargeAnswer::Approved { reference })) => {
                let approve = PaymentCommand::ApproveCharge {
                    provider_reference: reference.clone(),
                };
                match payment(approve).await {
                    Outcome::Done => Outcome::Approved { reference },
                    // Declined on a timeout before a crash: undo it.
                    Outcome::Refused { .. } => Outcome::TimedOut,
                    other => other,
                }
            }
            Ok(Ok(ChargeAnswer::Declined { reason })) => {
                let decline = match reason_of(&reason) {
                    Ok(reason) => PaymentCommand::DeclineCharge { reason },
                    Err(refused) => return refused,
                };
                match payment(decline).await {
                    Outcome::Done | Outcome::Refused { .. } => Outcome::Declined { reason },
                    other => other,
                }
            }
            Ok(Err(unavailable)) => Outcome::Failed {
                detail: unavailable.to_string(),
            },
            Err(_) => {
                let decline = match reason_of("payment timed out") {
                    Ok(reason) => PaymentCommand::DeclineCharge { reason },
                    Err(refused) => return refused,
                };
                match payment(decline).await {
                    Outcome::Done => Outcome::TimedOut,
                    // Approved before a crash: the money is there.
                    Outcome::Refused { .. } => Outcome::Approved {
                        reference: "recorded before".into(),
                    },
                    other => other,
                }
            }
        }
    }

    /// Asks the gateway, trying again after transient failures with backoff.
    async fn charge(&self, saga: &OrderSaga) -> Result<ChargeAnswer, crate::gateway::Unavailable> {
        let request = ChargeRequest {
            key: charge_key(&saga.order_id),
            amount_cents: saga.amount_cents,
            currency: saga.currency.clone(),
            payment_method: saga.payment_method.clone(),
        };
        let mut attempt = 0;
        loop {
            match self.gateway.charge(&request).await {
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

    /// Every action but the charge: one command (the refund also asks the
    /// gateway first).
    async fn command(&self, saga: &OrderSaga, action: &Action) -> Outcome {
        let order_id = match OrderId::parse(&saga.order_id) {
            Ok(id) => id,
            Err(error) => {
                return Outcome::Refused {
                    detail: error.to_string(),
                };
            }
        };
        let context = self.context(saga, action.key(&saga.order_id));
        match action {
            Action::ReserveStock { sku, quantity } => {
                let reserve = ProductCommand::ReserveStock {
                    order_id,
                    quantity: *quantity,
                };
                let reserved = self
                    .bus
                    .execute::<Product>(sku, reserve, &context, Expect::Existing)
                    .await;
                match reserved {
                    // The order holds it already: an earlier try landed.
                    Err(CommandError::Refused(ProductError::AlreadyReserved { .. })) => {
                        Outcome::Done
                    }
                    other => outcome_of(other),
                }
            }
            Action::CommitReservation { sku } => {
                self.run::<Product>(
                    sku,
                    ProductCommand::CommitReservation { order_id },
                    &context,
                )
                .await
            }
            Action::ReleaseReservation { sku } => {
                self.run::<Product>(
                    sku,
                    ProductCommand::ReleaseReservation { order_id },
                    &context,
                )
                .await
            }
            Action::ReturnStock { sku, quantity } => {
                let quantity = *quantity;
                self.run::<Product>(
                    sku,
                    ProductCommand::ReturnSoldStock { order_id, quantity },
                    &context,
                )
                .await
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
                let command = PaymentCommand::RequestCharge {
                    order_id,
                    amount,
                    payment_method,
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
            Action::Refund => {
                match self.gateway.refund(&charge_key(&saga.order_id)).await {
                    Err(error) => Outcome::Failed {
                        detail: error.to_string(),
                    },
                    // Voided before it was taken: the payment never held money.
                    Ok(RefundAnswer::NothingCaptured) => Outcome::Done,
                    Ok(RefundAnswer::Refunded) => {
                        let reason = saga.reason.as_deref().unwrap_or("cancelled");
                        let refund = match reason_of(reason) {
                            Ok(reason) => PaymentCommand::RefundPayment { reason },
                            Err(refused) => return refused,
                        };
                        self.run::<Payment>(&saga.order_id, refund, &context).await
                    }
                }
            }
            Action::ConfirmOrder => {
                self.run::<Order>(&saga.order_id, OrderCommand::ConfirmOrder, &context)
                    .await
            }
            Action::CancelOrder { reason } => {
                let cancel = match reason_of(reason) {
                    Ok(reason) => OrderCommand::CancelOrder { reason },
                    Err(refused) => return refused,
                };
                self.run::<Order>(&saga.order_id, cancel, &context).await
            }
            Action::Charge => Outcome::Failed {
                detail: "the charge runs on its own path".into(),
            },
        }
    }

    async fn run<A>(&self, id: &str, command: A::Command, context: &CommandContext) -> Outcome
    where
        A: Aggregate<Services = ()>,
        A::Command: Clone,
    {
        outcome_of(
            self.bus
                .execute::<A>(id, command, context, Expect::Existing)
                .await,
        )
    }

    /// The command's metadata: the order's correlation id, and the step's
    /// key as causation and idempotency key.
    fn context(&self, saga: &OrderSaga, key: String) -> CommandContext {
        CommandContext {
            correlation_id: saga.correlation_id.clone(),
            causation_id: key.clone(),
            idempotency: Some(IdempotencyClaim {
                fingerprint: key.clone(),
                key: IdempotencyKey::internal(key),
                ttl: KEY_TTL,
            }),
            expected_version: None,
        }
    }
}

/// The gateway's key for the order's one charge.
pub fn charge_key(order_id: &str) -> String {
    format!("order-{order_id}")
}

fn outcome_of<E: std::error::Error>(
    result: Result<event_store::Outcome, CommandError<E>>,
) -> Outcome {
    match result {
        Ok(_) => Outcome::Done,
        Err(CommandError::Refused(refusal)) => Outcome::Refused {
            detail: refusal.to_string(),
        },
        Err(other) => Outcome::Failed {
            detail: other.to_string(),
        },
    }
}

/// A reason as the domain takes it (at most 500 characters, not blank).
fn reason_of(text: &str) -> Result<Reason, Outcome> {
    let short: String = text.chars().take(500).collect();
    Reason::parse(&short).map_err(|error| Outcome::Refused {
        detail: format!("reason {text:?}: {error}"),
    })
}
