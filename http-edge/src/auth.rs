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
use identity::{AuthError, Authenticator, Caller, Identity};
use ipnet::IpNet;

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

/// Whom a request counts against: the caller its token names, or its peer
/// address (the client behind a trusted proxy; an IPv6 /64).
pub fn rate_key<B>(request: &axum::http::Request<B>, proxies: &TrustedProxies) -> RateKey {
    if let Some(Identity::Caller(caller)) = request.extensions().get::<Identity>() {
        return RateKey::Customer(caller.customer().as_str().to_owned());
    }
    peer_key(request, proxies)
}

/// The peer address a request counts against, whoever its token names.
pub fn peer_key<B>(request: &axum::http::Request<B>, proxies: &TrustedProxies) -> RateKey {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(RateKey::Unknown, |ConnectInfo(peer)| {
            RateKey::peer(proxies.client(peer.ip(), request.headers()))
        })
}

type Buckets = governor::RateLimiter<
    RateKey,
    governor::state::keyed::DefaultKeyedStateStore<RateKey>,
    governor::clock::DefaultClock,
>;

/// One route class's buckets, one per caller: each request costs its
/// caller one, before it is served; a request that turns out to be several
/// (a GraphQL batch, a subscription started on an open WebSocket) costs
/// more through [`charge`](Self::charge) before any of it runs. Cheap to
/// clone.
#[derive(Clone)]
pub struct Limiter {
    buckets: Arc<Buckets>,
    proxies: TrustedProxies,
    /// Which class, for the 429's detail.
    class: &'static str,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("class", &self.class)
            .finish_non_exhaustive()
    }
}

/// The limiter for `rate`, or `None` when it is unlimited. Callers without
/// a valid token are told apart by address, through `proxies`.
pub fn limiter(class: &'static str, rate: Rate, proxies: &TrustedProxies) -> Option<Limiter> {
    let per_second = std::num::NonZeroU32::new(rate.per_second)?;
    let burst = std::num::NonZeroU32::new(rate.burst)?;
    let quota = governor::Quota::per_second(per_second).allow_burst(burst);
    Some(Limiter {
        buckets: Arc::new(governor::RateLimiter::keyed(quota)),
        proxies: proxies.clone(),
        class,
    })
}

impl Limiter {
    /// Whom `request` counts against.
    pub fn key_of<B>(&self, request: &axum::http::Request<B>) -> RateKey {
        rate_key(request, &self.proxies)
    }

    /// Takes `n` requests from `key`'s bucket, all or none: `Err` (429 with
    /// the seconds until they fit) when the bucket holds fewer.
    pub fn charge(&self, key: &RateKey, n: u32) -> Result<(), ApiError> {
        let Some(n) = std::num::NonZeroU32::new(n) else {
            return Ok(());
        };
        use governor::clock::Clock;
        match self.buckets.check_key_n(key, n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => {
                let wait = not_until.wait_time_from(self.buckets.clock().now());
                Err(ApiError::TooManyRequests {
                    retry_after: wait.as_secs().max(1),
                })
            }
            // More than a full bucket: never, at this rate.
            Err(_) => Err(ApiError::invalid(
                "body",
                format!(
                    "this asks for {n} {} operations at once, more than a caller's burst",
                    self.class
                ),
            )),
        }
    }

    /// Forgets the callers whose buckets are full again.
    fn forget_idle(&self) {
        self.buckets.retain_recent();
    }
}

/// Wraps `router` in `limiter`: every request costs its caller one before
/// it is served (429 problem+json with Retry-After when the bucket is
/// empty), and the limiter rides in the request's extensions for handlers
/// that charge more.
pub fn limited<S: Clone + Send + Sync + 'static>(
    router: axum::Router<S>,
    limiter: Option<&Limiter>,
) -> axum::Router<S> {
    let Some(limiter) = limiter else {
        return router;
    };
    let limiter = limiter.clone();
    router.layer(axum::middleware::from_fn(
        move |mut request: Request, next: Next| {
            let limiter = limiter.clone();
            async move {
                let key = limiter.key_of(&request);
                if let Err(refused) = limiter.charge(&key, 1) {
                    return refused.into_response();
                }
                request.extensions_mut().insert(Charged { limiter, key });
                next.run(request).await
            }
        },
    ))
}

/// In a request's extensions: the limiter it was counted by and whom
/// against, for a handler whose request turns out to be several.
#[derive(Debug, Clone)]
pub struct Charged {
    pub limiter: Limiter,
    pub key: RateKey,
}

impl Charged {
    /// Charges `n` more requests to the same caller.
    pub fn more(&self, n: u32) -> Result<(), ApiError> {
        self.limiter.charge(&self.key, n)
    }
}

/// Every minute, forgets the callers whose buckets are full again, so the
/// limiters' memory follows the active callers, not every caller ever seen.
pub async fn forget_idle_callers(limiters: Vec<Limiter>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        for limiter in &limiters {
            limiter.forget_idle();
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
