//! `product_stock`: catalogue data and stock levels of each product.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use domain::ProductEvent;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};

use super::copy::CopyText;
use super::{ApplyError, EventRef, ReadModel};

/// The `products` projection.
#[derive(Debug)]
pub struct ProductStock;

#[derive(Debug, Clone, PartialEq)]
pub struct ProductRow {
    pub sku: String,
    pub name: String,
    pub price_cents: i64,
    pub currency: String,
    pub on_hand: i64,
    pub reserved: i64,
    /// Sold, or discontinued.
    pub active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
    pub global_position: i64,
}

impl ProductRow {
    /// Units that can still be reserved; never negative.
    pub fn available(&self) -> i64 {
        (self.on_hand - self.reserved).max(0)
    }
}

pub const COLUMNS: &str = "sku, name, price_cents, currency, on_hand, reserved, active, \
     created_at, updated_at, version, global_position";

impl ReadModel for ProductStock {
    type Row = ProductRow;
    const NAME: &'static str = "products";
    const TABLE: &'static str = "product_stock";
    const AGGREGATE_TYPE: &'static str = "Product";
    const COLUMNS: &'static str = COLUMNS;

    fn version(row: &ProductRow) -> i64 {
        row.version
    }

    fn skipped(row: &ProductRow, sequence: i64) -> ProductRow {
        ProductRow {
            version: sequence,
            ..row.clone()
        }
    }

    fn fold(row: Option<&ProductRow>, event: &EventRef<'_>) -> Result<ProductRow, ApplyError> {
        let event_body = event.decode::<ProductEvent>()?;
        let mut next = match (event_body, row) {
            (ProductEvent::ProductCreated(created), _) => ProductRow {
                sku: created.sku.to_string(),
                name: created.name.to_string(),
                price_cents: created.price.amount_cents,
                currency: created.price.currency.to_string(),
                on_hand: 0,
                reserved: 0,
                active: true,
                created_at: event.recorded_at,
                updated_at: event.recorded_at,
                version: 0,
                global_position: 0,
            },
            (other, Some(row)) => {
                let mut next = row.clone();
                let units = |quantity: u32| i64::from(quantity);
                match other {
                    ProductEvent::ProductCreated(_) => {}
                    ProductEvent::StockAdded(e) => next.on_hand += units(e.quantity),
                    ProductEvent::StockReserved(e) => next.reserved += units(e.quantity),
                    ProductEvent::ReservationReleased(e) => next.reserved -= units(e.quantity),
                    ProductEvent::ReservationCommitted(e) => {
                        next.reserved -= units(e.quantity);
                        next.on_hand -= units(e.quantity);
                    }
                    ProductEvent::SoldStockReturned(e) => next.on_hand += units(e.quantity),
                    ProductEvent::StockAdjusted(e) => next.on_hand += i64::from(e.delta),
                    ProductEvent::ProductPriceChanged(e) => next.price_cents = e.price.amount_cents,
                    ProductEvent::ProductDiscontinued(_) => next.active = false,
                    ProductEvent::ProductReactivated(_) => next.active = true,
                }
                next
            }
            (_, None) => {
                return Err(ApplyError::missing_row(event));
            }
        };
        next.version = event.sequence;
        next.global_position = event.global_position;
        next.updated_at = event.recorded_at;
        Ok(next)
    }

    async fn load(
        connection: &mut PgConnection,
        table: &str,
        aggregate_ids: &[&str],
    ) -> sqlx::Result<HashMap<String, ProductRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM {table} WHERE sku = ANY($1)"
        ))
        .bind(aggregate_ids)
        .fetch_all(connection)
        .await?;
        rows.iter()
            .map(|row| {
                let product = product_row(row)?;
                Ok((product.sku.clone(), product))
            })
            .collect()
    }

    fn copy_order(a: &ProductRow, b: &ProductRow) -> std::cmp::Ordering {
        a.sku.cmp(&b.sku)
    }

    fn copy_row(row: &ProductRow, text: &mut CopyText) -> serde_json::Result<()> {
        text.text(&row.sku)
            .text(&row.name)
            .int(row.price_cents)
            .text(&row.currency)
            .int(row.on_hand)
            .int(row.reserved)
            .bool(row.active)
            .time(row.created_at)
            .time(row.updated_at)
            .int(row.version)
            .int(row.global_position);
        Ok(())
    }

    async fn store(
        connection: &mut PgConnection,
        table: &str,
        rows: &[ProductRow],
    ) -> sqlx::Result<()> {
        sqlx::query(&format!(
            "INSERT INTO {table} ({COLUMNS})
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::bigint[],
                                  $6::bigint[], $7::boolean[], $8::timestamptz[],
                                  $9::timestamptz[], $10::bigint[], $11::bigint[])
             ON CONFLICT (sku) DO UPDATE SET
                price_cents = EXCLUDED.price_cents,
                on_hand = EXCLUDED.on_hand,
                reserved = EXCLUDED.reserved,
                active = EXCLUDED.active,
                updated_at = EXCLUDED.updated_at,
                version = EXCLUDED.version,
                global_position = EXCLUDED.global_position
             WHERE {table}.version < EXCLUDED.version"
        ))
        .bind(rows.iter().map(|r| r.sku.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.name.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.price_cents).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.currency.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.on_hand).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.reserved).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.active).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.created_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.updated_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.version).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.global_position).collect::<Vec<_>>())
        .execute(connection)
        .await?;
        Ok(())
    }
}

pub fn product_row(row: &PgRow) -> sqlx::Result<ProductRow> {
    Ok(ProductRow {
        sku: row.try_get("sku")?,
        name: row.try_get("name")?,
        price_cents: row.try_get("price_cents")?,
        currency: row.try_get("currency")?,
        on_hand: row.try_get("on_hand")?,
        reserved: row.try_get("reserved")?,
        active: row.try_get("active")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        version: row.try_get("version")?,
        global_position: row.try_get("global_position")?,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::json;

    use super::*;
    use crate::model::fold_all;
    use crate::model::test_support::envelope;

    #[test]
    fn stock_levels_follow_the_events() {
        let order = "0190a0b0-0000-7000-8000-000000000003";
        let events = [
            envelope(
                "Product",
                "MUG",
                1,
                "ProductCreated",
                json!({"sku": "MUG", "name": "Mug", "price": {"amount_cents": 1250, "currency": "EUR"}}),
            ),
            envelope("Product", "MUG", 2, "StockAdded", json!({"quantity": 10})),
            envelope(
                "Product",
                "MUG",
                3,
                "StockReserved",
                json!({"order_id": order, "quantity": 4}),
            ),
            envelope(
                "Product",
                "MUG",
                4,
                "ReservationCommitted",
                json!({"order_id": order, "quantity": 4}),
            ),
            envelope(
                "Product",
                "MUG",
                5,
                "SoldStockReturned",
                json!({"order_id": order, "quantity": 1}),
            ),
            envelope(
                "Product",
                "MUG",
                6,
                "StockReserved",
                json!({"order_id": order, "quantity": 2}),
            ),
            envelope(
                "Product",
                "MUG",
                7,
                "ReservationReleased",
                json!({"order_id": order, "quantity": 2}),
            ),
        ];
        let mut rows = HashMap::new();

        let batch = fold_all::<ProductStock>(&mut rows, &events);

        assert!(batch.poisoned.is_empty());
        let row = &rows["MUG"];
        assert_eq!((row.on_hand, row.reserved, row.available()), (7, 0, 7));
        assert_eq!((row.price_cents, row.currency.as_str()), (1250, "EUR"));
        assert_eq!(row.version, 7);
    }

    #[test]
    fn events_of_other_aggregates_are_ignored() {
        let mut rows = HashMap::new();
        let order = envelope("Order", "o", 1, "OrderConfirmed", json!({}));

        let batch = fold_all::<ProductStock>(&mut rows, &[order]);

        assert!(batch.changed.is_empty() && batch.poisoned.is_empty());
    }
}
