//! An identity provider's signing keys, fetched from its JWKS URL and cached.
//! A token with a `kid` the cache does not know makes the cache fetch the set
//! again (a provider rotating its keys), but never more often than the
//! configured interval, so a flood of made-up `kid`s costs the provider at
//! most one request per interval.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::sync::{Mutex, RwLock};

use crate::AuthError;

/// Keys are fetched again after this long even when every `kid` is known,
/// so that revoked keys leave the cache.
const MAX_AGE: Duration = Duration::from_secs(10 * 60);
/// How long one fetch of the set may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS document read.
const MAX_DOCUMENT: usize = 256 * 1024;

/// The cached key set.
#[derive(Debug)]
pub struct JwksKeys {
    url: String,
    client: reqwest::Client,
    min_refetch: Duration,
    cached: RwLock<Cached>,
    /// Held while fetching: concurrent misses wait for one fetch.
    fetching: Mutex<Option<Instant>>,
}

#[derive(Debug, Default)]
struct Cached {
    keys: HashMap<String, (DecodingKey, Algorithm)>,
    /// Keys without a `kid`, usable by tokens without one.
    unnamed: Vec<(DecodingKey, Algorithm)>,
    fetched_at: Option<Instant>,
}

impl JwksKeys {
    pub fn new(url: &str, min_refetch: Duration) -> Result<Self, String> {
        let parsed = reqwest::Url::parse(url).map_err(|error| error.to_string())?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err("must be an http or https URL".into());
        }
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .build()
            .map_err(|error| error.to_string())?;
        Ok(Self {
            url: url.to_owned(),
            client,
            min_refetch,
            cached: RwLock::default(),
            fetching: Mutex::new(None),
        })
    }

    /// The key that verifies a token with `kid` signed with `algorithm`.
    pub(crate) async fn key_for(
        &self,
        kid: Option<&str>,
        algorithm: Algorithm,
    ) -> Result<(DecodingKey, Algorithm), AuthError> {
        if !matches!(algorithm, Algorithm::RS256 | Algorithm::ES256) {
            return Err(AuthError::Invalid(format!(
                "algorithm {algorithm:?} is not accepted here"
            )));
        }
        let stale = {
            let cached = self.cached.read().await;
            if let Some(found) = cached.find(kid)
                && cached.fetched_at.is_some_and(|at| at.elapsed() < MAX_AGE)
            {
                return Ok(found);
            }
            cached.fetched_at
        };
        self.refetch(stale).await;
        let cached = self.cached.read().await;
        match cached.find(kid) {
            Some(found) => Ok(found),
            None if cached.fetched_at.is_none() => Err(AuthError::KeysUnavailable),
            None => Err(AuthError::Invalid(match kid {
                Some(kid) => format!("no signing key has kid {kid}"),
                None => "the token names no kid and the key set has several keys".into(),
            })),
        }
    }

    /// Fetches the set unless another caller did since `seen`, or the last
    /// attempt was less than the minimum interval ago.
    async fn refetch(&self, seen: Option<Instant>) {
        let mut last_attempt = self.fetching.lock().await;
        if self.cached.read().await.fetched_at != seen {
            return; // Someone fetched while this caller waited.
        }
        if last_attempt.is_some_and(|at| at.elapsed() < self.min_refetch) {
            return;
        }
        *last_attempt = Some(Instant::now());
        match self.fetch().await {
            Ok(fresh) => {
                tracing::info!(url = %self.url, keys = fresh.keys.len() + fresh.unnamed.len(), "fetched the identity provider's keys");
                *self.cached.write().await = fresh;
            }
            Err(error) => {
                tracing::warn!(url = %self.url, %error, "cannot fetch the identity provider's keys");
            }
        }
    }

    async fn fetch(&self) -> Result<Cached, String> {
        let mut response = self
            .client
            .get(&self.url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|error| error.to_string())?;
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|error| error.to_string())? {
            if body.len() + chunk.len() > MAX_DOCUMENT {
                return Err(format!("the key set is larger than {MAX_DOCUMENT} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        parse(&body)
    }
}

/// Reads a JWKS document, keeping the keys this platform can verify with and
/// skipping the rest (encryption keys, other curves, other key types).
fn parse(document: &[u8]) -> Result<Cached, String> {
    #[derive(serde::Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_slice(document).map_err(|error| error.to_string())?;
    let mut cached = Cached {
        fetched_at: Some(Instant::now()),
        ..Cached::default()
    };
    for key in set.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(key) else {
            continue;
        };
        let Some(usable) = usable(&jwk) else {
            continue;
        };
        match jwk.common.key_id {
            Some(kid) => {
                cached.keys.insert(kid, usable);
            }
            None => cached.unnamed.push(usable),
        }
    }
    Ok(cached)
}

fn usable(jwk: &Jwk) -> Option<(DecodingKey, Algorithm)> {
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return None;
    }
    let algorithm = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        _ => return None,
    };
    let declared_fits = match jwk.common.key_algorithm {
        None => true,
        Some(KeyAlgorithm::RS256) => algorithm == Algorithm::RS256,
        Some(KeyAlgorithm::ES256) => algorithm == Algorithm::ES256,
        Some(_) => false,
    };
    if !declared_fits {
        return None;
    }
    DecodingKey::from_jwk(jwk).ok().map(|key| (key, algorithm))
}

impl Cached {
    fn find(&self, kid: Option<&str>) -> Option<(DecodingKey, Algorithm)> {
        match kid {
            Some(kid) => self.keys.get(kid).cloned(),
            None => match (self.keys.len(), self.unnamed.as_slice()) {
                (0, [only]) => Some(only.clone()),
                (1, []) => self.keys.values().next().cloned(),
                _ => None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_other_kinds_and_uses_are_skipped() {
        let document = br#"{"keys":[
            {"kty":"oct","k":"c2VjcmV0","kid":"shared"},
            {"kty":"EC","crv":"P-384","kid":"p384","x":"AA","y":"AA"},
            {"kty":"RSA","use":"enc","kid":"enc","n":"AQAB","e":"AQAB"},
            {"kty":"RSA","alg":"RS512","kid":"rs512","n":"AQAB","e":"AQAB"},
            {"kty":"RSA","kid":"good","n":"AQAB","e":"AQAB"},
            {"kty":"weird"}
        ]}"#;
        let cached = parse(document).expect("a JWKS document");
        let kids: Vec<&String> = cached.keys.keys().collect();
        assert_eq!(kids, ["good"]);
        assert!(cached.find(Some("shared")).is_none());
        assert!(cached.find(None).is_some(), "one key: a token may omit kid");
    }

    #[test]
    fn a_document_that_is_not_a_key_set_is_an_error() {
        assert!(parse(b"<html>").is_err());
        assert!(parse(br#"{"nokeys":[]}"#).is_err());
    }
}
