//! Every read model the platform keeps, in one list: what `orders run` starts
//! workers for, what `orders rebuild` and `orders audit` know, and what the
//! test platform runs. A new read model is one line here.

use std::collections::HashMap;
use std::future::Future;

use futures::future::BoxFuture;
use indicatif::ProgressBar;
use sqlx::PgPool;

use crate::model::customer_orders::CustomerOrders;
use crate::model::orders::OrderSummary;
use crate::model::payments::OrderPayments;
use crate::model::products::ProductStock;
use crate::model::{ReadModel, fold_untracked};
use crate::rebuild::RebuildReport;
use crate::worker::WorkerConfig;

/// One of the platform's read models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Projection {
    /// `order_summary`: one row per order.
    Orders,
    /// `product_stock`: one row per product with its stock.
    Products,
    /// `customer_order`: orders by customer.
    CustomerOrders,
    /// `order_payment`: each order's money.
    Payments,
}

/// Runs `$body` with `$model` standing for the read model type of `$which`.
macro_rules! with_model {
    ($which:expr, $model:ident => $body:expr) => {
        match $which {
            Projection::Orders => {
                type $model = OrderSummary;
                $body
            }
            Projection::Products => {
                type $model = ProductStock;
                $body
            }
            Projection::CustomerOrders => {
                type $model = CustomerOrders;
                $body
            }
            Projection::Payments => {
                type $model = OrderPayments;
                $body
            }
        }
    };
}

/// How a read model's table compares with the fold of the event store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Comparison {
    /// Rows at the version the events give, but different from their fold
    /// (or past their events): the first hundred, described.
    pub wrong: Vec<String>,
    /// How many rows are wrong.
    pub wrong_count: usize,
    /// Aggregates whose row is missing or older than their last event: the
    /// projection has not caught up (yet). The first few, by name.
    pub behind: Vec<String>,
    /// How many aggregates are behind.
    pub behind_count: usize,
    /// Rows for which no events exist.
    pub orphans: i64,
    /// Events the fold refused.
    pub refused: usize,
    /// Aggregates whose row was compared.
    pub compared: usize,
}

impl Projection {
    pub const ALL: [Self; 4] = [
        Self::Orders,
        Self::Products,
        Self::CustomerOrders,
        Self::Payments,
    ];

    /// The projection's name: its consumer group, lock and checkpoint
    /// (`orders`, `products`, `customer_orders`).
    pub fn name(self) -> &'static str {
        with_model!(self, M => M::NAME)
    }

    /// The name on the command line (`orders rebuild customer-orders`).
    pub fn slug(self) -> &'static str {
        match self {
            Self::Orders => "orders",
            Self::Products => "products",
            Self::CustomerOrders => "customer-orders",
            Self::Payments => "payments",
        }
    }

    /// The live table.
    pub fn table(self) -> &'static str {
        with_model!(self, M => M::TABLE)
    }

    /// The aggregate type whose events it applies.
    pub fn aggregate_type(self) -> &'static str {
        with_model!(self, M => M::AGGREGATE_TYPE)
    }

    /// The projection named `name`, or with that [`slug`](Self::slug).
    pub fn named(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == name || p.slug() == name)
    }

    /// The projection's worker, until `shutdown` completes.
    pub fn worker(
        self,
        pool: PgPool,
        config: WorkerConfig,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> BoxFuture<'static, anyhow::Result<()>> {
        with_model!(self, M => Box::pin(crate::worker::run::<M>(pool, config, shutdown)))
    }

    /// Rebuilds the read model into a fresh table, then swaps it in or
    /// compares it with the live one, as `mode` says.
    pub async fn rebuild_as(
        self,
        pool: &PgPool,
        progress: &ProgressBar,
        mode: crate::rebuild::Mode,
    ) -> anyhow::Result<RebuildReport> {
        with_model!(self, M => crate::rebuild::rebuild_as::<M>(pool, progress, mode).await)
    }

    /// Folds every event of the model's aggregate from the store and compares
    /// each row of the live table with it.
    pub async fn compare(self, pool: &PgPool) -> anyhow::Result<Comparison> {
        with_model!(self, M => compare::<M>(pool).await)
    }
}

/// Aggregates folded before their rows are read and compared, at most.
const COMPARED_AT_ONCE: usize = 1_000;
/// Aggregates named in [`Comparison::behind`], at most.
const BEHIND_NAMED: usize = 10;
/// Rows described in [`Comparison::wrong`], at most.
const WRONG_DESCRIBED: usize = 100;

/// Folds the store one aggregate at a time (streamed along its key) and
/// compares a thousand rows at a time: what it holds in memory does not
/// grow with the store.
async fn compare<M: ReadModel>(pool: &PgPool) -> anyhow::Result<Comparison> {
    let mut comparison = Comparison::default();
    let mut connection = pool.acquire().await?;
    let mut events = Box::pin(event_store::reader::stream_aggregates(
        pool,
        M::AGGREGATE_TYPE,
    ));
    let mut held = None;
    let mut folded: HashMap<String, M::Row> = HashMap::new();
    let mut found = 0i64;
    loop {
        let next = event_store::reader::next_aggregate(&mut events, &mut held).await?;
        let ended = next.is_none();
        if let Some(aggregate) = next {
            comparison.refused += fold_untracked::<M>(&mut folded, &aggregate).poisoned.len();
        }
        if folded.len() >= COMPARED_AT_ONCE || (ended && !folded.is_empty()) {
            found += compare_rows::<M>(&mut connection, &folded, &mut comparison).await?;
            folded.clear();
        }
        if ended {
            break;
        }
    }
    let rows: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {}", M::TABLE))
        .fetch_one(&mut *connection)
        .await?;
    comparison.orphans = rows - found;
    Ok(comparison)
}

/// Compares the live rows of `folded`'s aggregates with them; returns how
/// many rows were found.
async fn compare_rows<M: ReadModel>(
    connection: &mut sqlx::PgConnection,
    folded: &HashMap<String, M::Row>,
    comparison: &mut Comparison,
) -> anyhow::Result<i64> {
    let ids: Vec<&str> = folded.keys().map(String::as_str).collect();
    let live = M::load(connection, M::TABLE, &ids).await?;
    comparison.compared += folded.len();
    let mut wrong = Vec::new();
    for (id, expected) in folded {
        match live.get(id) {
            Some(row) if M::version(row) == M::version(expected) => {
                if row != expected {
                    wrong.push(format!(
                        "{} row {id} differs from the fold of its events: {row:?}, expected {expected:?}",
                        M::TABLE
                    ));
                }
            }
            Some(row) if M::version(row) > M::version(expected) => wrong.push(format!(
                "{} row {id} is at version {}, past its events",
                M::TABLE,
                M::version(row)
            )),
            _ => {
                comparison.behind_count += 1;
                if comparison.behind.len() < BEHIND_NAMED {
                    comparison.behind.push(id.clone());
                }
            }
        }
    }
    comparison.wrong_count += wrong.len();
    let room = WRONG_DESCRIBED.saturating_sub(comparison.wrong.len());
    comparison.wrong.extend(wrong.into_iter().take(room));
    Ok(live.len() as i64)
}
