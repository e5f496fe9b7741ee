//! Who is calling, and how often. Every request is identified once (its
//! bearer token checked), then counted against its caller's rate: the
//! token's subject, or the peer address for requests without a valid token.
//! Routes then ask for the caller and the scope they need.

use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::middleware::NoOpMiddleware;
use identity::{AuthError, Authenticator, Caller, Identity};
use tower_governor::GovernorError;
use tower_governor::governor::{GovernorConfig, GovernorConfigBuilder};
use tower_governor::key_extractor::KeyExtractor;

use crate::problem::ApiError;

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::Missing => Self::Unauthenticated(None),
            AuthError::Invalid(_) => Self::Unauthenticated(Some(error.to_string())),
            AuthError::KeysUnavailable => Self::Unavailable(anyhow::Error::new(error)),
        }
    }
}

/// Records the request's [`Identity`] for the layers and routes after it.
pub async fn identify(
    State(authenticator): State<Authenticator>,
    mut request: Request,
    next: Next,
) -> Response {
    let header = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .map(|value| value.as_bytes().to_vec());
    let identity = authenticator.identify(header.as_deref()).await;
    request.extensions_mut().insert(identity);
    next.run(request).await
}

/// Answers 401 for a request whose token was not accepted, whatever it asks
/// for: a client with a broken token hears about it at once.
pub async fn refuse_rejected(request: Request, next: Next) -> Response {
    if let Some(Identity::Rejected(error)) = request.extensions().get::<Identity>() {
        return ApiError::from(error.clone()).into_response();
    }
    next.run(request).await
}

/// The authenticated caller of a route that needs one (401 otherwise).
#[derive(Debug, Clone)]
pub struct Authenticated(pub Caller);

impl<S: Send + Sync> FromRequestParts<S> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<Identity>() {
            Some(identity) => Ok(Self(identity.caller()?.clone())),
            None => Err(ApiError::Unauthenticated(None)),
        }
    }
}

/// A caller holding `admin` (401 without a caller, 403 without the scope).
/// Checked before the body is read.
#[derive(Debug, Clone)]
pub struct Admin(pub Caller);

impl<S: Send + Sync> FromRequestParts<S> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Authenticated(caller) = Authenticated::from_request_parts(parts, state).await?;
        if caller.is_admin() {
            Ok(Self(caller))
        } else {
            Err(ApiError::Forbidden("this needs the admin scope".into()))
        }
    }
}

/// A caller that may place and cancel orders: `orders` (its own) or `admin`.
#[derive(Debug, Clone)]
pub struct Ordering(pub Caller);

impl<S: Send + Sync> FromRequestParts<S> for Ordering {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Authenticated(caller) = Authenticated::from_request_parts(parts, state).await?;
        if caller.may_order() {
            Ok(Self(caller))
        } else {
            Err(ApiError::Forbidden(
                "this needs the orders or the admin scope".into(),
            ))
        }
    }
}

/// One route class's rate: `per_second` requests on average per caller,
/// with bursts of up to `burst`. Zero in either switches the limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

impl Rate {
    pub const UNLIMITED: Self = Self {
        per_second: 0,
        burst: 0,
    };
}

/// Whom a request is counted against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RateKey {
    Customer(String),
    Peer(IpAddr),
    /// Served without connection info (in-process tests): one shared bucket.
    Unknown,
}

#[derive(Debug, Clone, Copy)]
pub struct CallerKey;

impl KeyExtractor for CallerKey {
    type Key = RateKey;

    fn extract<T>(&self, request: &axum::http::Request<T>) -> Result<RateKey, GovernorError> {
        if let Some(Identity::Caller(caller)) = request.extensions().get::<Identity>() {
            return Ok(RateKey::Customer(caller.customer().as_str().to_owned()));
        }
        Ok(request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(RateKey::Unknown, |ConnectInfo(peer)| {
                RateKey::Peer(peer.ip())
            }))
    }
}

pub type Limiter = Arc<GovernorConfig<CallerKey, NoOpMiddleware<governor::clock::QuantaInstant>>>;

/// The limiter for `rate`, or `None` when it is unlimited.
pub fn limiter(rate: Rate) -> Option<Limiter> {
    if rate.per_second == 0 || rate.burst == 0 {
        return None;
    }
    let period = Duration::from_secs(1) / rate.per_second;
    GovernorConfigBuilder::default()
        .period(period)
        .burst_size(rate.burst)
        .key_extractor(CallerKey)
        .finish()
        .map(Arc::new)
}

/// Wraps `router` in `limiter`, answering 429 problem+json with Retry-After.
pub fn limited<S: Clone + Send + Sync + 'static>(
    router: axum::Router<S>,
    limiter: Option<&Limiter>,
) -> axum::Router<S> {
    let Some(limiter) = limiter else {
        return router;
    };
    let layer = tower_governor::GovernorLayer::new(Arc::clone(limiter)).error_handler(|error| {
        match error {
            GovernorError::TooManyRequests { wait_time, .. } => ApiError::TooManyRequests {
                retry_after: wait_time.max(1),
            },
            other => ApiError::Internal(anyhow::anyhow!("rate limiter: {other}")),
        }
        .into_response()
    });
    router.layer(layer)
}

/// Every minute, forgets the callers whose buckets are full again, so the
/// limiters' memory follows the active callers, not every caller ever seen.
pub async fn forget_idle_callers(limiters: Vec<Limiter>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        for limiter in &limiters {
            limiter.limiter().retain_recent();
        }
    }
}
