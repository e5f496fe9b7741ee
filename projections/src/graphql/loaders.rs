//! Batch loaders, so that list fields cost one query per field, not one per item.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::dataloader::Loader;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::types::{EventRecord, Order, Product, SagaState, SagaStep};
use crate::model::orders::{COLUMNS, order_row};
use crate::model::products::{COLUMNS as PRODUCT_COLUMNS, product_row};

/// Orders' histories from the event store, by order id.
#[derive(Debug)]
pub struct HistoryLoader {
    pub pool: PgPool,
}

impl Loader<String> for HistoryLoader {
    type Value = Vec<EventRecord>;
    type Error = Arc<sqlx::Error>;

    async fn load(
        &self,
        keys: &[String],
    ) -> Result<HashMap<String, Vec<EventRecord>>, Self::Error> {
        let rows = sqlx::query(
            "SELECT aggregate_id, sequence, global_position, event_type, recorded_at, payload
               FROM events
              WHERE aggregate_type = 'Order' AND aggregate_id = ANY($1)
              ORDER BY aggregate_id, sequence",
        )
        .bind(keys)
        .fetch_all(&self.pool)
        .await?;
        let mut histories: HashMap<String, Vec<EventRecord>> = HashMap::new();
        for row in rows {
            let event_type: String = row.try_get("event_type")?;
            let payload: serde_json::Value = row.try_get("payload")?;
            let fields = payload.get(&event_type).cloned().unwrap_or(payload);
            histories
                .entry(row.try_get("aggregate_id")?)
                .or_default()
                .push(EventRecord {
                    sequence: row.try_get("sequence")?,
                    global_position: row.try_get("global_position")?,
                    event_type,
                    recorded_at: row.try_get("recorded_at")?,
                    payload: async_graphql::Json(fields),
                });
        }
        Ok(histories)
    }
}

/// Order summaries by id.
#[derive(Debug)]
pub struct OrderLoader {
    pub pool: PgPool,
}

impl Loader<Uuid> for OrderLoader {
    type Value = Order;
    type Error = Arc<sqlx::Error>;

    async fn load(&self, keys: &[Uuid]) -> Result<HashMap<Uuid, Order>, Self::Error> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM order_summary WHERE order_id = ANY($1)"
        ))
        .bind(keys)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let order = order_row(row)?;
                Ok((order.order_id, Order(order)))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Arc::new)
    }
}

/// Orders' sagas, by order id, from the orchestrator's table.
#[derive(Debug)]
pub struct SagaLoader {
    pub pool: PgPool,
}

impl Loader<String> for SagaLoader {
    type Value = SagaState;
    type Error = Arc<sqlx::Error>;

    async fn load(&self, keys: &[String]) -> Result<HashMap<String, SagaState>, Self::Error> {
        let rows = sqlx::query(
            "SELECT order_id, state, saga -> 'steps' AS steps, updated_at, needs_attention
               FROM sagas WHERE order_id = ANY($1)",
        )
        .bind(keys)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let sqlx::types::Json(steps): sqlx::types::Json<Vec<SagaStep>> =
                    row.try_get("steps")?;
                let saga = SagaState {
                    state: row.try_get("state")?,
                    steps,
                    updated_at: row.try_get("updated_at")?,
                    needs_attention: row.try_get("needs_attention")?,
                };
                Ok((row.try_get("order_id")?, saga))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Arc::new)
    }
}

/// Products by SKU, so that any number of `product` lookups in one request
/// cost one statement.
#[derive(Debug)]
pub struct ProductLoader {
    pub pool: PgPool,
}

impl Loader<String> for ProductLoader {
    type Value = Product;
    type Error = Arc<sqlx::Error>;

    async fn load(&self, keys: &[String]) -> Result<HashMap<String, Product>, Self::Error> {
        let rows = sqlx::query(&format!(
            "SELECT {PRODUCT_COLUMNS} FROM product_stock WHERE sku = ANY($1)"
        ))
        .bind(keys)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let product = product_row(row)?;
                Ok((product.sku.clone(), Product(product)))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Arc::new)
    }
}
