//! `orderUpdated`: the order each time the orders projection commits a change to it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_graphql::{Context, ID, Result, Subscription};
use futures::Stream;
use futures::stream::StreamExt;
use sqlx::PgPool;
use tokio_stream::wrappers::BroadcastStream;
use uuid::Uuid;

use super::access::order_reader;
use super::query::load_order;
use super::types::Order;
use super::updates::Updates;
use projections::model::ReadModel;
use projections::model::orders::OrderSummary;

pub struct Subscription;

/// How many subscriptions one connection may still start.
#[derive(Debug, Clone)]
pub struct SubscriptionBudget {
    running: Arc<AtomicUsize>,
    max: usize,
}

impl SubscriptionBudget {
    pub fn new(max: usize) -> Self {
        Self {
            running: Arc::default(),
            max,
        }
    }

    /// How many subscriptions run now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Acquire)
    }

    /// A place for one more subscription, held until its stream is dropped.
    fn take(&self) -> Option<Running> {
        self.running
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| Running(Arc::clone(&self.running)))
    }
}

struct Running(Arc<AtomicUsize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[Subscription]
impl Subscription {
    /// The order as it is after each change the read side commits. A
    /// customer hears only of their own orders: another customer's order
    /// stays as silent as an unknown one.
    async fn order_updated(&self, ctx: &Context<'_>, id: ID) -> Result<impl Stream<Item = Order>> {
        let caller = order_reader(ctx)?.clone();
        let order_id =
            Uuid::parse_str(&id).map_err(|_| async_graphql::Error::new("id is not an order id"))?;
        let running = match ctx.data_opt::<SubscriptionBudget>() {
            Some(budget) => Some(budget.take().ok_or_else(|| {
                async_graphql::Error::new(format!(
                    "this connection already runs {} subscriptions",
                    budget.max
                ))
            })?),
            None => None,
        };
        let pool = ctx.data::<PgPool>()?.clone();
        let key = order_id.to_string();
        let changes = BroadcastStream::new(ctx.data::<Updates>()?.subscribe());
        // Whose the order is is decided once, when it is already known: a
        // subscription to another customer's order stays silent without a
        // read per change. One not read yet (just placed) is checked as it comes.
        if !caller.is_admin()
            && let Ok(Some(order)) = load_order(&pool, order_id).await
            && !caller.may_see(order.0.customer_id.as_str())
        {
            return Ok(futures::stream::pending()
                .map(move |order: Order| {
                    let _running = &running;
                    order
                })
                .boxed());
        }
        Ok(changes
            .filter_map(move |change| {
                // A lagging subscriber skips what it missed; the next change
                // still brings the whole order.
                let ours =
                    change.is_ok_and(|c| &*c.projection == OrderSummary::NAME && *c.id == *key);
                let pool = pool.clone();
                let caller = caller.clone();
                let _running = &running;
                async move {
                    if !ours {
                        return None;
                    }
                    load_order(&pool, order_id)
                        .await
                        .ok()
                        .flatten()
                        .filter(|order| caller.may_see(order.0.customer_id.as_str()))
                }
            })
            .boxed())
    }
}
