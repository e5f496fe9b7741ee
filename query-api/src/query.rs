//! The queries: orders and products by key, and Relay-style pages of them.

use async_graphql::connection::{Connection, CursorType, Edge, OpaqueCursor};
use async_graphql::dataloader::DataLoader;
use async_graphql::{Context, Error, ID, Object, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use super::MAX_PAGE;
use super::access::{order_reader, signed_in};
use super::consistency::{self, AS_OF_COST, AsOf, Model};
use super::loaders::{OrderLoader, ProductLoader};
use super::types::{Order, OrderStatus, Product, View};
use projections::model::customer_orders::CustomerOrders;
use projections::model::orders::OrderSummary;
use projections::model::orders::{COLUMNS as ORDER_COLUMNS, order_row};
use projections::model::products::ProductStock;
use projections::model::products::{COLUMNS as PRODUCT_COLUMNS, product_row};

/// Where a page of orders stops: newest first, ties broken by id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderCursor {
    placed_at: DateTime<Utc>,
    order_id: Uuid,
}

pub type OrderConnection = Connection<OpaqueCursor<OrderCursor>, Order>;
pub type ProductConnection = Connection<OpaqueCursor<String>, Product>;

pub struct Query;

#[Object]
impl Query {
    /// One order by id; `null` if the read side does not know it (yet), or
    /// if it is another customer's (scope `orders`; `admin` sees every order).
    ///
    /// `afterPosition` (a command's `position`) waits until the read side
    /// has applied that command, at most a few seconds; `asOf` gives the
    /// order as it was at a version or an instant instead, folded from its
    /// events (`null` before it was placed).
    #[graphql(complexity = "child_complexity + as_of.as_ref().map_or(0, |_| AS_OF_COST)")]
    async fn order(
        &self,
        ctx: &Context<'_>,
        id: ID,
        after_position: Option<String>,
        as_of: Option<AsOf>,
    ) -> Result<Option<Order>> {
        let caller = order_reader(ctx)?;
        let Ok(id) = Uuid::parse_str(&id) else {
            return Ok(None);
        };
        if let Some(as_of) = as_of {
            if after_position.is_some() {
                return Err(Error::new(
                    "asOf reads the event store: afterPosition has no use with it",
                ));
            }
            let past = consistency::as_of::<OrderSummary>(ctx, &id.to_string(), &as_of).await?;
            return Ok(past
                .filter(|row| caller.may_see(&row.customer_id))
                .map(|row| Order(row, View::AsOf)));
        }
        if let Some(position) = after_position {
            consistency::after_position(ctx, &position, caller, &[Model::of::<OrderSummary>()])
                .await?;
        }
        let order = ctx.data::<DataLoader<OrderLoader>>()?.load_one(id).await?;
        Ok(order.filter(|order| caller.may_see(&order.0.customer_id)))
    }

    /// Orders, newest first, optionally one customer's and of one status. A
    /// customer (scope `orders`) sees only their own: without `customerId`
    /// the list is theirs, with someone else's it is empty.
    #[graphql(complexity = "page_complexity(first, child_complexity)")]
    async fn orders(
        &self,
        ctx: &Context<'_>,
        customer_id: Option<String>,
        status: Option<OrderStatus>,
        #[graphql(default = 20)] first: Option<i32>,
        after: Option<String>,
        after_position: Option<String>,
    ) -> Result<OrderConnection> {
        let caller = order_reader(ctx)?;
        let limit = page_size(first)?;
        if let Some(position) = after_position {
            // A customer's list reads both models; the whole list, one.
            let models = [Model::of::<CustomerOrders>(), Model::of::<OrderSummary>()];
            let models = if customer_id.is_some() || !caller.is_admin() {
                &models[..]
            } else {
                &models[1..]
            };
            consistency::after_position(ctx, &position, caller, models).await?;
        }
        let after = decode_cursor::<OrderCursor>(after)?;
        let customer_id = match customer_id {
            _ if caller.is_admin() => customer_id,
            Some(named) if named != caller.customer().as_str() => {
                return Ok(Connection::new(false, false));
            }
            _ => Some(caller.customer().as_str().to_owned()),
        };
        let pool = ctx.data::<PgPool>()?;
        let status = status.map(OrderStatus::as_str);
        let (after_at, after_id) =
            after.map_or((None, None), |c| (Some(c.placed_at), Some(c.order_id)));
        let mut orders: Vec<Order> = match customer_id {
            // A customer's list comes from its own read model; the orders
            // themselves from the summaries, in one batch.
            Some(customer_id) => {
                let ids: Vec<Uuid> = sqlx::query_scalar(
                    "SELECT order_id FROM customer_order
                      WHERE customer_id = $1
                        AND ($2::text IS NULL OR status = $2)
                        AND ($3::timestamptz IS NULL OR (placed_at, order_id) < ($3, $4))
                      ORDER BY placed_at DESC, order_id DESC
                      LIMIT $5",
                )
                .bind(customer_id)
                .bind(status)
                .bind(after_at)
                .bind(after_id)
                .bind(limit + 1)
                .fetch_all(pool)
                .await?;
                let loaded = ctx
                    .data::<DataLoader<OrderLoader>>()?
                    .load_many(ids.clone())
                    .await?;
                ids.iter()
                    .filter_map(|id| loaded.get(id).cloned())
                    .collect()
            }
            None => sqlx::query(&format!(
                "SELECT {ORDER_COLUMNS} FROM order_summary
                  WHERE ($1::text IS NULL OR status = $1)
                    AND ($2::timestamptz IS NULL OR (placed_at, order_id) < ($2, $3))
                  ORDER BY placed_at DESC, order_id DESC
                  LIMIT $4"
            ))
            .bind(status)
            .bind(after_at)
            .bind(after_id)
            .bind(limit + 1)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|row| order_row(row).map(Order::live))
            .collect::<Result<_, _>>()?,
        };
        let has_next = orders.len() as i64 > limit;
        orders.truncate(limit as usize);
        let mut connection = Connection::new(after_at.is_some(), has_next);
        connection.edges = orders
            .into_iter()
            .map(|order| {
                let cursor = OrderCursor {
                    placed_at: order.0.placed_at,
                    order_id: order.0.order_id,
                };
                Edge::new(OpaqueCursor(cursor), order)
            })
            .collect();
        Ok(connection)
    }

    /// One product by SKU. Lookups of one request are batched into one
    /// statement, however many aliases ask. `asOf` gives the product as it
    /// was at a version or an instant instead, folded from its events
    /// (`null` before it was created); it needs a token.
    #[graphql(complexity = "child_complexity + as_of.as_ref().map_or(0, |_| AS_OF_COST)")]
    async fn product(
        &self,
        ctx: &Context<'_>,
        sku: String,
        as_of: Option<AsOf>,
    ) -> Result<Option<Product>> {
        if let Some(as_of) = as_of {
            // A product's history is for callers with a token.
            signed_in(ctx)?;
            return Ok(consistency::as_of::<ProductStock>(ctx, &sku, &as_of)
                .await?
                .map(Product));
        }
        Ok(ctx
            .data::<DataLoader<ProductLoader>>()?
            .load_one(sku)
            .await?)
    }

    /// Products in SKU order.
    #[graphql(complexity = "page_complexity(first, child_complexity)")]
    async fn products(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 20)] first: Option<i32>,
        after: Option<String>,
    ) -> Result<ProductConnection> {
        let limit = page_size(first)?;
        let after = decode_cursor::<String>(after)?;
        let rows = sqlx::query(&format!(
            "SELECT {PRODUCT_COLUMNS} FROM product_stock
              WHERE ($1::text IS NULL OR sku > $1)
              ORDER BY sku
              LIMIT $2"
        ))
        .bind(after.as_deref())
        .bind(limit + 1)
        .fetch_all(ctx.data::<PgPool>()?)
        .await?;
        let has_next = rows.len() as i64 > limit;
        let mut connection = Connection::new(after.is_some(), has_next);
        for row in rows.iter().take(limit as usize) {
            let product = product_row(row)?;
            connection.edges.push(Edge::new(
                OpaqueCursor(product.sku.clone()),
                Product(product),
            ));
        }
        Ok(connection)
    }
}

/// A page is 1 to [`MAX_PAGE`] items; 20 when `first` is null.
fn page_size(first: Option<i32>) -> Result<i64> {
    let first = first.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&first) {
        return Err(Error::new(format!(
            "first must be between 1 and {MAX_PAGE}"
        )));
    }
    Ok(i64::from(first))
}

/// What a page may cost: each item costs what its fields cost.
fn page_complexity(first: Option<i32>, child_complexity: usize) -> usize {
    let items = first.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    usize::try_from(items).unwrap_or(1) * child_complexity + 1
}

const DEFAULT_PAGE: i32 = 20;

fn decode_cursor<T>(cursor: Option<String>) -> Result<Option<T>>
where
    OpaqueCursor<T>: CursorType,
{
    cursor
        .map(|cursor| {
            OpaqueCursor::<T>::decode_cursor(&cursor)
                .map(|decoded| decoded.0)
                .map_err(|_| Error::new("after is not a cursor this API gave out"))
        })
        .transpose()
}

/// Reads one order's summary; used by the subscription.
pub(crate) async fn load_order(pool: &PgPool, id: Uuid) -> sqlx::Result<Option<Order>> {
    let row = sqlx::query(&format!(
        "SELECT {ORDER_COLUMNS} FROM order_summary WHERE order_id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    row.as_ref()
        .map(order_row)
        .transpose()
        .map(|o| o.map(Order::live))
}
