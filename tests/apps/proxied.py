"""An app that reports what it sees of the client behind a proxy (tests/test_e2e_nginx.py).

HTTP: JSON of ``client``, ``scheme`` and the request headers. WebSocket: accepts, sends
the same JSON as its first message, then echoes text messages until the peer closes.
"""

import json


def _view(scope):
    return json.dumps(
        {
            "type": scope["type"],
            "client": scope.get("client"),
            "scheme": scope["scheme"],
            "path": scope["path"],
            "headers": {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]},
        }
    )


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    elif scope["type"] == "http":
        while True:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        body = _view(scope).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))],
            }
        )
        await send({"type": "http.response.body", "body": body})
    elif scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": _view(scope)})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                await send({"type": "websocket.send", "text": "echo:" + message["text"]})
