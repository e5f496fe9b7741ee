//! Who is calling, and how often. Every request is identified once (its
//! bearer token checked), then counted against its caller's rate: the
//! token's subject, or the peer address for requests without a valid token.
//! Routes then ask for the caller and the scope they need.

use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::middleware::NoOpMiddleware;
use identity::{AuthError, Authenticator, Caller, Identity};
use ipnet::IpNet;
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
    /// An address without a valid token: an IPv4 address, or the /64 of an
    /// IPv6 one (a single host commonly holds a whole /64).
    Peer(IpAddr),
    /// Served without connection info (in-process tests): one shared bucket.
    Unknown,
}

impl RateKey {
    fn peer(address: IpAddr) -> Self {
        Self::Peer(match address.to_canonical() {
            IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
            v4 => v4,
        })
    }
}

/// The proxies in front of the API whose `X-Forwarded-For` is believed
/// (`trusted_proxies`: addresses or networks, comma-separated). Without them
/// the header is ignored: anyone could send it.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Arc<Vec<IpNet>>);

impl TrustedProxies {
    /// Reads `10.0.0.0/8, 192.168.1.7, fd00::/8`; empty trusts no proxy.
    pub fn parse(list: &str) -> Result<Self, String> {
        list.split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| {
                item.parse::<IpNet>()
                    .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("{item:?} is not an IP address or network"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|nets| Self(Arc::new(nets)))
    }

    fn trusts(&self, address: IpAddr) -> bool {
        let address = address.to_canonical();
        self.0.iter().any(|net| net.contains(&address))
    }

    /// The client's address: the peer's, or, when the peer is a trusted
    /// proxy, the nearest address in `X-Forwarded-For` that is not one of
    /// them (later entries were added by proxies nearer to the API).
    pub fn client(&self, peer: IpAddr, headers: &axum::http::HeaderMap) -> IpAddr {
        let mut client = peer;
        if !self.trusts(client) {
            return client;
        }
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .collect();
        for hop in hops.into_iter().rev() {
            let hop = hop.trim();
            let Some(address) = hop
                .parse::<IpAddr>()
                .ok()
                .or_else(|| hop.parse::<SocketAddr>().ok().map(|at| at.ip()))
            else {
                break; // Not an address: believe nothing before it.
            };
            client = address;
            if !self.trusts(address) {
                break;
            }
        }
        client
    }
}

#[derive(Debug, Clone)]
pub struct CallerKey {
    proxies: TrustedProxies,
}

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
                RateKey::peer(self.proxies.client(peer.ip(), request.headers()))
            }))
    }
}

/// One route class's buckets, and how a request finds its caller's.
#[derive(Clone)]
pub struct Limiter {
    config: Arc<GovernorConfig<CallerKey, NoOpMiddleware<governor::clock::QuantaInstant>>>,
    key: CallerKey,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter").finish_non_exhaustive()
    }
}

/// Set by a handler on its response when the request counted as more than
/// one (a GraphQL batch of n operations is n requests): the caller's bucket
/// is charged for them afterwards.
#[derive(Debug, Clone, Copy)]
pub struct FurtherRequests(pub u32);

/// The limiter for `rate`, or `None` when it is unlimited. Callers without
/// a valid token are told apart by address, through `proxies`.
pub fn limiter(rate: Rate, proxies: &TrustedProxies) -> Option<Limiter> {
    if rate.per_second == 0 || rate.burst == 0 {
        return None;
    }
    let period = Duration::from_secs(1) / rate.per_second;
    let key = CallerKey {
        proxies: proxies.clone(),
    };
    let config = GovernorConfigBuilder::default()
        .period(period)
        .burst_size(rate.burst)
        .key_extractor(key.clone())
        .finish()?;
    Some(Limiter {
        config: Arc::new(config),
        key,
    })
}

/// Wraps `router` in `limiter`, answering 429 problem+json with Retry-After.
pub fn limited<S: Clone + Send + Sync + 'static>(
    router: axum::Router<S>,
    limiter: Option<&Limiter>,
) -> axum::Router<S> {
    let Some(limiter) = limiter else {
        return router;
    };
    let charge = {
        let limiter = limiter.clone();
        axum::middleware::from_fn(move |request: Request, next: Next| {
            let limiter = limiter.clone();
            async move {
                let key = limiter.key.extract(&request).ok();
                let response = next.run(request).await;
                if let (Some(key), Some(FurtherRequests(n))) =
                    (key, response.extensions().get::<FurtherRequests>().copied())
                {
                    for _ in 0..n {
                        if limiter.config.limiter().check_key(&key).is_err() {
                            break;
                        }
                    }
                }
                response
            }
        })
    };
    let layer =
        tower_governor::GovernorLayer::new(Arc::clone(&limiter.config)).error_handler(|error| {
            match error {
                GovernorError::TooManyRequests { wait_time, .. } => ApiError::TooManyRequests {
                    retry_after: wait_time.max(1),
                },
                other => ApiError::Internal(anyhow::anyhow!("rate limiter: {other}")),
            }
            .into_response()
        });
    router.layer(charge).layer(layer)
}

/// Every minute, forgets the callers whose buckets are full again, so the
/// limiters' memory follows the active callers, not every caller ever seen.
pub async fn forget_idle_callers(limiters: Vec<Limiter>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        for limiter in &limiters {
            limiter.config.limiter().retain_recent();
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, HeaderValue};

    use super::*;

    fn forwarded(values: &[&'static str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append("x-forwarded-for", HeaderValue::from_static(value));
        }
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_a_trusted_proxy() {
        let proxies = TrustedProxies::parse("10.0.0.0/8, 192.168.1.7").unwrap();
        let headers = forwarded(&["203.0.113.9"]);
        // From anyone else the header is the caller's own claim.
        assert_eq!(
            proxies.client(ip("198.51.100.1"), &headers),
            ip("198.51.100.1")
        );
        assert_eq!(
            proxies.client(ip("192.168.1.7"), &headers),
            ip("203.0.113.9")
        );
        // The nearest address that is not a proxy: what the client wrote
        // before it (a forged hop) is not believed.
        let chain = forwarded(&["1.1.1.1, 203.0.113.9", "10.1.2.3"]);
        assert_eq!(proxies.client(ip("10.0.0.1"), &chain), ip("203.0.113.9"));
        // Ports, and garbage that ends the trust.
        assert_eq!(
            proxies.client(ip("10.0.0.1"), &forwarded(&["203.0.113.9:4711"])),
            ip("203.0.113.9")
        );
        assert_eq!(
            proxies.client(ip("10.0.0.1"), &forwarded(&["203.0.113.9, junk"])),
            ip("10.0.0.1")
        );
        // No header: the proxy itself.
        assert_eq!(
            proxies.client(ip("10.0.0.1"), &HeaderMap::new()),
            ip("10.0.0.1")
        );
        // None configured: never believed.
        assert_eq!(
            TrustedProxies::default().client(ip("10.0.0.1"), &headers),
            ip("10.0.0.1")
        );
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
        assert!(TrustedProxies::parse("proxy.example").is_err());
        assert!(TrustedProxies::parse(" ").unwrap().0.is_empty());
    }

    #[test]
    fn an_ipv6_host_is_counted_by_its_64_block() {
        assert_eq!(
            RateKey::peer(ip("2001:db8:1:2:aaaa::1")),
            RateKey::peer(ip("2001:db8:1:2:ffff:1:2:3"))
        );
        assert_ne!(
            RateKey::peer(ip("2001:db8:1:2::1")),
            RateKey::peer(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            RateKey::peer(ip("::ffff:198.51.100.1")),
            RateKey::Peer(ip("198.51.100.1"))
        );
        assert_ne!(
            RateKey::peer(ip("198.51.100.1")),
            RateKey::peer(ip("198.51.100.2"))
        );
    }
}
