"""A WebSocket client (Python `websockets`): sends 3 messages to URL, reads 3 echoes, closes.

Prints one JSON line: the echoes, the close code received, whether the closing handshake
and the TCP close completed, and how long the close took.
"""

import asyncio
import json
import sys
import time

from websockets.asyncio.client import connect


async def main(url):
    out = {"echoes": [], "close_code": None, "closed": False, "close_seconds": None}
    try:
        async with asyncio.timeout(30):
            ws = await connect(url, open_timeout=10, close_timeout=10)
            for i in range(3):
                await ws.send(f"message {i}")
                out["echoes"].append(await ws.recv())
            started = time.monotonic()
            await ws.close()
            await ws.wait_closed()
            out["close_seconds"] = round(time.monotonic() - started, 3)
            rcvd = ws.protocol.close_rcvd
            out["close_code"] = rcvd.code if rcvd is not None else None
            out["closed"] = ws.transport.is_closing()
    except Exception as e:  # reported, the test decides
        out["error"] = f"{type(e).__name__}: {e}"
    print(json.dumps(out), flush=True)


asyncio.run(main(sys.argv[1]))
