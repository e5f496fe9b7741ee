//! Tokens of an identity provider, checked against the keys it publishes at
//! its JWKS URL: a small provider in this process serves the key set, the
//! platform fetches it, and the provider rotates its keys while the platform
//! runs. Also: forged tokens with a known `kid`, the issuer and audience, and
//! how often a flood of unknown `kid`s may make the platform fetch the set.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use identity::Claims;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::EncodePrivateKey;
use platform_tests::TestPlatform;
use rsa::pkcs1::EncodeRsaPrivateKey;
use serde_json::{Value, json};

const ISSUER: &str = "https://idp.shop.test/";
const AUDIENCE: &str = "orders-api";
/// The platform's shortest time between two fetches of the set.
const MIN_REFETCH: Duration = Duration::from_secs(1);

/// A signing key of the provider and its public half as a JWK.
struct ProviderKey {
    kid: String,
    algorithm: Algorithm,
    private: EncodingKey,
    public: Value,
}

impl ProviderKey {
    fn new(kid: &str, algorithm: Algorithm, private: EncodingKey) -> Self {
        let mut jwk = Jwk::from_encoding_key(&private, algorithm).unwrap();
        jwk.common.key_id = Some(kid.to_owned());
        Self {
            kid: kid.to_owned(),
            algorithm,
            private,
            public: serde_json::to_value(jwk).unwrap(),
        }
    }

    /// A P-256 key from a fixed scalar: test keys need not be secret.
    fn es256(kid: &str, scalar: u8) -> Self {
        let secret = p256::SecretKey::from_bytes(&[scalar; 32].into()).unwrap();
        let der = secret.to_pkcs8_der().unwrap();
        Self::new(
            kid,
            Algorithm::ES256,
            EncodingKey::from_ec_der(der.as_bytes()),
        )
    }

    fn rs256(kid: &str) -> Self {
        let mut rng = rsa::rand_core::OsRng;
        let private = rsa::RsaPrivateKey::new(&mut rng, 2048).unwrap();
        let der = private.to_pkcs1_der().unwrap();
        Self::new(
            kid,
            Algorithm::RS256,
            EncodingKey::from_rsa_der(der.as_bytes()),
        )
    }

    /// A token for `sub` signed with this key, naming `kid`.
    fn sign_as(&self, kid: &str, claims: &Claims) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, claims, &self.private).unwrap()
    }

    fn sign(&self, claims: &Claims) -> String {
        self.sign_as(&self.kid, claims)
    }
}

/// The identity provider's JWKS endpoint, counting its fetches; when
/// `down`, it takes the connection and answers nothing for ten seconds.
struct Provider {
    url: String,
    keys: Arc<Mutex<Vec<Value>>>,
    fetches: Arc<AtomicUsize>,
    down: Arc<AtomicBool>,
}

impl Provider {
    async fn start() -> Self {
        let keys: Arc<Mutex<Vec<Value>>> = Arc::default();
        let fetches = Arc::new(AtomicUsize::new(0));
        let down = Arc::new(AtomicBool::new(false));
        let (served, counted, hangs) = (Arc::clone(&keys), Arc::clone(&fetches), Arc::clone(&down));
        let app = axum::Router::new().route(
            "/.well-known/jwks.json",
            axum::routing::get(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                let set = json!({ "keys": served.lock().unwrap().clone() });
                let hang = hangs.load(Ordering::SeqCst);
                async move {
                    if hang {
                        tokio::time::sleep(Duration::from_secs(10)).await;
                    }
                    axum::Json(set)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().unwrap()
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            url,
            keys,
            fetches,
            down,
        }
    }

    fn go_down(&self) {
        self.down.store(true, Ordering::SeqCst);
    }

    fn publish(&self, keys: &[&ProviderKey]) {
        *self.keys.lock().unwrap() = keys.iter().map(|key| key.public.clone()).collect();
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

fn claims(sub: &str) -> Claims {
    Claims::new(sub, "orders", Duration::from_secs(600))
        .issuer(Some(ISSUER))
        .audience(Some(AUDIENCE))
}

/// The status of placing an order of an unknown product with `token`: 404
/// once the caller is accepted, 401 while not.
async fn status_with(platform: &TestPlatform, token: &str) -> u16 {
    reqwest::Client::new()
        .post(platform.url("/api/orders"))
        .bearer_auth(token)
        .json(&json!({"lines": [{"sku": "NOTHING", "quantity": 1}], "payment_method": "tok_visa"}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Waits, boundedly, until `token` is accepted; returns how long it took.
async fn accepted_within(platform: &TestPlatform, token: &str, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        match status_with(platform, token).await {
            404 => return started.elapsed(),
            401 if started.elapsed() < within => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("the token was not accepted within {within:?} (last status {other})"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked_against_the_providers_keys_as_it_rotates_them() {
    let provider = Provider::start().await;
    let first = ProviderKey::es256("2026-first", 0x11);
    let second = ProviderKey::es256("2026-second", 0x22);
    let stranger = ProviderKey::es256("2026-first", 0x33);
    provider.publish(&[&first]);
    let platform = TestPlatform::start_with(&[
        ("ORDERS_AUTH_HS256_SECRET", String::new()),
        ("ORDERS_AUTH_JWKS_URL", provider.url.clone()),
        ("ORDERS_AUTH_ISSUER", ISSUER.into()),
        ("ORDERS_AUTH_AUDIENCE", AUDIENCE.into()),
        ("ORDERS_AUTH_ADMIN_CLAIM", "roles".into()),
        (
            "ORDERS_AUTH_JWKS_MIN_REFETCH_SECS",
            MIN_REFETCH.as_secs().to_string(),
        ),
    ])
    .await;

    // A token of the provider's key gets in.
    assert_eq!(
        status_with(&platform, &first.sign(&claims("alice"))).await,
        404
    );
    // A key of someone else that claims the provider's kid does not; nor do
    // tokens for another audience or issuer, nor HS256 tokens.
    assert_eq!(
        status_with(&platform, &stranger.sign(&claims("mallory"))).await,
        401
    );
    let mut other_audience = claims("alice");
    other_audience.aud = Some("another-api".into());
    assert_eq!(
        status_with(&platform, &first.sign(&other_audience)).await,
        401
    );
    let mut other_issuer = claims("alice");
    other_issuer.iss = Some("https://idp.elsewhere.test/".into());
    assert_eq!(
        status_with(&platform, &first.sign(&other_issuer)).await,
        401
    );
    let hs256 = identity::mint_hs256(identity::testing::secret(), &claims("alice")).unwrap();
    assert_eq!(status_with(&platform, &hs256).await, 401);

    // The provider rotates: a token of its new key names a kid the platform
    // has not seen, and the platform fetches the set again to find it.
    provider.publish(&[&first, &second]);
    let before = provider.fetches();
    accepted_within(&platform, &second.sign(&claims("bob")), 5 * MIN_REFETCH).await;
    assert!(provider.fetches() > before, "the set was not fetched again");

    // A flood of made-up kids costs the provider at most one fetch per
    // interval, and every such token is refused.
    let flood_started = Instant::now();
    let before = provider.fetches();
    for n in 0..60 {
        let token = second.sign_as(&format!("ghost-{n}"), &claims("mallory"));
        assert_eq!(status_with(&platform, &token).await, 401);
    }
    let intervals = flood_started.elapsed().as_secs_f64() / MIN_REFETCH.as_secs_f64();
    let fetched = provider.fetches() - before;
    assert!(
        fetched as f64 <= intervals.ceil() + 1.0,
        "{fetched} fetches in {:?} for 60 unknown kids",
        flood_started.elapsed()
    );

    // Keys of either algorithm: an RSA key published later gets in too, and
    // the old keys keep working while they are published.
    let rsa = ProviderKey::rs256("2026-rsa");
    provider.publish(&[&second, &rsa, &first]);
    accepted_within(&platform, &rsa.sign(&claims("carol")), 5 * MIN_REFETCH).await;
    assert_eq!(
        status_with(&platform, &first.sign(&claims("alice"))).await,
        404
    );
    assert_eq!(
        status_with(&platform, &second.sign(&claims("bob"))).await,
        404
    );
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_cannot_be_reached_is_a_503_not_a_401() {
    // Nothing listens here: the platform cannot know whether the token is good.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    drop(listener);
    let platform = TestPlatform::start_with(&[
        ("ORDERS_AUTH_HS256_SECRET", String::new()),
        ("ORDERS_AUTH_JWKS_URL", url),
        ("ORDERS_AUTH_AUDIENCE", AUDIENCE.into()),
        ("ORDERS_AUTH_ADMIN_CLAIM", "roles".into()),
    ])
    .await;
    let key = ProviderKey::es256("k", 0x44);
    let response = reqwest::Client::new()
        .post(platform.url("/api/orders"))
        .bearer_auth(key.sign(&claims("alice")))
        .json(&json!({"lines": [{"sku": "MUG", "quantity": 1}], "payment_method": "tok_visa"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let body = response.text().await.unwrap();
    assert!(
        !body.contains("127.0.0.1"),
        "the provider's address leaked: {body}"
    );
    platform.stop().await;
}

/// A platform checking tokens against `provider`, granting `admin` by
/// `claim`, its key sets trusted for `max_age`.
async fn platform_of(provider: &Provider, claim: &str, max_age: Duration) -> TestPlatform {
    TestPlatform::start_with(&[
        ("ORDERS_AUTH_HS256_SECRET", String::new()),
        ("ORDERS_AUTH_JWKS_URL", provider.url.clone()),
        ("ORDERS_AUTH_ISSUER", ISSUER.into()),
        ("ORDERS_AUTH_AUDIENCE", AUDIENCE.into()),
        ("ORDERS_AUTH_ADMIN_CLAIM", claim.into()),
        (
            "ORDERS_AUTH_JWKS_MIN_REFETCH_SECS",
            MIN_REFETCH.as_secs().to_string(),
        ),
        (
            "ORDERS_AUTH_JWKS_MAX_KEY_AGE_SECS",
            max_age.as_secs().to_string(),
        ),
    ])
    .await
}

/// The status of creating a product (an administrator's command) with `token`.
async fn create_with(platform: &TestPlatform, token: &str, sku: &str) -> u16 {
    reqwest::Client::new()
        .post(platform.url("/api/products"))
        .bearer_auth(token)
        .json(&json!({"sku": sku, "name": sku, "price_cents": 100, "currency": "EUR"}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_comes_from_the_claim_the_provider_assigns_not_from_a_scope_asked_for() {
    let provider = Provider::start().await;
    let key = ProviderKey::es256("k", 0x55);
    provider.publish(&[&key]);
    // (the claim named, the claim in the token, what grants admin there)
    for (claim, top, granted) in [
        ("roles", "roles", json!(["orders-admin", "admin"])),
        // Keycloak's realm roles.
        (
            "realm_access.roles",
            "realm_access",
            json!({"roles": ["admin"]}),
        ),
        // Auth0's namespaced claims.
        (
            "https://shop.test/roles",
            "https://shop.test/roles",
            json!(["admin"]),
        ),
        ("groups", "groups", json!("staff admin")),
    ] {
        let platform = platform_of(&provider, claim, Duration::from_secs(3600)).await;
        // A user who asked the provider for the admin scope is no admin.
        let asked = Claims::new("eve", "orders admin", Duration::from_secs(600))
            .issuer(Some(ISSUER))
            .audience(Some(AUDIENCE));
        assert_eq!(
            create_with(&platform, &key.sign(&asked), "EVE").await,
            403,
            "{claim}"
        );
        // One the provider made an administrator is.
        let assigned = claims("ops").with_claim(top, granted);
        assert_eq!(
            create_with(&platform, &key.sign(&assigned), "OPS").await,
            201,
            "{claim}"
        );
        // Other roles grant nothing.
        let other = if top == "realm_access" {
            claims("bob").with_claim(top, json!({"roles": ["orders-admin"]}))
        } else {
            claims("bob").with_claim(top, json!(["orders-admin"]))
        };
        assert_eq!(
            create_with(&platform, &key.sign(&other), "BOB").await,
            403,
            "{claim}"
        );
        platform.stop().await;
    }
    // Without a claim named, a platform checking a provider's tokens does
    // not start.
    let refused = orders_cli::Settings::load_with_env(
        None,
        std::collections::HashMap::from([
            ("ORDERS_AUTH_JWKS_URL".to_owned(), provider.url.clone()),
            ("ORDERS_AUTH_AUDIENCE".to_owned(), AUDIENCE.to_owned()),
        ]),
    )
    .unwrap()
    .authenticator()
    .unwrap_err();
    assert!(
        refused.to_string().contains("ORDERS_AUTH_ADMIN_CLAIM"),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_stops_answering_holds_no_request_and_its_keys_age_out() {
    let provider = Provider::start().await;
    let key = ProviderKey::es256("k", 0x66);
    provider.publish(&[&key]);
    let max_age = Duration::from_secs(8);
    let platform = platform_of(&provider, "roles", max_age).await;
    let token = key.sign(&claims("alice"));
    assert_eq!(status_with(&platform, &token).await, 404);
    let fetched_at = Instant::now();

    provider.go_down();
    // While the set is young, known keys keep working, and a token naming a
    // kid nobody knows is answered at once: no request waits for a
    // provider that does not answer.
    for n in 0..5 {
        let started = Instant::now();
        assert_eq!(status_with(&platform, &token).await, 404);
        let ghost = key.sign_as(&format!("ghost-{n}"), &claims("mallory"));
        let status = status_with(&platform, &ghost).await;
        assert!(matches!(status, 401 | 503), "{status}");
        assert!(
            started.elapsed() < Duration::from_millis(2_500),
            "a request waited {:?}",
            started.elapsed()
        );
    }
    // Past the key set's age, its keys are not trusted any more: 503, the
    // provider cannot be asked whether they still stand.
    let after = max_age.saturating_sub(fetched_at.elapsed()) + Duration::from_millis(500);
    tokio::time::sleep(after).await;
    let started = Instant::now();
    assert_eq!(status_with(&platform, &token).await, 503);
    assert!(started.elapsed() < Duration::from_millis(2_500));
    platform.stop().await;
}
