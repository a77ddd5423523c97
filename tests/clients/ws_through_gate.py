"""WebSocket peers for the gate's tests, with the `websockets` library on both ends.

    ws_through_gate.py server
        Serves on 127.0.0.1 (port printed on the first line of stdout): echoes every message
        it receives, and pushes a text message and a 256 KiB binary message every 20 ms, so
        that frames are in flight whenever the gate's deadline comes.

    ws_through_gate.py short URL
        Connects through the gate, checks an echo and closes normally (1000); prints one JSON
        line with what it saw.

    ws_through_gate.py client URL
        Connects through the gate; checks an echo, a ping, a fragmented message; prints
        `ready`; then reads until the connection closes and prints one JSON line: what it
        checked, the close code and reason it received, and the exception class.
"""

import asyncio
import json
import sys

import websockets
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve


async def handler(ws):
    async def push():
        n = 0
        while True:
            await ws.send(f"tick {n}")
            await ws.send(bytes([n % 256]) * (256 * 1024))
            n += 1
            await asyncio.sleep(0.02)

    pusher = None
    try:
        async for message in ws:
            if message == "start-push" and pusher is None:
                pusher = asyncio.create_task(push())
                continue
            await ws.send(message)
    except websockets.ConnectionClosed:
        pass
    finally:
        if pusher is not None:
            pusher.cancel()


async def server():
    async with serve(handler, "127.0.0.1", 0, max_size=None) as s:
        port = s.sockets[0].getsockname()[1]
        print(port, flush=True)
        await asyncio.Future()


async def client(url):
    out = {"echo": False, "ping": False, "fragmented": False, "pushed": 0}
    async with connect(url, max_size=None, open_timeout=10) as ws:
        await ws.send("hello")
        out["echo"] = (await asyncio.wait_for(ws.recv(), 10)) == "hello"
        pong = await ws.ping(b"are you there")
        await asyncio.wait_for(pong, 10)
        out["ping"] = True
        await ws.send(["frag-one ", "frag-two ", "frag-three"])
        out["fragmented"] = (await asyncio.wait_for(ws.recv(), 10)) == "frag-one frag-two frag-three"
        await ws.send("start-push")
        print("ready", flush=True)
        try:
            while True:
                message = await asyncio.wait_for(ws.recv(), 60)
                out["pushed"] += 1
                if isinstance(message, bytes) and len(message) != 256 * 1024:
                    out["bad_message"] = len(message)
        except websockets.ConnectionClosed as e:
            out["error"] = type(e).__name__
            out["code"] = e.rcvd.code if e.rcvd else None
            out["reason"] = e.rcvd.reason if e.rcvd else None
        except Exception as e:  # noqa: BLE001 - reported to the test as it is
            out["error"] = type(e).__name__
            out["detail"] = str(e)
    print(json.dumps(out), flush=True)


async def short(url):
    async with connect(url, open_timeout=10) as ws:
        await ws.send("hello")
        echo = (await asyncio.wait_for(ws.recv(), 10)) == "hello"
    print(json.dumps({"echo": echo, "close_code": ws.close_code}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        asyncio.run(server())
    elif sys.argv[1] == "short":
        asyncio.run(short(sys.argv[2]))
    else:
        asyncio.run(client(sys.argv[2]))
