//! Tokens the platform signs itself, for development: `orders token` and the tests.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

/// The claims of a development token.
#[derive(Debug, Clone, Serialize)]
pub struct Claims {
    pub sub: String,
    /// Space-separated scopes, such as `orders` or `orders admin`.
    pub scope: String,
    /// Seconds since the epoch.
    pub exp: u64,
    pub iat: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// Any other claim (roles, groups, ...).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Claims {
    /// A token for `sub` with `scope`, valid from now for `ttl`.
    pub fn new(sub: impl Into<String>, scope: impl Into<String>, ttl: Duration) -> Self {
        let now = now();
        Self {
            sub: sub.into(),
            scope: scope.into(),
            exp: now.saturating_add(ttl.as_secs()),
            iat: now,
            nbf: None,
            iss: None,
            aud: None,
            extra: serde_json::Map::new(),
        }
    }

    /// The token with `name` claiming `value` too.
    pub fn with_claim(mut self, name: &str, value: serde_json::Value) -> Self {
        self.extra.insert(name.to_owned(), value);
        self
    }

    pub fn issuer(mut self, issuer: Option<&str>) -> Self {
        self.iss = issuer.map(str::to_owned);
        self
    }

    pub fn audience(mut self, audience: Option<&str>) -> Self {
        self.aud = audience.map(str::to_owned);
        self
    }
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// `claims` signed with HS256 and `secret`.
pub fn mint_hs256(secret: &str, claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}
