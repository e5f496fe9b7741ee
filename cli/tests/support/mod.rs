//! A platform of separate `orders` processes on real services, for tests that
//! kill, stop and restart its parts: the processes ([`Cluster`]), orders sent
//! as a shop would send them ([`flow`]), and the wait for every order to end.
// Each test binary uses a part of this.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use platform::testing::{TestDatabase, TestTopics, kafka_brokers};
use serde_json::{Value, json};
use sqlx::PgPool;

pub mod warehouse;

/// How long a request may take before the API answers 503 itself.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A running `orders` process, killed with SIGKILL when dropped (so that a
/// failing test leaves no process behind).
pub struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free port on 127.0.0.1 (free when asked; nothing else binds it here).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

struct Member {
    role: &'static str,
    env: Vec<(String, String)>,
    port: Option<u16>,
    process: Option<Process>,
}

/// The platform's roles as processes of their own, on a database, a gateway
/// database and topics of the test's own. Each process logs (warnings and
/// up) to `<target tmp>/<test>/<name>.log`.
pub struct Cluster {
    pub database: TestDatabase,
    pub gateway_database: TestDatabase,
    pub topics: TestTopics,
    pub pool: PgPool,
    pub logs: PathBuf,
    members: BTreeMap<String, Member>,
    gateways: Vec<u16>,
    client: reqwest::Client,
}

impl Cluster {
    /// Databases migrated, no process yet.
    pub async fn new(test: &str) -> Self {
        let database = TestDatabase::create().await.unwrap();
        let gateway_database = TestDatabase::create().await.unwrap();
        let pool = database.pool(10).await.unwrap();
        orders_cli::commands::apply_migrations(&pool).await.unwrap();
        let logs = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(test);
        let _ = std::fs::remove_dir_all(&logs);
        std::fs::create_dir_all(&logs).unwrap();
        eprintln!("{test}: process logs in {}", logs.display());
        Self {
            database,
            gateway_database,
            topics: TestTopics::new(),
            pool,
            logs,
            members: BTreeMap::new(),
            gateways: Vec::new(),
            client: identity::testing::admin_client(),
        }
    }

    /// Starts a process named `name` running `role`. API and gateway
    /// processes get ports of their own; saga processes charge through the
    /// gateways started so far, in turn.
    pub fn add(&mut self, name: &str, role: &'static str, extra: &[(&str, &str)]) {
        let port = matches!(role, "api" | "gateway" | "all").then(free_port);
        let mut env: Vec<(String, String)> = [
            ("DATABASE_URL", self.database.url.clone()),
            ("KAFKA_BROKERS", kafka_brokers()),
            ("ORDERS_KAFKA_TOPIC_PREFIX", self.topics.prefix.clone()),
            (
                "ORDERS_GATEWAY_DATABASE_URL",
                self.gateway_database.url.clone(),
            ),
            (
                "ORDERS_LOG_FILTER",
                std::env::var("ORDERS_FAULT_LOG").unwrap_or_else(|_| "warn,sqlx=error".into()),
            ),
            ("ORDERS_DATABASE_POOL_SIZE", "8".into()),
            ("ORDERS_DATABASE_ACQUIRE_TIMEOUT_SECS", "2".into()),
            (
                "ORDERS_REQUEST_TIMEOUT_SECS",
                REQUEST_TIMEOUT.as_secs().to_string(),
            ),
            ("ORDERS_RELAY_POLL_INTERVAL_MS", "100".into()),
            ("ORDERS_SAGA_PAYMENT_DEADLINE_MS", "1500".into()),
            ("ORDERS_SAGA_STEP_DEADLINE_MS", "2000".into()),
            ("ORDERS_SAGA_FIRST_BACKOFF_MS", "20".into()),
            ("ORDERS_SAGA_MAX_BACKOFF_MS", "1000".into()),
            ("ORDERS_SAGA_SCAN_INTERVAL_MS", "200".into()),
            ("ORDERS_GATEWAY_SLOW_ANSWER_MS", "2000".into()),
            ("ORDERS_PAYMENT_GATEWAY_TIMEOUT_MS", "1000".into()),
            (
                "ORDERS_AUTH_HS256_SECRET",
                identity::testing::secret().into(),
            ),
            (
                "ORDERS_GATEWAY_TOKEN",
                platform::testing::gateway_token().into(),
            ),
            ("ORDERS_RATE_LIMIT_COMMANDS_PER_SEC", "0".into()),
            ("ORDERS_RATE_LIMIT_GRAPHQL_PER_SEC", "0".into()),
            ("ORDERS_RATE_LIMIT_META_PER_SEC", "0".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let listen = |port: Option<u16>| format!("127.0.0.1:{}", port.unwrap_or(0));
        match role {
            "api" => env.push(("ORDERS_LISTEN".into(), listen(port))),
            "gateway" => {
                env.push(("ORDERS_GATEWAY_LISTEN".into(), listen(port)));
                self.gateways.extend(port);
            }
            "all" => {
                // One port for the API; the gateway next to it.
                let gateway = free_port();
                env.push(("ORDERS_LISTEN".into(), listen(port)));
                env.push(("ORDERS_GATEWAY_LISTEN".into(), listen(Some(gateway))));
                self.gateways.push(gateway);
            }
            _ => env.push(("ORDERS_LISTEN".into(), listen(None))),
        }
        if matches!(role, "saga" | "all") {
            let sagas = self.members.values().filter(|m| m.role == "saga").count();
            let gateway = self.gateways[sagas % self.gateways.len().max(1)];
            env.push((
                "ORDERS_PAYMENT_GATEWAY_URL".into(),
                format!("http://127.0.0.1:{gateway}"),
            ));
        }
        env.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        self.members.insert(
            name.to_owned(),
            Member {
                role,
                env,
                port,
                process: None,
            },
        );
        self.start(name);
    }

    /// Starts `name` again (after [`kill`](Self::kill)), with its settings.
    pub fn start(&mut self, name: &str) {
        let member = self.members.get_mut(name).expect("a member of the cluster");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("{name}.log")))
            .unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_orders"));
        command
            .args(["run", "--role", member.role, "--no-migrate"])
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        for (key, value) in &member.env {
            command.env(key, value);
        }
        member.process = Some(Process(command.spawn().expect("orders starts")));
    }

    /// SIGKILL, then wait for the process to be gone.
    pub fn kill(&mut self, name: &str) {
        let member = self.members.get_mut(name).expect("a member of the cluster");
        drop(member.process.take());
    }

    /// Every member's name, in order.
    pub fn names(&self) -> Vec<String> {
        self.members.keys().cloned().collect()
    }

    pub fn role(&self, name: &str) -> &'static str {
        self.members[name].role
    }

    /// The base URLs of the API processes.
    pub fn apis(&self) -> Vec<String> {
        self.members
            .values()
            .filter(|m| matches!(m.role, "api" | "all"))
            .filter_map(|m| m.port)
            .map(|port| format!("http://127.0.0.1:{port}"))
            .collect()
    }

    /// The first gateway: its base URL and token.
    pub fn gateway(&self) -> orders_cli::audit::GatewayAccess {
        orders_cli::audit::GatewayAccess {
            url: format!("http://127.0.0.1:{}", self.gateways[0]),
            token: platform::testing::gateway_token().into(),
        }
    }

    /// Waits until every API and gateway answers its health check.
    pub async fn ready(&self) {
        let mut urls: Vec<String> = self.apis().iter().map(|u| format!("{u}/healthz")).collect();
        urls.extend(
            self.gateways
                .iter()
                .map(|port| format!("http://127.0.0.1:{port}/readyz")),
        );
        for url in urls {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let up = self.client.get(&url).send().await;
                if up.is_ok_and(|r| r.status().is_success()) {
                    break;
                }
                assert!(Instant::now() < deadline, "{url} never answered");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// Creates `skus` with `stock` units each, through the first API.
    pub async fn products(&self, skus: &[String], stock: i64) {
        let base = &self.apis()[0];
        for sku in skus {
            let product = json!({"sku": sku, "name": sku, "price_cents": 300, "currency": "EUR"});
            let created = self
                .client
                .post(format!("{base}/api/products"))
                .json(&product)
                .send()
                .await
                .unwrap();
            assert_eq!(created.status(), 201);
            let added = self
                .client
                .post(format!("{base}/api/products/{sku}/stock"))
                .json(&json!({"quantity": stock}))
                .send()
                .await
                .unwrap();
            assert_eq!(added.status(), 202);
        }
    }

    /// Waits until every order in `ids` has ended and its saga is done, and
    /// returns how many ended confirmed.
    pub async fn all_ended(&self, ids: &[String], within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            // Ended: confirmed or cancelled, and its saga done (it holds
            // itself open while the order has shipments or returns it did
            // not carry out). The database may be restarting: an error is
            // "not yet".
            let ended: Result<Vec<(String, bool, bool)>, _> = sqlx::query_as(
                "SELECT e.aggregate_id,
                        bool_or(e.event_type = 'OrderConfirmed'),
                        bool_or(e.event_type = 'OrderCancelled')
                   FROM events e JOIN sagas s ON s.order_id = e.aggregate_id AND s.done
                  WHERE e.aggregate_type = 'Order' AND e.aggregate_id = ANY($1)
                  GROUP BY e.aggregate_id",
            )
            .bind(ids)
            .fetch_all(&self.pool)
            .await;
            if let Ok(ended) = &ended {
                let finished = ended
                    .iter()
                    .filter(|(_, confirmed, cancelled)| *confirmed || *cancelled)
                    .count();
                if finished == ids.len() {
                    return ended
                        .iter()
                        .filter(|(_, confirmed, cancelled)| *confirmed && !*cancelled)
                        .count();
                }
                assert!(
                    Instant::now() < deadline,
                    "{finished} of {} orders ended within {within:?} (logs: {})",
                    ids.len(),
                    self.logs.display()
                );
            } else {
                assert!(Instant::now() < deadline, "the database never came back");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The orders in `ids` that were cancelled, with their reasons: what a
    /// failed expectation of confirmations prints.
    pub async fn cancellations(&self, ids: &[String]) -> Vec<(String, String)> {
        sqlx::query_as(
            "SELECT aggregate_id, payload->'OrderCancelled'->>'reason'
               FROM events
              WHERE aggregate_type = 'Order' AND aggregate_id = ANY($1)
                AND event_type = 'OrderCancelled'",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    /// `orders audit`'s checks, given `settle` to catch up: the books balance.
    pub async fn books_balance(&self, settle: Duration) -> orders_cli::audit::Report {
        let report = orders_cli::audit::audit_settled(&self.pool, &self.gateway(), settle)
            .await
            .unwrap();
        assert!(
            report.is_clean(),
            "{report}\n(logs: {})",
            self.logs.display()
        );
        eprintln!("{report}");
        report
    }
}

/// What orders to send.
#[derive(Debug, Clone)]
pub struct FlowPlan {
    pub orders: usize,
    /// Requests in flight at once.
    pub clients: usize,
    pub skus: Vec<String>,
    pub tokens: Vec<&'static str>,
    /// Every so many accepted orders, the customer cancels (half at once,
    /// half a little later).
    pub cancel_every: usize,
    /// Orders sent per second at most (`None`: as fast as the clients go),
    /// so that a fault lands while orders still arrive.
    pub rate: Option<f64>,
    /// Every so many orders (none the customer cancels), the warehouse
    /// takes the order through a [`warehouse::Fate`] once it is confirmed, the fates
    /// in turn; 0: none.
    pub lifecycle_every: usize,
}

impl FlowPlan {
    /// `orders` paid orders (`tok_visa`) of `sku`, as fast as `clients` go,
    /// none cancelled.
    pub fn paid(orders: usize, sku: &str, clients: usize) -> Self {
        Self {
            orders,
            clients,
            skus: vec![sku.to_owned()],
            tokens: vec!["tok_visa"],
            cancel_every: 0,
            rate: None,
            lifecycle_every: 0,
        }
    }

    /// Mixed tokens over `skus` (authorizations that expire among them),
    /// some orders cancelled by their customers, a third of the others
    /// shipped, delivered, returned or cancelled after a partial shipment.
    pub fn mixed(orders: usize, skus: &[String]) -> Self {
        Self {
            orders,
            clients: 8,
            skus: skus.to_vec(),
            tokens: vec![
                "tok_visa",
                "tok_visa",
                "tok_visa",
                "tok_declined",
                "tok_flaky",
                "tok_timeout",
                "tok_slow",
                "tok_expiring",
            ],
            cancel_every: 7,
            rate: Some(25.0),
            lifecycle_every: 3,
        }
    }
}

/// How the API answered the flow.
#[derive(Debug, Default)]
pub struct FlowReport {
    /// Orders the API accepted (202), by id.
    pub accepted: Vec<String>,
    /// 503 answers (problem+json), each retried.
    pub unavailable: usize,
    /// Requests refused at the connection (a process down), each retried.
    pub refused: usize,
    /// Answers that are not part of the contract, or came too late; orders
    /// the warehouse saw go where the contract does not let them.
    pub wrong: Vec<String>,
    /// Orders given to the warehouse.
    pub to_warehouse: usize,
    /// How the orders given to the warehouse ended, by how many.
    pub lifecycle: BTreeMap<&'static str, usize>,
}

/// Sends the plan's orders through the APIs (in turn), retrying each with its
/// idempotency key until accepted, and cancels some. `progress` counts
/// accepted orders as they come, for a test that waits to inject its fault.
pub async fn flow(
    apis: Vec<String>,
    plan: FlowPlan,
    progress: Arc<std::sync::atomic::AtomicUsize>,
) -> FlowReport {
    let report = Arc::new(Mutex::new(FlowReport::default()));
    let client = identity::testing::client_builder("operator", "admin")
        // Past the API's own limit plus slack: an answer later than this is a hang.
        .timeout(REQUEST_TIMEOUT + Duration::from_secs(5))
        .build()
        .unwrap();
    let run = uuid::Uuid::new_v4().simple().to_string();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = tokio::time::Instant::now();
    let mut clients = Vec::new();
    let mut cancels = tokio::task::JoinSet::new();
    let cancels_out = Arc::new(Mutex::new(Vec::new()));
    let (to_warehouse, jobs) = tokio::sync::mpsc::unbounded_channel();
    let warehouse = tokio::spawn(warehouse::warehouse(
        client.clone(),
        apis.clone(),
        run.clone(),
        jobs,
        Arc::clone(&report),
    ));
    for _ in 0..plan.clients {
        let (client, apis, plan, report, next, progress, run, cancels_out, to_warehouse) = (
            client.clone(),
            apis.clone(),
            plan.clone(),
            Arc::clone(&report),
            Arc::clone(&next),
            Arc::clone(&progress),
            run.clone(),
            Arc::clone(&cancels_out),
            to_warehouse.clone(),
        );
        clients.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= plan.orders {
                    return;
                }
                if let Some(rate) = plan.rate {
                    tokio::time::sleep_until(started + Duration::from_secs_f64(i as f64 / rate))
                        .await;
                }
                let cancelled = plan.cancel_every > 0 && i % plan.cancel_every == 0;
                let shipped =
                    plan.lifecycle_every > 0 && i % plan.lifecycle_every == 1 && !cancelled;
                let sku = &plan.skus[i % plan.skus.len()];
                let other = &plan.skus[(i + 1) % plan.skus.len()];
                // What the warehouse ships has two units at least, to ship
                // in parts.
                let mut units = vec![(sku.clone(), 1 + (i % 2) as u64 + u64::from(shipped))];
                if (i % 3 == 0 || shipped) && sku != other {
                    units.push((other.clone(), 1));
                }
                let lines: Vec<Value> = units
                    .iter()
                    .map(|(sku, quantity)| json!({"sku": sku, "quantity": quantity}))
                    .collect();
                let body = json!({
                    "customer_id": format!("c-{}", i % 40),
                    "lines": lines,
                    "payment_method": plan.tokens[i % plan.tokens.len()],
                });
                let key = format!("{run}-order-{i}");
                let answer = send(&client, &apis, i, "/api/orders", &body, &key, &report).await;
                let Some(answer) = answer else { continue };
                let id = answer["order_id"].as_str().unwrap().to_owned();
                report.lock().unwrap().accepted.push(id.clone());
                progress.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if shipped {
                    let job = warehouse::Job {
                        i,
                        id: id.clone(),
                        lines: units,
                        fate: None,
                    };
                    to_warehouse.send(job).unwrap();
                    report.lock().unwrap().to_warehouse += 1;
                }
                if cancelled {
                    cancels_out.lock().unwrap().push((i, id));
                }
            }
        }));
    }
    for client_task in clients {
        client_task.await.unwrap();
    }
    // The customers who change their minds: some at once, some after the
    // saga had time to finish.
    let wanted = std::mem::take(&mut *cancels_out.lock().unwrap());
    for (i, id) in wanted {
        let (client, apis, report, run) = (
            client.clone(),
            apis.clone(),
            Arc::clone(&report),
            run.clone(),
        );
        cancels.spawn(async move {
            if i % 2 == 1 {
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
            let body = json!({"reason": "changed my mind"});
            let key = format!("{run}-cancel-{i}");
            send(
                &client,
                &apis,
                i,
                &format!("/api/orders/{id}/cancel"),
                &body,
                &key,
                &report,
            )
            .await;
        });
    }
    while let Some(done) = cancels.join_next().await {
        done.unwrap();
    }
    drop(to_warehouse);
    warehouse.await.unwrap();
    Arc::try_unwrap(report).unwrap().into_inner().unwrap()
}

/// POSTs until the command is accepted (`Some`), or refused as the contract
/// allows (`None`: a 409 for a cancel the saga beat, or a minute of trying).
/// Anything off contract goes to `wrong`.
async fn send(
    client: &reqwest::Client,
    apis: &[String],
    i: usize,
    path: &str,
    body: &Value,
    key: &str,
    report: &Mutex<FlowReport>,
) -> Option<Value> {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut attempt = 0;
    while Instant::now() < deadline {
        let base = &apis[(i + attempt) % apis.len()];
        attempt += 1;
        let started = Instant::now();
        let sent = client
            .post(format!("{base}{path}"))
            .header("idempotency-key", key)
            .json(body)
            .send()
            .await;
        let took = started.elapsed();
        match sent {
            Ok(response) => {
                let status = response.status().as_u16();
                let problem = response
                    .headers()
                    .get("content-type")
                    .is_some_and(|t| t == "application/problem+json");
                if took > REQUEST_TIMEOUT + Duration::from_secs(2) {
                    report
                        .lock()
                        .unwrap()
                        .wrong
                        .push(format!("{path} answered {status} after {took:?}"));
                }
                match status {
                    202 => return response.json().await.ok(),
                    409 if path.ends_with("/cancel") => return None,
                    503 if problem => report.lock().unwrap().unavailable += 1,
                    other => {
                        let text = response.text().await.unwrap_or_default();
                        report
                            .lock()
                            .unwrap()
                            .wrong
                            .push(format!("{path} answered {other}: {text}"));
                        return None;
                    }
                }
            }
            Err(error) if error.is_timeout() => report
                .lock()
                .unwrap()
                .wrong
                .push(format!("{path} hung for {took:?}")),
            Err(_) => report.lock().unwrap().refused += 1,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    report
        .lock()
        .unwrap()
        .wrong
        .push(format!("{path} never got through in 90 s"));
    None
}

/// Runs `scripts/services <args>` (PostgreSQL and Kafka of this checkout).
pub fn services(args: &[&str]) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/services");
    let status = Command::new(&script)
        .args(args)
        .stdout(Stdio::null())
        .status()
        .expect("scripts/services runs");
    assert!(status.success(), "scripts/services {args:?} failed");
}

/// Whether the local services are the ones `scripts/services` started (and
/// can stop): a fault test stops and starts them.
pub fn services_are_ours(which: &str) -> bool {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/services");
    Command::new(&script)
        .args(["status", which])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains(": running on"))
}
