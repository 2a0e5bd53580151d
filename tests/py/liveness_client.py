"""A Python `websockets` subscriber for tests/browser.rs, with no application heartbeat.

usage: liveness_client.py URL TOPIC [--no-ping]

Subscribes to TOPIC, prints `SUBSCRIBED` once acknowledged and `PUSH <data as JSON>` for every
push, and exits 1 with `CLOSED <code> <reason>` when the connection ends. `websockets` pings
every 20 s by itself; `--no-ping` turns that off, so only the server's Pings (which the library
answers on its own) keep the connection alive. A `wss://` URL is opened without verifying the
certificate (the test's nginx has a self-signed one).
"""

import asyncio
import json
import ssl
import sys

import websockets


async def main(url, topic, no_ping):
    options = {}
    if no_ping:
        options["ping_interval"] = None
    if url.startswith("wss://"):
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        options["ssl"] = context
    try:
        async with websockets.connect(url, **options) as ws:
            await ws.send(json.dumps({"topics": [topic]}))
            while True:
                message = json.loads(await ws.recv())
                if message.get("cmd") == "subscribed":
                    print("SUBSCRIBED", flush=True)
                elif message.get("cmd") == "push" and message.get("topic") == topic:
                    print("PUSH", json.dumps(message["data"], separators=(",", ":")), flush=True)
    except websockets.ConnectionClosed as closed:
        print("CLOSED", closed.code, closed.reason, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], "--no-ping" in sys.argv[3:]))
