"""A client built on the official Python SDK that takes elicitation requests: each question is
printed at once as a line {"asked": MESSAGE}, then answered with ANSWER (accept, decline or
cancel) after DELAY_MS. Then it calls run_js with each CODE on HEAP over Streamable HTTP and
prints one line {"result": CallToolResult} each. The twin of tests/npm/approving-client.cjs.

    python approving_client.py ANSWER DELAY_MS HEAP URL CODE...
"""

import asyncio
import json
import sys

from mcp import Client, types


async def main():
    answer, delay, heap, url, *codes = sys.argv[1:]

    async def elicit(_context, params):
        print(json.dumps({"asked": params.message}), flush=True)
        await asyncio.sleep(int(delay) / 1000)
        return types.ElicitResult(action=answer, content={} if answer == "accept" else None)

    async with Client(url, elicitation_callback=elicit) as client:
        for code in codes:
            result = await client.call_tool("run_js", {"code": code, "heap": heap})
            print(json.dumps({"result": result.model_dump(mode="json", by_alias=True)}), flush=True)


asyncio.run(main())
