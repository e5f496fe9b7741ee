//! A real Prometheus (`scripts/services start prometheus`) scrapes a running
//! platform through the committed scrape configuration's file-based
//! discovery, and PromQL finds what operators watch: relay lag, projection
//! lag, saga states and request latency histograms.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_platform_and_promql_finds_what_operators_watch() {
    let (platform, _gateway) = TestPlatform::start_with_saga(Policy::default()).await;
    platform.create_product("MUG", 1250, 10).await;
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
    let entry =
        json!([{"targets": [platform.address.to_string()], "labels": {"role": "all", "run": run}}]);
    let temporary = file.with_extension("tmp");
    std::fs::write(&temporary, entry.to_string()).unwrap();
    std::fs::rename(&temporary, &file).unwrap();
    let _target = Target(file);

    let client = reqwest::Client::new();
    let up = present(&client, &format!("up{{run=\"{run}\"}} == 1")).await;
    assert_eq!(up[0]["metric"]["job"], "orders-roles", "{up:?}");
    for promql in [
        // The relay's distance from the head of the event store.
        format!("relay_lag_events{{run=\"{run}\"}}"),
        // Each read model's distance from the relay.
        format!("projection_lag_events{{run=\"{run}\"}}"),
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
    platform.stop().await;
}
