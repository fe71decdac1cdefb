"""The cost floor of a Python server on uvloop and httptools, for comparison.

    taskset -c 1 python benchmarks/floor.py canned|asgi [--port 8000]

Not a server anyone should run: it has no error handling, limits, keep-alive rules,
flow control or shutdown. It answers every request with ``apps.hello``:

- ``canned``: a fixed 200 response written from the parser's on_message_complete
  callback: the cost of uvloop, llhttp and the system calls alone, no ASGI.
- ``asgi``: the least an ASGI server must do per request: a scope dict, a Task
  running the app, receive/send callables, the head built from the app's headers and
  written with the body in one write.

The gap between ``asgi`` and asgictl is what asgictl's features cost (checks,
pipelining, flow control, keep-alive, framing, disconnects, counters); the gap between
``canned`` and ``asgi`` is what the ASGI interface itself costs in CPython.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import httptools
import uvloop
from apps import hello

CANNED = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 13\r\n\r\nHello, world!"
ASGI = {"version": "3.0", "spec_version": "2.4"}


class Canned(asyncio.Protocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        self.transport.write(CANNED)


class MinimalASGI(asyncio.Protocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.server = transport.get_extra_info("sockname")[:2]
        self.client = transport.get_extra_info("peername")[:2]
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        path, _, query = self.url.partition(b"?")
        self.scope = {
            "type": "http",
            "asgi": ASGI,
            "http_version": self.parser.get_http_version(),
            "server": self.server,
            "client": self.client,
            "scheme": "http",
            "method": self.parser.get_method().decode(),
            "root_path": "",
            "path": path.decode(),
            "raw_path": path,
            "query_string": query,
            "headers": self.headers,
            "state": {},
        }
        self.url = b""
        self.headers = []

    def on_message_complete(self) -> None:
        self.loop.create_task(Cycle(self.transport, self.scope).run())


class Cycle:
    __slots__ = ("transport", "scope", "head")

    def __init__(self, transport: Any, scope: dict[str, Any]) -> None:
        self.transport = transport
        self.scope = scope

    async def run(self) -> None:
        await hello(self.scope, self.receive, self.send)

    async def receive(self) -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            head = [b"HTTP/1.1 %d OK\r\n" % message["status"]]
            for name, value in message.get("headers", ()):
                head += (name, b": ", value, b"\r\n")
            self.head = head
        else:
            self.head += (b"\r\n", message.get("body", b""))
            self.transport.write(b"".join(self.head))


async def serve(kind: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Canned if kind == "canned" else MinimalASGI, "127.0.0.1", port)
    print(f"floor ({kind}) on http://127.0.0.1:{port}/", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("kind", choices=["canned", "asgi"])
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    uvloop.run(serve(args.kind, args.port))


if __name__ == "__main__":
    main()
