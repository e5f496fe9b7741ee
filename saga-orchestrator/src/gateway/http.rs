//! The saga's client of the payment gateway over HTTP, with a timeout per
//! request and a circuit breaker. It speaks the gateway service's API
//! (`payment-gateway`'s routes):
//!
//! - `POST {base}/charges` with `{"key","amount_cents","currency","payment_method"}`
//!   answers the charge, `{"key","status","reference","reason",...}`, with
//!   `status` `approved`, `declined`, `refunded` or `voided`; `503` means
//!   "try again";
//! - `POST {base}/charges/{key}/refund` answers the charge after the refund:
//!   `refunded` (it had been captured), `voided` or `declined` (nothing was);
//! - `POST {base}/authorizations` (the charge's body) answers the
//!   authorization, `authorized`, `declined`, `voided` or `expired`;
//!   `POST {base}/authorizations/{key}/captures` `{"key","amount_cents"}`
//!   the capture, `captured`, `declined` or `expired`;
//!   `POST {base}/authorizations/{key}/void` the authorization;
//!   `POST {base}/captures/{key}/refunds` `{"key","amount_cents"}` the refund.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use super::{
    AuthorizationAnswer, CaptureAnswer, ChargeAnswer, ChargeRequest, PaymentGateway, RefundAnswer,
    Unavailable,
};

#[derive(Debug, Serialize)]
struct ChargeBody<'a> {
    key: &'a str,
    amount_cents: i64,
    currency: &'a str,
    payment_method: &'a str,
}

/// A part of an authorization or a capture, under a key of its own.
#[derive(Debug, Serialize)]
struct PartBody<'a> {
    key: &'a str,
    amount_cents: i64,
}

/// A charge, an authorization, a capture or a refund as the gateway
/// answers it; fields the saga does not use are left out.
#[derive(Debug, Default, Deserialize)]
struct Charge {
    #[serde(default)]
    status: String,
    reference: Option<String>,
    reason: Option<String>,
    amount_cents: Option<i64>,
    #[serde(default)]
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// How the client behaves.
#[derive(Clone)]
pub struct HttpGatewayConfig {
    /// Such as `http://127.0.0.1:8081`.
    pub base_url: String,
    /// The gateway's token, sent as `Authorization: Bearer` on every call.
    pub token: String,
    /// How long one request may take.
    pub request_timeout: Duration,
    /// Calls the circuit breaker looks back on: when every one of the last
    /// `window` calls failed (or `failure_ratio` of them), it opens.
    pub window: u32,
    /// Share of failures among the last `window` calls that opens the
    /// circuit. Single charges fail for reasons of their own (a card network
    /// that never answers one charge, a transient failure of another); only a
    /// gateway failing most of its calls is one to stop calling.
    pub failure_ratio: f64,
    /// How long an open circuit refuses calls before letting one through.
    pub open_for: Duration,
}

impl std::fmt::Debug for HttpGatewayConfig {
    // The token is a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpGatewayConfig")
            .field("base_url", &self.base_url)
            .field("request_timeout", &self.request_timeout)
            .field("window", &self.window)
            .field("failure_ratio", &self.failure_ratio)
            .field("open_for", &self.open_for)
            .finish_non_exhaustive()
    }
}

impl Default for HttpGatewayConfig {
    fn default() -> Self {
        Self {
            base_url: "http://127.0.0.1:8081".into(),
            token: String::new(),
            request_timeout: Duration::from_secs(5),
            window: 20,
            failure_ratio: 0.8,
            open_for: Duration::from_secs(5),
        }
    }
}

/// The saga's client of a gateway speaking the protocol above.
#[derive(Debug, Clone)]
pub struct HttpGateway {
    client: reqwest::Client,
    config: HttpGatewayConfig,
    breaker: Arc<CircuitBreaker>,
}

impl HttpGateway {
    pub fn new(config: HttpGatewayConfig) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !config.token.is_empty(),
            "the saga needs the payment gateway's token (ORDERS_GATEWAY_TOKEN; scripts/up creates a development one)"
        );
        let client = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .build()?;
        Ok(Self {
            client,
            breaker: Arc::new(CircuitBreaker::new(
                config.window,
                config.failure_ratio,
                config.open_for,
            )),
            config,
        })
    }

    /// Sends `body` to `path` through the breaker and reads the charge it
    /// answers. Any failure is "unavailable" to the caller, who keeps its
    /// step open rather than reading a refusal it cannot explain as a
    /// decline. `invalid_is_decline`: a 422 (the charge breaks the gateway's
    /// rules) is a decline; only for charges.
    ///
    /// Only failures of the gateway itself count against it in the breaker:
    /// refused or broken connections, unreadable answers, 5xx other than
    /// "this charge failed for now". A call that timed out, or a charge the
    /// card network failed, is that call's failure: no customer's tokens can
    /// open the breaker for everyone else.
    async fn call(
        &self,
        operation: &'static str,
        path: &str,
        body: Option<serde_json::Value>,
        invalid_is_decline: bool,
    ) -> Result<Charge, Unavailable> {
        if !self.breaker.allow() {
            return Err(Unavailable(
                "circuit open: the gateway failed repeatedly".into(),
            ));
        }
        let url = format!("{}{path}", self.config.base_url.trim_end_matches('/'));
        // The call is a span of the step's trace, and the gateway's own
        // spans are its children.
        let span = tracing::info_span!(
            "payment gateway call",
            otel.name = format!("payment gateway {operation}"),
            otel.kind = "client",
            http.request.method = "POST",
            outcome = tracing::field::Empty,
        );
        let mut request = self.client.post(url).bearer_auth(&self.config.token);
        if let Some(traceparent) = platform::trace::traceparent(&span) {
            request = request.header(platform::trace::TRACEPARENT, traceparent);
        }
        let request = match body {
            Some(body) => request.json(&body),
            None => request,
        };
        let started = std::time::Instant::now();
        let (result, health) = async {
            match request.send().await {
                Err(error) if error.is_timeout() => {
                    (Err(Unavailable(with_causes(&error))), Health::Unknown)
                }
                Err(error) => (Err(Unavailable(with_causes(&error))), Health::Failing),
                Ok(response) => read(response, invalid_is_decline).await,
            }
        }
        .instrument(span.clone())
        .await;
        let outcome = match health {
            Health::Answering => "answered",
            Health::Failing => "failed",
            Health::Unknown => "timed_out",
        };
        span.record("outcome", outcome);
        metrics::histogram!("payment_gateway_request_seconds", "operation" => operation, "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        match health {
            Health::Answering => self.breaker.success(),
            Health::Failing => self.breaker.failure(),
            Health::Unknown => {}
        }
        result
    }
}

/// What a call says of the gateway's health.
enum Health {
    Answering,
    Failing,
    /// Nothing: it timed out, which a single slow charge does too.
    Unknown,
}

/// The charge a response carries, and what the response says of the gateway.
async fn read(
    response: reqwest::Response,
    invalid_is_decline: bool,
) -> (Result<Charge, Unavailable>, Health) {
    let status = response.status();
    if status.is_success() {
        return match response.json::<Charge>().await {
            Ok(charge) => (Ok(charge), Health::Answering),
            Err(error) => (
                Err(Unavailable(format!("unreadable answer: {error}"))),
                Health::Failing,
            ),
        };
    }
    // A problem+json body: its type says whose failure it is. Its text is
    // not passed on: it ends up in the saga's step log, which customers read.
    let problem: serde_json::Value = response.json().await.unwrap_or_default();
    let kind = problem["type"].as_str().unwrap_or_default();
    if status == StatusCode::UNPROCESSABLE_ENTITY && invalid_is_decline {
        let declined = Charge {
            status: "declined".into(),
            reference: None,
            reason: Some("refused by the gateway: the charge breaks its rules".into()),
            ..Charge::default()
        };
        return (Ok(declined), Health::Answering);
    }
    // This charge's own trouble: a refusal of the request, the card network
    // failing for now, or never answering. A gateway that refuses the
    // client itself (its token, or the host it was called by) refuses every
    // call: that is the gateway failing for this platform.
    let refuses_the_client = matches!(
        status,
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::MISDIRECTED_REQUEST
    );
    let this_call = (status.is_client_error() && !refuses_the_client)
        || (status == StatusCode::SERVICE_UNAVAILABLE
            && kind == "/problems/temporarily-unavailable")
        || (status == StatusCode::GATEWAY_TIMEOUT && kind == "/problems/no-answer");
    let health = if this_call {
        Health::Answering
    } else {
        Health::Failing
    };
    (
        Err(Unavailable(format!("gateway answered {status} {kind}"))),
        health,
    )
}

impl PaymentGateway for HttpGateway {
    async fn charge(&self, request: &ChargeRequest) -> Result<ChargeAnswer, Unavailable> {
        let body = ChargeBody {
            key: &request.key,
            amount_cents: request.amount_cents,
            currency: &request.currency,
            payment_method: &request.payment_method,
        };
        let charge = self
            .call("charge", "/charges", Some(json(&body)?), true)
            .await?;
        match charge.status.as_str() {
            "approved" => Ok(ChargeAnswer::Approved {
                reference: charge.reference.unwrap_or_default(),
            }),
            "declined" => Ok(ChargeAnswer::Declined {
                reason: charge.reason.unwrap_or_else(|| "declined".into()),
            }),
            "refunded" | "voided" => Ok(ChargeAnswer::Undone),
            other => Err(Unavailable(format!("the charge is still {other}"))),
        }
    }

    async fn refund(&self, key: &str) -> Result<RefundAnswer, Unavailable> {
        let charge = self
            .call("refund", &format!("/charges/{key}/refund"), None, false)
            .await?;
        match charge.status.as_str() {
            "refunded" => Ok(RefundAnswer::Refunded {
                reference: charge.reference,
                amount_cents: charge.amount_cents,
            }),
            "voided" | "declined" => Ok(RefundAnswer::NothingCaptured),
            other => Err(Unavailable(format!("the refunded charge is still {other}"))),
        }
    }

    async fn authorize(&self, request: &ChargeRequest) -> Result<AuthorizationAnswer, Unavailable> {
        let body = ChargeBody {
            key: &request.key,
            amount_cents: request.amount_cents,
            currency: &request.currency,
            payment_method: &request.payment_method,
        };
        let authorization = self
            .call("authorize", "/authorizations", Some(json(&body)?), true)
            .await?;
        match authorization.status.as_str() {
            // Expired since: it was held, and a capture will learn the rest.
            "authorized" | "expired" => Ok(AuthorizationAnswer::Authorized {
                reference: authorization.reference.unwrap_or_default(),
                expires_at: authorization.expires_at,
            }),
            "declined" => Ok(AuthorizationAnswer::Declined {
                reason: authorization.reason.unwrap_or_else(|| "declined".into()),
            }),
            "voided" => Ok(AuthorizationAnswer::Voided),
            other => Err(Unavailable(format!("the authorization is still {other}"))),
        }
    }

    async fn capture(
        &self,
        authorization_key: &str,
        key: &str,
        amount_cents: i64,
    ) -> Result<CaptureAnswer, Unavailable> {
        let body = PartBody { key, amount_cents };
        let capture = self
            .call(
                "capture",
                &format!("/authorizations/{authorization_key}/captures"),
                Some(json(&body)?),
                false,
            )
            .await?;
        match capture.status.as_str() {
            "captured" => Ok(CaptureAnswer::Captured {
                reference: capture.reference.unwrap_or_default(),
            }),
            "declined" => Ok(CaptureAnswer::Declined {
                reason: capture.reason.unwrap_or_else(|| "capture declined".into()),
            }),
            "expired" => Ok(CaptureAnswer::Expired),
            other => Err(Unavailable(format!("the capture is {other}"))),
        }
    }

    async fn void(&self, authorization_key: &str) -> Result<(), Unavailable> {
        let authorization = self
            .call(
                "void",
                &format!("/authorizations/{authorization_key}/void"),
                None,
                false,
            )
            .await?;
        match authorization.status.as_str() {
            "voided" | "declined" | "expired" => Ok(()),
            other => Err(Unavailable(format!("the voided authorization is {other}"))),
        }
    }

    async fn refund_capture(
        &self,
        capture_key: &str,
        key: &str,
        amount_cents: i64,
    ) -> Result<String, Unavailable> {
        let body = PartBody { key, amount_cents };
        let refund = self
            .call(
                "refund capture",
                &format!("/captures/{capture_key}/refunds"),
                Some(json(&body)?),
                false,
            )
            .await?;
        refund
            .reference
            .ok_or_else(|| Unavailable("the refund has no reference".into()))
    }
}

fn json(body: &impl Serialize) -> Result<serde_json::Value, Unavailable> {
    serde_json::to_value(body).map_err(|error| Unavailable(error.to_string()))
}

/// Stops calling a gateway that keeps failing: once `ratio` of its last
/// `window` calls failed (the window full), it refuses calls for `open_for`,
/// then lets calls through again; the first answer closes it, the first
/// failure of the gateway opens it again.
#[derive(Debug)]
pub struct CircuitBreaker {
    window: usize,
    ratio: f64,
    open_for: Duration,
    state: Mutex<Breaker>,
}

#[derive(Debug, Default)]
struct Breaker {
    /// The last calls' outcomes, newest last: `true` for a failure.
    recent: std::collections::VecDeque<bool>,
    open_until: Option<Instant>,
}

impl CircuitBreaker {
    pub fn new(window: u32, ratio: f64, open_for: Duration) -> Self {
        // Closed until the gateway fails: the gauge is there from the start.
        metrics::gauge!("payment_gateway_circuit_open").set(0.0);
        Self {
            window: usize::try_from(window.max(1)).unwrap_or(1),
            ratio: ratio.clamp(0.0, 1.0),
            open_for,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether a call may go out now.
    pub fn allow(&self) -> bool {
        // Past the pause the circuit is half open: calls go through until
        // one answers (closed again) or one fails for the gateway's own
        // reasons (open again). A call that only times out decides nothing,
        // and keeps no other call out.
        !self.is_open()
    }

    pub fn success(&self) {
        let mut state = self.lock();
        self.remember(&mut state, false);
        if state.open_until.take().is_some() {
            state.recent.clear();
            metrics::gauge!("payment_gateway_circuit_open").set(0.0);
            tracing::info!("payment gateway answers again; circuit closed");
        }
    }

    pub fn failure(&self) {
        let mut state = self.lock();
        self.remember(&mut state, true);
        if state.open_until.is_some() {
            // Failing while half open: open again.
            state.open_until = Some(Instant::now() + self.open_for);
            return;
        }
        let failures = state.recent.iter().filter(|failed| **failed).count();
        let full = state.recent.len() >= self.window;
        if full && failures as f64 >= self.ratio * self.window as f64 {
            metrics::gauge!("payment_gateway_circuit_open").set(1.0);
            tracing::warn!(
                failures,
                calls = state.recent.len(),
                "payment gateway keeps failing; circuit open"
            );
            state.open_until = Some(Instant::now() + self.open_for);
        }
    }

    fn remember(&self, state: &mut Breaker, failed: bool) {
        state.recent.push_back(failed);
        while state.recent.len() > self.window {
            state.recent.pop_front();
        }
    }

    pub fn is_open(&self) -> bool {
        self.lock()
            .open_until
            .is_some_and(|until| Instant::now() < until)
    }
}

/// An error with the chain of its causes, as reqwest's own message hides why
/// a request failed (refused, reset, timed out).
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}
