//! For tests and benchmarks: a fixed HS256 secret, tokens signed with it, and
//! HTTP clients that send them. Never configure a deployment with this secret.

use std::time::Duration;

use crate::{Claims, mint_hs256};

/// The secret test platforms are configured with (`ORDERS_AUTH_HS256_SECRET`).
pub const SECRET: &str = "test-secret-of-the-order-platform-never-use-it";

/// A token for `sub` with `scope`, valid for an hour.
pub fn token(sub: &str, scope: &str) -> String {
    mint_hs256(SECRET, &Claims::new(sub, scope, Duration::from_secs(3600)))
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
