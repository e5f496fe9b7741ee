use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::*;

const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";

fn authenticator(issuer: Option<&str>, audience: Option<&str>) -> Authenticator {
    Authenticator::new(&AuthConfig {
        hs256_secret: Some(SECRET.into()),
        issuer: issuer.map(Into::into),
        audience: audience.map(Into::into),
        ..AuthConfig::default()
    })
    .expect("a valid configuration")
}

fn token(claims: &Claims) -> String {
    mint_hs256(SECRET, claims).expect("signed")
}

fn bearer(token: &str) -> Vec<u8> {
    format!("Bearer {token}").into_bytes()
}

async fn check(auth: &Authenticator, token: &str) -> Result<Caller, AuthError> {
    auth.authenticate(Some(&bearer(token))).await
}

fn hour() -> Duration {
    Duration::from_secs(3600)
}

#[tokio::test]
async fn a_signed_token_names_its_customer_and_scopes() {
    let auth = authenticator(None, None);
    let claims = Claims::new("customer-7", "orders", hour());
    let caller = check(&auth, &token(&claims)).await.expect("accepted");
    assert_eq!(caller.customer().as_str(), "customer-7");
    assert_eq!(caller.expires_at(), Some(claims.exp));
    assert!(caller.may_order());
    assert!(!caller.is_admin());
    assert!(caller.may_see("customer-7"));
    assert!(!caller.may_see("customer-8"));

    let admin = check(&auth, &token(&Claims::new("ops", "openid admin", hour())))
        .await
        .expect("accepted");
    assert!(admin.is_admin() && admin.may_order() && admin.may_see("customer-8"));

    let nobody = check(&auth, &token(&Claims::new("x", "", hour())))
        .await
        .expect("a token without scopes is still a caller");
    assert!(!nobody.may_order() && !nobody.may_see("x"));
}

#[tokio::test]
async fn a_missing_header_is_told_apart_from_a_bad_one() {
    let auth = authenticator(None, None);
    assert_eq!(auth.authenticate(None).await, Err(AuthError::Missing));
    for header in [
        &b"Basic dXNlcjpwYXNz"[..],
        b"Bearer",
        b"Bearer   ",
        b"bearer not-a-jwt",
        b"\xff\xfe",
        b"Bearer a.b.c",
    ] {
        assert!(
            matches!(
                auth.authenticate(Some(header)).await,
                Err(AuthError::Invalid(_))
            ),
            "{:?}",
            String::from_utf8_lossy(header)
        );
    }
}

#[tokio::test]
async fn the_scheme_is_case_insensitive() {
    let auth = authenticator(None, None);
    let value = format!("bEaReR {}", token(&Claims::new("c", "orders", hour())));
    assert!(auth.authenticate(Some(value.as_bytes())).await.is_ok());
}

#[tokio::test]
async fn forged_expired_and_premature_tokens_are_refused() {
    let auth = authenticator(None, None);
    let claims = Claims::new("customer-1", "admin", hour());

    let forged = mint_hs256("another-secret-that-is-also-long-enough", &claims).expect("signed");
    assert_eq!(
        check(&auth, &forged).await,
        Err(AuthError::Invalid("the signature does not match".into()))
    );

    let mut expired = claims.clone();
    expired.exp = token::now() - 3600;
    assert_eq!(
        check(&auth, &token(&expired)).await,
        Err(AuthError::Invalid("the token has expired".into()))
    );

    let mut premature = claims.clone();
    premature.nbf = Some(token::now() + 3600);
    assert_eq!(
        check(&auth, &token(&premature)).await,
        Err(AuthError::Invalid(
            "the token is not valid yet (nbf)".into()
        ))
    );

    // A payload changed after signing.
    let signed = token(&claims);
    let mut parts: Vec<&str> = signed.split('.').collect();
    let tampered = URL_SAFE_NO_PAD.encode(
        serde_json::json!({"sub": "customer-2", "scope": "admin", "exp": claims.exp}).to_string(),
    );
    parts[1] = &tampered;
    assert!(check(&auth, &parts.join(".")).await.is_err());
}

#[tokio::test]
async fn alg_none_and_other_algorithms_are_refused() {
    let auth = authenticator(None, None);
    let claims = Claims::new("customer-1", "admin", hour());
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("json"));
    for alg in ["none", "None", "NONE"] {
        let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
        for signature in ["", "e30"] {
            let unsigned = format!("{header}.{payload}.{signature}");
            assert!(
                matches!(check(&auth, &unsigned).await, Err(AuthError::Invalid(_))),
                "alg {alg} accepted"
            );
        }
    }
    let hs512 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS512),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("signed");
    assert!(matches!(
        check(&auth, &hs512).await,
        Err(AuthError::Invalid(_))
    ));
}

#[tokio::test]
async fn issuer_and_audience_are_checked_when_configured() {
    let auth = authenticator(Some("https://id.example"), Some("orders-api"));
    let good = Claims::new("c", "orders", hour())
        .issuer(Some("https://id.example"))
        .audience(Some("orders-api"));
    assert!(check(&auth, &token(&good)).await.is_ok());

    for (claims, why) in [
        (
            good.clone().issuer(Some("https://evil.example")),
            "another issuer",
        ),
        (good.clone().issuer(None), "iss"),
        (good.clone().audience(Some("billing")), "another audience"),
        (good.clone().audience(None), "aud"),
    ] {
        let refused = check(&auth, &token(&claims)).await;
        assert!(
            matches!(&refused, Err(AuthError::Invalid(m)) if m.contains(why)),
            "{why}: {refused:?}"
        );
    }

    // Without a configured audience, a token that names one is still accepted.
    let open = authenticator(None, None);
    assert!(check(&open, &token(&good)).await.is_ok());
}

#[tokio::test]
async fn a_subject_that_cannot_be_a_customer_id_is_refused() {
    let auth = authenticator(None, None);
    for sub in [String::new(), "a\u{0}b".into(), "x".repeat(129)] {
        let refused = check(&auth, &token(&Claims::new(sub.clone(), "orders", hour()))).await;
        assert!(matches!(refused, Err(AuthError::Invalid(_))), "{sub:?}");
    }
    let mut no_exp = serde_json::to_value(Claims::new("c", "orders", hour())).expect("json");
    no_exp.as_object_mut().expect("object").remove("exp");
    let unsigned = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &no_exp,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("signed");
    assert_eq!(
        check(&auth, &unsigned).await,
        Err(AuthError::Invalid("the token has no exp claim".into()))
    );
}

#[test]
fn configurations_that_cannot_authenticate_are_refused() {
    let config = |secret: Option<&str>, url: Option<&str>| AuthConfig {
        hs256_secret: secret.map(Into::into),
        jwks_url: url.map(Into::into),
        ..AuthConfig::default()
    };
    assert!(matches!(
        Authenticator::new(&config(None, None)),
        Err(ConfigError::NoKeys)
    ));
    assert!(matches!(
        Authenticator::new(&config(Some(SECRET), Some("http://127.0.0.1/jwks"))),
        Err(ConfigError::BothKeys)
    ));
    assert!(matches!(
        Authenticator::new(&config(Some("short"), None)),
        Err(ConfigError::ShortSecret)
    ));
    assert!(matches!(
        Authenticator::new(&config(None, Some("http://127.0.0.1/jwks"))),
        Err(ConfigError::NoAudience)
    ));
    assert!(matches!(
        Authenticator::new(&AuthConfig {
            audience: Some("orders-api".into()),
            ..config(None, Some("https://id.example/jwks"))
        }),
        Err(ConfigError::NoAdminClaim)
    ));
    let with_audience = |url: &str| AuthConfig {
        audience: Some("orders-api".into()),
        admin_claim: Some("roles".into()),
        ..config(None, Some(url))
    };
    assert!(matches!(
        Authenticator::new(&with_audience("file:///etc/passwd")),
        Err(ConfigError::BadUrl(_))
    ));
    assert!(Authenticator::new(&with_audience("https://id.example/jwks")).is_ok());
}

#[tokio::test]
async fn switched_off_every_caller_is_an_administrator() {
    let auth = Authenticator::new(&AuthConfig {
        disabled: true,
        ..AuthConfig::default()
    })
    .expect("valid");
    assert!(!auth.is_enabled());
    assert!(auth.authenticate(None).await.expect("admin").is_admin());
}

#[tokio::test]
async fn admin_is_read_from_the_configured_claim_only() {
    let auth = Authenticator::new(&AuthConfig {
        hs256_secret: Some(SECRET.into()),
        admin_claim: Some("roles".into()),
        ..AuthConfig::default()
    })
    .expect("a valid configuration");
    let asked = check(&auth, &token(&Claims::new("eve", "orders admin", hour())))
        .await
        .expect("accepted");
    assert!(!asked.is_admin(), "a scope asked for grants no admin");
    assert!(asked.may_order(), "other scopes stand");
    let assigned = Claims::new("ops", "", hour()).with_claim("roles", serde_json::json!(["admin"]));
    assert!(
        check(&auth, &token(&assigned))
            .await
            .expect("accepted")
            .is_admin()
    );
    let nested = Authenticator::new(&AuthConfig {
        hs256_secret: Some(SECRET.into()),
        admin_claim: Some("realm_access.roles".into()),
        admin_value: Some("shop-admin".into()),
        ..AuthConfig::default()
    })
    .expect("a valid configuration");
    let keycloak = Claims::new("ops", "", hour())
        .with_claim("realm_access", serde_json::json!({"roles": ["shop-admin"]}));
    assert!(
        check(&nested, &token(&keycloak))
            .await
            .expect("accepted")
            .is_admin()
    );
    let wrong = Claims::new("ops", "", hour())
        .with_claim("realm_access", serde_json::json!({"roles": ["admin"]}));
    assert!(
        !check(&nested, &token(&wrong))
            .await
            .expect("accepted")
            .is_admin()
    );
    // The platform's own tokens keep `scope`, unless told otherwise.
    let default = authenticator(None, None);
    assert!(
        check(&default, &token(&Claims::new("ops", "admin", hour())))
            .await
            .expect("accepted")
            .is_admin()
    );
    // A provider's tokens need the claim named.
    let refused = Authenticator::new(&AuthConfig {
        jwks_url: Some("http://127.0.0.1/jwks".into()),
        audience: Some("orders".into()),
        ..AuthConfig::default()
    })
    .expect_err("refused");
    assert!(matches!(refused, ConfigError::NoAdminClaim));
}
