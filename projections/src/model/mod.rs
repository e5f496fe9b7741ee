//! The read models. Each is a pure fold of one aggregate's events into one
//! row, plus how to load and store those rows. The live worker and the
//! rebuild run the same fold, so a rebuilt table equals the live one.
//!
//! Every row remembers the last event applied (`version`, the aggregate's
//! sequence). An event at or below it is a redelivery and changes nothing; an
//! event further ahead than the next one means one is missing, and is refused.

pub mod copy;
pub mod customer_orders;
pub mod orders;
pub mod payments;
pub mod products;

use std::collections::{HashMap, HashSet};
use std::future::Future;

use chrono::{DateTime, Utc};
use event_contract::Envelope;
use event_store::RecordedEvent;
use serde::de::DeserializeOwned;
use serde_json::Value;
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

impl ApplyError {
    /// `event` needs the aggregate's row, and there is none: the event that
    /// creates it never came.
    pub fn missing_row(event: &EventRef<'_>) -> Self {
        Self::Gap {
            aggregate_id: event.aggregate_id.to_owned(),
            expected: 1,
            got: event.sequence,
        }
    }
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
    /// The table's columns, in the order [`copy_row`](Self::copy_row) writes them.
    const COLUMNS: &'static str;

    /// The version (last applied sequence) a row records.
    fn version(row: &Self::Row) -> i64;

    /// `row` as it is after an event of `sequence` that the projection
    /// cannot apply (its body does not decode): unchanged but for its
    /// version, so that the events after it apply. See [`fold_next`].
    fn skipped(row: &Self::Row, sequence: i64) -> Self::Row;

    /// The row after `event`, given the row before it (`None`: no row yet).
    /// Called only for events of [`Self::AGGREGATE_TYPE`] whose sequence is
    /// the next one; pure.
    fn fold(row: Option<&Self::Row>, event: &EventRef<'_>) -> Result<Self::Row, ApplyError>;

    /// The rows of `table` for these aggregate ids.
    fn load(
        connection: &mut PgConnection,
        table: &str,
        aggregate_ids: &[&str],
    ) -> impl Future<Output = sqlx::Result<HashMap<String, Self::Row>>> + Send;

    /// The order in which a rebuild writes rows into its fresh table, which
    /// has the live table's indexes already: the order of those indexes, so
    /// that each grows at one edge rather than everywhere at once.
    fn copy_order(a: &Self::Row, b: &Self::Row) -> std::cmp::Ordering;

    /// Writes `row` as the columns of one line of `COPY` text.
    fn copy_row(row: &Self::Row, text: &mut copy::CopyText) -> serde_json::Result<()>;

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
    event: &EventRef<'_>,
) -> Result<Folded<M::Row>, ApplyError> {
    let version = row.map_or(0, M::version);
    if event.sequence <= version {
        return Ok(Folded::Duplicate);
    }
    if event.sequence != version + 1 {
        return Err(ApplyError::Gap {
            aggregate_id: event.aggregate_id.to_owned(),
            expected: version + 1,
            got: event.sequence,
        });
    }
    M::fold(row, event).map(Folded::Changed)
}

/// The result of [`fold_into`] for one event the store holds but the
/// projection cannot apply: reported, and stepped over when the row exists
/// (its version moves past the event), so that one such event does not stop
/// every later event of the aggregate from applying. The live workers and a
/// rebuild step over it alike; a rebuild after the projection's code is
/// fixed applies it.
fn step_over<M: ReadModel>(
    row: Option<&M::Row>,
    event: &EventRef<'_>,
    error: &ApplyError,
) -> Option<M::Row> {
    let row = row?;
    (matches!(error, ApplyError::Decode { .. }) && event.sequence == M::version(row) + 1)
        .then(|| M::skipped(row, event.sequence))
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
    events: impl IntoIterator<Item = impl Into<EventRef<'e>>>,
) -> BatchFold {
    fold_into::<M>(rows, events, true)
}

/// Like [`fold_all`], without listing the changed rows: for a rebuild, which
/// writes every row anyway.
pub fn fold_untracked<'e, M: ReadModel>(
    rows: &mut HashMap<String, M::Row>,
    events: impl IntoIterator<Item = impl Into<EventRef<'e>>>,
) -> BatchFold {
    fold_into::<M>(rows, events, false)
}

fn fold_into<'e, M: ReadModel>(
    rows: &mut HashMap<String, M::Row>,
    events: impl IntoIterator<Item = impl Into<EventRef<'e>>>,
    track_changes: bool,
) -> BatchFold {
    let mut batch = BatchFold {
        changed: Vec::new(),
        poisoned: Vec::new(),
        duplicates: 0,
    };
    let mut changed = HashSet::new();
    for (index, event) in events.into_iter().enumerate() {
        let event = event.into();
        if event.aggregate_type != M::AGGREGATE_TYPE {
            continue;
        }
        match fold_next::<M>(rows.get(event.aggregate_id), &event) {
            Ok(Folded::Changed(row)) => {
                if track_changes && changed.insert(event.aggregate_id) {
                    batch.changed.push(event.aggregate_id.to_owned());
                }
                match rows.get_mut(event.aggregate_id) {
                    Some(slot) => *slot = row,
                    None => {
                        rows.insert(event.aggregate_id.to_owned(), row);
                    }
                }
            }
            Ok(Folded::Duplicate) => batch.duplicates += 1,
            Err(error) => {
                if let Some(row) = step_over::<M>(rows.get(event.aggregate_id), &event, &error) {
                    tracing::warn!(projection = M::NAME, aggregate_id = event.aggregate_id, sequence = event.sequence, %error, "stepping over an event the projection cannot apply");
                    if track_changes && changed.insert(event.aggregate_id) {
                        batch.changed.push(event.aggregate_id.to_owned());
                    }
                    rows.insert(event.aggregate_id.to_owned(), row);
                }
                batch.poisoned.push((index, error));
            }
        }
    }
    batch
}

/// An event as a fold sees it: which aggregate and version it belongs to, and
/// its body still encoded, decoded only once the event turns out to be the
/// next one of its aggregate. It borrows from a published [`Envelope`] (the
/// live workers) or from a [`RecordedEvent`] read as text (the rebuild).
#[derive(Debug, Clone, Copy)]
pub struct EventRef<'a> {
    pub aggregate_type: &'a str,
    pub aggregate_id: &'a str,
    pub sequence: i64,
    pub global_position: i64,
    pub event_type: &'a str,
    pub recorded_at: DateTime<Utc>,
    body: Body<'a>,
}

#[derive(Debug, Clone, Copy)]
enum Body<'a> {
    /// The event's own fields, as published.
    Fields(&'a Value),
    /// The stored wrapper `{"<event_type>": {...}}`, as JSON text.
    Stored(&'a str),
}

impl<'a> From<&'a Envelope> for EventRef<'a> {
    fn from(event: &'a Envelope) -> Self {
        Self {
            aggregate_type: &event.aggregate_type,
            aggregate_id: &event.aggregate_id,
            sequence: event.sequence,
            global_position: event.global_position,
            event_type: &event.event_type,
            recorded_at: event.recorded_at,
            body: Body::Fields(&event.payload),
        }
    }
}

impl<'a, J: AsRef<str>> From<&'a RecordedEvent<J>> for EventRef<'a> {
    fn from(event: &'a RecordedEvent<J>) -> Self {
        Self {
            aggregate_type: &event.aggregate_type,
            aggregate_id: &event.aggregate_id,
            sequence: event.sequence,
            global_position: event.global_position,
            event_type: &event.event_type,
            recorded_at: event.recorded_at,
            body: Body::Stored(event.payload.as_ref()),
        }
    }
}

impl EventRef<'_> {
    /// Decodes the body into the aggregate's event enum.
    pub fn decode<E: DeserializeOwned>(&self) -> Result<E, ApplyError> {
        let decoded = match self.body {
            Body::Fields(fields) => event_contract::decode_fields(self.event_type, fields),
            Body::Stored(text) => event_contract::decode_stored(text),
        };
        decoded.map_err(|error| ApplyError::Decode {
            event_type: self.event_type.to_owned(),
            reason: error.to_string(),
        })
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use chrono::{DateTime, TimeZone, Utc};
    use event_contract::Envelope;
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
