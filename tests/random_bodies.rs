//! Whatever a client sends, the API answers with a 2xx or a 4xx problem, never a
//! 5xx, and a refused request appends nothing, whatever Authorization it carries.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::collections::BTreeMap;

use platform_tests::{TestApp, declared_routes, order_body};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Map, Value};

/// Field names of the real requests, so random documents often get past the
/// first checks, plus arbitrary ones.
fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "sku", "name", "price_cents", "currency", "quantity", "customer_id", "lines",
            "payment_method", "reason",
        ])
        .prop_map(str::to_owned),
        1 => "\\PC{0,12}",
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-20i64..20).prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(Value::from),
        prop::sample::select(vec![
            "MUG",
            "EUR",
            "tok_visa",
            "",
            " ",
            "usd",
            "x".repeat(300).leak()
        ])
        .prop_map(Value::from),
        "\\PC{0,40}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(field_name(), inner, 0..7).prop_map(
                |map: BTreeMap<String, Value>| Value::Object(
                    map.into_iter().collect::<Map<_, _>>()
                )
            ),
        ]
    })
}

#[derive(Debug, Clone)]
enum Body {
    Json(Value),
    Bytes(Vec<u8>),
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        6 => json_value().prop_map(Body::Json),
        2 => Just(Body::Json(order_body(&[("MUG", 1)]))).prop_flat_map(|_| {
            (0usize..3, json_value()).prop_map(|(line_field, value)| {
                let mut body = order_body(&[("MUG", 1)]);
                let key = ["sku", "quantity", "extra"][line_field];
                body["lines"][0][key] = value;
                Body::Json(body)
            })
        }),
        1 => prop::collection::vec(any::<u8>(), 0..200).prop_map(Body::Bytes),
    ]
}

/// Every declared command route, its parameters filled with SKUs and ids
/// that exist, may exist, or could never.
fn path() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        Just("MUG".to_owned()),
        Just("0190a0b0-0000-7000-8000-000000000000".to_owned()),
        "[A-Za-z0-9._~-]{1,70}",
        "%[0-9A-F]{2}[a-z]{0,5}",
    ];
    (prop::sample::select(declared_routes()), segment)
        .prop_map(|(route, segment)| route.path_with(|_| segment.clone()))
}

fn headers() -> impl Strategy<Value = Vec<(&'static str, String)>> {
    let content_type = prop_oneof![
        4 => Just("application/json".to_owned()),
        1 => Just("text/plain".to_owned()),
        1 => "[ -~]{0,30}",
    ];
    let optional = |name: &'static str| {
        prop::option::weighted(0.3, "[ -~]{0,300}").prop_map(move |v| v.map(|v| (name, v)))
    };
    // Without one, the client's administrator token is sent.
    let authorization = prop::option::weighted(
        0.4,
        prop_oneof![
            "[ -~]{0,300}",
            "[ -~]{0,300}".prop_map(|token| format!("Bearer {token}")),
            ("[a-z]{1,8}", "(orders|admin|orders admin|profile|)").prop_map(
                |(sub, scope)| format!("Bearer {}", identity::testing::token(&sub, &scope))
            ),
            Just(format!(
                "Bearer {}",
                identity::mint_hs256(
                    identity::testing::secret(),
                    &identity::Claims {
                        exp: identity::now() - 3600,
                        ..identity::Claims::new("late", "admin", std::time::Duration::ZERO)
                    }
                )
                .expect("signed")
            )),
        ],
    )
    .prop_map(|value| value.map(|value| ("authorization", value)));
    (
        content_type,
        optional("if-match"),
        optional("idempotency-key"),
        optional("x-request-id"),
        authorization,
    )
        .prop_map(|(content_type, a, b, c, d)| {
            let mut headers = vec![("content-type", content_type)];
            headers.extend([a, b, c, d].into_iter().flatten());
            headers
        })
}

#[test]
fn random_requests_never_get_a_5xx_and_refusals_append_nothing() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let app = runtime.block_on(async {
        let app = TestApp::spawn().await;
        app.create_product("MUG", 1250).await;
        app
    });
    let mut runner = TestRunner::new(Config {
        cases: 1500,
        failure_persistence: None,
        ..Config::default()
    });

    runner
        .run(&(path(), body(), headers()), |(path, body, headers)| {
            runtime.block_on(async {
                let before = app.event_count().await;
                let mut request = app.client.post(app.url(&path));
                for (name, value) in &headers {
                    request = request.header(*name, value.as_str());
                }
                let request = match &body {
                    Body::Json(value) => request.body(value.to_string()),
                    Body::Bytes(bytes) => request.body(bytes.clone()),
                };
                let response = request.send().await.unwrap();
                let status = response.status();
                let content_type = response
                    .headers()
                    .get("content-type")
                    .map(|v| v.to_str().unwrap_or_default().to_owned())
                    .unwrap_or_default();
                let text = response.text().await.unwrap();
                prop_assert!(
                    status.as_u16() < 500,
                    "{status} for {path} {body:?}: {text}"
                );
                if !status.is_success() {
                    prop_assert_eq!(content_type, "application/problem+json");
                    prop_assert_eq!(app.event_count().await, before, "refused but appended");
                }
                Ok(())
            })
        })
        .unwrap();
}
