//! The platform's pages in a real browser (headless Chromium over the
//! DevTools Protocol), with every host but this machine unreachable.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::time::Duration;

use platform_tests::TestPlatform;
use platform_tests::browser::Browser;

const WITHIN: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphiql_runs_a_query_in_a_browser_without_internet() {
    let platform = TestPlatform::start().await;
    platform.create_product("MUG-01", 1250, 25).await;
    let browser = Browser::start().await;
    let mut page = browser.open(&platform.url("/graphql")).await;

    // GraphiQL rendered: its scripts loaded, from the platform only.
    page.wait_for(
        "!!document.querySelector('.graphiql-container .graphiql-query-editor .CodeMirror')",
        WITHIN,
    )
    .await;
    for resource in page.resources().await {
        assert!(
            resource.starts_with(&platform.url("/")),
            "the page loaded {resource}"
        );
    }

    // A query typed into the editor and run with the button.
    page.eval(
        "document.querySelector('.graphiql-query-editor .CodeMirror').CodeMirror\
         .setValue('{ product(sku: \"MUG-01\") { sku onHand } }')",
    )
    .await;
    page.eval("document.querySelector('.graphiql-execute-button').click()")
        .await;
    let answer = page
        .wait_for(
            "(() => { const r = document.querySelector('.graphiql-response .CodeMirror');\
                 const text = r ? r.CodeMirror.getValue() : '';\
                 return text.includes('onHand') ? text : ''; })()",
            WITHIN,
        )
        .await;
    let answer: serde_json::Value = serde_json::from_str(answer.as_str().unwrap()).unwrap();
    assert_eq!(
        answer["data"]["product"],
        serde_json::json!({"sku": "MUG-01", "onHand": 25})
    );
    platform.stop().await;
}
