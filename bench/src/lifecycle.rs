//! `bench saga`'s lifecycle run: orders placed, shipped in two parts,
//! delivered, and one in ten returned and received (restocked), each phase
//! sent by many clients at once as a busy warehouse would, the next phase
//! once the saga carried out the last. Prints orders/s through the whole
//! lifecycle, each phase's time, and what each order cost the databases.

use std::sync::Arc;
use std::time::{Duration, Instant};

use platform_tests::TestPlatform;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::connection::send_all;
use crate::measure::{Counts, sagas_stored, wait_confirmed};

/// One order in this many is returned.
const RETURN_EVERY: usize = 10;

/// How long each phase may take.
const PHASE_WITHIN: Duration = Duration::from_secs(900);

/// Two lines, so that the order ships in two parts: one unit of one
/// product, then two of another.
fn order(skus: &[String], n: usize) -> Value {
    json!({
        "customer_id": format!("bench-{}", n % 500),
        "lines": [
            {"sku": skus[n % skus.len()], "quantity": 1},
            {"sku": skus[(n + 37) % skus.len()], "quantity": 2},
        ],
        "payment_method": "tok_visa",
    })
}

pub async fn run(
    platform: &Arc<TestPlatform>,
    skus: &[String],
    orders: usize,
    clients: usize,
    databases: &[String],
) -> anyhow::Result<()> {
    anyhow::ensure!(
        skus.len() > 37,
        "the lifecycle run needs 38 products or more"
    );
    let pool = &platform.pool;
    let address = platform.address;
    let counts = Counts::start(pool, databases).await?;
    let started = Instant::now();
    let mut phases = Vec::new();
    let mut phase = |name: &'static str, since: &mut Instant| {
        phases.push((name, since.elapsed()));
        *since = Instant::now();
    };
    let mut since = Instant::now();

    let before = sagas_stored(pool).await?;
    let placed = send_all(
        address,
        clients,
        (0..orders)
            .map(|n| ("/api/orders".to_owned(), order(skus, n)))
            .collect(),
    )
    .await?;
    let ids: Vec<String> = placed
        .iter()
        .map(|answer| field(answer, "order_id"))
        .collect::<anyhow::Result<_>>()?;
    wait_confirmed(platform, &ids, before, PHASE_WITHIN).await?;
    phase("placed -> CONFIRMED", &mut since);

    let mut shipments = Vec::new();
    for part in 0..2 {
        let from = last_position(pool).await?;
        let answers = send_all(
            address,
            clients,
            ids.iter()
                .enumerate()
                .map(|(n, id)| {
                    let (sku, quantity) = if part == 0 {
                        (&skus[n % skus.len()], 1)
                    } else {
                        (&skus[(n + 37) % skus.len()], 2)
                    };
                    (
                        format!("/api/orders/{id}/shipments"),
                        json!({"lines": [{"sku": sku, "quantity": quantity}],
                               "carrier": "DHL", "tracking_number": format!("B{n:07}-{part}")}),
                    )
                })
                .collect(),
        )
        .await?;
        for answer in &answers {
            shipments.push((field(answer, "order_id")?, field(answer, "shipment_id")?));
        }
        carried_out(pool, from, "ShipmentShipped", ids.len()).await?;
        phase(
            if part == 0 {
                "first shipments captured and shipped"
            } else {
                "second shipments captured and shipped"
            },
            &mut since,
        );
    }

    send_all(
        address,
        clients,
        shipments
            .iter()
            .map(|(id, shipment)| {
                (
                    format!("/api/orders/{id}/shipments/{shipment}/delivered"),
                    json!({}),
                )
            })
            .collect(),
    )
    .await?;
    phase("every shipment delivered", &mut since);

    let returned: Vec<(usize, &String)> = ids.iter().enumerate().step_by(RETURN_EVERY).collect();
    let from = last_position(pool).await?;
    let requested = send_all(
        address,
        clients,
        returned
            .iter()
            .map(|(n, id)| {
                (
                    format!("/api/orders/{id}/returns"),
                    json!({"lines": [{"sku": skus[(n + 37) % skus.len()], "quantity": 1}],
                           "reason": "too big"}),
                )
            })
            .collect(),
    )
    .await?;
    send_all(
        address,
        clients,
        requested
            .iter()
            .map(|answer| {
                Ok((
                    format!(
                        "/api/orders/{}/returns/{}/receive",
                        field(answer, "order_id")?,
                        field(answer, "return_id")?
                    ),
                    json!({"restock": true}),
                ))
            })
            .collect::<anyhow::Result<_>>()?,
    )
    .await?;
    carried_out(pool, from, "CaptureRefunded", returned.len()).await?;
    phase(
        "one in ten returned, received, refunded and restocked",
        &mut since,
    );

    let took = started.elapsed();
    println!(
        "lifecycle: {orders} orders (2 lines) placed, shipped in two parts, delivered, one in {RETURN_EVERY} \
         returned and received, by {clients} clients a phase: {:.2} s, {:.0} orders/s through the whole lifecycle",
        took.as_secs_f64(),
        orders as f64 / took.as_secs_f64()
    );
    for (name, spent) in &phases {
        println!("  {name}: {:.2} s", spent.as_secs_f64());
    }
    if let Some(counts) = counts {
        counts.print(pool, orders).await?;
    }
    Ok(())
}

fn field(answer: &Value, name: &str) -> anyhow::Result<String> {
    answer[name]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no {name} in {answer}"))
}

async fn last_position(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT coalesce(max(global_position), 0) FROM events")
            .fetch_one(pool)
            .await?,
    )
}

/// Waits until `count` events of `event_type` (or more) were stored after
/// `from` and no saga is at work any more.
async fn carried_out(
    pool: &PgPool,
    from: i64,
    event_type: &str,
    count: usize,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + PHASE_WITHIN;
    loop {
        let (seen, running): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM events WHERE global_position > $1 AND event_type = $2),
                    (SELECT count(*) FROM sagas WHERE NOT done)",
        )
        .bind(from)
        .bind(event_type)
        .fetch_one(pool)
        .await?;
        // A return refunded from two captures has two refunds.
        if seen >= count as i64 && running == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{seen} of {count} {event_type} after {PHASE_WITHIN:?} ({running} sagas at work)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
