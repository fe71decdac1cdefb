"""Plain WSGI applications of the WSGI and file scenarios (PEP 3333, no framework).

Apps (import as ``wsgi_apps:NAME``):

- ``hello``    -- 13-byte ``Hello, world!`` text/plain, with Content-Length.
- ``stream``   -- 1 MiB streamed in 16 pieces of 64 KiB from a generator, no
  Content-Length (chunked on HTTP/1.1).
- ``echo``     -- reads the request body from ``wsgi.input`` and sends it back.
- ``file64k``, ``file10m`` -- a 64 KiB / 10 MiB file through ``wsgi.file_wrapper`` (read
  in 64 KiB blocks where the server offers none).

The files are written once, next to the other benchmark data (``FILE_DIR``), by
:func:`ensure_files`, which the ASGI file apps share.

The Django scenario lives in ``django_app.py`` so that this module never imports Django.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

HELLO_BODY = b"Hello, world!"
STREAM_PIECE = b"s" * 64 * 1024
STREAM_PIECES = 16
FILE_DIR = Path(os.environ.get("ASGICTL_BENCH_FILES", "/tmp/asgictl-bench-files"))
FILE_SIZES = {"64k": 64 * 1024, "10m": 10 * 1024 * 1024}

StartResponse = Callable[..., Any]


def file_path(name: str) -> Path:
    return FILE_DIR / f"payload-{name}.bin"


def ensure_files() -> None:
    """Write the payload files once (bytes that repeat a 251-byte pattern)."""
    FILE_DIR.mkdir(parents=True, exist_ok=True)
    pattern = bytes(range(251))
    for name, size in FILE_SIZES.items():
        path = file_path(name)
        if path.exists() and path.stat().st_size == size:
            continue
        data = (pattern * (size // len(pattern) + 1))[:size]
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)


def file_body(name: str) -> bytes:
    ensure_files()
    return file_path(name).read_bytes()


def hello(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "13")])
    return [HELLO_BODY]


def stream(environ: dict[str, Any], start_response: StartResponse) -> Iterator[bytes]:
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    for _ in range(STREAM_PIECES):
        yield STREAM_PIECE


def echo(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length)
    start_response(
        "200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(body)))]
    )
    return [body]


def _file_app(name: str) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    ensure_files()
    path = file_path(name)
    size = str(FILE_SIZES[name])

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", size)])
        fh = open(path, "rb")  # the server closes it (file_wrapper.close)
        wrapper = environ.get("wsgi.file_wrapper")
        if wrapper is not None:
            return wrapper(fh, 64 * 1024)
        return iter(lambda: fh.read(64 * 1024), b"")

    return app


file64k = _file_app("64k")
file10m = _file_app("10m")
