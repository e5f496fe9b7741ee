//! The read models. Each is a pure fold of one aggregate's events into one
//! row, plus how to load and store those rows. The live worker and the
//! rebuild run the same fold, so a rebuilt table equals the live one.
//!
//! Every row remembers the last event applied (`version`, the aggregate's
//! sequence). An event at or below it is a redelivery and changes nothing; an
//! event further ahead than the next one means one is missing, and is refused.

pub mod customer_orders;
pub mod orders;
pub mod products;

use std::collections::HashMap;
use std::future::Future;

use event_store::Envelope;
use sqlx::PgConnection;

/// Why an event cannot be applied. Such an event is poison: it goes to the
/// dead-letter topic and the projection moves on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The payload is not a known event of this aggregate.
    #[error("cannot decode {event_type}: {reason}")]
    Decode { event_type: String, reason: String },
    /// An earlier event of the aggregate was never applied.
    #[error("{aggregate_id} expected sequence {expected}, got {got}")]
    Gap {
        aggregate_id: String,
        expected: i64,
        got: i64,
    },
    /// The aggregate id does not fit the read model's key.
    #[error("bad aggregate id {0}")]
    BadKey(String),
}

/// What an event does to a row.
#[derive(Debug, Clone, PartialEq)]
pub enum Folded<R> {
    /// The row as it is after the event.
    Changed(R),
    /// Already applied: a redelivery.
    Duplicate,
}

/// One read model: a table of rows, one per aggregate.
pub trait ReadModel: Send + Sync + 'static {
    type Row: Clone + std::fmt::Debug + PartialEq + Send + Sync + 'static;

    /// The projection's name: its consumer group, lock and checkpoint.
    const NAME: &'static str;
    /// The live table.
    const TABLE: &'static str;
    /// The aggregate whose events it folds.
    const AGGREGATE_TYPE: &'static str;

    /// The version (last applied sequence) a row records.
    fn version(row: &Self::Row) -> i64;

    /// The row after `event`, given the row before it (`None`: no row yet).
    /// Called only for events of [`Self::AGGREGATE_TYPE`] whose sequence is
    /// the next one; pure.
    fn fold(row: Option<&Self::Row>, event: &Envelope) -> Result<Self::Row, ApplyError>;

    /// The rows of `table` for these aggregate ids.
    fn load(
        connection: &mut PgConnection,
        table: &str,
        aggregate_ids: &[&str],
    ) -> impl Future<Output = sqlx::Result<HashMap<String, Self::Row>>> + Send;

    /// Inserts or replaces these rows in `table`.
    fn store(
        connection: &mut PgConnection,
        table: &str,
        rows: &[Self::Row],
    ) -> impl Future<Output = sqlx::Result<()>> + Send;
}

/// Applies `event` to `row` if it is the next event of the aggregate.
pub fn fold_next<M: ReadModel>(
    row: Option<&M::Row>,
    event: &Envelope,
) -> Result<Folded<M::Row>, ApplyError> {
    let version = row.map_or(0, M::version);
    if event.sequence <= version {
        return Ok(Folded::Duplicate);
    }
    if event.sequence != version + 1 {
        return Err(ApplyError::Gap {
            aggregate_id: event.aggregate_id.clone(),
            expected: version + 1,
            got: event.sequence,
        });
    }
    M::fold(row, event).map(Folded::Changed)
}

/// The result of folding a batch of events into rows held in memory.
#[derive(Debug)]
pub struct BatchFold {
    /// Aggregate ids whose rows changed, in the order they first changed.
    pub changed: Vec<String>,
    /// Events that could not be applied, by their index in the batch.
    pub poisoned: Vec<(usize, ApplyError)>,
    /// Events skipped as redeliveries.
    pub duplicates: usize,
}

/// Folds `events` in order into `rows` (keyed by aggregate id). Events of other
/// aggregate types are ignored. Pure.
pub fn fold_all<'e, M: ReadModel>(
    rows: &mut HashMap<String, M::Row>,
    events: impl IntoIterator<Item = &'e Envelope>,
) -> BatchFold {
    let mut batch = BatchFold {
        changed: Vec::new(),
        poisoned: Vec::new(),
        duplicates: 0,
    };
    for (index, event) in events.into_iter().enumerate() {
        if event.aggregate_type != M::AGGREGATE_TYPE {
            continue;
        }
        match fold_next::<M>(rows.get(&event.aggregate_id), event) {
            Ok(Folded::Changed(row)) => {
                if !batch.changed.contains(&event.aggregate_id) {
                    batch.changed.push(event.aggregate_id.clone());
                }
                rows.insert(event.aggregate_id.clone(), row);
            }
            Ok(Folded::Duplicate) => batch.duplicates += 1,
            Err(error) => batch.poisoned.push((index, error)),
        }
    }
    batch
}

/// Decodes the event's payload into the aggregate's event enum.
pub fn decode<E: serde::de::DeserializeOwned>(event: &Envelope) -> Result<E, ApplyError> {
    event.decode().map_err(|error| ApplyError::Decode {
        event_type: event.event_type.clone(),
        reason: error.to_string(),
    })
}

#[cfg(test)]
pub(crate) mod test_support {
    use chrono::{DateTime, TimeZone, Utc};
    use event_store::Envelope;
    use serde_json::Value;

    /// An envelope as the relay would publish it.
    pub fn envelope(
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: i64,
        event_type: &str,
        payload: Value,
    ) -> Envelope {
        Envelope {
            event_id: uuid::Uuid::now_v7(),
            aggregate_type: aggregate_type.into(),
            aggregate_id: aggregate_id.into(),
            sequence,
            global_position: sequence * 10,
            event_type: event_type.into(),
            event_version: "1.0".into(),
            recorded_at: at(sequence),
            payload,
            metadata: serde_json::json!({}),
        }
    }

    pub fn at(seconds: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + seconds, 0)
            .single()
            .unwrap()
    }
}
