//! `orderUpdated`: the order each time the orders projection commits a change to it.

use async_graphql::{Context, ID, Result, Subscription};
use futures::Stream;
use futures::stream::StreamExt;
use sqlx::PgPool;
use tokio_stream::wrappers::BroadcastStream;
use uuid::Uuid;

use super::query::load_order;
use super::types::Order;
use super::updates::Updates;
use crate::model::ReadModel;
use crate::model::orders::OrderSummary;

pub struct Subscription;

#[Subscription]
impl Subscription {
    /// The order as it is after each change the read side commits.
    async fn order_updated(&self, ctx: &Context<'_>, id: ID) -> Result<impl Stream<Item = Order>> {
        let order_id =
            Uuid::parse_str(&id).map_err(|_| async_graphql::Error::new("id is not an order id"))?;
        let pool = ctx.data::<PgPool>()?.clone();
        let key = order_id.to_string();
        let changes = BroadcastStream::new(ctx.data::<Updates>()?.subscribe());
        Ok(changes
            .filter_map(move |change| {
                // A lagging subscriber skips what it missed; the next change
                // still brings the whole order.
                let ours =
                    change.is_ok_and(|c| &*c.projection == OrderSummary::NAME && *c.id == *key);
                let pool = pool.clone();
                async move {
                    if !ours {
                        return None;
                    }
                    load_order(&pool, order_id).await.ok().flatten()
                }
            })
            .boxed())
    }
}
