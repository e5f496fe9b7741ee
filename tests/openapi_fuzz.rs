//! The published OpenAPI document against the running API, by an
//! OpenAPI-driven property-based fuzzer (Schemathesis, installed under
//! `.local/` by `scripts/test`): every check on, the document's links
//! followed in stateful runs. No schema-valid request may be refused for its
//! shape, no answer may fall outside the document, none may be a 5xx.
//!
//! It runs as an administrator, who may call every operation, and as a
//! customer, whose product commands answer 403 and whose cancels reach only
//! their own orders. `ORDERS_FUZZ_SEED` replays a run; `ORDERS_FUZZ_EXAMPLES`
//! sets the cases per operation.

use std::path::{Path, PathBuf};
use std::process::Command;

use platform_tests::TestPlatform;

/// The Schemathesis CLI: `ORDERS_SCHEMATHESIS`, or the one `scripts/test`
/// installs under `.local/`.
fn schemathesis() -> PathBuf {
    if let Some(path) = std::env::var_os("ORDERS_SCHEMATHESIS") {
        return PathBuf::from(path);
    }
    let st = platform_tests::tools::python_bin("st");
    assert!(
        st.exists(),
        "{} is missing: scripts/test installs Schemathesis there",
        st.display()
    );
    st
}

fn fuzz(document: &str, token: &str, examples: u32, seed: u64) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let output = Command::new(schemathesis())
        .current_dir(&dir)
        .env("ORDERS_FUZZ_TOKEN", token)
        .env("SCHEMATHESIS_HOOKS", "hooks")
        .env("PYTHONPATH", &dir)
        .env("NO_COLOR", "1")
        .args(["--config-file", "schemathesis.toml", "run"])
        .arg(document)
        .args(["--workers", "2", "--no-color"])
        .args(["--max-examples", &examples.to_string()])
        .args(["--seed", &seed.to_string()])
        .output()
        .expect("Schemathesis runs");
    let report = String::from_utf8_lossy(&output.stdout);
    println!("{report}");
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "the fuzzer found requests the document and the API disagree on (seed {seed}; \
         replay with ORDERS_FUZZ_SEED={seed}):\n{report}"
    );
    assert!(
        report.contains("Stateful") && report.contains("API Links"),
        "the stateful phase did not run:\n{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_does_exactly_what_its_openapi_document_says() {
    let platform = TestPlatform::start().await;
    let seed = std::env::var("ORDERS_FUZZ_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(rand_seed);
    let examples: u32 = std::env::var("ORDERS_FUZZ_EXAMPLES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(150);
    let admin = identity::testing::token("fuzz-admin", "admin");
    let customer = identity::testing::token("fuzz-customer", "orders");
    let document = platform.url("/api/openapi.json");
    tokio::task::spawn_blocking(move || {
        fuzz(&document, &admin, examples, seed);
        fuzz(&document, &customer, examples / 3, seed);
    })
    .await
    .expect("the fuzz runs finish");
    platform.stop().await;
}

/// A seed from the clock: each run explores other cases; the report names it.
fn rand_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |elapsed| elapsed.as_secs())
}
