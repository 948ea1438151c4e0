// Runs one WPT file under Node.js as the runner (main.rs) runs it under mcp-v8: the same
// wrapper (harness.js), testharness.js, the helpers, the test, `done()`; `fetch` of the tree's
// files answered from disk. Prints the harness's report as the last line.
//
//   node node.cjs ROOT TEST VARIANT TITLE [SCRIPT...]
'use strict';
const fs = require('fs');
const path = require('path');
const vm = require('vm');

const [root, test, variant, title, ...scripts] = process.argv.slice(2);
const origin = 'http://web-platform.test';
const kinds = { json: 'application/json', wasm: 'application/wasm', js: 'text/javascript', idl: 'text/plain' };

const nodeFetch = globalThis.fetch;
globalThis.fetch = async (input, init) => {
  const url = new URL(input instanceof Request ? input.url : String(input));
  if (url.origin !== origin) return nodeFetch(input, init);
  const file = path.join(root, decodeURIComponent(url.pathname));
  let body;
  try { body = fs.readFileSync(file); } catch { return new Response('not found', { status: 404 }); }
  const kind = kinds[path.extname(file).slice(1)] || 'application/octet-stream';
  return new Response(body, { status: 200, headers: { 'content-type': kind } });
};
globalThis.self = globalThis;

const harness = vm.runInThisContext(fs.readFileSync(path.join(__dirname, 'harness.js'), 'utf8'));
const wpt = harness({ href: `${origin}/${test}`, search: variant, title: title || null });
globalThis.__wpt = wpt;
const run = (source, name) => vm.runInThisContext(source, { filename: name });
const read = (name) => fs.readFileSync(path.join(root, name.replace(/^\//, '')), 'utf8');
wpt.load('/resources/testharness.js', read('/resources/testharness.js'), run);
wpt.hook();
for (const script of scripts) {
  let source;
  try { source = read(script); } catch { wpt.errors.push(`${script}: not found`); continue; }
  wpt.load(script, source, run);
}
wpt.load(`/${test}`, read(test), run);
const limit = setTimeout(() => {
  console.log(JSON.stringify({ status: { status: 2, message: 'timed out' }, results: wpt.results, errors: wpt.errors }));
  process.exit(0);
}, 60000);
wpt.end().then((report) => {
  clearTimeout(limit);
  console.log(report);
  process.exit(0);
});
