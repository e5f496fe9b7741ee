//! Catalogue lookups for the write side: the name, price and sale status a
//! product has now, which is where a new order's unit prices come from.
//!
//! Prices change and products are discontinued, so nothing read is kept: a
//! lookup folds the product's catalogue events ([`ProductEvent::CATALOGUE`])
//! as the store holds them when it runs, through an index of exactly those
//! events (migration 0007), so that a product with millions of stock events
//! costs what one with a few does. Lookups made at about the same time share
//! one statement (group commit's batcher), so a busy API pays one round trip
//! for many orders. An order placed after a price change's answer was sent
//! reads the new price, in any process. An order takes the prices the
//! store holds when its request is priced: one priced just before a change
//! committed and appended just after keeps the price it was priced at.

use std::collections::HashMap;
use std::sync::Arc;

use cqrs_es::Aggregate;
use domain::product::ProductDetails;
use domain::values::Sku;
use domain::{Product, ProductEvent};
use platform::batch::Batcher;
use sqlx::{PgPool, Row};
use tokio::sync::oneshot;

/// Lookups answered by one statement, at most.
const MAX_BATCH: usize = 256;
/// Statements in flight at once.
const WORKERS: usize = 2;

/// Why a lookup failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CatalogError {
    #[error("reading the catalogue: {0}")]
    Database(Arc<sqlx::Error>),
    #[error("a stored catalogue event does not decode: {0}")]
    Decode(String),
    #[error("the catalogue's lookups have stopped")]
    Stopped,
}

impl CatalogError {
    /// The database could not be reached, as opposed to a fault of ours.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Database(error) => crate::dispatch::database_unavailable(error),
            Self::Decode(_) => false,
            Self::Stopped => true,
        }
    }
}

type Answer = Result<Vec<Option<ProductDetails>>, CatalogError>;

struct Lookup {
    skus: Vec<Sku>,
    answer: oneshot::Sender<Answer>,
}

/// Reads products' catalogue data as it is now.
#[derive(Clone)]
pub struct Catalog {
    lookups: Batcher<Lookup>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").finish_non_exhaustive()
    }
}

/// The statement of a lookup: every catalogue event of the SKUs (`$1`), in
/// order. The event types are written out, not bound, so that the planner
/// can use the partial index whose predicate names them.
pub fn lookup_statement() -> String {
    let types = ProductEvent::CATALOGUE
        .iter()
        .map(|name| format!("'{name}'"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "SELECT aggregate_id, payload FROM events
          WHERE aggregate_type = '{}' AND event_type IN ({types}) AND aggregate_id = ANY($1)
          ORDER BY aggregate_id, sequence",
        Product::TYPE
    )
}

impl Catalog {
    pub fn new(pool: PgPool) -> Self {
        let statement: Arc<str> = lookup_statement().into();
        Self {
            lookups: Batcher::new("catalog_lookup_batch", WORKERS, MAX_BATCH, move |batch| {
                answer(pool.clone(), Arc::clone(&statement), batch)
            }),
        }
    }

    /// The catalogue data of each SKU, in the order asked; `None` for SKUs no
    /// product has.
    pub async fn details(&self, skus: &[Sku]) -> Answer {
        let (answer, answered) = oneshot::channel();
        self.lookups
            .submit(Lookup {
                skus: skus.to_vec(),
                answer,
            })
            .await
            .map_err(|_| CatalogError::Stopped)?;
        answered.await.map_err(|_| CatalogError::Stopped)?
    }
}

/// Answers a batch of lookups with one statement. A product whose catalogue
/// events do not decode fails the lookups that name it, not the others.
async fn answer(pool: PgPool, statement: Arc<str>, batch: Vec<Lookup>) {
    let mut wanted: Vec<&str> = batch
        .iter()
        .flat_map(|lookup| lookup.skus.iter().map(Sku::as_str))
        .collect();
    wanted.sort_unstable();
    wanted.dedup();
    let found = read(&pool, &statement, &wanted).await;
    for lookup in batch {
        let answer = found.as_ref().map_err(Clone::clone).and_then(|found| {
            lookup
                .skus
                .iter()
                .map(|sku| match found.get(sku.as_str()) {
                    None => Ok(None),
                    Some(Ok(details)) => Ok(Some(details.clone())),
                    Some(Err(error)) => Err(error.clone()),
                })
                .collect()
        });
        // A caller that stopped waiting needs no answer.
        let _ = lookup.answer.send(answer);
    }
}

/// Each product's catalogue data, or why its events do not fold.
type Folded = HashMap<String, Result<ProductDetails, CatalogError>>;

async fn read(pool: &PgPool, statement: &str, skus: &[&str]) -> Result<Folded, CatalogError> {
    let rows = sqlx::query(statement)
        .bind(skus)
        .fetch_all(pool)
        .await
        .map_err(|error| CatalogError::Database(Arc::new(error)))?;
    let mut found: Folded = HashMap::with_capacity(skus.len());
    for row in rows {
        let sku: String = row
            .try_get("aggregate_id")
            .map_err(|error| CatalogError::Database(Arc::new(error)))?;
        let payload: serde_json::Value = row
            .try_get("payload")
            .map_err(|error| CatalogError::Database(Arc::new(error)))?;
        let folded = match (
            found.remove(&sku),
            serde_json::from_value::<ProductEvent>(payload),
        ) {
            (Some(Err(broken)), _) => Some(Err(broken)),
            (_, Err(error)) => Some(Err(CatalogError::Decode(format!("{sku}: {error}")))),
            (before, Ok(event)) => {
                ProductDetails::fold(before.and_then(Result::ok), &event).map(Ok)
            }
        };
        if let Some(folded) = folded {
            found.insert(sku, folded);
        }
    }
    Ok(found)
}
