// An MCP client that authorises itself as OAuth-capable clients do, with the official SDK: its
// first request gets 401, it reads the Protected Resource Metadata the WWW-Authenticate header
// points at, discovers the authorisation server there, gets a token (client credentials, for
// this resource), and calls tools with it. Prints one JSON line per tool result.
//
//   node oauth-client.cjs URL CLIENT_ID CLIENT_SECRET SCOPE CODE...
const { Client } = require('@modelcontextprotocol/sdk/client/index.js');
const { StreamableHTTPClientTransport } = require('@modelcontextprotocol/sdk/client/streamableHttp.js');
const { ClientCredentialsProvider } = require('@modelcontextprotocol/sdk/client/auth-extensions.js');

async function main() {
  const [url, clientId, clientSecret, scope, ...codes] = process.argv.slice(2);
  const authProvider = new ClientCredentialsProvider({ clientId, clientSecret, scope });
  const transport = new StreamableHTTPClientTransport(new URL(url), { authProvider });
  const client = new Client({ name: 'oauth-client', version: '1.0.0' });
  await client.connect(transport);
  for (const code of codes) {
    const result = await client.callTool({ name: 'run_js', arguments: { code, heap: 'mine' } });
    console.log(JSON.stringify(result));
  }
  await client.close();
}

main().catch((e) => {
  console.error(`oauth-client: ${e && e.stack ? e.stack : e}`);
  process.exit(1);
});
