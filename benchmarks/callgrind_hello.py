"""Instructions per hello request, counted by callgrind: a deterministic hot-path figure.

    python benchmarks/callgrind_hello.py [--http httptools|h11] [--protocol 1.1|2]
                                         [--engine h2|zttp] [--requests N]

Runs valgrind's callgrind on this script's in-process loop twice (N and 2N requests
through the real connection class over an in-memory transport, ``apps.hello`` as the
app, PYTHONHASHSEED fixed) and prints the difference divided by N: the instructions one
more request costs, with interpreter start-up and imports cancelled out. Unlike req/s
this does not move with the machine's load, so a change to the hot path can be judged
on a shared machine to a fraction of a percent.

``--protocol 2`` drives the HTTP/2 connection instead (one connection, one stream per
request, answered by the server's engine, ``--engine``); ``--http`` still picks the
HTTP/1.1 class the connection starts as.
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

REQUEST = b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n"


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


def _loop(http: str, protocol: str, requests: int, engine: str = "h2") -> None:
    from apps import hello

    from asgictl.config import Config
    from asgictl.protocols.http import protocol_class
    from asgictl.protocols.state import ServerState

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    config = Config(hello, http=http, access_log=False, http2_engine=engine)
    state = ServerState(config, hello, loop)
    transport = _Transport()
    conn = protocol_class(http)(state)
    transport.protocol = conn
    conn.connection_made(transport)
    if protocol == "2":
        import hpack
        from hyperframe.frame import HeadersFrame, SettingsFrame

        # Frames made ahead, cheaply: after the first request every field is in HPACK's
        # dynamic table, so each later request is the same block on a new stream (an h2
        # client would cost more per request than the server does, and that is not the
        # server's cost).
        conn.data_received(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + SettingsFrame(0).serialize())
        encoder = hpack.Encoder()
        headers = [(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", "localhost")]
        first = HeadersFrame(1, encoder.encode(headers), flags=["END_STREAM", "END_HEADERS"]).serialize()
        block = encoder.encode(headers)
        head = len(block).to_bytes(3, "big") + b"\x01\x05"  # HEADERS, END_STREAM | END_HEADERS
        frames = [first] + [head + (1 + 2 * i).to_bytes(4, "big") + block for i in range(1, requests)]
        feed = transport.protocol.data_received

        async def drive() -> None:
            for data in frames:
                feed(data)
                await asyncio.sleep(0)

    else:

        async def drive() -> None:
            for _ in range(requests):
                conn.data_received(REQUEST)
                await asyncio.sleep(0)

    loop.run_until_complete(drive())
    assert transport.written > requests * 13, "the app was not answered"


def _count(http: str, protocol: str, requests: int, engine: str) -> int:
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
                "--requests",
                str(requests),
                "--engine",
                engine,
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
    parser.add_argument("--engine", default="h2", choices=["h2", "zttp"])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        _loop(args.http, args.protocol, args.requests, args.engine)
        return
    small = _count(args.http, args.protocol, args.requests, args.engine)
    large = _count(args.http, args.protocol, 2 * args.requests, args.engine)
    per = (large - small) / args.requests
    what = f"HTTP/{args.protocol}" + (f" ({args.engine})" if args.protocol == "2" else "")
    print(f"{args.http} {what}: {per:,.0f} instructions per hello request")


if __name__ == "__main__":
    main()
