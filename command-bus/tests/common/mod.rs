//! Helpers for the event store's tests against the real PostgreSQL.
// Each test binary uses a different subset of these helpers.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use command_bus::{CommandBus, CommandContext, Expect};
use domain::values::{Currency, Money, ProductName, Sku};
use domain::{Product, ProductCommand};
use platform::testing::TestDatabase;
use sqlx::PgPool;

/// A fresh, migrated database; dropped with the handle.
pub async fn migrated_database() -> (TestDatabase, PgPool) {
    let database = TestDatabase::create().await.expect("test database");
    let pool = database.pool(20).await.expect("pool");
    event_store::migrate(&pool).await.expect("migrations");
    (database, pool)
}

pub fn context(request: &str) -> CommandContext {
    CommandContext {
        correlation_id: format!("corr-{request}"),
        causation_id: format!("cause-{request}"),
        ..CommandContext::default()
    }
}

pub async fn create_product(bus: &CommandBus, sku: &str, price_cents: i64, currency: &str) {
    let command = ProductCommand::CreateProduct {
        sku: Sku::parse(sku).unwrap(),
        name: ProductName::parse("A product").unwrap(),
        price: Money::price(price_cents, Currency::parse(currency).unwrap()).unwrap(),
    };
    bus.execute::<Product>(sku, command, &context("create"), Expect::New)
        .await
        .expect("product created");
}
