// A client built on the official TypeScript SDK that takes elicitation requests, as hosts that
// ask their user do: each question is printed at once as a line `{"asked": MESSAGE}`, then
// answered with ANSWER (accept, decline or cancel) after DELAY_MS, or never (`never`). Then it
// calls run_js with each CODE on HEAP and prints one line `{"result": CallToolResult}` each.
//
//   node approving-client.cjs ANSWER DELAY_MS HEAP (http URL | stdio COMMAND ARGS... --) CODE...
const { Client } = require('@modelcontextprotocol/sdk/client/index.js');
const { StreamableHTTPClientTransport } = require('@modelcontextprotocol/sdk/client/streamableHttp.js');
const { StdioClientTransport } = require('@modelcontextprotocol/sdk/client/stdio.js');
const { ElicitRequestSchema } = require('@modelcontextprotocol/sdk/types.js');

function transportFrom(argv) {
  if (argv[0] === 'http') {
    return [new StreamableHTTPClientTransport(new URL(argv[1])), argv.slice(2)];
  }
  if (argv[0] === 'stdio') {
    const end = argv.indexOf('--');
    const [command, ...args] = argv.slice(1, end);
    return [new StdioClientTransport({ command, args, stderr: 'inherit' }), argv.slice(end + 1)];
  }
  throw new Error(`unknown transport ${argv[0]}`);
}

async function main() {
  const [answer, delay, heap, ...rest] = process.argv.slice(2);
  const [transport, codes] = transportFrom(rest);
  const client = new Client({ name: 'approving-client', version: '1.0.0' }, { capabilities: { elicitation: {} } });
  client.setRequestHandler(ElicitRequestSchema, async (request) => {
    console.log(JSON.stringify({ asked: request.params.message }));
    if (answer === 'never') {
      return new Promise(() => {});
    }
    await new Promise((resolve) => setTimeout(resolve, Number(delay)));
    return answer === 'accept' ? { action: 'accept', content: {} } : { action: answer };
  });
  await client.connect(transport);
  for (const code of codes) {
    // Longer than any approval the tests wait for.
    const result = await client.callTool({ name: 'run_js', arguments: { code, heap } }, undefined, { timeout: 120000 });
    console.log(JSON.stringify({ result }));
  }
  await client.close();
}

main().catch((e) => {
  console.error(`approving-client: ${e && e.stack ? e.stack : e}`);
  process.exit(1);
});
