//! For tests and benchmarks (feature `testing`, which nothing that ships
//! turns on): an HS256 secret, tokens signed with it, and HTTP clients that
//! send them. The secret is drawn at random once per process, so no secret
//! is written anywhere a deployment could pick it up.

use std::sync::OnceLock;
use std::time::Duration;

use crate::{Claims, mint_hs256};

/// The secret this process's test platforms are configured with
/// (`ORDERS_AUTH_HS256_SECRET`): 64 random hex digits, the same for the
/// whole process (processes it starts are given it).
pub fn secret() -> &'static str {
    static SECRET: OnceLock<String> = OnceLock::new();
    SECRET.get_or_init(|| {
        format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        )
    })
}

/// A token for `sub` with `scope`, valid for an hour.
pub fn token(sub: &str, scope: &str) -> String {
    mint_hs256(
        secret(),
        &Claims::new(sub, scope, Duration::from_secs(3600)),
    )
    .unwrap_or_else(|error| panic!("signing a test token: {error}"))
}

/// An administrator's token (`admin`), for setting up what tests need.
pub fn admin_token() -> String {
    token("operator", "admin")
}

/// A client builder whose requests carry a token for `sub` with `scope`.
pub fn client_builder(sub: &str, scope: &str) -> reqwest::ClientBuilder {
    let mut headers = reqwest::header::HeaderMap::new();
    let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token(sub, scope)))
        .unwrap_or_else(|error| panic!("a token is a header value: {error}"));
    headers.insert(reqwest::header::AUTHORIZATION, value);
    reqwest::Client::builder().default_headers(headers)
}

/// A client whose requests carry a token for `sub` with `scope`.
pub fn client(sub: &str, scope: &str) -> reqwest::Client {
    client_builder(sub, scope)
        .build()
        .unwrap_or_else(|error| panic!("an HTTP client: {error}"))
}

/// A client acting as an administrator.
pub fn admin_client() -> reqwest::Client {
    client("operator", "admin")
}
