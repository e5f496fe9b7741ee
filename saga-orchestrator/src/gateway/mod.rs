//! The payment gateway port, and a simulator of it that knows the contract's
//! test tokens.
//!
//! Every charge carries a key; the gateway answers a repeated key with the
//! first answer and never charges twice. A refund names the charge's key and
//! works whatever happened to the charge: a captured charge is refunded, and a
//! charge not captured yet is voided so that it never will be.

pub mod http;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

/// A charge to take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeRequest {
    /// Idempotency key: the same key is the same charge.
    pub key: String,
    pub amount_cents: i64,
    pub currency: String,
    /// The customer's payment token, such as `tok_visa`.
    pub payment_method: String,
}

/// The gateway's answer to a charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeAnswer {
    Approved { reference: String },
    Declined { reason: String },
}

/// The gateway's answer to a refund.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundAnswer {
    /// The captured amount goes back to the customer.
    Refunded,
    /// Nothing was captured under the key; nothing ever will be.
    NothingCaptured,
}

/// The gateway could not answer now; trying again may work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("payment gateway unavailable: {0}")]
pub struct Unavailable(pub String);

/// Takes and gives back money.
pub trait PaymentGateway: Send + Sync + 'static {
    /// Charges once per key. May never answer: callers bound it with a deadline.
    fn charge(
        &self,
        request: &ChargeRequest,
    ) -> impl Future<Output = Result<ChargeAnswer, Unavailable>> + Send;

    /// Refunds or voids the charge made under `key`.
    fn refund(&self, key: &str) -> impl Future<Output = Result<RefundAnswer, Unavailable>> + Send;
}

/// A gateway in memory that behaves by token, as the contract describes:
/// `tok_visa` approves, `tok_declined` declines, `tok_timeout` never answers,
/// `tok_flaky` fails [`FLAKY_FAILURES`] times per charge, then approves. Beyond
/// the contract, `tok_slow` approves at once but answers only after
/// [`SLOW_ANSWER`], as a gateway whose approval arrives after the caller gave
/// up. Other tokens are declined.
#[derive(Debug, Clone, Default)]
pub struct Simulator {
    charges: Arc<Mutex<HashMap<String, SimulatedCharge>>>,
    refunds_fail: Arc<std::sync::atomic::AtomicBool>,
}

/// How long a `tok_slow` charge takes to answer.
pub const SLOW_ANSWER: std::time::Duration = std::time::Duration::from_secs(3);

/// Failures of a `tok_flaky` charge before it is approved.
pub const FLAKY_FAILURES: u32 = 2;

#[derive(Debug, Clone, PartialEq, Eq)]
enum SimulatedCharge {
    /// Tried and failed this many times (`tok_flaky`).
    Failing(u32),
    Answered(ChargeAnswer),
    Refunded,
    Voided,
}

impl Simulator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every refund fail as unavailable (`true`) or work again: an
    /// outage of the gateway's refunds, to exercise the saga's retries.
    pub fn set_refunds_failing(&self, failing: bool) {
        self.refunds_fail
            .store(failing, std::sync::atomic::Ordering::SeqCst);
    }

    /// Charges captured and not refunded: what the gateway holds.
    pub fn captured(&self) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, charge)| {
                matches!(
                    charge,
                    SimulatedCharge::Answered(ChargeAnswer::Approved { .. })
                )
            })
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// Every charge by key: `failing`, `approved`, `declined`, `refunded` or
    /// `voided`.
    pub fn charges(&self) -> Vec<(String, String)> {
        self.lock()
            .iter()
            .map(|(key, charge)| {
                let status = match charge {
                    SimulatedCharge::Failing(_) => "failing",
                    SimulatedCharge::Answered(ChargeAnswer::Approved { .. }) => "approved",
                    SimulatedCharge::Answered(ChargeAnswer::Declined { .. }) => "declined",
                    SimulatedCharge::Refunded => "refunded",
                    SimulatedCharge::Voided => "voided",
                };
                (key.clone(), status.to_owned())
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, SimulatedCharge>> {
        // A panic while holding the lock leaves plain data behind; keep using it.
        self.charges
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The answer, or `None` for a charge that never answers.
    fn decide(&self, request: &ChargeRequest) -> Option<Result<ChargeAnswer, Unavailable>> {
        let mut charges = self.lock();
        let approved = ChargeAnswer::Approved {
            reference: format!("sim_{}", request.key),
        };
        let declined = |reason: &str| ChargeAnswer::Declined {
            reason: reason.to_owned(),
        };
        let state = charges.get(&request.key).cloned();
        let next = match (state, request.payment_method.as_str()) {
            (Some(SimulatedCharge::Answered(answer)), _) => return Some(Ok(answer)),
            (Some(SimulatedCharge::Refunded | SimulatedCharge::Voided), _) => {
                return Some(Ok(declined("the charge was voided")));
            }
            (_, "tok_timeout") => return None,
            (None, "tok_flaky") => SimulatedCharge::Failing(1),
            (Some(SimulatedCharge::Failing(failures)), "tok_flaky")
                if failures < FLAKY_FAILURES =>
            {
                SimulatedCharge::Failing(failures + 1)
            }
            (_, "tok_visa" | "tok_flaky" | "tok_slow") => SimulatedCharge::Answered(approved),
            (_, "tok_declined") => SimulatedCharge::Answered(declined("card declined")),
            (_, _) => SimulatedCharge::Answered(declined("unknown payment method")),
        };
        charges.insert(request.key.clone(), next.clone());
        match next {
            SimulatedCharge::Answered(answer) => Some(Ok(answer)),
            _ => Some(Err(Unavailable("simulated transient failure".into()))),
        }
    }
}

impl PaymentGateway for Simulator {
    async fn charge(&self, request: &ChargeRequest) -> Result<ChargeAnswer, Unavailable> {
        let answer = self.decide(request);
        if request.payment_method == "tok_slow" {
            tokio::time::sleep(SLOW_ANSWER).await;
        }
        match answer {
            Some(answer) => answer,
            None => std::future::pending().await,
        }
    }

    async fn refund(&self, key: &str) -> Result<RefundAnswer, Unavailable> {
        if self.refunds_fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Unavailable("simulated refund outage".into()));
        }
        let mut charges = self.lock();
        let answer = match charges.get(key) {
            Some(SimulatedCharge::Answered(ChargeAnswer::Approved { .. }))
            | Some(SimulatedCharge::Refunded) => {
                charges.insert(key.to_owned(), SimulatedCharge::Refunded);
                RefundAnswer::Refunded
            }
            Some(SimulatedCharge::Answered(ChargeAnswer::Declined { .. })) => {
                RefundAnswer::NothingCaptured
            }
            _ => {
                charges.insert(key.to_owned(), SimulatedCharge::Voided);
                RefundAnswer::NothingCaptured
            }
        };
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

    use std::time::Duration;

    use super::*;

    fn request(token: &str) -> ChargeRequest {
        ChargeRequest {
            key: format!("k-{token}"),
            amount_cents: 500,
            currency: "EUR".into(),
            payment_method: token.into(),
        }
    }

    #[tokio::test]
    async fn tokens_behave_as_the_contract_says_and_keys_charge_once() {
        let gateway = Simulator::new();
        let visa = gateway.charge(&request("tok_visa")).await.unwrap();
        assert!(matches!(visa, ChargeAnswer::Approved { .. }));
        assert_eq!(gateway.charge(&request("tok_visa")).await.unwrap(), visa);
        assert!(matches!(
            gateway.charge(&request("tok_declined")).await.unwrap(),
            ChargeAnswer::Declined { .. }
        ));
        for _ in 0..FLAKY_FAILURES {
            assert!(gateway.charge(&request("tok_flaky")).await.is_err());
        }
        assert!(matches!(
            gateway.charge(&request("tok_flaky")).await.unwrap(),
            ChargeAnswer::Approved { .. }
        ));
        let silent = tokio::time::timeout(
            Duration::from_millis(50),
            gateway.charge(&request("tok_timeout")),
        )
        .await;
        assert!(silent.is_err());
        assert_eq!(gateway.captured().len(), 2);
    }

    #[tokio::test]
    async fn a_refund_gives_back_a_capture_and_voids_a_charge_not_taken_yet() {
        let gateway = Simulator::new();
        gateway.charge(&request("tok_visa")).await.unwrap();
        assert_eq!(
            gateway.refund("k-tok_visa").await.unwrap(),
            RefundAnswer::Refunded
        );
        assert_eq!(
            gateway.refund("k-tok_visa").await.unwrap(),
            RefundAnswer::Refunded
        );
        assert!(gateway.captured().is_empty());

        // Refunded before the charge arrives: the charge is never taken.
        assert_eq!(
            gateway.refund("k-tok_flaky").await.unwrap(),
            RefundAnswer::NothingCaptured
        );
        assert!(matches!(
            gateway.charge(&request("tok_flaky")).await.unwrap(),
            ChargeAnswer::Declined { .. }
        ));
        assert!(gateway.captured().is_empty());
    }
}
