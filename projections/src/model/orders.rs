//! `order_summary`: one row per order with its priced lines, total, status,
//! times, cancellation reason, shipments and returns.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use domain::OrderEvent;
use domain::order::{Fulfilment, OrderLine};
use domain::values::ShippingAddress;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::copy::CopyText;
use super::{ApplyError, EventRef, ReadModel};

/// The `orders` projection.
#[derive(Debug)]
pub struct OrderSummary;

#[derive(Debug, Clone, PartialEq)]
pub struct OrderRow {
    pub order_id: Uuid,
    pub customer_id: String,
    /// One of `domain::OrderStatus`'s names.
    pub status: String,
    pub lines: Vec<OrderLine>,
    pub total_cents: i64,
    pub currency: String,
    pub payment_method: String,
    pub cancellation_reason: Option<String>,
    /// Where the goods go, as placed; only the order's customer and
    /// administrators read it.
    pub shipping_address: Option<ShippingAddress>,
    pub email: Option<String>,
    /// Its shipments and returns, as the order aggregate folds them.
    pub fulfilment: Fulfilment,
    pub placed_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
    pub global_position: i64,
}

pub const COLUMNS: &str = "order_id, customer_id, status, lines, total_cents, currency, \
     payment_method, cancellation_reason, shipping_address, email, fulfilment, placed_at, \
     updated_at, version, global_position";

impl ReadModel for OrderSummary {
    type Row = OrderRow;
    const NAME: &'static str = "orders";
    const TABLE: &'static str = "order_summary";
    const AGGREGATE_TYPE: &'static str = "Order";
    const COLUMNS: &'static str = COLUMNS;

    fn version(row: &OrderRow) -> i64 {
        row.version
    }

    fn skipped(row: &OrderRow, sequence: i64) -> OrderRow {
        OrderRow {
            version: sequence,
            ..row.clone()
        }
    }

    fn fold(row: Option<&OrderRow>, event: &EventRef<'_>) -> Result<OrderRow, ApplyError> {
        let mut next = match (event.decode::<OrderEvent>()?, row) {
            (OrderEvent::OrderPlaced(placed), _) => OrderRow {
                order_id: placed.order_id.as_uuid(),
                customer_id: placed.customer_id.to_string(),
                status: domain::OrderStatus::Placed.as_str().into(),
                lines: placed.lines,
                total_cents: placed.total_cents,
                currency: placed.currency.to_string(),
                payment_method: placed.payment_method.as_str().into(),
                cancellation_reason: None,
                shipping_address: placed.shipping_address.map(|address| *address),
                email: placed.email.map(|email| email.to_string()),
                fulfilment: Fulfilment::default(),
                placed_at: event.recorded_at,
                updated_at: event.recorded_at,
                version: 0,
                global_position: 0,
            },
            (OrderEvent::OrderConfirmed(_), Some(row)) => OrderRow {
                status: domain::OrderStatus::Confirmed.as_str().into(),
                ..row.clone()
            },
            (OrderEvent::OrderCancelled(cancelled), Some(row)) => OrderRow {
                status: domain::OrderStatus::Cancelled.as_str().into(),
                cancellation_reason: Some(cancelled.reason.to_string()),
                ..row.clone()
            },
            (_, None) => return Err(ApplyError::missing_row(event)),
            (
                shipment_or_return @ (OrderEvent::ShipmentRequested(_)
                | OrderEvent::ShipmentShipped(_)
                | OrderEvent::ShipmentFailed(_)
                | OrderEvent::ShipmentDelivered(_)
                | OrderEvent::ReturnRequested(_)
                | OrderEvent::ReturnReceived(_)),
                Some(row),
            ) => {
                let mut next = row.clone();
                match &shipment_or_return {
                    OrderEvent::ShipmentShipped(shipped) => {
                        next.status = shipped.status.as_str().into();
                    }
                    OrderEvent::ShipmentDelivered(delivered) => {
                        next.status = delivered.status.as_str().into();
                    }
                    _ => {}
                }
                next.fulfilment.fold(shipment_or_return);
                next
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
    ) -> sqlx::Result<HashMap<String, OrderRow>> {
        let ids = uuids(aggregate_ids);
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM {table} WHERE order_id = ANY($1)"
        ))
        .bind(&ids)
        .fetch_all(connection)
        .await?;
        rows.iter()
            .map(|row| {
                let order = order_row(row)?;
                Ok((order.order_id.to_string(), order))
            })
            .collect()
    }

    /// Newest first, as `order_summary_newest` keeps them.
    fn copy_order(a: &OrderRow, b: &OrderRow) -> std::cmp::Ordering {
        (b.placed_at, b.order_id).cmp(&(a.placed_at, a.order_id))
    }

    fn copy_row(row: &OrderRow, text: &mut CopyText) -> serde_json::Result<()> {
        text.uuid(row.order_id)
            .text(&row.customer_id)
            .text(&row.status)
            .json(&row.lines)?
            .int(row.total_cents)
            .text(&row.currency)
            .text(&row.payment_method)
            .optional_text(row.cancellation_reason.as_deref())
            .optional_json(row.shipping_address.as_ref())?
            .optional_text(row.email.as_deref())
            .json(&row.fulfilment)?
            .time(row.placed_at)
            .time(row.updated_at)
            .int(row.version)
            .int(row.global_position);
        Ok(())
    }

    async fn store(
        connection: &mut PgConnection,
        table: &str,
        rows: &[OrderRow],
    ) -> sqlx::Result<()> {
        let lines = rows
            .iter()
            .map(|r| serde_json::to_string(&r.lines))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        let addresses = rows
            .iter()
            .map(|r| {
                r.shipping_address
                    .as_ref()
                    .map(serde_json::to_string)
                    .transpose()
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        let fulfilments = rows
            .iter()
            .map(|r| serde_json::to_string(&r.fulfilment))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        sqlx::query(&format!(
            "INSERT INTO {table} ({COLUMNS})
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[]::jsonb[], $5::bigint[],
                                  $6::text[], $7::text[], $8::text[], $9::text[]::jsonb[],
                                  $10::text[], $11::text[]::jsonb[], $12::timestamptz[],
                                  $13::timestamptz[], $14::bigint[], $15::bigint[])
             ON CONFLICT (order_id) DO UPDATE SET
                status = EXCLUDED.status,
                cancellation_reason = EXCLUDED.cancellation_reason,
                fulfilment = EXCLUDED.fulfilment,
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
        .bind(lines)
        .bind(rows.iter().map(|r| r.total_cents).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.currency.as_str()).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| r.payment_method.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            rows.iter()
                .map(|r| r.cancellation_reason.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(addresses)
        .bind(rows.iter().map(|r| r.email.as_deref()).collect::<Vec<_>>())
        .bind(fulfilments)
        .bind(rows.iter().map(|r| r.placed_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.updated_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.version).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.global_position).collect::<Vec<_>>())
        .execute(connection)
        .await?;
        Ok(())
    }
}

/// The ids that are UUIDs (others name no order).
pub fn uuids(ids: &[&str]) -> Vec<Uuid> {
    ids.iter()
        .filter_map(|id| Uuid::parse_str(id).ok())
        .collect()
}

pub fn order_row(row: &PgRow) -> sqlx::Result<OrderRow> {
    let lines: serde_json::Value = row.try_get("lines")?;
    let address: Option<serde_json::Value> = row.try_get("shipping_address")?;
    let fulfilment: serde_json::Value = row.try_get("fulfilment")?;
    Ok(OrderRow {
        order_id: row.try_get("order_id")?,
        customer_id: row.try_get("customer_id")?,
        status: row.try_get("status")?,
        lines: serde_json::from_value(lines).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        total_cents: row.try_get("total_cents")?,
        currency: row.try_get("currency")?,
        payment_method: row.try_get("payment_method")?,
        cancellation_reason: row.try_get("cancellation_reason")?,
        shipping_address: address
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        email: row.try_get("email")?,
        fulfilment: serde_json::from_value(fulfilment)
            .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        placed_at: row.try_get("placed_at")?,
        updated_at: row.try_get("updated_at")?,
        version: row.try_get("version")?,
        global_position: row.try_get("global_position")?,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use event_contract::Envelope;
    use serde_json::json;

    use super::*;
    use crate::model::test_support::{at, envelope};
    use crate::model::{ApplyError, fold_all};

    const ID: &str = "0190a0b0-0000-7000-8000-000000000001";

    fn placed() -> Envelope {
        envelope(
            "Order",
            ID,
            1,
            "OrderPlaced",
            json!({
                "order_id": ID, "customer_id": "c-1", "currency": "EUR", "total_cents": 2999,
                "payment_method": "tok_visa",
                "lines": [{"sku": "MUG", "quantity": 2, "unit_price_cents": 1250},
                          {"sku": "TEA", "quantity": 1, "unit_price_cents": 499}]
            }),
        )
    }

    fn cancelled(sequence: i64) -> Envelope {
        envelope(
            "Order",
            ID,
            sequence,
            "OrderCancelled",
            json!({"reason": "payment declined", "previous_status": "PLACED"}),
        )
    }

    #[test]
    fn an_order_is_folded_from_placement_to_cancellation() {
        let mut rows = HashMap::new();
        let batch = fold_all::<OrderSummary>(&mut rows, &[placed(), cancelled(2)]);

        assert!(batch.poisoned.is_empty());
        let row = &rows[ID];
        assert_eq!(row.customer_id, "c-1");
        assert_eq!(row.status, "CANCELLED");
        assert_eq!(row.cancellation_reason.as_deref(), Some("payment declined"));
        assert_eq!(row.total_cents, 2999);
        assert_eq!(row.lines.len(), 2);
        assert_eq!(row.lines[0].unit_price_cents, 1250);
        assert_eq!((row.version, row.global_position), (2, 20));
        assert_eq!((row.placed_at, row.updated_at), (at(1), at(2)));
    }

    #[test]
    fn a_redelivered_event_changes_nothing() {
        let mut rows = HashMap::new();
        fold_all::<OrderSummary>(&mut rows, &[placed(), cancelled(2)]);
        let before = rows.clone();

        let batch = fold_all::<OrderSummary>(&mut rows, &[placed(), cancelled(2)]);

        assert_eq!(batch.duplicates, 2);
        assert!(batch.changed.is_empty());
        assert_eq!(rows, before);
    }

    #[test]
    fn an_event_after_a_missing_one_is_refused() {
        let mut rows = HashMap::new();
        fold_all::<OrderSummary>(&mut rows, &[placed()]);

        let batch = fold_all::<OrderSummary>(&mut rows, &[cancelled(3)]);

        assert_eq!(
            batch.poisoned,
            vec![(
                0,
                ApplyError::Gap {
                    aggregate_id: ID.into(),
                    expected: 2,
                    got: 3
                }
            )]
        );
        assert_eq!(rows[ID].status, "PLACED");
    }

    #[test]
    fn a_payload_that_is_not_an_order_event_is_refused() {
        let mut rows = HashMap::new();
        let bad = envelope("Order", ID, 1, "OrderPlaced", json!({"nonsense": true}));

        let batch = fold_all::<OrderSummary>(&mut rows, &[bad]);

        assert!(matches!(batch.poisoned[0].1, ApplyError::Decode { .. }));
        assert!(rows.is_empty());
    }
}
