//! A real Prometheus (`scripts/services start prometheus`) scrapes a running
//! platform through the committed scrape configuration's file-based
//! discovery, and PromQL finds what operators watch: relay lag, projection
//! lag, saga states and request latency histograms, and every metric the
//! Grafana dashboard in `deploy/grafana/` names.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::path::PathBuf;
use std::time::Duration;

use platform_tests::TestPlatform;
use saga_orchestrator::driver::Policy;
use serde_json::{Value, json};

const WITHIN: Duration = Duration::from_secs(60);

/// Where Prometheus answers: `ORDERS_PROMETHEUS_URL`, or the one
/// `scripts/services` runs.
fn prometheus() -> String {
    std::env::var("ORDERS_PROMETHEUS_URL").unwrap_or_else(|_| "http://127.0.0.1:9090".into())
}

/// The folder of target files the scrape configuration discovers
/// (`.local/prometheus/targets`, or under `ORDERS_LOCAL_DIR`).
fn targets_dir() -> PathBuf {
    let local = std::env::var_os("ORDERS_LOCAL_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.local"),
        PathBuf::from,
    );
    local.join("prometheus/targets")
}

/// A target file, removed when dropped.
struct Target(PathBuf);

impl Drop for Target {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The result vector of a PromQL instant query.
async fn query(client: &reqwest::Client, promql: &str) -> Vec<Value> {
    let answer: Value = client
        .get(
            reqwest::Url::parse_with_params(
                &format!("{}/api/v1/query", prometheus()),
                [("query", promql)],
            )
            .unwrap(),
        )
        .send()
        .await
        .unwrap_or_else(|error| {
            panic!(
                "no Prometheus at {} ({error}): start it with scripts/services start prometheus",
                prometheus()
            )
        })
        .json()
        .await
        .unwrap();
    assert_eq!(answer["status"], "success", "{promql}: {answer}");
    answer["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Waits until `promql` returns at least one series.
async fn present(client: &reqwest::Client, promql: &str) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let found = query(client, promql).await;
        if !found.is_empty() {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Prometheus has no {promql} after {WITHIN:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The metrics a PromQL expression reads: its identifiers, less label
/// matchers, ranges, grouping labels, functions and keywords.
fn metric_names(expr: &str) -> Vec<String> {
    const PROMQL: &[&str] = &[
        "sum",
        "rate",
        "irate",
        "increase",
        "max",
        "min",
        "avg",
        "count",
        "histogram_quantile",
        "by",
        "without",
        "topk",
        "bottomk",
        "and",
        "or",
        "unless",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "offset",
        "bool",
        "abs",
        "clamp_min",
        "clamp_max",
        "delta",
        "deriv",
        "time",
        "vector",
        "scalar",
        "sort",
        "sort_desc",
        "quantile",
        "stddev",
    ];
    // Label matchers and ranges go; so do the labels a grouping names.
    let mut plain = String::new();
    let mut depth = 0;
    for c in expr.chars() {
        match c {
            '{' | '[' => depth += 1,
            '}' | ']' => depth -= 1,
            _ if depth == 0 => plain.push(c),
            _ => {}
        }
    }
    // Words (numbers whole) and parentheses.
    let mut tokens: Vec<String> = Vec::new();
    let mut word = String::new();
    for c in plain.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '.') {
            word.push(c);
            continue;
        }
        if !word.is_empty() {
            tokens.push(std::mem::take(&mut word));
        }
        if matches!(c, '(' | ')') {
            tokens.push(c.to_string());
        }
    }
    if !word.is_empty() {
        tokens.push(word);
    }
    let mut names: Vec<String> = Vec::new();
    let mut tokens = tokens.iter();
    while let Some(token) = tokens.next() {
        if token == "by" || token == "without" {
            // `by (a, b)`: the labels up to the closing parenthesis.
            for label in tokens.by_ref() {
                if label == ")" {
                    break;
                }
            }
            continue;
        }
        let word = token
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        if word && !PROMQL.contains(&token.as_str()) && !names.contains(token) {
            names.push(token.clone());
        }
    }
    names
}

#[test]
fn metric_names_are_read_out_of_promql() {
    assert_eq!(
        metric_names(
            "histogram_quantile(0.99, sum by (le, operation) (rate(payment_gateway_request_seconds_bucket{job=\"x\"}[5m])))"
        ),
        ["payment_gateway_request_seconds_bucket"]
    );
    assert_eq!(
        metric_names(
            "max by (consumer, topic, partition) (consumer_lag_messages) + relay_lag_events"
        ),
        ["consumer_lag_messages", "relay_lag_events"]
    );
}

/// Every metric the committed Grafana dashboard names.
fn dashboard_metrics() -> Vec<String> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/orders-platform.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut names: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .flat_map(|target| metric_names(target["expr"].as_str().unwrap()))
        .collect();
    names.sort();
    names.dedup();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_platform_and_promql_finds_what_operators_watch() {
    let (platform, _gateway) = TestPlatform::start_with_saga(Policy::default()).await;
    platform.create_product("MUG", 1250, 10).await;
    // Enough events on one stream for a snapshot (every 100 by default).
    for _ in 0..100 {
        platform
            .command("/api/products/MUG/stock", &json!({"quantity": 1}), 202)
            .await;
    }
    let placed = platform
        .command(
            "/api/orders",
            &json!({"customer_id": "c-1", "lines": [{"sku": "MUG", "quantity": 1}], "payment_method": "tok_visa"}),
            202,
        )
        .await;
    let order_id = placed["order_id"].as_str().unwrap().to_owned();
    platform
        .eventually(
            "query($id: ID!) { order(id: $id) { status } }",
            json!({"id": order_id}),
            Duration::from_secs(30),
            |data| (data["order"]["status"] == "CONFIRMED").then_some(()),
        )
        .await;

    // This platform joins the targets Prometheus discovers, under a run
    // label of its own.
    let run = uuid::Uuid::new_v4().simple().to_string();
    std::fs::create_dir_all(targets_dir()).unwrap();
    let file = targets_dir().join(format!("test-{run}.json"));
    // Prometheus scrapes the port a deployment keeps for it inside its
    // network (the API's own `/metrics` wants an administrator's token).
    let metrics = platform
        .metrics
        .expect("the test platform serves metrics_listen");
    let entry = json!([{"targets": [metrics.to_string()], "labels": {"role": "all", "run": run}}]);
    let temporary = file.with_extension("tmp");
    std::fs::write(&temporary, entry.to_string()).unwrap();
    std::fs::rename(&temporary, &file).unwrap();
    let _target = Target(file);

    let client = reqwest::Client::new();
    let up = present(&client, &format!("up{{run=\"{run}\"}} == 1")).await;
    assert_eq!(up[0]["metric"]["job"], "orders", "{up:?}");
    for promql in [
        // The relay's distance from the head of the event store.
        format!("relay_lag_events{{run=\"{run}\"}}"),
        // Each read model's distance from the relay.
        format!("projection_lag_events{{run=\"{run}\"}}"),
        // Each consumer's, the saga's too, by partition.
        format!("consumer_lag_messages{{run=\"{run}\", consumer=\"saga\"}}"),
        format!("consumer_lag_messages{{run=\"{run}\", consumer=\"orders\"}}"),
        // Sagas by state: the confirmed one is counted.
        format!("sagas_ended_total{{run=\"{run}\", state=\"CONFIRMED\"}} >= 1"),
        format!("sagas{{run=\"{run}\"}}"),
        // Request latency, as a histogram PromQL can take quantiles of.
        format!(
            "histogram_quantile(0.99, sum by (le) (http_request_duration_seconds_bucket{{run=\"{run}\"}})) >= 0"
        ),
    ] {
        present(&client, &promql).await;
    }
    // The dashboard shows nothing that the platform does not export.
    let names = dashboard_metrics();
    assert!(names.len() > 10, "{names:?}");
    for name in names {
        present(&client, &format!("{{__name__=\"{name}\", run=\"{run}\"}}")).await;
    }
    platform.stop().await;
}
