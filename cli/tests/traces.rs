//! One trace per order, across every hop, in a real Jaeger
//! (`scripts/services start jaeger`): the platform's roles run as processes
//! of their own that send their spans over OTLP, an order is placed with a
//! caller's `traceparent`, and Jaeger's query API must hold, in that one
//! trace, the spans of the API, the append, the relay, a projection, the saga
//! and the gateway, each parent starting before its children. A declined
//! order's trace holds its compensations. Batch spans link the traces of the
//! events they carry, and log lines name the trace they belong to.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::Cluster;

/// Where Jaeger's query API answers: `ORDERS_JAEGER_URL`, or the one
/// `scripts/services` runs.
fn jaeger() -> String {
    std::env::var("ORDERS_JAEGER_URL").unwrap_or_else(|_| "http://127.0.0.1:16686".into())
}

/// Where the processes send their spans: `ORDERS_TEST_OTLP_ENDPOINT`, or the
/// Jaeger `scripts/services` runs.
fn otlp() -> String {
    std::env::var("ORDERS_TEST_OTLP_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:4318".into())
}

const ROLES: [&str; 5] = ["gateway", "api", "relay", "projections", "saga"];

/// One span as Jaeger gives it back.
#[derive(Debug, Clone)]
struct Span {
    id: String,
    parent: Option<String>,
    operation: String,
    service: String,
    start: u64,
    tags: HashMap<String, Value>,
}

impl Span {
    fn kind(&self) -> Option<&str> {
        self.tags.get("span.kind").and_then(Value::as_str)
    }
}

/// The spans of trace `trace_id` (empty while Jaeger has none).
async fn trace(client: &reqwest::Client, trace_id: &str) -> Vec<Span> {
    let answer = client
        .get(format!("{}/api/traces/{trace_id}", jaeger()))
        .send()
        .await
        .unwrap_or_else(|error| {
            panic!(
                "no Jaeger at {} ({error}): start it with scripts/services start jaeger",
                jaeger()
            )
        });
    if answer.status() == 404 {
        return Vec::new();
    }
    let body: Value = answer.json().await.unwrap();
    let Some(found) = body["data"].as_array().and_then(|data| data.first()) else {
        return Vec::new();
    };
    spans_of(found)
}

fn spans_of(trace: &Value) -> Vec<Span> {
    let services: HashMap<&str, &str> = trace["processes"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(id, process)| (id.as_str(), process["serviceName"].as_str().unwrap()))
        .collect();
    trace["spans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|span| Span {
            id: span["spanID"].as_str().unwrap().to_owned(),
            parent: span["references"].as_array().and_then(|references| {
                references
                    .iter()
                    .find(|r| r["refType"] == "CHILD_OF")
                    .map(|r| r["spanID"].as_str().unwrap().to_owned())
            }),
            operation: span["operationName"].as_str().unwrap().to_owned(),
            service: services[span["processID"].as_str().unwrap()].to_owned(),
            start: span["startTime"].as_u64().unwrap(),
            tags: span["tags"]
                .as_array()
                .unwrap()
                .iter()
                .map(|tag| {
                    (
                        tag["key"].as_str().unwrap().to_owned(),
                        tag["value"].clone(),
                    )
                })
                .collect(),
        })
        .collect()
}

/// What a trace must hold: a description, and a test on its spans.
type Want<'a> = (&'a str, Box<dyn Fn(&[Span]) -> bool + 'a>);

fn has<'a>(service: &'a str, operation: &'a str) -> Want<'a> {
    let what: &'a str = Box::leak(format!("{operation:?} in {service}").into_boxed_str());
    (
        what,
        Box::new(move |spans: &[Span]| {
            spans
                .iter()
                .any(|s| s.service == service && s.operation == operation)
        }),
    )
}

/// Waits until trace `trace_id` holds everything `wanted` names and every
/// span's parent (but `outside`, the caller's) is in it too; returns it.
async fn complete_trace(
    client: &reqwest::Client,
    trace_id: &str,
    outside: Option<&str>,
    wanted: &[Want<'_>],
) -> Vec<Span> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let spans = trace(client, trace_id).await;
        let missing: Vec<&str> = wanted
            .iter()
            .filter(|(_, test)| !test(&spans))
            .map(|(what, _)| *what)
            .collect();
        let orphans: Vec<&Span> = spans
            .iter()
            .filter(|s| {
                s.parent.as_deref().is_some_and(|parent| {
                    Some(parent) != outside && !spans.iter().any(|p| p.id == parent)
                })
            })
            .collect();
        if missing.is_empty() && orphans.is_empty() {
            return spans;
        }
        assert!(
            Instant::now() < deadline,
            "trace {trace_id} still lacks {missing:?}; spans whose parent is not in it: {:?}; it holds {:?}",
            orphans.iter().map(|s| &s.operation).collect::<Vec<_>>(),
            spans
                .iter()
                .map(|s| format!("{} / {}", s.service, s.operation))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Every parent in the trace starts no later than each of its children.
fn parents_start_first(spans: &[Span]) {
    let by_id: HashMap<&str, &Span> = spans.iter().map(|s| (s.id.as_str(), s)).collect();
    for span in spans {
        if let Some(parent) = span.parent.as_deref().and_then(|id| by_id.get(id)) {
            assert!(
                parent.start <= span.start,
                "{} / {} starts before its parent {} / {}",
                span.service,
                span.operation,
                parent.service,
                parent.operation
            );
        }
    }
}

/// A cluster of one process per role, each sending its spans to Jaeger as
/// `<run>-<role>`.
async fn traced_cluster(test: &str) -> (Cluster, String) {
    let run = format!(
        "trace-test-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let mut cluster = Cluster::new(test).await;
    let endpoint = otlp();
    for role in ROLES {
        let service = format!("{run}-{role}");
        cluster.add(
            role,
            role,
            &[
                ("ORDERS_OTLP_ENDPOINT", endpoint.as_str()),
                ("ORDERS_OTLP_SERVICE_NAME", service.as_str()),
                ("ORDERS_LOG_FILTER", "info,sqlx=warn"),
                ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ],
        );
    }
    cluster.ready().await;
    (cluster, run)
}

async fn place(
    client: &reqwest::Client,
    cluster: &Cluster,
    sku: &str,
    token: &str,
    traceparent: Option<&str>,
) -> (String, String) {
    let mut request = client
        .post(format!("{}/api/orders", cluster.apis()[0]))
        .header("idempotency-key", uuid::Uuid::new_v4().to_string())
        .json(&json!({
            "customer_id": "c-1",
            "lines": [{"sku": sku, "quantity": 1}],
            "payment_method": token,
        }));
    if let Some(traceparent) = traceparent {
        request = request.header("traceparent", traceparent);
    }
    let answer = request.send().await.unwrap();
    assert_eq!(answer.status(), 202, "an order is accepted");
    let trace_id = answer
        .headers()
        .get("x-trace-id")
        .expect("every response names its trace")
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = answer.json().await.unwrap();
    (body["order_id"].as_str().unwrap().to_owned(), trace_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_order_is_one_trace_from_the_request_to_its_confirmation_across_every_process() {
    let (cluster, run) = traced_cluster("traces-confirmed").await;
    cluster.products(&["MUG".into()], 10).await;
    let client = identity::testing::admin_client();

    // The caller's own trace: the order joins it.
    let caller_trace = format!("{:032x}", uuid::Uuid::new_v4().as_u128());
    let caller_span = "00f067aa0ba902b7";
    let traceparent = format!("00-{caller_trace}-{caller_span}-01");
    let (order, trace_id) = place(&client, &cluster, "MUG", "tok_visa", Some(&traceparent)).await;
    assert_eq!(
        trace_id, caller_trace,
        "the request continues the caller's trace"
    );
    assert_eq!(
        cluster
            .all_ended(std::slice::from_ref(&order), Duration::from_secs(60))
            .await,
        1
    );

    let (api, relay, projections, saga, gateway) = (
        format!("{run}-api"),
        format!("{run}-relay"),
        format!("{run}-projections"),
        format!("{run}-saga"),
        format!("{run}-gateway"),
    );
    let spans = complete_trace(
        &client,
        &trace_id,
        Some(caller_span),
        &[
            has(&api, "POST /api/orders"),
            has(&api, "command Order"),
            has(&api, "append"),
            has(&relay, "publish OrderPlaced"),
            (
                "a projection consuming OrderPlaced",
                Box::new(|spans: &[Span]| {
                    spans.iter().any(|s| {
                        s.service == projections
                            && s.kind() == Some("consumer")
                            && s.operation.ends_with(" OrderPlaced")
                    })
                }),
            ),
            has(&saga, "saga OrderPlaced"),
            has(&saga, "saga reserve MUG"),
            has(&saga, "saga charge"),
            has(&saga, "payment gateway authorize"),
            has(&gateway, "POST /authorizations"),
            has(&gateway, "ledger authorize"),
            has(&saga, "saga confirm order"),
            has(&saga, "append"),
            has(&relay, "publish OrderConfirmed"),
        ],
    )
    .await;
    parents_start_first(&spans);
    // The gateway's request is the saga's call's child, across processes.
    let call = spans
        .iter()
        .find(|s| s.operation == "payment gateway authorize")
        .unwrap();
    let served = spans
        .iter()
        .find(|s| s.operation == "POST /authorizations")
        .unwrap();
    assert_eq!(served.parent.as_deref(), Some(call.id.as_str()));
    assert_eq!(call.kind(), Some("client"));
    assert_eq!(served.kind(), Some("server"));

    // The relay's batch span is in a trace of its own, linked to the order's.
    let linked = linking_batch(&client, &relay, "publish batch", &trace_id).await;
    assert!(linked, "no relay batch span links trace {trace_id}");

    // The API's log lines name the trace.
    let log = std::fs::read_to_string(cluster.logs.join("api.log")).unwrap();
    assert!(
        log.lines()
            .any(|line| line.contains(&format!("trace_id={trace_id}")) && line.contains("span_id=")),
        "no log line of the API names trace {trace_id}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_order_is_one_trace_with_its_compensations() {
    let (cluster, run) = traced_cluster("traces-cancelled").await;
    cluster.products(&["CUP".into()], 10).await;
    let client = identity::testing::admin_client();

    // No traceparent: the request starts the trace.
    let (order, trace_id) = place(&client, &cluster, "CUP", "tok_declined", None).await;
    assert_eq!(trace_id.len(), 32);
    assert_eq!(
        cluster
            .all_ended(std::slice::from_ref(&order), Duration::from_secs(60))
            .await,
        0,
        "a declined order ends cancelled"
    );
    let (api, relay, saga) = (
        format!("{run}-api"),
        format!("{run}-relay"),
        format!("{run}-saga"),
    );
    let spans = complete_trace(
        &client,
        &trace_id,
        None,
        &[
            has(&api, "POST /api/orders"),
            has(&saga, "saga charge"),
            has(&saga, "saga release CUP"),
            has(&saga, "saga cancel order"),
            has(&relay, "publish OrderCancelled"),
        ],
    )
    .await;
    parents_start_first(&spans);
    let roots: Vec<&Span> = spans.iter().filter(|s| s.parent.is_none()).collect();
    assert_eq!(roots.len(), 1, "one root: the request");
    assert_eq!(roots[0].operation, "POST /api/orders");
    let compensations: Vec<&Span> = spans
        .iter()
        .filter(|s| s.tags.get("compensation") == Some(&Value::Bool(true)))
        .collect();
    assert!(
        compensations.len() >= 2,
        "the release and the cancel are marked as compensations: {compensations:?}"
    );
}

/// Whether a span named `operation` of `service`, in a trace of its own,
/// links to trace `trace_id`.
async fn linking_batch(
    client: &reqwest::Client,
    service: &str,
    operation: &str,
    trace_id: &str,
) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found: Value = client
            .get(
                reqwest::Url::parse_with_params(
                    &format!("{}/api/traces", jaeger()),
                    [
                        ("service", service),
                        ("operation", operation),
                        ("limit", "100"),
                        ("lookback", "1h"),
                    ],
                )
                .unwrap(),
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let links = found["data"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|trace| trace["spans"].as_array().cloned().unwrap_or_default())
            .flat_map(|span| span["references"].as_array().cloned().unwrap_or_default())
            .any(|reference| {
                reference["refType"] == "FOLLOWS_FROM" && reference["traceID"] == trace_id
            });
        if links {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
