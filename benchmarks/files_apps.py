"""ASGI applications of the file-response scenarios (see ``wsgi_apps.py`` for the files).

- ``pathsend64k``, ``pathsend10m`` -- the file through ``http.response.pathsend`` (the
  server reads or sendfiles it);
- ``body64k``, ``body10m`` -- the same bytes, read once at import, sent as one body
  message (what a server without pathsend gets from Starlette's FileResponse, minus the
  reads).
"""

from __future__ import annotations

from typing import Any

import wsgi_apps
from apps import lifespan

_HEADERS = [(b"content-type", b"application/octet-stream")]


def _pathsend(name: str) -> Any:
    wsgi_apps.ensure_files()
    path = str(wsgi_apps.file_path(name))

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await lifespan(receive, send)
        await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
        await send({"type": "http.response.pathsend", "path": path})

    return app


def _body(name: str) -> Any:
    body = wsgi_apps.file_body(name)
    headers = [*_HEADERS, (b"content-length", b"%d" % len(body))]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await lifespan(receive, send)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


pathsend64k = _pathsend("64k")
pathsend10m = _pathsend("10m")
body64k = _body("64k")
body10m = _body("10m")
