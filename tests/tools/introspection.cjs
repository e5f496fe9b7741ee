// GraphQL's reference implementation (graphql-js, from npm) as a client tool
// meets the platform:
//   node introspection.cjs query    prints {"query": ...}: the standard
//                                   introspection query, every option on;
//   node introspection.cjs schema   reads {"answer": <the server's answer>,
//                                   "sdl": <schemas/schema.graphql>} and
//                                   builds a client schema from the answer
//                                   (as GraphiQL, Apollo and code generators
//                                   do), then compares it with the SDL:
//                                   prints {"types": [...], "differences": [...]}.
const graphql = require('graphql');

const OPTIONS = {
  descriptions: true,
  specifiedByUrl: true,
  directiveIsRepeatable: true,
  schemaDescription: true,
  inputValueDeprecation: true,
  experimentalDirectiveDeprecation: true,
  oneOf: true,
};

async function stdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return JSON.parse(Buffer.concat(chunks).toString('utf8'));
}

// Every named type's kind and each field's (or input field's, or enum
// value's) signature, to compare two schemas by. The introspection types and
// the specified scalars are left out: a server lists them whether or not
// its SDL uses them.
function signatures(schema) {
  const out = {};
  for (const [name, type] of Object.entries(schema.getTypeMap())) {
    if (graphql.isIntrospectionType(type) || graphql.isSpecifiedScalarType(type)) continue;
    const entry = { kind: type.constructor.name, members: {} };
    if (typeof type.getFields === 'function') {
      for (const [field, definition] of Object.entries(type.getFields())) {
        const args = (definition.args || [])
          .map((arg) => `${arg.name}: ${arg.type}`)
          .join(', ');
        entry.members[field] = `${args ? `(${args})` : ''}: ${definition.type}`;
      }
    }
    if (typeof type.getValues === 'function') {
      for (const value of type.getValues()) entry.members[value.name] = 'value';
    }
    out[name] = entry;
  }
  return out;
}

async function main() {
  const mode = process.argv[2];
  if (mode === 'query') {
    console.log(JSON.stringify({
      version: graphql.version,
      query: graphql.getIntrospectionQuery(OPTIONS),
    }));
    return;
  }
  if (mode === 'schema') {
    const { answer, sdl } = await stdin();
    if (answer.errors) throw new Error(`the server answered errors: ${JSON.stringify(answer.errors)}`);
    const client = graphql.buildClientSchema(answer.data);
    const errors = graphql.validateSchema(client);
    if (errors.length) throw new Error(`the client schema is invalid: ${errors.join('; ')}`);
    const served = signatures(client);
    const written = signatures(graphql.buildSchema(sdl));
    const differences = [];
    for (const name of new Set([...Object.keys(served), ...Object.keys(written)])) {
      const a = JSON.stringify(served[name]);
      const b = JSON.stringify(written[name]);
      if (a !== b) differences.push({ type: name, served: served[name], sdl: written[name] });
    }
    console.log(JSON.stringify({ types: Object.keys(served).sort(), differences }));
    return;
  }
  throw new Error(`usage: introspection.cjs query|schema (not ${mode})`);
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
