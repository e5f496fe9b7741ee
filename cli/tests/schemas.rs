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
fn every_operation_of_the_openapi_document_names_its_id_and_scopes() {
    // The document is built from the route declarations; what tests reach
    // of every route (tests/support's `declared_routes`) is read from it.
    let document = serde_json::to_value(command_api::openapi()).unwrap();
    let paths = document["paths"].as_object().unwrap();
    assert!(
        paths.contains_key("/api/orders/{order_id}/cancel"),
        "{paths:?}"
    );
    for (path, item) in paths {
        for (method, operation) in item.as_object().unwrap() {
            assert!(operation["operationId"].is_string(), "{method} {path}");
            let scopes: Vec<&str> = operation["security"]
                .as_array()
                .unwrap_or_else(|| panic!("{method} {path} names no security"))
                .iter()
                .flat_map(|requirement| requirement["bearer"].as_array().unwrap())
                .map(|scope| scope.as_str().unwrap())
                .collect();
            assert!(!scopes.is_empty(), "{method} {path} names no scope");
            assert!(
                scopes
                    .iter()
                    .all(|scope| ["orders", "admin"].contains(scope)),
                "{method} {path}: {scopes:?}"
            );
        }
    }
}

/// Every `$ref` in `value`, with where it was found.
fn references(value: &serde_json::Value, at: &str, found: &mut Vec<(String, String)>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, item) in map {
                if key == "$ref" {
                    found.push((at.to_owned(), item.as_str().unwrap_or_default().to_owned()));
                } else {
                    references(item, &format!("{at}/{key}"), found);
                }
            }
        }
        serde_json::Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                references(item, &format!("{at}/{i}"), found);
            }
        }
        _ => {}
    }
}

#[test]
fn every_reference_of_the_openapi_document_resolves() {
    let document: serde_json::Value =
        serde_json::from_str(&command_api::openapi().to_json().unwrap()).unwrap();
    let mut found = Vec::new();
    references(&document, "", &mut found);
    assert!(found.iter().any(|(_, target)| target.ends_with("/Problem")));
    for (at, target) in found {
        let pointer = target
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{at}: {target} is not local"));
        assert!(
            document.pointer(pointer).is_some(),
            "{at}: {target} does not resolve"
        );
    }
}

#[test]
fn every_command_says_how_it_is_authenticated_and_refused() {
    let document: serde_json::Value =
        serde_json::from_str(&command_api::openapi().to_json().unwrap()).unwrap();
    assert_eq!(
        document["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    for (path, item) in document["paths"].as_object().unwrap() {
        let operation = &item["post"];
        let requirements = operation["security"].as_array().unwrap();
        assert!(
            requirements
                .iter()
                .all(|r| r.as_object().unwrap().keys().eq(["bearer"])),
            "{path}"
        );
        let responses = operation["responses"].as_object().unwrap();
        for status in [
            "400", "401", "403", "409", "412", "413", "415", "422", "429", "500", "503",
        ] {
            let response = responses
                .get(status)
                .unwrap_or_else(|| panic!("{path} does not list {status}"));
            assert_eq!(
                response["content"]["application/problem+json"]["schema"]["$ref"],
                "#/components/schemas/Problem",
                "{path} {status}"
            );
        }
        assert!(
            responses["401"]["headers"]
                .get("WWW-Authenticate")
                .is_some()
        );
        assert!(responses["429"]["headers"].get("Retry-After").is_some());
    }
    let lines = &document["components"]["schemas"]["PlaceOrder"]["properties"]["lines"];
    assert_eq!(lines["minItems"], 1);
    assert_eq!(lines["maxItems"], domain::order::MAX_LINES);
}
