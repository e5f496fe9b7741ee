//! The fault suite: orders flow through a platform of separate `orders`
//! processes on the real services (mixed tokens, some cancelled by their
//! customers, a third shipped whole or in parts, delivered, returned, or
//! cancelled after a partial shipment by the shop's warehouse) while a part
//! of it fails; afterwards every accepted order has ended, every order the
//! warehouse took went where it was sent, and `orders audit` finds the
//! books balanced.
//!
//! The cases stop PostgreSQL and Kafka, so they run one at a time. The flows
//! are small to stay inside CI's time; `ORDERS_FAULT_SCALE=10` makes every
//! flow ten times larger.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use support::warehouse::Fate;
use support::{Cluster, FlowPlan, FlowReport, flow, services, services_are_ours};

/// The cases take the services down: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long every order may take to end once the fault is over.
const ENDED_WITHIN: Duration = Duration::from_secs(180);

fn scaled(orders: usize) -> usize {
    let scale: usize = std::env::var("ORDERS_FAULT_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    orders * scale.max(1)
}

fn skus(n: usize) -> Vec<String> {
    (0..n).map(|n| format!("SKU-{n}")).collect()
}

/// One process per role: gateway, api, relay, projections, saga.
async fn one_of_each(test: &str) -> Cluster {
    let mut cluster = Cluster::new(test).await;
    for role in ["gateway", "api", "relay", "projections", "saga"] {
        cluster.add(&format!("{role}-1"), role, &[]);
    }
    cluster.ready().await;
    cluster.products(&skus(8), 100_000).await;
    cluster
}

/// Waits until `count` orders were accepted.
async fn accepted(progress: &AtomicUsize, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while progress.load(Ordering::SeqCst) < count {
        assert!(
            Instant::now() < deadline,
            "the flow stalled before the fault"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts a mixed flow of `orders` and returns it with its progress.
fn start_flow(
    cluster: &Cluster,
    plan: FlowPlan,
) -> (tokio::task::JoinHandle<FlowReport>, Arc<AtomicUsize>) {
    let progress = Arc::new(AtomicUsize::new(0));
    let flowing = tokio::spawn(flow(cluster.apis(), plan, Arc::clone(&progress)));
    (flowing, progress)
}

/// The flow's answers were all in the contract, every accepted order ended,
/// and the books balance.
async fn ends_clean(cluster: &Cluster, report: &FlowReport) -> usize {
    assert!(
        report.wrong.is_empty(),
        "answers off contract: {:#?}",
        report.wrong
    );
    assert!(!report.accepted.is_empty());
    let confirmed = cluster.all_ended(&report.accepted, ENDED_WITHIN).await;
    cluster.books_balance(Duration::from_secs(30)).await;
    eprintln!(
        "{} orders accepted ({} confirmed); {} answers 503, {} connections refused, all retried; \
         the warehouse's orders: {:?}",
        report.accepted.len(),
        confirmed,
        report.unavailable,
        report.refused,
        report.lifecycle
    );
    let mut reasons = std::collections::BTreeMap::<String, usize>::new();
    for (_, reason) in cluster.cancellations(&report.accepted).await {
        *reasons.entry(reason).or_default() += 1;
    }
    eprintln!("cancelled: {reasons:?}");
    // A flow with a warehouse took orders through every fate.
    if report.to_warehouse > 0 {
        for fate in Fate::ALL {
            assert!(
                report.lifecycle.get(fate.name()).is_some_and(|&n| n > 0),
                "no order was {}: {:?}",
                fate.name(),
                report.lifecycle
            );
        }
    }
    confirmed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_event_writes_blocked_longer_than_the_step_deadline() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let cluster = one_of_each("faults-a-events-locked").await;
    let plan = FlowPlan::mixed(scaled(150), &skus(8));
    let (flowing, progress) = start_flow(&cluster, plan.clone());
    accepted(&progress, plan.orders / 3).await;

    // Another session holds every write to the events table for longer
    // than a saga step may take and than a request may wait.
    let mut locker = cluster.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE events IN EXCLUSIVE MODE")
        .execute(&mut *locker)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(7)).await;
    locker.rollback().await.unwrap();

    let report = flowing.await.unwrap();
    assert!(
        report.unavailable > 0,
        "no request met the lock: the fault missed the flow"
    );
    ends_clean(&cluster, &report).await;
}

/// A service of `scripts/services` stopped for a few seconds mid-flow, then
/// started again.
async fn service_restarted_mid_flow(test: &str, service: &str) {
    let _serial = ONE_AT_A_TIME.lock().await;
    assert!(
        services_are_ours(service),
        "this case stops and starts {service}: run it against the one scripts/services starts"
    );
    let cluster = one_of_each(test).await;
    let plan = FlowPlan::mixed(scaled(150), &skus(8));
    let (flowing, progress) = start_flow(&cluster, plan.clone());
    accepted(&progress, plan.orders / 3).await;

    services(&["stop", service]);
    tokio::time::sleep(Duration::from_secs(4)).await;
    services(&["start", service]);

    let report = flowing.await.unwrap();
    ends_clean(&cluster, &report).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_postgresql_stopped_and_started() {
    service_restarted_mid_flow("faults-b-postgres", "postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_kafka_stopped_and_started() {
    service_restarted_mid_flow("faults-c-kafka", "kafka").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d_gateway_killed_and_restarted() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut cluster = one_of_each("faults-d-gateway").await;
    let plan = FlowPlan::mixed(scaled(150), &skus(8));
    let (flowing, progress) = start_flow(&cluster, plan.clone());
    accepted(&progress, plan.orders / 3).await;

    cluster.kill("gateway-1");
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.start("gateway-1");

    let report = flowing.await.unwrap();
    ends_clean(&cluster, &report).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e_two_of_every_role_then_one_of_each_killed_in_turn() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut cluster = Cluster::new("faults-e-two-of-each").await;
    for role in ["gateway", "api", "relay", "projections", "saga"] {
        for n in 1..=2 {
            cluster.add(&format!("{role}-{n}"), role, &[]);
        }
    }
    cluster.ready().await;
    cluster.products(&skus(8), 100_000).await;

    // No fault: every paid order on one product must confirm. (Not scaled:
    // every order writes the one product's stream, which is loaded whole for
    // each step; thousands of them outlast the 2 s step deadline.)
    let plan = FlowPlan::paid(120, "SKU-0", 8);
    let report = flow(cluster.apis(), plan, Arc::default()).await;
    let confirmed = ends_clean(&cluster, &report).await;
    assert_eq!(
        confirmed,
        report.accepted.len(),
        "a paid order did not confirm: {:?} (logs: {})",
        cluster.cancellations(&report.accepted).await,
        cluster.logs.display()
    );

    // Then one process of each role is killed and restarted, in turn.
    let plan = FlowPlan {
        rate: Some(15.0),
        ..FlowPlan::mixed(scaled(200), &skus(8))
    };
    let (total, step) = (plan.orders, plan.orders / 8);
    let (flowing, progress) = start_flow(&cluster, plan);
    let mut seen = progress.load(Ordering::SeqCst);
    for name in [
        "saga-1",
        "api-1",
        "relay-1",
        "projections-1",
        "gateway-1",
        "saga-2",
    ] {
        // Late kills may come after the last order: its sagas are still at work.
        accepted(&progress, (seen + step).min(total)).await;
        cluster.kill(name);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        cluster.start(name);
        seen = progress.load(Ordering::SeqCst);
    }
    let report = flowing.await.unwrap();
    ends_clean(&cluster, &report).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_a_poison_message_on_each_topic_the_platform_consumes() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let cluster = one_of_each("faults-f-poison").await;
    let topics = event_contract::Topics::with_prefix(&cluster.topics.prefix);
    let plan = FlowPlan::mixed(scaled(100), &skus(8));
    let (flowing, progress) = start_flow(&cluster, plan.clone());
    accepted(&progress, plan.orders / 3).await;
    // Not JSON, and an envelope of no known event, keyed as real aggregates.
    let poisoned = ["Order", "Product"];
    for aggregate in poisoned {
        let topic = topics.for_aggregate(aggregate).unwrap();
        let payloads = ["{not json", r#"{"event_type":"Nonsense","payload":{}}"#];
        platform::testing::produce_poison(&topic, "poison", &payloads)
            .await
            .unwrap();
    }
    let report = flowing.await.unwrap();
    ends_clean(&cluster, &report).await;

    // Each consumer of the topic sent each poison message to its dead letters:
    // the saga and two read models on orders, one read model on products.
    for (aggregate, consumers) in [("Order", 3), ("Product", 1)] {
        let dead = topics
            .for_aggregate(aggregate)
            .map(|t| event_contract::Topics::dead_letter(&t));
        let messages =
            platform::testing::consume(&[dead.unwrap()], 2 * consumers, Duration::from_secs(30))
                .await
                .unwrap();
        assert_eq!(messages.len(), 2 * consumers, "{aggregate}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g_a_restart_then_a_cancel_and_squatted_keys() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut cluster = one_of_each("faults-g-restart-cancel").await;
    let plan = FlowPlan::paid(4, "SKU-0", 2);
    let report = flow(cluster.apis(), plan, Arc::default()).await;
    assert_eq!(cluster.all_ended(&report.accepted, ENDED_WITHIN).await, 4);

    // Everything restarts: processes, and with them anything in memory.
    let names = cluster.names();
    for name in &names {
        cluster.kill(name);
    }
    for name in &names {
        cluster.start(name);
    }
    cluster.ready().await;

    let client = identity::testing::admin_client();
    let api = &cluster.apis()[0];
    // Someone squats the keys of the second order's undo.
    let squatted = &report.accepted[1];
    for step in ["refund", "voided:1", "release:SKU-0", "cancel"] {
        let answer = client
            .post(format!("{api}/api/products/SKU-0/stock"))
            .header("idempotency-key", format!("saga:{squatted}:{step}"))
            .json(&json!({"quantity": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 202);
    }
    for id in &report.accepted[..2] {
        let answer = client
            .post(format!("{api}/api/orders/{id}/cancel"))
            .json(&json!({"reason": "changed my mind"}))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 202);
    }
    cluster.all_ended(&report.accepted, ENDED_WITHIN).await;
    // The cancels reopen the sagas: wait until both undid the order.
    let deadline = Instant::now() + ENDED_WITHIN;
    loop {
        let voided: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events WHERE aggregate_type = 'Payment'
              AND event_type = 'AuthorizationVoided' AND aggregate_id = ANY($1)",
        )
        .bind(&report.accepted[..2])
        .fetch_one(&cluster.pool)
        .await
        .unwrap();
        if voided == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{voided} of 2 authorizations voided"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.all_ended(&report.accepted, ENDED_WITHIN).await;
    cluster.books_balance(Duration::from_secs(30)).await;
}
