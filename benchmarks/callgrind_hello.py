"""Instructions per hello request, counted by callgrind: a deterministic hot-path figure.

    python benchmarks/callgrind_hello.py [--http httptools|h11] [--protocol 1.1|2]
                                         [--request hello|browser] [--loop uvloop|asyncio]
                                         [--server asgictl|floor-canned|floor-asgi]
                                         [--requests N]

Runs valgrind's callgrind on this script's in-process loop twice (N and 2N requests
through the real connection class over an in-memory transport, ``apps.hello`` as the
app, PYTHONHASHSEED fixed) and prints the difference divided by N: the instructions one
more request costs, with interpreter start-up and imports cancelled out. Unlike req/s
this does not move with the machine's load, so a change to the hot path can be judged
on a shared machine to a fraction of a percent.

``--request browser`` sends the head the ``hello-browser`` benchmark scenario sends:
Host and the ten fields of a browser's page request (``harness.scenarios.BROWSER_HEADERS``),
where ``hello`` sends Host, User-Agent and Accept. ``--loop`` is the event loop the
connection runs on (uvloop, as the server runs by default, or asyncio's own).

``--server floor-canned`` or ``floor-asgi`` drives one of ``floor.py``'s reference
protocols through the same loop instead of asgictl's connection: the instructions of
uvloop and llhttp alone, and of the least an ASGI server does, for the same request.

``--protocol 2`` drives the HTTP/2 connection instead (one connection, one stream per
request, answered by the server's engine); ``--http`` still picks the HTTP/1.1 class
the connection starts as.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

HELLO_REQUEST = b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n"


def browser_request() -> bytes:
    """The request wrk sends in the hello-browser scenario: Host, then the ten fields."""
    from harness.scenarios import BROWSER_HEADERS

    fields = "".join(f"{name}: {value}\r\n" for name, value in BROWSER_HEADERS)
    return f"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n{fields}\r\n".encode("latin-1")


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = 0
        self.protocol: Any = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol


def _loop(http: str, protocol: str, request_kind: str, loop_kind: str, server: str, requests: int) -> None:
    from apps import hello

    from asgictl.config import Config
    from asgictl.protocols.http import protocol_class
    from asgictl.protocols.state import ServerState

    if loop_kind == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    transport = _Transport()
    conn: Any
    if server == "asgictl":
        config = Config(hello, http=http, access_log=False)
        conn = protocol_class(http)(ServerState(config, hello, loop))
    else:
        import floor

        conn = floor.Canned() if server == "floor-canned" else floor.MinimalASGI()
    transport.protocol = conn
    if server == "asgictl":
        conn.connection_made(transport)
    else:  # floor.MinimalASGI looks for the running loop there
        loop.run_until_complete(_connect(conn, transport))
    if protocol == "2":
        import h2.config
        import h2.connection

        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        client.initiate_connection()
        conn.data_received(client.data_to_send())
        frames = []
        headers = [(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", "localhost")]
        for i in range(requests):
            client.send_headers(1 + 2 * i, headers, end_stream=True)
            frames.append(client.data_to_send())
        feed = transport.protocol.data_received

        async def drive() -> None:
            for data in frames:
                feed(data)
                await asyncio.sleep(0)

    else:
        request = browser_request() if request_kind == "browser" else HELLO_REQUEST

        async def drive() -> None:
            for _ in range(requests):
                conn.data_received(request)
                await asyncio.sleep(0)

    loop.run_until_complete(drive())
    assert transport.written > requests * 13, "the app was not answered"


async def _connect(conn: Any, transport: _Transport) -> None:
    conn.connection_made(transport)


def _count(http: str, protocol: str, request_kind: str, loop_kind: str, server: str, requests: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        env = dict(os.environ, PYTHONHASHSEED="0")
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                __file__,
                "--inner",
                "--http",
                http,
                "--protocol",
                protocol,
                "--request",
                request_kind,
                "--loop",
                loop_kind,
                "--server",
                server,
                "--requests",
                str(requests),
            ],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        text = Path(out).read_text()
    match = re.search(r"^summary:\s+(\d+)", text, re.MULTILINE) or re.search(r"^totals:\s+(\d+)", text, re.M)
    assert match, "no callgrind summary"
    return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--http", default="httptools", choices=["httptools", "h11"])
    parser.add_argument("--protocol", default="1.1", choices=["1.1", "2"])
    parser.add_argument("--request", default="hello", choices=["hello", "browser"])
    parser.add_argument("--loop", default="uvloop", choices=["uvloop", "asyncio"])
    parser.add_argument("--server", default="asgictl", choices=["asgictl", "floor-canned", "floor-asgi"])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.server != "asgictl" and args.protocol != "1.1":
        parser.error("the floors speak HTTP/1.1 only")
    what = (args.http, args.protocol, args.request, args.loop, args.server)
    if args.inner:
        _loop(*what, args.requests)
        return
    small = _count(*what, args.requests)
    large = _count(*what, 2 * args.requests)
    per = (large - small) / args.requests
    who = args.http if args.server == "asgictl" else args.server
    print(
        f"{who} HTTP/{args.protocol}, {args.request} request, {args.loop}, Python "
        f"{sys.version_info[0]}.{sys.version_info[1]}: {per:,.0f} instructions per request"
    )


if __name__ == "__main__":
    main()
