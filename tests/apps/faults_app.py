"""Apps for the end-to-end tests of the protocol-fault kinds (test_e2e_faults.py).

Routes: /sse (a head, one event, then waits in receive() for http.disconnect, as a
server-sent-events endpoint does), /stream (an event every 20 ms while a second task
listens for http.disconnect, as Starlette's StreamingResponse does), /escape (rows every
20 ms; when send() raises it writes the error into the stream, which raises again and
escapes, as Datasette's CSV export does), /big?MIB (MIB MiB in 64 KiB pieces). Each
prints one line when it stops, for the tests to wait on.
"""

import asyncio

from basic import _lifespan


async def _start(send, content_type=b"text/plain"):
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", content_type)]})


async def _wait_for_disconnect(receive):
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    path = scope["path"]
    if path == "/sse":
        await _start(send, b"text/event-stream")
        await send({"type": "http.response.body", "body": b"data: hello\n\n", "more_body": True})
        await _wait_for_disconnect(receive)
        print("sse heard http.disconnect", flush=True)
    elif path == "/stream":
        await _start(send)

        async def produce():
            for n in range(1500):  # 30 s at most
                await send({"type": "http.response.body", "body": b"event %d\n" % n, "more_body": True})
                await asyncio.sleep(0.02)
            await send({"type": "http.response.body", "body": b""})

        producer = asyncio.ensure_future(produce())
        listener = asyncio.ensure_future(_wait_for_disconnect(receive))
        await asyncio.wait([producer, listener], return_when=asyncio.FIRST_COMPLETED)
        producer.cancel()
        listener.cancel()
        print("stream stopped", flush=True)
    elif path == "/escape":
        await _start(send, b"text/csv")
        try:
            for n in range(1500):
                try:
                    await send({"type": "http.response.body", "body": b"%d,row\n" % n, "more_body": True})
                except OSError as exc:
                    await send({"type": "http.response.body", "body": str(exc).encode()})
                await asyncio.sleep(0.02)
        finally:
            print("escape stopped", flush=True)
    elif path == "/big":
        mib = int(scope["query_string"] or b"64")
        piece = b"x" * 65536
        await _start(send, b"application/octet-stream")
        try:
            for _ in range(mib * 16):
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            print("big complete", flush=True)
        except OSError as exc:
            print(f"big stopped: {type(exc).__name__}", flush=True)
            raise
    else:
        await _start(send)
        await send({"type": "http.response.body", "body": b"ok"})
