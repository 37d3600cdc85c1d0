// An MCP client (the TypeScript SDK's) that reaches the tickets server through
// Keyway and prints, as one JSON object, what an agent would see.
//
//     node client.mjs URL TOKEN

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [url, token] = process.argv.slice(2);
const transport = new StreamableHTTPClientTransport(new URL(url), {
  requestInit: { headers: { Authorization: `Bearer ${token}` } },
});
const client = new Client({ name: "keyway-test", version: "1.0.0" });

async function attempt(f) {
  try {
    return { ok: await f() };
  } catch (e) {
    return { error: String(e.message) };
  }
}

const text = (r) => (r.isError ? { tool_error: r.content.map((c) => c.text) } : r.content.map((c) => c.text));

await client.connect(transport);
const out = { server: client.getServerVersion().name };
out.tools = (await client.listTools()).tools.map((t) => t.name).sort();
for (const [key, name, args] of [
  ["search", "search_tickets", { query: "printer" }],
  ["get", "get_ticket", { id: 7 }],
  ["delete", "delete_ticket", { id: 7 }],
]) {
  const r = await attempt(() => client.callTool({ name, arguments: args }));
  out[key] = "ok" in r ? { ok: text(r.ok) } : r;
}
out.session = transport.sessionId ?? null;
await transport.terminateSession();
await client.close();
console.log(JSON.stringify(out));
