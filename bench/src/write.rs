//! `bench write`: the write path's throughput and latency.
//!
//! For each number of concurrent clients, two phases of equal length:
//! 1. raw: each client inserts single event-shaped rows (one autocommitted
//!    INSERT each) into a copy of the events table, through sqlx;
//! 2. api: each client sends `POST /api/orders` to the command API running in
//!    this process, over HTTP on loopback, waiting for each answer.
//!
//! The ratio api/raw says how close a command gets to the database's own
//! ceiling for one durable write.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use command_api::{ApiConfig, Application};
use hdrhistogram::Histogram;
use platform::testing::TestDatabase;
use serde_json::json;
use sqlx::PgPool;

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Concurrent clients, one run each.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    clients: Vec<usize>,
    /// Measured seconds per phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Unmeasured seconds before each phase.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Rounds of both phases per concurrency, alternating; figures merge them.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Connections in the API's pool (the platform's default is 32).
    #[arg(long, default_value_t = 32)]
    pool_size: u32,
    /// Append statements the API keeps in flight (the platform's default is 2).
    #[arg(long, default_value_t = command_bus::dispatch::DEFAULT_APPEND_WORKERS)]
    append_workers: usize,
    /// Products in the catalogue; each order has one to three of them.
    #[arg(long, default_value_t = 100)]
    products: usize,
}

/// One phase's result.
struct Figures {
    operations: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
    /// CPU time this process spent per operation, in microseconds.
    own_cpu_us: f64,
    /// CPU time the whole machine spent per operation, in microseconds.
    machine_cpu_us: f64,
    /// Operations per second of each round merged in.
    rounds: Vec<f64>,
}

impl Figures {
    fn empty() -> anyhow::Result<Self> {
        Ok(Self {
            operations: 0,
            elapsed: Duration::ZERO,
            latency: Histogram::new_with_bounds(1, 60_000_000, 3)?,
            own_cpu_us: 0.0,
            machine_cpu_us: 0.0,
            rounds: Vec::new(),
        })
    }

    /// Adds another round of the same phase.
    fn merge(&mut self, other: Figures) -> anyhow::Result<()> {
        let weight = |figures: &Figures| figures.operations as f64;
        let total = weight(self) + weight(&other);
        if total > 0.0 {
            self.own_cpu_us =
                (self.own_cpu_us * weight(self) + other.own_cpu_us * weight(&other)) / total;
            self.machine_cpu_us = (self.machine_cpu_us * weight(self)
                + other.machine_cpu_us * weight(&other))
                / total;
        }
        self.rounds.push(other.per_second());
        self.operations += other.operations;
        self.elapsed += other.elapsed;
        self.latency.add(other.latency)?;
        Ok(())
    }

    /// The slowest and fastest round, in operations per second.
    fn spread(&self) -> (f64, f64) {
        let min = self.rounds.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self.rounds.iter().copied().fold(0.0, f64::max);
        (min, max)
    }

    fn per_second(&self) -> f64 {
        self.operations as f64 / self.elapsed.as_secs_f64()
    }

    fn millis(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1000.0
    }
}

/// Runs the benchmark. The API serves from `server`, a multi-threaded runtime
/// like the one `orders run` uses; the load comes from `load`, a
/// single-threaded runtime that stands for client programs (as a separate
/// process would) while costing little CPU.
pub fn run(
    options: Options,
    server: &tokio::runtime::Runtime,
    load: &tokio::runtime::Runtime,
) -> anyhow::Result<()> {
    platform::telemetry::init_logging(platform::telemetry::LogFormat::Text, "warn,sqlx=error");
    let database = load
        .block_on(TestDatabase::create())
        .context("creating the benchmark database")?;
    // Both phases use the platform's own pool settings.
    let connect = |size: u32| event_store::connect(&database.url, size, Duration::from_secs(30));
    let (address, stop, served) = server.block_on(async {
        let pool = connect(options.pool_size).await?;
        event_store::migrate(&pool).await?;
        let config = ApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            append_workers: options.append_workers,
            // Every request's token is checked, as in production.
            authenticator: identity::Authenticator::new(&identity::AuthConfig {
                hs256_secret: Some(identity::testing::secret().into()),
                ..identity::AuthConfig::default()
            })?,
            ..ApiConfig::default()
        };
        let application = Application::build(&config, pool).await?;
        let address = application.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(application.run_until(async {
            stopped.await.ok();
        }));
        anyhow::Ok((address, stop, served))
    })?;
    load.block_on(async {
        let admin = connect(2).await?;
        sqlx::query("CREATE TABLE raw_events (LIKE events INCLUDING ALL)")
            .execute(&admin)
            .await?;
        let skus = create_catalogue(&format!("http://{address}"), options.products).await?;
        measure_all(&options, &admin, address, &skus, &connect).await?;
        admin.close().await;
        anyhow::Ok(())
    })?;
    let _ = stop.send(());
    server.block_on(served)??;
    Ok(())
}

async fn measure_all<C, F>(
    options: &Options,
    pool: &PgPool,
    address: SocketAddr,
    skus: &Arc<Vec<String>>,
    connect: &C,
) -> anyhow::Result<()>
where
    C: Fn(u32) -> F,
    F: std::future::Future<Output = Result<PgPool, sqlx::Error>>,
{
    println!(
        "write path: PostgreSQL at {}, API pool of {} connections, {} append workers; per \
         concurrency {} rounds of raw and api phases, {} s each after {} s warm-up",
        platform::testing::database_url(),
        options.pool_size,
        options.append_workers,
        options.rounds,
        options.seconds,
        options.warmup
    );
    println!(
        "cpu: microseconds of CPU per operation, whole machine (this process: client, server, driver)"
    );
    println!(
        "{:>7} | {:>20} {:>7} {:>7} {:>10} | {:>20} {:>7} {:>7} {:>10} | {:>6}",
        "clients",
        "raw inserts/s (min-max)",
        "p50 ms",
        "p99 ms",
        "cpu",
        "api commands/s (min-max)",
        "p50 ms",
        "p99 ms",
        "cpu",
        "ratio"
    );
    for &clients in &options.clients {
        // Phases alternate, so that drift in the machine's speed (other
        // tenants, the database warming up) weighs on both alike.
        let mut raw = Figures::empty()?;
        let mut api = Figures::empty()?;
        for _ in 0..options.rounds {
            settle(pool).await?;
            let raw_pool = connect(clients as u32).await?;
            let raw_clients = (0..clients)
                .map(|_| RawInsert {
                    pool: raw_pool.clone(),
                })
                .collect();
            raw.merge(measure(raw_clients, options).await?)?;
            raw_pool.close().await;
            settle(pool).await?;
            let mut api_clients = Vec::with_capacity(clients);
            for _ in 0..clients {
                api_clients.push(PlaceOrders::connect(address, Arc::clone(skus)).await?);
            }
            api.merge(measure(api_clients, options).await?)?;
        }
        let (raw_min, raw_max) = raw.spread();
        let (api_min, api_max) = api.spread();
        println!(
            "{:>7} | {:>6.0} ({:>5.0}-{:>5.0}) {:>7.2} {:>7.2} {:>4.0} ({:>3.0}) | {:>6.0} ({:>5.0}-{:>5.0}) {:>7.2} {:>7.2} {:>4.0} ({:>3.0}) | {:>5.2}x",
            clients,
            raw.per_second(),
            raw_min,
            raw_max,
            raw.millis(0.5),
            raw.millis(0.99),
            raw.machine_cpu_us,
            raw.own_cpu_us,
            api.per_second(),
            api_min,
            api_max,
            api.millis(0.5),
            api.millis(0.99),
            api.machine_cpu_us,
            api.own_cpu_us,
            api.per_second() / raw.per_second(),
        );
    }
    Ok(())
}

/// Lets the database finish the previous phase's housekeeping (vacuum of the
/// rows it wrote, a checkpoint) now, so that it does not run during, and get
/// billed to, the next phase.
async fn settle(pool: &PgPool) -> anyhow::Result<()> {
    for statement in [
        "VACUUM ANALYZE raw_events",
        "VACUUM ANALYZE events",
        "CHECKPOINT",
    ] {
        sqlx::query(statement).execute(pool).await?;
    }
    Ok(())
}

/// What one benchmark client does, over and over.
trait Operation: Send + 'static {
    /// One operation; `n` is unique across clients and runs.
    fn run(&mut self, n: u64) -> impl std::future::Future<Output = anyhow::Result<()>> + Send;
}

/// Runs every client in its own task for the warm-up, then measures them.
async fn measure<O: Operation>(clients: Vec<O>, options: &Options) -> anyhow::Result<Figures> {
    let warmup_until = Instant::now() + Duration::from_secs(options.warmup);
    let end = warmup_until + Duration::from_secs(options.seconds);
    let cpu_at_start = {
        let warmup_left = warmup_until.saturating_duration_since(Instant::now());
        let at = tokio::time::Instant::now() + warmup_left;
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            CpuTimes::now()
        })
    };
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(client, mut operation)| {
            tokio::spawn(async move {
                let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
                let mut operations = 0u64;
                let mut n = (client as u64) << 40;
                loop {
                    let started = Instant::now();
                    if started >= end {
                        break;
                    }
                    operation.run(n).await?;
                    n += 1;
                    if started >= warmup_until {
                        latency.record(started.elapsed().as_micros() as u64)?;
                        operations += 1;
                    }
                }
                anyhow::Ok((operations, latency))
            })
        })
        .collect();
    let mut operations_total = 0;
    let mut latency_total = Histogram::new_with_bounds(1, 60_000_000, 3)?;
    for task in tasks {
        let (operations, latency) = task.await??;
        operations_total += operations;
        latency_total.add(latency)?;
    }
    let cpu = CpuTimes::now().since(&cpu_at_start.await?);
    let per_op = |seconds: f64| seconds * 1e6 / operations_total.max(1) as f64;
    Ok(Figures {
        operations: operations_total,
        elapsed: Duration::from_secs(options.seconds),
        latency: latency_total,
        own_cpu_us: per_op(cpu.own),
        machine_cpu_us: per_op(cpu.machine),
        rounds: Vec::new(),
    })
}

/// CPU seconds used so far by this process and by the whole machine (Linux).
#[derive(Debug, Clone, Copy, Default)]
struct CpuTimes {
    own: f64,
    machine: f64,
}

impl CpuTimes {
    fn now() -> Self {
        // Both files count in clock ticks, 100 per second on Linux.
        const TICKS: f64 = 100.0;
        let own = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|stat| {
                let after_name = stat.rsplit_once(')')?.1;
                let fields: Vec<&str> = after_name.split_whitespace().collect();
                let user: f64 = fields.get(11)?.parse().ok()?;
                let system: f64 = fields.get(12)?.parse().ok()?;
                Some((user + system) / TICKS)
            })
            .unwrap_or_default();
        let machine = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|stat| {
                let line = stat.lines().next()?;
                let ticks: Vec<f64> = line
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|t| t.parse().ok())
                    .collect();
                // user nice system idle iowait irq softirq steal: all but idle and iowait.
                let busy: f64 = ticks.iter().take(8).sum::<f64>()
                    - ticks.get(3).copied().unwrap_or_default()
                    - ticks.get(4).copied().unwrap_or_default();
                Some(busy / TICKS)
            })
            .unwrap_or_default();
        Self { own, machine }
    }

    fn since(&self, earlier: &Self) -> Self {
        Self {
            own: self.own - earlier.own,
            machine: self.machine - earlier.machine,
        }
    }
}

async fn create_catalogue(base: &str, products: usize) -> anyhow::Result<Arc<Vec<String>>> {
    let client = identity::testing::admin_client();
    let mut skus = Vec::with_capacity(products);
    for n in 0..products {
        let sku = format!("BENCH-{n:04}");
        let response = client
            .post(format!("{base}/api/products"))
            .json(&json!({"sku": sku, "name": sku, "price_cents": 100 + n, "currency": "EUR"}))
            .send()
            .await?;
        anyhow::ensure!(
            response.status() == 201,
            "creating {sku}: {}",
            response.status()
        );
        skus.push(sku);
    }
    Ok(Arc::new(skus))
}

/// A client of the command API on one HTTP/1.1 keep-alive connection, built
/// on hyper directly so the load generator costs as little CPU as possible on
/// the machine it shares with the server.
struct PlaceOrders {
    connection: crate::connection::Connection,
    skus: Arc<Vec<String>>,
}

impl PlaceOrders {
    async fn connect(address: SocketAddr, skus: Arc<Vec<String>>) -> anyhow::Result<Self> {
        Ok(Self {
            connection: crate::connection::Connection::open(address).await?,
            skus,
        })
    }
}

impl Operation for PlaceOrders {
    /// One order of one to three distinct products, chosen by `n`.
    async fn run(&mut self, n: u64) -> anyhow::Result<()> {
        let skus = &self.skus;
        let count = (n % 3 + 1) as usize;
        let first = (n.wrapping_mul(2_654_435_761) % skus.len() as u64) as usize;
        let lines: Vec<_> = (0..count)
            .map(|i| json!({"sku": skus[(first + i * 7) % skus.len()], "quantity": 1 + i}))
            .collect();
        let order = json!({
            "customer_id": format!("customer-{}", n % 1000),
            "lines": lines,
            "payment_method": "tok_visa",
        });
        self.connection.place(&order).await.map(drop)
    }
}

/// A client inserting one event-shaped row, as the append writes it, per
/// autocommitted INSERT.
struct RawInsert {
    pool: PgPool,
}

impl Operation for RawInsert {
    async fn run(&mut self, _n: u64) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO raw_events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
             VALUES ('Order', $1, 1, 'OrderPlaced', '1.0', $2::json, $3::json)",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(RAW_PAYLOAD)
        .bind(RAW_METADATA)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// What an `OrderPlaced` event of one line looks like in the store.
const RAW_PAYLOAD: &str = r#"{"OrderPlaced":{"order_id":"0190a0b0-0000-7000-8000-000000000000","customer_id":"customer-1","lines":[{"sku":"BENCH-0001","quantity":1,"unit_price_cents":101}],"currency":"EUR","total_cents":101,"payment_method":"tok_visa"}}"#;
const RAW_METADATA: &str = r#"{"correlation_id":"0190a0b0-0000-7000-8000-000000000001","causation_id":"0190a0b0-0000-7000-8000-000000000001"}"#;
