// Validates an AsyncAPI document with the official parser (@asyncapi/parser
// with the Avro schema parser registered, so Avro payloads are checked too).
// Usage: NODE_PATH=<dir>/node_modules node validate.cjs doc.json
// Prints every diagnostic; exits 1 when any is an error or nothing parsed.
const fs = require('fs');
const { Parser } = require('@asyncapi/parser');
const { AvroSchemaParser } = require('@asyncapi/avro-schema-parser');

const SEVERITY = ['error', 'warning', 'info', 'hint'];

(async () => {
  const file = process.argv[2];
  const parser = new Parser();
  parser.registerSchemaParser(AvroSchemaParser());
  const { document, diagnostics } = await parser.parse(fs.readFileSync(file, 'utf8'), { source: file });
  let errors = 0;
  for (const d of diagnostics) {
    if (d.severity === 0) errors += 1;
    console.log(`${SEVERITY[d.severity] || d.severity} ${d.code} ${JSON.stringify(d.path)}: ${d.message}`);
  }
  if (!document || errors > 0) {
    console.log(`INVALID: ${errors} error(s)`);
    process.exit(1);
  }
  console.log(`VALID: AsyncAPI ${document.version()}, ${document.channels().length} channels, ${document.operations().length} operations, ${document.components().messages().length} messages, ${diagnostics.length} diagnostic(s)`);
})().catch((e) => { console.error(e); process.exit(2); });
