//! The shop's warehouse in a flow: once an order is confirmed it ships it
//! (whole, or in two parts), marks it delivered, takes a unit back and
//! receives it, or cancels what is left after a partial shipment. It reads
//! each order through GraphQL as a shop would, and sends each command under
//! an idempotency key of its own, so that sending again after a lost answer
//! (or because the read side had not caught up) never repeats it.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{FlowReport, send};

/// What the warehouse does with a confirmed order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// One shipment of everything, delivered.
    ShippedWhole,
    /// Two shipments, both delivered; one unit returned, received and
    /// restocked.
    ShippedInPartsAndReturned,
    /// One unit shipped, then the order cancelled: the rest is released
    /// and its authorization voided.
    CancelledAfterAPartialShipment,
}

impl Fate {
    pub const ALL: [Fate; 3] = [
        Fate::ShippedWhole,
        Fate::ShippedInPartsAndReturned,
        Fate::CancelledAfterAPartialShipment,
    ];

    /// The fate of the `n`th order the warehouse saw confirmed.
    pub fn nth(n: usize) -> Self {
        Self::ALL[n % Self::ALL.len()]
    }

    pub fn name(self) -> &'static str {
        match self {
            Fate::ShippedWhole => "shipped whole and delivered",
            Fate::ShippedInPartsAndReturned => "shipped in two parts, delivered, one unit returned",
            Fate::CancelledAfterAPartialShipment => "cancelled after a partial shipment",
        }
    }
}

/// How an order given to the warehouse ended, besides its fate: the saga
/// cancelled it (a declined card, a provider that never answered).
const CANCELLED_BEFORE_SHIPPING: &str = "cancelled by the saga before anything shipped";

/// An order the warehouse works on: its index in the flow, its id and lines
/// as placed (SKU, units; two units at least), and what it does with it,
/// decided once it sees the order confirmed (the fates in turn, so that
/// each gets its share of the orders that confirm, whatever a fault
/// cancelled).
#[derive(Debug, Clone)]
pub struct Job {
    pub i: usize,
    pub id: String,
    pub lines: Vec<(String, u64)>,
    pub fate: Option<Fate>,
}

/// How long an order may take through its fate once handed over.
const WITHIN: Duration = Duration::from_secs(170);

/// Orders read in one GraphQL request.
const READ_AT_ONCE: usize = 10;

/// How often the warehouse looks at its orders.
const ROUND: Duration = Duration::from_millis(300);

/// How long before the same command is sent again when the order still
/// does not show it.
const RESEND_AFTER: Duration = Duration::from_secs(2);

/// An order as the warehouse reads it.
#[derive(Debug)]
struct Seen {
    status: String,
    refunded: i64,
    /// Id and status of each shipment, oldest first.
    shipments: Vec<(String, String)>,
    /// Id, status and refund of each return, oldest first.
    returns: Vec<(String, String, i64)>,
}

impl Seen {
    fn from(order: &Value) -> Option<Self> {
        let text = |value: &Value| value.as_str().map(str::to_owned);
        Some(Self {
            status: text(&order["status"])?,
            refunded: order["refundedCents"].as_i64()?,
            shipments: order["shipments"]
                .as_array()?
                .iter()
                .map(|s| Some((text(&s["id"])?, text(&s["status"])?)))
                .collect::<Option<_>>()?,
            returns: order["returns"]
                .as_array()?
                .iter()
                .map(|r| {
                    Some((
                        text(&r["id"])?,
                        text(&r["status"])?,
                        r["refundCents"].as_i64()?,
                    ))
                })
                .collect::<Option<_>>()?,
        })
    }
}

/// The next thing to do with an order.
#[derive(Debug, PartialEq)]
enum Next {
    Wait,
    Send {
        key: String,
        path: String,
        body: Value,
    },
    Done(&'static str),
    /// Something the contract does not allow happened to the order.
    Wrong(&'static str),
}

struct Working {
    job: Job,
    since: Instant,
    /// The last command's key, and when it was sent.
    sent: Option<(String, Instant)>,
    last_seen: Option<String>,
}

impl Working {
    /// What the report says of an order that went wrong.
    fn wrong(&self, what: &str) -> String {
        format!(
            "order {} ({}): {what}; last seen {}",
            self.job.id,
            self.job.fate.map_or("no fate yet", Fate::name),
            self.last_seen.as_deref().unwrap_or("never")
        )
    }
}

/// The shipments the fate makes of the order's lines.
fn parts(job: &Job, fate: Fate) -> Vec<Vec<(String, u64)>> {
    if fate == Fate::ShippedWhole {
        return vec![job.lines.clone()];
    }
    let (first_sku, first_units) = &job.lines[0];
    let first = vec![(first_sku.clone(), 1)];
    if fate == Fate::CancelledAfterAPartialShipment {
        return vec![first];
    }
    let mut rest = Vec::new();
    if *first_units > 1 {
        rest.push((first_sku.clone(), first_units - 1));
    }
    rest.extend(job.lines[1..].iter().cloned());
    vec![first, rest]
}

fn lines_body(lines: &[(String, u64)]) -> Value {
    Value::Array(
        lines
            .iter()
            .map(|(sku, quantity)| json!({"sku": sku, "quantity": quantity}))
            .collect(),
    )
}

/// What to do next with `job`'s order, as `seen`.
fn next(job: &Job, seen: &Seen) -> Next {
    let Some(fate) = job.fate else {
        return match seen.status.as_str() {
            "CANCELLED" => Next::Done(CANCELLED_BEFORE_SHIPPING),
            _ => Next::Wait,
        };
    };
    let id = &job.id;
    let command = |key: String, path: String, body: Value| Next::Send { key, path, body };
    let parts = parts(job, fate);
    let cancels = fate == Fate::CancelledAfterAPartialShipment;
    if seen.status == "CANCELLED" {
        // Seen confirmed, and cancelled by nobody in the flow.
        return if seen.shipments.is_empty() {
            Next::Wrong("cancelled after it was confirmed, before anything shipped")
        } else if cancels && seen.shipments.iter().all(|(_, s)| s == "SHIPPED") {
            Next::Done(fate.name())
        } else {
            Next::Wrong("cancelled after a shipment the warehouse did not cancel")
        };
    }
    if seen.status == "PLACED" {
        return Next::Wait;
    }
    if seen.shipments.iter().any(|(_, s)| s == "FAILED") {
        return Next::Wrong("a shipment failed (no card here declines a capture)");
    }
    if seen.shipments.iter().any(|(_, s)| s == "PENDING") {
        return Next::Wait;
    }
    let shipped = seen.shipments.len();
    if shipped < parts.len() {
        return command(
            format!("ship-{shipped}"),
            format!("/api/orders/{id}/shipments"),
            json!({"lines": lines_body(&parts[shipped]), "carrier": "DHL",
                   "tracking_number": format!("JD{:06}-{shipped}", job.i)}),
        );
    }
    if cancels {
        return command(
            "cancel".into(),
            format!("/api/orders/{id}/cancel"),
            json!({"reason": "the rest is out of stock"}),
        );
    }
    if let Some(n) = seen.shipments.iter().position(|(_, s)| s == "SHIPPED") {
        return command(
            format!("deliver-{n}"),
            format!(
                "/api/orders/{id}/shipments/{}/delivered",
                seen.shipments[n].0
            ),
            json!({}),
        );
    }
    if fate != Fate::ShippedInPartsAndReturned {
        return if seen.status == "DELIVERED" {
            Next::Done(fate.name())
        } else {
            Next::Wait
        };
    }
    match seen.returns.first() {
        _ if seen.status != "DELIVERED" => Next::Wait,
        None => command(
            "return".into(),
            format!("/api/orders/{id}/returns"),
            json!({"lines": lines_body(&[(job.lines[0].0.clone(), 1)]), "reason": "chipped"}),
        ),
        Some((return_id, status, _)) if status == "REQUESTED" => command(
            "receive".into(),
            format!("/api/orders/{id}/returns/{return_id}/receive"),
            json!({"restock": true}),
        ),
        Some((_, _, refund)) if seen.refunded >= *refund => Next::Done(fate.name()),
        Some(_) => Next::Wait,
    }
}

const READ: &str = "status refundedCents shipments { id status } returns { id status refundCents }";

/// Reads `ids` through the first API that answers; `None` for an order it
/// could not read this time (a fault, or a read side behind).
async fn read(client: &reqwest::Client, apis: &[String], ids: &[String]) -> Vec<Option<Seen>> {
    let query = ids
        .iter()
        .enumerate()
        .map(|(n, id)| format!("o{n}: order(id: \"{id}\") {{ {READ} }}"))
        .collect::<Vec<_>>()
        .join(" ");
    for api in apis {
        let answer = client
            .post(format!("{api}/graphql"))
            .json(&json!({"query": format!("{{ {query} }}")}))
            .send()
            .await;
        let Ok(answer) = answer else { continue };
        let Ok(body) = answer.json::<Value>().await else {
            continue;
        };
        return (0..ids.len())
            .map(|n| Seen::from(&body["data"][format!("o{n}")]))
            .collect();
    }
    ids.iter().map(|_| None).collect()
}

/// Works on every job it is given until each reached its end (or ran out of
/// time: that goes to the report's `wrong`), and counts the ends.
pub async fn warehouse(
    client: reqwest::Client,
    apis: Vec<String>,
    run: String,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    report: std::sync::Arc<Mutex<FlowReport>>,
) {
    let mut working: Vec<Working> = Vec::new();
    let mut ends: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut open = true;
    // Orders seen confirmed so far.
    let mut confirmed = 0;
    while open || !working.is_empty() {
        loop {
            match jobs.try_recv() {
                Ok(job) => working.push(Working {
                    job,
                    since: Instant::now(),
                    sent: None,
                    last_seen: None,
                }),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        let mut sending = tokio::task::JoinSet::new();
        let mut finished = Vec::new();
        for (chunk_start, chunk) in working
            .chunks(READ_AT_ONCE)
            .enumerate()
            .map(|(n, c)| {
                (
                    n * READ_AT_ONCE,
                    c.iter().map(|w| w.job.id.clone()).collect::<Vec<_>>(),
                )
            })
            .collect::<Vec<_>>()
        {
            let seen = read(&client, &apis, &chunk).await;
            for (offset, seen) in seen.into_iter().enumerate() {
                let index = chunk_start + offset;
                let work = &mut working[index];
                if let Some(seen) = &seen {
                    work.last_seen = Some(format!("{seen:?}"));
                    if work.job.fate.is_none()
                        && !matches!(seen.status.as_str(), "PLACED" | "CANCELLED")
                    {
                        work.job.fate = Some(Fate::nth(confirmed));
                        confirmed += 1;
                    }
                }
                match seen.as_ref().map(|seen| next(&work.job, seen)) {
                    Some(Next::Done(end)) => {
                        *ends.entry(end).or_default() += 1;
                        finished.push(index);
                    }
                    Some(Next::Wrong(what)) => {
                        report.lock().unwrap().wrong.push(work.wrong(what));
                        finished.push(index);
                    }
                    Some(Next::Send { key, path, body }) => {
                        let again = work
                            .sent
                            .as_ref()
                            .is_some_and(|(k, at)| *k == key && at.elapsed() < RESEND_AFTER);
                        if !again {
                            work.sent = Some((key.clone(), Instant::now()));
                            let (client, apis, report) =
                                (client.clone(), apis.clone(), std::sync::Arc::clone(&report));
                            let key = format!("{run}-warehouse-{}-{key}", work.job.i);
                            let i = work.job.i;
                            sending.spawn(async move {
                                send(&client, &apis, i, &path, &body, &key, &report).await;
                            });
                        }
                    }
                    Some(Next::Wait) | None => {}
                }
                if work.since.elapsed() > WITHIN && !finished.contains(&index) {
                    let late = format!("did not get through its fate in {WITHIN:?}");
                    report.lock().unwrap().wrong.push(work.wrong(&late));
                    finished.push(index);
                }
            }
        }
        while let Some(done) = sending.join_next().await {
            done.unwrap();
        }
        finished.sort_unstable();
        for index in finished.into_iter().rev() {
            working.swap_remove(index);
        }
        tokio::time::sleep(ROUND).await;
    }
    let mut report = report.lock().unwrap();
    for (end, count) in ends {
        *report.lifecycle.entry(end).or_default() += count;
    }
}
