//! Who is calling. Every request names its caller with `Authorization:
//! Bearer <JWT>`; the [`Authenticator`] checks the token against an HS256
//! secret (development and tests) or the RS256/ES256 keys an identity
//! provider publishes as a JWKS, and turns it into a [`Caller`]: the
//! customer id (`sub`) and the scopes (`orders`, `admin`).

mod jwks;
#[cfg(feature = "testing")]
pub mod testing;
mod token;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use domain::values::CustomerId;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

pub use jwks::{JwksKeys, Timing as JwksTiming};
pub use token::{Claims, mint_hs256, now};

/// Scope that places, cancels and reads the caller's own orders.
pub const ORDERS_SCOPE: &str = "orders";
/// Scope that manages products and stock and sees every order.
pub const ADMIN_SCOPE: &str = "admin";

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    customer: CustomerId,
    scopes: BTreeSet<String>,
    /// The token's `exp`, in seconds since the epoch.
    expires_at: Option<u64>,
}

impl Caller {
    pub fn new(customer: CustomerId, scopes: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            customer,
            scopes: scopes.into_iter().map(Into::into).collect(),
            expires_at: None,
        }
    }

    /// The same caller, whose token expires at `exp` (seconds since the epoch).
    #[must_use]
    pub fn expiring_at(mut self, exp: u64) -> Self {
        self.expires_at = Some(exp);
        self
    }

    /// When the caller's token expires, if it does: a long-lived connection
    /// signed in with it must not outlive it.
    pub fn expires_at(&self) -> Option<u64> {
        self.expires_at
    }

    /// The caller when authentication is switched off: an administrator.
    pub fn unauthenticated_admin() -> Self {
        Self::new(
            CustomerId::parse("anonymous").unwrap_or_else(|_| unreachable!("a valid id")),
            [ADMIN_SCOPE],
        )
    }

    /// The token's `sub`: the customer this caller is.
    pub fn customer(&self) -> &CustomerId {
        &self.customer
    }

    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.contains(scope)
    }

    pub fn is_admin(&self) -> bool {
        self.has_scope(ADMIN_SCOPE)
    }

    /// May place, cancel and read orders (its own, or with `admin` every one).
    pub fn may_order(&self) -> bool {
        self.is_admin() || self.has_scope(ORDERS_SCOPE)
    }

    /// May see the order of `customer`.
    pub fn may_see(&self, customer: &str) -> bool {
        self.is_admin() || (self.has_scope(ORDERS_SCOPE) && self.customer.as_str() == customer)
    }

    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scopes.iter().map(String::as_str)
    }
}

/// Why a request has no caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header at all.
    #[error("this request needs Authorization: Bearer <token>")]
    Missing,
    /// A header that does not carry a token this platform accepts.
    #[error("the bearer token is not accepted: {0}")]
    Invalid(String),
    /// The identity provider's keys cannot be fetched and none are cached.
    #[error("the identity provider's keys cannot be fetched; retry later")]
    KeysUnavailable,
}

/// What the edge learned about a request's caller: the HTTP layer records it
/// once per request, and each route decides what it needs.
#[derive(Debug, Clone)]
pub enum Identity {
    /// No `Authorization` header.
    Anonymous,
    Caller(Caller),
    /// A header with a token that is not accepted.
    Rejected(AuthError),
}

impl Identity {
    /// The caller, or why there is none.
    pub fn caller(&self) -> Result<&Caller, AuthError> {
        match self {
            Self::Anonymous => Err(AuthError::Missing),
            Self::Caller(caller) => Ok(caller),
            Self::Rejected(error) => Err(error.clone()),
        }
    }
}

/// How callers are authenticated.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// HS256 shared secret (development and tests).
    pub hs256_secret: Option<String>,
    /// The identity provider's JWKS document (RS256 and ES256 keys).
    pub jwks_url: Option<String>,
    /// Checked against `iss` when set.
    pub issuer: Option<String>,
    /// Checked against `aud` when set.
    pub audience: Option<String>,
    /// Shortest time between two fetches of the JWKS (an unknown `kid`
    /// triggers one).
    pub jwks_min_refetch: Duration,
    /// How often the JWKS is fetched in the background.
    pub jwks_refresh: Duration,
    /// Longest a key set is trusted since it was last fetched: past it,
    /// while the provider cannot be reached, tokens are answered 503
    /// rather than checked against keys it may have revoked.
    pub jwks_max_key_age: Duration,
    /// The claim that grants `admin` (see [`AdminGrant`]); `None`: the
    /// `scope` claim, which is only right for tokens the platform signs
    /// itself (HS256). With a JWKS it must be set.
    pub admin_claim: Option<String>,
    /// The value in that claim that grants `admin` (default `admin`).
    pub admin_value: Option<String>,
    /// Every caller is an administrator. Only for trusted networks.
    pub disabled: bool,
}

/// Where a token says its bearer is an administrator: `claim` (a top-level
/// name such as `roles`, `groups` or a namespaced `https://shop.example/roles`,
/// or a dotted path such as Keycloak's `realm_access.roles`) holds `value`,
/// as an element of an array or a word of a space-separated string.
///
/// Identity providers let users ask for the scopes they like, so `scope`
/// proves nothing there: roles and groups are assigned by the provider's
/// administrators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminGrant {
    pub claim: String,
    pub value: String,
}

impl AdminGrant {
    /// Whether `claims` grant `admin`.
    fn granted(&self, claims: &serde_json::Map<String, serde_json::Value>) -> bool {
        let found = claims.get(&self.claim).or_else(|| {
            let mut parts = self.claim.split('.');
            let first = claims.get(parts.next()?)?;
            parts.try_fold(first, |value, part| value.get(part))
        });
        match found {
            Some(serde_json::Value::String(words)) => {
                words.split_whitespace().any(|word| word == self.value)
            }
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .any(|item| item.as_str() == Some(self.value.as_str())),
            _ => false,
        }
    }
}

/// Checks bearer tokens. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Authenticator(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    keys: Keys,
    issuer: Option<String>,
    audience: Option<String>,
    admin: AdminGrant,
}

#[derive(Debug)]
enum Keys {
    Off,
    Secret(DecodingKey),
    Jwks(JwksKeys),
}

/// A configuration that cannot authenticate anyone.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "authentication needs ORDERS_AUTH_HS256_SECRET or ORDERS_AUTH_JWKS_URL (or --no-auth to switch it off)"
    )]
    NoKeys,
    #[error("set only one of ORDERS_AUTH_HS256_SECRET and ORDERS_AUTH_JWKS_URL")]
    BothKeys,
    #[error("ORDERS_AUTH_HS256_SECRET must be at least 32 bytes")]
    ShortSecret,
    #[error("ORDERS_AUTH_JWKS_URL: {0}")]
    BadUrl(String),
    #[error(
        "ORDERS_AUTH_JWKS_URL needs ORDERS_AUTH_AUDIENCE: an identity provider signs tokens for many applications, and only those for this one may be accepted"
    )]
    NoAudience,
    #[error(
        "ORDERS_AUTH_JWKS_URL needs ORDERS_AUTH_ADMIN_CLAIM: the claim the identity provider's administrators assign (roles, groups, realm_access.roles, ...); users can ask for scopes themselves, so the scope claim grants no admin"
    )]
    NoAdminClaim,
}

/// Shortest HS256 secret accepted: the hash's own size.
pub const MIN_SECRET_BYTES: usize = 32;

impl Authenticator {
    pub fn new(config: &AuthConfig) -> Result<Self, ConfigError> {
        let secret = config.hs256_secret.as_deref().filter(|s| !s.is_empty());
        let url = config.jwks_url.as_deref().filter(|s| !s.is_empty());
        let keys = match (config.disabled, secret, url) {
            (true, _, _) => Keys::Off,
            (false, Some(_), Some(_)) => return Err(ConfigError::BothKeys),
            (false, Some(secret), None) => {
                if secret.len() < MIN_SECRET_BYTES {
                    return Err(ConfigError::ShortSecret);
                }
                Keys::Secret(DecodingKey::from_secret(secret.as_bytes()))
            }
            (false, None, Some(url)) => {
                if config.audience.as_deref().is_none_or(str::is_empty) {
                    return Err(ConfigError::NoAudience);
                }
                if config.admin_claim.as_deref().is_none_or(str::is_empty) {
                    return Err(ConfigError::NoAdminClaim);
                }
                Keys::Jwks(
                    JwksKeys::new(url, {
                        let or = |set: Duration, default: Duration| {
                            if set.is_zero() { default } else { set }
                        };
                        let default = jwks::Timing::default();
                        jwks::Timing {
                            min_refetch: config.jwks_min_refetch,
                            refresh: or(config.jwks_refresh, default.refresh),
                            max_age: or(config.jwks_max_key_age, default.max_age),
                        }
                    })
                    .map_err(ConfigError::BadUrl)?,
                )
            }
            (false, None, None) => return Err(ConfigError::NoKeys),
        };
        let set = |value: &Option<String>| value.clone().filter(|s| !s.is_empty());
        Ok(Self(Arc::new(Inner {
            keys,
            issuer: set(&config.issuer),
            audience: set(&config.audience),
            admin: AdminGrant {
                claim: set(&config.admin_claim).unwrap_or_else(|| "scope".into()),
                value: set(&config.admin_value).unwrap_or_else(|| ADMIN_SCOPE.into()),
            },
        })))
    }

    /// Every caller is an administrator.
    pub fn disabled() -> Self {
        Self(Arc::new(Inner {
            keys: Keys::Off,
            issuer: None,
            audience: None,
            admin: AdminGrant {
                claim: "scope".into(),
                value: ADMIN_SCOPE.into(),
            },
        }))
    }

    /// Where tokens grant `admin`.
    pub fn admin_grant(&self) -> &AdminGrant {
        &self.0.admin
    }

    pub fn is_enabled(&self) -> bool {
        !matches!(self.0.keys, Keys::Off)
    }

    /// The caller named by an `Authorization` header's value.
    pub async fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Caller, AuthError> {
        if let Keys::Off = self.0.keys {
            return Ok(Caller::unauthenticated_admin());
        }
        let token = bearer_token(authorization.ok_or(AuthError::Missing)?)?;
        self.verify(token).await
    }

    /// The identity of a request with this `Authorization` header value.
    pub async fn identify(&self, authorization: Option<&[u8]>) -> Identity {
        match self.authenticate(authorization).await {
            Ok(caller) => Identity::Caller(caller),
            Err(AuthError::Missing) => Identity::Anonymous,
            Err(error) => Identity::Rejected(error),
        }
    }

    /// The caller a bare token names.
    pub async fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|error| AuthError::Invalid(format!("unreadable header: {error}")))?;
        let (key, algorithm) = match &self.0.keys {
            Keys::Off => return Ok(Caller::unauthenticated_admin()),
            Keys::Secret(key) => (key.clone(), Algorithm::HS256),
            Keys::Jwks(keys) => keys.key_for(header.kid.as_deref(), header.alg).await?,
        };
        if header.alg != algorithm {
            return Err(AuthError::Invalid(format!(
                "algorithm {:?} is not accepted here",
                header.alg
            )));
        }
        let mut validation = Validation::new(algorithm);
        validation.validate_nbf = true;
        validation.leeway = 30;
        let mut required = vec!["exp", "sub"];
        match &self.0.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &self.0.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        let data = jsonwebtoken::decode::<TokenClaims>(token, &key, &validation)
            .map_err(|error| AuthError::Invalid(describe(&error)))?;
        let customer = CustomerId::parse(&data.claims.sub)
            .map_err(|error| AuthError::Invalid(format!("sub {error}")))?;
        let scopes = data.claims.scope.clone().unwrap_or_default();
        // `admin` comes from the claim configured for it, never from a
        // scope the bearer may have asked for (unless that claim is `scope`).
        let admin = self.0.admin.granted(&data.claims.all());
        let scopes = scopes
            .split_whitespace()
            .filter(|scope| *scope != ADMIN_SCOPE)
            .chain(admin.then_some(ADMIN_SCOPE));
        let caller = Caller::new(customer, scopes);
        Ok(match data.claims.exp {
            Some(exp) => caller.expiring_at(exp),
            None => caller,
        })
    }
}

/// What the platform reads from a token beyond the checked claims.
#[derive(Debug, Deserialize)]
struct TokenClaims {
    sub: String,
    /// Required and checked by the validation; read for connections that
    /// must end with their token.
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    scope: Option<String>,
    /// Every other claim, where the admin grant may be.
    #[serde(flatten)]
    rest: serde_json::Map<String, serde_json::Value>,
}

impl TokenClaims {
    /// Every claim, the read ones included.
    fn all(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut all = self.rest.clone();
        if let Some(scope) = &self.scope {
            all.insert("scope".into(), scope.clone().into());
        }
        all.insert("sub".into(), self.sub.clone().into());
        all
    }
}

/// The token of `Bearer <token>` (RFC 6750: the scheme is case-insensitive).
fn bearer_token(value: &[u8]) -> Result<&str, AuthError> {
    let value = std::str::from_utf8(value)
        .map_err(|_| AuthError::Invalid("the Authorization header is not text".into()))?;
    let (scheme, token) = value
        .trim()
        .split_once(' ')
        .ok_or_else(|| AuthError::Invalid("expected Authorization: Bearer <token>".into()))?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(AuthError::Invalid(
            "expected Authorization: Bearer <token>".into(),
        ));
    }
    Ok(token)
}

fn describe(error: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match error.kind() {
        ErrorKind::ExpiredSignature => "the token has expired".into(),
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".into(),
        ErrorKind::InvalidSignature => "the signature does not match".into(),
        ErrorKind::InvalidAudience => "the token is for another audience".into(),
        ErrorKind::InvalidIssuer => "the token is from another issuer".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("the token has no {claim} claim"),
        ErrorKind::InvalidAlgorithm => "the algorithm is not accepted here".into(),
        _ => format!("the token cannot be read: {error}"),
    }
}

#[cfg(test)]
mod tests;
