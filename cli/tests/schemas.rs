//! The checked-in contract in `schemas/` must be what the code generates.

use std::path::Path;

#[test]
fn checked_in_schemas_match_the_code() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas");
    if let Err(error) = orders_cli::schemas::check(&dir) {
        panic!("{error:#}");
    }
}

#[test]
fn the_openapi_document_covers_every_command_route() {
    let document = command_api::openapi();
    let paths: Vec<&String> = document.paths.paths.keys().collect();
    for path in [
        "/api/products",
        "/api/products/{sku}/stock",
        "/api/orders",
        "/api/orders/{order_id}/cancel",
    ] {
        assert!(
            paths.iter().any(|p| *p == path),
            "{path} missing from {paths:?}"
        );
    }
}
