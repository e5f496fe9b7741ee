//! Bounds on what one GraphQL request may ask, beyond complexity: operations
//! per batch, fields and aliases per document, root fields per operation
//! (each root list runs its own SQL statement; nested lists are batched by
//! the loaders, so root fields bound the statements a query runs at once),
//! and the document's shape with its fragments spread out:
//!
//! - data fields nest at most [`MAX_DEPTH`](super::MAX_DEPTH) deep;
//! - introspection (`__schema`, `__type`) may nest deeper, as the standard
//!   introspection query of every client tool does (a type reference's
//!   `ofType` chain), but its lists (`types`, `fields`, `args`, ...) nest at
//!   most [`MAX_INTROSPECTION_LISTS`](super::MAX_INTROSPECTION_LISTS) deep:
//!   what an answer holds grows with the lists it nests, and nesting
//!   `fields { type { fields ... } }` would revisit the schema again and again;
//! - selections and fragments nest at most [`MAX_NESTING`](super::MAX_NESTING)
//!   deep, fragments may not spread themselves, and a document spread out
//!   holds at most [`MAX_SELECTIONS`](super::MAX_SELECTIONS) selections.
//!
//! The shape is measured once per fragment, so a document whose fragments
//! spread one another many times over costs its size to measure, and is
//! refused before anything walks it spread out (async-graphql's own checks
//! and validation do). A WebSocket carries subscriptions only.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextParseQuery, NextPrepareRequest,
};
use async_graphql::parser::types::{ExecutableDocument, OperationType, Selection, SelectionSet};
use async_graphql::{Request, ServerError, ServerResult, Variables};

use super::http::OverWebSocket;
use super::{MAX_DEPTH, MAX_INTROSPECTION_LISTS, MAX_NESTING, MAX_SELECTIONS};

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
    /// Queries of one caller waiting for `afterPosition` at once.
    pub after_position_waiters_per_caller: usize,
    /// WebSocket connections of one address that have not signed in yet.
    pub ws_unsigned_per_address: usize,
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
            after_position_waiters_per_caller: 10,
            ws_unsigned_per_address: 4,
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
    // The document is parsed and measured here, before async-graphql's own
    // checks walk it with its fragments spread out: those walks take time
    // that grows with every spread of a spread.
    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        mut request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        // An operation started on an open WebSocket (a subscription) costs
        // its caller as a query over HTTP does.
        if ctx.data_opt::<OverWebSocket>().is_some()
            && let Some(charged) = ctx.data_opt::<http_edge::auth::Charged>()
            && let Err(http_edge::problem::ApiError::TooManyRequests { retry_after }) =
                charged.more(1)
        {
            return Err(coded(
                format!("too many requests from this caller; retry after {retry_after} s"),
                "RATE_LIMITED",
            ));
        }
        check(request.parsed_query()?, &self.0)?;
        next.run(ctx, request).await
    }

    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let document = next.run(ctx, query, variables).await?;
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

/// Refuses a document over `limits` or of a shape the module's rules refuse.
pub fn check(document: &ExecutableDocument, limits: &GraphqlLimits) -> ServerResult<()> {
    let mut counts = Counts::default();
    let mut shapes = Shapes::new(document);
    for (_, operation) in document.operations.iter() {
        shapes
            .measure(&operation.node.selection_set.node, false, 0)?
            .check()?;
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

/// Introspection fields that answer a list.
const INTROSPECTION_LISTS: &[&str] = &[
    "types",
    "directives",
    "fields",
    "args",
    "inputFields",
    "interfaces",
    "possibleTypes",
    "enumValues",
];

/// How a selection set reaches down, with its fragments spread out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Shape {
    /// Selection sets nested (fields' and fragments'), as async-graphql's
    /// recursion limit counts them.
    nesting: usize,
    /// Fields nested outside introspection.
    depth: usize,
    /// Introspection lists nested.
    lists: usize,
    /// Selections in all (fields, fragments and spreads), spread out.
    selections: usize,
}

impl Shape {
    /// This shape and `other`, side by side.
    fn beside(self, other: Self) -> Self {
        Self {
            nesting: self.nesting.max(other.nesting),
            depth: self.depth.max(other.depth),
            lists: self.lists.max(other.lists),
            selections: self.selections.saturating_add(other.selections),
        }
    }

    fn check(self) -> ServerResult<()> {
        if self.nesting > MAX_NESTING {
            return Err(too_deep(self.nesting));
        }
        if self.selections > MAX_SELECTIONS {
            return Err(refused(format!(
                "the document holds {} selections, its fragments spread out; at most {MAX_SELECTIONS} are allowed",
                self.selections
            )));
        }
        if self.depth > MAX_DEPTH {
            return Err(refused(format!(
                "the query is nested {} fields deep; at most {MAX_DEPTH} are allowed",
                self.depth
            )));
        }
        if self.lists > MAX_INTROSPECTION_LISTS {
            return Err(refused(format!(
                "the introspection nests {} lists (types, fields, args, ...) deep; at most {MAX_INTROSPECTION_LISTS} are allowed",
                self.lists
            )));
        }
        Ok(())
    }
}

fn too_deep(nesting: usize) -> ServerError {
    refused(format!(
        "the document nests {nesting} selections deep, its fragments spread out; at most {MAX_NESTING} are allowed"
    ))
}

/// Measures selection sets, each fragment once (in and outside
/// introspection).
struct Shapes<'a> {
    document: &'a ExecutableDocument,
    measured: HashMap<(&'a str, bool), Shape>,
    spreading: HashSet<&'a str>,
}

impl<'a> Shapes<'a> {
    fn new(document: &'a ExecutableDocument) -> Self {
        Self {
            document,
            measured: HashMap::new(),
            spreading: HashSet::new(),
        }
    }

    /// The shape of `set`, `inside` introspection or not, `level` selection
    /// sets down (which bounds this walk's own recursion).
    fn measure(
        &mut self,
        set: &'a SelectionSet,
        inside: bool,
        level: usize,
    ) -> ServerResult<Shape> {
        if level > MAX_NESTING {
            return Err(too_deep(level));
        }
        let mut shape = Shape::default();
        for item in &set.items {
            let child = match &item.node {
                Selection::Field(field) => {
                    let name = field.node.name.node.as_str();
                    let enters = !inside && matches!(name, "__schema" | "__type");
                    let within = inside || enters;
                    let below = &field.node.selection_set.node;
                    let inner = if below.items.is_empty() {
                        Shape::default()
                    } else {
                        let inner = self.measure(below, within, level + 1)?;
                        Shape {
                            nesting: inner.nesting + 1,
                            ..inner
                        }
                    };
                    Shape {
                        nesting: inner.nesting,
                        depth: if within {
                            usize::from(enters)
                        } else {
                            inner.depth + 1
                        },
                        lists: inner.lists
                            + usize::from(inside && INTROSPECTION_LISTS.contains(&name)),
                        selections: inner.selections.saturating_add(1),
                    }
                }
                Selection::InlineFragment(fragment) => {
                    let inner =
                        self.measure(&fragment.node.selection_set.node, inside, level + 1)?;
                    Shape {
                        nesting: inner.nesting + 1,
                        selections: inner.selections.saturating_add(1),
                        ..inner
                    }
                }
                Selection::FragmentSpread(spread) => {
                    let inner =
                        self.spread(spread.node.fragment_name.node.as_str(), inside, level)?;
                    Shape {
                        nesting: inner.nesting + 1,
                        selections: inner.selections.saturating_add(1),
                        ..inner
                    }
                }
            };
            shape = shape.beside(child);
        }
        Ok(shape)
    }

    /// The shape of the fragment `name`, measured once. Unknown fragments
    /// are left to validation; one that spreads itself is refused here.
    fn spread(&mut self, name: &'a str, inside: bool, level: usize) -> ServerResult<Shape> {
        if let Some(shape) = self.measured.get(&(name, inside)) {
            return Ok(*shape);
        }
        let Some((key, fragment)) = self.document.fragments.get_key_value(name) else {
            return Ok(Shape::default());
        };
        let name = key.as_str();
        if !self.spreading.insert(name) {
            return Err(refused(format!("the fragment {name} spreads itself")));
        }
        let shape = self.measure(&fragment.node.selection_set.node, inside, level + 1);
        self.spreading.remove(name);
        let shape = shape?;
        self.measured.insert((name, inside), shape);
        Ok(shape)
    }
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

    /// `query` run by the served schema (without a database: introspection
    /// and refusals need none) on a thread of its own, or `None` when it
    /// took more than five seconds.
    fn answered(query: &str) -> Option<async_graphql::Response> {
        let schema = super::super::builder()
            .extension(GraphqlLimits::default())
            .finish();
        let request = async_graphql::Request::new(query);
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = sender.send(futures::executor::block_on(schema.execute(request)));
        });
        receiver.recv_timeout(Duration::from_secs(5)).ok()
    }

    fn refusal(query: &str) -> String {
        let response = answered(query).expect("answered within five seconds");
        assert!(response.data == async_graphql::Value::Null, "{response:?}");
        response.errors[0].message.clone()
    }

    /// A type reference `depth` levels of `ofType` deep, as client tools ask
    /// for the wrappers of a field's type (`[Order!]!` is three).
    fn type_reference(depth: usize) -> String {
        let mut reference = "kind name".to_owned();
        for _ in 0..depth {
            reference = format!("kind name ofType {{ {reference} }}");
        }
        reference
    }

    #[test]
    fn introspection_as_client_tools_nest_it_is_answered() {
        let reference = type_reference(9);
        let query = format!(
            "query IntrospectionQuery {{ __schema {{ queryType {{ name }} types {{ ...FullType }} \
               directives {{ name locations args {{ ...InputValue }} }} }} }}
             fragment FullType on __Type {{ kind name description specifiedByURL isOneOf
               fields(includeDeprecated: true) {{ name args(includeDeprecated: true) {{ ...InputValue }} \
                 type {{ ...TypeRef }} isDeprecated deprecationReason }}
               inputFields(includeDeprecated: true) {{ ...InputValue }} interfaces {{ ...TypeRef }}
               enumValues(includeDeprecated: true) {{ name }} possibleTypes {{ ...TypeRef }} }}
             fragment InputValue on __InputValue {{ name type {{ ...TypeRef }} defaultValue }}
             fragment TypeRef on __Type {{ {reference} }}"
        );
        let response = answered(&query).expect("answered within five seconds");
        assert!(response.errors.is_empty(), "{:?}", response.errors);
        let data = response.data.into_json().expect("JSON");
        let types = data["__schema"]["types"].as_array().expect("types");
        assert!(types.iter().any(|t| t["name"] == "Order"), "{data}");
    }

    #[test]
    fn introspection_that_revisits_the_schema_through_nested_lists_is_refused() {
        // Three lists, as the standard query's `types { fields { args } }`.
        checked("{ __schema { types { fields { type { fields { name } } } } } }").expect("passes");
        let refused = refusal(
            "{ __schema { types { fields { type { fields { type { fields { name } } } } } } } }",
        );
        assert!(refused.contains("4 lists"), "{refused}");
        let refused = refusal(
            "{ __type(name: \"Query\") { fields { type { ofType { fields { type { ofType { \
               fields { type { ofType { fields { name } } } } } } } } } } } }",
        );
        assert!(refused.contains("4 lists"), "{refused}");
        let refused = refusal(
            "{ ...A } fragment A on Query { __schema { types { ...B } } } \
             fragment B on __Type { fields { type { ...C } } } \
             fragment C on __Type { interfaces { fields { name } } }",
        );
        assert!(refused.contains("4 lists"), "{refused}");
    }

    #[test]
    fn data_fields_stay_bounded_in_depth_beside_introspection() {
        // Field names do not matter to the depth, which is measured before
        // the fields are checked against the schema.
        let deep = format!(
            "{}sku{}",
            "products { edges { node { ".repeat(4),
            " } } }".repeat(4)
        );
        let refused = refusal(&format!("{{ __schema {{ types {{ name }} }} {deep} }}"));
        assert!(refused.contains("13 fields deep"), "{refused}");
        // Inside introspection, a data field is still introspection's.
        checked("{ __type(name: \"Order\") { fields { type { ofType { ofType { name } } } } } }")
            .expect("passes");
    }

    #[test]
    fn fragments_spread_many_times_over_are_refused_at_once() {
        // Twenty levels of four spreads each: 4^20 selections spread out,
        // within async-graphql's recursion limit.
        let mut query = "{ ...F0 }".to_owned();
        for level in 0..20 {
            let next = format!("...F{} ", level + 1);
            query += &format!(" fragment F{level} on Query {{ {} }}", next.repeat(4));
        }
        query += " fragment F20 on Query { __typename }";
        let refused = refusal(&query);
        assert!(refused.contains("selections"), "{refused}");
    }

    #[test]
    fn a_fragment_that_spreads_itself_is_refused_at_once() {
        let refused = refusal("{ ...F } fragment F on Query { __typename ...F ...F ...F }");
        assert!(refused.contains("spreads itself"), "{refused}");
        let refused =
            refusal("{ ...A } fragment A on Query { ...B ...B } fragment B on Query { ...A ...A }");
        assert!(refused.contains("spreads itself"), "{refused}");
    }

    #[test]
    fn a_chain_of_fragments_is_bounded_without_exhausting_the_stack() {
        let mut query = "{ ...F0 }".to_owned();
        for level in 0..2_000 {
            query += &format!(" fragment F{level} on Query {{ ...F{} }}", level + 1);
        }
        query += " fragment F2000 on Query { __typename }";
        let outcome = std::thread::Builder::new()
            .stack_size(2 * 1024 * 1024)
            .spawn(move || checked(&query))
            .expect("a thread")
            .join()
            .expect("no stack overflow");
        assert!(outcome.expect_err("refused").contains("deep"));
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
        // A cycle does not hang the count: it is refused.
        let refused = checked(
            "{ ...F } fragment F on Query { __typename ...G } fragment G on Query { ...F }",
        )
        .expect_err("refused");
        assert!(refused.contains("spreads itself"), "{refused}");
    }

    #[test]
    fn too_many_fields_are_refused() {
        let fields = "sku ".repeat(501);
        let refused =
            checked(&format!("{{ product(sku: \"A\") {{ {fields} }} }}")).expect_err("refused");
        assert!(refused.contains("502 fields"), "{refused}");
    }
}
