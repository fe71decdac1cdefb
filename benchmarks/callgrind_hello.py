"""CPU instructions per hello request, counted by callgrind: a figure noise cannot move.

    python3 benchmarks/callgrind_hello.py [--http httptools|h11|both] [--loop uvloop|asyncio]
                                          [--protocol 1.1|2] [--engine h2|zttp]

Runs the real connection class over an in-memory transport (no sockets, no client) and
feeds it keep-alive ``GET /`` requests as wrk sends them, answered by ``apps.hello``
(13 bytes, with the app's own content-type and content-length), under
``valgrind --tool=callgrind`` with ``PYTHONHASHSEED=0``. Two runs, of ``--base`` and
``--base + --requests`` requests, are subtracted: start-up, imports and the first
request's warm-up cancel out, and the difference divided by ``--requests`` is the
instruction count of one request through the whole server path (parse, policy, scope,
task, app, head, write), the event loop's share included.

The figure is deterministic to a few instructions from run to run on one build, which
makes it the right tool to compare two versions of the hot path on a noisy machine;
it says nothing about system calls (there are none here) or cache behaviour.

``--protocol 2`` drives HTTP/2 by prior knowledge instead: one connection (handed over by
the ``--http`` class, as a real one is), one stream per request, answered through the
server's engine (``--engine``). The client's frames are made ahead with plain bytes:
after the first request every field is in HPACK's dynamic table, so each later request
is the same block on a new stream, and no client library's work is counted as the
server's.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n"


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def http2_frames(count: int) -> list[bytes]:
    """The client's bytes for ``count`` GET / streams (preface and SETTINGS first)."""
    import hpack
    from hyperframe.frame import HeadersFrame, SettingsFrame

    encoder = hpack.Encoder()
    headers = [(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", "127.0.0.1:8000")]
    first = HeadersFrame(1, encoder.encode(headers), flags=["END_STREAM", "END_HEADERS"]).serialize()
    block = encoder.encode(headers)
    head = len(block).to_bytes(3, "big") + b"\x01\x05"  # HEADERS, END_STREAM | END_HEADERS
    return [PREFACE + SettingsFrame(0).serialize() + first] + [
        head + (1 + 2 * i).to_bytes(4, "big") + block for i in range(1, count)
    ]


def serve_requests(http: str, loop_name: str, count: int, protocol: str = "1.1", engine: str = "h2") -> None:
    """The measured body: ``count`` requests on one keep-alive connection."""
    import asyncio

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from apps import hello

    from asgictl.config import Config
    from asgictl.protocols.factory import connection_factory
    from asgictl.protocols.state import ServerState

    if loop_name == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    class Transport(asyncio.Transport):
        def __init__(self) -> None:
            super().__init__()
            self.written = 0
            self.protocol: asyncio.BaseProtocol | None = None

        def get_extra_info(self, name: str, default: object = None) -> object:
            return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

        def write(self, data: bytes) -> None:
            self.written += 1

        def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
            self.protocol = protocol

        def is_closing(self) -> bool:
            return False

        def pause_reading(self) -> None:
            pass

        def resume_reading(self) -> None:
            pass

    config = Config(hello, http=http, access_log=False, http2_engine=engine)
    state = ServerState(config, hello, loop)
    transport = Transport()
    transport.protocol = connection_factory(state)()
    transport.protocol.connection_made(transport)
    reads = http2_frames(count) if protocol == "2" else [REQUEST] * count

    async def drive() -> None:
        for data in reads:
            transport.protocol.data_received(data)  # HTTP/2 once the preface handed it over
            while state.active_requests:
                await asyncio.sleep(0)
        await asyncio.sleep(0)  # the HTTP/2 frames of the last stream are flushed

    loop.run_until_complete(drive())
    if protocol == "2":
        assert state.total_requests == count and transport.written >= count, (transport.written, count)
    else:
        assert transport.written == count, (transport.written, count)
    loop.close()


def instructions(http: str, loop_name: str, count: int, protocol: str, engine: str) -> int:
    out = tempfile.mkdtemp(prefix="callgrind-")
    try:
        env = dict(os.environ, PYTHONHASHSEED="0")
        cmd = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}/cg.out",
            sys.executable,
            __file__,
            "--child",
            http,
            loop_name,
            str(count),
            protocol,
            engine,
        ]
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise SystemExit(f"callgrind run failed:\n{result.stderr[-2000:]}")
        match = re.search(r"Collected\s*:\s*(\d+)", result.stderr)
        if match is None:
            raise SystemExit(f"no instruction count in callgrind's output:\n{result.stderr[-2000:]}")
        return int(match.group(1))
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    if len(sys.argv) == 7 and sys.argv[1] == "--child":
        serve_requests(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], sys.argv[6])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http", choices=("httptools", "h11", "both"), default="both")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--base", type=int, default=500, help="requests of the first run")
    parser.add_argument("--requests", type=int, default=5000, help="extra requests of the second run")
    parser.add_argument("--protocol", choices=("1.1", "2"), default="1.1", help="2: HTTP/2, prior knowledge")
    parser.add_argument("--engine", choices=("h2", "zttp"), default="h2", help="the HTTP/2 framing engine")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    parsers = ("httptools", "h11") if args.http == "both" else (args.http,)
    what = REQUEST if args.protocol == "1.1" else f"HTTP/2 GET / streams, engine {args.engine}"
    print(f"python {sys.version.split()[0]}, loop {args.loop}, PYTHONHASHSEED=0, {what!r}")
    for http in parsers:
        low = instructions(http, args.loop, args.base, args.protocol, args.engine)
        high = instructions(http, args.loop, args.base + args.requests, args.protocol, args.engine)
        per = (high - low) / args.requests
        print(f"{http:10s} {per:10.0f} instructions per request")


if __name__ == "__main__":
    main()
