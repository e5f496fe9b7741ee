//! The platform's pages in a real browser (headless Chromium over the
//! DevTools Protocol), with every host but this machine unreachable.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::time::Duration;

use platform_tests::browser::{Browser, Page};
use platform_tests::{TestPlatform, product_envelope};
use serde_json::json;

const WITHIN: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphiql_runs_a_query_and_shows_the_schema_in_a_browser_without_internet() {
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

    // The documentation pane reads the schema by GraphiQL's own
    // introspection query: from the root type Query to the type Order.
    page.eval(
        "document.querySelector('.graphiql-sidebar button[aria-label=\"Show Documentation Explorer\"]').click()",
    )
    .await;
    let follow = |name: &str| {
        format!(
            "(() => {{ const link = [...document.querySelectorAll('.graphiql-doc-explorer a.graphiql-doc-explorer-type-name')]\
                 .find(a => a.innerText.trim() === {name:?});\
                 if (link) {{ link.click(); return true; }} return false; }})()"
        )
    };
    page.wait_for(&follow("Query"), WITHIN).await;
    page.wait_for(&follow("Order"), WITHIN).await;
    let title = page
        .wait_for(
            "(() => { const t = document.querySelector('.graphiql-doc-explorer-title');\
                 return t && t.innerText.trim() === 'Order' ? t.innerText : ''; })()",
            WITHIN,
        )
        .await;
    assert_eq!(title, "Order");
    let fields = page
        .wait_for(
            "[...document.querySelectorAll('.graphiql-doc-explorer-field-name')].map(f => f.innerText).join(' ')",
            WITHIN,
        )
        .await;
    let fields = fields.as_str().unwrap();
    for field in ["customerId", "status", "lines", "history", "saga"] {
        assert!(fields.contains(field), "{field} missing from {fields}");
    }
    platform.stop().await;
}

/// `expression` (JavaScript) until it is truthy, for at most [`WITHIN`].
async fn shows(page: &mut Page, expression: &str) -> serde_json::Value {
    page.wait_for(expression, WITHIN).await
}

/// The text of the element with `id` once it contains `text`.
fn text_of(id: &str, text: &str) -> String {
    format!(
        "(() => {{ const e = document.getElementById({id:?}); \
             return e && e.innerText.includes({text:?}) ? e.innerText : ''; }})()"
    )
}

/// The console, signed in as `sub` with the `admin` scope.
async fn signed_in(browser: &Browser, platform: &TestPlatform, sub: &str) -> Page {
    let mut page = browser.open(&platform.url("/console")).await;
    shows(&mut page, "!!document.getElementById('token')").await;
    let token = identity::testing::token(sub, "admin");
    page.eval(&format!(
        "document.getElementById('token').value = {}; document.getElementById('sign-in').click()",
        serde_json::to_string(&token).unwrap()
    ))
    .await;
    page
}

/// Asserts that the page loaded nothing from anywhere but the platform.
async fn loaded_only_from(page: &mut Page, platform: &TestPlatform) {
    for resource in page.resources().await {
        assert!(
            resource.starts_with(&platform.url("/")),
            "the console loaded {resource}"
        );
    }
}

/// Goes to the console's page at `hash`.
async fn go(page: &mut Page, hash: &str) {
    page.eval(&format!("location.hash = {hash:?}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_follows_an_order_and_replays_a_dead_letter_in_a_browser() {
    let (platform, gateway) =
        TestPlatform::start_with_saga(saga_orchestrator::driver::Policy::default()).await;
    platform.create_product("MUG-01", 1250, 25).await;
    let placed = platform
        .command(
            "/api/orders",
            &json!({"customer_id": "customer-7", "lines": [{"sku": "MUG-01", "quantity": 2}],
                    "payment_method": "tok_visa"}),
            202,
        )
        .await;
    let id = placed["order_id"].as_str().unwrap().to_owned();
    let trace_id = platform
        .eventually(
            "query($id: ID!) { order(id: $id) { status saga { state traceId } } }",
            json!({"id": id}),
            WITHIN,
            |data| {
                let order = &data["order"];
                (order["status"] == "CONFIRMED" && order["saga"]["state"] == "CONFIRMED")
                    .then(|| order["saga"]["traceId"].as_str().map(str::to_owned))
            },
        )
        .await
        .expect("the saga knows the order's trace");
    // Stock published before the store the read side reads showed it: a
    // dead letter.
    let topics = event_contract::Topics::with_prefix(&platform.topics.prefix);
    let products = topics.for_aggregate("Product").unwrap();
    platform.create_product("GHOST", 100, 0).await;
    let stock = product_envelope("GHOST", 2, "StockAdded", json!({"quantity": 7}));
    platform::testing::produce_poison(&products, "GHOST", &[&stock])
        .await
        .unwrap();

    let browser = Browser::start().await;
    let mut page = signed_in(&browser, &platform, "console-admin").await;

    // Where the platform stands: every read model and its lag.
    shows(&mut page, &text_of("status-page", "customer_order")).await;
    page.screenshot("status").await;

    // Orders: the newest first, one followed to its timeline.
    go(&mut page, "#/orders").await;
    shows(&mut page, "!!document.getElementById('order-search')").await;
    page.eval("document.getElementById('search').click()").await;
    shows(&mut page, &text_of("orders-table", &id)).await;
    page.screenshot("orders").await;
    page.eval(&format!(
        "document.querySelector('#orders-table a[href=\"#/orders/{id}\"]').click()"
    ))
    .await;
    let timeline = shows(
        &mut page,
        "(() => { const t = document.getElementById('timeline'); \
             return t && t.querySelector('li.event') && t.querySelector('li.step') \
                 && t.innerText.includes('confirm order') ? t.innerText : ''; })()",
    )
    .await;
    let timeline = timeline.as_str().unwrap();
    for expected in [
        "OrderPlaced",
        "OrderConfirmed",
        "reserve MUG-01",
        "charge",
        "confirm order",
    ] {
        assert!(timeline.contains(expected), "{expected} in {timeline}");
    }
    let shown_trace = page
        .eval("document.getElementById('trace-id').textContent")
        .await;
    assert!(
        shown_trace.as_str().unwrap().contains(&trace_id),
        "{shown_trace} names trace {trace_id}"
    );
    page.screenshot("order").await;

    // Products with their stock, and whether they are sold.
    platform.create_product("OLD-1", 100, 0).await;
    platform
        .command(
            "/api/products/OLD-1/discontinue",
            &json!({"reason": "end of line"}),
            202,
        )
        .await;
    platform
        .eventually(
            "{ product(sku: \"OLD-1\") { active } }",
            json!({}),
            WITHIN,
            |data| (data["product"]["active"] == false).then_some(()),
        )
        .await;
    go(&mut page, "#/products").await;
    shows(&mut page, &text_of("products-table", "discontinued")).await;
    let rows = page
        .eval("[...document.querySelectorAll('#products-table tbody tr')].map(r => r.innerText).join('\\n')")
        .await;
    let rows = rows.as_str().unwrap();
    assert!(
        rows.lines()
            .any(|r| r.contains("MUG-01") && r.contains("active")),
        "{rows}"
    );
    assert!(
        rows.lines()
            .any(|r| r.contains("OLD-1") && r.contains("discontinued")),
        "{rows}"
    );
    page.screenshot("products").await;

    // The dead letter, replayed from the page once its cause is fixed.
    go(&mut page, "#/dead-letters").await;
    shows(&mut page, &text_of("dead-letters-table", "GHOST")).await;
    page.screenshot("dead-letters").await;
    platform_tests::store_envelope(&platform.pool, &stock).await;
    let on_hand = |expected: i64| {
        let platform = &platform;
        async move {
            platform
                .eventually(
                    "{ product(sku: \"GHOST\") { onHand } }",
                    json!({}),
                    WITHIN,
                    |data| (data["product"]["onHand"] == expected).then_some(()),
                )
                .await;
        }
    };
    on_hand(0).await;
    page.eval(
        "window.confirm = () => true; \
         document.querySelector('#dead-letters-table tr.dead-letter .replay').click()",
    )
    .await;
    shows(&mut page, &text_of("notice", "Replayed")).await;
    on_hand(7).await;
    let actor: String = sqlx::query_scalar("SELECT actor FROM dead_letter_actions")
        .fetch_one(&platform.pool)
        .await
        .unwrap();
    assert_eq!(actor, "console-admin");

    // A saga that needs someone: the provider lost an authorization the
    // ledger holds, and the shop ships. The operator, having settled it by
    // hand, abandons it from the page.
    let lost = platform
        .command(
            "/api/orders",
            &json!({"customer_id": "customer-8", "lines": [{"sku": "MUG-01", "quantity": 1}],
                    "payment_method": "tok_visa"}),
            202,
        )
        .await["order_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let saga_is = |wanted: &'static str| {
        let (platform, lost) = (&platform, &lost);
        async move {
            platform
                .eventually(
                    "query($id: ID!) { order(id: $id) { saga { state needsAttention } } }",
                    json!({"id": lost}),
                    WITHIN,
                    |data| {
                        let saga = &data["order"]["saga"];
                        let now = if saga["needsAttention"] == true {
                            "FLAGGED"
                        } else {
                            saga["state"].as_str().unwrap_or("")
                        };
                        (now == wanted).then_some(())
                    },
                )
                .await;
        }
    };
    saga_is("CONFIRMED").await;
    sqlx::query("DELETE FROM authorizations WHERE key = $1")
        .bind(saga_orchestrator::driver::authorization_key(&lost, 1))
        .execute(&gateway.database.pool(1).await.unwrap())
        .await
        .unwrap();
    platform
        .command(
            &format!("/api/orders/{lost}/shipments"),
            &json!({"lines": [{"sku": "MUG-01", "quantity": 1}], "carrier": "DHL",
                    "tracking_number": "JD0146"}),
            202,
        )
        .await;
    saga_is("FLAGGED").await;
    go(&mut page, "#/sagas").await;
    let row = format!("#sagas-table tr.saga[data-order-id=\"{lost}\"]");
    shows(&mut page, &format!("!!document.querySelector('{row}')")).await;
    page.screenshot("sagas").await;
    page.eval(
        "window.prompt = () => 'refunded by hand at the provider'; window.confirm = () => true",
    )
    .await;
    // A retry of its capture may hold the saga for a moment: the page says
    // so, and the operator presses again.
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        page.eval(&format!("document.querySelector('{row} .abandon').click()"))
            .await;
        let answer = shows(
            &mut page,
            "(() => { const n = document.getElementById('notice'); \
                 const e = document.getElementById('error'); \
                 return (n && n.innerText) || (e && e.innerText) || ''; })()",
        )
        .await;
        if answer.as_str().unwrap().contains("Abandoned") {
            break;
        }
        assert!(
            answer.as_str().unwrap().contains("at work") && tokio::time::Instant::now() < deadline,
            "{answer}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    shows(&mut page, &text_of("sagas-page", "Nothing needs attention")).await;
    saga_is("ABANDONED").await;
    let report = orders_cli::audit::audit(&platform.pool, &gateway.access())
        .await
        .unwrap();
    assert!(
        report.violations.iter().all(|v| !v.contains(&lost)),
        "{report}"
    );
    assert_eq!(
        report.abandoned,
        [format!(
            "{lost}: by console-admin: refunded by hand at the provider"
        )]
    );

    loaded_only_from(&mut page, &platform).await;
    platform.stop().await;
}

/// The text of every row of the table with `id`, one per line.
async fn rows_of(page: &mut Page, id: &str) -> String {
    page.eval(&format!(
        "[...document.querySelectorAll('#{id} tbody tr')].map(r => r.innerText).join('\\n')"
    ))
    .await
    .as_str()
    .unwrap_or_default()
    .to_owned()
}

/// Waits until the first list of facts in `selector` says `value` for
/// `label`.
async fn fact_shows(page: &mut Page, selector: &str, label: &str, value: &str) {
    page.wait_for(
        &format!(
            "(() => {{ const list = document.querySelector({selector:?}); if (!list) return false; \
                 const terms = [...list.querySelectorAll('dt')]; \
                 const term = terms.find(t => t.innerText.trim() === {label:?}); \
                 return !!term && term.nextElementSibling.innerText.trim() === {value:?}; }})()"
        ),
        WITHIN,
    )
    .await;
}

/// Fills in the order page's shipment form with `units` of its only line
/// and sends it.
async fn ship_from_the_page(page: &mut Page, units: u32, tracking: &str) {
    shows(page, "!!document.getElementById('ship-form')").await;
    page.eval(&format!(
        "window.confirm = () => true; \
         document.querySelector('#ship-form .ship-quantity').value = '{units}'; \
         document.getElementById('ship-carrier').value = 'DHL'; \
         document.getElementById('ship-tracking').value = {tracking:?}; \
         document.getElementById('ship').click()"
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_ships_delivers_and_receives_a_return_in_a_browser() {
    let (platform, gateway) =
        TestPlatform::start_with_saga(saga_orchestrator::driver::Policy::default()).await;
    platform.create_product("MUG-01", 1250, 10).await;
    let alice = identity::testing::client("alice", "orders");
    let placed: serde_json::Value = alice
        .post(platform.url("/api/orders"))
        .json(
            &json!({"customer_id": "alice", "lines": [{"sku": "MUG-01", "quantity": 3}],
                      "payment_method": "tok_visa", "email": "alice@example.com",
                      "shipping_address": {"name": "Alice Liddell", "line1": "1 Rabbit Hole",
                          "city": "Oxford", "postal_code": "OX1 1AA", "country": "GB"}}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = placed["order_id"].as_str().unwrap().to_owned();
    platform
        .eventually(
            "query($id: ID!) { order(id: $id) { status saga { state } } }",
            json!({"id": id}),
            WITHIN,
            |data| (data["order"]["saga"]["state"] == "CONFIRMED").then_some(()),
        )
        .await;
    // The money's read model follows the payment's own events.
    platform
        .eventually(
            "query($id: ID!) { order(id: $id) { authorizedCents } }",
            json!({"id": id}),
            WITHIN,
            |data| (data["order"]["authorizedCents"] == 3750).then_some(()),
        )
        .await;

    let browser = Browser::start().await;
    let mut page = signed_in(&browser, &platform, "warehouse").await;
    go(&mut page, &format!("#/orders/{id}")).await;
    // Confirmed: the total held, nothing taken; where it goes.
    fact_shows(&mut page, "#order-money .facts", "Authorized", "37.50 EUR").await;
    fact_shows(&mut page, "#order-money .facts", "Captured", "0.00 EUR").await;
    let facts = page
        .eval("document.querySelector('#order-page .facts').innerText")
        .await;
    for expected in ["alice@example.com", "1 Rabbit Hole", "OX1 1AA Oxford", "GB"] {
        assert!(
            facts.as_str().unwrap().contains(expected),
            "{expected} in {facts}"
        );
    }

    // Two of three ship: their value is captured, the order is partly shipped.
    ship_from_the_page(&mut page, 2, "JD0001").await;
    shows(
        &mut page,
        &text_of("notice", "Shipment of MUG-01 × 2 requested"),
    )
    .await;
    shows(&mut page, &text_of("shipments-table", "SHIPPED")).await;
    fact_shows(
        &mut page,
        "#order-page .facts",
        "Status",
        "PARTIALLY_SHIPPED",
    )
    .await;
    fact_shows(&mut page, "#order-money .facts", "Captured", "25.00 EUR").await;
    page.screenshot("order-partly-shipped").await;
    // The form offers only what is left.
    let left = page
        .eval("document.querySelector('#ship-form .ship-quantity').max")
        .await;
    assert_eq!(left, json!("1"));

    // Asking for more than is left changes nothing.
    page.eval(
        "document.querySelector('#ship-form .ship-quantity').value = '2'; \
         document.getElementById('ship-carrier').value = 'DHL'; \
         document.getElementById('ship-tracking').value = 'JD0002'; \
         document.getElementById('ship').click()",
    )
    .await;
    shows(&mut page, &text_of("error", "Ship from 0 to 1 units")).await;

    // The last one ships, and both are delivered from the page.
    ship_from_the_page(&mut page, 1, "JD0002").await;
    shows(
        &mut page,
        "(() => { const rows = [...document.querySelectorAll('#shipments-table tr.shipment')]; \
             return rows.length === 2 && rows.every(r => r.innerText.includes('SHIPPED')) \
                 && !document.getElementById('ship-form'); })()",
    )
    .await;
    fact_shows(&mut page, "#order-page .facts", "Status", "SHIPPED").await;
    fact_shows(&mut page, "#order-money .facts", "Captured", "37.50 EUR").await;
    for _ in 0..2 {
        shows(
            &mut page,
            "!!document.querySelector('#shipments-table .delivered')",
        )
        .await;
        page.eval("document.querySelector('#shipments-table .delivered').click()")
            .await;
        shows(&mut page, &text_of("notice", "delivered")).await;
        page.eval("document.getElementById('notice').textContent = ''")
            .await;
    }
    shows(
        &mut page,
        "(() => [...document.querySelectorAll('#shipments-table tr.shipment')]\
             .filter(r => r.innerText.includes('DELIVERED')).length === 2)()",
    )
    .await;
    fact_shows(&mut page, "#order-page .facts", "Status", "DELIVERED").await;
    let shipments = rows_of(&mut page, "shipments-table").await;
    assert!(
        shipments.contains("JD0001") && shipments.contains("JD0002"),
        "{shipments}"
    );

    // The customer sends one back; the warehouse receives it from the page.
    let requested: serde_json::Value = alice
        .post(platform.url(&format!("/api/orders/{id}/returns")))
        .json(&json!({"lines": [{"sku": "MUG-01", "quantity": 1}], "reason": "chipped"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let return_id = requested["return_id"].as_str().unwrap().to_owned();
    // Once the read side shows it, the operator opens the order again.
    platform
        .eventually(
            "query($id: ID!) { order(id: $id) { returns { id } } }",
            json!({"id": id}),
            WITHIN,
            |data| (data["order"]["returns"][0]["id"] == return_id.as_str()).then_some(()),
        )
        .await;
    go(&mut page, "#/orders").await;
    go(&mut page, &format!("#/orders/{id}")).await;
    shows(&mut page, &text_of("returns-table", &return_id)).await;
    let returns = rows_of(&mut page, "returns-table").await;
    assert!(
        returns.contains("REQUESTED") && returns.contains("chipped"),
        "{returns}"
    );
    page.eval("document.querySelector('#returns-table .receive').click()")
        .await;
    shows(&mut page, &text_of("notice", "12.50 EUR is refunded")).await;
    shows(&mut page, &text_of("returns-table", "RECEIVED")).await;
    fact_shows(&mut page, "#order-money .facts", "Refunded", "12.50 EUR").await;
    page.screenshot("order-returned").await;
    // Refunded and back on hand: 10 − 3 shipped + 1 restocked.
    platform
        .eventually(
            "query($id: ID!) { order(id: $id) { refundedCents } product(sku: \"MUG-01\") { onHand reserved } }",
            json!({"id": id}),
            WITHIN,
            |data| {
                (data["order"]["refundedCents"] == 1250
                    && data["product"]["onHand"] == 8
                    && data["product"]["reserved"] == 0)
                    .then_some(())
            },
        )
        .await;
    let report = orders_cli::audit::audit_settled(
        &platform.pool,
        &gateway.access(),
        Duration::from_secs(15),
    )
    .await
    .unwrap();
    assert!(report.is_clean(), "{report}");
    loaded_only_from(&mut page, &platform).await;
    platform.stop().await;
}
