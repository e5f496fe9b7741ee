// Validates an AsyncAPI document with the AsyncAPI Initiative's own parser
// (@asyncapi/parser, from npm): reads the document's text on standard input,
// prints every diagnostic and exits 1 if any is an error or a warning.
// Prints the channels' addresses and the messages' names when it is valid.
const { Parser } = require('@asyncapi/parser');

const severities = ['error', 'warning', 'information', 'hint'];

async function main() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  const text = Buffer.concat(chunks).toString('utf8');
  const { document, diagnostics } = await new Parser().parse(text);
  let failed = document === undefined;
  for (const diagnostic of diagnostics) {
    const severity = severities[diagnostic.severity] || String(diagnostic.severity);
    console.error(`${severity}: ${diagnostic.code}: ${diagnostic.message} at ${diagnostic.path.join('/')}`);
    if (diagnostic.severity <= 1) failed = true;
  }
  if (failed) process.exit(1);
  const summary = {
    version: document.version(),
    channels: document.channels().all().map((channel) => ({
      address: channel.address(),
      messages: channel.messages().all().map((message) => message.name()),
    })),
  };
  console.log(JSON.stringify(summary));
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
