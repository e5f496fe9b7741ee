//! `order_payment`: each order's money, folded from its payment: what was
//! authorized, captured and refunded, and where its latest authorization
//! (or, for orders of the previous release, its charge) stands.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use domain::{Payment, PaymentEvent};
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::copy::CopyText;
use super::orders::uuids;
use super::{ApplyError, EventRef, ReadModel};

/// The `payments` projection.
#[derive(Debug)]
pub struct OrderPayments;

#[derive(Debug, Clone, PartialEq)]
pub struct PaymentRow {
    /// The order's id, which is its payment's.
    pub order_id: Uuid,
    /// One of `domain::PaymentStatus`'s names.
    pub status: String,
    pub currency: String,
    pub authorized_cents: i64,
    pub captured_cents: i64,
    pub refunded_cents: i64,
    /// The payment as the domain folds it.
    pub state: Payment,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
    pub global_position: i64,
}

const COLUMNS: &str = "order_id, status, currency, authorized_cents, captured_cents, \
     refunded_cents, state, updated_at, version, global_position";

impl ReadModel for OrderPayments {
    type Row = PaymentRow;
    const NAME: &'static str = "payments";
    const TABLE: &'static str = "order_payment";
    const AGGREGATE_TYPE: &'static str = "Payment";
    const COLUMNS: &'static str = COLUMNS;

    fn version(row: &PaymentRow) -> i64 {
        row.version
    }

    fn skipped(row: &PaymentRow, sequence: i64) -> PaymentRow {
        PaymentRow {
            version: sequence,
            ..row.clone()
        }
    }

    fn fold(row: Option<&PaymentRow>, event: &EventRef<'_>) -> Result<PaymentRow, ApplyError> {
        let decoded = event.decode::<PaymentEvent>()?;
        let starts = matches!(
            decoded,
            PaymentEvent::ChargeRequested(_) | PaymentEvent::AuthorizationRequested(_)
        );
        let mut state = match row {
            Some(row) => row.state.clone(),
            None if starts => Payment::default(),
            None => return Err(ApplyError::missing_row(event)),
        };
        state.fold(decoded);
        let Some(requested) = state.requested() else {
            return Err(ApplyError::missing_row(event));
        };
        Ok(PaymentRow {
            order_id: requested.order_id.as_uuid(),
            status: requested.status.as_str().to_owned(),
            currency: requested.currency.to_string(),
            authorized_cents: state.authorized_cents(),
            captured_cents: state.captured_cents(),
            refunded_cents: state.refunded_cents(),
            state,
            updated_at: event.recorded_at,
            version: event.sequence,
            global_position: event.global_position,
        })
    }

    async fn load(
        connection: &mut PgConnection,
        table: &str,
        aggregate_ids: &[&str],
    ) -> sqlx::Result<HashMap<String, PaymentRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM {table} WHERE order_id = ANY($1)"
        ))
        .bind(uuids(aggregate_ids))
        .fetch_all(connection)
        .await?;
        rows.iter()
            .map(|row| {
                let state: serde_json::Value = row.try_get("state")?;
                let payment = PaymentRow {
                    order_id: row.try_get("order_id")?,
                    status: row.try_get("status")?,
                    currency: row.try_get("currency")?,
                    authorized_cents: row.try_get("authorized_cents")?,
                    captured_cents: row.try_get("captured_cents")?,
                    refunded_cents: row.try_get("refunded_cents")?,
                    state: serde_json::from_value(state)
                        .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
                    updated_at: row.try_get("updated_at")?,
                    version: row.try_get("version")?,
                    global_position: row.try_get("global_position")?,
                };
                Ok((payment.order_id.to_string(), payment))
            })
            .collect()
    }

    fn copy_order(a: &PaymentRow, b: &PaymentRow) -> std::cmp::Ordering {
        a.order_id.cmp(&b.order_id)
    }

    fn copy_row(row: &PaymentRow, text: &mut CopyText) -> serde_json::Result<()> {
        text.uuid(row.order_id)
            .text(&row.status)
            .text(&row.currency)
            .int(row.authorized_cents)
            .int(row.captured_cents)
            .int(row.refunded_cents)
            .json(&row.state)?
            .time(row.updated_at)
            .int(row.version)
            .int(row.global_position);
        Ok(())
    }

    async fn store(
        connection: &mut PgConnection,
        table: &str,
        rows: &[PaymentRow],
    ) -> sqlx::Result<()> {
        let states = rows
            .iter()
            .map(|r| serde_json::to_string(&r.state))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        sqlx::query(&format!(
            "INSERT INTO {table} ({COLUMNS})
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::bigint[],
                                  $6::bigint[], $7::text[]::jsonb[], $8::timestamptz[],
                                  $9::bigint[], $10::bigint[])
             ON CONFLICT (order_id) DO UPDATE SET
                status = EXCLUDED.status,
                authorized_cents = EXCLUDED.authorized_cents,
                captured_cents = EXCLUDED.captured_cents,
                refunded_cents = EXCLUDED.refunded_cents,
                state = EXCLUDED.state,
                updated_at = EXCLUDED.updated_at,
                version = EXCLUDED.version,
                global_position = EXCLUDED.global_position
             WHERE {table}.version < EXCLUDED.version"
        ))
        .bind(rows.iter().map(|r| r.order_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.status.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.currency.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.authorized_cents).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.captured_cents).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.refunded_cents).collect::<Vec<_>>())
        .bind(states)
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

    const ID: &str = "0190a0b0-0000-7000-8000-000000000003";
    const SHIPMENT: &str = "0190a0b0-0000-7000-8000-0000000000a1";
    const RETURN: &str = "0190a0b0-0000-7000-8000-0000000000b1";

    #[test]
    fn the_money_follows_authorization_captures_and_refunds() {
        let events = [
            envelope(
                "Payment",
                ID,
                1,
                "AuthorizationRequested",
                json!({"order_id": ID, "attempt": 1, "amount_cents": 3000, "currency": "EUR",
                       "payment_method": "tok_visa"}),
            ),
            envelope(
                "Payment",
                ID,
                2,
                "PaymentAuthorized",
                json!({"attempt": 1, "provider_reference": "au_1", "expires_at": null}),
            ),
            envelope(
                "Payment",
                ID,
                3,
                "PaymentCaptured",
                json!({"shipment_id": SHIPMENT, "attempt": 1, "amount_cents": 1200,
                       "provider_reference": "cp_1"}),
            ),
            envelope(
                "Payment",
                ID,
                4,
                "CaptureRefunded",
                json!({"shipment_id": SHIPMENT, "return_id": RETURN, "amount_cents": 500,
                       "provider_reference": "re_1"}),
            ),
        ];
        let mut rows = HashMap::new();
        let batch = fold_all::<OrderPayments>(&mut rows, &events);
        assert!(batch.poisoned.is_empty(), "{:?}", batch.poisoned);
        let row = &rows[ID];
        assert_eq!(
            (
                row.status.as_str(),
                row.authorized_cents,
                row.captured_cents,
                row.refunded_cents
            ),
            ("AUTHORIZED", 3000, 1200, 500)
        );
        assert_eq!(row.version, 4);
    }

    #[test]
    fn a_charge_of_the_previous_release_is_captured_whole() {
        let events = [
            envelope(
                "Payment",
                ID,
                1,
                "ChargeRequested",
                json!({"order_id": ID, "amount_cents": 2999, "currency": "EUR",
                       "payment_method": "tok_visa"}),
            ),
            envelope(
                "Payment",
                ID,
                2,
                "ChargeApproved",
                json!({"provider_reference": "ch_1"}),
            ),
        ];
        let mut rows = HashMap::new();
        fold_all::<OrderPayments>(&mut rows, &events);
        let row = &rows[ID];
        assert_eq!(
            (
                row.status.as_str(),
                row.authorized_cents,
                row.captured_cents
            ),
            ("APPROVED", 2999, 2999)
        );
    }

    #[test]
    fn a_payment_event_without_its_start_is_refused() {
        let mut rows = HashMap::new();
        let batch = fold_all::<OrderPayments>(
            &mut rows,
            &[envelope(
                "Payment",
                ID,
                1,
                "ChargeApproved",
                json!({"provider_reference": "ch_1"}),
            )],
        );
        assert_eq!(batch.poisoned.len(), 1);
        assert!(rows.is_empty());
    }
}
