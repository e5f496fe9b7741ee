//! Bounds on what one GraphQL request may ask, beyond depth and complexity:
//! operations per batch, fields and aliases per document, and root fields
//! per operation (each root list runs its own SQL statement; nested lists
//! are batched by the loaders, so root fields bound the statements a query
//! runs at once). A WebSocket carries subscriptions only.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextParseQuery};
use async_graphql::parser::types::{ExecutableDocument, OperationType, Selection, SelectionSet};
use async_graphql::{ServerError, ServerResult, Variables};

use super::http::OverWebSocket;

/// The GraphQL endpoint's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GraphqlLimits {
    /// Largest request body, in bytes (413 beyond it).
    pub body_bytes: usize,
    /// Operations in one batched request.
    pub batch: usize,
    /// Field selections in one document, counted as written.
    pub fields: usize,
    /// Aliased fields in one document.
    pub aliases: usize,
    /// Fields at the root of one operation.
    pub root_fields: usize,
    /// Open subscription connections in all.
    pub ws_connections: usize,
    /// Open subscription connections of one caller.
    pub ws_connections_per_caller: usize,
    /// Subscriptions running on one connection.
    pub ws_subscriptions: usize,
    /// A connection that sends nothing (not even a ping) this long is closed.
    pub ws_idle_timeout: Duration,
    /// A connection not signed in (`connection_init` with a valid token)
    /// this long after the upgrade is closed, pings or not.
    pub ws_init_timeout: Duration,
    /// The longest a query with `afterPosition` waits for the read models.
    pub after_position_wait: Duration,
    /// Queries waiting for `afterPosition` at once; more are refused.
    pub after_position_waiters: usize,
}

impl Default for GraphqlLimits {
    fn default() -> Self {
        Self {
            body_bytes: 64 * 1024,
            batch: 10,
            fields: 500,
            aliases: 30,
            root_fields: 10,
            ws_connections: 1_000,
            ws_connections_per_caller: 5,
            ws_subscriptions: 20,
            ws_idle_timeout: Duration::from_secs(120),
            ws_init_timeout: Duration::from_secs(10),
            after_position_wait: Duration::from_secs(5),
            after_position_waiters: 1_000,
        }
    }
}

impl ExtensionFactory for GraphqlLimits {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(DocumentLimits(*self))
    }
}

struct DocumentLimits(GraphqlLimits);

#[async_graphql::async_trait::async_trait]
impl Extension for DocumentLimits {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let document = next.run(ctx, query, variables).await?;
        check(&document, &self.0)?;
        // Queries belong on `POST /graphql`, where the body limit and the
        // rate limit count them: a WebSocket carries subscriptions only.
        let only_subscriptions = document
            .operations
            .iter()
            .all(|(_, operation)| operation.node.ty == OperationType::Subscription);
        if ctx.data_opt::<OverWebSocket>().is_some() && !only_subscriptions {
            return Err(coded(
                "a WebSocket carries subscriptions only; send queries to POST /graphql",
                "SUBSCRIPTIONS_ONLY",
            ));
        }
        Ok(document)
    }
}

/// Refuses a document over `limits`.
pub fn check(document: &ExecutableDocument, limits: &GraphqlLimits) -> ServerResult<()> {
    let mut counts = Counts::default();
    for (_, operation) in document.operations.iter() {
        counts.walk(&operation.node.selection_set.node);
        let mut seen = HashSet::new();
        let roots = root_fields(document, &operation.node.selection_set.node, &mut seen);
        if roots > limits.root_fields {
            return Err(refused(format!(
                "an operation selects {roots} root fields; at most {} are allowed",
                limits.root_fields
            )));
        }
    }
    for fragment in document.fragments.values() {
        counts.walk(&fragment.node.selection_set.node);
    }
    if counts.fields > limits.fields {
        return Err(refused(format!(
            "the document selects {} fields; at most {} are allowed",
            counts.fields, limits.fields
        )));
    }
    if counts.aliases > limits.aliases {
        return Err(refused(format!(
            "the document has {} aliases; at most {} are allowed",
            counts.aliases, limits.aliases
        )));
    }
    Ok(())
}

fn refused(message: String) -> ServerError {
    coded(message, "QUERY_TOO_LARGE")
}

fn coded(message: impl Into<String>, code: &str) -> ServerError {
    let mut error = ServerError::new(message, None);
    let mut extensions = async_graphql::ErrorExtensionValues::default();
    extensions.set("code", code);
    error.extensions = Some(extensions);
    error
}

#[derive(Default)]
struct Counts {
    fields: usize,
    aliases: usize,
}

impl Counts {
    fn walk(&mut self, set: &SelectionSet) {
        for item in &set.items {
            match &item.node {
                Selection::Field(field) => {
                    self.fields += 1;
                    self.aliases += usize::from(field.node.alias.is_some());
                    self.walk(&field.node.selection_set.node);
                }
                Selection::InlineFragment(fragment) => {
                    self.walk(&fragment.node.selection_set.node);
                }
                Selection::FragmentSpread(_) => {}
            }
        }
    }
}

/// Distinct response keys at the root, through fragments (each fragment
/// followed once, so a cycle cannot loop; validation refuses cycles later).
fn root_fields<'a>(
    document: &'a ExecutableDocument,
    set: &'a SelectionSet,
    seen: &mut HashSet<&'a str>,
) -> usize {
    fn keys<'a>(
        document: &'a ExecutableDocument,
        set: &'a SelectionSet,
        seen: &mut HashSet<&'a str>,
        found: &mut HashSet<&'a str>,
    ) {
        for item in &set.items {
            match &item.node {
                Selection::Field(field) => {
                    found.insert(field.node.response_key().node.as_str());
                }
                Selection::InlineFragment(fragment) => {
                    keys(document, &fragment.node.selection_set.node, seen, found);
                }
                Selection::FragmentSpread(spread) => {
                    let name = spread.node.fragment_name.node.as_str();
                    if seen.insert(name)
                        && let Some(fragment) =
                            document.fragments.get(&spread.node.fragment_name.node)
                    {
                        keys(document, &fragment.node.selection_set.node, seen, found);
                    }
                }
            }
        }
    }
    let mut found = HashSet::new();
    keys(document, set, seen, &mut found);
    found.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked(query: &str) -> Result<(), String> {
        let document = async_graphql::parser::parse_query(query).map_err(|e| e.to_string())?;
        check(&document, &GraphqlLimits::default()).map_err(|e| e.message)
    }

    #[test]
    fn a_body_of_nothing_but_nesting_is_refused_without_overflowing_the_stack() {
        // The deepest document a 64 KiB body holds, on a stack no larger than
        // a runtime worker's: refused, not a crash of the process.
        let depth = GraphqlLimits::default().body_bytes / 2;
        for query in [
            format!("{}{}", "{a".repeat(depth), "}".repeat(depth)),
            format!("{{a(x:{}){}", "[".repeat(depth * 2 - 8), "}"),
        ] {
            let outcome = std::thread::Builder::new()
                .stack_size(2 * 1024 * 1024)
                .spawn(move || checked(&query))
                .expect("a thread")
                .join()
                .expect("no stack overflow");
            assert!(outcome.is_err(), "accepted");
        }
    }

    #[test]
    fn ordinary_queries_pass() {
        checked("{ products { edges { node { sku name available } } } }").expect("passes");
        checked("query A { a: product(sku: \"A\") { sku } b: product(sku: \"B\") { sku } }")
            .expect("passes");
    }

    #[test]
    fn too_many_aliases_are_refused() {
        let aliased: String = (0..31).map(|i| format!("a{i}: __typename ")).collect();
        let refused = checked(&format!("{{ {aliased} }}")).expect_err("refused");
        assert!(
            refused.contains("31 root fields") || refused.contains("aliases"),
            "{refused}"
        );
        let nested: String = (0..31).map(|i| format!("s{i}: sku ")).collect();
        let refused =
            checked(&format!("{{ product(sku: \"A\") {{ {nested} }} }}")).expect_err("refused");
        assert!(refused.contains("31 aliases"), "{refused}");
    }

    #[test]
    fn root_fields_are_counted_through_fragments() {
        let fields: String = (0..11).map(|i| format!("p{i}: __typename ")).collect();
        let refused = checked(&format!("{{ ...F }} fragment F on Query {{ {fields} }}"))
            .expect_err("refused");
        assert!(refused.contains("11 root fields"), "{refused}");
        // A cycle does not hang the count.
        checked("{ ...F } fragment F on Query { __typename ...G } fragment G on Query { ...F }")
            .expect("counted; validation refuses the cycle later");
    }

    #[test]
    fn too_many_fields_are_refused() {
        let fields = "sku ".repeat(501);
        let refused =
            checked(&format!("{{ product(sku: \"A\") {{ {fields} }} }}")).expect_err("refused");
        assert!(refused.contains("502 fields"), "{refused}");
    }
}
