//! An identity provider's signing keys, fetched from its JWKS URL and cached.
//!
//! A task of its own keeps the cache fresh: it fetches the set at start,
//! every `refresh`, and when a token names a `kid` the cache does not know
//! (a provider rotating its keys), but never twice within `min_refetch`, so
//! a flood of made-up `kid`s costs the provider at most one request per
//! interval. Requests never wait for a provider that is not answering: a
//! request with an unknown `kid` waits (briefly) for a fetch only while the
//! last one succeeded. A set not fetched for `max_age` is trusted no more:
//! tokens get 503 until the provider answers again, rather than being
//! checked against keys it may have revoked long ago.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::sync::{Notify, watch};

use crate::AuthError;

/// How long one fetch of the set may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS document read.
const MAX_DOCUMENT: usize = 256 * 1024;
/// How long a request with an unknown `kid` waits for the fetch it asked
/// for, while the provider answers (and no fetch is under way already).
const WAIT_FOR_ROTATION: Duration = Duration::from_secs(1);

/// When the set is fetched.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Shortest time between two fetches.
    pub min_refetch: Duration,
    /// Time between two fetches when nothing asks for one.
    pub refresh: Duration,
    /// Longest a set is trusted since it was fetched.
    pub max_age: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            min_refetch: Duration::from_secs(10),
            refresh: Duration::from_secs(5 * 60),
            max_age: Duration::from_secs(60 * 60),
        }
    }
}

/// The cached key set.
#[derive(Debug)]
pub struct JwksKeys {
    shared: Arc<Shared>,
    /// The refresher, started with the first key asked for (a runtime is
    /// there then), stopped when the keys are dropped.
    refresher: std::sync::OnceLock<tokio::task::AbortHandle>,
}

impl Drop for JwksKeys {
    fn drop(&mut self) {
        if let Some(task) = self.refresher.get() {
            task.abort();
        }
    }
}

#[derive(Debug)]
struct Shared {
    url: String,
    client: reqwest::Client,
    timing: Timing,
    cached: RwLock<Cached>,
    /// Asks the refresher for a fetch now.
    wanted: Notify,
    /// Counts the fetches finished (successful or not).
    fetches: watch::Sender<u64>,
    /// A fetch is under way: a request does not wait for one that may hang.
    fetching: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Default)]
struct Cached {
    keys: HashMap<String, (DecodingKey, Algorithm)>,
    /// Keys without a `kid`, usable by tokens without one.
    unnamed: Vec<(DecodingKey, Algorithm)>,
    /// When the set was last fetched successfully.
    fetched_at: Option<Instant>,
    /// Whether the last fetch failed.
    failing: bool,
}

impl JwksKeys {
    pub fn new(url: &str, timing: Timing) -> Result<Self, String> {
        let parsed = reqwest::Url::parse(url).map_err(|error| error.to_string())?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err("must be an http or https URL".into());
        }
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .build()
            .map_err(|error| error.to_string())?;
        Ok(Self {
            shared: Arc::new(Shared {
                url: url.to_owned(),
                client,
                timing,
                cached: RwLock::default(),
                wanted: Notify::new(),
                fetches: watch::Sender::new(0),
                fetching: std::sync::atomic::AtomicBool::new(false),
            }),
            refresher: std::sync::OnceLock::new(),
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
        self.refresher
            .get_or_init(|| tokio::spawn(refresh(Arc::clone(&self.shared))).abort_handle());
        let mut fetches = self.shared.fetches.subscribe();
        let (found, fresh, failing, never) = self.shared.look(kid);
        if let Some(found) = found
            && fresh
        {
            return Ok(found);
        }
        if never {
            // Starting: the first fetch is under way; wait for it, boundedly.
            let _ = tokio::time::timeout(FETCH_TIMEOUT, fetches.changed()).await;
        } else if fresh
            && !failing
            && !self
                .shared
                .fetching
                .load(std::sync::atomic::Ordering::Acquire)
        {
            // An unknown kid while the provider answers: it may have
            // rotated its keys. Ask for a fetch and wait for it a little.
            self.shared.wanted.notify_one();
            let _ = tokio::time::timeout(WAIT_FOR_ROTATION, fetches.changed()).await;
        } else {
            // The set is too old, the provider not answering: ask for a
            // fetch, wait for nothing.
            self.shared.wanted.notify_one();
        }
        let (found, fresh, _, never) = self.shared.look(kid);
        match found {
            Some(found) if fresh => Ok(found),
            _ if never || !fresh => Err(AuthError::KeysUnavailable),
            _ => Err(AuthError::Invalid(match kid {
                Some(kid) => format!("no signing key has kid {kid}"),
                None => "the token names no kid and the key set has several keys".into(),
            })),
        }
    }
}

impl Shared {
    /// The key for `kid`, whether the set is fresh, whether the last fetch
    /// failed, and whether no fetch ever succeeded.
    fn look(&self, kid: Option<&str>) -> (Option<(DecodingKey, Algorithm)>, bool, bool, bool) {
        let cached = self
            .cached
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let fresh = cached
            .fetched_at
            .is_some_and(|at| at.elapsed() < self.timing.max_age);
        (
            cached.find(kid),
            fresh,
            cached.failing,
            cached.fetched_at.is_none(),
        )
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

/// The refresher: fetches now, then every `refresh` or when asked, never
/// twice within `min_refetch`; after a failure, again within a few seconds
/// (doubling, up to `refresh`). Runs until the keys are dropped (which
/// aborts it).
async fn refresh(keys: Arc<Shared>) {
    let mut retry = Duration::ZERO;
    loop {
        keys.fetching
            .store(true, std::sync::atomic::Ordering::Release);
        let fetched = keys.fetch().await;
        keys.fetching
            .store(false, std::sync::atomic::Ordering::Release);
        match fetched {
            Ok(fresh) => {
                tracing::info!(url = %keys.url, keys = fresh.keys.len() + fresh.unnamed.len(), "fetched the identity provider's keys");
                *keys
                    .cached
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
                retry = Duration::ZERO;
            }
            Err(error) => {
                tracing::warn!(url = %keys.url, %error, "cannot fetch the identity provider's keys");
                keys.cached
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .failing = true;
                retry = (retry * 2).clamp(keys.timing.min_refetch, keys.timing.refresh);
            }
        }
        keys.fetches.send_modify(|count| *count += 1);
        let next = if retry.is_zero() {
            keys.timing.refresh
        } else {
            retry
        };
        let asked = keys.wanted.notified();
        // Never again within min_refetch, however often it is asked.
        tokio::time::sleep(keys.timing.min_refetch).await;
        let _ = tokio::time::timeout(next.saturating_sub(keys.timing.min_refetch), asked).await;
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
        failing: false,
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
