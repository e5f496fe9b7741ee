//! The dependency rules ARCHITECTURE.md states, checked against the
//! workspace's manifests (`cargo metadata`): a crate that takes on a
//! dependency the design does not allow fails here, not in review.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

/// Each library crate and the workspace crates it may depend on (normal
/// dependencies; tests and benchmarks may use anything).
const ALLOWED: &[(&str, &[&str])] = &[
    ("domain", &[]),
    ("platform", &[]),
    ("identity", &["domain"]),
    ("http-edge", &["identity", "platform"]),
    ("event-store", &["domain", "platform"]),
    ("command-bus", &["domain", "event-store", "platform"]),
    ("event-contract", &["event-store", "platform"]),
    (
        "command-api",
        &[
            "command-bus",
            "domain",
            "event-store",
            "http-edge",
            "identity",
            "platform",
        ],
    ),
    ("relay", &["event-contract", "event-store", "platform"]),
    ("order-saga", &["domain", "platform"]),
    (
        "saga-orchestrator",
        &[
            "command-bus",
            "domain",
            "event-contract",
            "event-store",
            "order-saga",
            "platform",
        ],
    ),
    (
        "projections",
        &["domain", "event-contract", "event-store", "platform"],
    ),
    (
        "query-api",
        &[
            "domain",
            "event-contract",
            "event-store",
            "http-edge",
            "identity",
            "order-saga",
            "platform",
            "projections",
        ],
    ),
    ("payment-gateway", &["http-edge", "platform"]),
    ("operations", &["event-contract", "order-saga", "platform"]),
    (
        "orders-console",
        &["http-edge", "operations", "projections"],
    ),
];

/// The read side, and the crates that decide or send commands: no read
/// crate reaches a write-side one, directly or through another crate.
const READ_SIDE: &[&str] = &["projections", "query-api"];
const WRITE_SIDE: &[&str] = &["command-bus", "command-api", "saga-orchestrator", "relay"];

/// The HTTP services, which all speak through the one shared edge.
const HTTP_SERVICES: &[&str] = &[
    "command-api",
    "query-api",
    "orders-console",
    "payment-gateway",
];

/// Crates that only assemble or exercise the others.
const ASSEMBLIES: &[&str] = &["orders-cli", "bench", "platform-tests"];

/// External crates a workspace crate must not name directly: the event store
/// and the domain know nothing of Kafka, HTTP or GraphQL, and the domain does
/// no IO at all.
const FORBIDDEN: &[(&str, &[&str])] = &[
    (
        "domain",
        &[
            "sqlx",
            "tokio",
            "rdkafka",
            "axum",
            "reqwest",
            "async-graphql",
        ],
    ),
    (
        "event-store",
        &["rdkafka", "axum", "reqwest", "async-graphql"],
    ),
    (
        "command-bus",
        &["rdkafka", "axum", "reqwest", "async-graphql"],
    ),
    (
        "event-contract",
        &["sqlx", "axum", "reqwest", "async-graphql", "domain"],
    ),
];

/// Normal dependencies of every workspace crate: (crate, dependency, whether
/// the dependency is a workspace crate).
fn manifests() -> BTreeMap<String, Vec<(String, bool)>> {
    metadata()["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|package| {
            let dependencies = normal(package)
                .map(|dependency| {
                    (
                        dependency["name"].as_str().expect("name").to_owned(),
                        dependency["path"].is_string(),
                    )
                })
                .collect();
            (
                package["name"].as_str().expect("name").to_owned(),
                dependencies,
            )
        })
        .collect()
}

/// A package's normal dependencies (not dev or build ones).
fn normal(package: &Value) -> impl Iterator<Item = &Value> {
    package["dependencies"]
        .as_array()
        .expect("dependencies")
        .iter()
        .filter(|dependency| dependency["kind"].is_null())
}

/// `cargo metadata` of the workspace's own packages.
fn metadata() -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON")
}

#[test]
fn nothing_that_ships_turns_on_a_test_helper() {
    // The test helpers (a per-process random signing secret, throwaway
    // databases) are behind a `testing` feature; a crate the `orders`
    // binary is built from asking for it would put them in the binary.
    let metadata = metadata();
    let mut broken = Vec::new();
    for package in metadata["packages"].as_array().expect("packages") {
        let name = package["name"].as_str().expect("name");
        if name == "bench" || name == "platform-tests" {
            continue;
        }
        for dependency in normal(package) {
            let features = dependency["features"].as_array().expect("features");
            if features.iter().any(|feature| feature == "testing") {
                broken.push(format!(
                    "{name} turns on {}'s testing feature",
                    dependency["name"]
                ));
            }
        }
        let defaults = package["features"]["default"].as_array();
        if defaults.is_some_and(|defaults| defaults.iter().any(|f| f == "testing")) {
            broken.push(format!("{name} has testing among its default features"));
        }
    }
    assert!(broken.is_empty(), "{broken:#?}");
}

#[test]
fn every_crate_depends_only_on_what_the_architecture_allows() {
    let manifests = manifests();
    let allowed: BTreeMap<&str, BTreeSet<&str>> = ALLOWED
        .iter()
        .map(|(name, deps)| (*name, deps.iter().copied().collect()))
        .collect();
    let mut broken = Vec::new();
    for (name, dependencies) in &manifests {
        if ASSEMBLIES.contains(&name.as_str()) {
            continue;
        }
        let Some(allowed) = allowed.get(name.as_str()) else {
            broken.push(format!(
                "{name} is not in the dependency rules: add it to ARCHITECTURE.md and here"
            ));
            continue;
        };
        for (dependency, in_workspace) in dependencies {
            if *in_workspace && !allowed.contains(dependency.as_str()) {
                broken.push(format!("{name} depends on {dependency}"));
            }
        }
    }
    for (name, _) in ALLOWED {
        assert!(
            manifests.contains_key(*name),
            "{name} is in the rules but not in the workspace"
        );
    }
    assert!(broken.is_empty(), "dependency rules broken: {broken:#?}");
}

#[test]
fn nothing_but_the_assemblies_depends_on_them() {
    let manifests = manifests();
    for (name, dependencies) in &manifests {
        if ASSEMBLIES.contains(&name.as_str()) {
            continue;
        }
        for (dependency, _) in dependencies {
            assert!(
                !ASSEMBLIES.contains(&dependency.as_str()),
                "{name} depends on the assembly {dependency}"
            );
        }
    }
}

#[test]
fn storage_and_domain_name_no_messaging_web_or_graphql_crate() {
    let manifests = manifests();
    for (name, forbidden) in FORBIDDEN {
        let dependencies = &manifests[*name];
        for (dependency, _) in dependencies {
            assert!(
                !forbidden.contains(&dependency.as_str()),
                "{name} depends on {dependency}"
            );
        }
    }
}

#[test]
fn the_publisher_and_every_consumer_use_the_one_event_contract() {
    let manifests = manifests();
    for name in ["relay", "projections", "saga-orchestrator"] {
        assert!(
            manifests[name]
                .iter()
                .any(|(dependency, _)| dependency == "event-contract"),
            "{name} does not use event-contract"
        );
    }
}

/// Every workspace crate `name` reaches through normal dependencies.
fn reaches(manifests: &BTreeMap<String, Vec<(String, bool)>>, name: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut next = vec![name.to_owned()];
    while let Some(crate_name) = next.pop() {
        for (dependency, in_workspace) in manifests.get(&crate_name).into_iter().flatten() {
            if *in_workspace && seen.insert(dependency.clone()) {
                next.push(dependency.clone());
            }
        }
    }
    seen
}

#[test]
fn no_read_crate_reaches_a_write_side_crate() {
    let manifests = manifests();
    for name in READ_SIDE {
        let reached = reaches(&manifests, name);
        for write in WRITE_SIDE {
            assert!(!reached.contains(*write), "{name} reaches {write}");
        }
    }
}

#[test]
fn every_http_service_speaks_through_the_one_edge() {
    let manifests = manifests();
    for name in HTTP_SERVICES {
        assert!(
            manifests[*name]
                .iter()
                .any(|(dependency, _)| dependency == "http-edge"),
            "{name} does not use http-edge"
        );
    }
}
