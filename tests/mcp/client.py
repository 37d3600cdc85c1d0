"""An MCP client (the Python SDK's) that reaches the tickets server through Keyway
and prints, as one JSON object, what an agent would see.

    python3 client.py URL TOKEN
    python3 client.py URL TOKEN summarize    (a call whose server asks for sampling)
    python3 client.py URL TOKEN export       (a call that reports progress)
"""

import asyncio
import json
import sys

from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client
from mcp.shared.exceptions import McpError
from mcp.types import CreateMessageResult, TextContent


async def attempt(f):
    try:
        return {"ok": await f()}
    except McpError as e:
        return {"error": e.error.message}


def text(result):
    if result.isError:
        return {"tool_error": [c.text for c in result.content]}
    return [c.text for c in result.content]


async def sample(context, params):
    """The agent's model, as far as the test needs one."""
    return CreateMessageResult(role="assistant", content=TextContent(type="text", text="a fire"), model="test")


async def summarize(url, token):
    headers = {"Authorization": f"Bearer {token}"}
    async with streamablehttp_client(url, headers=headers) as (read, write, _):
        async with ClientSession(read, write, sampling_callback=sample) as s:
            await s.initialize()
            await s.list_tools()
            got = await attempt(lambda: s.call_tool("summarize_ticket", {"id": 7}))
            print(json.dumps({"ok": text(got["ok"])} if "ok" in got else got), flush=True)


async def export(url, token):
    """When each progress report arrived, and when the result did, in seconds."""
    headers = {"Authorization": f"Bearer {token}"}
    loop = asyncio.get_running_loop()
    started, seen = loop.time(), []

    async def progress(done, total, message):
        seen.append(round(loop.time() - started, 2))

    async with streamablehttp_client(url, headers=headers) as (read, write, _):
        async with ClientSession(read, write) as s:
            await s.initialize()
            await s.list_tools()
            started = loop.time()
            r = await s.call_tool("export_tickets", {"count": 4}, progress_callback=progress)
            print(json.dumps({"progress_at": seen, "result_at": round(loop.time() - started, 2), "result": text(r)}), flush=True)


async def main(url, token):
    out = {}
    headers = {"Authorization": f"Bearer {token}"}
    async with streamablehttp_client(url, headers=headers) as (read, write, _):
        async with ClientSession(read, write) as s:
            init = await s.initialize()
            out["server"] = init.serverInfo.name
            out["tools"] = sorted(t.name for t in (await s.list_tools()).tools)
            out["search"] = await attempt(lambda: s.call_tool("search_tickets", {"query": "printer"}))
            out["search"] = {"ok": text(out["search"]["ok"])} if "ok" in out["search"] else out["search"]
            got = await attempt(lambda: s.call_tool("get_ticket", {"id": 7}))
            out["get"] = {"ok": text(got["ok"])} if "ok" in got else got
            deleted = await attempt(lambda: s.call_tool("delete_ticket", {"id": 7}))
            out["delete"] = {"ok": text(deleted["ok"])} if "ok" in deleted else deleted
            res = await attempt(lambda: s.list_resources())
            out["resources"] = sorted(str(r.uri) for r in res["ok"].resources) if "ok" in res else res
            read_ = await attempt(lambda: s.read_resource("tickets://recent"))
            out["read"] = {"ok": read_["ok"].contents[0].text} if "ok" in read_ else read_
            prompts = await attempt(lambda: s.list_prompts())
            out["prompts"] = sorted(p.name for p in prompts["ok"].prompts) if "ok" in prompts else prompts
    print(json.dumps(out, sort_keys=True), flush=True)


if __name__ == "__main__":
    if sys.argv[3:] == ["summarize"]:
        asyncio.run(summarize(sys.argv[1], sys.argv[2]))
    elif sys.argv[3:] == ["export"]:
        asyncio.run(export(sys.argv[1], sys.argv[2]))
    else:
        asyncio.run(main(sys.argv[1], sys.argv[2]))
