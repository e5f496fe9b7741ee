//! `customer_order`: each customer's orders with status and total, newest
//! first, for listing; the full order comes from `order_summary`.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use domain::OrderEvent;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::copy::CopyText;
use super::orders::uuids;
use super::{ApplyError, EventRef, ReadModel};

/// The `customer_orders` projection.
#[derive(Debug)]
pub struct CustomerOrders;

#[derive(Debug, Clone, PartialEq)]
pub struct CustomerOrderRow {
    pub order_id: Uuid,
    pub customer_id: String,
    pub status: String,
    pub total_cents: i64,
    pub currency: String,
    pub placed_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
    pub global_position: i64,
}

const COLUMNS: &str = "order_id, customer_id, status, total_cents, currency, placed_at, \
     updated_at, version, global_position";

impl ReadModel for CustomerOrders {
    type Row = CustomerOrderRow;
    const NAME: &'static str = "customer_orders";
    const TABLE: &'static str = "customer_order";
    const AGGREGATE_TYPE: &'static str = "Order";
    const COLUMNS: &'static str = COLUMNS;

    fn version(row: &CustomerOrderRow) -> i64 {
        row.version
    }

    fn skipped(row: &CustomerOrderRow, sequence: i64) -> CustomerOrderRow {
        CustomerOrderRow {
            version: sequence,
            ..row.clone()
        }
    }

    fn fold(
        row: Option<&CustomerOrderRow>,
        event: &EventRef<'_>,
    ) -> Result<CustomerOrderRow, ApplyError> {
        let status = |status: domain::OrderStatus| status.as_str().to_owned();
        let mut next = match (event.decode::<OrderEvent>()?, row) {
            (OrderEvent::OrderPlaced(placed), _) => CustomerOrderRow {
                order_id: placed.order_id.as_uuid(),
                customer_id: placed.customer_id.to_string(),
                status: status(domain::OrderStatus::Placed),
                total_cents: placed.total_cents,
                currency: placed.currency.to_string(),
                placed_at: event.recorded_at,
                updated_at: event.recorded_at,
                version: 0,
                global_position: 0,
            },
            (OrderEvent::OrderConfirmed(_), Some(row)) => CustomerOrderRow {
                status: status(domain::OrderStatus::Confirmed),
                ..row.clone()
            },
            (OrderEvent::OrderCancelled(_), Some(row)) => CustomerOrderRow {
                status: status(domain::OrderStatus::Cancelled),
                ..row.clone()
            },
            (OrderEvent::ShipmentShipped(shipped), Some(row)) => CustomerOrderRow {
                status: status(shipped.status),
                ..row.clone()
            },
            (OrderEvent::ShipmentDelivered(delivered), Some(row)) => CustomerOrderRow {
                status: status(delivered.status),
                ..row.clone()
            },
            (
                OrderEvent::ShipmentRequested(_)
                | OrderEvent::ShipmentFailed(_)
                | OrderEvent::ReturnRequested(_)
                | OrderEvent::ReturnReceived(_),
                Some(row),
            ) => row.clone(),
            (_, None) => return Err(ApplyError::missing_row(event)),
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
    ) -> sqlx::Result<HashMap<String, CustomerOrderRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM {table} WHERE order_id = ANY($1)"
        ))
        .bind(uuids(aggregate_ids))
        .fetch_all(connection)
        .await?;
        rows.iter()
            .map(|row| {
                let order = CustomerOrderRow {
                    order_id: row.try_get("order_id")?,
                    customer_id: row.try_get("customer_id")?,
                    status: row.try_get("status")?,
                    total_cents: row.try_get("total_cents")?,
                    currency: row.try_get("currency")?,
                    placed_at: row.try_get("placed_at")?,
                    updated_at: row.try_get("updated_at")?,
                    version: row.try_get("version")?,
                    global_position: row.try_get("global_position")?,
                };
                Ok((order.order_id.to_string(), order))
            })
            .collect()
    }

    /// By customer, newest first, as `customer_order_by_customer` keeps them.
    fn copy_order(a: &CustomerOrderRow, b: &CustomerOrderRow) -> std::cmp::Ordering {
        a.customer_id
            .cmp(&b.customer_id)
            .then_with(|| (b.placed_at, b.order_id).cmp(&(a.placed_at, a.order_id)))
    }

    fn copy_row(row: &CustomerOrderRow, text: &mut CopyText) -> serde_json::Result<()> {
        text.uuid(row.order_id)
            .text(&row.customer_id)
            .text(&row.status)
            .int(row.total_cents)
            .text(&row.currency)
            .time(row.placed_at)
            .time(row.updated_at)
            .int(row.version)
            .int(row.global_position);
        Ok(())
    }

    async fn store(
        connection: &mut PgConnection,
        table: &str,
        rows: &[CustomerOrderRow],
    ) -> sqlx::Result<()> {
        sqlx::query(&format!(
            "INSERT INTO {table} ({COLUMNS})
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::text[],
                                  $6::timestamptz[], $7::timestamptz[], $8::bigint[], $9::bigint[])
             ON CONFLICT (order_id) DO UPDATE SET
                status = EXCLUDED.status,
                updated_at = EXCLUDED.updated_at,
                version = EXCLUDED.version,
                global_position = EXCLUDED.global_position
             WHERE {table}.version < EXCLUDED.version"
        ))
        .bind(rows.iter().map(|r| r.order_id).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| r.customer_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|r| r.status.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.total_cents).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.currency.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.placed_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.updated_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.version).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.global_position).collect::<Vec<_>>())
        .execute(connection)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::json;

    use super::*;
    use crate::model::fold_all;
    use crate::model::test_support::envelope;

    #[test]
    fn the_list_entry_follows_the_order_status() {
        let id = "0190a0b0-0000-7000-8000-000000000002";
        let events = [
            envelope(
                "Order",
                id,
                1,
                "OrderPlaced",
                json!({"order_id": id, "customer_id": "c-9", "currency": "EUR", "total_cents": 10,
                       "payment_method": "tok_visa", "lines": [{"sku": "A", "quantity": 1, "unit_price_cents": 10}]}),
            ),
            envelope("Order", id, 2, "OrderConfirmed", json!({})),
        ];
        let mut rows = HashMap::new();

        fold_all::<CustomerOrders>(&mut rows, &events);

        let row = &rows[id];
        assert_eq!(
            (row.customer_id.as_str(), row.status.as_str()),
            ("c-9", "CONFIRMED")
        );
        assert_eq!(row.version, 2);
    }
}
