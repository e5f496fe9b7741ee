//! Batch loaders, so that list fields cost one query per field, not one per item.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::dataloader::Loader;
use serde_json::value::RawValue;
use sqlx::PgPool;
use uuid::Uuid;

use order_saga::store::SagaView;

use super::types::{EventRecord, Order, Product};
use projections::model::ReadModel;
use projections::model::orders::{COLUMNS, order_row};
use projections::model::payments::{OrderPayments, PaymentRow};
use projections::model::products::{COLUMNS as PRODUCT_COLUMNS, product_row};

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
        let events =
            event_store::reader::streams::<Box<RawValue>>(&self.pool, "Order", keys).await?;
        let mut histories: HashMap<String, Vec<EventRecord>> = HashMap::new();
        for event in events {
            let fields = event_contract::stored_fields(&event.payload, &event.event_type);
            let payload = serde_json::from_str(fields.get())
                .map_err(|error| Arc::new(sqlx::Error::Decode(Box::new(error))))?;
            histories
                .entry(event.aggregate_id)
                .or_default()
                .push(EventRecord {
                    sequence: event.sequence,
                    global_position: event.global_position,
                    event_type: event.event_type,
                    recorded_at: event.recorded_at,
                    payload: async_graphql::Json(payload),
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
                Ok((order.order_id, Order::live(order)))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Arc::new)
    }
}

/// Orders' payments, by order id.
#[derive(Debug)]
pub struct PaymentLoader {
    pub pool: PgPool,
}

impl Loader<Uuid> for PaymentLoader {
    type Value = PaymentRow;
    type Error = Arc<sqlx::Error>;

    async fn load(&self, keys: &[Uuid]) -> Result<HashMap<Uuid, PaymentRow>, Self::Error> {
        let ids: Vec<String> = keys.iter().map(Uuid::to_string).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let mut connection = self.pool.acquire().await?;
        let rows = OrderPayments::load(&mut connection, OrderPayments::TABLE, &ids).await?;
        Ok(rows.into_values().map(|row| (row.order_id, row)).collect())
    }
}

/// Orders' sagas, by order id, as the saga crate shows them.
#[derive(Debug)]
pub struct SagaLoader {
    pub pool: PgPool,
}

impl Loader<String> for SagaLoader {
    type Value = SagaView;
    type Error = Arc<sqlx::Error>;

    async fn load(&self, keys: &[String]) -> Result<HashMap<String, SagaView>, Self::Error> {
        let views = order_saga::store::views(&self.pool, keys).await?;
        Ok(views
            .into_iter()
            .map(|view| (view.order_id.clone(), view))
            .collect())
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
