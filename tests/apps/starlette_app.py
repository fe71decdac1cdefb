"""A Starlette app for the end-to-end tests: JSON, params, streaming, files, uploads, lifespan.

``SENT`` records the ASGI message types of every response (a pure ASGI middleware wraps
``send``), so a test can ask ``/debug/sent`` whether a FileResponse used the
``http.response.pathsend`` extension.
"""

import contextlib
import hashlib
import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.routing import Route

SENT: dict[str, list[str]] = {}


@contextlib.asynccontextmanager
async def lifespan(app):
    yield {"greeting": "hello from lifespan", "pid": os.getpid()}
    print("starlette lifespan shutdown", flush=True)


async def homepage(request: Request):
    return JSONResponse({"framework": "starlette", "ok": True})


async def item(request: Request):
    return JSONResponse(
        {
            "item_id": request.path_params["item_id"],
            "q": request.query_params.get("q"),
            "tags": request.query_params.getlist("tag"),
        }
    )


async def stream(request: Request):
    async def numbers():
        for i in range(10):
            yield f"line {i}\n".encode()

    return StreamingResponse(numbers(), media_type="text/plain")


async def file(request: Request):
    return FileResponse(os.environ["TEST_FILE"], media_type="application/octet-stream")


async def upload(request: Request):
    size = 0
    digest = hashlib.sha256()
    async for chunk in request.stream():
        size += len(chunk)
        digest.update(chunk)
    return JSONResponse({"size": size, "sha256": digest.hexdigest()})


async def state(request: Request):
    return JSONResponse({"greeting": request.state.greeting, "pid": request.state.pid})


async def url(request: Request):
    return JSONResponse(
        {
            "url": str(request.url),
            "url_for": str(request.url_for("item", item_id=3)),
            "root_path": request.scope["root_path"],
        }
    )


async def sent(request: Request):
    return JSONResponse(SENT)


async def recorder(app, scope, receive, send):
    if scope["type"] != "http" or scope["path"] == "/debug/sent":
        return await app(scope, receive, send)
    types: list[str] = []
    SENT[scope["path"]] = types

    async def send_wrapper(message):
        types.append(message["type"])
        await send(message)

    return await app(scope, receive, send_wrapper)


_starlette = Starlette(
    routes=[
        Route("/", homepage),
        Route("/items/{item_id:int}", item),
        Route("/stream", stream),
        Route("/file", file),
        Route("/upload", upload, methods=["POST"]),
        Route("/state", state),
        Route("/url", url),
        Route("/debug/sent", sent),
    ],
    lifespan=lifespan,
)


async def app(scope, receive, send):
    await recorder(_starlette, scope, receive, send)
