//! Catalogue lookups for the write side: the name and price a product was
//! created with, which is where an order's unit prices come from.
//!
//! A product's catalogue data is fixed by its first event (`ProductCreated`)
//! and no command changes it, so what has been read once stays true and is
//! kept in memory. A command that changes prices must also retire this cache.

use std::collections::HashMap;
use std::sync::RwLock;

use cqrs_es::Aggregate;
use domain::product::ProductDetails;
use domain::values::Sku;
use domain::{Product, ProductEvent};
use sqlx::{PgPool, Row};

/// Entries kept before the cache starts over; bounds memory on huge catalogues.
const CACHE_CAPACITY: usize = 100_000;

/// Reads products' catalogue data, remembering what it read.
#[derive(Debug)]
pub struct Catalog {
    pool: PgPool,
    cache: RwLock<HashMap<Sku, ProductDetails>>,
}

impl Catalog {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            cache: RwLock::new(HashMap::new()),
        }
    }

    /// The catalogue data of each SKU, in the order asked; `None` for SKUs no
    /// product has. At most one database round trip.
    pub async fn details(&self, skus: &[Sku]) -> Result<Vec<Option<ProductDetails>>, sqlx::Error> {
        let mut found: Vec<Option<ProductDetails>> = {
            let cache = self
                .cache
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            skus.iter().map(|sku| cache.get(sku).cloned()).collect()
        };
        let missing: Vec<&str> = skus
            .iter()
            .zip(&found)
            .filter(|(_, details)| details.is_none())
            .map(|(sku, _)| sku.as_str())
            .collect();
        if missing.is_empty() {
            return Ok(found);
        }
        let rows = sqlx::query(
            "SELECT payload FROM events
              WHERE aggregate_type = $1 AND sequence = 1 AND aggregate_id = ANY($2)",
        )
        .bind(Product::TYPE)
        .bind(&missing)
        .fetch_all(&self.pool)
        .await?;
        let mut loaded = HashMap::with_capacity(rows.len());
        for row in rows {
            let payload: serde_json::Value = row.try_get("payload")?;
            let event: ProductEvent = serde_json::from_value(payload)
                .map_err(|error| sqlx::Error::Decode(Box::new(error)))?;
            if let ProductEvent::ProductCreated(created) = event {
                let details = ProductDetails {
                    sku: created.sku,
                    name: created.name,
                    price: created.price,
                };
                loaded.insert(details.sku.clone(), details);
            }
        }
        for (sku, slot) in skus.iter().zip(found.iter_mut()) {
            if slot.is_none() {
                *slot = loaded.get(sku).cloned();
            }
        }
        let mut cache = self
            .cache
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if cache.len() + loaded.len() > CACHE_CAPACITY {
            cache.clear();
        }
        cache.extend(loaded);
        Ok(found)
    }
}
