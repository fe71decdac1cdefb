"""WebSocket apps for the end-to-end tests: a FastAPI app with websocket routes, and a
bare ASGI echo app (for the Autobahn cases: nothing between the server and the frames)."""

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from fastapi.responses import PlainTextResponse

app = FastAPI()


@app.get("/")
async def root() -> dict[str, bool]:
    return {"ok": True}


@app.websocket("/ws/echo")
async def ws_echo(websocket: WebSocket) -> None:
    await websocket.accept(
        subprotocol=websocket.scope["subprotocols"][0] if websocket.scope["subprotocols"] else None
    )
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                await websocket.send_text(message["text"])
            else:
                await websocket.send_bytes(message["bytes"])
    except WebSocketDisconnect:
        pass


@app.websocket("/ws/deny")
async def ws_deny(websocket: WebSocket) -> None:
    await websocket.send_denial_response(
        PlainTextResponse("not for you", status_code=401, headers={"x-denied": "yes"})
    )


@app.websocket("/ws/hold")
async def ws_hold(websocket: WebSocket) -> None:
    """Holds the connection until the peer or the server closes it, and says how it ended."""
    await websocket.accept()
    await websocket.send_text("ready")
    try:
        while True:
            await websocket.receive_text()
    except WebSocketDisconnect as exc:
        print(f"ws_hold disconnect code={exc.code}", flush=True)


async def echo(scope, receive, send):
    """Echo every message back (text as text, bytes as bytes)."""
    if scope["type"] != "websocket":
        return
    await receive()
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})
