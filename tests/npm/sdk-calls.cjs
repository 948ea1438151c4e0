// Calls run_js as hosts built on the official TypeScript SDK do: one client, one connection
// (Streamable HTTP or the legacy HTTP+SSE transport, kept alive, or stdio), each call waiting
// for the one before. Prints one JSON line: every call's milliseconds and the bytes of the last
// answer's text.
//
//   node sdk-calls.cjs http URL CALLS HEAP SETUP CODE
//   node sdk-calls.cjs sse URL CALLS HEAP SETUP CODE
//   node sdk-calls.cjs stdio CALLS HEAP SETUP CODE -- COMMAND ARGS...
const { Client } = require('@modelcontextprotocol/sdk/client/index.js');
const { StreamableHTTPClientTransport } = require('@modelcontextprotocol/sdk/client/streamableHttp.js');
const { SSEClientTransport } = require('@modelcontextprotocol/sdk/client/sse.js');
const { StdioClientTransport } = require('@modelcontextprotocol/sdk/client/stdio.js');

function transportFrom(argv) {
  if (argv[0] === 'http') {
    const [, url, ...rest] = argv;
    return [new StreamableHTTPClientTransport(new URL(url)), rest];
  }
  if (argv[0] === 'sse') {
    const [, url, ...rest] = argv;
    return [new SSEClientTransport(new URL(url)), rest];
  }
  if (argv[0] === 'stdio') {
    const dashes = argv.indexOf('--');
    const [command, ...args] = argv.slice(dashes + 1);
    const transport = new StdioClientTransport({ command, args, stderr: 'inherit' });
    return [transport, argv.slice(1, dashes)];
  }
  throw new Error(`unknown transport ${argv[0]}`);
}

function text(result) {
  if (result.isError) {
    throw new Error(`run_js failed: ${JSON.stringify(result.content)}`);
  }
  return result.content.map((part) => part.text || '').join('');
}

async function main() {
  const [transport, [calls, heap, setup, code]] = transportFrom(process.argv.slice(2));
  const client = new Client({ name: 'sdk-calls', version: '1.0.0' });
  await client.connect(transport);
  const run = (js) => client.callTool({ name: 'run_js', arguments: { code: js, heap } });
  if (setup) {
    text(await run(setup));
  }
  const ms = [];
  let bytes = 0;
  for (let i = 0; i < Number(calls); i++) {
    const start = process.hrtime.bigint();
    const result = await run(code);
    ms.push(Number(process.hrtime.bigint() - start) / 1e6);
    bytes = Buffer.byteLength(text(result));
  }
  console.log(JSON.stringify({ ms, bytes }));
  await client.close();
}

main().catch((e) => {
  console.error(`sdk-calls: ${e && e.stack ? e.stack : e}`);
  process.exit(1);
});
