"""Calls run_js as hosts built on the official Python SDK do: one client, one connection
(Streamable HTTP or the legacy HTTP+SSE transport, kept alive, or stdio), each call waiting for the one before. Prints one JSON
line: every call's milliseconds and the bytes of the last answer's text. The twin of
tests/npm/sdk-calls.cjs.

    python sdk_calls.py http URL CALLS HEAP SETUP CODE
    python sdk_calls.py sse URL CALLS HEAP SETUP CODE
    python sdk_calls.py stdio CALLS HEAP SETUP CODE -- COMMAND ARGS...
"""

import asyncio
import json
import sys
import time

from mcp import Client, StdioServerParameters
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

# The SDK's default holds one SSE event to 1 MiB; an answer carries its output twice (as text
# and as structured content), so a host that takes big answers raises it, as this one does.
MAX_EVENT = 16 << 20


def server_from(argv):
    if argv[0] == "http":
        return streamable_http_client(argv[1], max_sse_event_size=MAX_EVENT), argv[2:]
    if argv[0] == "sse":
        return sse_client(argv[1]), argv[2:]
    if argv[0] == "stdio":
        dashes = argv.index("--")
        command, *args = argv[dashes + 1 :]
        return StdioServerParameters(command=command, args=args), argv[1:dashes]
    raise SystemExit(f"unknown transport {argv[0]}")


def text(result):
    if result.is_error:
        raise SystemExit(f"run_js failed: {result.content}")
    return "".join(getattr(part, "text", "") for part in result.content)


async def main():
    server, (calls, heap, setup, code) = server_from(sys.argv[1:])
    async with Client(server) as client:
        async def run(js):
            return await client.call_tool("run_js", {"code": js, "heap": heap})

        if setup:
            text(await run(setup))
        ms, size = [], 0
        for _ in range(int(calls)):
            start = time.perf_counter_ns()
            result = await run(code)
            ms.append((time.perf_counter_ns() - start) / 1e6)
            size = len(text(result).encode())
    print(json.dumps({"ms": ms, "bytes": size}))


asyncio.run(main())
