// An MCP server (stdio) that misbehaves on request, for code mode's tests of upstream
// failures: built on the official SDK, as a third party's server would be.
//   crash   - the process exits in the middle of the call
//   hang    - never answers; writes "cancelled" to $UNRULY_LOG when the call is cancelled
//   big     - answers with `mb` megabytes of text
//   count   - adds one to the number in $UNRULY_COUNT and answers it (a side effect to count)
//   wipe    - annotated destructiveHint: true
const fs = require('node:fs');
const { McpServer } = require('@modelcontextprotocol/sdk/server/mcp.js');
const { StdioServerTransport } = require('@modelcontextprotocol/sdk/server/stdio.js');
const { z } = require('zod');

const server = new McpServer({ name: 'unruly', version: '1.0.0' });
const text = (t) => ({ content: [{ type: 'text', text: String(t) }] });
const log = (line) => process.env.UNRULY_LOG && fs.appendFileSync(process.env.UNRULY_LOG, line + '\n');

server.registerTool('crash', { description: 'Exits mid-call.' }, async () => {
  setTimeout(() => process.exit(3), 10);
  return new Promise(() => {});
});
server.registerTool('hang', { description: 'Never answers.' }, async (extra) => {
  log('started');
  extra.signal.addEventListener('abort', () => log('cancelled'));
  return new Promise(() => {});
});
server.registerTool('big', { description: 'Answers with mb megabytes of text.', inputSchema: { mb: z.number() } },
  async ({ mb }) => text('x'.repeat(Math.round(mb * 1e6))));
server.registerTool('count', { description: 'Counts its calls in a file.' }, async () => {
  const file = process.env.UNRULY_COUNT;
  const n = (fs.existsSync(file) ? Number(fs.readFileSync(file, 'utf8')) : 0) + 1;
  fs.writeFileSync(file, String(n));
  return text(n);
});
server.registerTool('wipe', {
  description: 'Deletes everything.',
  annotations: { destructiveHint: true, readOnlyHint: false },
}, async () => text('wiped'));

server.connect(new StdioServerTransport()).then(() => log('up'));
