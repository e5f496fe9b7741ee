//! Introspection as every client tool asks for it. graphql-js's standard
//! introspection query asks, with its `experimentalDirectiveDeprecation`
//! option, whether each directive is deprecated (`directives(includeDeprecated:
//! true) { isDeprecated deprecationReason }`), which async-graphql's
//! `__Directive` cannot answer: the whole query would be refused. No directive
//! of this schema is deprecated, so [`DirectiveDeprecation`] takes those
//! selections out of the document before it is validated and puts their
//! answers (`false`, `null`) into the response where they were asked for;
//! `includeDeprecated` lists every directive either way.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextExecute, NextPrepareRequest,
};
use async_graphql::parser::types::{
    DocumentOperations, ExecutableDocument, Field, FragmentDefinition, Selection, SelectionSet,
};
use async_graphql::parser::{Pos, Positioned};
use async_graphql::{Name, Request, Response, ServerResult, Value};

/// The fields of `__Directive` this extension answers, and their answers.
const ANSWERED: &[&str] = &["isDeprecated", "deprecationReason"];

fn answer(field: &str) -> Value {
    match field {
        "isDeprecated" => Value::Boolean(false),
        _ => Value::Null,
    }
}

/// The extension; see the module's documentation.
pub(super) struct DirectiveDeprecation;

impl ExtensionFactory for DirectiveDeprecation {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(Answers::default())
    }
}

/// One request's rewrite: the document as executed and, for each
/// `directives` field (by its position), the response keys taken out of it
/// with the field each asked for.
#[derive(Default)]
struct Answers(Mutex<Option<Rewritten>>);

struct Rewritten {
    document: ExecutableDocument,
    taken: HashMap<Pos, Taken>,
}

/// Response keys taken out of a selection, with the field each asked for.
type Taken = Vec<(Name, &'static str)>;

/// A `__Directive` fragment's own taken keys, and the fragments it spreads.
type Own = HashMap<Name, (Taken, Vec<Name>)>;

#[async_graphql::async_trait::async_trait]
impl Extension for Answers {
    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        mut request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        if request.query.contains("__schema") {
            let mut document = request.parsed_query()?.clone();
            let taken = rewrite(&mut document);
            if !taken.is_empty() {
                request.set_parsed_query(document.clone());
                *self
                    .0
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some(Rewritten { document, taken });
            }
        }
        next.run(ctx, request).await
    }

    async fn execute(
        &self,
        ctx: &ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: NextExecute<'_>,
    ) -> Response {
        let mut response = next.run(ctx, operation_name).await;
        let rewritten = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(rewritten) = rewritten
            && let Value::Object(data) = &mut response.data
        {
            let operation = match &rewritten.document.operations {
                DocumentOperations::Single(operation) => Some(operation),
                DocumentOperations::Multiple(operations) => {
                    operation_name.and_then(|name| operations.get(name))
                }
            };
            if let Some(operation) = operation {
                let mut walk = Patch {
                    document: &rewritten.document,
                    taken: &rewritten.taken,
                    spreading: HashSet::new(),
                };
                walk.root(&operation.node.selection_set.node, data);
            }
        }
        response
    }
}

/// Takes the answered fields out of every `__Directive` selection under
/// `__schema { directives }`, and `includeDeprecated` off `directives`.
/// Returns what it took, by the position of each `directives` field.
fn rewrite(document: &mut ExecutableDocument) -> HashMap<Pos, Taken> {
    // Fragments on `__Directive` first: a `directives` field that spreads
    // one is answered what the fragment asked for.
    let mut own: Own = HashMap::new();
    for (name, fragment) in &mut document.fragments {
        if fragment.node.type_condition.node.on.node.as_str() == "__Directive" {
            let mut taken = Vec::new();
            let mut spreads = Vec::new();
            strip(
                &mut fragment.node.selection_set.node,
                &mut taken,
                &mut spreads,
            );
            own.insert(name.clone(), (taken, spreads));
        }
    }
    let directive_fragments: HashMap<Name, Taken> = own
        .keys()
        .map(|name| (name.clone(), spread_out(name, &own)))
        .collect();

    let mut taken = HashMap::new();
    let mut visit = |set: &mut SelectionSet, on_schema: bool| {
        rewrite_set(set, on_schema, &directive_fragments, &mut taken);
    };
    match &mut document.operations {
        DocumentOperations::Single(operation) => {
            visit(&mut operation.node.selection_set.node, false)
        }
        DocumentOperations::Multiple(operations) => {
            for operation in operations.values_mut() {
                visit(&mut operation.node.selection_set.node, false);
            }
        }
    }
    for fragment in document.fragments.values_mut() {
        let FragmentDefinition {
            type_condition,
            selection_set,
            ..
        } = &mut fragment.node;
        match type_condition.node.on.node.as_str() {
            "__Directive" => {}
            "__Schema" => visit(&mut selection_set.node, true),
            _ => visit(&mut selection_set.node, false),
        }
    }
    taken
}

/// What the `__Directive` fragment `name` asked for, its spreads included.
fn spread_out(name: &Name, own: &Own) -> Taken {
    let mut seen = HashSet::new();
    let mut pending = vec![name.clone()];
    let mut taken = Vec::new();
    while let Some(next) = pending.pop() {
        if !seen.insert(next.clone()) {
            continue;
        }
        if let Some((fields, spreads)) = own.get(&next) {
            taken.extend(fields.iter().cloned());
            pending.extend(spreads.iter().cloned());
        }
    }
    taken
}

/// Finds `__schema` (at the root) and its `directives` (`on_schema`), and
/// rewrites each `directives` field found.
fn rewrite_set(
    set: &mut SelectionSet,
    on_schema: bool,
    directive_fragments: &HashMap<Name, Taken>,
    taken: &mut HashMap<Pos, Taken>,
) {
    for item in &mut set.items {
        match &mut item.node {
            Selection::Field(field) => {
                let name = field.node.name.node.as_str();
                if !on_schema && name == "__schema" {
                    rewrite_set(
                        &mut field.node.selection_set.node,
                        true,
                        directive_fragments,
                        taken,
                    );
                } else if on_schema && name == "directives" {
                    let mut answered = Vec::new();
                    let mut spreads = Vec::new();
                    field
                        .node
                        .arguments
                        .retain(|(argument, _)| argument.node.as_str() != "includeDeprecated");
                    strip(
                        &mut field.node.selection_set.node,
                        &mut answered,
                        &mut spreads,
                    );
                    for spread in spreads {
                        if let Some(more) = directive_fragments.get(&spread) {
                            answered.extend(more.iter().cloned());
                        }
                    }
                    if !answered.is_empty() {
                        taken.insert(field.pos, answered);
                    }
                }
            }
            Selection::InlineFragment(fragment) => {
                rewrite_set(
                    &mut fragment.node.selection_set.node,
                    on_schema,
                    directive_fragments,
                    taken,
                );
            }
            Selection::FragmentSpread(_) => {}
        }
    }
}

/// Takes the answered fields out of a `__Directive` selection set (and its
/// inline fragments), noting their response keys and the names of the
/// fragments it spreads.
fn strip(set: &mut SelectionSet, taken: &mut Taken, spreads: &mut Vec<Name>) {
    set.items.retain(|item| match &item.node {
        Selection::Field(field) => {
            let name = field.node.name.node.as_str();
            match ANSWERED.iter().find(|answered| **answered == name) {
                Some(answered) => {
                    taken.push((field.node.response_key().node.clone(), answered));
                    false
                }
                None => true,
            }
        }
        _ => true,
    });
    for item in &mut set.items {
        match &mut item.node {
            Selection::InlineFragment(fragment) => {
                strip(&mut fragment.node.selection_set.node, taken, spreads);
            }
            Selection::FragmentSpread(spread) => {
                spreads.push(spread.node.fragment_name.node.clone())
            }
            Selection::Field(_) => {}
        }
    }
}

/// Walks the executed document beside its response, answering what was
/// taken out where it was asked for.
struct Patch<'a> {
    document: &'a ExecutableDocument,
    taken: &'a HashMap<Pos, Taken>,
    spreading: HashSet<&'a str>,
}

type Object = async_graphql::indexmap::IndexMap<Name, Value>;

impl<'a> Patch<'a> {
    fn root(&mut self, set: &'a SelectionSet, data: &mut Object) {
        self.each(set, data, &|patch, field, data| {
            let field = &field.node;
            if field.name.node.as_str() == "__schema"
                && let Some(Value::Object(schema)) =
                    data.get_mut(field.response_key().node.as_str())
            {
                patch.schema(&field.selection_set.node, schema);
            }
        });
    }

    fn schema(&mut self, set: &'a SelectionSet, schema: &mut Object) {
        self.each(set, schema, &|patch, field, schema| {
            let Some(answers) = patch.taken.get(&field.pos) else {
                return;
            };
            let key = field.node.response_key().node.as_str();
            if let Some(Value::List(directives)) = schema.get_mut(key) {
                for directive in directives {
                    if let Value::Object(directive) = directive {
                        for (key, asked) in answers {
                            directive
                                .entry(key.clone())
                                .or_insert_with(|| answer(asked));
                        }
                    }
                }
            }
        });
    }

    /// Calls `visit` with every field of `set`, through inline fragments and
    /// spreads (each fragment once on a path).
    fn each(
        &mut self,
        set: &'a SelectionSet,
        object: &mut Object,
        visit: &dyn Fn(&mut Self, &'a Positioned<Field>, &mut Object),
    ) {
        for item in &set.items {
            match &item.node {
                Selection::Field(field) => visit(self, field, object),
                Selection::InlineFragment(fragment) => {
                    self.each(&fragment.node.selection_set.node, object, visit);
                }
                Selection::FragmentSpread(spread) => {
                    let name = spread.node.fragment_name.node.as_str();
                    if let Some(fragment) = self.document.fragments.get(name)
                        && self.spreading.insert(name)
                    {
                        self.each(&fragment.node.selection_set.node, object, visit);
                        self.spreading.remove(name);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    fn answer(query: &str) -> serde_json::Value {
        let schema = super::super::builder()
            .extension(super::super::limits::GraphqlLimits::default())
            .extension(super::DirectiveDeprecation)
            .finish();
        let response = futures::executor::block_on(schema.execute(query));
        assert!(response.errors.is_empty(), "{:?}", response.errors);
        response.data.into_json().expect("JSON")
    }

    #[test]
    fn directives_are_answered_as_not_deprecated_where_asked() {
        let data = answer(
            "{ s: __schema { d: directives(includeDeprecated: true) { name isDeprecated why: deprecationReason ...F } \
               plain: directives { name } } } \
             fragment F on __Directive { ... on __Directive { again: isDeprecated } }",
        );
        let listed = data["s"]["d"].as_array().expect("directives");
        assert!(listed.len() >= 4, "{data}");
        for directive in listed {
            let name = &directive["name"];
            assert_eq!(directive["isDeprecated"], json!(false), "{name}");
            assert_eq!(directive["why"], json!(null), "{name}");
            assert_eq!(directive["again"], json!(false), "{name}");
        }
        // Only where they were asked for.
        let plain = data["s"]["plain"].as_array().expect("directives");
        assert!(
            plain
                .iter()
                .all(|d| d.as_object().expect("object").len() == 1),
            "{data}"
        );
    }

    #[test]
    fn through_fragments_on_the_schema_and_the_query() {
        let data = answer(
            "query Q { ...Root } fragment Root on Query { __schema { ...S } } \
             fragment S on __Schema { directives { name isDeprecated } }",
        );
        let listed = data["__schema"]["directives"]
            .as_array()
            .expect("directives");
        assert!(
            listed.iter().all(|d| d["isDeprecated"] == json!(false)),
            "{data}"
        );
    }

    #[test]
    fn documents_without_those_fields_are_left_alone() {
        let data = answer("{ __schema { directives { name isRepeatable } } }");
        let listed = data["__schema"]["directives"]
            .as_array()
            .expect("directives");
        assert!(
            listed.iter().all(|d| d.get("isDeprecated").is_none()),
            "{data}"
        );
    }
}
